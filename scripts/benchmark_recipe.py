"""Validation accuracy at a fixed step budget on a small set: which regularisation pays?

A few thousand photographs are few: how much do RandAugment, mixup/CutMix
and an average of the weights add, alone and together? On the synthetic
seedlings, all 12 species, --train_images_per_class training images each
(20: small enough to overfit) and --validation_images_per_class held out
(40 per class, 480 images: one image is 0.2% of the accuracy), every
contender is a fresh `python -m trainer.main` with the CPU demo's flags
(configs/cpu_demo.cfg: 64 px, the decoded-image cache) and the same
--max_steps, run to its end by scripts/accuracy_runs.py:

  baseline       the demo's crops, flips and rotations
  randaugment    --randaugment=N,M (--randaugment)
  mixup/cutmix   --mixup=A --cutmix=B (--mixup, --cutmix)
  ema            --ema_decay=D (--ema_decay)
  all            the three together

The accuracy of a run is its last evaluation, at the end of the budget;
with --ema_decay that of the weight average (what the export serves), the
raw weights' shown beside it. Each contender runs once per trainer seed
(--seeds), in turns; the table gives the mean and the standard deviation
over seeds, each seed's figure, the median training images/s and its ratio
to the baseline's in the same turn.

Target of the issue: the best recipe beats the baseline by at least 3 points
of mean accuracy, at a throughput cost of at most 10% on the cached path.

Usage: python scripts/benchmark_recipe.py [--seeds=3] [--max_steps=1000]
         [--contenders=randaugment --contenders=ema ...]
         [--randaugment=2,9] [--mixup=0.2] [--cutmix=1.0] [--ema_decay=0.995]
         [--train_images_per_class=20] [--validation_images_per_class=40]
         [--work_dir=~/.cache/seedlings/recipe]
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence

import bench  # First: puts the repository root on sys.path.
from absl import flags
from accuracy_runs import (
    Outcome, cell, demo_flags, folder_name, run_to_target, text_table, trainer_command)

from input_pipeline import demo_data
from trainer.config import parse_randaugment

BASELINE, ALL = "baseline", "all"
# The targets: points of mean accuracy over the baseline, and images/s kept.
TARGET_POINTS, TARGET_THROUGHPUT = 3.0, 0.90


@dataclasses.dataclass(frozen=True)
class Settings:
    """The flags, read once."""

    seeds: int
    contenders: list[str]
    max_steps: int
    randaugment: str
    mixup: float
    cutmix: float
    ema_decay: float
    train_images_per_class: int
    validation_images_per_class: int
    work_dir: str


CONTENDERS = (BASELINE, "randaugment", "mixup/cutmix", "ema", ALL)


def contenders(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Name -> trainer flags on top of the demo's, of those --contenders names, baseline first."""
    alone = {
        "randaugment": (f"--randaugment={settings.randaugment}",),
        "mixup/cutmix": (f"--mixup={settings.mixup:g}", f"--cutmix={settings.cutmix:g}"),
        "ema": (f"--ema_decay={settings.ema_decay:g}",),
    }
    every = {BASELINE: (), **alone, ALL: tuple(itertools.chain(*alone.values()))}
    return {name: every[name] for name in CONTENDERS if name in settings.contenders}


@dataclasses.dataclass(frozen=True)
class Result:
    """One run: its outcome and the last evaluation's accuracies from metrics.json."""

    outcome: Outcome
    accuracy: float | None = None  # The weight average's with --ema_decay, else the raw one.
    raw_accuracy: float | None = None  # With --ema_decay only.


def read_result(outcome: Outcome, model_dir: str) -> Result:
    path = os.path.join(model_dir, "metrics.json")
    if outcome.error is not None or not os.path.exists(path):
        return Result(outcome)
    with open(path) as f:
        metrics = json.load(f)
    if "ema" not in metrics:
        return Result(outcome, metrics["accuracy"])
    return Result(outcome, metrics["ema"]["accuracy"], metrics["accuracy"])


