"""Smoke tests of `scripts/benchmark_time_to_accuracy.py`, run as a user runs it.

A tiny demo data set (2 images per class), 10 or 20 steps and a target the
first evaluation reaches (or cannot reach): these check that the script
runs the trainer, reads its evaluations back, stops it and prints its
table, never how fast anything was.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from launch.trainer_args import trainer_flag_values
from tests.benchmark_scripts import load_script, run_script

import accuracy_runs  # After tests.benchmark_scripts, which puts scripts/ on sys.path.
SHORT = ["--images_per_class=2", "--eval_every=10"]
FLAGS = ("--target", "--variants", "--eval_every", "--max_steps", "--cache_dir", "--work_dir",
         "--images_per_class")


def run_benchmark(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_script("benchmark_time_to_accuracy", *args, timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def table_row(stdout: str, variant: str) -> list[str]:
    """The cells of `variant`'s row: time, step, accuracy, images/s, then the note's words."""
    match = re.search(rf"^{re.escape(variant)}  +(.*)$", stdout, re.MULTILINE)
    assert match, stdout
    return match.group(1).split()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    """One demo cache for the module: the first run generates it, later runs reuse it."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def script():
    return load_script("benchmark_time_to_accuracy")


def test_reached_target_gives_time_step_and_accuracy_per_variant(cache_dir, tmp_path):
    # Target 0: the first evaluation, at step 10 of 20, reaches it.
    result = run_benchmark(*SHORT, "--max_steps=20", "--target=0",
                           "--variants=default,mixed_bfloat16", f"--cache_dir={cache_dir}",
                           f"--work_dir={tmp_path}")
    assert_ok(result)
    out = result.stdout
    assert "preparing the demo data (2 images per class)" in out
    assert "stopping the run" in out
    for variant in ("default", "mixed_bfloat16"):
        seconds, step, accuracy, images_per_second, *note = table_row(out, variant)
        assert float(seconds) > 0 and int(step) == 10, out
        assert 0.0 <= float(accuracy) <= 1.0 and float(images_per_second) > 0, out
        assert not note, out
    assert "include Python and TensorFlow start-up" in out and "load average" in out
    # --work_dir keeps each run's model dir, with the trainer's log and events.
    (runs_dir,) = tmp_path.glob("time_to_accuracy-*")
    for folder in ("default", "mixed_bfloat16"):
        assert (runs_dir / folder / "trainer.log").exists()
        assert list((runs_dir / folder / "eval").glob("events.out.tfevents.*"))


def test_unreached_target_shows_the_best_evaluation(cache_dir):
    result = run_benchmark(*SHORT, "--max_steps=10", "--target=0.999", "--variants=image_size=48",
                           f"--cache_dir={cache_dir}")
    assert_ok(result)
    seconds, step, accuracy, _, *note = table_row(result.stdout, "image_size=48")
    assert seconds == "-" and int(step) == 10 and float(accuracy) < 0.999
    assert " ".join(note) == "target not reached in 10 steps: best evaluation shown"
    assert "stopping the run" not in result.stdout


def test_failed_run_is_reported_with_its_last_line(script, tmp_path):
    # The script's own trainer command, on a data dir that is not there.
    command = accuracy_runs.trainer_command(str(tmp_path / "nowhere"), str(tmp_path / "run"),
                                            eval_every=10, max_steps=10, extra_flags=())
    outcome = accuracy_runs.run_to_target("default", command, str(tmp_path / "run"), target=0.5)
    assert outcome.exit_code == 1 and outcome.reached is None and outcome.evals == ()
    assert outcome.error.startswith("error: ") and "nowhere" in outcome.error
    row = script.report([outcome], target=0.5, max_steps=10).splitlines()[1]
    assert row.split()[:5] == ["default", "-", "-", "-", "-"]
    assert f"failed (exit 1): {outcome.error}" in row


def test_every_variant_is_valid_trainer_flags(script):
    for variant, variant_flags in script.VARIANTS.items():
        trainer_flags = trainer_flag_values()
        trainer_flags(["trainer", f"--flagfile={script.DEMO_FLAGFILE}", *variant_flags])
        for flag in variant_flags:
            name, value = flag.lstrip("-").split("=")
            assert trainer_flags[name].value == trainer_flags[name].parser.parse(value), variant


def test_help_documents_every_flag_and_variant(script):
    result = run_benchmark("--help", timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr  # absl's exit after help
    help_text = " ".join(result.stdout.split())  # absl wraps lines
    for flag in FLAGS:
        assert flag in help_text, flag
    assert "(default: 'all')" in help_text
    for variant in script.VARIANTS:
        assert variant in help_text, variant


@pytest.mark.parametrize("args, words", [
    (["--variants=default,fp8"], ["unknown variant", "fp8", "steps_per_loop=1", "image_size=96"]),
    (["--variants=,"], ["unknown variant", "none given"]),
    (["--target=1.01"], ["--target", "[0, 1]", "1.01"]),
    (["--eval_every=0"], ["--eval_every=0", "positive integer"]),
    (["--target=nan"], ["--target=nan", "[0, 1]"]),
    (["stray"], ["unexpected arguments stray"]),
])
def test_bad_flags_fail_with_one_line(args, words):
    result = run_benchmark(*args, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "preparing" not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, last
