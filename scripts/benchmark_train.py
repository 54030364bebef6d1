"""Training images/s of our custom loop against Keras `model.fit`, side by side.

Contenders run in turns in this one process (so they share TensorFlow's
thread pools and settings), `--repeats` times each, alternating; the median
of each is reported, and each ratio is the median of the ratios within a
repeat (a slow spell of a shared machine then hits both sides). Every run
creates a fresh input iterator, runs `--warmup_steps` untimed steps (rounded
up to whole loops; they trace the step and fill the input pipeline), then
times `--steps` steps.

- ours: `trainer.train.make_train_loop` over the trainer's own distributed
  dataset, `--steps_per_loop` steps per call, with the trainer's per-loop
  Python work (NaN check, step counter, `reporting.log_train` into a
  scratch event file); no checkpoints or evaluation.
- model.fit: the same model (same seed), optimizer (`trainer.optimizers`,
  same schedule), loss (softmax cross-entropy with the same label smoothing,
  `keras.losses.CategoricalCrossentropy` on one-hot labels), accuracy metric,
  precision, global batch and `create_dataset` pipeline, with
  `steps_per_execution=--steps_per_loop`.
- ours, in-memory: our loop fed `tf.data.Dataset.from_tensors(batch).repeat()`
  with a random batch of the right shape and dtype: compute alone. Records
  vs in-memory is the input-bound check (target >= 95%).
- ours, 1 step per call: the step-time breakdown. Each step first blocks in
  `next()` on the input iterator (input wait), then runs our compiled loop
  for one step on an in-memory batch (compute). The input pipeline keeps
  producing in the background meanwhile, on the same cores, as in training.
- input pipeline alone: images/s of the records iterator with the cores to
  itself: the most the input could deliver.

The default 10 steps per loop (the CPU demo uses 50) keeps a run under
about 3 minutes on 2 cores and costs ours nothing measurable: the per-loop
Python work is about 3 ms against about 1 s of steps.

With `--synthetic_input` every contender is fed in-memory tensors instead
of records: ours vs model.fit on compute alone, without any records.

Figures are wall-clock throughput: on a shared machine they are noisy, so
the load average is printed; compare medians over several repeats. The
CPU ms/image column (CPU time of this whole process, input threads included,
per image) is much less sensitive to other load, and the ratios are also
given by it.

Usage: python scripts/benchmark_train.py [--data_dir DIR] [--model resnet18]
         [--width 16] [--image_size 64] [--batch_size 64] [--precision float32]
         [--steps 40] [--warmup_steps 10] [--steps_per_loop 10] [--repeats 3]
         [--synthetic_input] [--images_per_class 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Run as `python scripts/benchmark_train.py`: the repository root is not on
# sys.path by itself.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from input_pipeline import demo_data, make_tfrecords, records, synthetic  # noqa: E402
from input_pipeline.dataset import create_dataset  # noqa: E402
from trainer import models, reporting, train  # noqa: E402
from trainer.config import Paths, TrainConfig  # noqa: E402
from trainer.strategy import Runtime, setup_runtime  # noqa: E402
from trainer.summaries import Summaries  # noqa: E402

PRECISIONS = tuple(train.INPUT_DTYPES)
# Only shapes the learning-rate schedule, which does not change the speed;
# large enough for any number of benchmark steps.
_SCHEDULE_STEPS = 1_000_000

OURS = "ours"
FIT = "model.fit"
OURS_IN_MEMORY = "ours, in-memory input"
BREAKDOWN = "ours, 1 step per call"
INPUT_ALONE = "input pipeline alone"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data_dir", help="records from input_pipeline.make_tfrecords; default: "
                        "generate synthetic seedlings and convert them into a temp dir")
    parser.add_argument("--images_per_class", type=int, default=20,
                        help="synthetic images per class, when --data_dir is not given")
    parser.add_argument("--model", default="resnet18", choices=models.MODEL_NAMES, help="ResNet depth")
    parser.add_argument("--width", type=int, default=16, help="filters of the first stage")
    parser.add_argument("--image_size", type=int, default=64, help="training image side in pixels")
    parser.add_argument("--batch_size", type=int, default=64, help="global batch size")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="Keras dtype policy of both contenders (and the input dtype)")
    parser.add_argument("--steps", type=int, default=40,
                        help="timed steps per run; a multiple of --steps_per_loop")
    parser.add_argument("--warmup_steps", type=int, default=10,
                        help="untimed steps before each run, rounded up to whole loops")
    parser.add_argument("--steps_per_loop", type=int, default=10,
                        help="steps per call of our compiled loop, and model.fit's steps_per_execution")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each contender, alternating; medians are reported")
    parser.add_argument("--cache_decoded", action=argparse.BooleanOptionalAction, default=True,
                        help="decode the records once and augment from memory, as the CPU demo "
                        "does (trainer flag --cache_decoded); the warm-up is then at least the "
                        "one pass over the training split that fills the cache")
    parser.add_argument("--synthetic_input", action="store_true",
                        help="feed every contender in-memory random tensors instead of records: "
                        "compares compute alone (no input-bound check)")
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("images_per_class", "width", "batch_size", "steps", "warmup_steps",
                 "steps_per_loop", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.image_size < 32:
        parser.error(f"--image_size must be at least 32, got {args.image_size}")
    if args.steps % args.steps_per_loop:
        parser.error(f"--steps={args.steps} must be a multiple of --steps_per_loop="
                     f"{args.steps_per_loop}, so both contenders time whole loops")


def warmup_steps(args: argparse.Namespace, info: records.DatasetInfo) -> int:
    """--warmup_steps, at least one pass over the training split when it fills
    the --cache_decoded cache (decoding is no steady state), rounded up to
    whole loops: model.fit runs whole executions only."""
    steps = args.warmup_steps
    if args.cache_decoded and not args.synthetic_input:
        steps = max(steps, math.ceil(info.num_examples[records.TRAIN] / args.batch_size))
    return math.ceil(steps / args.steps_per_loop) * args.steps_per_loop


# --------------------------------------------------------------------------
# Inputs.


def prepare_records(work_dir: str, images_per_class: int, image_size: int) -> str:
    """Synthetic seedlings converted to records in `work_dir`; returns the records folder."""
    print(f"generating {images_per_class} synthetic images per class and converting them ...",
          flush=True)
    images_dir = synthetic.generate(os.path.join(work_dir, "images"), images_per_class, seed=0)
    records_dir = os.path.join(work_dir, "records")
    # The demo's stored size, with room for random crops at larger image sizes.
    max_side = max(demo_data.MAX_IMAGE_SIDE, 2 * image_size)
    make_tfrecords.convert(images_dir, records_dir, num_shards=4, max_image_side=max_side,
                           overwrite=True, show_progress=False)
    return records_dir


def random_batch(batch_size: int, image_size: int, dtype: tf.DType,
                 num_classes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Normalised-looking images and int32 labels, as `create_dataset` yields them."""
    images = tf.random.normal([batch_size, image_size, image_size, 3], seed=0)
    labels = tf.random.uniform([batch_size], 0, num_classes, tf.int32, seed=0)
    return tf.cast(images, dtype), labels


