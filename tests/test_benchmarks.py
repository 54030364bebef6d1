"""Smoke tests of `scripts/benchmark_train.py`, run as a user runs it, and of what the
benchmark scripts share (`scripts/bench.py`).

Tiny settings and one repeat: these check that the script runs end to end
and prints every field of its report, never how fast anything was. (The
other scripts have tests/test_benchmark_*.py and tests/test_time_to_accuracy.py.)
"""

from __future__ import annotations

import re
import subprocess

from tests.benchmark_scripts import assert_ok, assert_refused, documented_flags, run_script

import bench  # After tests.benchmark_scripts, which puts scripts/ on sys.path.
import train_contenders

TINY = ["--model=resnet18", "--width=8", "--image_size=32", "--batch_size=8", "--steps=3",
        "--warmup_steps=1", "--steps_per_loop=1", "--repeats=1"]
FLAGS = ("--data_dir", "--images_per_class", "--model", "--width", "--image_size",
         "--batch_size", "--precision", "--steps", "--warmup_steps", "--steps_per_loop",
         "--repeats", "--[no]cache_decoded", "--[no]synthetic_input")


def run_benchmark(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_script("benchmark_train", *args, timeout=timeout)


def table_rate(stdout: str, contender: str) -> float:
    """The median images/s of `contender`'s row in the report table."""
    match = re.search(rf"^{re.escape(contender)}\s+([0-9.]+)\s+([0-9.]+)", stdout, re.MULTILINE)
    assert match, stdout
    return float(match.group(1))


def test_records_run_reports_every_contender_and_ratio():
    # No --data_dir: generates synthetic seedlings and converts them first.
    result = run_benchmark(*TINY, "--images_per_class=2")
    assert_ok(result)
    out = result.stdout
    assert "input: records" in out and "12 classes" in out
    # --cache_decoded (the default) fills its cache in the warm-up: a pass over
    # the 12 training images is 2 batches of 8, more than --warmup_steps=1.
    assert "3 timed steps after 2 warm-up" in out
    for contender in ("ours", "model.fit", "ours, in-memory input", "ours, 1 step per call",
                      "input pipeline alone"):
        assert table_rate(out, contender) > 0
    assert re.search(r"^ours / model\.fit: +[0-9.]+x", out, re.MULTILINE), out
    assert re.search(r"^records / synthetic \(ours\): +[0-9.]+%", out, re.MULTILINE), out
    assert re.search(r"^input wait fraction: +[0-9.]+%", out, re.MULTILINE), out
    assert "load average" in out


def test_synthetic_input_needs_no_records_and_skips_the_input_check(tiny_records):
    # --data_dir here only supplies the class count; --precision is honoured.
    result = run_benchmark(*TINY, "--synthetic_input", f"--data_dir={tiny_records.data_dir}",
                           "--precision=mixed_bfloat16")
    assert_ok(result)
    out = result.stdout
    assert "input: in-memory synthetic tensors" in out and "mixed_bfloat16" in out
    assert "4 classes" in out
    assert "3 timed steps after 1 warm-up" in out  # no records, no cache to fill
    assert table_rate(out, "ours") > 0 and table_rate(out, "model.fit") > 0
    assert "input pipeline alone" not in out and "generating" not in out
    assert re.search(r"^ours / model\.fit: +[0-9.]+x", out, re.MULTILINE), out
    assert "records / synthetic (ours): n/a (--synthetic_input)" in out
    assert re.search(r"^input wait fraction: +[0-9.]+%", out, re.MULTILINE), out


def test_help_documents_every_flag():
    assert documented_flags("benchmark_train") == sorted(FLAGS)


BAD_FLAGS = {
    "steps not whole loops": (["--steps=5", "--steps_per_loop=2"],
                              ["--steps=5", "multiple of --steps_per_loop=2"]),
    "repeats 0": (["--repeats=0"], ["--repeats=0", "positive integer"]),
    "image_size 16": (["--image_size=16"], ["--image_size=16", "32"]),
    "precision float64": (["--precision=float64"], ["--precision", "float64"]),
}


def test_bad_flags_fail_with_one_line():
    assert_refused("benchmark_train", BAD_FLAGS)


def test_missing_data_dir_fails_with_one_line(tmp_path):
    result = run_benchmark(*TINY, f"--data_dir={tmp_path / 'nowhere'}", timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "nowhere" in last and "make_tfrecords" in last, last


def test_ratios_pair_the_runs_of_each_repeat():
    # Seconds per run over 3 repeats; in repeat 1 the machine was slow for
    # the in-memory run only. Ratio of medians: 100%; the median of each
    # repeat's own ratio is 2/3, and so is the CPU-time one.
    import benchmark_train as bt

    def runs(*seconds: float, wait: float | None = None) -> list:
        return [train_contenders.Timing(10, train_contenders.Reading(s, s), input_wait=wait)
                for s in seconds]

    timings = {
        bt.FIT: runs(1.0, 2.0, 3.0),
        bt.OURS: runs(1.0, 2.0, 3.0),
        bt.OURS_IN_MEMORY: runs(3.0, 1.0, 2.0),
        bt.BREAKDOWN: runs(1.0, 1.0, 1.0, wait=0.1),
        bt.INPUT_ALONE: runs(0.1, 0.1, 0.1),
    }
    out = bt.report(timings, batch_size=8)
    assert re.search(r"^ours / model\.fit: +1\.00x .*CPU time per image: 1\.00x", out, re.M), out
    assert re.search(r"^records / synthetic \(ours\): +66\.7% .*CPU time per image: 66\.7%",
                     out, re.M), out
    assert re.search(r"^input wait fraction: +10\.0%", out, re.M), out


def test_alternate_takes_turns_and_keeps_each_contenders_results(capsys):
    order = []

    def contender(name: str, results: list[float]):
        it = iter(results)
        return lambda: order.append(name) or next(it)

    runs = bench.alternate({"a": contender("a", [3.0, 1.0, 2.0]),
                            "b": contender("b", [6.0, 2.0, 2.0])}, repeats=3)
    assert order == ["a", "b"] * 3
    assert runs == {"a": [3.0, 1.0, 2.0], "b": [6.0, 2.0, 2.0]}
    assert bench.median(runs["a"], lambda x: x) == 2.0
    # Ratios within a repeat: 2, 2 and 1; the ratio of the medians would be 1.
    assert bench.paired_ratio(runs["b"], runs["a"], lambda x: x) == 2.0
    assert "repeat 3/3: b  done" in capsys.readouterr().out
