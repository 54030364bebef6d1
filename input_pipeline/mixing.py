"""mixup and CutMix of training batches: pure, stateless, XLA-compilable.

mixup (Zhang et al. 2018) blends each image with a partner,
lam * a + (1 - lam) * b; CutMix (Yun et al. 2019) pastes a box of the partner
over the image instead. Either way the targets are mixed by the same weight,
lam ~ Beta(alpha, alpha) (for CutMix, the fraction of the image left its own).
As timm does, one lam and one choice per batch, and each image's partner is
the image at the mirrored position of the batch (the batch reversed; in an
odd batch the middle image is its own partner), which the shuffle made random.

Mixing is linear in the pixels, so it commutes with the per-channel affine
normalisation: `dataset.py` mixes normalised batches, after all other
augmentation. The targets carry no label smoothing; the loss applies it.

It runs in the input pipeline, not in the training step, because:
- the pipeline already draws a stateless seed per batch, so mixing is
  another pure function of (batch, seed), tested like the crops;
- every replica's batch comes from its own pipeline, so partners are drawn
  within a replica either way, and no collective is needed;
- the compiled step (XLA on GPU and TPU) stays one program: only the labels'
  type tells it that targets are soft, and it runs on the accelerator while
  the host mixes the next batches behind the prefetch.
The cost is host CPU per batch, small beside the crops (README).

Pure functions with stateless seeds, like `preprocessing.py`: the same output
eagerly, in a `tf.function`, inside `tf.data` and (up to rounding) under XLA.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

# Random draws that XLA reproduces.
from input_pipeline.preprocessing import split_seed, stateless_uniform

# Gamma candidates drawn per sample (`_log_gamma`). Marsaglia and Tsang's
# method accepts more than 95% of them for shapes >= 1, so all 8 fail about
# once in 10^10 samples.
_GAMMA_CANDIDATES = 8


@dataclasses.dataclass(frozen=True)
class MixOptions:
    """How training batches are mixed.

    Attributes:
      mixup_alpha: Beta(alpha, alpha) of mixup's lam; 0: no mixup.
      cutmix_alpha: the same for CutMix; 0: no CutMix. With both, each mixed
        batch uses one of the two at even odds.
      mix_prob: fraction of batches mixed; the others keep their images and
        get one-hot targets.
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0

    def __post_init__(self):
        if not (self.mixup_alpha >= 0 and self.cutmix_alpha >= 0):  # False for NaN too
            raise ValueError(f"mixup and CutMix alphas must be >= 0, got {self}")
        if not 0 <= self.mix_prob <= 1:
            raise ValueError(f"mix_prob must be in 0..1, got {self.mix_prob}")

    @property
    def enabled(self) -> bool:
        """Whether any batch is mixed."""
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0


