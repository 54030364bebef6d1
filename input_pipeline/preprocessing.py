"""Image preprocessing: pure tensor-to-tensor functions.

Each step works on one image; `preprocess_for_train` and `preprocess_for_eval`
chain them over every image of a batch of encoded images.

Every random op here is stateless and takes its randomness as an explicit
`seed` tensor of shape [2], so a function gives the same output for the same
inputs whether it runs eagerly, in a `tf.function` or inside `tf.data`, and
tests can compare those exactly. `dataset.py` gives each example its own seed.

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
        into textures the model never saw. Training can skip it, at half the
        cost of the whole augmentation: its crops come from records whose
        longer side the converter capped (512 px by default), so they shrink
        by at most ~2.3x, and at 2x bilinear with half-pixel centres already
        averages each 2x2 block, i.e. is a box filter.
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
    about 3x cheaper than flip, flip and `rot90` on the float output.

    Plain `tf.cond`s on one random draw, rather than `tf.image`'s random
    flips with their own draws and shape checks: a sixth of the ops, which
    cut the training pipeline's CPU time by 7% at 64 px.

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


def normalize(images: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """Maps 0..255 pixels to (x / 255 - mean) / std, float32.

    `images` is one image [h, w, 3] or a batch [n, h, w, 3]; `mean` and `std`
    are per channel on the 0..1 scale, as in `dataset_info.json`.
    """
    offset = 255.0 * np.asarray(mean, np.float32)
    inverse_scale = 1.0 / (255.0 * np.asarray(std, np.float32))
    image_shape = images.shape[-3:]
    if image_shape.is_fully_defined():
        # Operands of one image's shape take TF's vectorised elementwise
        # kernels (over a batch too); broadcasting a [3] vector over the
        # channels does not, and made normalisation a third of the whole
        # training pipeline's time.
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
    its resize, while it is still in the CPU cache, measured 6% cheaper than
    normalising the whole batch at once.

    Args:
      image_bytes: string [n], JPEGs (the records always hold JPEG).
      seeds: int32/int64 [n, 2], one stateless seed per image.
      image_size: side of the output images.
      mean, std: per channel, 0..1 scale.
    """

    def augment(args):
        image_bytes, seed = args
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
        image = decode_and_random_crop(image_bytes, crop_seed)
        # On the uint8 crop, before it becomes a larger float image.
        image = random_flip_and_rotate(image, flip_seed)
        # The bilinear resize reads float32 faster than uint8: casting first
        # cut the whole pipeline's CPU time by 12% at 224 px.
        image = resize(tf.cast(image, tf.float32), image_size, antialias=False)
        return normalize(image, mean, std)

    return _map_images(augment, (image_bytes, seeds), image_size)


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


def cache_side(image_size: int, area_range: Sequence[float] = TRAIN_AREA_RANGE) -> int:
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
    image = decode_image(image_bytes)
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
    area_range: Sequence[float] = TRAIN_AREA_RANGE,
    aspect_ratio_range: Sequence[float] = TRAIN_ASPECT_RATIO_RANGE,
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
    """Bilinear crops of cached images, transposed where asked, as `tf.image.crop_and_resize` samples.

    Bilinear resampling is separable, so this resamples one axis of the whole
    batch, then the other: each pass gathers the two source rows of every
    output row and interpolates between them, with a transpose in between.
    Meant to run XLA-compiled, as the cached training pipeline runs it: XLA
    fuses the gathers, interpolation and transpose into a few loops, which
    took a third less CPU time than the same two passes made with
    `crop_and_resize` on one-pixel-wide images (that kernel computes its
    coordinates per value; plain TF ops here make a copy per step). Starting
    from the transposed cached copy puts the output the right way round;
    starting from the image itself transposes it for free.

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


def _map_images(fn, elems, image_size: int) -> tf.Tensor:
    """`fn` on each example of a batch -> float32 [n, image_size, image_size, 3].

    Images differ in size until resized, so they cannot be vectorised: one
    `fn` call per image, in a loop inside the graph.
    """
    return tf.map_fn(
        fn, elems, fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32)
    )
