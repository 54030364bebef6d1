"""The cached path's batched augmentation on tiny tensors: eagerly, in tf.data, under XLA.

Like the per-image ops of `tests/test_preprocessing.py`, each check runs
through `run_both_ways`; the crops are also compared with TF's own
`crop_and_resize` compiled as the pipeline runs them.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from input_pipeline import cached_augment
from tests.op_helpers import encode, gradient_image, run_both_ways, seed


def test_cache_side_keeps_the_smallest_window_at_the_output_size():
    # The smallest training window covers a quarter of the area: half the side.
    assert cached_augment.cache_side(64) == 128
    assert cached_augment.cache_side(64, area_range=(0.5, 1.0)) == 91


def test_decode_for_cache_squeezes_and_keeps_a_transposed_copy():
    array = gradient_image(30, 50)
    png = encode(array, "PNG")
    images = run_both_ways(lambda b: cached_augment.decode_for_cache(b, 16)[0], png)
    shape = run_both_ways(lambda b: cached_augment.decode_for_cache(b, 16)[1], png)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(shape, [30.0, 50.0])
    np.testing.assert_array_equal(images[1], images[0].transpose(1, 0, 2))
    resized = tf.image.resize(array, [16, 16], antialias=True).numpy()
    np.testing.assert_allclose(images[0], resized, atol=0.51)


def cached_batch(array: np.ndarray, side: int, n: int) -> tuple[tf.Tensor, tf.Tensor]:
    images, shape = cached_augment.decode_for_cache(encode(array, "PNG"), side)
    return tf.stack([images] * n), tf.stack([shape] * n)


def test_random_crop_flip_rotate_batch_draws_all_symmetries_of_the_whole_image():
    # Four distinct quadrants; windows of the whole (square) image, so each
    # output is the image under one of the 8 symmetries of the square.
    array = np.zeros((16, 16, 3), np.uint8)
    array[:8, :8], array[:8, 8:], array[8:, :8] = [255, 0, 0], [0, 255, 0], [0, 0, 255]
    images, shapes = cached_batch(array, 16, 64)
    out = run_both_ways(
        lambda i, s, seed: cached_augment.random_crop_flip_rotate_batch(
            i, s, seed, 16, area_range=(1.0, 1.0), aspect_ratio_range=(1.0, 1.0)
        ),
        images, shapes, seed(5),
    )
    assert out.shape == (64, 16, 16, 3) and out.dtype == np.float32
    symmetries = [np.rot90(a, k) for a in (array, array.transpose(1, 0, 2)) for k in range(4)]
    found = set()
    for image in out:
        matches = [k for k, s in enumerate(symmetries) if np.abs(image - s).max() < 1]
        assert len(matches) == 1
        found.add(matches[0])
    assert found == set(range(8))


def test_random_crop_flip_rotate_batch_keeps_the_original_aspect_ratio():
    # A 40 x 80 image squeezed into a 64 x 64 cache. A square window of a
    # quarter of the area is 28 x 28 original pixels: 0.71 of the height and
    # 0.35 of the width. Channel 0 grows down the rows and channel 1 along
    # the columns, so their spreads measure the window in each direction,
    # whatever the flips and transposes did to the output.
    y, x = np.mgrid[:40, :80]
    array = np.stack([y * 255 // 39, x * 255 // 79, np.zeros_like(x)], -1).astype(np.uint8)
    images, shapes = cached_batch(array, 64, 16)
    out = cached_augment.random_crop_flip_rotate_batch(
        images, shapes, seed(1), 32, area_range=(0.25, 0.25), aspect_ratio_range=(1.0, 1.0)
    ).numpy()
    spread = out.max(axis=(1, 2)) - out.min(axis=(1, 2))  # [n, 3]
    np.testing.assert_allclose(spread[:, 0] / 255, 0.71, atol=0.04)
    np.testing.assert_allclose(spread[:, 1] / 255, 0.35, atol=0.04)


def test_random_crop_flip_rotate_batch_keeps_a_solid_colour():
    images, shapes = cached_batch(np.full((30, 50, 3), [200, 100, 50], np.uint8), 32, 8)
    out = cached_augment.random_crop_flip_rotate_batch(images, shapes, seed(2), 16).numpy()
    np.testing.assert_allclose(out, np.broadcast_to([200, 100, 50], out.shape), atol=0.5)


def test_crop_and_resize_windows_matches_one_crop_and_resize_compiled_or_not():
    # The two 1-D passes must give what one 2-D bilinear crop gives, for
    # flipped windows (corners swapped) and transposed outputs alike.
    rng = np.random.default_rng(0)
    n, side, size = 12, 20, 7
    array = rng.integers(0, 256, [n, side, side, 3]).astype(np.uint8)
    images = tf.constant(np.stack([array, array.transpose(0, 2, 1, 3)], 1))
    boxes = rng.uniform(0.0, 1.0, [n, 4]).astype(np.float32)  # unordered corners: flips
    transpose = np.arange(n) % 2 == 1
    args = images, tf.constant(boxes), tf.constant(transpose)
    crop = lambda i, b, t: cached_augment.crop_and_resize_windows(i, b, t, size)  # noqa: E731
    out = run_both_ways(crop, *args)
    compiled = tf.function(crop, jit_compile=True)(*args).numpy()  # as the pipeline runs it
    expected = tf.image.crop_and_resize(array, boxes, np.arange(n), [size, size]).numpy()
    expected[transpose] = expected[transpose].transpose(0, 2, 1, 3)
    assert out.shape == compiled.shape == (n, size, size, 3)
    np.testing.assert_allclose(out, expected, atol=1e-3)
    # XLA may fuse a multiply and an add of the sample positions into one
    # rounding: a few thousandths of a level out of 255.
    np.testing.assert_allclose(compiled, expected, atol=1e-2)
