"""The compiled steps and the per-loop work around them, run in this process on tiny records.

Here, not in a subprocess, so a test can count how often TensorFlow traces a
step: every trace is a new graph, and on a TPU a new XLA compile.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import records
from tests.events import read_events
from trainer import periodic, reporting, steps, train
from trainer.config import Paths, TrainConfig
from trainer.state import Schedule, create_state
from trainer.strategy import Runtime, setup_runtime
from trainer.summaries import Summaries

TINY = dict(model="resnet18", width=8, image_size=32, batch_size=4, warmup_epochs=0,
            learning_rate=0.05, label_smoothing=0.1, strategy="default", jit_compile="false",
            mixed_precision="float32")


def tiny_config(data_dir: str, model_dir: str, **flags) -> TrainConfig:
    return TrainConfig(data_dir=data_dir, paths=Paths.resolve(model_dir), **{**TINY, **flags})


def tiny_context(config: TrainConfig, summaries: Summaries) -> train.RunContext:
    """What `train.run` sets up, without running a mode."""
    runtime = setup_runtime(config.strategy, tpu=None, precision=config.mixed_precision,
                            jit_compile=config.jit_compile)
    info = records.with_shard_lengths(records.read_dataset_info(config.data_dir), config.data_dir)
    schedule = Schedule.create(config, info, runtime.num_replicas)
    state = create_state(config, runtime, info, schedule, config.paths.checkpoints)
    return train.RunContext(config, runtime, info, schedule, state, summaries)


@pytest.fixture
def eval_steps(monkeypatch) -> list[tf.types.experimental.PolymorphicFunction]:
    """Every eval step the trainer builds from now on, to read its trace count."""
    built = []
    real = steps.make_eval_step

    def make_and_record(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(steps, "make_eval_step", make_and_record)
    return built


def traces(functions) -> int:
    return sum(f.experimental_get_tracing_count() for f in functions)


def test_training_traces_the_eval_step_once_for_all_evaluations(
        tiny_records, tmp_path, monkeypatch, eval_steps):
    # Three evaluations in one run: after steps 1, 2 and 3.
    traces_after_each, validation_sets = [], 0
    real_report, real_distribute = train.evaluate_and_report, train.distribute

    def report_and_count(ctx):
        results = real_report(ctx)
        traces_after_each.append(traces(eval_steps))
        return results

    def distribute_and_count(runtime, config, info, split, *args, **kwargs):
        nonlocal validation_sets
        validation_sets += split == records.VALIDATION
        return real_distribute(runtime, config, info, split, *args, **kwargs)

    monkeypatch.setattr(train, "evaluate_and_report", report_and_count)
    monkeypatch.setattr(train, "distribute", distribute_and_count)
    model_dir = str(tmp_path / "model")
    results = train.run(tiny_config(tiny_records.data_dir, model_dir, mode="train_and_eval",
                                    train_steps=3, eval_every=1, steps_per_loop=1))

    assert results["num_examples"] == len(tiny_records.examples[records.VALIDATION])
    assert [step for step, _ in read_events(os.path.join(model_dir, "eval"))["accuracy"]] == [1, 2, 3]
    assert len(eval_steps) == 1 and validation_sets == 1  # Built once per run.
    # Traced at the first evaluation only: every eval batch has the same
    # shape (padded), and the same step serves every evaluation.
    assert traces_after_each[0] >= 1
    assert traces_after_each == [traces_after_each[0]] * 3


def test_eval_mode_counts_every_example_at_every_evaluation(tiny_records, tmp_path, eval_steps):
    # The one dataset is read again from its start at each evaluation.
    config = tiny_config(tiny_records.data_dir, str(tmp_path), mode="eval")
    with Summaries(str(tmp_path), enabled=False) as summaries:
        ctx = tiny_context(config, summaries)
        counts, traces_after_each = [], []
        for _ in range(3):
            counts.append(train.evaluate_and_report(ctx)["num_examples"])
            traces_after_each.append(traces(eval_steps))
    assert counts == [len(tiny_records.examples[records.VALIDATION])] * 3
    assert len(eval_steps) == 1 and traces_after_each == [1, 1, 1]


def test_an_eval_step_built_per_evaluation_traces_at_every_one(tiny_records, tmp_path):
    """What the tests above rule out, as the trainer did before: the count does see a rebuild."""
    config = tiny_config(tiny_records.data_dir, str(tmp_path), mode="eval")
    with Summaries(str(tmp_path), enabled=False) as summaries:
        ctx = tiny_context(config, summaries)
    dataset = train.distribute(ctx.runtime, config, ctx.info, records.VALIDATION, training=False)
    built = []
    for _ in range(3):
        built.append(steps.make_eval_step(ctx.runtime, ctx.state.model, ctx.info.num_classes))
        steps.evaluate(built[-1], dataset, ctx.info.num_classes)
    assert [f.experimental_get_tracing_count() for f in built] == [1, 1, 1]  # 3 traces in all.


def fake_train_loop(first_bad: int):
    """A compiled loop's result without the compiling: loss 0.5, the NaN at `first_bad`."""
    def train_loop(iterator, num_steps):
        del iterator
        return steps.LoopResult(tf.constant(0.5), tf.constant(0.25), tf.constant(first_bad),
                                num_steps, tf.constant(False))
    return train_loop


