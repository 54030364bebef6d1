"""Validation accuracy at equal steps on a small set: pretrained on a TFDS data set, or not.

The README's walkthrough pretrains on plant_village (54,303 leaf images, 38
classes, a TFDS data set with a train split only) and fine-tunes on the
seedlings with --init_checkpoint. What does the pretraining buy, step for
step, on a small target set? Neither plant_village nor the network is on
this machine, so synthetic stand-ins play both parts, split by species as
scripts/benchmark_transfer.py splits them: what carries over is features,
not more images of the same classes.

  source set (plant_village's stand-in): the first 6 species,
    --source_images_per_class images each (seed 0), written as a prepared
    TFDS data set with a train split only, as plant_village has, and
    converted by the user's command, `python -m input_pipeline.make_tfrecords
    --tfds_name=... --tfds_data_dir=...`, whose stratified split holds 10%
    out for validation. Trained once for --source_steps steps at the CPU
    demo's settings (configs/cpu_demo.cfg): a one-off cost, reported on its
    own. The TFDS data set, its records and the run are cached in --work_dir.
  target set (the seedlings' stand-in): the other 6 species, drawn with
    another seed (1), --train_images_per_class training images each (a few)
    and --validation_images_per_class held out (at 45 per class, one image is
    0.4% of the accuracy).

Contenders, each a fresh `python -m trainer.main` on the target set with the
demo's flags, the same step budget (--max_steps, also the length of the
learning-rate schedule) and evaluation interval (--eval_every), run to the
end of the budget by scripts/accuracy_runs.py:

  scratch     no initialisation
  pretrained  --init_checkpoint=SOURCE_RUN --init_checkpoint_modules=backbone

The backbone is asked for explicitly: both sets have 6 classes, so the
trainer would otherwise load the source run's head too, whose classes are
other species (from plant_village's 38 classes to the seedlings' 12 it picks
the backbone by itself).

Measured: validation accuracy at equal steps, not seconds. Both contenders
train the same model on the same batches, so a step costs them the same,
and a step count is exact whatever else loads the machine. The table's rows
are evaluation steps doubling from --eval_every up to --max_steps (25, 50,
100, ... and the budget's end). Each contender runs once per trainer seed
(--seeds), in turns; a cell is the median over seeds and every seed's
figure, "-" where a run wrote no evaluation at that step. The difference is
the median of each seed's pretrained minus scratch: the same seed gives both
runs the same head initialisation and batch order, so the pair differs in
the backbone's start only. Below the table: at which step the pretrained
runs' median reaches scratch's median at the end of the budget. An accuracy
at step 100 of a 1000-step budget is mid-schedule: not what a 100-step run
would reach.

Usage: python scripts/benchmark_tfds_pretraining.py [--seeds=2] [--max_steps=1000]
         [--eval_every=25] [--train_images_per_class=15] [--validation_images_per_class=45]
         [--source_images_per_class=100] [--source_steps=2000]
         [--work_dir=~/.cache/seedlings/tfds_pretraining]
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence

import bench  # First: puts the repository root on sys.path.
import tensorflow_datasets as tfds
from absl import flags, logging
from accuracy_runs import (
    Outcome,
    SourceRun,
    alternate_seeds,
    cell,
    demo_flags,
    pretrain_once,
    run_to_target,
    text_table,
    trainer_command,
)

from input_pipeline import demo_data, records, synthetic

SOURCE_CLASSES = synthetic.CLASS_NAMES[:6]
TARGET_CLASSES = synthetic.CLASS_NAMES[6:]
SOURCE_SEED, TARGET_SEED = 0, 1
SCRATCH, PRETRAINED = "scratch", "pretrained"
# The stand-in's TFDS name: not in TFDS's catalogue, so `tfds.builder` finds
# it in --tfds_data_dir only, as it finds a prepared plant_village there.
TFDS_NAME, TFDS_VERSION = "synthetic_source_species", "1.0.0"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The flags, read once."""

    seeds: int
    max_steps: int
    eval_every: int
    train_images_per_class: int
    validation_images_per_class: int
    source_images_per_class: int
    source_steps: int
    work_dir: str


# --------------------------------------------------------------------------
# Data: the source set through TFDS and the converter's command, the target
# set through the folder conversion. Made once, kept in --work_dir.


def _examples(images_dir: str) -> Iterator[tuple[str, dict[str, object]]]:
    for label, species in enumerate(SOURCE_CLASSES):
        for path in sorted(glob.glob(os.path.join(images_dir, species, "*.png"))):
            with open(path, "rb") as f:  # Encoded: TFDS stores them as they are.
                yield f"{species}/{os.path.basename(path)}", {"image": f.read(), "label": label}


