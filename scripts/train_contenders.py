"""What scripts/benchmark_train.py races: the inputs each contender is fed, and
how each one's run is timed."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator

import bench  # noqa: F401  (first: puts the repository root on sys.path)
import keras
import tensorflow as tf

from input_pipeline import records
from input_pipeline.dataset import create_dataset
from trainer import periodic, reporting, train
from trainer.config import TrainConfig
from trainer.strategy import Runtime

# --------------------------------------------------------------------------
# Inputs.


def random_batch(batch_size: int, image_size: int, dtype: tf.DType,
                 num_classes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Normalised-looking images and int32 labels, as `create_dataset` yields them."""
    images = tf.random.normal([batch_size, image_size, image_size, 3], seed=0)
    labels = tf.random.uniform([batch_size], 0, num_classes, tf.int32, seed=0)
    return tf.cast(images, dtype), labels


def one_hot_labels(
        num_classes: int) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """(images, int labels) -> (images, one-hot labels), what `CategoricalCrossentropy` takes."""

    def to_one_hot(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return images, tf.one_hot(labels, num_classes, dtype=tf.float32)

    return to_one_hot


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Fresh datasets per run, as the trainer and as model.fit want them."""

    config: TrainConfig
    runtime: Runtime
    info: records.DatasetInfo

    @property
    def dtype(self) -> tf.DType:
        return train.INPUT_DTYPES[self.runtime.precision]

    def records_for_ours(self) -> tf.distribute.DistributedDataset:
        # The trainer's own input path, so "ours" reads exactly what training reads.
        return train.distribute(self.runtime, self.config, self.info, records.TRAIN, training=True)

    def records_for_fit(self) -> tf.data.Dataset:
        ds = create_dataset(
            self.config.data_dir, records.TRAIN, batch_size=self.config.batch_size,
            image_size=self.config.image_size, training=True, dtype=self.dtype,
            seed=self.config.seed, info=self.info, cache_decoded=self.config.cache_decoded,
        )
        # A per-batch one-hot of the labels: negligible next to a step.
        return ds.map(one_hot_labels(self.info.num_classes))

    def in_memory_for_ours(self) -> tf.distribute.DistributedDataset:
        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            batch = random_batch(context.get_per_replica_batch_size(self.config.batch_size),
                                 self.config.image_size, self.dtype, self.info.num_classes)
            return tf.data.Dataset.from_tensors(batch).repeat()

        return self.runtime.strategy.distribute_datasets_from_function(dataset_fn)

    def in_memory_for_fit(self) -> tf.data.Dataset:
        batch = random_batch(self.config.batch_size, self.config.image_size, self.dtype,
                             self.info.num_classes)
        # One-hot once, outside the pipeline: in-memory input must cost nothing per step.
        return tf.data.Dataset.from_tensors(one_hot_labels(self.info.num_classes)(*batch)).repeat()


# --------------------------------------------------------------------------
# Clocks and timings.


@dataclasses.dataclass(frozen=True)
class Reading:
    """Wall-clock seconds, and CPU seconds of this process (all its threads)."""

    wall: float
    cpu: float

    def __sub__(self, other: Reading) -> Reading:
        return Reading(self.wall - other.wall, self.cpu - other.cpu)


def now() -> Reading:
    return Reading(time.perf_counter(), time.process_time())


Clock = Callable[[], Reading]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Time of `steps` timed steps, and the wall seconds spent waiting for input if measured."""

    steps: int
    elapsed: Reading
    input_wait: float | None = None

    @property
    def seconds(self) -> float:
        return self.elapsed.wall

    def images_per_second(self, batch_size: int) -> float:
        return self.steps * batch_size / self.elapsed.wall

    def cpu_ms_per_image(self, batch_size: int) -> float:
        # Other processes slow the wall clock down far more than they inflate
        # this process's CPU time: the steadier figure on a shared machine.
        return 1000 * self.elapsed.cpu / (self.steps * batch_size)


# --------------------------------------------------------------------------
# The contenders' runs.


@dataclasses.dataclass
class OurLoop:
    """The body of `trainer.train.train`'s loop, without checkpoints and evaluation."""

    train_loop: Callable
    ctx: train.RunContext
    throughput: periodic.Throughput
    profiler: reporting.Profiler
    step: int = 0

    def run(self, iterator: Iterator, num_steps: int) -> None:
        # No SIGTERM watcher here: the loop always runs all `num_steps`.
        self.step, _ = train.run_steps(self.ctx, self.train_loop, iterator, step=self.step,
                                       stop=self.step + num_steps, throughput=self.throughput,
                                       profiler=self.profiler)


def time_our_loop(loop: OurLoop, iterator: Iterator, *, warmup_loops: int, timed_loops: int,
                  steps_per_loop: int, clock: Clock = now) -> Timing:
    for _ in range(warmup_loops):
        loop.run(iterator, steps_per_loop)
    # `run` ends in int()/float() of its results, so the clock only ever
    # reads after the device finished the loop.
    start = clock()
    for _ in range(timed_loops):
        loop.run(iterator, steps_per_loop)
    return Timing(timed_loops * steps_per_loop, clock() - start)


class FitTimer(keras.callbacks.Callback):
    """Clock readings after `start_after` and `stop_after` steps of `model.fit`.

    A callback that overrides `on_train_batch_end` makes Keras call it in
    line, with the logs already converted to floats: a sync, as in our loop.
    Keras passes the index of the last step of each execution.
    """

    def __init__(self, start_after: int, stop_after: int, clock: Clock = now):
        super().__init__()
        self.start_after, self.stop_after, self.clock = start_after, stop_after, clock
        self.start = self.stop = None

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if batch + 1 == self.start_after:
            self.start = self.clock()
        if batch + 1 == self.stop_after:
            self.stop = self.clock()


def time_fit(model: keras.Model, dataset: tf.data.Dataset, *, warmup_steps: int, steps: int,
             clock: Clock = now) -> Timing:
    timer = FitTimer(warmup_steps, warmup_steps + steps, clock)
    model.fit(dataset, epochs=1, steps_per_epoch=warmup_steps + steps, verbose=0,
              callbacks=[timer], shuffle=False)
    return Timing(steps, timer.stop - timer.start)


def time_breakdown(loop: OurLoop, input_iterator: Iterator, compute_iterator: Iterator, *,
                   warmup_steps: int, steps: int, clock: Clock = now) -> Timing:
    """One step per call: blocked in next(input) vs the compiled step on an in-memory batch."""
    one = tf.constant(1)
    wait, start = 0.0, clock()
    for i in range(warmup_steps + steps):
        if i == warmup_steps:
            wait, start = 0.0, clock()
        before = clock().wall
        next(input_iterator)
        wait += clock().wall - before
        float(loop.train_loop(compute_iterator, one)[0])  # Waits for the step to finish.
    return Timing(steps, clock() - start, input_wait=wait)


def time_input_alone(iterator: Iterator, *, warmup_steps: int, steps: int,
                     clock: Clock = now) -> Timing:
    for _ in range(warmup_steps):
        next(iterator)
    start = clock()
    for _ in range(steps):
        next(iterator)
    return Timing(steps, clock() - start)
