"""Training images/s of our custom loop against Keras `model.fit`, side by side.

Contenders run in turns in this one process (so they share TensorFlow's
thread pools and settings), `--repeats` times each, alternating; the median
of each is reported, and each ratio is the median of the ratios within a
repeat (a slow spell of a shared machine then hits both sides). Every run
creates a fresh input iterator, runs `--warmup_steps` untimed steps (rounded
up to whole loops; they trace the step and fill the input pipeline), then
times `--steps` steps.

- ours: `trainer.steps.make_train_loop` over the trainer's own distributed
  dataset, `--steps_per_loop` steps per call, with the trainer's per-loop
  Python work (`trainer.train.run_steps`: NaN check, step counter, log line
  into a scratch event file); no checkpoints or evaluation.
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

The default 10 steps per loop (the CPU demo uses more) keeps a run short and
costs ours nothing measurable: the per-loop Python work is small next to ten
steps.

With `--synthetic_input` every contender is fed in-memory tensors instead
of records: ours vs model.fit on compute alone, without any records.

Figures are wall-clock throughput: on a shared machine they are noisy, so
the load average is printed; compare medians over several repeats. The
CPU ms/image column (CPU time of this whole process, input threads included,
per image) is much less sensitive to other load, and the ratios are also
given by it.

Usage: python scripts/benchmark_train.py [--data_dir=DIR] [--model=resnet18]
         [--width=16] [--image_size=64] [--batch_size=64] [--precision=float32]
         [--steps=40] [--warmup_steps=10] [--steps_per_loop=10] [--repeats=3]
         [--nocache_decoded] [--synthetic_input] [--images_per_class=20]
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence

import bench  # First: puts the repository root on sys.path.
import keras
from absl import flags
from train_contenders import (
    Inputs,
    OurLoop,
    Timing,
    time_breakdown,
    time_fit,
    time_input_alone,
    time_our_loop,
)

from input_pipeline import demo_data, records, synthetic
from input_pipeline.conversion.options import ConversionError
from trainer import models, periodic, reporting, steps, train
from trainer.config import Paths, TrainConfig
from trainer.strategy import Runtime, setup_runtime
from trainer.summaries import Summaries

PRECISIONS = tuple(train.INPUT_DTYPES)
# Only shapes the learning-rate schedule, which does not change the speed;
# large enough for any number of benchmark steps.
_SCHEDULE_STEPS = 1_000_000

OURS = "ours"
FIT = "model.fit"
OURS_IN_MEMORY = "ours, in-memory input"
BREAKDOWN = "ours, 1 step per call"
INPUT_ALONE = "input pipeline alone"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The flags, read once."""

    data_dir: str | None
    images_per_class: int
    model: str
    width: int
    image_size: int
    batch_size: int
    precision: str
    steps: int
    warmup_steps: int
    steps_per_loop: int
    repeats: int
    cache_decoded: bool
    synthetic_input: bool


def warmup_steps(settings: Settings, info: records.DatasetInfo) -> int:
    """--warmup_steps, at least one pass over the training split when it fills
    the --cache_decoded cache (decoding is no steady state), rounded up to
    whole loops: model.fit runs whole executions only."""
    steps = settings.warmup_steps
    if settings.cache_decoded and not settings.synthetic_input:
        steps = max(steps, math.ceil(info.num_examples[records.TRAIN] / settings.batch_size))
    return math.ceil(steps / settings.steps_per_loop) * settings.steps_per_loop


# --------------------------------------------------------------------------
# The contenders.


def _build_ours(config: TrainConfig, runtime: Runtime, info: records.DatasetInfo,
                schedule: train.Schedule, scratch: str, summaries: Summaries) -> OurLoop:
    keras.utils.set_random_seed(config.seed)
    state = train.create_state(config, runtime, info, schedule, os.path.join(scratch, "ours"))
    train_loop = steps.make_train_loop(runtime, state.model, state.optimizer,
                                       global_batch_size=config.batch_size,
                                       num_classes=info.num_classes,
                                       label_smoothing=config.label_smoothing)
    throughput = periodic.Throughput(config.batch_size)
    throughput.start(0)
    return OurLoop(train_loop, train.RunContext(config, runtime, info, schedule, state, summaries),
                   throughput, reporting.Profiler(None, scratch, enabled=False))


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


