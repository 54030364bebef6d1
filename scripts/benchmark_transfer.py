"""Wall time to a validation accuracy on a small data set: fine-tuned from other species, or not.

Does a backbone trained on some species make a small set of other species
learnable sooner than training from scratch? The synthetic seedlings are
split by class, so what carries over is features, not more images of the
same classes:

  source set: the first 6 species (sorted names), --source_images_per_class
    images each (seed 0, the demo's), split as the converter does by
    default (10% held out). Trained once for --source_steps steps at the
    CPU demo's settings (configs/cpu_demo.cfg): a one-off cost, reported on
    its own and cached in --work_dir.
  target set: the other 6 species, drawn with another seed (1), with
    --train_images_per_class training images each (10 to 20: a small set)
    and --validation_images_per_class held out. The validation split is the
    larger one on purpose: at 45 per class (270 images) one image is 0.4% of
    the accuracy and the binomial spread at 0.85 is about 2%, so reaching 0.85
    is not one lucky image; the training split stays as small as asked.

Contenders, each a fresh `python -m trainer.main` on the target set with the
demo's flags, the same step budget (--max_steps) and evaluation interval
(--eval_every), run by scripts/accuracy_runs.py, which notes the first
evaluation at or above --target (times from the start of the trainer
process, start-up included). Each run goes on to the end of its budget, so
the best accuracy within it shows what a setting reaches, not only how soon
it passes the target; --stop_at_target stops it there instead, sooner.

  scratch                        no initialisation
  fine-tune                      --init_checkpoint=SOURCE_RUN --init_checkpoint_modules=backbone
  fine-tune lr x0.1              ... --backbone_lr_multiplier=0.1
  fine-tune freeze N ep          ... --freeze_backbone_epochs=N (--freeze_epochs)
  fine-tune lr x0.1 freeze N ep  both

The backbone is asked for explicitly: both sets have 6 classes, and the
trainer would otherwise load the source run's head too, whose classes are
other species. Every contender runs once per trainer seed (--seeds), in
turns, so a burst of load elsewhere hits them alike; the table shows the
median and every seed's figure. A run that does not reach the target counts
as later than any that does, so the median is "not reached" when half the
seeds or more missed it.

Target of the issue: fine-tuning reaches the target in at most a third of the
wall time scratch needs, or scratch never does within the budget (then the
ratio is bounded by scratch's time to its last evaluation).

Usage: python scripts/benchmark_transfer.py [--target=0.85] [--seeds=2]
         [--contenders=fine-tune --contenders=lr ...]
         [--max_steps=1000] [--eval_every=25] [--freeze_epochs=50] [--stop_at_target]
         [--train_images_per_class=15] [--validation_images_per_class=45]
         [--source_images_per_class=100] [--source_steps=2000]
         [--work_dir=~/.cache/seedlings/transfer]
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence

import bench  # First: puts the repository root on sys.path.
from absl import flags
from accuracy_runs import (
    Outcome,
    SourceRun,
    cell,
    demo_flags,
    folder_name,
    pretrain_once,
    run_to_target,
    text_table,
    trainer_command,
)

from input_pipeline import demo_data, synthetic

SOURCE_CLASSES = synthetic.CLASS_NAMES[:6]
TARGET_CLASSES = synthetic.CLASS_NAMES[6:]
SOURCE_SEED, TARGET_SEED = 0, 1
SCRATCH, FINE_TUNE = "scratch", "fine-tune"
# A third: the target ratio of fine-tuning's time to scratch's.
TARGET_RATIO = 1 / 3


@dataclasses.dataclass(frozen=True)
class Settings:
    """The flags, read once."""

    target: float
    seeds: int
    contenders: list[str]
    max_steps: int
    eval_every: int
    freeze_epochs: float
    stop_at_target: bool
    train_images_per_class: int
    validation_images_per_class: int
    source_images_per_class: int
    source_steps: int
    work_dir: str


# --contenders' names for them, in the table's order.
CONTENDERS = ("scratch", "fine-tune", "lr", "freeze", "lr+freeze")


def contenders(source_run_dir: str, freeze_epochs: float,
               chosen: Sequence[str] = CONTENDERS) -> dict[str, tuple[str, ...]]:
    """Name -> trainer flags on top of the demo's, of the `chosen` ones, scratch first."""
    warm = (f"--init_checkpoint={source_run_dir}", "--init_checkpoint_modules=backbone")
    slow = ("--backbone_lr_multiplier=0.1",)
    frozen = (f"--freeze_backbone_epochs={freeze_epochs:g}",)
    every = {
        "scratch": (SCRATCH, ()),
        "fine-tune": (FINE_TUNE, warm),
        "lr": (f"{FINE_TUNE} lr x0.1", warm + slow),
        "freeze": (f"{FINE_TUNE} freeze {freeze_epochs:g} ep", warm + frozen),
        "lr+freeze": (f"{FINE_TUNE} lr x0.1 freeze {freeze_epochs:g} ep", warm + slow + frozen),
    }
    return dict(every[key] for key in CONTENDERS if key in chosen)


