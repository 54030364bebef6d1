"""Optimizers: decoupled weight decay on kernels only, loss scaling, schedule.

The MirroredStrategy checks run this module as a script in a subprocess
(`python -m tests.test_optimizers`), because the two logical CPU devices must
be configured before TensorFlow initialises, which it has already done in the
pytest process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import models, optimizers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR = 0.1
WEIGHT_DECAY = 0.01


def _tiny_model() -> keras.Model:
    """Every kind of variable a ResNet has (4-D conv and 2-D dense kernels,
    BN gamma/beta and moving statistics, a bias), small enough to trace fast."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name=models.HEAD)(x))


def _is_kernel(variable) -> bool:
    return len(variable.shape) > 1


def _build(name: str, **optimizer_kwargs) -> tuple[keras.Model, keras.optimizers.Optimizer]:
    """Builds model and optimizer as the trainer does, under the current strategy."""
    model = _tiny_model()
    optimizer = optimizers.create_optimizer(name, model=model, **optimizer_kwargs)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def _apply_on_replicas(optimizer, variables, grads_fn) -> None:
    """One distributed `apply` of `grads_fn(replica_id, variable)` per variable."""

    @tf.function
    def step():
        def replica_fn():
            replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
            optimizer.apply([grads_fn(replica_id, v) for v in variables], variables)

        tf.distribute.get_strategy().run(replica_fn)

    step()


def _zero_gradient_ratios(model, optimizer, steps: int = 1) -> dict[str, list[float]]:
    """Applies zero gradients; returns the [min, max] new/old value ratios of
    every kernel and every other trainable variable."""
    variables = model.trainable_variables
    # BN beta and biases start at 0, where decay could not show: use ones.
    for v in variables:
        if not _is_kernel(v):
            v.assign(tf.ones(v.shape))
    before = [v.numpy() for v in variables]
    for _ in range(steps):
        _apply_on_replicas(optimizer, variables, lambda _, v: tf.zeros(v.shape))
    ratios: dict[str, list[float]] = {"kernels": [], "others": []}
    for v, old in zip(variables, before):
        ratio = v.numpy()[old != 0] / old[old != 0]
        ratios["kernels" if _is_kernel(v) else "others"] += [float(ratio.min()), float(ratio.max())]
    return ratios


# ---------------------------------------------------------------- weight decay


@pytest.mark.parametrize("name", optimizers.OPTIMIZER_NAMES)
def test_zero_gradient_step_decays_kernels_only(name):
    model, optimizer = _build(name, learning_rate=LR, weight_decay=WEIGHT_DECAY)
    moving_stats = [v.numpy() for v in model.non_trainable_variables]
    ratios = _zero_gradient_ratios(model, optimizer)
    np.testing.assert_allclose(ratios["kernels"], 1 - LR * WEIGHT_DECAY, rtol=1e-6)
    np.testing.assert_array_equal(ratios["others"], 1.0)
    for v, old in zip(model.non_trainable_variables, moving_stats):
        np.testing.assert_array_equal(v.numpy(), old)


def test_sgd_weight_decay_is_decoupled_from_momentum():
    model, optimizer = _build("sgd", learning_rate=LR, weight_decay=WEIGHT_DECAY)
    ratios = _zero_gradient_ratios(model, optimizer, steps=2)
    # An L2 term in the gradient would also build up momentum, shrinking the
    # second step by lr * wd * (1 + momentum) instead of lr * wd.
    np.testing.assert_allclose(ratios["kernels"], (1 - LR * WEIGHT_DECAY) ** 2, rtol=1e-6)
    np.testing.assert_array_equal(ratios["others"], 1.0)


