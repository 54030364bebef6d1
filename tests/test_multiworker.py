"""MultiWorkerMirrored on two processes on 127.0.0.1, laid out as Vertex AI does.

Two workers must compute what one process computes for the same global
batch, read disjoint shards (or records, with fewer shards than workers),
evaluate every validation example exactly once, and leave the chief as the
only writer of the model dir. Preemption and
kill -9 on two workers are in `test_preemption.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.events import read_events
from tests.record_fixtures import write_records
from tests.trainer_fixtures import (
    REGULARISED, REPO, assert_ok, checkpoint_steps, finish_all, free_ports, train,
    vertex_tf_config)


def test_two_workers_train_evaluate_and_checkpoint_like_one_process(tiny_records, tmp_path,
                                                                   start_trainers):
    model_dir = str(tmp_path / "model")
    # With every regulariser: mixed batches per replica, a weight average per replica.
    chief, worker = start_trainers(tiny_records.data_dir, model_dir, "--train_steps=4",
                                   "--checkpoint_every=2", "--eval_every=2",
                                   "--mode=train_and_eval", *REGULARISED, workers=2)
    assert [chief.finish(), worker.finish()] == [0, 0], chief.tail() + worker.tail()
    for process in (chief, worker):
        process.wait_for(r"CollectiveAllReduceStrategy with 2 replica\(s\)")

    # Only the chief wrote: one event file per writer, no worker scratch left.
    assert checkpoint_steps(model_dir) == [2, 4]
    assert sorted(os.listdir(model_dir)) == [
        "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index", "ckpt-4.data-00000-of-00001",
        "ckpt-4.index", "eval", "export", "metrics.json", "normalization.json", "train"]
    for writer in ("train", "eval"):
        assert len([f for f in os.listdir(os.path.join(model_dir, writer))
                    if f.startswith("events.out")]) == 1, writer
    assert [s for s, _ in read_events(os.path.join(model_dir, "eval"))["accuracy"]] == [2, 4]
    assert os.path.exists(os.path.join(model_dir, "export", "saved_model.pb"))
    assert not [f for f in os.listdir(f"{model_dir}.tmp-1") if f.startswith("seedlings")]

    # Both workers report the same all-reduced evaluation, of every example once.
    metrics = json.load(open(os.path.join(model_dir, "metrics.json")))
    assert metrics["step"] == 4 and metrics["num_examples"] == 13
    evals = [p.wait_for(r"eval at step 4: .*").group(0) for p in (chief, worker)]
    assert evals[0] == evals[1] and "(13 examples)" in evals[0]
    averaged = [p.wait_for(r"eval of the weight average at step 4: .*").group(0)
                for p in (chief, worker)]
    assert averaged[0] == averaged[1] and metrics["ema"]["num_examples"] == 13

    # One process evaluating the same checkpoint gets the same numbers.
    single_dir = str(tmp_path / "single")
    shutil.copytree(model_dir, single_dir)
    result = train(tiny_records.data_dir, single_dir, "--train_steps=4", "--mode=eval",
                   "--strategy=default", *REGULARISED)
    assert_ok(result)
    single = json.load(open(os.path.join(single_dir, "metrics.json")))
    assert single["num_examples"] == 13 and single["step"] == 4
    assert single["accuracy"] == metrics["accuracy"]
    assert single["loss"] == pytest.approx(metrics["loss"], rel=1e-5)
    assert single["ema"]["accuracy"] == metrics["ema"]["accuracy"]


@pytest.mark.parametrize(
    "workers,num_shards,shard_lengths",
    [(2, {"train": 4, "validation": 1}, False), (3, {"train": 2, "validation": 2}, True)],
    ids=["2_workers_1_validation_shard_counted", "3_workers_2_shards_each"],
)
def test_workers_outnumbering_the_shards_train_and_evaluate_every_example_once(
        tmp_path, start_trainers, workers, num_shards, shard_lengths):
    # Records converted with --num_shards=4 --validation_fraction=0.25 have
    # one validation shard; the first case's predate shard_lengths, so they
    # are counted at start-up, before MultiWorkerMirrored starts TensorFlow.
    data = write_records(str(tmp_path / "data"), num_shards=num_shards,
                         shard_lengths=shard_lengths)
    model_dir = str(tmp_path / "model")
    processes = start_trainers(data.data_dir, model_dir, "--train_steps=2",
                               "--mode=train_and_eval", f"--batch_size={2 * workers}",
                               workers=workers)
    assert finish_all(processes) == [0] * workers, "".join(p.tail() for p in processes)
    metrics = json.load(open(os.path.join(model_dir, "metrics.json")))
    assert metrics["step"] == 2 and metrics["num_examples"] == 13
    for process in processes:
        assert "(13 examples)" in process.wait_for(r"eval at step 2: .*").group(0)
        assert bool(process.all(r"counting the records of the \d+ validation shards")) == (
            not shard_lengths)
        for split, shards in num_shards.items():
            if shards < workers:
                process.wait_for(rf"the {split} split has {shards} shards in .*, fewer than the "
                                 rf"{workers} input pipelines")


MWMS_VS_DEFAULT = r"""
import sys, tempfile
from trainer import strategy
# First of all: MultiWorkerMirrored must set up collectives before TF starts.
workers = strategy.setup_runtime("multi_worker_mirrored", tpu=None, precision="float32",
                                 jit_compile="false")
