"""ResNet v1.5: parameter counts against torchvision, strides, dtypes, init,
and the fused batch norm against Keras' own.

The MirroredStrategy check runs this module as a script in a subprocess
(`python -m tests.test_models`), because the two logical CPU devices must be
configured before TensorFlow initialises, which it has already done in the
pytest process.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.module_script import run_module_script
from trainer import models

# Trainable parameters of torchvision.models.resnet*(num_classes=1000). BN
# moving statistics are buffers in PyTorch and non-trainable in Keras.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


@functools.cache
def _narrow_model(name: str, zero_init_residual: bool = False) -> keras.Model:
    """A narrow model shared by the tests that only inspect it (not trained)."""
    return models.create_model(name, 10, width=4, zero_init_residual=zero_init_residual)


def _num_trainable(model: keras.Model) -> int:
    return sum(math.prod(v.shape) for v in model.trainable_variables)


def _layers_of(model: keras.Model, kind: type) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, kind)]


@pytest.fixture
def dtype_policy(request):
    """Sets the global Keras dtype policy for one test, then restores it."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_trainable_parameters_match_torchvision(name):
    model = models.create_model(name, 1000)
    assert _num_trainable(model) == TORCHVISION_PARAMS[name]


def test_model_names_are_the_variants():
    assert models.MODEL_NAMES == ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def test_model_names_match_the_flag_choices():
    from trainer import config

    assert models.MODEL_NAMES == config.MODELS


@pytest.mark.parametrize("name, width, size", [
    *[(name, 4, 33) for name in sorted(TORCHVISION_PARAMS)], ("resnet18", 8, 64), ("resnet50", 8, 64)])
def test_model_size_counts_what_the_built_model_holds(name, width, size):
    model = models.create_model(name, 7, width=width, input_shape=(size, size, 3))
    conv_outputs = sum(math.prod(layer.output.shape[1:])
                       for layer in _layers_of(model, keras.layers.Conv2D))
    assert models.model_size(name, 7, width=width, image_size=size) == (
        model.count_params(), conv_outputs)


def test_strided_projection_equals_a_strided_1x1_conv():
    model = models.create_model("resnet18", 3, width=16, input_shape=(15, 15, 3))
    stage2_in = model.get_layer("stage1_block2_out").output
    project = keras.Model(model.input, [stage2_in, model.get_layer("stage2_block1_proj_conv").output])
    features, projected = project(tf.random.uniform([2, 15, 15, 3]))
    kernel = model.get_layer("stage2_block1_proj_conv").kernel
    np.testing.assert_allclose(projected, tf.nn.conv2d(features, kernel, 2, "VALID"),
                               rtol=1e-5, atol=1e-5)


def test_narrow_model_trains_at_224_px():
    # In a subprocess: oneDNN's strided 1x1 weight gradient for fewer than
    # 16 input channels kills the whole process (see models._conv_bn).
    code = ("import tensorflow as tf\n"
            "from trainer import models\n"
            "model = models.create_model('resnet18', 3, width=8)\n"
            "with tf.GradientTape() as tape:\n"
            "    loss = tf.reduce_sum(model(tf.ones([1, 224, 224, 3]), training=True))\n"
            "grads = tape.gradient(loss, model.trainable_variables)\n"
            "print(sum(int(tf.reduce_all(tf.math.is_finite(g))) for g in grads), len(grads))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    finite, total = result.stdout.split()
    assert finite == total


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="resnet26") as error:
        models.create_model("resnet26", 10)
    for name in models.MODEL_NAMES:
        assert name in str(error.value)


