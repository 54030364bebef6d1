"""Summaries: what reaches the event files, and when.

Read back with `tests/events.py`, as TensorBoard would read them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.events import read_events
from trainer import metrics
from trainer.summaries import Summaries

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASS_NAMES = ("cat", "dog")


def eval_results() -> dict:
    confusion = np.array([[3, 1], [0, 4]])
    return {"loss": 0.5, "confusion": confusion, **metrics.from_confusion(confusion)}


def scalar_steps(log_dir: str, tag: str) -> list[int]:
    return [step for step, _ in read_events(log_dir).get(tag, [])]


def test_train_scalars_wait_for_a_flush(tmp_path):
    # On gs:// every flush re-uploads the event file: not one per log line.
    summaries = Summaries(str(tmp_path), enabled=True)
    for step in (10, 20, 30):
        summaries.train_scalars(step, {"loss": 1.0 / step, "accuracy": 0.5})
    assert scalar_steps(str(tmp_path / "train"), "loss") == []
    summaries.flush()
    events = read_events(str(tmp_path / "train"))
    assert [step for step, _ in events["loss"]] == [10, 20, 30]
    np.testing.assert_allclose([value for _, value in events["loss"]], [0.1, 0.05, 1 / 30])


def test_evaluation_flushes_train_and_eval(tmp_path):
    summaries = Summaries(str(tmp_path), enabled=True)
    summaries.train_scalars(10, {"loss": 0.7})
    summaries.eval_results(10, eval_results(), CLASS_NAMES)
    assert scalar_steps(str(tmp_path / "train"), "loss") == [10]
    eval_events = read_events(str(tmp_path / "eval"))
    for tag in ("loss", "accuracy", "macro_f1", "recall/cat", "recall/dog",
                "confusion_matrix", "confusion_matrix_counts"):
        assert [step for step, _ in eval_events[tag]] == [10], tag
    assert eval_events["accuracy"] == [(10, pytest.approx(7 / 8))]


def test_close_flushes_and_with_closes(tmp_path):
    with Summaries(str(tmp_path), enabled=True) as summaries:
        summaries.train_scalars(5, {"loss": 1.0})
    assert scalar_steps(str(tmp_path / "train"), "loss") == [5]


@pytest.mark.parametrize("ending", ["return", "sys.exit(143)", "raise RuntimeError"])
def test_train_scalars_reach_the_file_when_the_process_exits(tmp_path, ending):
    # Without flush() or close(): as the trainer's test processes end.
    code = textwrap.dedent(
        f"""
        import sys
        from trainer.summaries import Summaries

        def run():
            summaries = Summaries(sys.argv[1], enabled=True)
            summaries.train_scalars(1, {{"loss": 1.0}})
            summaries.train_scalars(2, {{"loss": 0.5}})
            {ending}

        run()
        """
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == {"return": 0, "sys.exit(143)": 143}.get(ending, 1), proc.stderr
    assert scalar_steps(str(tmp_path / "train"), "loss") == [1, 2]


def test_disabled_writes_nothing(tmp_path):
    with Summaries(str(tmp_path), enabled=False) as summaries:
        summaries.hparams({"model": "resnet18"})
        summaries.train_scalars(1, {"loss": 1.0})
        summaries.eval_results(1, eval_results(), CLASS_NAMES)
    assert not os.listdir(tmp_path)
