"""Image preprocessing: pure tensor-to-tensor functions.

Each step works on one image; `preprocess_for_train` and `preprocess_for_eval`
chain them over every image of a batch of encoded images. The training path
that decodes once and augments whole batches from memory (`cache_decoded`)
lives in `cached_augment.py`, with the same crop ranges.

Every random op here is stateless and takes its randomness as an explicit
`seed` tensor of shape [2], so a function gives the same output for the same
inputs whether it runs eagerly, in a `tf.function` or inside `tf.data`, and
tests can compare those exactly. `dataset.py` gives each example its own seed.
Ops that also run XLA-compiled draw with `stateless_uniform` and `split_seed`,
which XLA reproduces: TF's own float draws come out different there.

Images are uint8 until they are resized, float32 after; `normalize` maps them to
zero mean and unit variance per channel with the data set's statistics, which
are computed on the 0..1 scale (see `records.DatasetInfo`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

# Random-resized-crop ranges for training. ImageNet recipes sample 8%-100% of
# the area; a seedling is one small plant on soil, and an 8% crop is often
# bare gravel or a single leaf tip, i.e. a training example with the wrong
# label. Keeping at least a quarter of the frame keeps whole leaves, whose
# shape is what separates the species. The photos are near-square (aspect
# 0.94-1.33), so the usual 3/4-4/3 aspect jitter distorts them only mildly.
TRAIN_AREA_RANGE = (0.25, 1.0)
TRAIN_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)

# Evaluation takes the central square of 87.5% of the shorter side. Training
# crops keep on average 62.5% of the area, i.e. a side of about 0.79 of the
# image, so plants look larger in training than in a full-frame view; a
# 0.875 crop brings eval close to the training scale (the "FixRes" train/test
# discrepancy) without cutting much: each Aarhus image is cropped around one
# plant, so the border it drops is mostly soil. Being square, it also avoids
# stretching the few 4:3 photos.
EVAL_CROP_FRACTION = 0.875


def decode_and_random_crop(
    image_bytes: tf.Tensor,
    seed: tf.Tensor,
    *,
    area_range: Sequence[float] = TRAIN_AREA_RANGE,
    aspect_ratio_range: Sequence[float] = TRAIN_ASPECT_RATIO_RANGE,
) -> tf.Tensor:
    """Decodes a random window of a JPEG, without decoding the rest.

    Fusing the crop into the decode skips the IDCT of the pixels outside the
    window, which is most of the work for small crops.

    Args:
      image_bytes: scalar string, a JPEG.
      seed: int32/int64 [2], the stateless seed for the window.
      area_range: fraction of the image area the window may cover.
      aspect_ratio_range: width / height range of the window.

    Returns:
      uint8 [crop_height, crop_width, 3]. If no window fits the ranges in 10
      attempts, the whole image.
    """
    shape = tf.image.extract_jpeg_shape(image_bytes)
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=whole_image,
        seed=seed,
        # With the box being the whole image, "object covered" is the area
        # fraction again: state it once, through area_range.
        min_object_covered=area_range[0],
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)
    crop_window = tf.stack([offset_y, offset_x, height, width])
    return tf.io.decode_and_crop_jpeg(image_bytes, crop_window, channels=3)


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG, PNG, BMP or GIF (first frame) to uint8 RGB [h, w, 3].

    Grayscale is replicated to three channels and an alpha channel dropped,
    so user photos at serving time come out like the training records.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    # decode_image cannot know the channel count statically; we asked for 3.
    return tf.ensure_shape(image, [None, None, 3])


def center_crop(image: tf.Tensor, crop_fraction: float = EVAL_CROP_FRACTION) -> tf.Tensor:
    """The central square whose side is `crop_fraction` of the shorter side."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.cast(tf.cast(tf.minimum(height, width), tf.float32) * crop_fraction, tf.int32)
    side = tf.maximum(side, 1)
    top = (height - side) // 2
    left = (width - side) // 2
    return image[top : top + side, left : left + side]


