"""Steps -> TensorBoard: what the chief writes under `<summaries>/{train,eval}`.

Non-chief workers have no writers, and every method does nothing, so the
loop calls these unconditionally.

Training scalars are not flushed as they are written: on gs:// every flush
re-uploads the whole event file. They reach it at the first write at least
`_FLUSH_MILLIS` after the previous flush, at each evaluation, at `flush()`
and `close()`, and when the writer is garbage collected, which includes any
exit of the Python process other than a kill by signal or `os._exit`.
"""

from __future__ import annotations

import posixpath
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from trainer import metrics

# TF's default; a queue long enough that only time, not the number of
# summaries written, triggers a flush.
_FLUSH_MILLIS = 120_000
_MAX_QUEUE = 10_000


class Summaries:
    """The train and eval event writers of one run; `close()` (or `with`) flushes them."""

    def __init__(self, summary_dir: str, *, enabled: bool):
        self._writers = {
            name: tf.summary.create_file_writer(
                posixpath.join(summary_dir, name), max_queue=_MAX_QUEUE, flush_millis=_FLUSH_MILLIS
            )
            for name in (("train", "eval") if enabled else ())
        }

    def __enter__(self) -> "Summaries":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def train_scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Scalars of one loop of steps; not flushed (see the module docstring)."""
        if self._use("train"):
            for name, value in values.items():
                tf.summary.scalar(name, value, step=step)

    def eval_results(self, step: int, results: Mapping[str, Any], class_names: Sequence[str]) -> None:
        """Loss, accuracy, macro F1, per-class recall and the confusion matrix."""
        if self._use("eval"):
            for name in ("loss", "accuracy", "macro_f1"):
                tf.summary.scalar(name, results[name], step=step)
            for name, recall in zip(class_names, results["recall"]):
                tf.summary.scalar(f"recall/{name}", recall, step=step)
            confusion = results["confusion"]
            tf.summary.image("confusion_matrix", metrics.confusion_image(confusion), step=step)
            tf.summary.text(
                "confusion_matrix_counts", _markdown_table(confusion, class_names), step=step
            )
        # Rare, and what a user waits for; the training scalars so far too.
        self.flush()

    def input_images(self, step: int, images: tf.Tensor, mean, std) -> None:
        """A few augmented training inputs, un-normalised for viewing."""
        if self._use("train"):
            images = tf.cast(images, tf.float32) * tf.constant(std) + tf.constant(mean)
            images = tf.clip_by_value(images, 0.0, 1.0)
            tf.summary.image("input_images", images, step=step, max_outputs=8)
            self.flush()  # Once per run.

    def hparams(self, values: Mapping[str, Any]) -> None:
        if self._use("train"):
            hparams_api.hparams(dict(values))
            self.flush()  # Once per run.

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        """Flushes and closes the writers; they take no more summaries."""
        for writer in self._writers.values():
            writer.close()

    def _use(self, name: str) -> bool:
        """Sends tf.summary calls to the `name` writer; False if there are no writers.

        Not `with writer.as_default()`, which flushes on exit. The writer
        stays the default afterwards, as TF has no public way back to the
        previous one: harmless, as every method sets its own, but it keeps
        the writer alive, and what it holds unflushed, until `close()`.
        """
        writer = self._writers.get(name)
        if writer is None:
            return False
        writer.set_as_default()
        return True


def _markdown_table(confusion: np.ndarray, class_names: Sequence[str]) -> str:
    header = "| label \\ prediction | " + " | ".join(class_names) + " |"
    rule = "|---" * (len(class_names) + 1) + "|"
    rows = [
        f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |"
        for name, row in zip(class_names, confusion)
    ]
    return "\n".join([header, rule, *rows])