def prepare_data(settings: Settings) -> str:
    """The records folder, generated and converted on first use."""
    per_class = settings.train_images_per_class + settings.validation_images_per_class
    # The converter holds out round(fraction * class size): exactly the validation count.
    data = bench.synthetic_records(
        os.path.join(settings.work_dir, "data"), per_class,
        validation_fraction=settings.validation_images_per_class / per_class, num_shards=2,
        max_image_side=demo_data.MAX_IMAGE_SIDE, num_workers=1)
    return data.records_dir


def run_contenders(settings: Settings, records_dir: str, runs_dir: str) -> dict[str, list[Result]]:
    """Each contender once per trainer seed, all of a seed before the next seed."""

    def contender(name: str, extra_flags: tuple[str, ...]) -> Callable[[], Result]:
        seeds = itertools.count()  # bench.alternate calls it once per repeat

        def run() -> Result:
            seed = next(seeds)
            model_dir = os.path.join(runs_dir, f"{folder_name(name)}-seed-{seed}")
            # Evaluating only at the end: the budget's accuracy, and no evaluation time.
            command = trainer_command(records_dir, model_dir, 0, settings.max_steps,
                                      (*extra_flags, f"--seed={seed}"))
            return read_result(run_to_target(name, command, model_dir, None), model_dir)

        return run

    def show(result: Result) -> str:
        if result.accuracy is None:
            return f"failed: {result.outcome.error or 'no metrics.json'}"
        return f"accuracy {result.accuracy:.4f}"

    return bench.alternate({name: contender(name, extra)
                            for name, extra in contenders(settings).items()}, settings.seeds, show)


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _throughput_ratio(runs: Sequence[Result], baseline: Sequence[Result]) -> float | None:
    pairs = [(a, b) for a, b in zip(runs, baseline)
             if a.outcome.images_per_second and b.outcome.images_per_second]
    if not pairs:
        return None
    return bench.paired_ratio([a for a, _ in pairs], [b for _, b in pairs],
                              lambda r: r.outcome.images_per_second)


def table(results: dict[str, list[Result]]) -> str:
    header = ["contender", "accuracy mean", "std", "per seed", "raw weights", "train images/s",
              "vs baseline", "note"]
    rows = [header]
    for name, runs in results.items():
        accuracies = [r.accuracy for r in runs if r.accuracy is not None]
        mean, std = _mean_std(accuracies)
        raw = [r.raw_accuracy for r in runs if r.raw_accuracy is not None]
        rates = [r.outcome.images_per_second for r in runs if r.outcome.images_per_second]
        failed = [r for r in runs if r.accuracy is None]
        rows.append([
            name, cell(mean, ".4f"), cell(std, ".4f"),
            "/".join(cell(r.accuracy, ".4f") for r in runs),
            cell(statistics.mean(raw) if raw else None, ".4f"),
            cell(statistics.median(rates) if rates else None, ".0f"),
            cell(_throughput_ratio(runs, results[BASELINE]), ".3f"),
            f"{len(failed)} failed: {failed[0].outcome.error}" if failed else "",
        ])
    return text_table(rows)


def verdict_lines(results: dict[str, list[Result]]) -> list[str]:
    """The best recipe by mean accuracy, its gain over the baseline and its throughput cost."""
    means = {name: _mean_std([r.accuracy for r in runs if r.accuracy is not None])[0]
             for name, runs in results.items()}
    if means[BASELINE] is None or all(means[n] is None for n in means if n != BASELINE):
        return ["no verdict: the baseline or every recipe failed (see the table)"]
    best = max((n for n in means if n != BASELINE and means[n] is not None), key=means.get)
    points = 100 * (means[best] - means[BASELINE])
    ratio = _throughput_ratio(results[best], results[BASELINE])
    met = points >= TARGET_POINTS and ratio is not None and ratio >= TARGET_THROUGHPUT
    return [f"best recipe: {best}, {points:+.1f} points of mean accuracy over the baseline "
            f"(target >= {TARGET_POINTS:g}), {cell(ratio, '.3f')} of its training images/s "
            f"(target >= {TARGET_THROUGHPUT:.2f}): target {'met' if met else 'not met'}"]