def write_tfds_source(images_dir: str, tfds_dir: str) -> None:
    """The source species' images in `tfds_dir` as a prepared TFDS data set, train split only.

    Written under another name and renamed when complete: an interrupted
    run leaves nothing to reuse.
    """
    if os.path.isdir(tfds_dir):
        return
    print(f"writing the source species as TFDS {TFDS_NAME} in {tfds_dir} ...", flush=True)
    partial = f"{tfds_dir}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(names=list(SOURCE_CLASSES)),
    })
    before = logging.get_verbosity()
    # TFDS prints its progress and warns of the empty folder it writes into:
    # noise between the benchmark's lines.
    logging.set_verbosity(logging.ERROR)
    tfds.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            tfds.dataset_builders.store_as_tfds_dataset(
                TFDS_NAME, TFDS_VERSION, features, {records.TRAIN: _examples(images_dir)},
                data_dir=partial)
    finally:
        logging.set_verbosity(before)
    os.rename(partial, tfds_dir)


def convert_command(tfds_dir: str, records_dir: str) -> list[str]:
    """The converter's command line that turns the TFDS stand-in into records."""
    # One worker: on a few hundred small images, starting workers costs about what they save.
    return [sys.executable, "-m", "input_pipeline.make_tfrecords", f"--tfds_name={TFDS_NAME}",
            f"--tfds_data_dir={tfds_dir}", f"--output_dir={records_dir}",
            f"--max_image_side={demo_data.MAX_IMAGE_SIDE}", f"--seed={SOURCE_SEED}",
            "--num_workers=1", "--overwrite"]


def prepare_source(settings: Settings, data_dir: str) -> str:
    """The source set's records folder: images, then TFDS, then the converter's command."""
    images_dir = bench.synthetic_images(data_dir, settings.source_images_per_class, SOURCE_SEED)
    name = f"tfds-{settings.source_images_per_class}-per-class"
    tfds_dir = os.path.join(data_dir, name)
    write_tfds_source(images_dir, tfds_dir)
    records_dir = os.path.join(data_dir, f"records-{name}-{demo_data.MAX_IMAGE_SIDE}-px")
    # The converter writes records_info.json last: without it, an interrupted run.
    if not os.path.exists(os.path.join(records_dir, records.INFO_FILE)):
        command = convert_command(tfds_dir, records_dir)
        print(f"converting: python {' '.join(command[1:])}", flush=True)
        # Its summary (splits, licence) is what a user sees: shown as it is.
        result = subprocess.run(command, cwd=bench.REPO, check=False)
        if result.returncode != 0:
            sys.exit(f"error: converting the TFDS source set failed (exit {result.returncode}); "
                     "its message is above")
    return records_dir


def prepare_target(settings: Settings, data_dir: str) -> str:
    """The target set's records folder, with exactly the asked-for counts per split."""
    per_class = settings.train_images_per_class + settings.validation_images_per_class
    # The converter holds out round(fraction * class size): exactly the validation count.
    return bench.synthetic_records(
        data_dir, per_class, seed=TARGET_SEED, classes=TARGET_CLASSES,
        validation_fraction=settings.validation_images_per_class / per_class,
        num_shards=2, max_image_side=demo_data.MAX_IMAGE_SIDE, num_workers=1).records_dir


# --------------------------------------------------------------------------
# The contenders, in turns.


def run_contenders(settings: Settings, records_dir: str, source_dir: str,
                   runs_dir: str) -> dict[str, list[Outcome]]:
    """Scratch and pretrained once per trainer seed, each run to the end of the budget."""
    contender_flags = {
        SCRATCH: (),
        PRETRAINED: (f"--init_checkpoint={source_dir}", "--init_checkpoint_modules=backbone"),
    }

    def run_seed(name: str, extra_flags: tuple[str, ...], seed: int) -> Outcome:
        model_dir = os.path.join(runs_dir, f"{name}-seed-{seed}")
        command = trainer_command(records_dir, model_dir, settings.eval_every,
                                  settings.max_steps, (*extra_flags, f"--seed={seed}"))
        return run_to_target(name, command, model_dir, target=None)

    def show(outcome: Outcome) -> str:
        if outcome.error is not None:
            return f"failed: {outcome.error}"
        last = outcome.evals[-1] if outcome.evals else None
        return "no evaluation" if last is None else f"accuracy {last.value:.3f} at step {last.step}"

    return alternate_seeds(contender_flags, settings.seeds, run_seed, show)