# --------------------------------------------------------------------------
# Data, and the source run: made once, kept in --work_dir.


def prepare_data(settings: Settings) -> tuple[str, str]:
    """The source and target sets' records folders, generated and converted on first use."""
    data_dir = os.path.join(settings.work_dir, "data")
    # One worker, in this process: on a few hundred small images, starting worker
    # processes (each importing TensorFlow) costs about what they save.
    source = bench.synthetic_records(
        data_dir, settings.source_images_per_class, seed=SOURCE_SEED, classes=SOURCE_CLASSES,
        max_image_side=demo_data.MAX_IMAGE_SIDE, num_workers=1)
    per_class = settings.train_images_per_class + settings.validation_images_per_class
    # The converter holds out round(fraction * class size): exactly the validation count.
    target = bench.synthetic_records(
        data_dir, per_class, seed=TARGET_SEED, classes=TARGET_CLASSES,
        validation_fraction=settings.validation_images_per_class / per_class,
        num_shards=2, max_image_side=demo_data.MAX_IMAGE_SIDE, num_workers=1)
    return source.records_dir, target.records_dir


def pretrain(settings: Settings, records_dir: str) -> SourceRun:
    """Trains on the source set to the end, or reuses an earlier invocation's finished run."""
    model_dir = os.path.join(settings.work_dir, f"source-{settings.source_images_per_class}-"
                             f"per-class-{settings.source_steps}-steps")
    return pretrain_once(records_dir, model_dir, settings.source_steps)


# --------------------------------------------------------------------------
# The contenders, in turns.


def run_contenders(settings: Settings, records_dir: str,
                   contender_flags: dict[str, tuple[str, ...]],
                   runs_dir: str) -> dict[str, list[Outcome]]:
    """Each contender once per trainer seed, all of a seed before the next seed."""

    def contender(name: str, extra_flags: tuple[str, ...]) -> Callable[[], Outcome]:
        seeds = itertools.count()  # bench.alternate calls it once per repeat

        def run() -> Outcome:
            seed = next(seeds)
            model_dir = os.path.join(runs_dir, f"{folder_name(name)}-seed-{seed}")
            command = trainer_command(records_dir, model_dir, settings.eval_every,
                                      settings.max_steps, (*extra_flags, f"--seed={seed}"))
            return run_to_target(name, command, model_dir, settings.target,
                                 stop=settings.stop_at_target)

        return run

    def show(outcome: Outcome) -> str:
        if outcome.error is not None:
            return f"failed: {outcome.error}"
        if outcome.reached is None:
            return f"not reached, best {cell(outcome.best and outcome.best.value, '.4f')}"
        return f"{outcome.seconds_to_target:.1f} s"

    return bench.alternate({name: contender(name, extra)
                            for name, extra in contender_flags.items()}, settings.seeds, show)


# --------------------------------------------------------------------------
# Reporting.


def _seconds(outcome: Outcome) -> float:
    # Later than any time: a miss sorts after every hit in a median.
    return math.inf if outcome.seconds_to_target is None else outcome.seconds_to_target


def median_seconds(runs: Sequence[Outcome]) -> float:
    """The median time to target over seeds, inf when half of them or more missed it."""
    return bench.median(runs, _seconds)