import numpy as np
from tests.loss_probe import first_losses

# Three global batches of 8. Each worker's 4 examples are the same 4 (the
# single process sees them twice), so each replica's batch-norm statistics
# equal those of the whole global batch, and any difference in the losses
# would come from how losses and gradients are scaled and summed.
rng = np.random.RandomState(0)
unique_images = rng.uniform(size=(12, 32, 32, 3)).astype("float32")
unique_labels = rng.randint(0, 4, size=12).astype("int32")
twice = lambda x: np.repeat(x.reshape(3, 1, 4, *x.shape[1:]), 2, axis=1).reshape(24, *x.shape[1:])

two_workers = first_losses(workers, unique_images, unique_labels)
print("WORKERS", workers.num_replicas, *two_workers)
if workers.is_chief:
    one = strategy.setup_runtime("default", tpu=None, precision="float32", jit_compile="false")
    print("ONE", one.num_replicas, *first_losses(one, twice(unique_images), twice(unique_labels)))
strategy.wait_for_all_workers(workers.strategy)
"""


def test_two_worker_losses_match_one_process_for_the_same_global_batch(tmp_path):
    ports = free_ports(2)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", MWMS_VS_DEFAULT], cwd=REPO, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(tmp_path),
                 "TF_CONFIG": vertex_tf_config(ports, task_type, 0)})
        for task_type in ("chief", "worker")
    ]
    try:
        outputs = [p.communicate(timeout=300) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for p, (_, stderr) in zip(processes, outputs):
        assert p.returncode == 0, stderr[-3000:]
    chief_out, worker_out = outputs[0][0], outputs[1][0]
    two = np.array(chief_out.split("WORKERS")[1].split("\n")[0].split(), float)
    one = np.array(chief_out.split("ONE")[1].split(), float)
    assert two[0] == 2 and one[0] == 1  # Replicas.
    # Identical weights and global batches: the same loss at every step, so
    # the first updates were the same too.
    np.testing.assert_allclose(two[1:], one[1:], rtol=1e-3)
    assert not np.allclose(one[1], one[3])  # Training moved the loss.
    worker_losses = np.array(worker_out.split("WORKERS")[1].split(), float)
    np.testing.assert_array_equal(worker_losses, two)  # All-reduced: the same everywhere.


BATCH_NORM_SYNC = r"""
from trainer import strategy
strategy.split_cpu(2)
runtime = strategy.setup_runtime("mirrored", tpu=None, precision="float32", jit_compile="false")
import keras, tensorflow as tf
from trainer import steps

with runtime.strategy.scope():
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])

@tf.function
def update_from_different_batches():
    def replica_step():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        model(tf.fill([4, 3], tf.cast(replica, tf.float32) * 2 + 1), training=True)
    runtime.strategy.run(replica_step)

local_means = tf.function(lambda: runtime.strategy.run(
    lambda: tf.identity(model.layers[0].moving_mean.value)))
update_from_different_batches()
print("BEFORE", *[float(v[0]) for v in runtime.strategy.experimental_local_results(local_means())])
steps.make_sync_statistics(runtime, model)()
print("AFTER", *[float(v[0]) for v in runtime.strategy.experimental_local_results(local_means())])
"""


def test_replicas_agree_on_batch_norm_statistics_before_saving():
    """Each replica updates its own copy; the trainer averages them before saves and evals."""
    result = subprocess.run([sys.executable, "-c", BATCH_NORM_SYNC], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert_ok(result)
    before = [float(v) for v in result.stdout.split("BEFORE")[1].split("\n")[0].split()]
    after = [float(v) for v in result.stdout.split("AFTER")[1].split()]
    # Momentum 0.99 from 0: 0.01 * the batch mean (1 on replica 0, 3 on replica 1).
    assert before == pytest.approx([0.01, 0.03])
    assert after == pytest.approx([0.02, 0.02])
