"""What the benchmark scripts share: set-up, flags, inputs, turns and the load line.

The benchmarks run as `python scripts/benchmark_X.py`, which puts this folder on
sys.path, not the repository root: `import bench` comes before any import of the
project, and puts the root there.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NoReturn, TypeVar

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
# Before anything imports TensorFlow: its start-up notices would bury the report.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Nothing here imports TensorFlow, so that a script's --help and flag errors need
# not wait seconds for it: records and the converter, which do, are imported
# where they are used.
from input_pipeline import synthetic
from input_pipeline.conversion.options import ConvertOptions
from input_pipeline.synthetic.layout import TRAIN_FOLDER

T = TypeVar("T")
# The status of a command-line mistake, apart from 1 for a run that failed.
USAGE_ERROR = 2


# --------------------------------------------------------------------------
# Flags: absl, as the product's commands, with a one-line error.


def usage_error(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag or a stray argument is one line on stderr."""
    try:
        rest = flags.FLAGS(argv)
    except (flags.Error, ValueError) as e:  # ValueError: a value after a --[no]bool flag
        usage_error(str(e))
    if len(rest) > 1:
        usage_error(f"unexpected arguments {' '.join(rest[1:])}; flags look like --name=value")
    # The project's modules log at INFO (the trainer every loop): between the
    # benchmark's own lines, noise. Set so, absl.app leaves it; --verbosity=0
    # shows them.
    if flags.FLAGS["verbosity"].using_default_value:
        flags.FLAGS.verbosity = logging.WARNING
    return rest


def run(main: Callable[[Sequence[str]], None]) -> None:
    """Parses the flags with `parse_flags`, then calls `main`."""
    app.run(main, flags_parser=parse_flags)


def read_flags(settings: type[T], **given: object) -> T:
    """The dataclass `settings` with each field from the parsed flag of its name.

    `given` fields are passed as they are (values main derives from a flag).
    """
    values = {f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(settings)
              if f.name not in given}
    return settings(**values, **given)


# --------------------------------------------------------------------------
# Inputs: synthetic seedlings, and their records.


@dataclasses.dataclass(frozen=True)
class SyntheticData:
    images_dir: str  # class folders of PNGs, the converter's input
    records_dir: str  # what input_pipeline.make_tfrecords writes from them


def synthetic_images(work_dir: str, images_per_class: int, seed: int = 0) -> str:
    """Class folders of synthetic PNGs under `work_dir`, generated once per size and seed.

    Generating takes longer than converting: a later run with the same
    `work_dir`, size and seed reuses them.
    """
    root = os.path.join(work_dir, f"images-{images_per_class}-per-class{_seed_suffix(seed)}")
    if not os.path.isdir(root):
        print(f"generating {images_per_class} synthetic images per class (seed {seed}) in "
              f"{root} ...", flush=True)
        partial = f"{root}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        synthetic.generate(partial, images_per_class, seed=seed)
        # Renamed when complete: an interrupted run leaves nothing to reuse.
        os.rename(partial, root)
    return os.path.join(root, TRAIN_FOLDER)


def synthetic_records(work_dir: str, images_per_class: int, *, seed: int = 0,
                      classes: Sequence[str] | None = None,
                      validation_fraction: float = ConvertOptions.validation_fraction,
                      num_shards: int = ConvertOptions.num_shards,
                      max_image_side: int = ConvertOptions.max_image_side,
                      num_workers: int | None = ConvertOptions.num_workers) -> SyntheticData:
    """Synthetic PNGs and their records under `work_dir`, each reused if already there.

    The records are the converter's, with its defaults but for the split, the
    shards, the image side and the workers, of `classes` only (default: all
    12 species).
    """
    from input_pipeline import records
    from input_pipeline.conversion.pipeline import convert

    images_dir = synthetic_images(work_dir, images_per_class, seed)
    name = f"{images_per_class}-per-class{_seed_suffix(seed)}"
    if classes is not None:
        indices = [synthetic.CLASS_NAMES.index(c) for c in classes]  # ValueError: not a species
        name += "-classes-" + "-".join(map(str, indices))
        images_dir = _class_subset(images_dir, classes,
                                   os.path.join(work_dir, f"images-{name}"))
    if validation_fraction != ConvertOptions.validation_fraction:
        name += f"-validation-{validation_fraction:g}"
    records_dir = os.path.join(work_dir, f"records-{name}-{num_shards}-shards-{max_image_side}-px")
    # The converter writes records_info.json last: without it, an interrupted run.
    if not os.path.exists(os.path.join(records_dir, records.INFO_FILE)):
        print(f"converting to records (longer side <= {max_image_side} px) in {records_dir} ...",
              flush=True)
        convert(images_dir, records_dir, ConvertOptions(
            num_shards=num_shards, validation_fraction=validation_fraction, seed=seed,
            max_image_side=max_image_side, num_workers=num_workers, overwrite=True,
            show_progress=False))
    return SyntheticData(images_dir, records_dir)


def _seed_suffix(seed: int) -> str:
    # Seed 0 keeps the names of the folders from before seeds were chosen: caches stay valid.
    return f"-seed-{seed}" if seed else ""


def _class_subset(images_dir: str, classes: Sequence[str], subset_dir: str) -> str:
    """A folder of links to some of `images_dir`'s class folders: the converter's input."""
    if not os.path.isdir(subset_dir):
        partial = f"{subset_dir}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        for name in classes:
            os.symlink(os.path.abspath(os.path.join(images_dir, name)),
                       os.path.join(partial, name))
        os.rename(partial, subset_dir)
    return subset_dir


# --------------------------------------------------------------------------
# Turns and medians.


def alternate(contenders: Mapping[str, Callable[[], T]], repeats: int,
              show: Callable[[T], str] = lambda _: "done") -> dict[str, list[T]]:
    """Runs every contender once per repeat, in turns: A B C A B C ...

    A burst of load from elsewhere then hurts every contender alike. Prints a
    line per run, with `show` of its result.

    Returns:
      Each contender's results, in the order of the repeats.
    """
    results: dict[str, list[T]] = {name: [] for name in contenders}
    width = max(map(len, contenders), default=0)
    for repeat in range(repeats):
        for name, contender in contenders.items():
            result = contender()
            results[name].append(result)
            print(f"  repeat {repeat + 1}/{repeats}: {name:{width}s}  {show(result)}", flush=True)
    return results


def median(runs: Iterable[T], figure: Callable[[T], float]) -> float:
    """The median of `figure` over `runs`."""
    return statistics.median(figure(run) for run in runs)


def paired_ratio(numerators: Sequence[T], denominators: Sequence[T],
                 figure: Callable[[T], float]) -> float:
    """Median over repeats of one contender's figure over another's from the same repeat.

    Runs of one repeat of `alternate` follow each other closely, so a slow
    spell of the machine hits both sides of a pair: steadier than a ratio of
    medians.
    """
    return statistics.median(figure(a) / figure(b) for a, b in zip(numerators, denominators))


# --------------------------------------------------------------------------
# The load average: how far to trust wall-clock figures.


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. '1.9 1.2 0.8'."""
    return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def load_line(before: str) -> str:
    """The report's last line, given `load_average()` from before the timings."""
    return (f"load average (1, 5, 15 min) before: {before}, after: {load_average()} "
            f"(above {os.cpu_count()}: other work shares the CPU and the figures are noisy)")