def make_contenders(settings: Settings, inputs: Inputs, schedule: train.Schedule,
                    scratch: str, summaries: Summaries) -> dict[str, Callable[[], Timing]]:
    """Name -> a callable that does one run and returns its timing."""
    config, runtime, info = inputs.config, inputs.runtime, inputs.info
    ours = _build_ours(config, runtime, info, schedule, scratch, summaries)
    fit_model = _build_fit_model(config, runtime, info, schedule, scratch)
    per_loop, warmup, steps = config.steps_per_loop, warmup_steps(settings, info), settings.steps
    warmup_loops = warmup // per_loop
    in_memory = settings.synthetic_input
    ours_input = inputs.in_memory_for_ours if in_memory else inputs.records_for_ours
    fit_input = inputs.in_memory_for_fit if in_memory else inputs.records_for_fit

    def run_ours(make_iterator: Callable) -> Callable[[], Timing]:
        return lambda: time_our_loop(ours, iter(make_iterator()), warmup_loops=warmup_loops,
                                     timed_loops=steps // per_loop, steps_per_loop=per_loop)

    # Ours runs between the two it is compared with, so each pair is close in time.
    contenders = {
        FIT: lambda: time_fit(fit_model, fit_input(), warmup_steps=warmup, steps=steps),
        OURS: run_ours(ours_input),
    }
    if not in_memory:
        contenders[OURS_IN_MEMORY] = run_ours(inputs.in_memory_for_ours)
    contenders[BREAKDOWN] = lambda: time_breakdown(
        ours, iter(ours_input()), iter(inputs.in_memory_for_ours()),
        warmup_steps=warmup, steps=steps)
    if not in_memory:
        contenders[INPUT_ALONE] = lambda: time_input_alone(
            iter(inputs.records_for_ours()), warmup_steps=warmup, steps=steps)
    return contenders


# --------------------------------------------------------------------------
# Reporting.


def report(timings: dict[str, list[Timing]], batch_size: int) -> str:
    """The table of medians, the two ratios and the input wait fraction."""

    def speed(t: Timing) -> float:
        return t.images_per_second(batch_size)

    def cpu_ms(t: Timing) -> float:
        return t.cpu_ms_per_image(batch_size)

    def ratios(name: str) -> tuple[float, float]:
        return (bench.paired_ratio(timings[OURS], timings[name], speed),
                bench.paired_ratio(timings[OURS], timings[name], lambda t: 1 / cpu_ms(t)))

    lines = [f"{'contender':24s} {'images/s':>9s} {'CPU ms/image':>13s}   images/s per repeat"]
    for name, runs in timings.items():
        each = " ".join(f"{speed(t):.1f}" for t in runs)
        lines.append(f"{name:24s} {bench.median(runs, speed):9.1f} "
                     f"{bench.median(runs, cpu_ms):13.3f}   {each}")
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


def header(settings: Settings, runtime: Runtime, info: records.DatasetInfo) -> str:
    source = "in-memory synthetic tensors" if settings.synthetic_input else "records"
    return (
        f"{settings.model} width {settings.width}, {settings.image_size} px, global batch "
        f"{settings.batch_size}, {runtime.precision}, XLA {'on' if runtime.jit_compile else 'off'}, "
        f"{runtime.num_replicas} replica(s) on {runtime.kind}, {info.num_classes} classes, "
        f"input: {source}\n"
        f"{settings.steps} timed steps after {warmup_steps(settings, info)} warm-up, "
        f"{settings.steps_per_loop} steps per loop, median of {settings.repeats} repeat(s); "
        f"{os.cpu_count()} cores"
    )


# --------------------------------------------------------------------------
# Running.


def _dataset_info(settings: Settings, data_dir: str | None) -> records.DatasetInfo:
    if data_dir:
        return records.read_dataset_info(data_dir)
    # --synthetic_input without records: the real data set's classes.
    return records.DatasetInfo(class_names=synthetic.CLASS_NAMES,
                               num_examples={records.TRAIN: settings.batch_size}, num_shards={})


def _records_dir(settings: Settings, scratch: str) -> str | None:
    """--data_dir, else synthetic records unless --synthetic_input needs none."""
    if settings.data_dir or settings.synthetic_input:
        return settings.data_dir
    # The demo's stored size, with room for random crops at larger image sizes.
    max_side = max(demo_data.MAX_IMAGE_SIDE, 2 * settings.image_size)
    return bench.synthetic_records(os.path.join(scratch, "data"), settings.images_per_class,
                                   num_shards=4, max_image_side=max_side).records_dir


def benchmark(settings: Settings, scratch: str) -> str:
    data_dir = _records_dir(settings, scratch)
    info = _dataset_info(settings, data_dir)
    runtime = setup_runtime("auto", tpu=None, precision=settings.precision, jit_compile="auto")
    keras.mixed_precision.set_global_policy(runtime.precision)
    config = TrainConfig(
        data_dir=data_dir or "", paths=Paths(scratch, scratch, scratch), model=settings.model,
        width=settings.width, image_size=settings.image_size, batch_size=settings.batch_size,
        train_steps=_SCHEDULE_STEPS, steps_per_loop=settings.steps_per_loop,
        mixed_precision=settings.precision, cache_decoded=settings.cache_decoded,
    )
    schedule = train.Schedule.create(config, info, runtime.num_replicas)
    inputs = Inputs(config, runtime, info)
    print(header(settings, runtime, info), flush=True)
    load_before = bench.load_average()
    # Closed before the scratch folder goes: the writer holds its last scalars.
    with Summaries(os.path.join(scratch, "summaries"), enabled=True) as summaries:
        timings = bench.alternate(make_contenders(settings, inputs, schedule, scratch, summaries),
                                  settings.repeats)
    return f"\n{report(timings, settings.batch_size)}\n\n{bench.load_line(load_before)}"


def main(argv: Sequence[str]) -> None:
    del argv  # bench.parse_flags refused any
    settings = bench.read_flags(Settings)
    with tempfile.TemporaryDirectory(prefix="benchmark_train-") as scratch:
        try:
            print(benchmark(settings, scratch))
        except (FileNotFoundError, ValueError, ConversionError) as e:
            # A missing or incomplete --data_dir: its message already names the fix.
            sys.exit(f"error: {e}")


# --------------------------------------------------------------------------
# Flags.


def _trainer_bounds(name: str) -> dict[str, float | None]:
    """The trainer's own bounds of its flag `name`, which the benchmark passes on to it."""
    (field,) = (f for f in TrainConfig.options() if f.name == name)
    return {"lower_bound": field.metadata["lower"], "upper_bound": field.metadata["upper"]}


def _whole_loops(values: dict[str, int]) -> bool:
    if values["steps"] % values["steps_per_loop"]:
        raise flags.ValidationError(
            f"--steps={values['steps']} must be a multiple of --steps_per_loop="
            f"{values['steps_per_loop']}, so both contenders time whole loops")
    return True


def define_flags() -> None:
    flags.DEFINE_string("data_dir", None, "Records from input_pipeline.make_tfrecords; default: "
                        "generate synthetic seedlings and convert them into a temp dir.")
    flags.DEFINE_integer("images_per_class", 20, "Synthetic images per class, when --data_dir "
                         "is not given.", lower_bound=1)
    flags.DEFINE_enum("model", "resnet18", models.MODEL_NAMES, "ResNet depth.")
    flags.DEFINE_integer("width", 16, "Filters of the first stage.", **_trainer_bounds("width"))
    flags.DEFINE_integer("image_size", 64, "Training image side in pixels.",
                         **_trainer_bounds("image_size"))
    flags.DEFINE_integer("batch_size", 64, "Global batch size.", **_trainer_bounds("batch_size"))
    flags.DEFINE_enum("precision", "float32", PRECISIONS,
                      "Keras dtype policy of both contenders (and the input dtype).")
    flags.DEFINE_integer("steps", 40, "Timed steps per run; a multiple of --steps_per_loop.",
                         lower_bound=1)
    flags.DEFINE_integer("warmup_steps", 10, "Untimed steps before each run, rounded up to "
                         "whole loops.", lower_bound=1)
    flags.DEFINE_integer("steps_per_loop", 10, "Steps per call of our compiled loop, and "
                         "model.fit's steps_per_execution.", **_trainer_bounds("steps_per_loop"))
    flags.register_multi_flags_validator(["steps", "steps_per_loop"], _whole_loops)
    flags.DEFINE_integer("repeats", 3, "Runs of each contender, taking turns; medians are "
                         "reported.", lower_bound=1)
    flags.DEFINE_bool("cache_decoded", True, "Decode the records once and augment from memory, "
                      "as the CPU demo does (trainer flag --cache_decoded); the warm-up is then "
                      "at least the one pass over the training split that fills the cache.")
    flags.DEFINE_bool("synthetic_input", False, "Feed every contender in-memory random tensors "
                      "instead of records: compares compute alone (no input-bound check).")


if __name__ == "__main__":
    define_flags()
    bench.run(main)
