"""Batches -> steps -> checkpoints: the custom training loop.

Like Orbit's single-task trainer, a `tf.function` runs `steps_per_loop`
steps per call, each a `strategy.run` of the replica step, so the same code
drives one CPU, a GPU host, several hosts or a TPU pod.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from typing import Any

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from input_pipeline import records
from input_pipeline.dataset import create_dataset
from trainer import export
from trainer import metrics
from trainer import models
from trainer import optimizers
from trainer import periodic
from trainer import reporting
from trainer.config import TrainConfig
from trainer.strategy import Runtime, setup_runtime
from trainer.summaries import Summaries

INPUT_DTYPES = {"float32": tf.float32, "mixed_float16": tf.float16, "mixed_bfloat16": tf.bfloat16}


@dataclasses.dataclass
class State:
    """What a checkpoint holds, plus the manager that writes it."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable
    manager: tf.train.CheckpointManager


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Step counts derived from the data set size and the flags."""

    global_batch_size: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @classmethod
    def create(cls, config: TrainConfig, info: records.DatasetInfo, num_replicas: int) -> "Schedule":
        if config.batch_size % num_replicas:
            raise ValueError(
                f"--batch_size={config.batch_size} does not divide across {num_replicas} "
                f"replicas; use a multiple of {num_replicas}"
            )
        steps_per_epoch = max(1, info.num_examples[records.TRAIN] // config.batch_size)
        total = config.train_steps or math.ceil(config.epochs * steps_per_epoch)
        return cls(
            global_batch_size=config.batch_size,
            steps_per_epoch=steps_per_epoch,
            total_steps=total,
            warmup_steps=min(round(config.warmup_epochs * steps_per_epoch), total // 2),
        )


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor, num_classes: int, smoothing: float) -> tf.Tensor:
    """Per-example softmax cross-entropy with label smoothing, in float32."""
    one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    targets = one_hot * (1.0 - smoothing) + smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(targets, tf.cast(logits, tf.float32))


def create_state(config: TrainConfig, runtime: Runtime, info: records.DatasetInfo,
                 schedule: Schedule, checkpoint_dir: str) -> State:
    """Builds model, optimizer and step under the strategy and restores the latest checkpoint."""
    with runtime.strategy.scope():
        model = models.create_model(
            config.model, info.num_classes, width=config.width,
            zero_init_residual=config.zero_init_residual,
        )
        learning_rate = optimizers.learning_rate_schedule(
            config.learning_rate, schedule.global_batch_size,
            total_steps=schedule.total_steps, warmup_steps=schedule.warmup_steps,
        )
        optimizer = optimizers.create_optimizer(
            config.optimizer, learning_rate=learning_rate, weight_decay=config.weight_decay,
            model=model, loss_scale=runtime.precision == "mixed_float16",
        )
        # Slot variables must exist before the first distributed step, or
        # Keras would try to create them inside the tf.function.
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_dir, max_to_keep=config.keep_checkpoints, step_counter=step
    )
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("restored %s at step %d", manager.latest_checkpoint, int(step.numpy()))
    return State(model, optimizer, step, manager)


def make_train_loop(runtime: Runtime, state: State, *, global_batch_size: int,
                    num_classes: int, label_smoothing: float):
    """Returns `train_loop(iterator, num_steps) -> (loss, accuracy, first_bad_step)`."""
    strategy, model, optimizer = runtime.strategy, state.model, state.optimizer
    scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = cross_entropy(labels, logits, num_classes, label_smoothing)
            # Divide by the GLOBAL batch: the optimizer sums gradients over
            # replicas, so the sum is the gradient of the global-batch mean.
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            scaled_loss = optimizer.scale_loss(loss) if scales_loss else loss
        grads = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.float32))
        return loss, correct

    if runtime.jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_loop(iterator, num_steps):
        loss_sum, correct_sum = tf.constant(0.0), tf.constant(0.0)
        first_bad = tf.constant(-1, tf.int32)
        for i in tf.range(num_steps):
            loss, correct = strategy.run(replica_step, args=next(iterator))
            loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
            first_bad = tf.where((first_bad < 0) & ~tf.math.is_finite(loss), i, first_bad)
            loss_sum += loss
            correct_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
        steps = tf.cast(num_steps, tf.float32)
        return loss_sum / steps, correct_sum / (steps * global_batch_size), first_bad

    return train_loop


def make_eval_step(runtime: Runtime, model: keras.Model, num_classes: int):
    """Returns `eval_step(images, labels) -> (loss sum, confusion matrix)`; labels < 0 are padding."""
    strategy = runtime.strategy

    def replica_step(images, labels):
        logits = model(images, training=False)
        valid = labels >= 0
        safe_labels = tf.where(valid, labels, 0)
        per_example = cross_entropy(safe_labels, logits, num_classes, 0.0)
        loss_sum = tf.reduce_sum(tf.where(valid, per_example, 0.0))
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        # Weights instead of boolean_mask keep shapes static for XLA/TPU.
        confusion = tf.math.confusion_matrix(
            safe_labels, predictions, num_classes, weights=tf.cast(valid, tf.int32), dtype=tf.int32
        )
        return loss_sum, confusion

    @tf.function
    def eval_step(images, labels):
        loss_sum, confusion = strategy.run(replica_step, args=(images, labels))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, confusion, axis=None))

    return eval_step


def evaluate(eval_step, dataset, num_classes: int) -> dict[str, Any]:
    """One pass over the validation split; every example counted exactly once."""
    loss_sum, confusion = 0.0, np.zeros((num_classes, num_classes), np.int64)
    for images, labels in dataset:
        batch_loss, batch_confusion = eval_step(images, labels)
        loss_sum += float(batch_loss)
        confusion += batch_confusion.numpy()
    results = metrics.from_confusion(confusion)
    results["loss"] = loss_sum / max(results["num_examples"], 1)
    results["confusion"] = confusion
    return results


def _distribute(runtime: Runtime, config: TrainConfig, info: records.DatasetInfo,
                split: str, training: bool):
    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return create_dataset(
            config.data_dir, split,
            batch_size=context.get_per_replica_batch_size(config.batch_size),
            image_size=config.image_size, training=training, input_context=context,
            dtype=INPUT_DTYPES[runtime.precision], seed=config.seed, info=info,
        )

    return runtime.strategy.distribute_datasets_from_function(dataset_fn)


def _checkpoint_dir(runtime: Runtime, paths_dir: str) -> str:
    # Every MultiWorkerMirrored worker must take part in saving, but only the
    # chief's copy is kept; the others write to a scratch folder removed later.
    if runtime.is_chief:
        return paths_dir
    return tempfile.mkdtemp(prefix="seedlings-worker-ckpt-")


def run(config: TrainConfig) -> dict[str, Any] | None:
    """Runs `config.mode`: train, train_and_eval, eval or export."""
    info = records.read_dataset_info(config.data_dir)
    runtime = setup_runtime(config.strategy, tpu=config.tpu,
                            precision=config.mixed_precision, jit_compile=config.jit_compile)
    keras.mixed_precision.set_global_policy(runtime.precision)
    keras.utils.set_random_seed(config.seed)
    schedule = Schedule.create(config, info, runtime.num_replicas)
    checkpoint_dir = _checkpoint_dir(runtime, config.paths.checkpoints)
    try:
        state = create_state(config, runtime, info, schedule, checkpoint_dir)
        if config.mode == "export":
            return _export(config, runtime, info, state)
        if config.mode == "eval":
            return _evaluate_and_report(config, runtime, info, state, Summaries(
                config.paths.summaries, enabled=runtime.is_chief))
        return train(config, runtime, info, schedule, state)
    finally:
        if checkpoint_dir != config.paths.checkpoints:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)


def train(config: TrainConfig, runtime: Runtime, info: records.DatasetInfo,
          schedule: Schedule, state: State) -> dict[str, Any] | None:
    """The loop: restore, then per loop of steps train, log, maybe evaluate, maybe checkpoint."""
    step, target = int(state.step.numpy()), schedule.total_steps
    if step >= target:
        logging.info("already at step %d of %d: nothing to do", step, target)
        return None
    summaries = Summaries(config.paths.summaries, enabled=runtime.is_chief)
    if step == 0:
        reporting.log_start(summaries, config, runtime, info, schedule)
    train_loop = make_train_loop(runtime, state, global_batch_size=schedule.global_batch_size,
                                 num_classes=info.num_classes, label_smoothing=config.label_smoothing)
    iterator = iter(_distribute(runtime, config, info, records.TRAIN, training=True))
    evaluate_now, checkpoint_now = periodic.Every(config.eval_every), periodic.Every(config.checkpoint_every)
    evaluating = config.mode == "train_and_eval"
    profiler = reporting.Profiler(config.profile_steps, config.paths.summaries, enabled=runtime.is_chief)
    throughput = periodic.Throughput(schedule.global_batch_size)
    throughput.start(step)
    results = None
    while step < target:
        stop = periodic.next_stop(
            step, target, config.steps_per_loop,
            intervals=(config.eval_every if evaluating else 0, config.checkpoint_every),
            milestones=profiler.boundaries())
        profiler.maybe_start(step)
        loss, accuracy, first_bad = train_loop(iterator, tf.constant(stop - step))
        if int(first_bad) >= 0:
            raise FloatingPointError(
                f"loss became {float(loss)} at step {step + int(first_bad) + 1}; not saving a "
                f"checkpoint. Lower --learning_rate or try --mixed_precision=float32"
            )
        step = stop
        state.step.assign(step)
        profiler.maybe_stop(step)
        images_per_second, seconds_left = throughput.update(step, target)
        reporting.log_train(summaries, step, target, loss=float(loss), accuracy=float(accuracy),
                            learning_rate=float(state.optimizer.learning_rate),
                            images_per_second=images_per_second, seconds_left=seconds_left)
        if checkpoint_now.due(step) or step == target:
            state.manager.save(checkpoint_number=step)
        if evaluating and (evaluate_now.due(step) or step == target):
            results = _evaluate_and_report(config, runtime, info, state, summaries)
            throughput.start(step)  # Evaluation time is not training throughput.
    if runtime.is_chief:
        _export(config, runtime, info, state)
    return results


def _evaluate_and_report(config, runtime, info, state, summaries) -> dict[str, Any]:
    eval_step = make_eval_step(runtime, state.model, info.num_classes)
    dataset = _distribute(runtime, config, info, records.VALIDATION, training=False)
    results = evaluate(eval_step, dataset, info.num_classes)
    step = int(state.step.numpy())
    reporting.log_eval(summaries, step, results, info.class_names)
    if runtime.is_chief:
        reporting.write_metrics(config.paths.metrics_file, step, results)
    return results


def _export(config: TrainConfig, runtime: Runtime, info: records.DatasetInfo, state: State) -> None:
    if not state.manager.latest_checkpoint:
        raise FileNotFoundError(
            f"no checkpoint in {config.paths.checkpoints} to export; train first (--mode=train)"
        )
    export.export_saved_model(
        state.manager.latest_checkpoint, config.paths.export, model_name=config.model,
        width=config.width, image_size=config.image_size, info=info,
    )