def test_weight_decay_follows_the_scheduled_learning_rate():
    schedule = optimizers.learning_rate_schedule(0.4, 256, total_steps=10, warmup_steps=4)
    model, optimizer = _build("sgd", learning_rate=schedule, weight_decay=WEIGHT_DECAY)
    # Step 0 has learning rate 0, step 1 has 0.4 / 4.
    ratios = _zero_gradient_ratios(model, optimizer, steps=2)
    np.testing.assert_allclose(ratios["kernels"], 1 - 0.1 * WEIGHT_DECAY, rtol=1e-6)


@pytest.mark.parametrize("name", optimizers.OPTIMIZER_NAMES)
def test_backbone_multiplier_scales_the_backbones_updates_and_decay(name):
    multiplier = 0.1
    steps = {}
    for rate in (1.0, multiplier):
        keras.utils.set_random_seed(0)
        model, optimizer = _build(name, learning_rate=LR, weight_decay=0.0,
                                  backbone_multiplier=rate)
        before = [v.numpy() for v in model.trainable_variables]
        _apply_on_replicas(optimizer, model.trainable_variables, lambda _, v: tf.ones(v.shape))
        steps[rate] = [v.numpy() - old for v, old in zip(model.trainable_variables, before)]
    head = {id(v) for v in models.head_variables(model)}
    for v, full, slow in zip(model.trainable_variables, steps[1.0], steps[multiplier]):
        # SGD's step and Adam's first step are both proportional to the rate.
        expected = full if id(v) in head else multiplier * full
        np.testing.assert_allclose(slow, expected, rtol=1e-5, atol=1e-9)
    assert any(np.abs(step).max() > 0 for step in steps[multiplier])

    model, optimizer = _build(name, learning_rate=LR, weight_decay=WEIGHT_DECAY,
                              backbone_multiplier=multiplier)
    head = {id(v) for v in models.head_variables(model)}
    kernels = [v for v in model.trainable_variables if _is_kernel(v)]
    before = [v.numpy() for v in kernels]
    _apply_on_replicas(optimizer, model.trainable_variables, lambda _, v: tf.zeros(v.shape))
    for v, old in zip(kernels, before):
        rate = 1.0 if id(v) in head else multiplier
        np.testing.assert_allclose(v.numpy(), old * (1 - rate * LR * WEIGHT_DECAY), rtol=1e-6)


def test_optimizer_settings():
    model = _tiny_model()
    sgd = optimizers.create_optimizer(
        "sgd", learning_rate=LR, weight_decay=1e-4, model=model, momentum=0.8
    )
    assert isinstance(sgd, keras.optimizers.SGD)
    assert (sgd.momentum, sgd.nesterov, sgd.weight_decay) == (0.8, False, 1e-4)
    adamw = optimizers.create_optimizer("adamw", learning_rate=LR, weight_decay=0.05, model=model)
    assert isinstance(adamw, keras.optimizers.AdamW)
    assert (adamw.beta_1, adamw.weight_decay) == (0.9, 0.05)


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(ValueError, match="lamb") as error:
        optimizers.create_optimizer(
            "lamb", learning_rate=LR, weight_decay=0.0, model=_tiny_model()
        )
    assert "sgd" in str(error.value) and "adamw" in str(error.value)


def test_negative_weight_decay_is_rejected():
    with pytest.raises(ValueError, match="weight_decay"):
        optimizers.create_optimizer(
            "sgd", learning_rate=LR, weight_decay=-1.0, model=_tiny_model()
        )


# ---------------------------------------------------------------- loss scaling


def test_loss_scale_wraps_and_keeps_weight_decay_on_kernels_only():
    model, optimizer = _build(
        "adamw", learning_rate=LR, weight_decay=WEIGHT_DECAY, loss_scale=True
    )
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(optimizer.scale_loss(tf.constant(1.0))) == 2.0**15
    assert float(optimizer.learning_rate) == pytest.approx(LR)
    ratios = _zero_gradient_ratios(model, optimizer)
    np.testing.assert_allclose(ratios["kernels"], 1 - LR * WEIGHT_DECAY, rtol=1e-6)
    np.testing.assert_array_equal(ratios["others"], 1.0)


