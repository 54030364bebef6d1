"""The weight average of --ema_decay: its update rule, under each strategy, in checkpoints,
evaluations and the export.

Every value is checked against a numpy reference of the rule, from the
sequence of raw weights (a checkpoint per step in the end-to-end runs), so a
missed warm-up, an update before the optimizer's, an average restarted on
resume or started from random weights, or replicas out of sync would all
show. The MirroredStrategy check runs this module as a script in a
subprocess (`python -m tests.test_ema`), because the two logical CPU devices
must be configured before TensorFlow initialises, which it has already done
in the pytest process; MultiWorkerMirrored runs it on two processes.
"""

from __future__ import annotations

import json
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.events import read_events
from tests.module_script import run_module_script
from tests.trainer_fixtures import (
    TrainerProcess, assert_ok, free_ports, train, vertex_tf_config)
from trainer import checkpoints, ema, models, steps
from trainer.state import State
from trainer.strategy import Runtime

DECAY = 0.5  # Warm-up decays 0.1, 0.18, ... reach it at update 8.


def reference(weights: list[np.ndarray], decay: float = DECAY) -> list[np.ndarray]:
    """The average after each update, from the weights before the first and after each."""
    averages = [np.asarray(weights[0], np.float64)]
    for t, weight in enumerate(weights[1:]):
        d = min(decay, (1 + t) / (10 + t))
        averages.append(d * averages[-1] + (1 - d) * np.asarray(weight, np.float64))
    return averages


def tiny_model() -> keras.Model:
    """A dense layer, batch norm (whose statistics the replicas update apart) and a head."""
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, use_bias=False, name="dense"),
                             keras.layers.BatchNormalization(name="norm"),
                             keras.layers.Dense(3, name="head")])


@pytest.mark.parametrize("mode", ["eager", "tf.function", "xla"])
def test_update_follows_the_warmed_up_rule(mode):
    keras.utils.set_random_seed(0)
    model = tiny_model()
    average = ema.WeightAverage(model, DECAY)
    update = {"eager": average.update, "tf.function": tf.function(average.update),
              "xla": tf.function(average.update, jit_compile=True)}[mode]
    rng = np.random.default_rng(0)
    history = [[v.numpy() for v in model.variables]]
    for _ in range(12):
        for variable in model.variables:  # Any new weights, as an optimizer step would leave.
            variable.assign(rng.normal(size=variable.shape).astype(np.float32))
        update()
        history.append([v.numpy() for v in model.variables])
    averages = [a.numpy() for a in average.averages_of(model.variables)]
    for i, variable in enumerate(model.variables):
        expected = reference([weights[i] for weights in history])[-1]
        np.testing.assert_allclose(averages[i], expected, rtol=1e-5, atol=1e-6,
                                   err_msg=variable.path)
    assert int(average.num_updates.numpy()) == 12


def train_and_record(runtime: Runtime, num_steps: int = 12) -> dict:
    """Trains the tiny model a step at a time with an average; every replica's values.

    Each replica gets its own batch, so batch-norm statistics (and their
    averages) differ across replicas until synced.

    Returns:
      `weights` and `averages`, [step][variable][replica] (step 0: before
      training); then after syncing, `synced` averages and `synced_weights`;
      the model's values inside `swapped_in` and after it.
    """
    strategy = runtime.strategy
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = tiny_model()
        optimizer = keras.optimizers.SGD(0.5)
        optimizer.build(model.trainable_variables)
        average = ema.WeightAverage(model, DECAY)
    loop = steps.make_train_loop(runtime, model, optimizer, global_batch_size=8, num_classes=3,
                                 label_smoothing=0.1, average=average)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(64, 5)).astype(np.float32) * np.arange(1, 65)[:, None] / 16
    labels = rng.integers(0, 3, size=64).astype(np.int32)
    data = strategy.distribute_datasets_from_function(
        lambda ctx: tf.data.Dataset.from_tensor_slices((features, labels))
        .shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        .batch(ctx.get_per_replica_batch_size(8), drop_remainder=True).repeat())
    local = lambda variables: [[np.asarray(c).tolist() for c in strategy.experimental_local_results(
        v.value if isinstance(v, keras.Variable) else v)] for v in variables]
    averages = average.averages_of(model.variables)
    record = {"paths": [v.path for v in model.variables],
              "trainable": [v.trainable for v in model.variables],
              "weights": [local(model.variables)], "averages": [local(averages)]}
    iterator = iter(data)
    for _ in range(num_steps):
        loop(iterator, tf.constant(1))
        record["weights"].append(local(model.variables))
        record["averages"].append(local(averages))
    steps.make_sync_statistics(runtime, model, average)()
    record["synced"], record["synced_weights"] = local(averages), local(model.variables)
    with average.swapped_in():
        record["swapped"] = local(model.variables)
    record["after_swap"] = local(model.variables)
    record["dtypes"] = sorted({a.dtype.name for a in averages})
    return record


