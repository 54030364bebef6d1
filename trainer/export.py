"""Checkpoint -> SavedModel whose serving signature takes encoded image bytes, and edge models.

With --export_formats, the same weights are also converted for devices
(TFLite float16 and int8, ONNX) and written beside the SavedModel, after it
is in place: a conversion that fails leaves it there (`trainer/edge_export.py`).
"""

from __future__ import annotations

from typing import Sequence

import keras
from absl import logging
import tensorflow as tf

from input_pipeline import preprocessing
from input_pipeline import records
from trainer import checkpoints
from trainer import edge_export
from trainer import edge_runtime
from trainer import ema
from trainer import models


class _Serving(tf.Module):
    """Holds the model and the class names; `serve` is the exported signature."""

    def __init__(self, model: keras.Model, info: records.DatasetInfo, image_size: int):
        super().__init__()
        self.model = model
        self.class_names = tf.constant(info.class_names)
        self._image_size, self._mean, self._std = image_size, info.mean, info.std

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(self, image_bytes):
        # The same eval preprocessing as validation, so served predictions
        # match the reported metrics; PNG and JPEG bytes both decode.
        images = preprocessing.preprocess_for_eval(
            image_bytes, self._image_size, self._mean, self._std)
        probabilities = tf.nn.softmax(tf.cast(self.model(images, training=False), tf.float32))
        batch = tf.shape(image_bytes)[0]
        return {
            "probabilities": probabilities,
            "class_names": tf.tile(self.class_names[None], [batch, 1]),
            "predicted_class": tf.gather(self.class_names, tf.argmax(probabilities, axis=-1)),
        }


def check_formats(formats: Sequence[str]) -> None:
    """At start-up: raises ValueError if a package the formats need does not import."""
    edge_runtime.check_packages(formats, f"--export_formats={','.join(formats)}",
                                converting=True)


def export_saved_model(checkpoint_path: str, export_dir: str, *, model_name: str, width: int,
                       image_size: int, info: records.DatasetInfo, averaged: bool = False,
                       formats: Sequence[str] = (edge_runtime.SAVED_MODEL,),
                       data_dir: str | None = None) -> str:
    """Rebuilds the model in float32 outside any strategy, restores it, and saves.

    Rebuilding (rather than saving the training model) gives one path for
    every strategy, TPU included, and float32 serving whatever the training
    precision. The SavedModel is always written, and first.

    Args:
      averaged: serve the checkpoint's weight average (--ema_decay) rather
        than its weights, if it holds one.
      formats: --export_formats; the edge ones are converted after the
        SavedModel is in place.
      data_dir: the records whose training images calibrate int8.

    Raises:
      edge_export.EdgeExportError: an edge format did not convert (the
        SavedModel and the other formats are written).
    """
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = models.create_model(model_name, info.num_classes, width=width)
        averaged = _restore(model, checkpoint_path, averaged)
        _save_whole(_Serving(model, info, image_size), export_dir)
        logging.info("exported %s%s to %s", checkpoint_path,
                     " (its weight average)" if averaged else "", export_dir)
        edge = [fmt for fmt in formats if fmt in edge_runtime.EDGE_FORMATS]
        if edge:
            edge_export.export_edge_models(
                model, export_dir, edge, image_size=image_size, info=info,
                calibration=edge_export.calibration_images(data_dir, info, image_size))
    finally:
        keras.mixed_precision.set_global_policy(policy)
    return export_dir


def _save_whole(module: _Serving, export_dir: str) -> None:
    """Saves to a temporary folder renamed into place: `export_dir` is never half-written."""
    tmp, old = export_dir.rstrip("/") + ".tmp", export_dir.rstrip("/") + ".old"
    if tf.io.gfile.exists(old) and not tf.io.gfile.exists(export_dir):
        tf.io.gfile.rename(old, export_dir)  # A crash mid-swap: the old model back first.
    for leftover in (tmp, old):
        if tf.io.gfile.exists(leftover):
            tf.io.gfile.rmtree(leftover)
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
    # The previous model moves aside until the new one is in place, so a
    # crash in between leaves one of the two, never neither.
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rename(export_dir, old)
    tf.io.gfile.rename(tmp, export_dir)
    if tf.io.gfile.exists(old):
        tf.io.gfile.rmtree(old)


def _restore(model: keras.Model, checkpoint_path: str, averaged: bool) -> bool:
    """Restores the model's weights, or with `averaged` their average; returns which it did."""
    if averaged and ema.CHECKPOINT_KEY not in checkpoints.saved_parts(checkpoint_path):
        logging.warning("%s holds no weight average (saved without --ema_decay): exporting its "
                        "weights", checkpoint_path)
        averaged = False
    parts = {"model": model}
    if averaged:
        average = ema.WeightAverage(model, decay=0.0)  # Only read: no updates.
        parts[ema.CHECKPOINT_KEY] = average.trackable
    status = tf.train.Checkpoint(**parts).restore(checkpoint_path)
    status.assert_existing_objects_matched().expect_partial()
    if averaged:
        average.copy_to_weights()
    return averaged
