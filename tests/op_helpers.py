"""Helpers for testing tensor ops: run them eagerly and in tf.data, make tiny images."""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from PIL import Image


def run_both_ways(fn, *args) -> np.ndarray:
    """Runs `fn(*args)` eagerly and in a tf.data map; returns the (equal) result."""
    eager = fn(*args)
    traced = next(iter(tf.data.Dataset.from_tensors(args).map(fn)))
    assert eager.dtype == traced.dtype
    np.testing.assert_array_equal(eager.numpy(), traced.numpy())
    return eager.numpy()


def encode(array: np.ndarray, fmt: str) -> tf.Tensor:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return tf.constant(buffer.getvalue())


def gradient_image(height: int, width: int) -> np.ndarray:
    """Smooth, position-dependent content, so a crop's location is visible."""
    y, x = np.mgrid[:height, :width]
    return np.stack(
        [y * 255 // height, x * 255 // width, (x + y) * 127 // (height + width)], -1
    ).astype(np.uint8)


def seed(value: int) -> tf.Tensor:
    return tf.constant([value, 0], tf.int64)
