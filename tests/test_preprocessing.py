"""Each preprocessing op on tiny tensors, eagerly and inside tf.data.

Ops can behave differently in a traced tf.data map (unknown static shapes,
Python values frozen at trace time), so every check runs both ways through
`run_both_ways`, which also asserts that the two agree exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import preprocessing
from tests.op_helpers import encode, gradient_image, run_both_ways, seed


def closest_window_error(crop: np.ndarray, image: np.ndarray) -> float:
    """Mean absolute difference between `crop` and the best-matching window of `image`."""
    h, w = crop.shape[:2]
    return min(
        np.abs(image[y : y + h, x : x + w].astype(int) - crop).mean()
        for y in range(image.shape[0] - h + 1)
        for x in range(image.shape[1] - w + 1)
    )


def test_decode_and_random_crop_is_a_window_of_the_image():
    jpeg = encode(gradient_image(32, 24), "JPEG")
    full = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    shapes = set()
    for value in range(6):
        crop = run_both_ways(preprocessing.decode_and_random_crop, jpeg, seed(value))
        assert crop.dtype == np.uint8 and crop.shape[2] == 3
        area = crop.shape[0] * crop.shape[1] / (32 * 24)
        # The sampler rounds the window to whole pixels.
        assert 0.2 <= area <= 1.0
        assert 0.7 <= crop.shape[1] / crop.shape[0] <= 1.4
        # Not bit-exact: chroma upsampling differs at the window's edges
        # (<0.2 levels on average); the next-best offset is ~3.6 levels off.
        assert closest_window_error(crop, full) < 1.0
        shapes.add(crop.shape)
    assert len(shapes) > 1, "every seed gave the same window"


def test_decode_and_random_crop_same_seed_same_window():
    jpeg = encode(gradient_image(32, 24), "JPEG")
    first = preprocessing.decode_and_random_crop(jpeg, seed(7))
    np.testing.assert_array_equal(first, preprocessing.decode_and_random_crop(jpeg, seed(7)))


@pytest.mark.parametrize(
    "array",
    [
        np.full((5, 7, 4), [10, 200, 30, 128], np.uint8),  # RGBA: alpha dropped
        np.full((5, 7), 90, np.uint8),  # grayscale: replicated
        np.full((5, 7, 3), [10, 200, 30], np.uint8),
    ],
    ids=["rgba", "gray", "rgb"],
)
def test_decode_image_png_gives_rgb(array):
    image = run_both_ways(preprocessing.decode_image, encode(array, "PNG"))
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    expected = array[..., :3] if array.ndim == 3 else np.repeat(array[..., None], 3, -1)
    np.testing.assert_array_equal(image, expected)


def test_decode_image_jpeg():
    image = run_both_ways(
        preprocessing.decode_image, encode(np.full((6, 4, 3), 128, np.uint8), "JPEG")
    )
    assert image.shape == (6, 4, 3)
    np.testing.assert_allclose(image, 128, atol=2)


def test_center_crop_takes_the_central_square():
    image = np.arange(6 * 10 * 3).reshape(6, 10, 3)
    crop = run_both_ways(preprocessing.center_crop, tf.constant(image))
    # Shorter side 6 * 0.875 = 5.25 -> 5; centred: rows 0..4, columns 2..6.
    np.testing.assert_array_equal(crop, image[0:5, 2:7])
    np.testing.assert_array_equal(
        run_both_ways(lambda x: preprocessing.center_crop(x, 0.5), tf.constant(image)),
        image[1:4, 3:6],
    )


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("shape", [(3, 5, 3), (40, 30, 3)], ids=["upscale", "downscale"])
def test_resize_to_square_float(shape, antialias):
    image = tf.fill(shape, tf.constant(77, tf.uint8))
    resized = run_both_ways(lambda x: preprocessing.resize(x, 8, antialias=antialias), image)
    assert resized.shape == (8, 8, 3) and resized.dtype == np.float32
    np.testing.assert_allclose(resized, 77, atol=1e-3)


def dihedral_images(image: np.ndarray) -> list[np.ndarray]:
    """The 8 flips and rotations of a square image."""
    return [np.rot90(flipped, k) for flipped in (image, image[:, ::-1]) for k in range(4)]


def test_random_flip_and_rotate_draws_all_symmetries():
    image = np.arange(4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)
    symmetries = dihedral_images(image)
    seeds = tf.stack([seed(value) for value in range(48)])
    # One call over all seeds: tracing a tf.data map per seed would be slow.
    outputs = run_both_ways(
        lambda x, s: tf.map_fn(
            lambda one: preprocessing.random_flip_and_rotate(x, one),
            s,
            fn_output_signature=tf.float32,
        ),
        tf.constant(image),
        seeds,
    )
    seen = set()
    for out in outputs:
        matches = [i for i, s in enumerate(symmetries) if np.array_equal(out, s)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))


def test_normalize_uses_mean_and_std_on_unit_scale():
    image = tf.constant([[[0, 255, 51]]], tf.uint8)
    out = run_both_ways(
        lambda x: preprocessing.normalize(x, (0.5, 0.5, 0.2), (0.5, 0.25, 0.1)), image
    )
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[[-1.0, 2.0, 0.0]]], atol=1e-6)


def test_preprocess_for_train_keeps_a_solid_colour():
    jpeg = encode(np.full((30, 50, 3), [200, 100, 50], np.uint8), "JPEG")
    mean, std = (0.4, 0.4, 0.4), (0.2, 0.2, 0.2)
    seeds = tf.stack([seed(value) for value in range(3)])
    out = run_both_ways(
        lambda b, s: preprocessing.preprocess_for_train(b, s, 16, mean, std),
        tf.stack([jpeg] * 3), seeds,
    )
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.float32
    expected = (np.array([200, 100, 50]) / 255 - 0.4) / 0.2
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=3 / 255 / 0.2)


def test_preprocess_for_train_augments_each_image_with_its_own_seed():
    jpeg = encode(gradient_image(40, 40), "JPEG")
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    seeds = tf.stack([seed(1), seed(2), seed(1)])
    out = run_both_ways(
        lambda b, s: preprocessing.preprocess_for_train(b, s, 16, mean, std),
        tf.stack([jpeg] * 3), seeds,
    )
    # Same seed, same crop and flips, wherever the image sits in the batch.
    np.testing.assert_array_equal(out[0], out[2])
    assert np.abs(out[0] - out[1]).max() > 0.5
    # Each output is a crop of the whole gradient, resized (values in range).
    assert out.min() >= (0 - 0.5) / 0.25 - 1e-3 and out.max() <= (1 - 0.5) / 0.25 + 1e-3


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_preprocess_for_eval_matches_crop_resize_normalize(fmt):
    array = gradient_image(20, 28)
    mean, std = (0.3, 0.3, 0.2), (0.1, 0.1, 0.1)
    other = np.zeros((9, 9, 3), np.uint8)
    batch = tf.stack([encode(array, fmt), encode(other, fmt)])
    both = run_both_ways(lambda b: preprocessing.preprocess_for_eval(b, 12, mean, std), batch)
    assert both.shape == (2, 12, 12, 3) and both.dtype == np.float32
    out = both[0]
    # Images of a batch are processed independently.
    np.testing.assert_allclose(both[1], np.broadcast_to((0 - np.array(mean)) / std, (12, 12, 3)),
                               atol=1e-5)
    if fmt == "PNG":  # lossless, so the composition can be recomputed exactly
        crop = array[1:18, 5:22]  # side int(20 * 0.875) = 17, centred
        resized = tf.image.resize(crop, [12, 12], antialias=True).numpy()  # eval always antialiases
        np.testing.assert_allclose(out, (resized / 255 - mean) / std, atol=1e-4)


def test_random_flip_and_rotate_non_square():
    image = np.arange(2 * 3 * 1).reshape(2, 3, 1).astype(np.uint8)
    shapes = set()
    for value in range(8):
        out = run_both_ways(preprocessing.random_flip_and_rotate, tf.constant(image), seed(value))
        assert out.dtype == np.uint8
        shapes.add(out.shape)
        # Still the same pixels, only moved.
        assert sorted(out.ravel()) == sorted(image.ravel())
    assert shapes == {(2, 3, 1), (3, 2, 1)}


def test_normalize_without_a_static_shape():
    # The same values whether or not the shape is known when tracing.
    normalize = tf.function(
        lambda x: preprocessing.normalize(x, (0.5, 0.5, 0.2), (0.5, 0.25, 0.1)),
        input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
    )
    image = tf.constant([[[0, 255, 51], [255, 0, 0]]], tf.uint8)
    np.testing.assert_allclose(normalize(image), [[[-1.0, 2.0, 0.0], [1.0, -2.0, -2.0]]], atol=1e-6)


def test_normalize_a_batch():
    batch = tf.constant([[[[0, 255, 51]]], [[[255, 0, 0]]]], tf.uint8)
    out = run_both_ways(
        lambda x: preprocessing.normalize(x, (0.5, 0.5, 0.2), (0.5, 0.25, 0.1)), batch
    )
    np.testing.assert_allclose(out, [[[[-1.0, 2.0, 0.0]]], [[[1.0, -2.0, -2.0]]]], atol=1e-6)
