"""Wall time the CPU demo takes to reach a validation accuracy, per variant of its settings.

Each variant is the CPU demo (`configs/cpu_demo.cfg` on the built-in
synthetic seedlings, what `python -m trainer.main` trains without
--data_dir) with a few trainer flags changed: the decoded-image cache, steps
per loop, precision, image size. The variants live in one table, `VARIANTS`.

How: the demo data is generated and converted once, before any timing, into
--cache_dir (the trainer's own cache, so a later demo run reuses it). Then
each variant runs, one after the other, as a fresh trainer process:

    python -m trainer.main --flagfile=configs/cpu_demo.cfg --data_dir=CACHED_RECORDS
        --model_dir=... --eval_every=... --train_steps=... VARIANT_FLAGS

which is what the demo runs, with evaluations every --eval_every steps so
the crossing is resolved finely. scripts/accuracy_runs.py runs it, reads
its evaluations while it trains and stops it at the first one at or above
--target: the time to target is that event's wall time minus the time the
process was started. A run that never gets there reports its best
evaluation instead.

Times include Python and TensorFlow start-up, tracing, evaluations and
checkpoints: every variant pays them, the default included. Runs share the
machine with whatever else is running: the load average is printed.

Usage: python scripts/benchmark_time_to_accuracy.py [--target=0.85]
         [--variants=all|default,steps_per_loop=1,...] [--eval_every=250]
         [--max_steps=2500] [--cache_dir=~/.cache/seedlings] [--work_dir=DIR]
         [--images_per_class=120]
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Sequence

import bench  # First: puts the repository root on sys.path.
from absl import flags
from accuracy_runs import (
    Outcome,
    cell,
    demo_flags,
    folder_name,
    run_to_target,
    trainer_command,
)

from input_pipeline import demo_data
from trainer.config import DEMO_FLAGFILE

# Name -> trainer flags on top of the demo's. Adding a variant is one line.
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "cache_decoded=false": ("--cache_decoded=false",),
    "steps_per_loop=1": ("--steps_per_loop=1",),
    "steps_per_loop=10": ("--steps_per_loop=10",),
    "mixed_bfloat16": ("--mixed_precision=mixed_bfloat16",),
    "image_size=48": ("--image_size=48",),
    "image_size=96": ("--image_size=96",),
}

ALL = "all"

def variant_names(value: str) -> list[str]:
    """--variants as a list, in the given order and once each.

    Raises:
      flags.ValidationError: naming the unknown variants and the known ones.
    """
    names = [name.strip() for name in value.split(",") if name.strip()]
    if names == [ALL]:
        names = list(VARIANTS)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise flags.ValidationError(
            f"unknown variant(s) in --variants={value!r}: {', '.join(unknown) or 'none given'}; "
            f"choose from {ALL} or {', '.join(VARIANTS)}")
    return list(dict.fromkeys(names))


@dataclasses.dataclass(frozen=True)
class Settings:
    """The flags, read once."""

    target: float
    variants: tuple[str, ...]
    eval_every: int
    max_steps: int
    cache_dir: str
    work_dir: str | None
    images_per_class: int


# --------------------------------------------------------------------------
# Reporting.


def report(outcomes: list[Outcome], target: float, max_steps: int) -> str:
    """One row per variant: time, step and accuracy at the target, training images/s."""
    width = max(len("variant"), *(len(o.name) for o in outcomes))
    time_header = f"time to {target:g} (s)"
    time_width = max(10, len(time_header))
    lines = [(f"{'variant':{width}s}  {time_header:>{time_width}s}  {'step':>6s}  "
              f"{'accuracy':>8s}  {'train images/s':>14s}  note")]
    for o in outcomes:
        shown, note = o.reached, ""
        if o.error is not None:
            note = f"failed (exit {o.exit_code}): {o.error}"
        elif o.reached is None:
            shown = o.best
            note = (f"target not reached in {max_steps} steps: best evaluation shown"
                    if shown else "no evaluation written")
        lines.append(
            f"{o.name:{width}s}  {cell(o.seconds_to_target, '.1f'):>{time_width}s}  "
            f"{cell(shown and shown.step, 'd'):>6s}  "
            f"{cell(shown and shown.value, '.4f'):>8s}  "
            f"{cell(o.images_per_second, '.1f'):>14s}  {note}".rstrip())
    return "\n".join(lines)


def prepare_data(settings: Settings) -> str:
    """The demo's records, generated and converted on first use; returns their folder."""
    print(f"preparing the demo data ({settings.images_per_class} images per class) in "
          f"{settings.cache_dir} ...", flush=True)
    return demo_data.prepare(settings.cache_dir, images_per_class=settings.images_per_class)


