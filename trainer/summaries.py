"""Steps -> TensorBoard: what the chief writes under `<summaries>/{train,eval}`.

Non-chief workers get no-op writers, so the loop calls these unconditionally.
"""

from __future__ import annotations

import posixpath
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from trainer import metrics


class Summaries:
    """The train and eval event writers of one run."""

    def __init__(self, summary_dir: str, *, enabled: bool):
        if enabled:
            self.train = tf.summary.create_file_writer(posixpath.join(summary_dir, "train"))
            self.eval = tf.summary.create_file_writer(posixpath.join(summary_dir, "eval"))
        else:
            self.train = self.eval = tf.summary.create_noop_writer()

    def train_scalars(self, step: int, values: Mapping[str, float]) -> None:
        with self.train.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)
        self.train.flush()

    def eval_results(self, step: int, results: Mapping[str, Any], class_names: Sequence[str]) -> None:
        """Loss, accuracy, macro F1, per-class recall and the confusion matrix."""
        with self.eval.as_default(step=step):
            for name in ("loss", "accuracy", "macro_f1"):
                tf.summary.scalar(name, results[name])
            for name, recall in zip(class_names, results["recall"]):
                tf.summary.scalar(f"recall/{name}", recall)
            confusion = results["confusion"]
            tf.summary.image("confusion_matrix", metrics.confusion_image(confusion))
            tf.summary.text("confusion_matrix_counts", _markdown_table(confusion, class_names))
        self.eval.flush()

    def input_images(self, step: int, images: tf.Tensor, mean, std) -> None:
        """A few augmented training inputs, un-normalised for viewing."""
        images = tf.cast(images, tf.float32) * tf.constant(std) + tf.constant(mean)
        with self.train.as_default(step=step):
            tf.summary.image("input_images", tf.clip_by_value(images, 0.0, 1.0), max_outputs=8)
        self.train.flush()

    def hparams(self, values: Mapping[str, Any]) -> None:
        with self.train.as_default():
            hparams_api.hparams(dict(values))
        self.train.flush()


def _markdown_table(confusion: np.ndarray, class_names: Sequence[str]) -> str:
    header = "| label \\ prediction | " + " | ".join(class_names) + " |"
    rule = "|---" * (len(class_names) + 1) + "|"
    rows = [
        f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |"
        for name, row in zip(class_names, confusion)
    ]
    return "\n".join([header, rule, *rows])
