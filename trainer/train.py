"""Batches -> steps -> checkpoints: the training loop, and what each --mode runs.

The compiled steps are in `trainer/steps.py`, checkpointing in
`trainer/checkpoints.py`; this module puts them in order.

Faults, and what each costs:
- SIGTERM (preemption, maintenance, job cancel): the loop stops at the next
  step boundary on every worker, saves that step and exits with status 143
  (`trainer/preemption.py`). Rerunning the same command loses no step.
- A crash or kill -9: the rerun resumes from the last periodic checkpoint; an
  interrupted or damaged save is never picked up (`trainer/checkpoints.py`).
- A failed checkpoint write: one line naming the step and the intact
  previous checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import posixpath
from typing import Any, Callable, Iterator

from absl import logging
import keras
import tensorflow as tf

from input_pipeline import mixing, records, storage
from input_pipeline.dataset import create_dataset
from trainer import checkpoints
from trainer import edge_runtime
from trainer import export
from trainer import memory
from trainer import periodic
from trainer import preemption
from trainer import reporting
from trainer import steps
from trainer import warm_start
from trainer.config import TrainConfig
from trainer.state import INPUT_DTYPES, Schedule, State, create_state
from trainer.strategy import Runtime, setup_runtime, wait_for_all_workers
from trainer.summaries import Summaries

def distribute(runtime: Runtime, config: TrainConfig, info: records.DatasetInfo,
               split: str, training: bool, first_step: int = 0) -> tf.distribute.DistributedDataset:
    """The `create_dataset` pipeline of `split`, fed to the strategy's replicas.

    Training batches get RandAugment and mixing as the flags say; mixed
    ones hold soft targets, which the train step takes as they come.
    """
    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return create_dataset(
            config.data_dir, split,
            batch_size=context.get_per_replica_batch_size(config.batch_size),
            image_size=config.image_size, training=training, input_context=context,
            dtype=INPUT_DTYPES[runtime.precision], info=info, cache_decoded=config.cache_decoded,
            # The shuffle position is not checkpointed: a run resumed at step
            # N gets another seed, or it would replay the batches of step 0 on.
            seed=config.seed + first_step,
            randaugment=config.randaugment if training else None,
            mixing=mix_options(config) if training else None,
        )

    return runtime.strategy.distribute_datasets_from_function(dataset_fn)


def mix_options(config: TrainConfig) -> mixing.MixOptions:
    """--mixup, --cutmix and --mix_prob, for the training pipeline."""
    return mixing.MixOptions(config.mixup, config.cutmix, config.mix_prob)


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What the parts of one run share: set up once by `run`, then handed down whole."""

    config: TrainConfig
    runtime: Runtime
    info: records.DatasetInfo
    schedule: Schedule
    state: State
    summaries: Summaries

    @functools.cached_property
    def evaluator(self) -> steps.Evaluator:
        """Built at the first evaluation (never, in a run that does not evaluate), then kept.

        One for the whole run, so the eval step is traced once (see `steps.Evaluator`).
        """
        dataset = distribute(self.runtime, self.config, self.info, records.VALIDATION,
                             training=False)
        return steps.Evaluator(self.runtime, self.state.model, self.info.num_classes, dataset)


def run(config: TrainConfig) -> dict[str, Any] | None:
    """Runs `config.mode`: train, train_and_eval, eval or export.

    Raises:
      preemption.Preempted: SIGTERM while training, once the step is saved.
    """
    _check_paths(config)
    if config.mode != "eval":  # A missing converter, before hours of training.
        export.check_formats(config.export_formats)
    info = records.read_dataset_info(config.data_dir)
    info = records.with_shard_lengths(info, config.data_dir)  # Once, not at every evaluation.
    runtime = setup_runtime(config.strategy, tpu=config.tpu,
                            precision=config.mixed_precision, jit_compile=config.jit_compile)
    keras.mixed_precision.set_global_policy(runtime.precision)
    keras.utils.set_random_seed(config.seed)
    schedule = Schedule.create(config, info, runtime.num_replicas)
    _check_plan(config, info, schedule)
    memory.check_fits(config, info, runtime, training=config.mode in ("train", "train_and_eval"))
    with (checkpoints.save_dir(runtime, config.paths.checkpoints) as save_dir,
          _explained_stops(config, runtime)):
        state = create_state(config, runtime, info, schedule, save_dir,
                             restore_dir=config.paths.checkpoints)
        if config.mode in ("eval", "export") and not state.checkpoints.path:
            # Metrics or a model of random weights would look like real ones.
            raise FileNotFoundError(
                f"no checkpoint in {config.paths.checkpoints} to {config.mode}; train first "
                "(--mode=train)")
        info = warm_start.start(config, state.model, info, resumed=bool(state.checkpoints.path),
                                is_chief=runtime.is_chief)
        state.start_average()  # From the weights as they start, warm-started or restored.
        # Closing the writers flushes their last events, also on the way out
        # of a preemption or an error.
        with Summaries(config.paths.summaries, enabled=runtime.is_chief) as summaries:
            ctx = RunContext(config, runtime, info, schedule, state, summaries)
            results = None
            if config.mode == "export":
                if runtime.is_chief:
                    _export(ctx)
            elif config.mode == "eval":
                results = evaluate_and_report(ctx)
            else:
                results = train(ctx)
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