def one_hot_labels(num_classes: int) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
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
        return train._distribute(self.runtime, self.config, self.info, records.TRAIN, training=True)

    def records_for_fit(self) -> tf.data.Dataset:
        ds = create_dataset(
            self.config.data_dir, records.TRAIN, batch_size=self.config.batch_size,
            image_size=self.config.image_size, training=True, dtype=self.dtype,
            seed=self.config.seed, info=self.info, cache_decoded=self.config.cache_decoded,
        )
        # A per-batch one-hot of 64 labels: microseconds next to a step.
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
# The contenders.


@dataclasses.dataclass(frozen=True)
class Reading:
    """Wall-clock seconds, and CPU seconds of this process (all its threads)."""

    wall: float
    cpu: float

    def __sub__(self, other: "Reading") -> "Reading":
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


@dataclasses.dataclass
class OurLoop:
    """The body of `trainer.train.train`'s loop, without checkpoints and evaluation."""

    train_loop: Callable
    state: train.State
    summaries: Summaries
    step: int = 0

    def run(self, iterator: Iterator, num_steps: int) -> None:
        # No SIGTERM watcher here: the loop always runs all `num_steps`.
        result = self.train_loop(iterator, tf.constant(num_steps))
        loss, accuracy = result.loss, result.accuracy
        if int(result.first_bad) >= 0:
            raise FloatingPointError(f"loss became {float(loss)} in the benchmark")
        self.step += num_steps
        self.state.step.assign(self.step)
        reporting.log_train(self.summaries, self.step, _SCHEDULE_STEPS, loss=float(loss),
                            accuracy=float(accuracy),
                            learning_rate=float(self.state.optimizer.learning_rate),
                            images_per_second=0.0, seconds_left=0.0)


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


def _build_ours(config: TrainConfig, runtime: Runtime, info: records.DatasetInfo,
                schedule: train.Schedule, scratch: str, summaries: Summaries) -> OurLoop:
    keras.utils.set_random_seed(config.seed)
    state = train.create_state(config, runtime, info, schedule, os.path.join(scratch, "ours"))
    train_loop = train.make_train_loop(runtime, state, global_batch_size=config.batch_size,
                                       num_classes=info.num_classes,
                                       label_smoothing=config.label_smoothing)
    return OurLoop(train_loop, state, summaries)