def test_loss_scale_skips_a_step_with_non_finite_gradients():
    model, optimizer = _build("sgd", learning_rate=LR, weight_decay=WEIGHT_DECAY, loss_scale=True)
    before = [v.numpy() for v in model.trainable_variables]
    _apply_on_replicas(optimizer, model.trainable_variables, lambda _, v: tf.fill(v.shape, np.inf))
    for v, old in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), old)
    assert float(optimizer.dynamic_scale) == 2.0**14
    assert int(optimizer.iterations) == 0


def test_no_loss_scale_by_default():
    optimizer = optimizers.create_optimizer(
        "sgd", learning_rate=LR, weight_decay=0.0, model=_tiny_model()
    )
    assert not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(optimizer.scale_loss(tf.constant(3.0))) == 3.0


# ---------------------------------------------------------------- schedule


def test_schedule_warms_up_linearly_then_decays_along_a_cosine():
    schedule = optimizers.learning_rate_schedule(0.1, 1024, total_steps=1100, warmup_steps=100)
    peak = 0.1 * 1024 / 256
    lr = lambda step: float(schedule(step))  # noqa: E731
    assert lr(0) == 0.0
    assert lr(50) == pytest.approx(peak / 2)
    assert lr(100) == pytest.approx(peak)
    assert lr(600) == pytest.approx(peak / 2)  # the cosine's midpoint
    assert lr(350) == pytest.approx(peak * (1 + math.cos(math.pi / 4)) / 2)
    assert lr(1099) == pytest.approx(0.0, abs=1e-5 * peak)
    assert lr(1100) == pytest.approx(0.0, abs=1e-7)
    assert lr(5000) == pytest.approx(0.0, abs=1e-7)  # stays at 0 past the end


def test_schedule_scales_linearly_with_the_global_batch():
    peaks = [
        float(optimizers.learning_rate_schedule(0.1, batch, total_steps=20, warmup_steps=10)(10))
        for batch in (64, 256, 4096)
    ]
    assert peaks == pytest.approx([0.025, 0.1, 1.6])


def test_schedule_without_warmup_starts_at_the_peak():
    schedule = optimizers.learning_rate_schedule(0.2, 512, total_steps=10, warmup_steps=0)
    assert float(schedule(0)) == pytest.approx(0.4)
    assert float(schedule(5)) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(total_steps=10, warmup_steps=10),
        dict(total_steps=10, warmup_steps=-1),
        dict(total_steps=0, warmup_steps=0),
    ],
)
def test_schedule_rejects_bad_step_counts(kwargs):
    with pytest.raises(ValueError, match="warmup_steps"):
        optimizers.learning_rate_schedule(0.1, 256, **kwargs)


def test_schedule_rejects_bad_batch():
    with pytest.raises(ValueError, match="global_batch_size"):
        optimizers.learning_rate_schedule(0.1, 0, total_steps=10, warmup_steps=1)


# ---------------------------------------------------------------- MirroredStrategy


def _replicas_agree(strategy: tf.distribute.Strategy, model: keras.Model) -> bool:
    return all(
        np.array_equal(copy.numpy(), v.numpy())
        for v in model.variables
        for copy in strategy.experimental_local_results(v.value)
    )