def test_run_steps_counts_logs_and_stops_on_nan_naming_the_step(tiny_records, tmp_path):
    config = tiny_config(tiny_records.data_dir, str(tmp_path), train_steps=10)
    throughput = periodic.Throughput(config.batch_size, clock=iter([0.0, 2.0, 3.0]).__next__)
    profiler = reporting.Profiler(None, str(tmp_path), enabled=False)
    throughput.start(0)
    with Summaries(str(tmp_path), enabled=True) as summaries:
        ctx = tiny_context(config, summaries)
        step, result = train.run_steps(ctx, fake_train_loop(-1), iter(()), step=0, stop=4,
                                       throughput=throughput, profiler=profiler)
        assert step == 4 and int(ctx.state.step.numpy()) == 4 and int(result.steps) == 4
        # Steps 5 and 6; the second one (index 1) is the bad one.
        with pytest.raises(FloatingPointError, match=r"loss became 0.5 at step 6; not saving"):
            train.run_steps(ctx, fake_train_loop(1), iter(()), step=4, stop=6,
                            throughput=throughput, profiler=profiler)
    assert int(ctx.state.step.numpy()) == 4  # A NaN loop does not count.
    events = read_events(str(tmp_path / "train"))
    assert events["loss"] == [(4, 0.5)]
    assert events["images_per_second"] == [(4, pytest.approx(4 * 4 / 2.0))]


def smoothed_cross_entropy(targets: np.ndarray, logits: np.ndarray, smoothing: float) -> np.ndarray:
    """The numpy reference: -sum((t (1 - s) + s / C) log softmax(logits)) per example."""
    smoothed = targets * (1 - smoothing) + smoothing / targets.shape[-1]
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -(smoothed * log_softmax).sum(-1)


def test_soft_targets_are_smoothed_like_one_hot_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4)).astype(np.float32)
    labels = np.array([0, 3, 1], np.int32)
    one_hot = np.eye(4, dtype=np.float32)[labels]
    mixed = 0.7 * one_hot + 0.3 * np.eye(4, dtype=np.float32)[[2, 0, 1]]
    for targets in (one_hot, mixed):
        np.testing.assert_allclose(steps.cross_entropy(tf.constant(targets), logits, 4, 0.1),
                                   smoothed_cross_entropy(targets, logits, 0.1), rtol=1e-5)
    np.testing.assert_allclose(steps.cross_entropy(tf.constant(labels), logits, 4, 0.1),
                               smoothed_cross_entropy(one_hot, logits, 0.1), rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[batch, num_classes\]"):
        steps.cross_entropy(tf.constant(mixed[0]), logits[0], 4, 0.1)


@pytest.mark.parametrize("soft", [True, False], ids=["soft_targets", "labels"])
def test_train_step_scores_the_dominant_label_of_each_mixed_image(soft):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])
    optimizer = keras.optimizers.SGD(0.0)  # Fixed weights: the predictions are known.
    optimizer.build(model.trainable_variables)
    features = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    logits = model(features).numpy()
    predicted = logits.argmax(-1)
    other = (predicted + 1) % 4
    # The first 6 images are mostly of the predicted class, the last 2 mostly of another.
    dominant = np.where(np.arange(8) < 6, predicted, other)
    second = np.where(np.arange(8) < 6, other, predicted)
    one_hot = np.eye(4, dtype=np.float32)
    targets = 0.6 * one_hot[dominant] + 0.4 * one_hot[second]
    labels = targets if soft else dominant.astype(np.int32)
    loop = steps.make_train_loop(Runtime(tf.distribute.get_strategy(), "cpu", "float32", False),
                                 model, optimizer, global_batch_size=8, num_classes=4,
                                 label_smoothing=0.1)
    result = loop(iter(tf.data.Dataset.from_tensor_slices((features, labels)).batch(8).repeat()),
                  tf.constant(1))
    assert float(result.accuracy) == 0.75  # Not 0.25: the second label does not count.
    reference = targets if soft else one_hot[dominant]
    assert float(result.loss) == pytest.approx(
        smoothed_cross_entropy(reference, logits, 0.1).mean(), rel=1e-5)


def test_training_on_mixed_batches_says_how_its_accuracy_is_measured(tiny_records, tmp_path,
                                                                    monkeypatch):
    said, log = [], reporting.logging.info

    def log_and_keep(message, *args, **kwargs):
        said.append(str(message) % args if args else str(message))
        log(message, *args, **kwargs)

    # Not caplog: absl's own handler, once another test installed it, bypasses it.
    monkeypatch.setattr(reporting.logging, "info", log_and_keep)
    model_dir = str(tmp_path / "model")
    train.run(tiny_config(tiny_records.data_dir, model_dir, mode="train", train_steps=2,
                          steps_per_loop=2, mixup=0.4, cutmix=1.0, mix_prob=0.5))
    about_accuracy = [line for line in said if "dominant label" in line]
    assert len(about_accuracy) == 1 and "mixing 0.5 of training batches" in about_accuracy[0]
    losses = read_events(os.path.join(model_dir, "train"))["loss"]
    assert [step for step, _ in losses] == [2] and np.isfinite(losses[0][1])