def _build_fit_model(config: TrainConfig, runtime: Runtime, info: records.DatasetInfo,
                     schedule: train.Schedule, scratch: str) -> keras.Model:
    # The same seed, so both contenders start from the same weights.
    keras.utils.set_random_seed(config.seed)
    state = train.create_state(config, runtime, info, schedule, os.path.join(scratch, "fit"))
    with runtime.strategy.scope():
        state.model.compile(
            optimizer=state.optimizer,
            loss=keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=config.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy()],
            steps_per_execution=config.steps_per_loop,
            jit_compile=runtime.jit_compile,
        )
    return state.model


def make_contenders(args: argparse.Namespace, inputs: Inputs, schedule: train.Schedule,
                    scratch: str, summaries: Summaries) -> dict[str, Callable[[], Timing]]:
    """Name -> a callable that does one run and returns its timing."""
    config, runtime, info = inputs.config, inputs.runtime, inputs.info
    ours = _build_ours(config, runtime, info, schedule, scratch, summaries)
    fit_model = _build_fit_model(config, runtime, info, schedule, scratch)
    per_loop, warmup, steps = config.steps_per_loop, warmup_steps(args, info), args.steps
    warmup_loops = warmup // per_loop
    ours_input = inputs.in_memory_for_ours if args.synthetic_input else inputs.records_for_ours
    fit_input = inputs.in_memory_for_fit if args.synthetic_input else inputs.records_for_fit

    def run_ours(make_iterator: Callable) -> Callable[[], Timing]:
        return lambda: time_our_loop(ours, iter(make_iterator()), warmup_loops=warmup_loops,
                                     timed_loops=steps // per_loop, steps_per_loop=per_loop)

    # Ours runs between the two it is compared with, so each pair is close in time.
    contenders = {
        FIT: lambda: time_fit(fit_model, fit_input(), warmup_steps=warmup, steps=steps),
        OURS: run_ours(ours_input),
    }
    if not args.synthetic_input:
        contenders[OURS_IN_MEMORY] = run_ours(inputs.in_memory_for_ours)
    contenders[BREAKDOWN] = lambda: time_breakdown(
        ours, iter(ours_input()), iter(inputs.in_memory_for_ours()),
        warmup_steps=warmup, steps=steps)
    if not args.synthetic_input:
        contenders[INPUT_ALONE] = lambda: time_input_alone(
            iter(inputs.records_for_ours()), warmup_steps=warmup, steps=steps)
    return contenders


# --------------------------------------------------------------------------
# Running and reporting.


def run_alternating(contenders: dict[str, Callable[[], Timing]],
                    repeats: int) -> dict[str, list[Timing]]:
    """A B C A B C ...: a burst of load from elsewhere hurts every contender alike."""
    timings: dict[str, list[Timing]] = {name: [] for name in contenders}
    for repeat in range(repeats):
        for name, run in contenders.items():
            timings[name].append(run())
            print(f"  repeat {repeat + 1}/{repeats}: {name} done", flush=True)
    return timings


def median_rate(timings: list[Timing], batch_size: int) -> float:
    return statistics.median(t.images_per_second(batch_size) for t in timings)


def median_cpu(timings: list[Timing], batch_size: int) -> float:
    return statistics.median(t.cpu_ms_per_image(batch_size) for t in timings)


def paired_ratio(numerators: list[Timing], denominators: list[Timing],
                 rate: Callable[[Timing], float]) -> float:
    """Median over repeats of one contender's figure over another's from the same repeat.

    Runs of one repeat follow each other within seconds, so a slow spell of
    the machine hits both sides of a pair: steadier than a ratio of medians.
    """
    return statistics.median(rate(a) / rate(b) for a, b in zip(numerators, denominators))


def report(timings: dict[str, list[Timing]], batch_size: int) -> str:
    """The table of medians, the two ratios and the input wait fraction."""
    lines = [f"{'contender':24s} {'images/s':>9s} {'CPU ms/image':>13s}   images/s per repeat"]
    for name, runs in timings.items():
        each = " ".join(f"{t.images_per_second(batch_size):.1f}" for t in runs)
        lines.append(f"{name:24s} {median_rate(runs, batch_size):9.1f} "
                     f"{median_cpu(runs, batch_size):13.3f}   {each}")

    def speed(t: Timing) -> float:
        return t.images_per_second(batch_size)

    def cpu_speed(t: Timing) -> float:
        return 1 / t.cpu_ms_per_image(batch_size)

    def ratios(name: str) -> tuple[float, float]:
        return (paired_ratio(timings[OURS], timings[name], speed),
                paired_ratio(timings[OURS], timings[name], cpu_speed))

    lines.append("")
    wall, cpu = ratios(FIT)
    lines.append(f"ours / model.fit:           {wall:.2f}x   (target >= 1.0x; by CPU time "
                 f"per image: {cpu:.2f}x)")
    if OURS_IN_MEMORY in timings:
        # On a machine this loop has to itself, the input pipeline's CPU
        # time comes out of the training step's cores: the CPU-time ratio is
        # what the wall-clock one tends to when the cores are saturated.
        wall, cpu = ratios(OURS_IN_MEMORY)
        lines.append(f"records / synthetic (ours): {100 * wall:.1f}%   "
                     f"(target >= 95%; lower: input-bound; by CPU time per image: "
                     f"{100 * cpu:.1f}%)")
    else:
        lines.append("records / synthetic (ours): n/a (--synthetic_input)")
    lines.append("(ratios: medians over repeats of each repeat's own ratio)")
    lines.append(_input_wait_line(timings[BREAKDOWN]))
    return "\n".join(lines)


def _input_wait_line(runs: list[Timing]) -> str:
    # The run with the median fraction (the upper one of an even count), so
    # the milliseconds shown add up to that same run's step time.
    run = sorted(runs, key=lambda t: t.input_wait / t.seconds)[len(runs) // 2]
    step_ms, wait_ms = 1000 * run.seconds / run.steps, 1000 * run.input_wait / run.steps
    return (f"input wait fraction:        {100 * run.input_wait / run.seconds:.1f}%   "
            f"({wait_ms:.1f} ms waiting for input + {step_ms - wait_ms:.1f} ms compute per step, "
            "1 step per call)")


def header(args: argparse.Namespace, runtime: Runtime, info: records.DatasetInfo) -> str:
    source = "in-memory synthetic tensors" if args.synthetic_input else "records"
    return (
        f"{args.model} width {args.width}, {args.image_size} px, global batch {args.batch_size}, "
        f"{runtime.precision}, XLA {'on' if runtime.jit_compile else 'off'}, "
        f"{runtime.num_replicas} replica(s) on {runtime.kind}, {info.num_classes} classes, "
        f"input: {source}\n"
        f"{args.steps} timed steps after {warmup_steps(args, info)} warm-up, {args.steps_per_loop} steps per loop, "
        f"median of {args.repeats} repeat(s); {os.cpu_count()} cores"
    )


def _load_average() -> str:
    return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def _dataset_info(args: argparse.Namespace, data_dir: str | None) -> records.DatasetInfo:
    if data_dir:
        return records.read_dataset_info(data_dir)
    # --synthetic_input without records: the real data set's classes.
    return records.DatasetInfo(class_names=synthetic.CLASS_NAMES,
                               num_examples={records.TRAIN: args.batch_size}, num_shards={})


def benchmark(args: argparse.Namespace, scratch: str) -> str:
    data_dir = args.data_dir
    if not data_dir and not args.synthetic_input:
        data_dir = prepare_records(os.path.join(scratch, "data"), args.images_per_class,
                                   args.image_size)
    info = _dataset_info(args, data_dir)
    runtime = setup_runtime("auto", tpu=None, precision=args.precision, jit_compile="auto")
    keras.mixed_precision.set_global_policy(runtime.precision)
    config = TrainConfig(
        data_dir=data_dir or "", paths=Paths(scratch, scratch, scratch), model=args.model,
        width=args.width, image_size=args.image_size, batch_size=args.batch_size,
        train_steps=_SCHEDULE_STEPS, steps_per_loop=args.steps_per_loop,
        mixed_precision=args.precision, cache_decoded=args.cache_decoded,
    )
    schedule = train.Schedule.create(config, info, runtime.num_replicas)
    inputs = Inputs(config, runtime, info)
    print(header(args, runtime, info), flush=True)
    load_before = _load_average()
    # Closed before the scratch folder goes: the writer holds its last scalars.
    with Summaries(os.path.join(scratch, "summaries"), enabled=True) as summaries:
        timings = run_alternating(make_contenders(args, inputs, schedule, scratch, summaries),
                                  args.repeats)
    return (f"\n{report(timings, args.batch_size)}\n\nload average (1, 5, 15 min) before: "
            f"{load_before}, after: {_load_average()} (above {os.cpu_count()}: other work "
            "shares the CPU and the figures are noisy)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="benchmark_train-") as scratch:
        try:
            print(benchmark(args, scratch))
        except (FileNotFoundError, ValueError, make_tfrecords.ConversionError) as e:
            # A missing or incomplete --data_dir: its message already names the fix.
            sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