def test_bottleneck_downsamples_in_the_3x3_conv():
    model = _narrow_model("resnet50")
    for stage in (2, 3, 4):
        prefix = f"stage{stage}_block1"
        assert model.get_layer(f"{prefix}_1_conv").strides == (1, 1)
        assert model.get_layer(f"{prefix}_2_conv").kernel_size == (3, 3)
        assert model.get_layer(f"{prefix}_2_conv").strides == (2, 2)
        assert model.get_layer(f"{prefix}_3_conv").strides == (1, 1)
        # A 1x1 projection strides by subsampling its input first.
        assert model.get_layer(f"{prefix}_proj_conv").subsample == 2
        # Only the first block of a stage downsamples.
        assert model.get_layer(f"stage{stage}_block2_2_conv").strides == (1, 1)
    # Stage 1 follows the max-pool and keeps its resolution, but still
    # projects: the bottleneck widens width -> 4 * width.
    assert model.get_layer("stage1_block1_2_conv").strides == (1, 1)
    assert model.get_layer("stage1_block1_proj_conv").strides == (1, 1)
    assert model.get_layer("stem_conv").strides == (2, 2)
    assert model.get_layer("stem_pool").strides == (2, 2)


def test_basic_block_downsamples_in_its_first_conv_and_projects_only_then():
    model = _narrow_model("resnet18")
    assert model.get_layer("stage2_block1_1_conv").strides == (2, 2)
    assert model.get_layer("stage2_block1_2_conv").strides == (1, 1)
    names = {layer.name for layer in model.layers}
    assert "stage1_block1_proj_conv" not in names  # width -> width: identity
    assert {f"stage{s}_block1_proj_conv" for s in (2, 3, 4)} <= names


@pytest.mark.parametrize(
    "size, final_size", [(32, 1), (33, 2), (64, 2), (224, 7)]
)
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_output_shapes_at_any_input_size(name, size, final_size):
    model = _narrow_model(name)
    # The last feature map is ceil(size / 32) on a side, as in torchvision.
    features = keras.Model(model.input, model.get_layer("avg_pool").input)
    images = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32")
    feature_map, logits = features(images), model(images)
    assert tuple(feature_map.shape[:3]) == (2, final_size, final_size)
    assert tuple(logits.shape) == (2, 10)
    assert np.all(np.isfinite(logits))


def test_fixed_input_shape():
    model = models.create_model("resnet18", 5, width=4, input_shape=(40, 48, 3))
    assert tuple(model.input.shape) == (None, 40, 48, 3)
    assert tuple(model.output.shape) == (None, 5)


