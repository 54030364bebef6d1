"""Smoke tests of `scripts/benchmark_transfer.py`, run as a user runs it.

A few images per class, a 2-step source run, a 10-step budget and target 0
(the first evaluation reaches it): these check that the script makes both
data sets, pretrains, runs every contender from the source run's checkpoint
and prints the table and ratio lines, never how fast anything was. Whether
a run stops at the target or goes on is checked on a stand-in trainer that
writes three evaluations.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.benchmark_scripts import (
    FAKE_TRAINER, assert_refused, documented_flags, load_script, run_script)

import accuracy_runs  # After tests.benchmark_scripts, which puts scripts/ on sys.path.

TINY = ["--source_images_per_class=2", "--source_steps=2", "--train_images_per_class=2",
        "--validation_images_per_class=3", "--max_steps=10", "--eval_every=1", "--target=0",
        "--seeds=1", "--freeze_epochs=1", "--stop_at_target", "--contenders=lr+freeze"]
FLAGS = ("--target", "--seeds", "--contenders", "--max_steps", "--eval_every", "--freeze_epochs",
         "--[no]stop_at_target", "--train_images_per_class", "--validation_images_per_class",
         "--source_images_per_class", "--source_steps", "--work_dir")


def run_benchmark(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_script("benchmark_transfer", *args, timeout=timeout)


@pytest.fixture(scope="module")
def script():
    return load_script("benchmark_transfer")


def table_row(stdout: str, contender: str) -> list[str]:
    """The cells of `contender`'s row: time, per seed, step, accuracy, best, per seed, images/s."""
    match = re.search(rf"^{re.escape(contender)}  +(.*)$", stdout, re.MULTILINE)
    assert match, stdout
    return match.group(1).split()


def test_tiny_run_reports_every_contender_and_ratio(script, tmp_path):
    result = run_benchmark(*TINY, f"--work_dir={tmp_path}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"^source run \(one-off\): [0-9.]+ s for 2 steps, validation accuracy",
                     out, re.MULTILINE), out
    contenders = script.contenders("SOURCE", 1, ["scratch", "lr+freeze"])
    assert list(contenders) == ["scratch", "fine-tune lr x0.1 freeze 1 ep"]
    for name in contenders:
        seconds, per_seed, step, accuracy, best, best_per_seed, images_per_second = (
            table_row(out, name))
        assert float(seconds) > 0 and per_seed == seconds and int(step) == 1, out
        assert 0.0 <= float(accuracy) <= float(best) <= 1.0 and best_per_seed == best, out
        assert float(images_per_second) > 0, out
    for name in contenders:
        if name != script.SCRATCH:
            assert re.search(rf"^{re.escape(name)} / scratch: +[0-9.]+ \(", out, re.MULTILINE), out
    assert re.search(r"^fastest to 0: fine-tune lr x0.1 freeze 1 ep$", out, re.MULTILINE), out
    assert "highest best accuracy within the budget: fine-tune" in out
    assert "running fine-tune:" not in out  # not asked for
    assert "stopping the run" in out and "Best accuracy: up to the first evaluation" in out
    assert "load average" in out
    # Fine-tuning starts from the source run's backbone, never its head (both sets have 6 classes).
    source_dir = tmp_path / "source-2-per-class-2-steps"
    assert (f"--init_checkpoint={source_dir} --init_checkpoint_modules=backbone "
            "--backbone_lr_multiplier=0.1 --freeze_backbone_epochs=1" in out)
    assert json.loads((source_dir / "source_run.json").read_text())["step"] == 2
    # The target set: the other 6 species, split into exactly the asked-for counts.
    (info_path,) = tmp_path.glob("data/records-5-per-class-seed-1-*/records_info.json")
    splits = json.loads(info_path.read_text())["splits"]
    assert splits["train"]["num_examples"] == 12 and splits["validation"]["num_examples"] == 18


@pytest.mark.parametrize("stop", [True, False])
def test_a_run_stops_at_the_target_or_goes_on_to_its_end(tmp_path, stop, capsys):
    command = [sys.executable, "-c", FAKE_TRAINER, str(tmp_path)]
    outcome = accuracy_runs.run_to_target("fake", command, str(tmp_path), target=0.8, stop=stop)
    assert outcome.error is None and outcome.reached.step == 2
    assert outcome.seconds_to_target > 0
    if stop:  # SIGTERM in the pause after step 2: the third evaluation is never written.
        assert [e.step for e in outcome.evals] == [1, 2]
        assert outcome.best.value == pytest.approx(0.9)  # float32 in the event
        assert "fake: accuracy 0.9000 at step 2, stopping the run" in capsys.readouterr().out
    else:
        assert [e.step for e in outcome.evals] == [1, 2, 3]
        assert outcome.best.value == pytest.approx(0.95)
        assert outcome.exit_code == 0 and outcome.seconds_to_last_eval > 3


def test_help_lists_every_flag():
    assert documented_flags("benchmark_transfer") == sorted(FLAGS)


BAD_FLAGS = {
    "target above 1": (["--target=1.5"], ["--target", "[0, 1]", "1.5"]),
    "freeze_epochs 0": (["--freeze_epochs=0"], ["--freeze_epochs", "more than 0"]),
}


def test_bad_flags_fail_with_one_line(tmp_path):
    assert_refused("benchmark_transfer", BAD_FLAGS, f"--work_dir={tmp_path}")
