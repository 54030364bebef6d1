"""mixup and CutMix: what a mixed batch may hold, and the distribution of its lambda.

Batches of random images with distinct labels, so every output pixel and
target weight says where it came from: the image itself or its partner (the
image at the mirrored position of the batch).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import mixing
from input_pipeline.mixing import MixOptions
from tests.op_helpers import seed

N, SIZE, CLASSES = 6, 12, 6
MIXUP, CUTMIX = MixOptions(mixup_alpha=1.0), MixOptions(cutmix_alpha=1.0)
BOTH = MixOptions(mixup_alpha=1.0, cutmix_alpha=1.0)


def batch(n: int = N, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Random (normalised-looking) images, and labels that differ from the partners'."""
    images = np.random.default_rng(0).normal(size=[n, size, size, 3]).astype(np.float32)
    return images, np.arange(n, dtype=np.int32) % CLASSES


def mix(options: MixOptions, seed_value: int, n: int = N) -> tuple[np.ndarray, ...]:
    """(images, labels, mixed images, targets)."""
    images, labels = batch(n)
    out, targets = mixing.mix_batch(tf.constant(images), tf.constant(labels), seed(seed_value),
                                    CLASSES, options)
    assert out.dtype == tf.float32 and targets.dtype == tf.float32
    assert out.shape == images.shape and targets.shape == (n, CLASSES)
    return images, labels, out.numpy(), targets.numpy()