def _median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _row(name: str, runs: Sequence[Outcome], max_steps: int) -> list[str]:
    reached = [o.reached for o in runs if o.reached is not None]
    seconds = median_seconds(runs)
    bests = [o.best.value for o in runs if o.best is not None]
    misses = sum(o.reached is None and o.error is None for o in runs)
    failures = [o for o in runs if o.error is not None]
    notes = []
    if misses:
        notes.append(f"{misses} of {len(runs)} seed(s) not reached in {max_steps} steps")
    if failures:  # The first failure's last line: the others' are in their logs.
        notes.append(f"failed (exit {failures[0].exit_code}): {failures[0].error}")
    return [
        name,
        cell(None if math.isinf(seconds) else seconds, ".1f"),
        "/".join(cell(o.seconds_to_target, ".1f") for o in runs),
        cell(_median_or_none([r.step for r in reached]), ".0f"),
        cell(_median_or_none([r.value for r in reached]), ".4f"),
        cell(_median_or_none(bests), ".4f"),
        "/".join(cell(o.best and o.best.value, ".4f") for o in runs),
        cell(_median_or_none([o.images_per_second for o in runs
                              if o.images_per_second is not None]), ".1f"),
        "; ".join(notes),
    ]


def table(results: dict[str, list[Outcome]], target: float, max_steps: int) -> str:
    """One row per contender: medians over seeds and each seed's figure."""
    header = ["contender", f"time to {target:g} (s)", "per seed (s)", "step", "accuracy",
              "best accuracy", "best per seed", "train images/s", "note"]
    rows = [header] + [_row(name, runs, max_steps) for name, runs in results.items()]
    return text_table(rows)


def ratio_lines(results: dict[str, list[Outcome]], target: float, max_steps: int) -> list[str]:
    """Each fine-tune contender's median time over scratch's, and whether it meets the target."""
    scratch = median_seconds(results[SCRATCH])
    # Scratch's time to its last evaluation bounds its time to the target from below.
    scratch_ran = bench.median(results[SCRATCH], lambda o: o.seconds_to_last_eval or 0.0)
    width = max(len(name) for name in results)
    lines = []
    for name, runs in results.items():
        if name == SCRATCH:
            continue
        seconds = median_seconds(runs)
        if math.isinf(seconds):
            verdict = f"not reached in {max_steps} steps: target not met"
        elif not scratch_ran:
            verdict = "no ratio: scratch wrote no evaluation (see its row)"
        elif math.isinf(scratch):
            verdict = (f"< {seconds / scratch_ran:.2f} (scratch did not reach {target:g} in "
                       f"{max_steps} steps, {scratch_ran:.1f} s): target met")
        else:
            ratio = seconds / scratch
            verdict = (f"{ratio:.2f} (<= {TARGET_RATIO:.2f}): target met" if ratio <= TARGET_RATIO
                       else f"{ratio:.2f} (> {TARGET_RATIO:.2f}): target not met, by "
                            f"{seconds - TARGET_RATIO * scratch:.1f} s")
        lines.append(f"{name + ' / scratch:':{width + 11}s} {verdict}")
    return lines


def best_lines(results: dict[str, list[Outcome]], target: float) -> list[str]:
    """Which fine-tuning settings measured best: the fastest to target, the most accurate."""
    tuned = {name: runs for name, runs in results.items() if name != SCRATCH}
    if not tuned:
        return []
    fastest = min(tuned, key=lambda name: median_seconds(tuned[name]))
    accurate = max(tuned, key=lambda name: bench.median(
        tuned[name], lambda o: o.best.value if o.best else 0.0))
    lines = []
    if not math.isinf(median_seconds(tuned[fastest])):
        lines.append(f"fastest to {target:g}: {fastest}")
    lines.append(f"highest best accuracy within the budget: {accurate}")
    return lines


def report(settings: Settings, source: SourceRun, results: dict[str, list[Outcome]]) -> str:
    cached = " (cached from an earlier invocation)" if source.cached else ""
    source_line = (f"source run (one-off): {source.seconds:.1f} s for {source.step} steps, "
                   f"validation accuracy {source.accuracy:.4f}, "
                   f"{cell(source.images_per_second, '.1f')} train images/s{cached}")
    return "\n".join([
        source_line, "", table(results, settings.target, settings.max_steps), "",
        *ratio_lines(results, settings.target, settings.max_steps),
        *best_lines(results, settings.target), "",
        (f"Medians over {settings.seeds} trainer seed(s); times from the start of each trainer "
         "process, which every contender pays."),
        (f"Best accuracy: up to the first evaluation at or above {settings.target:g} (runs "
         "stopped there: --stop_at_target)." if settings.stop_at_target else
         f"Best accuracy: over the whole budget of {settings.max_steps} steps."),
    ])


