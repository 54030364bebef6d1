"""Batches -> steps: the compiled train loop, the eval step and the loss they share.

Like Orbit's single-task trainer, a `tf.function` runs `steps_per_loop`
steps per call, each a `strategy.run` of the replica step, so the same code
drives one CPU, a GPU host, several hosts or a TPU pod.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from trainer import ema
from trainer import metrics
from trainer import models
from trainer.strategy import Runtime


class LoopResult(NamedTuple):
    """What one call of the compiled training loop returns."""

    loss: tf.Tensor  # Mean over the steps run.
    accuracy: tf.Tensor
    first_bad: tf.Tensor  # Index of the first step with a NaN/inf loss, or -1.
    steps: tf.Tensor  # Steps run: fewer than asked when preempted.
    preempted: tf.Tensor  # SIGTERM on any worker: stop and save.


def _is_soft(labels: tf.Tensor) -> bool:
    """Whether `labels` are soft targets [batch, classes] (mixed images), not class ids [batch].

    Told by the dtype when the step is traced: each kind gets its own graph.
    """
    if not labels.dtype.is_floating:
        return False
    if labels.shape.rank != 2:
        raise ValueError(
            f"soft targets must be [batch, num_classes] floats, got shape {labels.shape}")
    return True


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor, num_classes: int, smoothing: float) -> tf.Tensor:
    """Per-example softmax cross-entropy with label smoothing, in float32.

    Args:
      labels: int class ids [batch], or float soft targets [batch, num_classes]
        whose rows sum to 1 (mixed images). Both are smoothed alike.
    """
    if _is_soft(labels):
        targets = tf.cast(labels, tf.float32)
    else:
        targets = tf.one_hot(labels, num_classes, dtype=tf.float32)
    targets = targets * (1.0 - smoothing) + smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(targets, tf.cast(logits, tf.float32))


def _dominant_labels(labels: tf.Tensor) -> tf.Tensor:
    """Class ids [batch]: `labels` themselves, or each soft target's largest class."""
    return tf.argmax(labels, axis=-1, output_type=tf.int32) if _is_soft(labels) else labels


def make_train_loop(runtime: Runtime, model: keras.Model, optimizer: keras.optimizers.Optimizer, *,
                    global_batch_size: int, num_classes: int, label_smoothing: float,
                    stop_requested: Callable[[], tf.Tensor] = lambda: tf.constant(False),
                    frozen_backbone: bool = False, average: ema.WeightAverage | None = None,
                    ) -> Callable[[Any, tf.Tensor], LoopResult]:
    """Returns `train_loop(iterator, num_steps) -> LoopResult`.

    The iterator yields (images, labels): int class ids, or soft targets of
    mixed images, whose training accuracy counts their dominant class.

    `stop_requested` runs after every step, inside the compiled loop (see
    `preemption.make_stop_check`); when it turns true the loop returns early.
    With `frozen_backbone` only the head trains, and the backbone's batch
    norm runs in inference mode, so its statistics stay those it was
    trained with (the head has no layer that `training` changes).
    `average` (--ema_decay) is updated after every optimizer step.
    """
    strategy = runtime.strategy
    scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    trained = models.head_variables(model) if frozen_backbone else model.trainable_variables

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=not frozen_backbone)
            per_example = cross_entropy(labels, logits, num_classes, label_smoothing)
            # Divide by the GLOBAL batch: the optimizer sums gradients over
            # replicas, so the sum is the gradient of the global-batch mean.
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            scaled_loss = optimizer.scale_loss(loss) if scales_loss else loss
        grads = tape.gradient(scaled_loss, trained)
        optimizer.apply(grads, trained)
        if average is not None:
            average.update()
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(predictions, _dominant_labels(labels)), tf.float32))
        return loss, correct

    if runtime.jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_loop(iterator, num_steps):
        loss_sum, correct_sum = tf.constant(0.0), tf.constant(0.0)
        first_bad = tf.constant(-1, tf.int32)
        steps, preempted = tf.constant(0, tf.int32), tf.constant(False)
        while steps < num_steps and not preempted:
            loss, correct = strategy.run(replica_step, args=next(iterator))
            loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
            first_bad = tf.where((first_bad < 0) & ~tf.math.is_finite(loss), steps, first_bad)
            loss_sum += loss
            correct_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
            steps += 1
            # After every step, never before one: each step then runs the same
            # collectives on every worker, however their loops are split.
            preempted = stop_requested()
        ran = tf.cast(tf.maximum(steps, 1), tf.float32)
        return LoopResult(loss_sum / ran, correct_sum / (ran * global_batch_size), first_bad,
                          steps, preempted)

    return train_loop


def make_sync_statistics(runtime: Runtime, model: keras.Model,
                         average: ema.WeightAverage | None = None) -> Callable[[], None]:
    """Returns `sync()`, which sets every replica's batch-norm statistics to their mean.

    Keras makes the moving mean and variance mirrored variables that each
    replica updates from its own batches only, so the replicas drift apart:
    a checkpoint would keep the chief's first replica's statistics, and each
    replica would evaluate with its own. Averaging them before every save
    and evaluation (one batched all-reduce) makes both use all the data.
    The `average`'s averages of them drift the same way, and sync with them.
    """
    strategy, statistics = runtime.strategy, model.non_trainable_variables
    if average is not None:
        statistics = [*statistics, *average.averages_of(statistics)]
    if runtime.num_replicas == 1 or not statistics:
        return lambda: None

    def mean_of_replicas():
        means = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.MEAN, [tf.identity(v) for v in statistics])
        for variable, mean in zip(statistics, means):
            variable.assign(mean)

    return tf.function(lambda: strategy.run(mean_of_replicas))


def make_eval_step(runtime: Runtime, model: keras.Model, num_classes: int
                   ) -> Callable[[Any, Any], tuple[tf.Tensor, tf.Tensor]]:
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


def evaluate(eval_step: Callable, dataset, num_classes: int) -> dict[str, Any]:
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


class Evaluator:
    """`evaluator()` evaluates on `dataset`: one eval step and one dataset for every evaluation.

    Built once per run, not per evaluation: a new `tf.function` would be
    traced again each time, and on a TPU compiled again by XLA.
    """

    def __init__(self, runtime: Runtime, model: keras.Model, num_classes: int,
                 dataset: tf.distribute.DistributedDataset):
        self._eval_step = make_eval_step(runtime, model, num_classes)
        self._dataset, self._num_classes = dataset, num_classes

    def __call__(self) -> dict[str, Any]:
        return evaluate(self._eval_step, self._dataset, self._num_classes)
