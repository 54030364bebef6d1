"""SIGTERM and kill -9 on two MultiWorkerMirrored workers, with real processes and signals.

SIGTERM must cost no step, kill -9 at most the steps since the last complete
checkpoint, on any worker. `sigterm_kill_9_and_resume` runs here on two
workers and in `test_gcs_end_to_end.py` on one process (the default
strategy) on gs://; the other preemption and crash tests are in
`test_preemption.py`.
"""

from __future__ import annotations

import os

import tensorflow as tf

from tests.trainer_fixtures import (
    REGULARISED, checkpoint_step, list_files, sigterm_kill_9_and_resume)


def test_two_workers_sigterm_loses_no_step_and_kill_9_at_most_the_last_interval(
        tiny_records, tmp_path, start_trainers):
    model_dir = str(tmp_path / "model")
    # With every regulariser: the weight average and the mixing survive both stops.
    measured = sigterm_kill_9_and_resume(start_trainers, tiny_records.data_dir, model_dir,
                                         workers=2, list_files=lambda: list_files(model_dir),
                                         extra_flags=tuple(REGULARISED))
    assert checkpoint_step(model_dir) == 150
    # The average went on through both stops: one update per step, none restarted.
    newest = tf.train.latest_checkpoint(model_dir)
    assert tf.train.load_variable(newest, "ema/num_updates/.ATTRIBUTES/VARIABLE_VALUE") == 150
    assert os.path.exists(os.path.join(model_dir, "export", "saved_model.pb"))
    # The non-chief's scratch checkpoints are gone, even the killed one's.
    assert not [f for f in os.listdir(f"{model_dir}.tmp-1") if f.startswith("seedlings")]
    print(f"\nMEASURED two workers: {measured}")