def _run_under_mirrored_strategy() -> dict:
    """Runs in the subprocess: the checks above, on 2 replicas."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results: dict = {"replicas": strategy.num_replicas_in_sync, "outside_scope_error": ""}

    with strategy.scope():
        for name in optimizers.OPTIMIZER_NAMES:
            model, optimizer = _build(name, learning_rate=LR, weight_decay=WEIGHT_DECAY)
            results[f"{name}_ratios"] = _zero_gradient_ratios(model, optimizer)
            results[f"{name}_replicas_agree"] = _replicas_agree(strategy, model)

        # Replica r sends gradient r + 1: one SGD step moves by lr * (1 + 2).
        model, optimizer = _build("sgd", learning_rate=LR, weight_decay=0.0)
        variables = model.trainable_variables
        before = [v.numpy() for v in variables]
        _apply_on_replicas(
            optimizer, variables, lambda r, v: tf.fill(v.shape, tf.cast(r, tf.float32) + 1)
        )
        deltas = np.concatenate([(v.numpy() - old).ravel() for v, old in zip(variables, before)])
        results["summed_step"] = [float(deltas.min()), float(deltas.max())]

        # Only replica 1 overflows: every replica must skip the step.
        model, optimizer = _build(
            "sgd", learning_rate=LR, weight_decay=WEIGHT_DECAY, loss_scale=True
        )
        variables = model.trainable_variables
        before = [v.numpy() for v in variables]
        _apply_on_replicas(
            optimizer, variables, lambda r, v: tf.where(r == 1, np.inf, tf.ones(v.shape))
        )
        results["overflow_unchanged"] = all(
            np.array_equal(v.numpy(), old) for v, old in zip(variables, before)
        )
        # float() of a Keras variable holding a MirroredVariable fails: use numpy().
        results["overflow_scale"] = float(optimizer.dynamic_scale.numpy())
        results["overflow_iterations"] = int(optimizer.iterations.numpy())
        _apply_on_replicas(optimizer, variables, lambda r, v: tf.ones(v.shape))
        results["finite_iterations"] = int(optimizer.iterations.numpy())

        # What the trainer logs: the schedule at the (mirrored) step counter.
        schedule = optimizers.learning_rate_schedule(0.4, 256, total_steps=10, warmup_steps=4)
        _, optimizer = _build("sgd", learning_rate=schedule, weight_decay=0.0)
        optimizer.iterations.assign(2)
        results["scheduled_lr"] = float(optimizer.learning_rate)

        model = _tiny_model()
    try:
        optimizers.create_optimizer("sgd", learning_rate=LR, weight_decay=0.0, model=model)
    except ValueError as error:
        results["outside_scope_error"] = str(error)
    return results


@pytest.fixture(scope="module")
def mirrored_results() -> dict:
    process = subprocess.run(
        [sys.executable, "-m", "tests.test_optimizers"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


def test_mirrored_strategy_has_two_replicas(mirrored_results):
    assert mirrored_results["replicas"] == 2


@pytest.mark.parametrize("name", optimizers.OPTIMIZER_NAMES)
def test_mirrored_weight_decay_on_kernels_only(mirrored_results, name):
    assert mirrored_results[f"{name}_replicas_agree"]
    ratios = mirrored_results[f"{name}_ratios"]
    np.testing.assert_allclose(ratios["kernels"], 1 - LR * WEIGHT_DECAY, rtol=1e-6)
    np.testing.assert_array_equal(ratios["others"], 1.0)


def test_mirrored_optimizer_sums_replica_gradients(mirrored_results):
    # So the per-replica loss must be divided by the global batch size.
    np.testing.assert_allclose(mirrored_results["summed_step"], -LR * 3, rtol=1e-6)


def test_mirrored_loss_scale_skips_when_any_replica_overflows(mirrored_results):
    assert mirrored_results["overflow_unchanged"]
    assert mirrored_results["overflow_scale"] == 2.0**14
    assert mirrored_results["overflow_iterations"] == 0
    assert mirrored_results["finite_iterations"] == 1


def test_mirrored_scheduled_learning_rate_reads_as_a_float(mirrored_results):
    assert mirrored_results["scheduled_lr"] == pytest.approx(0.2)


def test_optimizer_outside_the_models_strategy_scope_fails(mirrored_results):
    assert "strategy.scope()" in mirrored_results["outside_scope_error"]


if __name__ == "__main__":
    print(json.dumps(_run_under_mirrored_strategy()))