def resize(image: tf.Tensor, image_size: int, *, antialias: bool) -> tf.Tensor:
    """Bilinear resize to [image_size, image_size, 3], float32 0..255.

    Args:
      image: [h, w, 3], any real dtype.
      image_size: output side.
      antialias: filter before shrinking. Evaluation and serving need it: a
        user may send a 3000 px original, and plain bilinear would alias it
        into textures the model never saw. Training can skip it, and with it
        a large part of the augmentation's cost: its crops come from records
        whose longer side the converter capped (512 px by default), so they
        shrink by at most ~2.3x, and at 2x bilinear with half-pixel centres
        already averages each 2x2 block, i.e. is a box filter.
    """
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=antialias)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def random_flip_and_rotate(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One of the 8 flips and 90-degree rotations of `image`, uniformly.

    Top-down photos of seedlings have no "up", so all 8 symmetries of the
    square are label-preserving, unlike for ImageNet. A random transpose then
    random vertical and horizontal flips reach each symmetry in exactly one
    way (a 90-degree rotation is a transpose and a flip), and copy the image
    at most three times; applied to the uint8 crop before resizing, that is
    much cheaper than flip, flip and `rot90` on the float output.

    Plain `tf.cond`s on one random draw, rather than `tf.image`'s random
    flips with their own draws and shape checks: far fewer ops per image,
    which shows in the training pipeline's CPU time at small image sizes.

    Args:
      image: [h, w, c], any dtype; need not be square (then h and w may swap).
      seed: int32/int64 [2].
    """
    transpose, flip_up_down, flip_left_right = tf.unstack(
        tf.random.stateless_uniform([3], seed, minval=0, maxval=2, dtype=tf.int32) > 0
    )
    image = tf.cond(transpose, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)
    image = tf.cond(flip_up_down, lambda: tf.reverse(image, [0]), lambda: image)
    return tf.cond(flip_left_right, lambda: tf.reverse(image, [1]), lambda: image)


def stateless_uniform(shape: Sequence[int] | tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """float32 uniform in [0, 1) that XLA draws exactly as TF does.

    `tf.random.stateless_uniform`'s floats differ when compiled with XLA on
    CPU, which makes its own floats of the random bits; its integers do not.
    So this takes 24 bits of each integer, as many as a float32 holds exactly.

    Args:
      shape: of the output.
      seed: int32/int64 [2].
    """
    bits = tf.random.stateless_uniform(
        shape, _xla_safe(seed), dtype=tf.uint32, minval=None, maxval=None)
    return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * 2.0**-24


def split_seed(seed: tf.Tensor, num: int) -> tf.Tensor:
    """int64 [num, 2]: `tf.random.experimental.stateless_split`, the same under XLA."""
    return _xla_safe(tf.random.experimental.stateless_split(_xla_safe(seed), num))


def _xla_safe(seed: tf.Tensor) -> tf.Tensor:
    """The low 32 bits of each word of a seed.

    XLA makes its own key of a seed with words outside 0..2^32 - 1, such as
    `stateless_split`'s, so its draws from such seeds differ from TF's.
    """
    return tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), 0xFFFFFFFF)


def normalize(images: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """Maps 0..255 pixels to (x / 255 - mean) / std, float32.

    `images` is one image [h, w, 3] or a batch [n, h, w, 3]; `mean` and `std`
    are per channel on the 0..1 scale, as in `records_info.json`.
    """
    offset = 255.0 * np.asarray(mean, np.float32)
    inverse_scale = 1.0 / (255.0 * np.asarray(std, np.float32))
    image_shape = images.shape[-3:]
    if image_shape.is_fully_defined():
        # Operands of one image's shape take TF's vectorised elementwise
        # kernels (over a batch too); broadcasting a [3] vector over the
        # channels does not, and made normalisation a large share of the
        # whole training pipeline's time.
        offset = np.broadcast_to(offset, image_shape)
        inverse_scale = np.broadcast_to(inverse_scale, image_shape)
    return (tf.cast(images, tf.float32) - offset) * inverse_scale


def preprocess_for_train(
    image_bytes: tf.Tensor,
    seeds: tf.Tensor,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> tf.Tensor:
    """A batch of JPEGs -> augmented, normalised float32 [n, image_size, image_size, 3].

    Each image gets a random crop (fused into the decode), flip and rotation,
    a bilinear resize and normalisation. Normalising each image right after
    its resize, while it is still in the CPU cache, is cheaper than
    normalising the whole batch at once.

    Args:
      image_bytes: string [n], JPEGs (the records always hold JPEG).
      seeds: int32/int64 [n, 2], one stateless seed per image.
      image_size: side of the output images.
      mean, std: per channel, 0..1 scale.
    """

    def augment(args):
        return normalize(_crop_flip_resize(*args, image_size), mean, std)

    return _map_images(augment, (image_bytes, seeds), image_size)


def crop_flip_resize_for_train(
    image_bytes: tf.Tensor, seeds: tf.Tensor, image_size: int
) -> tf.Tensor:
    """`preprocess_for_train` without the normalisation: float32 0..255.

    For ops that work on pixel values after the crops (RandAugment), which
    then normalise the batch themselves.

    Args:
      image_bytes: string [n], JPEGs.
      seeds: int32/int64 [n, 2], one stateless seed per image.
      image_size: side of the output images.
    """
    return _map_images(lambda args: _crop_flip_resize(*args, image_size), (image_bytes, seeds),
                       image_size)


def _crop_flip_resize(image_bytes: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
    """One JPEG -> random crop, flip and rotation, resized: float32 0..255."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    image = decode_and_random_crop(image_bytes, crop_seed)
    # On the uint8 crop, before it becomes a larger float image.
    image = random_flip_and_rotate(image, flip_seed)
    # The bilinear resize reads float32 faster than uint8, enough to pay
    # for the cast.
    return resize(tf.cast(image, tf.float32), image_size, antialias=False)


def preprocess_for_eval(
    image_bytes: tf.Tensor,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> tf.Tensor:
    """A batch of encoded images -> normalised float32 [n, image_size, image_size, 3].

    Deterministic: centre crop, antialiased resize. Accepts any format
    `decode_image` does (JPEG records, PNG uploads), so evaluation and the
    exported serving signature share it and cannot drift apart.

    Args:
      image_bytes: string [n].
      image_size: side of the output images.
      mean, std: per channel, 0..1 scale.
    """

    def crop_resize_normalize(image_bytes):
        image = resize(center_crop(decode_image(image_bytes)), image_size, antialias=True)
        return normalize(image, mean, std)

    return _map_images(crop_resize_normalize, image_bytes, image_size)


def _map_images(fn, elems, image_size: int) -> tf.Tensor:
    """`fn` on each example of a batch -> float32 [n, image_size, image_size, 3].

    Images differ in size until resized, so they cannot be vectorised: one
    `fn` call per image, in a loop inside the graph.
    """
    return tf.map_fn(
        fn, elems, fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32)
    )
