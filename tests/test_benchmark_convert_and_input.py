"""Smoke tests of `scripts/benchmark_convert.py` and `scripts/benchmark_input.py`, run as a
user runs them.

Tiny settings and one repeat: these check that each script runs end to end
and prints every field of its report, never how fast anything was.
(scripts/benchmark_train.py and what the scripts share are in tests/test_benchmarks.py.)
"""

from __future__ import annotations

import re

import pytest

from tests.benchmark_scripts import (
    assert_ok, assert_refused, documented_flags, load_script, run_script)

FLAGS = {
    "benchmark_input": (
        "--work_dir", "--images_per_class", "--max_image_side", "--image_size", "--batch_size",
        "--seconds", "--max_batches", "--rounds"),
    "benchmark_convert": ("--images_per_class", "--repeats", "--work_dir"),
}


def test_convert_run_reuses_its_work_dir_and_reports_speed_up_and_memory(tmp_path, capsys):
    # What a first run with this --work_dir leaves for the next: the inputs it
    # generated (the script's own function, here in-process).
    load_script("benchmark_convert").make_inputs(str(tmp_path), 1)
    assert "generating" in capsys.readouterr().out
    result = run_script("benchmark_convert", "--images_per_class=1", "--repeats=1",
                        f"--work_dir={tmp_path}")
    assert_ok(result)
    out = result.stdout
    assert "generating" not in out  # --work_dir kept the generated images for this run.
    assert "throughput on 48 images (best of 1, in-process)" in out
    assert re.search(r"^  speed-up [0-9.]+x", out, re.MULTILINE), out
    assert re.search(r"^   N = +12 images: +[0-9.]+ MiB", out, re.MULTILINE), out
    assert re.search(r"^  ratio 4N/N [0-9.]+", out, re.MULTILINE), out
    assert "load average" in out


def test_input_run_reports_every_pipeline_and_ratio():
    result = run_script("benchmark_input", "--images_per_class=2", "--max_image_side=64",
                        "--image_size=32", "--batch_size=4", "--seconds=0.1", "--max_batches=2",
                        "--rounds=1")
    assert_ok(result)
    out = result.stdout
    for pipeline in ("records (create_dataset, training)", "keras image_dataset_from_directory",
                     "decode only (records -> decode_jpeg)"):
        assert re.search(rf"^  {re.escape(pipeline)} +[0-9.]+ +[0-9.]+$", out, re.MULTILINE), out
    assert re.search(r"^records / keras: +[0-9.]+x", out, re.MULTILINE), out
    assert re.search(r"^records / decode only: +[0-9]+%", out, re.MULTILINE), out
    assert "load average" in out


@pytest.mark.parametrize("script", sorted(FLAGS))
def test_help_documents_every_flag(script):
    assert documented_flags(script) == sorted(FLAGS[script])


BAD_FLAGS = {
    "benchmark_input": {
        "max_image_side 8": (["--max_image_side=8"], ["--max_image_side=8", "0 (full size)"]),
        "seconds nan": (["--seconds=nan"], ["--seconds=nan", "more than 0"]),
    },
    "benchmark_convert": {"repeats 0": (["--repeats=0"], ["--repeats=0", "positive integer"])},
}


@pytest.mark.parametrize("script", sorted(BAD_FLAGS))
def test_bad_flags_fail_with_one_line(script):
    assert_refused(script, BAD_FLAGS[script])
