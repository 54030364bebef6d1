"""Tests of `scripts/benchmark_recipe.py`, run as a user runs it, and of its verdict.

The smoke run is tiny (2 images per class, 3 steps, the baseline and all
three regularisers together, one seed): it checks that every flag reaches a
trainer that finishes and that the report reads its metrics back, never
how accurate or fast anything was. The verdict's arithmetic is checked on
made-up results.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.benchmark_scripts import (
    assert_refused, documented_flags, load_script, run_script)

import accuracy_runs  # After tests.benchmark_scripts, which puts scripts/ on sys.path.

TINY = ["--train_images_per_class=2", "--validation_images_per_class=2", "--max_steps=3",
        "--seeds=1", "--contenders=all", "--ema_decay=0.5"]
FLAGS = ("--seeds", "--contenders", "--max_steps", "--randaugment", "--mixup", "--cutmix",
         "--ema_decay", "--train_images_per_class", "--validation_images_per_class",
         "--work_dir")



def run_benchmark(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_script("benchmark_recipe", *args, timeout=timeout)


@pytest.fixture(scope="module")
def script():
    return load_script("benchmark_recipe")


def test_tiny_run_trains_every_regulariser_and_reads_its_metrics(tmp_path):
    result = run_benchmark(*TINY, f"--work_dir={tmp_path}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    # Every regulariser's flag reached the trainer of the "all" contender.
    assert re.search(r"^running all: .*--randaugment=2,9 --mixup=0.2 --cutmix=1 "
                     r"--ema_decay=0.5 --seed=0$", out, re.MULTILINE), out
    rows = {}
    for name in ("baseline", "all"):
        match = re.search(rf"^{name}  +(.*)$", out, re.MULTILINE)
        assert match, out
        rows[name] = match.group(1).split()
    # accuracy mean, std, per seed, raw weights, images/s, vs baseline.
    baseline, together = rows["baseline"], rows["all"]
    assert baseline[3] == "-" and baseline[5] == "1.000", out  # no average; itself
    for cells in (baseline, together):
        assert 0.0 <= float(cells[0]) <= 1.0 and cells[1] == "0.0000" and cells[2] == cells[0]
        assert float(cells[4]) > 0
    assert 0.0 <= float(together[3]) <= 1.0  # the raw weights, beside the average's
    metrics = (tmp_path.glob("runs-*/all-seed-0/metrics.json"))
    assert len(list(metrics)) == 1
    assert re.search(r"^best recipe: all, [+-][0-9.]+ points of mean accuracy", out, re.MULTILINE)
    assert "randaugment  " not in out  # not asked for


def _result(script, accuracy, images_per_second, raw=None):
    outcome = accuracy_runs.Outcome(name="x", exit_code=0, start_time=0.0, end_time=1.0,
                                    images_per_second=images_per_second)
    return script.Result(outcome, accuracy, raw)


def test_verdict_is_the_best_mean_gain_and_its_paired_throughput(script):
    results = {
        "baseline": [_result(script, a, r) for a, r in ((0.50, 100), (0.52, 200), (0.48, 100))],
        "ema": [_result(script, a, r) for a, r in ((0.55, 95), (0.55, 190), (0.56, 94))],
        "all": [_result(script, a, r) for a, r in ((0.60, 80), (0.58, 160), (0.62, 80))],
    }
    (line,) = script.verdict_lines(results)
    # Best by mean: all, 0.60 - 0.50; throughput: the median of 0.8, 0.8, 0.8.
    assert line.startswith("best recipe: all, +10.0 points") and "0.800 of its" in line
    assert line.endswith("target not met")  # 20% slower
    results["all"] = [_result(script, a, r) for a, r in ((0.60, 95), (0.58, 180), (0.62, 92))]
    assert script.verdict_lines(results)[0].endswith("target met")
    results["all"] = [_result(script, a, r) for a, r in ((0.52, 100), (0.52, 200), (0.53, 100))]
    (line,) = script.verdict_lines(results)
    assert line.startswith("best recipe: ema, +5.3 points") and line.endswith("target met")


def test_help_lists_every_flag():
    assert documented_flags("benchmark_recipe") == sorted(FLAGS)


BAD_FLAGS = {
    "randaugment without magnitude": (["--randaugment=2"], ["--randaugment", "'N,M'"]),
    "unknown contender": (["--contenders=dropout"], ["--contenders", "dropout"]),
}


def test_bad_flags_fail_with_one_line(tmp_path):
    assert_refused("benchmark_recipe", BAD_FLAGS, f"--work_dir={tmp_path}")