def main(argv: Sequence[str]) -> None:
    del argv  # bench.parse_flags refused any
    # The baseline is what every figure is measured against.
    settings = bench.read_flags(Settings, contenders=[BASELINE, *flags.FLAGS.contenders])
    records_dir = prepare_data(settings)  # Before any clock starts.
    load_before = bench.load_average()
    demo = demo_flags()
    print(f"{settings.train_images_per_class} training and {settings.validation_images_per_class}"
          f" validation images per class, 12 classes; demo flags ({demo.image_size} px, batch "
          f"{demo.batch_size}, cache_decoded={demo.cache_decoded}); {settings.max_steps} steps; "
          f"{settings.seeds} seed(s); {os.cpu_count()} cores", flush=True)
    runs_dir = tempfile.mkdtemp(prefix="runs-", dir=settings.work_dir)
    print(f"runs (model dirs and logs) in {runs_dir}", flush=True)
    results = run_contenders(settings, records_dir, runs_dir)
    print(f"\n{table(results)}\n\n" + "\n".join(verdict_lines(results)) + "\n\n"
          f"Accuracy: the last evaluation, at step {settings.max_steps}; of the weight average "
          "where --ema_decay is on (raw weights: their mean). Throughput: median over seeds of "
          f"each run's images/s over the baseline's in the same turn.\n{bench.load_line(load_before)}")
    failed = sorted({name for name, runs in results.items() for r in runs if r.accuracy is None})
    if failed:
        sys.exit(f"error: runs of {len(failed)} contender(s) failed: {', '.join(failed)}; see "
                 "the note in their row")


def define_flags() -> None:
    demo = demo_flags()
    flags.DEFINE_integer("seeds", 3, "Runs of each contender, with trainer seeds 0, 1, ...: the "
                         "table shows their mean, standard deviation and each one.", lower_bound=1)
    flags.DEFINE_multi_enum("contenders", list(CONTENDERS), CONTENDERS, "Contenders to run "
                            "(repeat the flag for several); the baseline always runs.")
    flags.DEFINE_integer("max_steps", 1000, "Step budget of every contender; also the length of "
                         "its learning-rate schedule.", lower_bound=1)
    flags.DEFINE_string("randaugment", "2,9", "--randaugment of the RandAugment contenders: "
                        "'N,M'.")
    flags.register_validator("randaugment", _valid_randaugment)
    flags.DEFINE_float("mixup", 0.2, "--mixup alpha of the mixing contenders.", lower_bound=0)
    flags.DEFINE_float("cutmix", 1.0, "--cutmix alpha of the mixing contenders.", lower_bound=0)
    flags.DEFINE_float("ema_decay", 0.995, "--ema_decay of the averaging contenders: the "
                       "average spans about 1 / (1 - D) steps, so D suits the budget.",
                       lower_bound=0, upper_bound=0.999999)
    flags.DEFINE_integer("train_images_per_class", 20, "Training images per species.",
                         lower_bound=1)
    flags.DEFINE_integer("validation_images_per_class", 40, "Validation images per species.",
                         lower_bound=1)
    flags.DEFINE_string("work_dir", os.path.join(demo.cache_dir, "recipe"),
                        "Where the data set is made once and reused; each invocation's runs go "
                        "to a new folder in it.")


def _valid_randaugment(value: str) -> bool:
    try:
        return parse_randaugment(value) is not None
    except ValueError as e:
        raise flags.ValidationError(str(e)) from None


if __name__ == "__main__":
    define_flags()
    bench.run(main)
