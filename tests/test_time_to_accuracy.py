"""Smoke tests of `scripts/benchmark_time_to_accuracy.py`, run as a user runs it.

A tiny demo data set (2 images per class), 20 steps and a target the first
evaluation reaches: this checks that the script runs the trainer, reads its
evaluations back, stops it and prints its table, never how fast anything
was. A target never reached is checked on a stand-in trainer that writes
three evaluations, and the table from its outcome.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from launch.trainer_args import trainer_flag_values
from tests.benchmark_scripts import (
    FAKE_TRAINER, assert_ok, assert_refused, load_script, run_script)

import accuracy_runs  # After tests.benchmark_scripts, which puts scripts/ on sys.path.
SHORT = ["--images_per_class=2", "--eval_every=10"]
FLAGS = ("--target", "--variants", "--eval_every", "--max_steps", "--cache_dir", "--work_dir",
         "--images_per_class")


def run_benchmark(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_script("benchmark_time_to_accuracy", *args, timeout=timeout)


def table_row(stdout: str, variant: str) -> list[str]:
    """The cells of `variant`'s row: time, step, accuracy, images/s, then the note's words."""
    match = re.search(rf"^{re.escape(variant)}  +(.*)$", stdout, re.MULTILINE)
    assert match, stdout
    return match.group(1).split()


@pytest.fixture(scope="module")
def script():
    return load_script("benchmark_time_to_accuracy")


def test_reached_target_gives_time_step_and_accuracy_per_variant(tmp_path):
    # Target 0: the first evaluation, at step 10 of 20, reaches it.
    result = run_benchmark(*SHORT, "--max_steps=20", "--target=0",
                           "--variants=default,mixed_bfloat16",
                           f"--cache_dir={tmp_path / 'cache'}", f"--work_dir={tmp_path}")
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


def test_unreached_target_runs_to_the_end_and_shows_the_best_evaluation(script, tmp_path,
                                                                       capsys):
    # A stand-in trainer whose best evaluation is 0.95 at step 3, its last.
    command = [sys.executable, "-c", FAKE_TRAINER, str(tmp_path)]
    outcome = accuracy_runs.run_to_target("fake", command, str(tmp_path), target=0.999)
    assert outcome.exit_code == 0 and outcome.error is None and outcome.reached is None
    assert [e.step for e in outcome.evals] == [1, 2, 3]  # never stopped
    assert "stopping the run" not in capsys.readouterr().out
    report = script.report([outcome], target=0.999, max_steps=3)
    seconds, step, accuracy, _, *note = table_row(report, "fake")
    assert seconds == "-" and int(step) == 3 and float(accuracy) == pytest.approx(0.95)
    assert " ".join(note) == "target not reached in 3 steps: best evaluation shown"


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


BAD_FLAGS = {
    "unknown variant": (["--variants=default,fp8"],
                        ["unknown variant", "fp8", "steps_per_loop=1", "image_size=96"]),
    "no variant": (["--variants=,"], ["unknown variant", "none given"]),
    "target above 1": (["--target=1.01"], ["--target", "[0, 1]", "1.01"]),
    "eval_every 0": (["--eval_every=0"], ["--eval_every=0", "positive integer"]),
    "target nan": (["--target=nan"], ["--target=nan", "[0, 1]"]),
    "stray argument": (["stray"], ["unexpected arguments stray"]),
}


def test_bad_flags_fail_with_one_line():
    assert_refused("benchmark_time_to_accuracy", BAD_FLAGS)