def check_record(record: dict, replicas: int) -> None:
    """Every replica's averages follow the rule from its weights; syncing and swapping are exact."""
    close = lambda actual, expected, what: np.testing.assert_allclose(
        np.asarray(actual, np.float64), expected, rtol=1e-5, atol=1e-6, err_msg=what)
    assert record["dtypes"] == ["float32"]
    averages, apart = record["averages"], []
    for i, (path, trainable) in enumerate(zip(record["paths"], record["trainable"])):
        assert len(record["weights"][0][i]) == replicas
        per_replica = [reference([step[i][r] for step in record["weights"]])
                       for r in range(replicas)]
        for t, step in enumerate(averages):
            for r in range(replicas):
                close(step[i][r], per_replica[r][t], f"{path} on replica {r} after {t} updates")
        last = [np.asarray(a, np.float64) for a in averages[-1][i]]
        if trainable:
            # The optimizer leaves every replica the same weights.
            for r in range(1, replicas):
                np.testing.assert_array_equal(record["weights"][-1][i][r],
                                              record["weights"][-1][i][0], err_msg=path)
            expected = last[0]
        else:
            apart.append(replicas > 1 and not np.allclose(last[0], last[1]))
            expected = np.mean(last, axis=0)  # The mean of the replicas' averages.
        for r in range(replicas):
            close(record["synced"][i][r], expected, f"{path} synced, replica {r}")
            close(record["swapped"][i][r], record["synced"][i][r], f"{path} swapped in")
            close(record["after_swap"][i][r], record["synced_weights"][i][r], f"{path} put back")
        assert not np.allclose(record["synced"][i][0], record["synced_weights"][i][0]), path
    if replicas > 1:
        assert all(apart), "the replicas' statistics never differed: the sync went untested"


@pytest.mark.parametrize("precision,jit_compile", [
    ("float32", False), ("float32", True), ("mixed_bfloat16", False)])
def test_compiled_train_loop_updates_after_every_optimizer_step(precision, jit_compile):
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        record = train_and_record(Runtime(tf.distribute.get_strategy(), "cpu", precision,
                                          jit_compile))
    finally:
        keras.mixed_precision.set_global_policy(policy)
    check_record(record, replicas=1)


def test_mirrored_replicas_update_their_own_copies_and_sync_exactly():
    check_record(run_module_script("tests.test_ema"), replicas=2)


def test_two_workers_update_their_own_copies_and_sync_exactly(tmp_path):
    ports = free_ports(2)
    workers = [TrainerProcess(["multi_worker_mirrored"], {
        **os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(tmp_path),
        "TF_CONFIG": vertex_tf_config(ports, task_type, 0)}, name=task_type,
        module="tests.test_ema") for task_type in ("chief", "worker")]
    codes = [worker.finish() for worker in workers]
    assert codes == [0, 0], "\n".join(worker.tail() for worker in workers)
    chief, worker = (json.loads([line for line in w.lines if line.startswith("{")][-1])
                     for w in workers)
    # One replica per worker: put them side by side, as replicas of one run.
    merged = {key: chief[key] for key in ("paths", "trainable", "dtypes")}
    for key in ("weights", "averages"):
        merged[key] = [[c + w for c, w in zip(cs, ws)] for cs, ws in zip(chief[key], worker[key])]
    for key in ("synced", "synced_weights", "swapped", "after_swap"):
        merged[key] = [c + w for c, w in zip(chief[key], worker[key])]
    check_record(merged, replicas=2)


def test_a_checkpoint_without_average_restores_and_the_average_starts_from_it(tmp_path):
    keras.utils.set_random_seed(0)
    model, step = tiny_model(), tf.Variable(0, dtype=tf.int64)
    old = checkpoints.Checkpoints({"model": model, "step": step}, str(tmp_path), step_counter=step,
                                  max_to_keep=2)
    step.assign(7)
    old.save(7)
    saved = [v.numpy() for v in model.variables]
    for variable in model.variables:
        variable.assign(variable + 1.0)
    average = ema.WeightAverage(model, DECAY)  # Of the weights as they are now, not as saved.
    parts = {"model": model, "step": step, ema.CHECKPOINT_KEY: average.trackable}
    new = checkpoints.Checkpoints(parts, str(tmp_path), step_counter=step, max_to_keep=2,
                                  optional=[ema.CHECKPOINT_KEY])
    assert new.restore_newest(str(tmp_path)).endswith("ckpt-7")
    assert new.restored == {"model", "step"}
    State(model, None, step, new, average).start_average()
    for value, avg in zip(saved, average.averages_of(model.variables)):
        np.testing.assert_array_equal(avg.numpy(), value)
    # Saved with the average, it comes back with it, and a run with
    # --ema_decay=0 restores the rest and leaves the average unread.
    average.update()
    step.assign(8)
    new.save(8)
    keys = [key for key, _ in tf.train.list_variables(str(tmp_path / "ckpt-8"))]
    assert "ema/num_updates/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert not [key for key, _ in tf.train.list_variables(str(tmp_path / "ckpt-7"))
                if key.startswith("ema/")]
    off = checkpoints.Checkpoints({"model": model, "step": step}, str(tmp_path / "other"),
                                  step_counter=step, max_to_keep=2)
    assert off.restore_newest(str(tmp_path)).endswith("ckpt-8") and int(step.numpy()) == 8


