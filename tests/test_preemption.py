"""Preemption and crashes, with real processes and real signals.

SIGTERM must cost no step; kill -9 at most the steps since the last complete
checkpoint; a damaged or unwritable checkpoint must never cost the run. The
tests drive `python -m trainer.main` as a user or a scheduler would.

`sigterm_kill_9_and_resume` runs here on two MultiWorkerMirrored workers and
in `test_gcs_end_to_end.py` on one process (the default strategy) on gs://;
`TrainerProcess` and `start_trainers` serve the multi-worker tests too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from input_pipeline import records
from tests.record_fixtures import write_records
from tests.trainer_fixtures import (
    REGULARISED, REPO, assert_ok, assert_one_line_error, checkpoint_step,
    checkpoint_steps, list_files, sigterm_kill_9_and_resume,
    train)

WATCHER_SCRIPT = r"""
import os, signal, threading, time
import tensorflow as tf
from trainer import preemption

# A compiled loop that runs until told to stop, like the training loop with
# a huge --steps_per_loop: Python never regains control while it runs.
with preemption.SigtermWatcher() as sigterm:
    stop_requested = preemption.make_stop_check(tf.distribute.get_strategy(), sigterm.flag)

    @tf.function
    def loop(limit):
        def step(steps, x, preempted):
            return steps + 1, tf.tanh(x @ x), stop_requested()

        steps, _, preempted = tf.while_loop(
            lambda steps, x, preempted: (steps < limit) & ~preempted, step,
            [tf.constant(0), tf.random.normal([64, 64]), tf.constant(False)])
        return steps, preempted

    loop(tf.constant(1))  # Trace first, so the signal lands mid-execution.
    sent = []
    threading.Timer(1.0, lambda: (sent.append(time.monotonic()),
                                  os.kill(os.getpid(), signal.SIGTERM))).start()
    steps, preempted = loop(tf.constant(10**9))
    stopped_after = time.monotonic() - sent[0]
print("RESULT", int(steps), bool(preempted), round(stopped_after, 3),
      signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
"""


def test_sigterm_stops_a_running_compiled_loop_at_the_next_step():
    result = subprocess.run([sys.executable, "-c", WATCHER_SCRIPT], cwd=REPO, capture_output=True,
                            text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert_ok(result)
    steps, preempted, stopped_after, default_restored = result.stdout.split("RESULT")[1].split()
    # The loop would run a billion steps unless the watcher thread set the
    # flag while it ran: stopping at all proves it stopped at a step boundary.
    assert preempted == "True" and 0 < int(steps) < 10**9
    assert default_restored == "True"  # Leaving the watcher puts SIGTERM back.
    print(f"\nMEASURED compiled loop stopped {stopped_after}s after SIGTERM, after {steps} steps")


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


@pytest.fixture(scope="module")
def checkpointed(tiny_records, tmp_path_factory):
    """A model dir holding ckpt-2 and ckpt-4; tests copy it before changing it."""
    model_dir = str(tmp_path_factory.mktemp("checkpointed"))
    assert_ok(train(tiny_records.data_dir, model_dir, "--train_steps=4", "--checkpoint_every=2",
                    "--mode=train"))
    assert checkpoint_steps(model_dir) == [2, 4]
    return model_dir


def test_damaged_checkpoints_are_skipped_with_a_warning(checkpointed, tiny_records, tmp_path):
    model_dir = str(tmp_path / "model")
    shutil.copytree(checkpointed, model_dir)
    # What a power cut can leave: a truncated data file under an index the
    # `checkpoint` file names, and a newer index that is half written.
    data = os.path.join(model_dir, "ckpt-4.data-00000-of-00001")
    os.truncate(data, os.path.getsize(data) // 2)
    with open(os.path.join(model_dir, "ckpt-6.index"), "wb") as f:
        f.write(b"\x00" * 100)
    result = train(tiny_records.data_dir, model_dir, "--train_steps=4", "--mode=eval")
    assert_ok(result)
    assert re.search(r"checkpoint \S+ckpt-6 does not restore", result.stderr)
    assert re.search(r"checkpoint \S+ckpt-4 does not restore", result.stderr)
    assert re.search(r"restored \S+ckpt-2 at step 2", result.stderr)
    assert "eval at step 2" in result.stderr

    # Checkpoints of another model are never silently replaced by a fresh start.
    result = train(tiny_records.data_dir, model_dir, "--train_steps=4", "--width=16",
                   "--mode=export")
    assert_one_line_error(result, "none of the 3 checkpoints", "--model")


def test_failed_checkpoint_write_is_one_line_and_keeps_the_previous(checkpointed, tiny_records,
                                                                     tmp_path):
    model_dir = str(tmp_path / "model")
    shutil.copytree(checkpointed, model_dir)
    # Tests run as root, where permissions block nothing: a non-empty folder
    # where the save of step 6 must put its data file makes the write fail.
    os.makedirs(os.path.join(model_dir, "ckpt-6.data-00000-of-00001", "in-the-way"))
    result = train(tiny_records.data_dir, model_dir, "--train_steps=6", "--checkpoint_every=2",
                   "--mode=train")
    assert_one_line_error(result, "could not write the checkpoint of step 6", "ckpt-4", "intact")
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-4")
    assert checkpoint_step(model_dir) == 4
    assert checkpoint_steps(model_dir) == [2, 4]


@pytest.mark.parametrize("damage", ["record", "image"])
def test_corrupt_shard_is_a_one_line_error_naming_it(tmp_path, damage):
    data = write_records(str(tmp_path / "data"))
    # Damage every training shard, so the very first batches must meet it.
    shards = [os.path.join(data.data_dir, records.shard_name("train", i, 4)) for i in range(4)]
    for shard in shards:
        if damage == "record":
            # Zero bytes inside the first record's payload: its CRC no longer matches.
            raw = bytearray(open(shard, "rb").read())
            raw[40:60] = bytes(20)
            open(shard, "wb").write(bytes(raw))
        else:
            # Well-formed records whose JPEG bytes are garbage.
            with tf.io.TFRecordWriter(shard) as writer:
                for _ in range(4):
                    writer.write(records.make_example(
                        b"not a jpeg", height=8, width=8, filename="x.png", label=0,
                        class_name=data.class_names[0]).SerializeToString())
    result = train(data.data_dir, str(tmp_path / "out"), "--train_steps=4")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: corrupt data in "), last
    assert all(os.path.basename(shard) in last for shard in shards), last