@contextlib.contextmanager
def _explained_stops(config: TrainConfig, runtime: Runtime) -> Iterator[None]:
    """A preemption waits for every worker; bad data or a lost worker gets a message to act on."""
    try:
        yield
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


def train(ctx: RunContext) -> dict[str, Any] | None:
    """The loop: per loop of steps train, log, maybe checkpoint, maybe evaluate; then export.

    Raises:
      preemption.Preempted: on SIGTERM, after saving the step it stopped at.
    """
    config, runtime, state = ctx.config, ctx.runtime, ctx.state
    step, target = int(state.step.numpy()), ctx.schedule.total_steps
    evaluating = config.mode == "train_and_eval"
    if step >= target:
        return _finish(ctx)
    evaluate_now, checkpoint_now = periodic.Every(config.eval_every), periodic.Every(config.checkpoint_every)
    profiler = reporting.Profiler(config.profile_steps, config.paths.summaries, enabled=runtime.is_chief)
    throughput = periodic.Throughput(ctx.schedule.global_batch_size)
    results = None
    # Watching until the end: a SIGTERM after the last step lets the final
    # evaluation and export finish rather than killing them.
    with preemption.SigtermWatcher() as sigterm:
        if step == 0:
            reporting.log_start(ctx.summaries, config, runtime, ctx.info, ctx.schedule,
                                mix_options(config))
        frozen_until = ctx.schedule.frozen_steps
        train_loops = _train_loops(ctx, sigterm, frozen=step < frozen_until)
        sync_statistics = steps.make_sync_statistics(runtime, state.model, state.average)
        iterator = iter(distribute(runtime, config, ctx.info, records.TRAIN, training=True,
                                   first_step=step))
        throughput.start(step)
        while step < target:
            stop = periodic.next_stop(
                step, target, config.steps_per_loop,
                intervals=(config.eval_every if evaluating else 0, config.checkpoint_every),
                milestones=(*profiler.boundaries(), frozen_until))
            step, result = run_steps(ctx, train_loops[step < frozen_until], iterator, step=step,
                                     stop=stop, throughput=throughput, profiler=profiler)
            # The same decisions on every worker: `preempted` is all-reduced.
            preempted = bool(result.preempted) and step < target
            saving = preempted or checkpoint_now.due(step) or step == target
            evaluating_now = evaluating and (evaluate_now.due(step) or step == target)
            if saving or evaluating_now:
                sync_statistics()
            if saving:
                state.checkpoints.save(step)
            if preempted:
                raise preemption.Preempted(
                    f"preempted at step {step} of {target}: saved "
                    f"{posixpath.basename(state.checkpoints.path)} in {config.paths.checkpoints}; "
                    "rerun the same command to resume from this step")
            if evaluating_now:
                results = evaluate_and_report(ctx)
                throughput.start(step)  # Evaluation time is not training throughput.
        if runtime.is_chief:
            _export(ctx)
    return results


def _train_loops(ctx: RunContext, sigterm: preemption.SigtermWatcher,
                 frozen: bool) -> dict[bool, Callable[[Iterator, tf.Tensor], steps.LoopResult]]:
    """The compiled loop of each phase still to run, keyed by whether the backbone is frozen.

    One loop per phase: which variables train is fixed when the loop is traced.
    """
    if frozen:
        logging.info("training the head only until step %d: the backbone is frozen, its batch "
                     "norm in inference mode", ctx.schedule.frozen_steps)
    return {phase: steps.make_train_loop(
        ctx.runtime, ctx.state.model, ctx.state.optimizer,
        global_batch_size=ctx.schedule.global_batch_size, num_classes=ctx.info.num_classes,
        label_smoothing=ctx.config.label_smoothing,
        stop_requested=preemption.make_stop_check(ctx.runtime.strategy, sigterm.flag),
        frozen_backbone=phase, average=ctx.state.average) for phase in {False, frozen}}