def main(argv: Sequence[str]) -> None:
    del argv  # bench.parse_flags refused any
    # Scratch is what every fine-tuning contender is measured against.
    settings = bench.read_flags(Settings, contenders=["scratch", *flags.FLAGS.contenders])
    # Before any clock starts: no contender pays for generation, conversion or pretraining.
    source_records, target_records = prepare_data(settings)
    load_before = bench.load_average()
    batch_size = demo_flags().batch_size
    print(f"source set: {', '.join(SOURCE_CLASSES)}; {settings.source_images_per_class} images "
          f"per class (seed {SOURCE_SEED}), {settings.source_steps} steps\n"
          f"target set: {', '.join(TARGET_CLASSES)}; {settings.train_images_per_class} training "
          f"and {settings.validation_images_per_class} validation images per class (seed "
          f"{TARGET_SEED}), batch {batch_size}\nbudget {settings.max_steps} steps, evaluating "
          f"every {settings.eval_every}; target validation accuracy {settings.target:g}; "
          f"{settings.seeds} seed(s); {os.cpu_count()} cores", flush=True)
    source = pretrain(settings, source_records)
    runs_dir = tempfile.mkdtemp(prefix="runs-", dir=settings.work_dir)
    print(f"runs (model dirs and logs) in {runs_dir}", flush=True)
    results = run_contenders(settings, target_records,
                             contenders(source.model_dir, settings.freeze_epochs,
                                        settings.contenders), runs_dir)
    print(f"\n{report(settings, source, results)}\n{bench.load_line(load_before)}")
    failed = sorted({o.name for runs in results.values() for o in runs if o.error is not None})
    if failed:
        sys.exit(f"error: runs of {len(failed)} contender(s) failed: {', '.join(failed)}; see "
                 "the note in their row")


def define_flags() -> None:
    demo = demo_flags()
    flags.DEFINE_float("target", 0.85, "Validation accuracy to reach on the target set, in "
                       "[0, 1].")
    # Written so that NaN, which fails every comparison, is refused too.
    flags.register_validator("target", lambda target: 0.0 <= target <= 1.0,
                             "must be a validation accuracy in [0, 1]")
    flags.DEFINE_integer("seeds", 2, "Runs of each contender, with trainer seeds 0, 1, ...: "
                         "the table shows their median and each one.", lower_bound=1)
    flags.DEFINE_multi_enum("contenders", list(CONTENDERS), CONTENDERS, "Contenders to run "
                            "(repeat the flag for several): fine-tune, lr (x0.1 for the "
                            "backbone), freeze (--freeze_epochs), lr+freeze; scratch always runs.")
    flags.DEFINE_integer("max_steps", 1000, "Step budget of every contender on the target set; "
                         "also the length of its learning-rate schedule.", lower_bound=1)
    flags.DEFINE_integer("eval_every", 25, "Evaluate every N steps: the resolution of the time "
                         "to target.", lower_bound=1)
    flags.DEFINE_float("freeze_epochs", 50, "--freeze_backbone_epochs of the freezing "
                       "contenders (an epoch of the target set is its training images).")
    flags.register_validator("freeze_epochs", lambda epochs: epochs > 0,
                             "must be more than 0 epochs")
    flags.DEFINE_boolean("stop_at_target", False, "Stop each run at its first evaluation at or "
                         "above --target: quicker, but the best accuracy is then only up to "
                         "there, not within the whole budget.")
    flags.DEFINE_integer("train_images_per_class", 15, "Training images per species of the "
                         "target set.", lower_bound=1)
    flags.DEFINE_integer("validation_images_per_class", 45, "Validation images per species of "
                         "the target set.", lower_bound=1)
    flags.DEFINE_integer("source_images_per_class", 100, "Images per species of the source set "
                         "(10% held out for validation).", lower_bound=2)
    flags.DEFINE_integer("source_steps", 2000, "Steps of the source run.", lower_bound=1)
    flags.DEFINE_string("work_dir", os.path.join(demo.cache_dir, "transfer"),
                        "Where the data sets and the source run are made once and reused; each "
                        "invocation's runs go to a new folder in it.")


if __name__ == "__main__":
    define_flags()
    bench.run(main)
