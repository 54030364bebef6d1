"""RandAugment for top-down photos of seedlings: pure, batched, XLA-compilable.

RandAugment (Cubuk et al. 2020) applies `num_ops` operations to each image,
each drawn uniformly (with replacement) from `OPS`, at one magnitude M on the
0..10 scale of TF Model Garden and timm (10 the strongest); an op with a
direction (rotate, shear, translate and the colour factors) takes a random
sign. The operation set is ImageNet's, adapted to plants on soil seen from
above, which have no "up" and are photographed in field or greenhouse light:

- Rotation by any angle: uniform within +-18 * M degrees (+-180 at M=10),
  rather than one fixed angle, as every orientation of a plant is equally
  likely. Flips are added for the same reason. (Both training paths already
  apply all 8 flips and quarter turns before RandAugment, so there a flip is
  another identity; it stays in the set for images that did not get them.)
- Shear up to 0.3 (as Model Garden and timm); translation up to 30% of the
  side, not their 45%: the border is filled by reflection (soil continues,
  where a grey or black border would be a feature the model could learn),
  and at 45% nearly half the frame would be a mirror image of the rest.
- Colour within what light and camera do: brightness, contrast and
  saturation factors 1 +- 0.5 (ImageNet recipes reach 0.1 to 1.9), a small
  hue shift (not in ImageNet's set: a turn of the chroma plane by up to +-18
  degrees, which moves the hue of leaf greens by up to about 25, to yellowish
  or bluish green, never to red or blue) and sharpness 1 +- 0.9 (as theirs:
  focus and motion blur vary).
- Left out: invert and solarize, which turn a green plant on brown soil into
  no plant at all; posterize, as the fine texture and shades of green that
  tell the grasses apart are the signal and no camera quantises them away;
  equalize and autocontrast, which stretch each channel's histogram, mostly
  soil's, and so shift the colour of the leaves (exposure is covered by
  brightness and contrast); cutout, whose grey box is the kind of feature the
  reflected border avoids and which can erase a whole small seedling: CutMix
  (`mixing.py`) pastes boxes with labels that say so.

Every op runs on the whole batch, with no per-image control flow: the
geometric ops an image drew compose into one affine map, sampled bilinearly
with gathers (`tf.raw_ops.ImageProjectiveTransformV3` has no XLA kernel),
and each colour op takes a per-image factor that is the identity unless the
image drew it. Their order is then fixed, geometric ops (in the order drawn)
before colour ops (in `OPS` order): a small deviation from the paper, which
applies ops in the order drawn. A colour op drawn twice applies once, with
its factors multiplied (hue: angles added), which is what applying it twice
does to these linear ops (for sharpness roughly). Brightness, contrast,
saturation and hue compose into one affine colour map per image, clipped to
0..255 once, and sharpness is clipped after it (bilinear samples of the
image cannot leave that range).

Pure functions with stateless seeds, like `preprocessing.py`: the same output
eagerly, in a `tf.function`, inside `tf.data` and (up to rounding) under XLA.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

# Random draws that XLA reproduces.
from input_pipeline.preprocessing import stateless_uniform

OPS = (
    "identity", "rotate", "flip", "shear_x", "shear_y", "translate_x", "translate_y",
    "brightness", "contrast", "saturation", "hue", "sharpness",
)
_OP_INDEX = {name: i for i, name in enumerate(OPS)}

MAX_MAGNITUDE = 10.0

# Each op's strength at M=10; an op at M applies M / 10 of it.
MAX_ROTATE_DEGREES = 180.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 0.3  # of the image's side
MAX_BRIGHTNESS = 0.5  # factor 1 +- this
MAX_CONTRAST = 0.5
MAX_SATURATION = 0.5
MAX_HUE_DEGREES = 18.0  # of the (I, Q) chroma plane's turn
MAX_SHARPNESS = 0.9

# Luma weights (ITU-R BT.601): grey for saturation, and the axis hue turns about.
_LUMA = np.array([0.299, 0.587, 0.114])
# RGB -> YIQ. A hue shift is a rotation of the (I, Q) chroma plane: linear in
# RGB, so a 3x3 matrix per image, and luma stays as it was (HSV's hue shift,
# `tf.image.adjust_hue`, changes it and costs a colour-space round trip).
_RGB_TO_YIQ = np.array([_LUMA, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
# Rotating chroma by t is I + (cos t - 1) * _HUE_COS + sin t * _HUE_SIN in RGB:
# exactly the identity at t = 0.
_HUE_COS = (_YIQ_TO_RGB @ np.diag([0.0, 1.0, 1.0]) @ _RGB_TO_YIQ).astype(np.float32)
_HUE_SIN = (_YIQ_TO_RGB @ np.array([[0, 0, 0], [0, 0, -1], [0, 1, 0]]) @ _RGB_TO_YIQ).astype(
    np.float32)


def randaugment_batch(
    images: tf.Tensor,
    seed: tf.Tensor,
    num_ops: int,
    magnitude: float,
    *,
    ops: Sequence[str] = OPS,
) -> tf.Tensor:
    """RandAugment on a batch, each image drawing its own ops and directions.

    Args:
      images: float32 [n, h, w, 3], 0..255.
      seed: int32/int64 [2], the stateless seed for the whole batch.
      num_ops: operations per image (N), drawn with replacement.
      magnitude: M, 0..10; 0 leaves the image as it is, except for flips.
      ops: the names, from `OPS`, to draw from (all by default); e.g.
        `("rotate",)` to apply only rotations.

    Returns:
      float32 [n, h, w, 3], clipped to 0..255.
    """
    if not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"RandAugment magnitude must be in 0..{MAX_MAGNITUDE:g}, got {magnitude}")
    if num_ops < 0:
        raise ValueError(f"RandAugment num_ops must be >= 0, got {num_ops}")
    unknown = sorted(set(ops) - set(OPS))
    if unknown or not ops:
        raise ValueError(f"unknown RandAugment ops {unknown or '(none given)'}: choose from {OPS}")
    images = tf.convert_to_tensor(images, tf.float32)
    if num_ops == 0:
        return images
    draws = _draw(tf.shape(images)[0], seed, num_ops, magnitude / MAX_MAGNITUDE, ops)
    images = _affine_sample(images, _geometry(draws, tf.shape(images)[1:3]))
    return _colour(images, draws)


def randaugment(
    image: tf.Tensor, seed: tf.Tensor, num_ops: int, magnitude: float, *, ops: Sequence[str] = OPS
) -> tf.Tensor:
    """`randaugment_batch` on one float32 [h, w, 3] image, 0..255 (a batch of one)."""
    return randaugment_batch(image[None], seed, num_ops, magnitude, ops=ops)[0]


def _draw(n: tf.Tensor, seed: tf.Tensor, num_ops: int, level: float, ops: Sequence[str]
          ) -> dict[str, tf.Tensor]:
    """Per image and slot [n, num_ops]: the op drawn (an index into `OPS`), its
    direction (+-1) and, for rotation, the angle; plus `level`, M / 10."""
    uniform = stateless_uniform([n, num_ops, 3], seed)
    choice = tf.minimum(tf.cast(uniform[..., 0] * len(ops), tf.int32), len(ops) - 1)
    op = tf.gather(tf.constant([_OP_INDEX[name] for name in ops], tf.int32), choice)
    sign = tf.where(uniform[..., 1] < 0.5, -1.0, 1.0)
    angle = np.deg2rad(MAX_ROTATE_DEGREES) * level * (2.0 * uniform[..., 2] - 1.0)
    return {"op": op, "sign": sign, "angle": angle, "level": tf.constant(level, tf.float32)}


def _chosen(draws: dict[str, tf.Tensor], name: str, value: tf.Tensor, identity: float
            ) -> tf.Tensor:
    """[n, num_ops]: `value` in the slots that drew op `name`, `identity` elsewhere."""
    return tf.where(tf.equal(draws["op"], _OP_INDEX[name]), value, identity)


def _geometry(draws: dict[str, tf.Tensor], size: tf.Tensor) -> tf.Tensor:
    """float32 [n, 3, 3]: per image, the map from output to input pixels.

    In homogeneous (x, y, 1) coordinates about the image's centre, composed
    over the image's slots in the order drawn. Each op's inverse has the
    same distribution as the op (random sign), so the map is drawn directly.
    """
    height, width = tf.unstack(tf.cast(size, tf.float32))
    level, sign = draws["level"], draws["sign"]
    zero, one = tf.zeros_like(sign), tf.ones_like(sign)

    def matrix(rows):  # 3 x 3 nested lists of [n, num_ops] -> [n, num_ops, 3, 3]
        return tf.stack([tf.stack(row, -1) for row in rows], -2)

    angle = _chosen(draws, "rotate", draws["angle"], 0.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # A flip's sign says which axis it mirrors.
    flip = tf.equal(draws["op"], _OP_INDEX["flip"])
    flip_x = tf.where(flip & (sign < 0), -1.0, 1.0)
    flip_y = tf.where(flip & (sign > 0), -1.0, 1.0)
    shear_x = _chosen(draws, "shear_x", MAX_SHEAR * level * sign, 0.0)
    shear_y = _chosen(draws, "shear_y", MAX_SHEAR * level * sign, 0.0)
    shift_x = _chosen(draws, "translate_x", MAX_TRANSLATE * level * sign * width, 0.0)
    shift_y = _chosen(draws, "translate_y", MAX_TRANSLATE * level * sign * height, 0.0)
    # A slot draws one op, so all but one factor is the identity and their
    # order within a slot does not matter.
    slots = matrix([[cos * flip_x, -sin * flip_y, zero],
                    [sin * flip_x, cos * flip_y, zero],
                    [zero, zero, one]])
    slots = slots @ matrix([[one, shear_x, shift_x], [shear_y, one, shift_y], [zero, zero, one]])
    maps = slots[:, 0]
    for slot in range(1, slots.shape[1]):
        maps = maps @ slots[:, slot]
    return maps


def _affine_sample(images: tf.Tensor, maps: tf.Tensor) -> tf.Tensor:
    """Bilinear samples of `images` [n, h, w, 3] at `maps` [n, 3, 3] of each output pixel.

    Outside the image, the image reflected about its edges (any distance
    out). One flat gather per corner (`batch_dims`), which XLA fuses with the
    interpolation; an identity map returns the image exactly.
    """
    shape = tf.shape(images)
    n, height, width = shape[0], shape[1], shape[2]
    centre_y = (tf.cast(height, tf.float32) - 1) / 2
    centre_x = (tf.cast(width, tf.float32) - 1) / 2
    y, x = tf.meshgrid(tf.range(height, dtype=tf.float32) - centre_y,
                       tf.range(width, dtype=tf.float32) - centre_x, indexing="ij")
    points = tf.stack([tf.reshape(x, [-1]), tf.reshape(y, [-1]), tf.ones_like(tf.reshape(x, [-1]))])
    source = maps[:, :2] @ points  # [n, 2, h * w]
    source_x = _reflect(source[:, 0] + centre_x, width)
    source_y = _reflect(source[:, 1] + centre_y, height)
    x0, y0 = tf.floor(source_x), tf.floor(source_y)
    weight_x, weight_y = (source_x - x0)[..., None], (source_y - y0)[..., None]
    # Reflected points lie within half a pixel of the edge pixels' centres,
    # where clamping the neighbours is the reflection.
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    x1, y1 = tf.minimum(x0 + 1, width - 1), tf.minimum(y0 + 1, height - 1)
    x0, y0 = tf.maximum(x0, 0), tf.maximum(y0, 0)
    flat = tf.reshape(images, [n, -1, 3])

    def at(y, x):
        return tf.gather(flat, y * width + x, batch_dims=1)

    top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * weight_x
    bottom = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * weight_x
    return tf.reshape(top + (bottom - top) * weight_y, shape)


def _reflect(coordinate: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """Pixel coordinates folded into [-0.5, length - 0.5] by reflection about the edges.

    Reflecting about the outer edges of the edge pixels (`d c b a | a b c d |
    d c b a`, numpy's "symmetric"), the same at any distance: a rotated
    corner can lie more than a whole image away.
    """
    length = tf.cast(length, tf.float32)
    folded = tf.math.floormod(coordinate + 0.5, 2 * length)
    return tf.where(folded >= length, 2 * length - folded, folded) - 0.5


def _colour(images: tf.Tensor, draws: dict[str, tf.Tensor]) -> tf.Tensor:
    """The colour ops, each on every image with its own factor (1: unchanged), clipped.

    Brightness, contrast, saturation and hue are each affine in the pixel
    values, so they compose into one affine map per image, applied in one
    pass: XLA would not fuse them across contrast's mean. Clipped once after
    them, and after sharpness.
    """
    level, sign = draws["level"], draws["sign"]

    def factor(name: str, max_change: float) -> tf.Tensor:  # [n, 1, 1]
        factors = _chosen(draws, name, 1.0 + max_change * level * sign, 1.0)
        return tf.reduce_prod(factors, axis=1)[:, None, None]

    brightness = factor("brightness", MAX_BRIGHTNESS)
    contrast = factor("contrast", MAX_CONTRAST)
    saturation = factor("saturation", MAX_SATURATION)
    hue = tf.reduce_sum(_chosen(draws, "hue", np.deg2rad(MAX_HUE_DEGREES) * level * sign, 0.0),
                        axis=1)[:, None, None]
    # Matrices act on pixels as column vectors, [n, 3, 3]. Saturation blends
    # with the grey of the same luma; hue turns the chroma about it.
    grey = np.ones([3, 1], np.float32) * _LUMA.astype(np.float32)[None]
    saturate = np.eye(3, dtype=np.float32) + (saturation - 1.0) * (np.eye(3) - grey)
    turn_hue = np.eye(3, dtype=np.float32) + (tf.cos(hue) - 1.0) * _HUE_COS + tf.sin(hue) * _HUE_SIN
    colour = turn_hue @ saturate
    # Contrast scales the brightened image about its (brightened) mean
    # colour, per channel as `tf.image.adjust_contrast`, not about PIL's grey:
    # the scene keeps its colour; greying it is saturation's part.
    mean = tf.reduce_mean(images, axis=[1, 2])[..., None]  # [n, 3, 1]
    matrix = colour * (brightness * contrast)
    offset = (colour @ mean)[..., 0] * (brightness * (1.0 - contrast))[..., 0]  # [n, 3]
    # Three multiply-adds per value, which XLA fuses; a batched 3 x 3 matmul
    # (einsum) is a slow dot of a tiny matrix.
    images = tf.clip_by_value(
        offset[:, None, None]
        + tf.add_n([images[..., k : k + 1] * matrix[:, None, None, :, k] for k in range(3)]),
        0.0, 255.0)
    sharpness = factor("sharpness", MAX_SHARPNESS)[..., None]
    # x + (f - 1)(x - smooth): exactly x for f = 1.
    return tf.clip_by_value(images + (sharpness - 1.0) * (images - _smooth(images)), 0.0, 255.0)


def _smooth(images: tf.Tensor) -> tf.Tensor:
    """PIL's 3x3 smoothing of [n, h, w, 3], the border reflected: a flat image stays flat.

    The kernel is a 3x3 box plus 4 times the centre, over 13; the box as two
    3-tap sums, a quarter of the work of 9 taps (XLA's depthwise
    convolution is slower still on CPU).
    """
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    rows = padded[:, :, :-2] + padded[:, :, 1:-1] + padded[:, :, 2:]
    box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    return (box + 4.0 * images) * (1.0 / 13.0)
