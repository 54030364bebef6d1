"""Tests of `scripts/benchmark_tfds_pretraining.py`: its table and verdict, flags, one run.

The table and verdict are checked on made-up outcomes; the flags as a user
meets them (`--help`, and the refused command lines, all in one process).
One smoke run, as a user runs it, with as little as still runs end
to end (2 source images per species, a 1-step source run, 2 target images
per species, a 2-step budget, 1 seed): it checks that the TFDS stand-in is
written and converted by the converter's command, that the pretrained run
starts from the source run's backbone, and what the report and the files
hold, never how accurate anything was.

The smoke run is three trainer processes after a conversion, most of this
file's time: it starts in the background with the first test, so the other
tests, two of which start a TensorFlow process each, run beside it on the
second core.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.benchmark_scripts import (
    SCRIPTS, assert_ok, assert_refused, documented_flags, load_script)

import accuracy_runs  # After tests.benchmark_scripts, which puts scripts/ on sys.path.

NAME = "benchmark_tfds_pretraining"
TINY = ["--source_images_per_class=2", "--source_steps=1", "--train_images_per_class=1",
        "--validation_images_per_class=1", "--max_steps=2", "--eval_every=1", "--seeds=1"]
FLAGS = ("--seeds", "--max_steps", "--eval_every", "--train_images_per_class",
         "--validation_images_per_class", "--source_images_per_class", "--source_steps",
         "--work_dir")


@pytest.fixture(scope="module")
def script():
    return load_script(NAME)


@pytest.fixture(scope="module", autouse=True)
def tiny_run(tmp_path_factory) -> Iterator[Callable[[], tuple[str, pathlib.Path]]]:
    """The smoke run, started with the first test: a call waits for (its stdout, its work dir)."""
    work_dir, logs_dir = tmp_path_factory.mktemp("tiny"), tmp_path_factory.mktemp("tiny-logs")
    logs = [logs_dir / "stdout", logs_dir / "stderr"]  # Files never fill up, as a pipe would.
    # As run_script runs a script, but not waited for; in a session of its own, so that
    # stopping it stops its converter and trainer processes too.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GCE_METADATA_IP": "127.0.0.1:9"}
    with open(logs[0], "w") as out, open(logs[1], "w") as err:
        process = subprocess.Popen(
            [sys.executable, os.path.join(SCRIPTS, f"{NAME}.py"), *TINY,
             f"--work_dir={work_dir}"], cwd=os.path.dirname(SCRIPTS), env=env, stdout=out,
            stderr=err, start_new_session=True)

    def wait() -> tuple[str, pathlib.Path]:
        status = process.wait(timeout=300)
        stdout, stderr = (path.read_text() for path in logs)
        assert_ok(subprocess.CompletedProcess(process.args, status, stdout, stderr))
        return stdout, work_dir

    yield wait
    if process.poll() is None:  # Not waited for: a test failed, or it was not selected.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def outcome(accuracies: dict[int, float], error: str | None = None) -> accuracy_runs.Outcome:
    """A made-up run that wrote these evaluations (step -> accuracy)."""
    evals = tuple(accuracy_runs.Scalar(step, value, 0.0) for step, value in accuracies.items())
    return accuracy_runs.Outcome(name="x", exit_code=1 if error else 0, start_time=0.0,
                                 end_time=1.0, evals=evals, error=error)


def row(text: str, step: int) -> list[str]:
    match = re.search(rf"^{step}  +(.*)$", text, re.MULTILINE)
    assert match, text
    return match.group(1).split(None, 6)


@pytest.mark.parametrize("eval_every, max_steps, steps", [
    (25, 1000, [25, 50, 100, 200, 400, 800, 1000]),
    (25, 800, [25, 50, 100, 200, 400, 800]),
    (30, 100, [30, 60, 100]),
    (1, 1, [1]),
])
def test_rows_double_from_the_interval_to_the_budget(script, eval_every, max_steps, steps):
    assert script.table_steps(eval_every, max_steps) == steps


def test_table_gives_medians_each_seed_and_paired_differences(script):
    results = {
        "scratch": [outcome({1: 0.20, 2: 0.40}), outcome({1: 0.30, 2: 0.45}),
                    outcome({1: 0.10, 2: 0.38})],
        # The second seed failed after its first evaluation.
        "pretrained": [outcome({1: 0.80, 2: 0.90}), outcome({1: 0.70}, error="boom"),
                       outcome({1: 0.60, 2: 0.95})],
    }
    text = script.table(results, [1, 2])
    assert text.splitlines()[0].split() == [
        "step", "scratch", "per", "seed", "pretrained", "per", "seed", "difference", "per",
        "seed", "note"]
    assert row(text, 1) == ["0.200", "0.200/0.300/0.100", "0.700", "0.800/0.700/0.600",
                            "+0.500", "+0.600/+0.400/+0.500"]
    # Medians of what is there: 0.90 and 0.95; differences +0.50 and +0.57.
    assert row(text, 2) == ["0.400", "0.400/0.450/0.380", "0.925", "0.900/-/0.950", "+0.535",
                            "+0.500/-/+0.570", "no evaluation: pretrained 1 of 3 seed(s)"]
    assert script.failure_lines(results) == ["failed: pretrained seed 1 (exit 1): boom"]


def test_verdict_says_where_pretraining_is_ahead_and_when_it_matches_scratch(script):
    results = {"scratch": [outcome({25: 0.2, 50: 0.3, 75: 0.35, 100: 0.5})],
               "pretrained": [outcome({25: 0.4, 50: 0.45, 75: 0.55, 100: 0.45})]}
    ahead, matched = script.verdict_lines(results, [25, 50, 100], 100)
    assert ahead == ("pretrained - scratch at equal steps: -0.050 to +0.200; ahead or level at "
                     "2 of 3 step(s), behind at step(s) 100")
    # Every evaluation counts, not only the table's rows: 75 is the first at or above 0.5.
    assert matched == ("scratch's median at step 100, 0.500: pretrained's median reaches it "
                       "at step 75, 75% of the budget")
    results["pretrained"] = [outcome({25: 0.4, 50: 0.45, 75: 0.46, 100: 0.49})]
    assert script.verdict_lines(results, [25, 50, 100], 100)[1].endswith(
        "pretrained's median does not reach it in 100 steps")
    results["scratch"] = [outcome({25: 0.2}, error="killed")]
    assert script.verdict_lines(results, [25, 50, 100], 100) == [
        "pretrained - scratch at equal steps: +0.200 to +0.200; ahead or level at 1 of 1 step(s)",
        "no step count: scratch wrote no evaluation at step 100"]
    results["scratch"] = [outcome({}, error="killed")]
    assert script.verdict_lines(results, [25, 50, 100], 100) == [
        "no verdict: no step has an evaluation of both contenders (see the table)"]


def test_help_lists_every_flag():
    assert documented_flags(NAME) == sorted(FLAGS)


BAD_FLAGS = {
    "interval past the budget": (["--eval_every=50", "--max_steps=10"],
                                 ["--eval_every must be at most --max_steps"]),
    "one source image": (["--source_images_per_class=1"], ["--source_images_per_class=1", ">= 2"]),
    "no seed": (["--seeds=0"], ["--seeds=0", "positive integer"]),
    "no training image": (["--train_images_per_class=0"],
                          ["--train_images_per_class=0", "positive integer"]),
}


def test_bad_flags_fail_with_one_line(tmp_path):
    assert_refused(NAME, BAD_FLAGS, f"--work_dir={tmp_path}")


def test_tiny_run_pretrains_through_tfds_and_reports_equal_steps(script, tiny_run):
    out, tmp_path = tiny_run()
    # The stand-in is a prepared TFDS data set with a train split only, converted by the
    # user's command: the converter's summary says it made the validation split itself.
    tfds_dir = tmp_path / "data" / "tfds-2-per-class"
    records_dir = tmp_path / "data" / "records-tfds-2-per-class-160-px"
    assert (f"converting: python -m input_pipeline.make_tfrecords --tfds_name={script.TFDS_NAME} "
            f"--tfds_data_dir={tfds_dir} --output_dir={records_dir}" in out)
    assert "TFDS splits read: train; validation: none, so a stratified share" in out
    info = json.loads((tfds_dir / script.TFDS_NAME / script.TFDS_VERSION /
                       "dataset_info.json").read_text())
    assert [split["name"] for split in info["splits"]] == ["train"]
    records_info = json.loads((records_dir / "records_info.json").read_text())
    assert records_info["class_names"] == list(script.SOURCE_CLASSES)
    assert records_info["tfds"]["name"] == script.TFDS_NAME
    assert records_info["tfds"]["splits"] == ["train"]
    assert {split: entry["num_examples"] for split, entry in records_info["splits"].items()} == {
        "train": 6, "validation": 6}
    # The source run, once, and the pretrained run from its backbone.
    source_dir = tmp_path / "source-2-per-class-1-steps"
    assert json.loads((source_dir / "source_run.json").read_text())["step"] == 1
    assert re.search(r"^source run \(one-off, TFDS synthetic_source_species, 6 species x 2 "
                     r"images\): [0-9.]+ s for 1 steps, validation accuracy [0-9.]+, ", out,
                     re.MULTILINE), out
    assert (f"--init_checkpoint={source_dir} --init_checkpoint_modules=backbone --seed=0"
            in out)
    (runs_dir,) = tmp_path.glob("runs-*")
    assert "initialised backbone" in (runs_dir / "pretrained-seed-0" / "trainer.log").read_text()
    assert "initialised" not in (runs_dir / "scratch-seed-0" / "trainer.log").read_text()
    # The table: a row per evaluation step, every cell a figure.
    for step in (1, 2):
        cells = row(out, step)
        assert len(cells) == 6, out
        assert all(0.0 <= float(c) <= 1.0 for c in cells[:4]), out
        assert cells[1] == cells[0] and cells[3] == cells[2], out  # one seed: its own median
        assert cells[5] == cells[4] and -1.0 <= float(cells[4]) <= 1.0, out
    assert re.search(r"^pretrained - scratch at equal steps: ", out, re.MULTILINE), out
    assert re.search(r"^scratch's median at step 2, [0-9.]+: pretrained's median", out,
                     re.MULTILINE), out
    assert "failed:" not in out and "load average" in out
