"""Batches -> steps -> checkpoints: the custom training loop.

Like Orbit's single-task trainer, a `tf.function` runs `steps_per_loop`
steps per call, each a `strategy.run` of the replica step, so the same code
drives one CPU, a GPU host, several hosts or a TPU pod.

Faults, and what each costs:
- SIGTERM (preemption, maintenance, job cancel): the loop stops at the next
  step boundary on every worker, saves that step and exits with status 143
  (`trainer/preemption.py`). Rerunning the same command loses no step.
- A crash or kill -9: the rerun resumes from the last periodic checkpoint.
  The CheckpointManager writes the data files, then the index, and only then
  rewrites the `checkpoint` file naming the latest one (a rename locally, a
  single object write on gs://), so an interrupted save is never picked up.
  `restore_newest` still reads each candidate back and falls back to an
  older one if, say, a disk lost unflushed data in a power cut.
- A failed checkpoint write: one line naming the step and the intact
  previous checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import posixpath
import shutil
import tempfile
from typing import Any, Callable, NamedTuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from input_pipeline import records, storage
from input_pipeline.dataset import create_dataset
from trainer import export
from trainer import memory
from trainer import metrics
from trainer import models
from trainer import optimizers
from trainer import periodic
from trainer import preemption
from trainer import reporting
from trainer.config import TrainConfig
from trainer.strategy import Runtime, setup_runtime, wait_for_all_workers
from trainer.summaries import Summaries

INPUT_DTYPES = {"float32": tf.float32, "mixed_float16": tf.float16, "mixed_bfloat16": tf.bfloat16}


@dataclasses.dataclass
class State:
    """What a checkpoint holds, plus the manager that writes it."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable
    manager: tf.train.CheckpointManager
    # The newest checkpoint restored or saved, and its step (-1: none). The
    # same on every worker, which must all save at the same steps.
    checkpoint_path: str | None = None
    saved_step: int = -1


