"""Trainer processes run until a validation accuracy: what the accuracy benchmarks share.

A run is a fresh `python -m trainer.main` process on the CPU demo's flags
(`configs/cpu_demo.cfg`) plus a benchmark's own. While it trains, its
evaluation events (eval/accuracy) are read as they are written; the first
evaluation at or above the target gives the time to target (the event's wall
time minus the time the process was started), its step and accuracy, and
the run is then stopped with SIGTERM (the trainer saves and exits with 143).
A run that never gets there, that has no target or that is not to be
stopped (to see its best accuracy within its budget) runs to its end.
Polling four times a second stops a run soon after its crossing, for
little CPU: each poll reads only the events written since the last.
Training images/s is the median of the run's train/images_per_second
scalars (one per loop of steps). A source run to start others from is
trained once and reused (`pretrain_once`); contenders run once per trainer
seed, in turns (`alternate_seeds`).

Used by scripts/benchmark_time_to_accuracy.py, scripts/benchmark_transfer.py,
scripts/benchmark_recipe.py and scripts/benchmark_tfds_pretraining.py.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import bench  # First: puts the repository root on sys.path.
from absl import flags
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.util import tensor_util

from launch.trainer_args import trainer_flag_values
from trainer.config import DEMO_FLAGFILE

# Exit codes of a run that did its job: finished (0), or stopped by our
# SIGTERM after saving (143; minus SIGTERM if it came after the trainer
# stopped watching for it, during its last moments).
_STOPPED_OK = (0, 128 + signal.SIGTERM)
# Far longer than saving the demo model's checkpoint takes: past it, the
# trainer is stuck and is killed.
_STOP_TIMEOUT_SECONDS = 120
# Beside a finished source run's checkpoints: its summary, and the mark that it finished.
_SOURCE_RUN_FILE = "source_run.json"
T = TypeVar("T")


def demo_flags() -> flags.FlagValues:
    """The trainer's flags as the CPU demo sets them, in a set of their own."""
    flag_values = trainer_flag_values()
    flag_values(["trainer", f"--flagfile={DEMO_FLAGFILE}"])
    return flag_values


# --------------------------------------------------------------------------
# Reading a run's events while it writes them.


@dataclasses.dataclass(frozen=True)
class Scalar:
    step: int
    value: float
    wall_time: float  # Seconds since the epoch, when the trainer wrote it.


class ScalarReader:
    """New values of one scalar tag in a run's event folder, as they are written.

    TensorBoard's loader keeps its place in each file and leaves a record the
    writer has not finished for the next call.
    """

    def __init__(self, log_dir: str, tag: str):
        self.log_dir, self.tag = log_dir, tag
        self._loaders: dict[str, LegacyEventFileLoader] = {}

    def read_new(self) -> list[Scalar]:
        for path in sorted(glob.glob(os.path.join(self.log_dir, "events.out.tfevents.*"))):
            if path not in self._loaders:
                self._loaders[path] = LegacyEventFileLoader(path)
        return [
            Scalar(event.step, float(tensor_util.make_ndarray(value.tensor))
                   if value.HasField("tensor") else value.simple_value, event.wall_time)
            for loader in self._loaders.values()
            for event in loader.Load()
            for value in event.summary.value
            if value.tag == self.tag
        ]


# --------------------------------------------------------------------------
# Running one trainer process.


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one run gave."""

    name: str
    exit_code: int
    start_time: float
    end_time: float  # When the process had exited.
    evals: tuple[Scalar, ...] = ()
    reached: Scalar | None = None  # The first evaluation at or above the target.
    images_per_second: float | None = None
    error: str | None = None  # Last line of a failed run's log.

    @property
    def seconds_to_target(self) -> float | None:
        return None if self.reached is None else self.reached.wall_time - self.start_time

    @property
    def seconds_to_last_eval(self) -> float | None:
        """How long the run trained and evaluated without reaching the target, if it did not."""
        return self.evals[-1].wall_time - self.start_time if self.evals else None

    @property
    def best(self) -> Scalar | None:
        return max(self.evals, key=lambda e: e.value, default=None)


def trainer_command(records_dir: str, model_dir: str, eval_every: int, max_steps: int,
                    extra_flags: tuple[str, ...]) -> list[str]:
    """The demo's command on `records_dir`, with `extra_flags` last so they win."""
    return [
        sys.executable, "-m", "trainer.main", f"--flagfile={DEMO_FLAGFILE}",
        f"--data_dir={records_dir}", f"--model_dir={model_dir}", f"--eval_every={eval_every}",
        f"--train_steps={max_steps}", *extra_flags,
    ]