# --------------------------------------------------------------------------
# Reporting: accuracy at equal steps.


def table_steps(eval_every: int, max_steps: int) -> list[int]:
    """The table's rows: evaluation steps doubling from `eval_every`, and the budget's end."""
    steps, step = [], eval_every
    while step < max_steps:
        steps.append(step)
        step *= 2
    return steps + [max_steps]


def accuracy_at(outcome: Outcome, step: int) -> float | None:
    """The run's validation accuracy at `step`, None where it wrote no evaluation there."""
    return next((e.value for e in outcome.evals if e.step == step), None)


def _median(values: Sequence[float | None]) -> float | None:
    readable = [v for v in values if v is not None]
    return statistics.median(readable) if readable else None


def _differences(results: dict[str, list[Outcome]], step: int) -> list[float | None]:
    """Each seed's pretrained minus scratch at `step`, None where either is missing."""
    pairs = zip(results[PRETRAINED], results[SCRATCH])
    return [None if a is None or b is None else a - b
            for a, b in ((accuracy_at(p, step), accuracy_at(s, step)) for p, s in pairs)]


def _cells(values: Sequence[float | None], spec: str) -> list[str]:
    """The median's cell and the per-seed cell, '-' for each missing figure."""
    return [cell(_median(values), spec), "/".join(cell(v, spec) for v in values)]


def table(results: dict[str, list[Outcome]], steps: Sequence[int]) -> str:
    """One row per step: each contender's median accuracy and per seed, and the difference."""
    header = ["step", SCRATCH, "per seed", PRETRAINED, "per seed", "difference", "per seed",
              "note"]
    rows = [header]
    for step in steps:
        accuracies = {name: [accuracy_at(o, step) for o in runs] for name, runs in results.items()}
        missing = [f"{name} {values.count(None)} of {len(values)} seed(s)"
                   for name, values in accuracies.items() if None in values]
        rows.append([str(step), *_cells(accuracies[SCRATCH], ".3f"),
                     *_cells(accuracies[PRETRAINED], ".3f"),
                     *_cells(_differences(results, step), "+.3f"),
                     f"no evaluation: {', '.join(missing)}" if missing else ""])
    return text_table(rows)


def median_curve(runs: Sequence[Outcome]) -> dict[int, float]:
    """Step -> median accuracy over the seeds with an evaluation there, in step order."""
    steps = sorted({e.step for o in runs for e in o.evals})
    return {step: _median([accuracy_at(o, step) for o in runs]) for step in steps}


def verdict_lines(results: dict[str, list[Outcome]], steps: Sequence[int],
                  max_steps: int) -> list[str]:
    """Where pretraining is ahead at the table's steps, and how soon it matches scratch's end."""
    differences = {step: _median(_differences(results, step)) for step in steps}
    known = {step: d for step, d in differences.items() if d is not None}
    if not known:
        return ["no verdict: no step has an evaluation of both contenders (see the table)"]
    behind = [str(step) for step, d in known.items() if d < 0]
    ahead = (f"pretrained - scratch at equal steps: {min(known.values()):+.3f} to "
             f"{max(known.values()):+.3f}; ahead or level at {len(known) - len(behind)} of "
             f"{len(known)} step(s)")
    if behind:
        ahead += f", behind at step(s) {', '.join(behind)}"
    scratch_end = _median([accuracy_at(o, max_steps) for o in results[SCRATCH]])
    if scratch_end is None:
        return [ahead, f"no step count: scratch wrote no evaluation at step {max_steps}"]
    # Every evaluation, not only the table's rows: the step is resolved to --eval_every.
    reached = next((step for step, value in median_curve(results[PRETRAINED]).items()
                    if value >= scratch_end), None)
    matched = (f"pretrained's median does not reach it in {max_steps} steps" if reached is None
               else f"pretrained's median reaches it at step {reached}, "
                    f"{100 * reached / max_steps:.3g}% of the budget")
    return [ahead, f"scratch's median at step {max_steps}, {scratch_end:.3f}: {matched}"]


def source_line(source: SourceRun, images_per_class: int) -> str:
    """The one-off pretraining's cost and accuracy, in one line."""
    cached = " (cached from an earlier invocation)" if source.cached else ""
    return (f"source run (one-off, TFDS {TFDS_NAME}, {len(SOURCE_CLASSES)} species x "
            f"{images_per_class} images): {source.seconds:.1f} s for {source.step} steps, "
            f"validation accuracy {source.accuracy:.3f}, "
            f"{cell(source.images_per_second, '.1f')} train images/s{cached}")