@pytest.mark.parametrize("dtype_policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_logits_are_float32_under_mixed_precision(dtype_policy):
    model = models.create_model("resnet18", 3, width=4)
    compute_dtype = dtype_policy.removeprefix("mixed_")
    assert model.get_layer("stem_conv").compute_dtype == compute_dtype
    assert model.get_layer("stage4_block2_2_conv").compute_dtype == compute_dtype
    # Variables stay float32 for the optimizer.
    assert all(v.dtype == "float32" for v in model.variables)
    logits = model(tf.random.normal((2, 32, 32, 3)), training=False)
    assert model.output.dtype == "float32"
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_batch_norm_after_every_conv_and_no_conv_bias(name):
    model = _narrow_model(name)
    convs = _layers_of(model, keras.layers.Conv2D)
    norms = _layers_of(model, keras.layers.BatchNormalization)
    conv_prefixes = [conv.name.removesuffix("_conv") for conv in convs]
    assert conv_prefixes == [norm.name.removesuffix("_bn") for norm in norms]
    assert all(not conv.use_bias for conv in convs)
    assert all(norm.momentum == 0.9 and norm.epsilon == 1e-5 for norm in norms)
    head = model.get_layer("logits")
    assert head.use_bias and head.dtype_policy.name == "float32"


def test_conv_init_is_untruncated_he_normal_with_fan_out():
    model = models.create_model("resnet18", 10, width=16)
    kernel = model.get_layer("stage4_block2_1_conv").kernel.numpy()  # 3x3, 128 -> 128
    expected_std = math.sqrt(2.0 / (3 * 3 * kernel.shape[-1]))
    assert kernel.std() == pytest.approx(expected_std, rel=0.03)
    # A truncated normal would stop at 2 standard deviations.
    assert np.abs(kernel).max() > 3 * expected_std


def _last_bn_names(model: keras.Model, last: str) -> list[str]:
    return [layer.name for layer in model.layers if layer.name.endswith(f"_{last}_bn")]


@pytest.mark.parametrize("name, last", [("resnet18", "2"), ("resnet50", "3")])
def test_zero_init_residual_zeroes_the_last_gamma_of_each_block(name, last):
    default = _narrow_model(name)
    zeroed = _narrow_model(name, zero_init_residual=True)
    last_bns = _last_bn_names(zeroed, last)
    assert len(last_bns) == (8 if name == "resnet18" else 16)
    for layer in zeroed.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            expected = 0.0 if layer.name in last_bns else 1.0
            np.testing.assert_array_equal(layer.gamma.numpy(), expected, err_msg=layer.name)
    for layer in _layers_of(default, keras.layers.BatchNormalization):
        np.testing.assert_array_equal(layer.gamma.numpy(), 1.0, err_msg=layer.name)


def test_zero_init_residual_makes_identity_blocks_pass_their_input_through():
    model = _narrow_model("resnet18", zero_init_residual=True)
    probe = keras.Model(
        model.input,
        [model.get_layer(f"stage1_block{i}_out").output for i in (1, 2)],
    )
    block_in, block_out = probe(tf.random.normal((2, 64, 64, 3)), training=False)
    # Residual branch is exactly 0 and the input is post-ReLU: out == in.
    np.testing.assert_allclose(block_out, block_in, atol=1e-6)


def test_one_training_step_updates_everything():
    model = models.create_model("resnet18", 4, width=4)
    images = tf.random.normal((4, 32, 32, 3))
    labels = tf.constant([0, 1, 2, 3])
    moving_mean_before = model.get_layer("stem_bn").moving_mean.numpy().copy()
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        loss = tf.reduce_mean(loss)
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(loss.numpy())
    for variable, grad in zip(model.trainable_variables, grads):
        assert grad is not None, variable.path
        assert np.all(np.isfinite(grad)), variable.path
        assert np.any(grad.numpy() != 0), variable.path
    # training=True updates the BN moving statistics.
    assert np.any(model.get_layer("stem_bn").moving_mean.numpy() != moving_mean_before)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        models.create_model("resnet18", 0)
    with pytest.raises(ValueError, match="input_shape"):
        models.create_model("resnet18", 10, input_shape=(32, 32))


# --------------------------------------------------------------------------
# FusedBatchNormalization against keras.layers.BatchNormalization.

# Outputs may differ by a rounding of the compute dtype (both compute in
# float32 and round once, in different orders); the moving statistics are
# float32 in both, from the same inputs.
OUTPUT_TOLERANCE = {"float32": 1e-5, "mixed_float16": 4e-3, "mixed_bfloat16": 3e-2}
STATISTICS_TOLERANCE = 1e-5
# 2 x 3 x 3 values per channel: the kernel's Bessel-corrected variance would
# be 18 / 17, 6% larger than the biased one Keras averages, far outside the
# tolerance, so the tests also check that the correction is undone.
BN_INPUT_SHAPE = (2, 3, 3, 4)


def _bn_pair(channels: int) -> tuple[keras.layers.Layer, keras.layers.Layer]:
    """Keras' layer and ours, with the same non-trivial gamma, beta and statistics."""
    rng = np.random.default_rng(0)
    weights = [
        rng.uniform(0.5, 2.0, channels),  # gamma
        rng.normal(size=channels),  # beta
        rng.normal(size=channels),  # moving mean
        rng.uniform(0.5, 2.0, channels),  # moving variance
    ]
    pair = (
        keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
        models.FusedBatchNormalization(momentum=0.9, epsilon=1e-5),
    )
    for layer in pair:
        layer.build((None, None, None, channels))
        layer.set_weights([w.astype(np.float32) for w in weights])
    return pair


def _bn_inputs(seed: int = 0, shape=BN_INPUT_SHAPE) -> np.ndarray:
    # Off-centre and not unit variance, so both statistics matter.
    return np.random.default_rng(seed).normal(3.0, 2.0, size=shape).astype(np.float32)


def _statistics(layer: keras.layers.Layer) -> list[np.ndarray]:
    return [layer.moving_mean.numpy(), layer.moving_variance.numpy()]


def _call(layer, images, training: bool, mode: str) -> tf.Tensor:
    """`layer(images)` eagerly, traced (with a static or an unknown shape) or compiled."""
    call = lambda x: layer(x, training=training)  # noqa: E731
    if mode == "unknown shape":
        call = tf.function(call, input_signature=[tf.TensorSpec([None] * 4, layer.compute_dtype)])
    elif mode != "eager":
        call = tf.function(call, jit_compile=mode == "xla")
    return call(tf.cast(images, layer.compute_dtype))


@pytest.mark.parametrize("mode", ["eager", "tf.function", "unknown shape", "xla"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize(
    "dtype_policy", ["float32", "mixed_float16", "mixed_bfloat16"], indirect=True
)
def test_fused_batch_norm_matches_keras(dtype_policy, training, mode):
    keras_bn, fused_bn = _bn_pair(BN_INPUT_SHAPE[-1])
    initial = _statistics(keras_bn)
    # Two calls: the second normalises and averages after an update.
    for seed in (1, 2):
        expected = _call(keras_bn, _bn_inputs(seed), training, mode)
        actual = _call(fused_bn, _bn_inputs(seed), training, mode)
        assert actual.dtype == expected.dtype == keras_bn.compute_dtype
        tolerance = OUTPUT_TOLERANCE[dtype_policy]
        np.testing.assert_allclose(
            tf.cast(actual, tf.float32), tf.cast(expected, tf.float32), rtol=tolerance, atol=tolerance
        )
    for name, ours, theirs, before in zip(
        ("mean", "variance"), _statistics(fused_bn), _statistics(keras_bn), initial
    ):
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=STATISTICS_TOLERANCE, err_msg=name)
        assert training != np.array_equal(ours, before), name


@pytest.mark.parametrize(
    "dtype_policy", ["float32", "mixed_float16", "mixed_bfloat16"], indirect=True
)
def test_fused_batch_norm_runs_the_fused_kernel(dtype_policy):
    _, fused_bn = _bn_pair(BN_INPUT_SHAPE[-1])
    for training in (True, False):
        graph = (
            tf.function(lambda x: fused_bn(x, training=training))
            .get_concrete_function(tf.TensorSpec(BN_INPUT_SHAPE, fused_bn.compute_dtype))
            .graph
        )
        op_types = {op.type for op in graph.get_operations()}
        # Not Keras' moments and arithmetic.
        assert "FusedBatchNormV3" in op_types and "Mean" not in op_types, training


@pytest.mark.parametrize("mode", ["tf.function", "xla"])
@pytest.mark.parametrize(
    "dtype_policy", ["float32", "mixed_float16", "mixed_bfloat16"], indirect=True
)
def test_fused_batch_norm_gradients_match_keras(dtype_policy, mode):
    keras_bn, fused_bn = _bn_pair(BN_INPUT_SHAPE[-1])
    images = tf.constant(_bn_inputs(), keras_bn.compute_dtype)
    # A loss that weights every output differently, so no gradient vanishes.
    weights = tf.constant(_bn_inputs(seed=5))

    def gradients(layer):
        def grad_fn():
            with tf.GradientTape() as tape:
                tape.watch(images)
                outputs = tf.cast(layer(images, training=True), tf.float32)
                loss = tf.reduce_sum(outputs * weights)
            return tape.gradient(loss, [images, layer.gamma, layer.beta])

        return tf.function(grad_fn, jit_compile=mode == "xla")()

    tolerance = max(OUTPUT_TOLERANCE[dtype_policy], 1e-4)
    for name, ours, theirs in zip(
        ("inputs", "gamma", "beta"), gradients(fused_bn), gradients(keras_bn)
    ):
        assert ours.dtype == theirs.dtype, name
        np.testing.assert_allclose(
            tf.cast(ours, tf.float32), tf.cast(theirs, tf.float32),
            rtol=tolerance, atol=tolerance, err_msg=name,
        )


def test_fused_batch_norm_falls_back_to_keras_for_other_ranks():
    keras_bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    fused_bn = models.FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
    features = tf.constant(_bn_inputs().reshape(6, 12))
    np.testing.assert_allclose(
        fused_bn(features, training=True), keras_bn(features, training=True), atol=1e-6
    )
    np.testing.assert_allclose(_statistics(fused_bn), _statistics(keras_bn), atol=1e-7)


def test_fused_model_matches_the_keras_batch_norm_model(monkeypatch, tmp_path):
    fused_class = models.FusedBatchNormalization
    fused = models.create_model("resnet18", 10, width=4)
    with monkeypatch.context() as patch:
        patch.setattr(models, "FusedBatchNormalization", keras.layers.BatchNormalization)
        plain = models.create_model("resnet18", 10, width=4)
    norms = _layers_of(fused, keras.layers.BatchNormalization)
    assert norms and all(isinstance(norm, fused_class) for norm in norms)
    assert not _layers_of(plain, fused_class)
    # The same variables under the same names: checkpoints written before
    # the fused layer restore into it.
    assert [v.path for v in fused.variables] == [v.path for v in plain.variables]
    path = tf.train.Checkpoint(model=plain).write(os.fspath(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=fused).read(path).assert_consumed()
    images = tf.random.normal((8, 32, 32, 3), seed=0)
    for training in (True, False):
        np.testing.assert_allclose(
            fused(images, training=training), plain(images, training=training), atol=1e-4
        )
    for ours, theirs in zip(fused.non_trainable_variables, plain.non_trainable_variables):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6, err_msg=ours.path)


def _run_under_mirrored_strategy() -> dict:
    """Runs in the subprocess: one training call of each layer on 2 replicas."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        pair = _bn_pair(BN_INPUT_SHAPE[-1])
    # Each replica its own batch, hence its own batch statistics.
    images = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(_bn_inputs(seed=context.replica_id_in_sync_group))
    )
    results: dict = {"replicas": strategy.num_replicas_in_sync}
    for name, layer in zip(("keras", "fused"), pair):
        outputs = tf.function(
            lambda x, layer=layer: strategy.run(lambda x: layer(x, training=True), args=(x,))
        )(images)
        local = strategy.experimental_local_results
        results[name] = {
            "outputs": [o.numpy().tolist() for o in local(outputs)],
            "mean": [v.numpy().tolist() for v in local(layer.moving_mean.value)],
            "variance": [v.numpy().tolist() for v in local(layer.moving_variance.value)],
        }
    return results


@pytest.fixture(scope="module")
def mirrored_results() -> dict:
    return run_module_script("tests.test_models")


@pytest.mark.parametrize("key", ["outputs", "mean", "variance"])
def test_fused_batch_norm_under_mirrored_strategy_matches_keras(mirrored_results, key):
    assert mirrored_results["replicas"] == 2
    ours, theirs = mirrored_results["fused"][key], mirrored_results["keras"][key]
    np.testing.assert_allclose(ours, theirs, rtol=STATISTICS_TOLERANCE, atol=1e-5)
    if key != "outputs":
        # As with Keras' layer, each replica averages its own batches (the
        # trainer averages the replicas before saving and evaluating).
        assert not np.allclose(ours[0], ours[1])


if __name__ == "__main__":
    print(json.dumps(_run_under_mirrored_strategy()))