def run_to_target(name: str, command: list[str], model_dir: str, target: float | None, *,
                  stop: bool = True, poll_seconds: float = 0.25,
                  clock: Callable[[], float] = time.time,
                  sleep: Callable[[float], None] = time.sleep) -> Outcome:
    """Runs `command` until an evaluation reaches `target` (None: none does) or the run ends.

    Args:
      stop: stop the run at the target; else let it run to its end, its
        first evaluation at or above the target still noted.
      clock: the epoch clock the trainer stamps its events with.
    """
    print(f"running {name}: {' '.join(command[1:])}", flush=True)
    os.makedirs(model_dir, exist_ok=True)
    # A file, not a pipe: a pipe nobody reads fills up and blocks the trainer.
    log_path = os.path.join(model_dir, "trainer.log")
    evals = ScalarReader(os.path.join(model_dir, "eval"), "accuracy")
    seen: list[Scalar] = []
    reached, stopped = None, False
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    with open(log_path, "w") as log:
        start_time = clock()
        process = subprocess.Popen(command, cwd=bench.REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            while True:
                running = process.poll() is None
                # Read after poll(): once it has exited, its last events are in the files.
                seen += evals.read_new()
                if target is not None and reached is None:
                    reached = next((e for e in seen if e.value >= target), None)
                if not running or (stop and reached is not None):
                    break
                sleep(poll_seconds)
            if reached is not None and process.poll() is None:
                print(f"  {name}: accuracy {reached.value:.4f} at step {reached.step}, "
                      "stopping the run", flush=True)
                process.send_signal(signal.SIGTERM)
                stopped = True
                try:
                    process.wait(timeout=_STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    process.kill()
            exit_code = process.wait()
            end_time = clock()
        finally:
            if process.poll() is None:  # Interrupted: leave no trainer behind.
                process.kill()
                process.wait()
    seen += evals.read_new()
    rates = [s.value for s in ScalarReader(os.path.join(model_dir, "train"),
                                           "images_per_second").read_new()]
    ok = exit_code in _STOPPED_OK or (stopped and exit_code == -signal.SIGTERM)
    return Outcome(
        name=name, exit_code=exit_code, start_time=start_time, end_time=end_time,
        evals=tuple(sorted(seen, key=lambda e: e.step)), reached=reached,
        images_per_second=statistics.median(rates) if rates else None,
        error=None if ok else _last_line(log_path),
    )


# --------------------------------------------------------------------------
# A source run, made once; contenders, once per seed.


@dataclasses.dataclass(frozen=True)
class SourceRun:
    """A run trained once to start others from, as a report shows it."""

    model_dir: str
    seconds: float  # Process start to exit: start-up, training, evaluation, export.
    step: int
    accuracy: float  # Its last (and only) evaluation's.
    images_per_second: float | None
    cached: bool = False  # Made by an earlier invocation.


def pretrain_once(records_dir: str, model_dir: str, steps: int) -> SourceRun:
    """The demo trained `steps` steps on `records_dir`, or the run an earlier call finished.

    Exits with a one-line error if the run fails.
    """
    summary_path = os.path.join(model_dir, _SOURCE_RUN_FILE)
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            return dataclasses.replace(SourceRun(**json.load(f)), model_dir=model_dir, cached=True)
    # Unfinished (no summary): the trainer would resume it, and its time would be a part.
    shutil.rmtree(model_dir, ignore_errors=True)
    # One evaluation, at the end: the source run's accuracy, and no time spent before.
    command = trainer_command(records_dir, model_dir, steps, steps, ())
    outcome = run_to_target("source run", command, model_dir, target=None)
    if outcome.error is not None or not outcome.evals:
        sys.exit(f"error: the source run failed (exit {outcome.exit_code}): "
                 f"{outcome.error or 'no evaluation written'}; see {model_dir}/trainer.log")
    final = outcome.evals[-1]
    run = SourceRun(model_dir, outcome.end_time - outcome.start_time, final.step, final.value,
                    outcome.images_per_second)
    with open(summary_path, "w") as f:
        json.dump(dataclasses.asdict(run), f, indent=2)
    return run


def alternate_seeds(contender_flags: Mapping[str, tuple[str, ...]], seeds: int,
                    run_seed: Callable[[str, tuple[str, ...], int], T],
                    show: Callable[[T], str]) -> dict[str, list[T]]:
    """`run_seed(name, flags, seed)` of each contender for seeds 0, 1, ..., in turns.

    All contenders of a seed run before the next seed's (`bench.alternate`),
    so a burst of load elsewhere hits them alike.
    """

    def contender(name: str, extra_flags: tuple[str, ...]) -> Callable[[], T]:
        numbers = itertools.count()  # bench.alternate calls it once per repeat
        return lambda: run_seed(name, extra_flags, next(numbers))

    return bench.alternate({name: contender(name, extra)
                            for name, extra in contender_flags.items()}, seeds, show)


def _last_line(path: str) -> str:
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else "(no output)"


def folder_name(name: str) -> str:
    """`name` as a model dir's folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def cell(value: float | None, spec: str) -> str:
    """A table cell: `value` formatted, or '-' when there is none."""
    return "-" if value is None else format(value, spec)


def text_table(rows: list[list[str]]) -> str:
    """Rows of cells as aligned text: the first column left, the last (a note) as it is,
    the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([row[0].ljust(widths[0])]
                  + [c.rjust(w) for c, w in zip(row[1:-1], widths[1:])] + [row[-1]]).rstrip()
        for row in rows)