def failure_lines(results: dict[str, list[Outcome]]) -> list[str]:
    """One line per failed run: its contender, seed, exit status and last log line."""
    return [f"failed: {name} seed {seed} (exit {o.exit_code}): {o.error}"
            for name, runs in results.items() for seed, o in enumerate(runs)
            if o.error is not None]


def report(settings: Settings, source: SourceRun, results: dict[str, list[Outcome]]) -> str:
    """The source run, the table at equal steps and what it says, as printed at the end."""
    steps = table_steps(settings.eval_every, settings.max_steps)
    return "\n".join([
        source_line(source, settings.source_images_per_class), "",
        (f"validation accuracy on the target set at equal steps (of a {settings.max_steps}-step "
         "budget):"), table(results, steps), "",
        *verdict_lines(results, steps, settings.max_steps), *failure_lines(results), "",
        (f"Medians over {settings.seeds} trainer seed(s), each seed's figure beside; difference: "
         "the median of each seed's pretrained minus scratch."),
    ])


def main(argv: Sequence[str]) -> None:
    del argv  # bench.parse_flags refused any
    settings = bench.read_flags(Settings)
    data_dir = os.path.join(settings.work_dir, "data")
    # Before the runs: generating and converting is a one-off, apart from what is measured.
    source_records = prepare_source(settings, data_dir)
    target_records = prepare_target(settings, data_dir)
    load_before = bench.load_average()
    print(f"source set: {', '.join(SOURCE_CLASSES)}; {settings.source_images_per_class} images "
          f"per class (seed {SOURCE_SEED}) via TFDS, train split only; "
          f"{settings.source_steps} steps\n"
          f"target set: {', '.join(TARGET_CLASSES)}; {settings.train_images_per_class} training "
          f"and {settings.validation_images_per_class} validation images per class (seed "
          f"{TARGET_SEED}), batch {demo_flags().batch_size}\nbudget {settings.max_steps} steps, "
          f"evaluating every {settings.eval_every}; {settings.seeds} seed(s); "
          f"{os.cpu_count()} cores", flush=True)
    source = pretrain_once(source_records, os.path.join(
        settings.work_dir, f"source-{settings.source_images_per_class}-per-class-"
        f"{settings.source_steps}-steps"), settings.source_steps)
    runs_dir = tempfile.mkdtemp(prefix="runs-", dir=settings.work_dir)
    print(f"runs (model dirs and logs) in {runs_dir}", flush=True)
    results = run_contenders(settings, target_records, source.model_dir, runs_dir)
    print(f"\n{report(settings, source, results)}\n{bench.load_line(load_before)}")
    if failure_lines(results):
        sys.exit("error: some runs failed; see the 'failed:' lines")


def define_flags() -> None:
    demo = demo_flags()
    flags.DEFINE_integer("seeds", 2, "Runs of each contender, with trainer seeds 0, 1, ...: the "
                         "table shows their median and each one.", lower_bound=1)
    flags.DEFINE_integer("max_steps", 1000, "Step budget of both contenders on the target set; "
                         "also the length of their learning-rate schedule, and the table's last "
                         "row.", lower_bound=1)
    flags.DEFINE_integer("eval_every", 25, "Evaluate every N steps; the table's rows double from "
                         "N: N, 2N, 4N, ... up to --max_steps.", lower_bound=1)
    flags.register_multi_flags_validator(
        ["eval_every", "max_steps"], lambda f: f["eval_every"] <= f["max_steps"],
        "--eval_every must be at most --max_steps: the table's rows are evaluations within the "
        "budget")
    flags.DEFINE_integer("train_images_per_class", 15, "Training images per species of the "
                         "target set.", lower_bound=1)
    flags.DEFINE_integer("validation_images_per_class", 45, "Validation images per species of "
                         "the target set.", lower_bound=1)
    # Two at least: the converter's stratified split holds one of every class out.
    flags.DEFINE_integer("source_images_per_class", 100, "Images per species of the source set "
                         "(the TFDS stand-in; the converter holds 10% out for validation).",
                         lower_bound=2)
    flags.DEFINE_integer("source_steps", 2000, "Steps of the source run.", lower_bound=1)
    flags.DEFINE_string("work_dir", os.path.join(demo.cache_dir, "tfds_pretraining"),
                        "Where the data sets and the source run are made once and reused; each "
                        "invocation's runs go to a new folder in it.")


if __name__ == "__main__":
    define_flags()
    bench.run(main)
