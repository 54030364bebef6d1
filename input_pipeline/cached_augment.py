"""Batched training augmentation from a cache of decoded images (`cache_decoded`).

The per-image training path (`preprocessing.py`) decodes every image again
each epoch and runs its ops one image at a time. A data set that fits in
memory can be decoded once instead: `decode_for_cache` squeezes each image
into a fixed-size square (plus its transpose) that `tf.data` caches, and
`random_crop_flip_rotate_batch` then augments a whole batch of them at once
with batched ops, drawing crops, flips and rotations from the same
distribution as `preprocessing.decode_and_random_crop` and
`preprocessing.random_flip_and_rotate`. `dataset.py` runs it XLA-compiled,
then RandAugment and mixing if asked (`randaugment.py`, `mixing.py`).

Pure functions with stateless seeds, like `preprocessing.py`: the same
output eagerly, in a `tf.function` and inside `tf.data`. Under XLA the same
given the same draws (up to rounding), but the crops come out different:
`tf.random.stateless_uniform`'s floats differ there (see
`preprocessing.stateless_uniform`, which the later stages use).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

# The crop ranges and the decode are preprocessing's: one distribution and
# one decoder for both training paths.
from input_pipeline import preprocessing


def cache_side(
    image_size: int, area_range: Sequence[float] = preprocessing.TRAIN_AREA_RANGE
) -> int:
    """Side of the cached images: the smallest window then still spans `image_size` pixels."""
    return int(np.ceil(image_size / np.sqrt(area_range[0])))


def decode_for_cache(image_bytes: tf.Tensor, side: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Encoded image -> (uint8 [2, side, side, 3], float32 [2]): what the cache keeps.

    The whole image squeezed to a `side` x `side` square (antialiased), and
    its transpose, plus the original [height, width]. Crops taken later in
    coordinates relative to the image (`random_crop_flip_rotate_batch`) undo
    the squeeze, so aspect ratios come out as in the original. The transposed
    copy is there because a random transpose of each augmented image cost
    more than the rest of the augmentation together; picking the copy to
    crop from is free.
    """
    image = preprocessing.decode_image(image_bytes)
    original_shape = tf.cast(tf.shape(image)[:2], tf.float32)
    image = tf.image.resize(image, [side, side], method="bilinear", antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.stack([image, tf.transpose(image, [1, 0, 2])]), original_shape


def random_crop_flip_rotate_batch(
    images: tf.Tensor,
    original_shapes: tf.Tensor,
    seed: tf.Tensor,
    image_size: int,
    *,
    area_range: Sequence[float] = preprocessing.TRAIN_AREA_RANGE,
    aspect_ratio_range: Sequence[float] = preprocessing.TRAIN_ASPECT_RATIO_RANGE,
) -> tf.Tensor:
    """The training augmentation of a whole batch of cached images at once.

    The same distribution as `decode_and_random_crop` then
    `random_flip_and_rotate`: a random window covering `area_range` of the
    original image with a width/height ratio in `aspect_ratio_range`
    (log-uniform), flipped and transposed at random; a window that does not
    fit is clipped to the image instead of redrawn. The flips are the
    window's corners swapped, the transpose a choice of cached copy, and two
    batched bilinear passes (`crop_and_resize_windows`) make every output
    image: no per-image ops.

    Args:
      images: uint8 [n, 2, side, side, 3] from `decode_for_cache`.
      original_shapes: float32 [n, 2], the images' original [height, width].
      seed: int32/int64 [2].
      image_size: output side.

    Returns:
      float32 [n, image_size, image_size, 3], 0..255.
    """
    n = tf.shape(images)[0]
    area, log_aspect, top, left, flips = tf.split(
        tf.random.stateless_uniform([n, 7], seed), [1, 1, 1, 1, 3], axis=1
    )
    area = area_range[0] + (area_range[1] - area_range[0]) * area[:, 0]
    low, high = np.log(aspect_ratio_range[0]), np.log(aspect_ratio_range[1])
    aspect = tf.exp(low + (high - low) * log_aspect[:, 0])
    height, width = tf.unstack(original_shapes, axis=1)
    # Window sides as fractions of the image's sides.
    window_height = tf.minimum(tf.sqrt(area * width * height / aspect) / height, 1.0)
    window_width = tf.minimum(tf.sqrt(area * width * height * aspect) / width, 1.0)
    y1 = (1.0 - window_height) * top[:, 0]
    x1 = (1.0 - window_width) * left[:, 0]
    y2, x2 = y1 + window_height, x1 + window_width
    flip_up_down, flip_left_right, transpose = tf.unstack(flips < 0.5, axis=1)
    # Sampling from the second corner to the first is a flipped crop.
    y1, y2 = tf.where(flip_up_down, y2, y1), tf.where(flip_up_down, y1, y2)
    x1, x2 = tf.where(flip_left_right, x2, x1), tf.where(flip_left_right, x1, x2)
    return crop_and_resize_windows(images, tf.stack([y1, x1, y2, x2], 1), transpose, image_size)


def crop_and_resize_windows(
    images: tf.Tensor, boxes: tf.Tensor, transpose: tf.Tensor, image_size: int
) -> tf.Tensor:
    """Bilinear crops of cached images, transposed where asked, sampled as `crop_and_resize` does.

    Bilinear resampling is separable, so this resamples one axis of the whole
    batch, then the other: each pass gathers the two source rows of every
    output row and interpolates between them, with a transpose in between.
    Meant to run XLA-compiled, as the cached training pipeline runs it: XLA
    fuses the gathers, interpolation and transpose into a few loops, cheaper
    than the same two passes made with `crop_and_resize` on one-pixel-wide
    images (that kernel computes its coordinates per value; plain TF ops
    here make a copy per step). Starting from the transposed cached copy
    puts the output the right way round; starting from the image itself
    transposes it for free.

    Args:
      images: uint8 [n, 2, side, side, 3]: each image and its transpose.
      boxes: float32 [n, 4], [y1, x1, y2, x2] relative to the image (not its
        transpose), as for `crop_and_resize`; y1 > y2 flips, and so on.
      transpose: bool [n], which outputs to transpose.
      image_size: output side.

    Returns:
      float32 [n, image_size, image_size, 3].
    """
    n, side = tf.shape(images)[0], images.shape[2]
    y1, x1, y2, x2 = tf.unstack(boxes, axis=1)
    # The first pass runs down the rows of the chosen copy: the image's
    # columns (x) for the transposed copy, its rows (y) for the image itself.
    first = tf.where(transpose[:, None], tf.stack([y1, y2], 1), tf.stack([x1, x2], 1))
    second = tf.where(transpose[:, None], tf.stack([x1, x2], 1), tf.stack([y1, y2], 1))
    copies = tf.reshape(images, [-1, side, side * 3])  # [2n, ...]: no copy made
    chosen = tf.gather(copies, 2 * tf.range(n) + 1 - tf.cast(transpose, tf.int32))
    rows = _resample(chosen, first, image_size)  # [n, image_size, side * 3]
    columns = tf.transpose(tf.reshape(rows, [n, image_size, side, 3]), [0, 2, 1, 3])
    out = _resample(tf.reshape(columns, [n, side, image_size * 3]), second, image_size)
    return tf.reshape(out, [n, image_size, image_size, 3])


def _resample(images: tf.Tensor, spans: tf.Tensor, size: int) -> tf.Tensor:
    """Bilinear resampling along axis 1 of [n, length, channels], from span [:, 0] to [:, 1].

    The span's ends are relative ([0, 1] maps to the first and last pixel
    centres) and land on the first and last outputs, as `crop_and_resize`
    places its samples; an end before the start samples backwards.
    """
    length = images.shape[1]
    start, end = tf.unstack(spans, axis=1)
    step = (end - start) * (length - 1) / (size - 1)
    position = start[:, None] * (length - 1) + tf.range(size, dtype=tf.float32) * step[:, None]
    # Rounding can put an end a hair outside the image.
    position = tf.clip_by_value(position, 0.0, length - 1)
    top = tf.floor(position)
    weight = (position - top)[:, :, None]
    top = tf.cast(top, tf.int32)
    bottom = tf.minimum(top + 1, length - 1)
    upper = tf.cast(tf.gather(images, top, batch_dims=1), tf.float32)
    lower = tf.cast(tf.gather(images, bottom, batch_dims=1), tf.float32)
    return upper + (lower - upper) * weight
