"""What a run trains: its step counts, and the model, optimizer and step it checkpoints."""

from __future__ import annotations

import dataclasses
import math

from absl import logging
import keras
import tensorflow as tf

from input_pipeline import records
from trainer import checkpoints
from trainer import ema
from trainer import models
from trainer import optimizers
from trainer.config import TrainConfig
from trainer.strategy import Runtime

INPUT_DTYPES = {"float32": tf.float32, "mixed_float16": tf.float16, "mixed_bfloat16": tf.bfloat16}


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Step counts derived from the data set size and the flags."""

    global_batch_size: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    frozen_steps: int = 0  # the first steps, which train the head only

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
            frozen_steps=min(round(config.freeze_backbone_epochs * steps_per_epoch), total),
        )


@dataclasses.dataclass(frozen=True)
class State:
    """What a checkpoint holds, and the checkpoints that hold it."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable
    checkpoints: checkpoints.Checkpoints
    average: ema.WeightAverage | None = None  # --ema_decay

    def start_average(self) -> None:
        """Starts the weight average from the weights, unless the checkpoint restored it.

        Called after any warm start (`warm_start.start`), so that the average
        of a fine-tuning run starts from the weights it fine-tunes.
        """
        if self.average is None or ema.CHECKPOINT_KEY in self.checkpoints.restored:
            return
        if self.checkpoints.path:
            logging.info("%s holds no weight average (saved without --ema_decay): the average "
                         "starts from its weights, at step %d", self.checkpoints.path,
                         self.checkpoints.saved_step)
        self.average.start_from_weights()


def create_state(config: TrainConfig, runtime: Runtime, info: records.DatasetInfo,
                 schedule: Schedule, checkpoint_dir: str, restore_dir: str | None = None) -> State:
    """Builds model, optimizer and step under the strategy and restores the newest checkpoint.

    With --ema_decay, the weight average too; `State.start_average` starts it.

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
            backbone_multiplier=config.backbone_lr_multiplier,
        )
        # Slot variables must exist before the first distributed step, or
        # Keras would try to create them inside the tf.function.
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        # None with --ema_decay=0: no variables, so checkpoints and steps stay as they were.
        average = ema.WeightAverage(model, config.ema_decay) if config.ema_decay else None
    parts = {"model": model, "optimizer": optimizer, "step": step}
    if average is not None:
        parts[ema.CHECKPOINT_KEY] = average.trackable
    saved = checkpoints.Checkpoints(parts, checkpoint_dir, step_counter=step,
                                    max_to_keep=config.keep_checkpoints,
                                    optional=[ema.CHECKPOINT_KEY])
    saved.restore_newest(restore_dir or checkpoint_dir)
    return State(model, optimizer, step, saved, average)
