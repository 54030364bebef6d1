"""Smoke tests of the benchmark scripts, run as a user runs them, and of what they share.

Tiny settings and one repeat: these check that each script runs end to end
and prints every field of its report, never how fast anything was.
(scripts/benchmark_time_to_accuracy.py has tests/test_time_to_accuracy.py.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")
TINY = ["--model=resnet18", "--width=8", "--image_size=32", "--batch_size=8", "--steps=3",
        "--warmup_steps=1", "--steps_per_loop=1", "--repeats=1"]
FLAGS = {
    "benchmark_train.py": (
        "--data_dir", "--images_per_class", "--model", "--width", "--image_size",
        "--batch_size", "--precision", "--steps", "--warmup_steps", "--steps_per_loop",
        "--repeats", "--[no]cache_decoded", "--[no]synthetic_input"),
    "benchmark_input.py": (
        "--work_dir", "--images_per_class", "--max_image_side", "--image_size", "--batch_size",
        "--seconds", "--max_batches", "--rounds"),
    "benchmark_convert.py": ("--images_per_class", "--repeats", "--work_dir"),
}

sys.path.insert(0, SCRIPTS)  # As `python scripts/benchmark_X.py` has it.
import bench
import train_contenders


def run_benchmark(*args: str, script: str = "benchmark_train.py",
                  timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GCE_METADATA_IP": "127.0.0.1:9"}
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


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


@pytest.mark.parametrize("script", sorted(FLAGS))
def test_help_documents_every_flag(script):
    result = run_benchmark("--help", script=script, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr  # absl's exit after help
    documented = re.findall(r"^  (--\S+):", result.stdout, re.MULTILINE)
    assert sorted(documented) == sorted(FLAGS[script])


@pytest.mark.parametrize("args, words", [
    (["--steps=5", "--steps_per_loop=2"], ["--steps=5", "multiple of --steps_per_loop=2"]),
    (["--repeats=0"], ["--repeats=0", "positive integer"]),
    (["--image_size=16"], ["--image_size=16", "32"]),
    (["--precision=float64"], ["--precision", "float64"]),
])
def test_bad_flags_fail_with_one_line(args, words):
    result = run_benchmark(*args, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, last


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


def test_convert_run_reports_speed_up_and_memory(tmp_path):
    result = run_benchmark("--images_per_class=1", "--repeats=1", f"--work_dir={tmp_path}",
                           script="benchmark_convert.py")
    assert_ok(result)
    out = result.stdout
    assert "throughput on 48 images (best of 1, in-process)" in out
    assert re.search(r"^  speed-up [0-9.]+x", out, re.MULTILINE), out
    assert re.search(r"^   N = +12 images: +[0-9.]+ MiB", out, re.MULTILINE), out
    assert re.search(r"^  ratio 4N/N [0-9.]+", out, re.MULTILINE), out
    assert "load average" in out
    # --work_dir keeps the generated images for the next run.
    rerun = run_benchmark("--images_per_class=1", "--repeats=1", f"--work_dir={tmp_path}",
                          script="benchmark_convert.py")
    assert_ok(rerun)
    assert "generating" in out and "generating" not in rerun.stdout


def test_input_run_reports_every_pipeline_and_ratio():
    result = run_benchmark("--images_per_class=2", "--max_image_side=64", "--image_size=32",
                           "--batch_size=4", "--seconds=0.1", "--max_batches=2", "--rounds=1",
                           script="benchmark_input.py")
    assert_ok(result)
    out = result.stdout
    for pipeline in ("records (create_dataset, training)", "keras image_dataset_from_directory",
                     "decode only (records -> decode_jpeg)"):
        assert re.search(rf"^  {re.escape(pipeline)} +[0-9.]+ +[0-9.]+$", out, re.MULTILINE), out
    assert re.search(r"^records / keras: +[0-9.]+x", out, re.MULTILINE), out
    assert re.search(r"^records / decode only: +[0-9]+%", out, re.MULTILINE), out
    assert "load average" in out


@pytest.mark.parametrize("script, args, words", [
    ("benchmark_input.py", ["--max_image_side=8"], ["--max_image_side=8", "0 (full size)"]),
    ("benchmark_input.py", ["--seconds=nan"], ["--seconds=nan", "more than 0"]),
    ("benchmark_convert.py", ["--repeats=0"], ["--repeats=0", "positive integer"]),
])
def test_bad_flags_of_the_other_benchmarks_fail_with_one_line(script, args, words):
    result = run_benchmark(*args, script=script, timeout=120)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, last


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