class LoopResult(NamedTuple):
    """What one call of the compiled training loop returns."""

    loss: tf.Tensor  # Mean over the steps run.
    accuracy: tf.Tensor
    first_bad: tf.Tensor  # Index of the first step with a NaN/inf loss, or -1.
    steps: tf.Tensor  # Steps run: fewer than asked when preempted.
    preempted: tf.Tensor  # SIGTERM on any worker: stop and save.


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Step counts derived from the data set size and the flags."""

    global_batch_size: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @classmethod
    def create(cls, config: TrainConfig, info: records.DatasetInfo, num_replicas: int) -> "Schedule":
        if config.batch_size % num_replicas:
            raise ValueError(
                f"--batch_size={config.batch_size} does not divide across {num_replicas} "
                f"replicas; use a multiple of {num_replicas}"
            )
        steps_per_epoch = max(1, info.num_examples.get(records.TRAIN, 0) // config.batch_size)
        total = config.train_steps or math.ceil(config.epochs * steps_per_epoch)
        return cls(
            global_batch_size=config.batch_size,
            steps_per_epoch=steps_per_epoch,
            total_steps=total,
            warmup_steps=min(round(config.warmup_epochs * steps_per_epoch), total // 2),
        )


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor, num_classes: int, smoothing: float) -> tf.Tensor:
    """Per-example softmax cross-entropy with label smoothing, in float32."""
    one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    targets = one_hot * (1.0 - smoothing) + smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(targets, tf.cast(logits, tf.float32))


def create_state(config: TrainConfig, runtime: Runtime, info: records.DatasetInfo,
                 schedule: Schedule, checkpoint_dir: str, restore_dir: str | None = None) -> State:
    """Builds model, optimizer and step under the strategy and restores the newest checkpoint.

    Args:
      checkpoint_dir: where this process saves.
      restore_dir: where it restores from (default: `checkpoint_dir`). Every
        worker restores the chief's checkpoints, though only the chief saves
        into that folder.
    """
    with runtime.strategy.scope():
        model = models.create_model(
            config.model, info.num_classes, width=config.width,
            zero_init_residual=config.zero_init_residual,
        )
        learning_rate = optimizers.learning_rate_schedule(
            config.learning_rate, schedule.global_batch_size,
            total_steps=schedule.total_steps, warmup_steps=schedule.warmup_steps,
        )
        optimizer = optimizers.create_optimizer(
            config.optimizer, learning_rate=learning_rate, weight_decay=config.weight_decay,
            model=model, loss_scale=runtime.precision == "mixed_float16",
        )
        # Slot variables must exist before the first distributed step, or
        # Keras would try to create them inside the tf.function.
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    _remove_interrupted_writes(checkpoint_dir)
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_dir, max_to_keep=config.keep_checkpoints, step_counter=step
    )
    # Created now, not at the first save, so that a restore matches every
    # saved value and leaves TF nothing to warn about at exit.
    _ = checkpoint.save_counter
    state = State(model, optimizer, step, manager)
    restored = restore_newest(checkpoint, restore_dir or checkpoint_dir)
    if restored:
        state.checkpoint_path, state.saved_step = restored, int(step.numpy())
        logging.info("restored %s at step %d", restored, state.saved_step)
    return state


def _remove_interrupted_writes(directory: str) -> None:
    """Removes what a save killed half-way leaves in `directory`.

    TF writes the `checkpoint` state file as `checkpoint.tmp<hex>` and then
    renames it, and writes checkpoint data under `ckpt-N_temp/` before moving
    it into place; on gs:// a rename is a copy and a delete. A kill -9 in
    between leaves these temporaries: nothing reads them, but they would sit
    in the model folder for good. Only this process saves into `directory`,
    and it has not started saving yet.
    """
    leftovers = (tf.io.gfile.glob(posixpath.join(directory, "checkpoint.tmp*"))
                 + tf.io.gfile.glob(posixpath.join(directory, "ckpt-*_temp")))
    for path in leftovers:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)
    if leftovers:
        logging.info("removed %d temporary file(s) of an interrupted checkpoint save: %s",
                     len(leftovers), ", ".join(posixpath.basename(p.rstrip("/")) for p in leftovers))


def restore_newest(checkpoint: tf.train.Checkpoint, directory: str) -> str | None:
    """Restores the newest checkpoint in `directory` that reads back whole.

    Every `ckpt-N.index` is a candidate, newest first, whatever the
    `checkpoint` file says: that file may itself be lost, or lag one save
    behind a kill. A damaged candidate (a truncated file fails its CRC, a
    missing one fails to open) is skipped with a warning.

    Raises:
      RuntimeError: checkpoints exist but none restores (e.g. they are of
        another --model); starting over silently would discard them.
    """
    candidates = _checkpoints_newest_first(directory)
    for path in candidates:
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
            return path
        except Exception as e:  # pylint: disable=broad-except
            # Damage shows as OpErrors, IndexError ("read less bytes than
            # requested") or AssertionError (objects missing), and more.
            logging.warning("checkpoint %s does not restore (%s); trying an older one",
                            path, storage.first_line(e))
    if candidates:
        raise RuntimeError(
            f"none of the {len(candidates)} checkpoints in {directory} restores into this model "
            f"(newest: {candidates[0]}); check --model and --width, or use a new --model_dir"
        )
    return None


def _checkpoints_newest_first(directory: str) -> list[str]:
    numbered = []
    for index_file in tf.io.gfile.glob(posixpath.join(directory, "ckpt-*.index")):
        prefix = index_file[:-len(".index")]
        number = prefix.rpartition("-")[2]
        if number.isdigit():
            numbered.append((int(number), prefix))
    return [prefix for _, prefix in sorted(numbered, reverse=True)]


def save_checkpoint(state: State, step: int) -> None:
    """Saves `step` once; a second call for the same step does nothing.

    Raises:
      RuntimeError: the write failed (disk full, bucket not writable). The
        previous checkpoint stays the latest: the manager names a new one
        only after its files are complete.
    """
    if step == state.saved_step:
        return
    try:
        path = state.manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as e:
        raise RuntimeError(
            f"could not write the checkpoint of step {step} to {state.manager.directory} "
            f"({storage.first_line(e)}); the latest good one, {state.checkpoint_path or 'none'}, is "
            "intact: fix the disk or bucket and rerun to resume from it"
        ) from e
    state.checkpoint_path, state.saved_step = path, step


def make_train_loop(runtime: Runtime, state: State, *, global_batch_size: int,
                    num_classes: int, label_smoothing: float,
                    stop_requested: Callable[[], tf.Tensor] = lambda: tf.constant(False)):
    """Returns `train_loop(iterator, num_steps) -> LoopResult`.

    `stop_requested` runs after every step, inside the compiled loop (see
    `preemption.make_stop_check`); when it turns true the loop returns early.
    """
    strategy, model, optimizer = runtime.strategy, state.model, state.optimizer
    scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = cross_entropy(labels, logits, num_classes, label_smoothing)
            # Divide by the GLOBAL batch: the optimizer sums gradients over
            # replicas, so the sum is the gradient of the global-batch mean.
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            scaled_loss = optimizer.scale_loss(loss) if scales_loss else loss
        grads = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.float32))
        return loss, correct

    if runtime.jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_loop(iterator, num_steps):
        loss_sum, correct_sum = tf.constant(0.0), tf.constant(0.0)
        first_bad = tf.constant(-1, tf.int32)
        steps, preempted = tf.constant(0, tf.int32), tf.constant(False)
        while steps < num_steps and not preempted:
            loss, correct = strategy.run(replica_step, args=next(iterator))
            loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
            first_bad = tf.where((first_bad < 0) & ~tf.math.is_finite(loss), steps, first_bad)
            loss_sum += loss
            correct_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
            steps += 1
            # After every step, never before one: each step then runs the same
            # collectives on every worker, however their loops are split.
            preempted = stop_requested()
        ran = tf.cast(tf.maximum(steps, 1), tf.float32)
        return LoopResult(loss_sum / ran, correct_sum / (ran * global_batch_size), first_bad,
                          steps, preempted)

    return train_loop


def make_sync_statistics(runtime: Runtime, model: keras.Model) -> Callable[[], None]:
    """Returns `sync()`, which sets every replica's batch-norm statistics to their mean.

    Keras makes the moving mean and variance mirrored variables that each
    replica updates from its own batches only, so the replicas drift apart:
    a checkpoint would keep the chief's first replica's statistics, and each
    replica would evaluate with its own. Averaging them before every save
    and evaluation (one batched all-reduce) makes both use all the data.
    """
    strategy, statistics = runtime.strategy, model.non_trainable_variables
    if runtime.num_replicas == 1 or not statistics:
        return lambda: None

    def average():
        means = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in statistics])
        for variable, mean in zip(statistics, means):
            variable.assign(mean)

    return tf.function(lambda: strategy.run(average))


def make_eval_step(runtime: Runtime, model: keras.Model, num_classes: int):
    """Returns `eval_step(images, labels) -> (loss sum, confusion matrix)`; labels < 0 are padding."""
    strategy = runtime.strategy

    def replica_step(images, labels):
        logits = model(images, training=False)
        valid = labels >= 0
        safe_labels = tf.where(valid, labels, 0)
        per_example = cross_entropy(safe_labels, logits, num_classes, 0.0)
        loss_sum = tf.reduce_sum(tf.where(valid, per_example, 0.0))
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        # Weights instead of boolean_mask keep shapes static for XLA/TPU.
        confusion = tf.math.confusion_matrix(
            safe_labels, predictions, num_classes, weights=tf.cast(valid, tf.int32), dtype=tf.int32
        )
        return loss_sum, confusion

    @tf.function
    def eval_step(images, labels):
        loss_sum, confusion = strategy.run(replica_step, args=(images, labels))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, confusion, axis=None))

    return eval_step


def evaluate(eval_step, dataset, num_classes: int) -> dict[str, Any]:
    """One pass over the validation split; every example counted exactly once."""
    loss_sum, confusion = 0.0, np.zeros((num_classes, num_classes), np.int64)
    for images, labels in dataset:
        batch_loss, batch_confusion = eval_step(images, labels)
        loss_sum += float(batch_loss)
        confusion += batch_confusion.numpy()
    results = metrics.from_confusion(confusion)
    results["loss"] = loss_sum / max(results["num_examples"], 1)
    results["confusion"] = confusion
    return results


def _distribute(runtime: Runtime, config: TrainConfig, info: records.DatasetInfo,
                split: str, training: bool, first_step: int = 0):
    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return create_dataset(
            config.data_dir, split,
            batch_size=context.get_per_replica_batch_size(config.batch_size),
            image_size=config.image_size, training=training, input_context=context,
            dtype=INPUT_DTYPES[runtime.precision], info=info, cache_decoded=config.cache_decoded,
            # The shuffle position is not checkpointed: a run resumed at step
            # N gets another seed, or it would replay the batches of step 0 on.
            seed=config.seed + first_step,
        )

    return runtime.strategy.distribute_datasets_from_function(dataset_fn)


def _checkpoint_dir(runtime: Runtime, paths_dir: str) -> str:
    # Every MultiWorkerMirrored worker must take part in saving, but only the
    # chief's copy is kept; the others write to a local scratch folder that
    # is removed afterwards. Summaries, traces, metrics.json and exports need
    # no scratch: only the chief writes them at all.
    if runtime.is_chief:
        return paths_dir
    # Named after the model dir and the task, so that the rerun of a killed
    # worker removes what the killed one left.
    resolver = runtime.strategy.cluster_resolver
    run_id = hashlib.sha256(paths_dir.encode()).hexdigest()[:12]
    scratch = os.path.join(tempfile.gettempdir(), f"seedlings-worker-ckpt-{run_id}-"
                                                  f"{resolver.task_type}-{resolver.task_id}")
    shutil.rmtree(scratch, ignore_errors=True)
    return scratch


def run(config: TrainConfig) -> dict[str, Any] | None:
    """Runs `config.mode`: train, train_and_eval, eval or export.

    Raises:
      preemption.Preempted: SIGTERM while training, once the step is saved.
    """
    _check_paths(config)
    info = records.read_dataset_info(config.data_dir)
    info = records.with_shard_lengths(info, config.data_dir)  # Once, not at every evaluation.
    runtime = setup_runtime(config.strategy, tpu=config.tpu,
                            precision=config.mixed_precision, jit_compile=config.jit_compile)
    keras.mixed_precision.set_global_policy(runtime.precision)
    keras.utils.set_random_seed(config.seed)
    schedule = Schedule.create(config, info, runtime.num_replicas)
    _check_plan(config, info, schedule)
    memory.check_fits(config, info, runtime, training=config.mode in ("train", "train_and_eval"))
    checkpoint_dir = _checkpoint_dir(runtime, config.paths.checkpoints)
    try:
        state = create_state(config, runtime, info, schedule, checkpoint_dir,
                             restore_dir=config.paths.checkpoints)
        if config.mode in ("eval", "export") and not state.checkpoint_path:
            # Metrics or a model of random weights would look like real ones.
            raise FileNotFoundError(
                f"no checkpoint in {config.paths.checkpoints} to {config.mode}; train first "
                "(--mode=train)")
        results = None
        # Closing the writers flushes their last events, also on the way out
        # of a preemption or an error.
        with Summaries(config.paths.summaries, enabled=runtime.is_chief) as summaries:
            if config.mode == "export":
                if runtime.is_chief:
                    _export(config, info, state)
            elif config.mode == "eval":
                results = _evaluate_and_report(config, runtime, info, state, summaries)
            else:
                results = train(config, runtime, info, schedule, state, summaries)
    except preemption.Preempted as stopped:
        wait_for_all_workers(runtime.strategy)  # All stopped at the same step and saved.
        logging.warning(stopped.message)
        raise
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        # A corrupt record or image: tf.data does not say which file, so look.
        corrupt = [bad for split in records.SPLITS
                   for bad in records.find_corrupt_shards(config.data_dir, split)]
        if not corrupt:
            raise
        raise ValueError(
            f"corrupt data in {'; '.join(corrupt)}: reconvert the images with "
            "`python -m input_pipeline.make_tfrecords --overwrite` or copy the shard again"
        ) from e
    except (tf.errors.UnavailableError, tf.errors.AbortedError) as e:
        # What the survivors get within seconds when a worker (or a TPU host)
        # dies mid-collective, e.g. killed or its VM lost without notice.
        raise RuntimeError(
            f"lost contact with another worker or device ({type(e).__name__}); restart every "
            f"worker with the same command to resume from the last checkpoint in "
            f"{config.paths.checkpoints}"
        ) from e
    finally:
        if checkpoint_dir != config.paths.checkpoints:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    wait_for_all_workers(runtime.strategy)
    return results


def _check_paths(config: TrainConfig) -> None:
    """Every folder the run reads or writes, before any work: a late failure costs hours."""
    storage.check_input_dir(config.data_dir, "--data_dir")
    inside = config.paths.checkpoints.rstrip("/") + "/"
    for folder, origin in config.paths.folders().items():
        if folder.startswith(inside):  # made later, in a folder checked already
            storage.check_not_a_file(folder, origin)
        else:
            storage.check_output_dir(folder, origin)


def _check_plan(config: TrainConfig, info: records.DatasetInfo, schedule: Schedule) -> None:
    """What the flags ask of this data set, checked before the first step."""
    if config.mode in ("train", "train_and_eval") and not info.num_examples.get(records.TRAIN):
        raise ValueError(f"{config.data_dir} has no training examples: convert the images again")
    if config.mode in ("train_and_eval", "eval") and not info.num_examples.get(records.VALIDATION):
        raise ValueError(
            f"the validation split of {config.data_dir} is empty, so --mode={config.mode} has "
            "nothing to evaluate: use --mode=train, or reconvert with a larger "
            "--validation_fraction")
    if config.profile_steps and config.profile_steps[1] > schedule.total_steps:
        raise ValueError(
            f"--profile_steps={config.profile_steps[0]},{config.profile_steps[1]} ends after the "
            f"last step ({schedule.total_steps}): profile steps within the run")


def train(config: TrainConfig, runtime: Runtime, info: records.DatasetInfo,
          schedule: Schedule, state: State, summaries: Summaries) -> dict[str, Any] | None:
    """The loop: per loop of steps train, log, maybe checkpoint, maybe evaluate; then export.

    Raises:
      preemption.Preempted: on SIGTERM, after saving the step it stopped at.
    """
    step, target = int(state.step.numpy()), schedule.total_steps
    evaluating = config.mode == "train_and_eval"
    if step >= target:
        return _finish(config, runtime, info, state, summaries, target)
    evaluate_now, checkpoint_now = periodic.Every(config.eval_every), periodic.Every(config.checkpoint_every)
    profiler = reporting.Profiler(config.profile_steps, config.paths.summaries, enabled=runtime.is_chief)
    throughput = periodic.Throughput(schedule.global_batch_size)
    results = None
    # Watching until the end: a SIGTERM after the last step lets the final
    # evaluation and export finish rather than killing them.
    with preemption.SigtermWatcher() as sigterm:
        if step == 0:
            reporting.log_start(summaries, config, runtime, info, schedule)
        train_loop = make_train_loop(
            runtime, state, global_batch_size=schedule.global_batch_size,
            num_classes=info.num_classes, label_smoothing=config.label_smoothing,
            stop_requested=preemption.make_stop_check(runtime.strategy, sigterm.flag))
        sync_statistics = make_sync_statistics(runtime, state.model)
        iterator = iter(_distribute(runtime, config, info, records.TRAIN, training=True,
                                    first_step=step))
        throughput.start(step)
        while step < target:
            stop = periodic.next_stop(
                step, target, config.steps_per_loop,
                intervals=(config.eval_every if evaluating else 0, config.checkpoint_every),
                milestones=profiler.boundaries())
            profiler.maybe_start(step)
            result = train_loop(iterator, tf.constant(stop - step))
            if int(result.first_bad) >= 0:
                raise FloatingPointError(
                    f"loss became {float(result.loss)} at step {step + int(result.first_bad) + 1}; "
                    "not saving a checkpoint. Lower --learning_rate or try --mixed_precision=float32"
                )
            step += int(result.steps)
            state.step.assign(step)
            profiler.maybe_stop(step)
            images_per_second, seconds_left = throughput.update(step, target)
            reporting.log_train(summaries, step, target, loss=float(result.loss),
                                accuracy=float(result.accuracy),
                                learning_rate=float(state.optimizer.learning_rate),
                                images_per_second=images_per_second, seconds_left=seconds_left)
            # The same decisions on every worker: `preempted` is all-reduced.
            preempted = bool(result.preempted) and step < target
            saving = preempted or checkpoint_now.due(step) or step == target
            evaluating_now = evaluating and (evaluate_now.due(step) or step == target)
            if saving or evaluating_now:
                sync_statistics()
            if saving:
                save_checkpoint(state, step)
            if preempted:
                raise preemption.Preempted(
                    f"preempted at step {step} of {target}: saved "
                    f"{posixpath.basename(state.checkpoint_path)} in {config.paths.checkpoints}; "
                    "rerun the same command to resume from this step")
            if evaluating_now:
                results = _evaluate_and_report(config, runtime, info, state, summaries)
                throughput.start(step)  # Evaluation time is not training throughput.
        if runtime.is_chief:
            _export(config, info, state)
    return results


def _finish(config: TrainConfig, runtime: Runtime, info: records.DatasetInfo, state: State,
            summaries: Summaries, target: int) -> dict[str, Any] | None:
    """A rerun after the last step: only the final evaluation or export can be missing.

    They are missing when the previous run was stopped while doing them; any
    other rerun of a finished run changes nothing.
    """
    step = int(state.step.numpy())
    # Every worker reads the same metrics.json, so all of them take part in
    # the evaluation or none does.
    evaluating = (config.mode == "train_and_eval"
                  and _evaluated_step(config.paths.metrics_file) != step)
    exporting = runtime.is_chief and not _export_is_newer(config.paths.export, state.checkpoint_path)
    if not (evaluating or exporting):
        logging.info("already at step %d of %d: nothing to do", step, target)
        return None
    results = _evaluate_and_report(config, runtime, info, state, summaries) if evaluating else None
    if exporting:
        _export(config, info, state)
    return results


def _evaluate_and_report(config, runtime, info, state, summaries) -> dict[str, Any]:
    eval_step = make_eval_step(runtime, state.model, info.num_classes)
    dataset = _distribute(runtime, config, info, records.VALIDATION, training=False)
    results = evaluate(eval_step, dataset, info.num_classes)
    step = int(state.step.numpy())
    reporting.log_eval(summaries, step, results, info.class_names)
    if runtime.is_chief:
        reporting.write_metrics(config.paths.metrics_file, step, results)
    return results


def _evaluated_step(metrics_file: str) -> int | None:
    if not tf.io.gfile.exists(metrics_file):
        return None
    with tf.io.gfile.GFile(metrics_file) as f:
        return json.load(f).get("step")


def _export_is_newer(export_dir: str, checkpoint_path: str | None) -> bool:
    saved_model = posixpath.join(export_dir, "saved_model.pb")
    if not (checkpoint_path and tf.io.gfile.exists(saved_model)):
        return False
    checkpoint_time = tf.io.gfile.stat(checkpoint_path + ".index").mtime_nsec
    return tf.io.gfile.stat(saved_model).mtime_nsec >= checkpoint_time


def _export(config: TrainConfig, info: records.DatasetInfo, state: State) -> None:
    export.export_saved_model(
        state.checkpoint_path, config.paths.export, model_name=config.model,
        width=config.width, image_size=config.image_size, info=info,
    )