def mix_batch(
    images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, num_classes: int, options: MixOptions
) -> tuple[tf.Tensor, tf.Tensor]:
    """mixup or CutMix of a batch with its reverse, as `options` says.

    Args:
      images: float32 [n, h, w, c], normalised or not (mixing is linear).
      labels: int32 [n], each in 0..num_classes - 1.
      seed: int32/int64 [2], the stateless seed of the batch.
      num_classes: length of the targets.
      options: the alphas and the fraction of batches to mix.

    Returns:
      (images float32 [n, h, w, c], targets float32 [n, num_classes]): each
      row of targets sums to 1, with weight on at most the image's own label
      and its partner's.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    own = tf.one_hot(labels, num_classes, dtype=tf.float32)
    if not options.enabled:
        return images, own
    choice_seed, mixup_seed, cutmix_seed, box_seed = tf.unstack(split_seed(seed, 4))
    mix, use_cutmix = tf.unstack(stateless_uniform([2], choice_seed))
    mix = mix < options.mix_prob
    if options.mixup_alpha > 0 and options.cutmix_alpha > 0:
        use_cutmix = use_cutmix < 0.5
    else:
        use_cutmix = tf.constant(options.cutmix_alpha > 0)
    # The weight each pixel of an image keeps, [h, w] or a scalar, and the
    # weight of its own label.
    keep, lam = tf.ones([]), tf.ones([])
    if options.mixup_alpha > 0:
        mixup_lam = sample_beta(mixup_seed, options.mixup_alpha)
        keep = tf.where(use_cutmix, keep, mixup_lam)
        lam = tf.where(use_cutmix, lam, mixup_lam)
    if options.cutmix_alpha > 0:
        cutmix_lam = sample_beta(cutmix_seed, options.cutmix_alpha)
        box_mask = _cutmix_box(tf.shape(images)[1:3], cutmix_lam, box_seed)
        # Corrected to the box as clipped to the image.
        box_lam = 1.0 - tf.reduce_mean(box_mask)
        keep = tf.where(use_cutmix, 1.0 - box_mask, keep)
        lam = tf.where(use_cutmix, box_lam, lam)
    # A batch left unmixed keeps weight 1: its images exactly as they were.
    keep = tf.where(mix, keep, tf.ones_like(keep))[..., None]
    lam = tf.where(mix, lam, 1.0)
    partners = tf.reverse(images, [0])
    images = images * keep + partners * (1.0 - keep)
    return images, own * lam + tf.reverse(own, [0]) * (1.0 - lam)


def _cutmix_box(size: tf.Tensor, lam: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """float32 [h, w]: 1 in a box of about (1 - lam) of the image's area, 0 elsewhere.

    The box has the image's aspect ratio and a centre uniform over the
    image's pixels, and is clipped to the image (so may come out smaller),
    as in the CutMix paper and timm.
    """
    height, width = size[0], size[1]
    ratio = tf.sqrt(1.0 - lam)
    half_height = tf.cast(tf.round(tf.cast(height, tf.float32) * ratio), tf.int32) // 2
    half_width = tf.cast(tf.round(tf.cast(width, tf.float32) * ratio), tf.int32) // 2
    centre = tf.cast(stateless_uniform([2], seed) * tf.cast(size, tf.float32), tf.int32)
    rows = tf.range(height)
    columns = tf.range(width)
    in_rows = (rows >= centre[0] - half_height) & (rows < centre[0] + half_height)
    in_columns = (columns >= centre[1] - half_width) & (columns < centre[1] + half_width)
    return tf.cast(in_rows[:, None] & in_columns[None, :], tf.float32)


def sample_beta(seed: tf.Tensor, alpha: float, shape: tuple[int, ...] = ()) -> tf.Tensor:
    """float32 samples of Beta(alpha, alpha), as G1 / (G1 + G2) for G ~ Gamma(alpha).

    `tf.random.stateless_gamma` has no XLA kernel, so the gammas come from
    `_log_gamma`. Through their logarithms, as sigmoid(log G1 - log G2):
    for small alphas the gammas themselves underflow to 0.

    Args:
      seed: int32/int64 [2].
      alpha: > 0.
      shape: of the samples.
    """
    first, second = tf.unstack(split_seed(seed, 2))
    return tf.sigmoid(_log_gamma(first, alpha, shape) - _log_gamma(second, alpha, shape))


def _log_gamma(seed: tf.Tensor, alpha: float, shape: tuple[int, ...]) -> tf.Tensor:
    """log of Gamma(alpha, 1) samples: Marsaglia and Tsang (2000), stateless.

    Their method draws a shape >= 1 by rejection; a shape < 1 is boosted,
    G(alpha) = G(alpha + 1) * U^(1 / alpha). A fixed number of candidates,
    the first accepted one kept, instead of a loop: no control flow, for
    XLA (should all fail, d, near the mean, stands in).
    """
    d = alpha + 1.0 - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * d)
    candidate_seed, boost_seed = tf.unstack(split_seed(seed, 2))
    uniform = stateless_uniform([*shape, _GAMMA_CANDIDATES, 3], candidate_seed)
    # Box-Muller normals from the uniforms; 1 - u is in (0, 1], so logs are finite.
    z = tf.sqrt(-2.0 * tf.math.log(1.0 - uniform[..., 0])) * tf.cos(2 * np.pi * uniform[..., 1])
    v = (1.0 + c * z) ** 3
    safe_v = tf.where(v > 0, v, 1.0)
    accept = (v > 0) & (
        tf.math.log(1.0 - uniform[..., 2]) < 0.5 * z**2 + d - d * safe_v + d * tf.math.log(safe_v))
    first = tf.argmax(tf.cast(accept, tf.int32), axis=-1, output_type=tf.int32)
    chosen = tf.where(tf.reduce_any(accept, axis=-1),
                      tf.gather(safe_v, first, batch_dims=len(shape)), 1.0)
    boost = stateless_uniform(shape, boost_seed)
    return np.log(d) + tf.math.log(chosen) + tf.math.log(1.0 - boost) / alpha