def saved(prefix: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int | None]:
    """(weights, averages, number of updates) in a checkpoint of the tiny ResNet, by path."""
    model = models.create_model("resnet18", 4, width=8)
    tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    reader = tf.train.load_checkpoint(prefix)
    start, end = "ema/averages/", "/.ATTRIBUTES/VARIABLE_VALUE"
    averages = {key[len(start):-len(end)].replace(".S", "/"): reader.get_tensor(key)
                for key in reader.get_variable_to_shape_map() if key.startswith(start)}
    updates = "ema/num_updates" + end
    return ({v.path: v.numpy() for v in model.variables}, averages,
            int(reader.get_tensor(updates)) if reader.has_tensor(updates) else None)


def test_average_from_the_warm_start_through_a_resume_to_evaluation_and_export(
        tiny_records, tmp_path):
    """Two runs of `python -m trainer.main`, a checkpoint per step: one test, so that
    parallel test workers do not each run them."""
    keras.utils.set_random_seed(7)  # Not the run's seed: its own random start would differ.
    init = tf.train.Checkpoint(model=models.create_model("resnet18", 4, width=8)).save(
        str(tmp_path / "init" / "ckpt"))
    run = str(tmp_path / "run")
    per_step = [f"--ema_decay={DECAY}", "--steps_per_loop=1", "--checkpoint_every=1",
                "--keep_checkpoints=10"]
    assert_ok(train(tiny_records.data_dir, run, f"--init_checkpoint={init}", "--train_steps=3",
                    "--mode=train", *per_step))
    resumed = train(tiny_records.data_dir, run, "--train_steps=4", "--mode=train_and_eval",
                    *per_step)
    assert_ok(resumed)
    assert "restored" in resumed.stderr and "holds no weight average" not in resumed.stderr

    # Step by step from the warm start, across the restart: an average
    # started from the random weights, or restarted (at 0.1 again) on resume,
    # would not match.
    previous, _, _ = saved(init)
    for step in (1, 2, 3, 4):
        weights, averages, updates = saved(f"{run}/ckpt-{step}")
        assert updates == step and averages.keys() == weights.keys()
        d = min(DECAY, step / (9 + step))  # Update number `step - 1`.
        for path, average in averages.items():
            np.testing.assert_allclose(average, d * previous[path] + (1 - d) * weights[path],
                                       rtol=1e-5, atol=1e-6, err_msg=f"{path} at step {step}")
        previous = averages

    # Evaluated beside the raw weights, in TensorBoard and metrics.json.
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert metrics["step"] == 4
    assert set(metrics["ema"]) == {"accuracy", "macro_f1", "loss", "num_examples"}
    assert metrics["ema"]["num_examples"] == metrics["num_examples"] == 13
    assert metrics["ema"]["loss"] != metrics["loss"]  # Other weights, another loss.
    events = read_events(os.path.join(run, "eval"))
    for tag in ("loss", "accuracy", "macro_f1", "confusion_matrix", "confusion_matrix_counts",
                *(f"recall/{name}" for name in tiny_records.class_names)):
        assert [step for step, _ in events[f"ema/{tag}"]] == [4], tag
        assert [step for step, _ in events[tag]] == [4], tag
    assert events["ema/loss"][0][1] == pytest.approx(metrics["ema"]["loss"])
    assert events["loss"][0][1] == pytest.approx(metrics["loss"])
    assert "eval of the weight average at step 4: accuracy" in resumed.stderr

    # The export serves the average of the last checkpoint.
    loaded = tf.saved_model.load(os.path.join(run, "export"))
    exported = {v.name.removesuffix(":0"): v.numpy()
                for v in loaded.signatures["serving_default"].variables}
    assert exported.keys() == averages.keys()
    for path, average in averages.items():
        np.testing.assert_array_equal(exported[path], average, err_msg=path)
    assert not np.allclose(exported["logits/kernel"], weights["logits/kernel"])


if __name__ == "__main__":
    from trainer import strategy

    if sys.argv[1:] == ["multi_worker_mirrored"]:  # Collectives before TF starts.
        runtime = strategy.setup_runtime("multi_worker_mirrored", tpu=None, precision="float32",
                                         jit_compile="false")
    else:
        strategy.split_cpu(2)
        runtime = strategy.setup_runtime("mirrored", tpu=None, precision="float32",
                                         jit_compile="false")
    result = train_and_record(runtime)
    strategy.wait_for_all_workers(runtime.strategy)
    print(json.dumps(result))