def run_steps(ctx: RunContext, train_loop: Callable[[Iterator, tf.Tensor], steps.LoopResult],
              iterator: Iterator, *, step: int, stop: int, throughput: periodic.Throughput,
              profiler: reporting.Profiler) -> tuple[int, steps.LoopResult]:
    """One loop of training steps, `step` to `stop`, and the Python work around it.

    That work (NaN stop, step counter, log line) is what `train` does per
    loop; scripts/benchmark_train.py calls this too, so it times the same.

    Returns:
      The step reached (`stop`, or fewer when preempted) and the loop's result.

    Raises:
      FloatingPointError: a NaN or infinite loss, naming its step.
    """
    profiler.maybe_start(step)
    result = train_loop(iterator, tf.constant(stop - step))
    if int(result.first_bad) >= 0:
        raise FloatingPointError(
            f"loss became {float(result.loss)} at step {step + int(result.first_bad) + 1}; "
            "not saving a checkpoint. Lower --learning_rate or try --mixed_precision=float32"
        )
    step += int(result.steps)
    ctx.state.step.assign(step)
    profiler.maybe_stop(step)
    target = ctx.schedule.total_steps
    images_per_second, seconds_left = throughput.update(step, target)
    reporting.log_train(ctx.summaries, step, target, loss=float(result.loss),
                        accuracy=float(result.accuracy),
                        learning_rate=float(ctx.state.optimizer.learning_rate),
                        images_per_second=images_per_second, seconds_left=seconds_left)
    return step, result


def _finish(ctx: RunContext) -> dict[str, Any] | None:
    """A rerun after the last step: only the final evaluation or export can be missing.

    They are missing when the previous run was stopped while doing them; any
    other rerun of a finished run changes nothing.
    """
    config, state = ctx.config, ctx.state
    step = int(state.step.numpy())
    # Every worker reads the same metrics.json, so all of them take part in
    # the evaluation or none does.
    evaluating = (config.mode == "train_and_eval"
                  and _evaluated_step(config.paths.metrics_file) != step)
    exporting = (ctx.runtime.is_chief
                 and not _export_is_newer(config.paths.export, state.checkpoints.path,
                                          config.export_formats))
    if not (evaluating or exporting):
        logging.info("already at step %d of %d: nothing to do", step, ctx.schedule.total_steps)
        return None
    results = evaluate_and_report(ctx) if evaluating else None
    if exporting:
        _export(ctx)
    return results


def evaluate_and_report(ctx: RunContext) -> dict[str, Any]:
    """Evaluates the model at its current step: log line, summaries, and the chief's metrics.json.

    With --ema_decay the weight average is evaluated too, as `results["ema"]`.
    """
    results = ctx.evaluator()
    if ctx.state.average is not None:
        # The same eval step and data: only the values in the variables change.
        with ctx.state.average.swapped_in():
            results["ema"] = ctx.evaluator()
    step = int(ctx.state.step.numpy())
    reporting.log_eval(ctx.summaries, step, results, ctx.info.class_names)
    if ctx.runtime.is_chief:
        reporting.write_metrics(ctx.config.paths.metrics_file, step, results)
    return results


def _evaluated_step(metrics_file: str) -> int | None:
    if not tf.io.gfile.exists(metrics_file):
        return None
    with tf.io.gfile.GFile(metrics_file) as f:
        return json.load(f).get("step")


def _export_is_newer(export_dir: str, checkpoint_path: str | None,
                     formats: tuple[str, ...]) -> bool:
    """Whether every format asked for is exported from the checkpoint or a later one.

    A rerun of a finished run with another --export_formats exports again.
    """
    files = [posixpath.join(export_dir, edge_runtime.MODEL_FILES[fmt])
             for fmt in (edge_runtime.SAVED_MODEL, *formats)]
    if not (checkpoint_path and all(tf.io.gfile.exists(f) for f in files)):
        return False
    checkpoint_time = tf.io.gfile.stat(checkpoint_path + ".index").mtime_nsec
    return all(tf.io.gfile.stat(f).mtime_nsec >= checkpoint_time for f in files)


def _export(ctx: RunContext) -> None:
    config = ctx.config
    export.export_saved_model(
        ctx.state.checkpoints.path, config.paths.export, model_name=config.model,
        width=config.width, image_size=config.image_size, info=ctx.info,
        averaged=ctx.state.average is not None, formats=config.export_formats,
        data_dir=config.data_dir,
    )