def run_variants(settings: Settings, records_dir: str, runs_dir: str) -> list[Outcome]:
    print(f"CPU demo ({os.path.relpath(DEMO_FLAGFILE, bench.REPO)}) on {records_dir}\n"
          f"evaluating every {settings.eval_every} steps, at most {settings.max_steps} steps; "
          f"target validation accuracy {settings.target:g}; {os.cpu_count()} cores; runs in "
          f"{runs_dir}", flush=True)
    outcomes = []
    for variant in settings.variants:
        model_dir = os.path.join(runs_dir, folder_name(variant))
        command = trainer_command(records_dir, model_dir, settings.eval_every,
                                  settings.max_steps, VARIANTS[variant])
        outcomes.append(run_to_target(variant, command, model_dir, settings.target))
    return outcomes


def main(argv: Sequence[str]) -> None:
    del argv  # bench.parse_flags refused any
    settings = bench.read_flags(Settings, variants=tuple(variant_names(flags.FLAGS.variants)))
    # Before any clock starts, so no variant pays for generation and conversion.
    records_dir = prepare_data(settings)
    load_before = bench.load_average()
    if settings.work_dir:
        os.makedirs(settings.work_dir, exist_ok=True)
        # A new folder each time: a model dir with checkpoints would resume.
        runs_dir = tempfile.mkdtemp(prefix="time_to_accuracy-", dir=settings.work_dir)
        outcomes = run_variants(settings, records_dir, runs_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="time_to_accuracy-") as runs_dir:
            outcomes = run_variants(settings, records_dir, runs_dir)
    print(f"\n{report(outcomes, settings.target, settings.max_steps)}\n\n"
          "Times run from the start of each trainer process: they include Python and TensorFlow "
          "start-up,\ntracing, evaluations and checkpoints, which every variant pays, the default "
          f"included.\n{bench.load_line(load_before)}")
    failed = [o.name for o in outcomes if o.error is not None]
    if failed:
        sys.exit(f"error: {len(failed)} of {len(outcomes)} variant(s) failed: {', '.join(failed)}"
                 "; see the note in their row")


def _valid_variants(value: str) -> bool:
    variant_names(value)  # Raises naming the problem.
    return True


def define_flags() -> None:
    demo = demo_flags()
    flags.DEFINE_float("target", 0.85, "Validation accuracy to reach, in [0, 1].")
    # Written so that NaN, which fails every comparison, is refused too.
    flags.register_validator("target", lambda target: 0.0 <= target <= 1.0,
                             "must be a validation accuracy in [0, 1]")
    flags.DEFINE_string("variants", ALL, f"Comma-separated variants to run, in this order: "
                        f"'{ALL}' or any of {', '.join(VARIANTS)}.")
    flags.register_validator("variants", _valid_variants)
    flags.DEFINE_integer("eval_every", 250, "Evaluate every N steps: the resolution of the time "
                         f"to target (the demo evaluates every {demo.eval_every}).", lower_bound=1)
    flags.DEFINE_integer("max_steps", demo.train_steps, "Steps of a run that does not reach the "
                         "target; also the length of the learning-rate schedule (default: the "
                         "demo's).", lower_bound=1)
    flags.DEFINE_string("cache_dir", demo["cache_dir"].default, "Where the demo data is generated "
                        "once and kept (the trainer's --cache_dir).")
    flags.DEFINE_string("work_dir", None, "Keep each run's model dir and log in a new folder "
                        "under DIR; default: a temp folder, removed at the end.")
    flags.DEFINE_integer("images_per_class", demo_data.IMAGES_PER_CLASS, "Synthetic images per "
                         "class (the demo's data set unless changed).", lower_bound=1)


if __name__ == "__main__":
    define_flags()
    bench.run(main)
