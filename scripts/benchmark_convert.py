"""Benchmarks the TFRecord converter on synthetic seedlings.

  python scripts/benchmark_convert.py [--images_per_class=25] [--work_dir=DIR]

Reports, on one generated input of 4N images (N = 12 x images_per_class):
  * images/s with one worker and with all cores, side by side, and the ratio
    (target on 2 cores: >= 1.7x);
  * peak RSS of the whole process tree (parent + workers) of a CLI run on N
    and on 4N images, and the ratio (target: <= 1.2x, memory flat in the size
    of the data set).
Runs with one worker and with all cores take turns, so that a burst of load
from elsewhere hurts both alike. Figures are noisy when other processes share
the CPU; the load average is printed so a reader can tell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import bench  # First: puts the repository root on sys.path.
import psutil
from absl import flags

from input_pipeline.conversion.options import ConvertOptions
from input_pipeline.conversion.pipeline import convert


@dataclasses.dataclass(frozen=True)
class Throughput:
    workers: int
    images: int
    seconds: float
    cpu_seconds: float  # parent + workers: what the run costs, whatever the load

    @property
    def per_second(self) -> float:
        return self.images / self.seconds


def _cpu_seconds() -> float:
    # Workers count once reaped, which convert() does before it returns.
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def make_inputs(work_dir: str, images_per_class: int) -> tuple[str, str]:
    """Returns (folder of N images, folder of 4N images); N is hard links into 4N.

    Inputs left in --work_dir by an earlier run of the same size are reused:
    generating them takes longer than converting them.
    """
    large = bench.synthetic_images(work_dir, 4 * images_per_class)
    small = os.path.join(work_dir, f"small-{images_per_class}-per-class")
    if not os.path.isdir(small):
        for name in sorted(os.listdir(large)):
            os.makedirs(os.path.join(small, name))
            for file in sorted(os.listdir(os.path.join(large, name)))[:images_per_class]:
                os.link(os.path.join(large, name, file), os.path.join(small, name, file))
    return small, large


def time_convert(input_dir: str, work_dir: str, workers: int) -> Throughput:
    """One in-process conversion, pool start-up included (TF already imported)."""
    output_dir = os.path.join(work_dir, f"out-{workers}")
    start, start_cpu = time.perf_counter(), _cpu_seconds()
    info = convert(
        input_dir, output_dir,
        ConvertOptions(num_workers=workers, overwrite=True, show_progress=False),
    )
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - start_cpu
    images = sum(split["num_examples"] for split in info["splits"].values())
    return Throughput(workers, images, seconds, cpu_seconds)


def best_throughputs(input_dir: str, work_dir: str, repeats: int) -> list[Throughput]:
    """Best of `repeats` for 1 worker and for all cores, the runs taking turns."""
    cores = os.cpu_count() or 1
    time_convert(input_dir, work_dir, 1)  # warm-up: imports TF, fills the page cache
    runs = bench.alternate(
        {f"{workers} worker(s)": lambda workers=workers: time_convert(input_dir, work_dir, workers)
         for workers in (1, cores)},
        repeats, show=lambda t: f"{t.per_second:.1f} images/s")
    return [min(r, key=lambda t: t.seconds) for r in runs.values()]


def _tree_rss(process: psutil.Process) -> int:
    # Between fork and exec a new worker still maps all of the parent's pages,
    # TensorFlow's included; counting those would add the parent twice.
    parent_command = process.cmdline()
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            if child.cmdline() != parent_command:
                total += child.memory_info().rss
        except psutil.Error:  # a worker that just exited
            pass
    return total


def peak_rss(input_dir: str, output_dir: str) -> int:
    """Peak summed RSS of a CLI conversion and its workers, sampled every 20 ms."""
    command = [
        sys.executable, "-m", "input_pipeline.make_tfrecords",
        f"--input_dir={input_dir}", f"--output_dir={output_dir}", "--overwrite",
    ]
    process = psutil.Popen(command, cwd=bench.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        with contextlib.suppress(psutil.Error):  # the parent just exited
            peak = max(peak, _tree_rss(process))
        time.sleep(0.02)
    if process.returncode != 0:
        sys.exit(f"conversion failed: {process.stderr.read().decode().strip()}")
    return peak


def report(
    throughputs: Sequence[Throughput], memory: dict[str, int], images: dict[str, int],
    repeats: int,
) -> str:
    one, many = throughputs
    lines = [f"throughput on {one.images} images (best of {repeats}, in-process):"]
    for t in throughputs:
        lines.append(
            f"  {t.workers} worker(s): {t.seconds:6.2f} s  {t.per_second:7.1f} images/s"
            f"  ({t.cpu_seconds:.2f} CPU s)"
        )
    lines.append(f"  speed-up {many.per_second / one.per_second:.2f}x (target >= 1.7x on 2 cores)")
    # On an idle machine a CPU-bound run takes its CPU time spread over the
    # cores; this figure does not move with other people's load.
    bound = many.workers * one.cpu_seconds / many.cpu_seconds
    lines.append(f"  CPU-time bound on {many.workers} idle cores: {bound:.2f}x")
    lines.append("peak RSS of the process tree, parent + workers (CLI, all cores):")
    for key in ("N", "4N"):
        lines.append(f"  {key:>2} = {images[key]:5d} images: {memory[key] / 2**20:7.1f} MiB")
    lines.append(f"  ratio 4N/N {memory['4N'] / memory['N']:.2f} (target <= 1.2)")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The flags, read once."""

    images_per_class: int
    repeats: int
    work_dir: str | None


def benchmark(settings: Settings, work_dir: str) -> str:
    """Converts inputs of N and 4N images under `work_dir`; returns the report."""
    small, large = make_inputs(work_dir, settings.images_per_class)
    load_before = bench.load_average()
    throughputs = best_throughputs(large, work_dir, settings.repeats)
    memory = {
        "N": peak_rss(small, os.path.join(work_dir, "memory-small")),
        "4N": peak_rss(large, os.path.join(work_dir, "memory-large")),
    }
    count = lambda d: sum(len(files) for _, _, files in os.walk(d))
    images = {"N": count(small), "4N": count(large)}
    return (f"{report(throughputs, memory, images, settings.repeats)}\n"
            f"{bench.load_line(load_before)}")


def main(argv: Sequence[str]) -> None:
    del argv  # bench.parse_flags refused any
    settings = bench.read_flags(Settings)
    # The converter runs no TF math; this keeps TF's start-up notices out of
    # the report (the CLI runs set the same).
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    work_dir = settings.work_dir or tempfile.mkdtemp(prefix="benchmark_convert-")
    try:
        print(benchmark(settings, work_dir))
    finally:
        if not settings.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


def define_flags() -> None:
    flags.DEFINE_integer("images_per_class", 25, "N / 12: images per class of the small input.",
                         lower_bound=1)
    flags.DEFINE_integer("repeats", 2, "Timed runs per worker count, taking turns; the best "
                         "is reported.", lower_bound=1)
    flags.DEFINE_string(
        "work_dir", None,
        "Where to write inputs and outputs, kept for reuse; default a temp dir, removed after.",
    )


if __name__ == "__main__":
    define_flags()
    bench.run(main)
