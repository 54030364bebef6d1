"""What a run tells its user: log lines, TensorBoard summaries, metrics.json, traces."""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Any, Mapping, Sequence

from absl import logging
import tensorflow as tf

from input_pipeline import mixing, records
from input_pipeline.dataset import create_dataset
from trainer import periodic
from trainer.summaries import Summaries


def log_start(summaries: Summaries, config, runtime, info: records.DatasetInfo, schedule,
              mix: mixing.MixOptions) -> None:
    """Once per run: the plan in the log, hparams and a few augmented inputs in TensorBoard."""
    logging.info(
        "training %s on %d classes, %d train / %d validation images; global batch %d, "
        "%d steps (%d per epoch, %d warm-up)",
        config.model, info.num_classes, info.num_examples[records.TRAIN],
        info.num_examples[records.VALIDATION], schedule.global_batch_size,
        schedule.total_steps, schedule.steps_per_epoch, schedule.warmup_steps,
    )
    if mix.enabled:
        # A mixed image has no single label: its accuracy is not comparable
        # with that of a run without mixing, nor with the evaluation's.
        logging.info("mixing %g of training batches (mixup alpha %g, CutMix alpha %g): training "
                     "accuracy counts a prediction as correct when it is each mixed image's "
                     "dominant label", mix.mix_prob, mix.mixup_alpha, mix.cutmix_alpha)
    summaries.hparams({
        "model": config.model, "width": config.width, "image_size": config.image_size,
        "batch_size": config.batch_size, "optimizer": config.optimizer,
        "learning_rate": config.learning_rate, "weight_decay": config.weight_decay,
        "label_smoothing": config.label_smoothing, "precision": runtime.precision,
        "strategy": type(runtime.strategy).__name__, "replicas": runtime.num_replicas,
        "train_steps": schedule.total_steps, "cache_decoded": config.cache_decoded,
        "randaugment": ",".join(f"{v:g}" for v in config.randaugment or ()) or "off",
        "mixup": mix.mixup_alpha, "cutmix": mix.cutmix_alpha, "mix_prob": mix.mix_prob,
        "ema_decay": config.ema_decay,
    })
    if runtime.is_chief:
        # Augmented and mixed as training batches are, so that TensorBoard
        # shows what the model trains on.
        sample = create_dataset(config.data_dir, records.TRAIN, batch_size=8,
                                image_size=config.image_size, training=True, info=info,
                                randaugment=config.randaugment, mixing=mix)
        images, _ = next(iter(sample))
        summaries.input_images(0, images, info.mean, info.std)


def log_train(summaries: Summaries, step: int, target: int, *, loss: float, accuracy: float,
              learning_rate: float, images_per_second: float, seconds_left: float) -> None:
    logging.info(
        "step %d/%d  loss %.4f  accuracy %.4f  lr %.5f  %.1f images/s  ETA %s",
        step, target, loss, accuracy, learning_rate, images_per_second,
        periodic.format_duration(seconds_left),
    )
    summaries.train_scalars(step, {
        "loss": loss, "accuracy": accuracy, "learning_rate": learning_rate,
        "images_per_second": images_per_second,
    })


def log_eval(summaries: Summaries, step: int, results: Mapping[str, Any],
             class_names: Sequence[str]) -> None:
    """Log line and summaries of an evaluation, and of the weight average's (`results["ema"]`)."""
    evaluations = [(results, "", "")]
    if "ema" in results:
        evaluations.append((results["ema"], " of the weight average", "ema/"))
    for evaluated, label, prefix in evaluations:
        logging.info(
            "eval%s at step %d: accuracy %.4f  macro F1 %.4f  loss %.4f  (%d examples)",
            label, step, evaluated["accuracy"], evaluated["macro_f1"], evaluated["loss"],
            evaluated["num_examples"],
        )
        summaries.eval_results(step, evaluated, class_names, prefix=prefix)


def write_metrics(path: str, step: int, results: Mapping[str, Any]) -> None:
    """`metrics.json`: the last evaluation, for scripts and hyperparameter tuners.

    With --ema_decay, the weight average's evaluation is under "ema", with the same keys.
    """
    payload = {"step": step, **_headline(results)}
    if "ema" in results:
        payload["ema"] = _headline(results["ema"])
    records.write_json(path, payload)


def _headline(results: Mapping[str, Any]) -> dict[str, Any]:
    return {key: results[key] for key in ("accuracy", "macro_f1", "loss", "num_examples")}


@dataclasses.dataclass
class Profiler:
    """Records a TensorBoard profiler trace over `steps = (first, last)`."""

    steps: tuple[int, int] | None
    summary_dir: str
    enabled: bool
    _running: bool = False

    def boundaries(self) -> tuple[int, ...]:
        # Loops stop at the first step before the trace and at its last step,
        # so the trace covers exactly the requested steps.
        if not (self.steps and self.enabled):
            return ()
        first, last = self.steps
        return (first - 1, last) if first > 1 else (last,)

    def maybe_start(self, step: int) -> None:
        if self.steps and self.enabled and not self._running and step == self.steps[0] - 1:
            tf.profiler.experimental.start(posixpath.join(self.summary_dir, "train"))
            self._running = True

    def maybe_stop(self, step: int) -> None:
        if self._running and step >= self.steps[1]:
            tf.profiler.experimental.stop()
            self._running = False