def partner_weights(labels: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[n]: the weight of each image's partner's label."""
    return targets[np.arange(len(labels)), labels[::-1]]


def kind(images: np.ndarray, out: np.ndarray) -> str:
    """'none', 'cutmix' (every pixel the image's own or its partner's) or 'mixup' (blends)."""
    if np.array_equal(out, images):
        return "none"
    own = np.all(out == images, axis=-1)
    partner = np.all(out == images[::-1], axis=-1)
    return "cutmix" if np.all(own | partner) else "mixup"


@pytest.mark.parametrize("options", [MIXUP, CUTMIX, BOTH], ids=["mixup", "cutmix", "both"])
def test_targets_are_distributions_over_the_image_and_its_partner(options):
    for seed_value in range(8):
        _, labels, _, targets = mix(options, seed_value)
        np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
        assert (targets >= 0).all()
        assert ((targets > 0).sum(axis=1) <= 2).all()
        own = targets[np.arange(N), labels]
        np.testing.assert_allclose(own + partner_weights(labels, targets), 1.0, atol=1e-6)


def test_mixup_blends_each_image_with_its_partner_by_the_targets_lambda():
    kinds = set()
    for seed_value in range(6):
        images, labels, out, targets = mix(MIXUP, seed_value)
        lam = targets[np.arange(N), labels]
        np.testing.assert_allclose(lam, lam[0], atol=1e-6)  # one lambda per batch
        expected = lam[0] * images + (1 - lam[0]) * images[::-1]
        np.testing.assert_allclose(out, expected, atol=1e-5)
        kinds.add(kind(images, out))
    assert kinds == {"mixup"}


def test_cutmix_pastes_one_box_of_the_partner_weighted_by_its_area():
    clipped = 0
    for seed_value in range(12):
        images, labels, out, targets = mix(CUTMIX, seed_value)
        assert kind(images, out) in ("cutmix", "none")
        pasted = np.all(out == images[::-1], axis=-1) & ~np.all(out == images, axis=-1)
        # The same box in every image, and a box: the product of its rows and columns.
        assert (pasted == pasted[0]).all()
        rows, columns = pasted[0].any(axis=1), pasted[0].any(axis=0)
        np.testing.assert_array_equal(pasted[0], rows[:, None] & columns[None, :])
        # Weighted by the area actually pasted, after clipping to the image.
        np.testing.assert_allclose(partner_weights(labels, targets), pasted[0].mean(), atol=1e-6)
        clipped += rows[0] or rows[-1] or columns[0] or columns[-1]
    assert clipped, "no box reached the border: clipping untested"


def test_mix_prob_zero_leaves_images_and_gives_one_hot_targets():
    options = MixOptions(mixup_alpha=1.0, cutmix_alpha=1.0, mix_prob=0.0)
    assert not options.enabled
    images, labels, out, targets = mix(options, 0)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(targets, np.eye(CLASSES)[labels])


def test_mix_prob_mixes_that_fraction_of_batches_and_leaves_the_rest_exactly():
    kinds = []
    for seed_value in range(40):
        images, labels, out, targets = mix(MixOptions(mixup_alpha=1.0, mix_prob=0.5), seed_value)
        kinds.append(kind(images, out))
        if kinds[-1] == "none":
            np.testing.assert_array_equal(targets, np.eye(CLASSES)[labels])
    assert 10 <= kinds.count("none") <= 30, kinds


def test_only_the_method_with_an_alpha_is_used_and_both_at_even_odds():
    assert {kind(*mix(MIXUP, s)[::2]) for s in range(10)} == {"mixup"}
    assert {kind(*mix(CUTMIX, s)[::2]) for s in range(10)} <= {"cutmix", "none"}
    both = [kind(*mix(BOTH, s)[::2]) for s in range(30)]
    assert 6 <= both.count("cutmix") <= 24 and 6 <= both.count("mixup") <= 24, both


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the CDFs."""
    grid = np.sort(np.concatenate([a, b]))
    return float(np.abs(np.searchsorted(np.sort(a), grid, side="right") / len(a)
                        - np.searchsorted(np.sort(b), grid, side="right") / len(b)).max())


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_lambda_follows_beta_alpha_alpha(alpha):
    samples = mixing.sample_beta(seed(1), alpha, (20000,)).numpy()
    assert np.isfinite(samples).all() and samples.min() >= 0 and samples.max() <= 1
    reference = np.random.default_rng(1).beta(alpha, alpha, 20000)
    # 0.02 is about the 0.1% critical value for two samples of 20000.
    assert ks_distance(samples, reference) < 0.02
    np.testing.assert_allclose(samples.mean(), 0.5, atol=0.01)
    np.testing.assert_allclose(samples.var(), 1 / (4 * (2 * alpha + 1)), rtol=0.05)
    if alpha == 0.2:  # mostly a light touch of one image on the other
        assert np.mean((samples < 0.1) | (samples > 0.9)) > 0.55


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mix_batch_draws_its_lambda_from_beta(alpha):
    # The lambdas of whole batches, one per seed: 200 of them.
    lams = np.array([mix(MixOptions(mixup_alpha=alpha), s, n=2)[3][0, 0] for s in range(200)])
    np.testing.assert_allclose(lams.mean(), 0.5, atol=0.07)
    np.testing.assert_allclose(lams.var(), 1 / (4 * (2 * alpha + 1)), rtol=0.25)


def test_an_odd_batchs_middle_image_is_its_own_partner():
    images, labels, out, targets = mix(MIXUP, 0, n=5)
    np.testing.assert_allclose(out[2], images[2], atol=1e-6)
    np.testing.assert_allclose(targets[2], np.eye(CLASSES)[labels[2]], atol=1e-6)


def test_same_seed_same_mix_and_another_seed_another():
    first = mix(BOTH, 3)
    for a, b in zip(first, mix(BOTH, 3), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[3], mix(BOTH, 4)[3])


def test_eager_tf_data_and_xla_agree():
    images, labels = (tf.constant(x) for x in batch())
    seeds = tf.stack([seed(value) for value in range(4)])  # both methods among them

    def fn(batch_seed):
        return mixing.mix_batch(images, labels, batch_seed, CLASSES, BOTH)

    compiled = tf.function(fn, jit_compile=True)
    data = tf.data.Dataset.from_tensor_slices(seeds).map(fn)
    for batch_seed, in_data in zip(seeds, data, strict=True):
        eager = fn(batch_seed)
        for e, d, c in zip(eager, in_data, compiled(batch_seed), strict=True):
            np.testing.assert_allclose(d.numpy(), e.numpy(), atol=1e-6)
            np.testing.assert_allclose(c.numpy(), e.numpy(), atol=1e-5)


def test_options_are_checked_and_say_when_they_mix():
    assert not MixOptions().enabled
    assert MixOptions(mixup_alpha=0.2).enabled and MixOptions(cutmix_alpha=1.0).enabled
    assert not MixOptions(mixup_alpha=0.2, mix_prob=0.0).enabled
    with pytest.raises(ValueError, match="alphas must be >= 0"):
        MixOptions(mixup_alpha=-0.1)
    with pytest.raises(ValueError, match="alphas must be >= 0"):
        MixOptions(cutmix_alpha=float("nan"))
    with pytest.raises(ValueError, match="mix_prob must be in 0..1"):
        MixOptions(mixup_alpha=1.0, mix_prob=1.5)
