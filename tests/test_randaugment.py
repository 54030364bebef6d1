"""RandAugment's distribution: what each op may and may not do to an image.

Each op is forced alone through `ops=`, on tiny images whose content makes
its effect measurable: ramps whose gradient shows a rotation or shear,
smooth random textures ("soil") for the border, flat and grey images for the
colour ops. The whole function also runs eagerly, in a `tf.function`, in
tf.data and XLA-compiled, as the cached training pipeline runs it.
"""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import randaugment
from tests.op_helpers import seed

SIZE = 24
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def augment(images, op: str | None = None, magnitude: float = 10.0, num_ops: int = 1,
            seed_value: int = 0) -> np.ndarray:
    """`randaugment_batch` of float32 images, with only `op` (or all ops) to draw from."""
    ops = randaugment.OPS if op is None else (op,)
    return randaugment.randaugment_batch(
        tf.constant(images, tf.float32), seed(seed_value), num_ops, magnitude, ops=ops).numpy()


def texture(n: int, size: int = SIZE, seed_value: int = 0, low=40.0, high=215.0,
            cells: int = 6) -> np.ndarray:
    """Smooth random colours in low..high, statistically alike everywhere, as soil is:
    `cells` x `cells` random colours, bilinearly interpolated."""
    coarse = np.random.default_rng(seed_value).uniform(low, high, [n, cells, cells, 3])
    return tf.image.resize(coarse, [size, size]).numpy().astype(np.float32)


def ramp(n: int, axis: str, size: int = SIZE) -> np.ndarray:
    """128 + 4 * x (or y), in pixels from the centre, in every channel."""
    coordinate = np.arange(size) - (size - 1) / 2
    values = 128 + 4 * (coordinate[None, :] if axis == "x" else coordinate[:, None])
    return np.broadcast_to(np.broadcast_to(values, [size, size])[None, :, :, None],
                           [n, size, size, 3]).astype(np.float32)


def gradients(images: np.ndarray, radius: float) -> np.ndarray:
    """[n, 2]: (d/dx, d/dy) of the least-squares plane through channel 0 within `radius` of
    the centre, where a rotation or shear of these tiny images reads no reflected pixel."""
    size = images.shape[1]
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    inside = x**2 + y**2 <= radius**2
    design = np.stack([x[inside], y[inside], np.ones(inside.sum())], 1)
    fit, *_ = np.linalg.lstsq(design, images[:, inside, 0].T, rcond=None)
    return fit[:2].T


def luma(images: np.ndarray) -> np.ndarray:
    return images @ np.array([0.299, 0.587, 0.114])


def rounded(values: np.ndarray, digits: int = 3) -> set[float]:
    return {round(float(value), digits) for value in values}


@pytest.mark.parametrize("op", [op for op in randaugment.OPS if op != "flip"])
def test_magnitude_zero_changes_nothing(op):
    images = texture(8)
    np.testing.assert_allclose(augment(images, op, magnitude=0.0, num_ops=2), images, atol=1e-3)


@pytest.mark.parametrize("op", [op for op in randaugment.OPS if op != "identity"])
def test_every_op_changes_images_at_full_magnitude(op):
    images = texture(8)
    # Sharpness has little to do on smooth textures.
    assert np.abs(augment(images, op) - images).mean() > (0.5 if op == "sharpness" else 3.0)


def test_identity_at_full_magnitude_is_the_identity():
    images = texture(4)
    np.testing.assert_array_equal(augment(images, "identity", num_ops=3), images)


def test_flip_mirrors_along_one_axis_or_the_other_at_any_magnitude():
    images = texture(16)
    axes = []
    for magnitude in (0.0, 10.0):
        for image, out in zip(images, augment(images, "flip", magnitude), strict=True):
            matches = [axis for axis in (0, 1)
                       if np.allclose(out, np.flip(image, axis), atol=1e-3)]
            assert len(matches) == 1
            axes += matches
    assert set(axes) == {0, 1}


@pytest.mark.parametrize("magnitude", [3.0, 10.0])
def test_rotation_turns_by_any_angle_up_to_18_degrees_per_magnitude_step(magnitude):
    out = augment(ramp(64, "x"), "rotate", magnitude)
    dx, dy = gradients(out, radius=10).T
    # A rotation keeps the ramp's slope and turns its direction.
    np.testing.assert_allclose(np.hypot(dx, dy), 4.0, rtol=0.02)
    angles = np.degrees(np.arctan2(dy, dx))
    limit = 18 * magnitude
    assert np.abs(angles).max() <= limit + 1
    assert np.abs(angles).max() > 0.8 * limit, "the angles do not reach the magnitude's"
    assert (angles < 0).any() and (angles > 0).any()
    if magnitude == 10.0:  # any orientation: every quadrant
        assert (np.histogram(angles, bins=4, range=(-180, 180))[0] >= 5).all()


@pytest.mark.parametrize("op,axis", [("shear_x", "x"), ("shear_y", "y")])
def test_shear_tilts_by_0_03_per_magnitude_step(op, axis):
    for magnitude in (5.0, 10.0):
        dx, dy = gradients(augment(ramp(16, axis), op, magnitude), radius=8).T
        along, across = (dx, dy) if axis == "x" else (dy, dx)
        np.testing.assert_allclose(along, 4.0, rtol=1e-3)
        np.testing.assert_allclose(np.abs(across / along), 0.03 * magnitude, atol=1e-3)
        assert (across < 0).any() and (across > 0).any()


@pytest.mark.parametrize("op,axis", [("translate_x", 2), ("translate_y", 1)])
def test_translation_shifts_by_30_percent_and_reflects_the_border(op, axis):
    # 20 px: a shift of 6, the pixels beyond the edge mirrored (soil goes on).
    images = texture(12, size=20)
    padding = [(0, 0)] * 4
    padding[axis] = (6, 6)
    padded = np.pad(images, padding, mode="symmetric")
    shifted = {shift: np.take(padded, np.arange(20) + 6 + shift, axis=axis) for shift in (-6, 6)}
    found = set()
    for index, out in enumerate(augment(images, op)):
        matches = [s for s, expected in shifted.items()
                   if np.allclose(out, expected[index], atol=1e-3)]
        assert len(matches) == 1
        found.update(matches)
    assert found == {-6, 6}


@pytest.mark.parametrize("op", GEOMETRIC)
def test_geometric_ops_keep_the_image_colours_with_a_reflected_border(op):
    # A black or grey border would pull the mean or the spread away; bilinear
    # samples of the image itself stay within its range. A fine texture, so
    # that 30% of it has about the mean of the rest.
    images = texture(16, cells=16)
    out = augment(images, op)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), images.mean(axis=(1, 2)), atol=10)
    assert (out.std(axis=(1, 2)) > 0.75 * images.std(axis=(1, 2))).all()
    assert (out.min(axis=(1, 2)) >= images.min(axis=(1, 2)) - 1e-3).all()
    assert (out.max(axis=(1, 2)) <= images.max(axis=(1, 2)) + 1e-3).all()


def test_brightness_scales_every_pixel_by_1_plus_or_minus_0_05_per_step():
    images = texture(16, low=40, high=160)
    for magnitude in (4.0, 10.0):
        ratios = augment(images, "brightness", magnitude) / images
        factors = ratios.reshape(16, -1)[:, 0]
        np.testing.assert_allclose(ratios, np.broadcast_to(factors[:, None, None, None],
                                                           ratios.shape), rtol=1e-5)
        change = 0.05 * magnitude
        assert rounded(factors) == {round(1 - change, 3), round(1 + change, 3)}


def test_contrast_scales_about_each_channels_mean_and_keeps_it():
    images = texture(16, low=80, high=170)
    out = augment(images, "contrast")
    mean = images.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out.mean(axis=(1, 2), keepdims=True), mean, atol=1e-2)
    deviation_in, deviation_out = (images - mean).reshape(16, -1), (out - mean).reshape(16, -1)
    factors = (deviation_in * deviation_out).sum(1) / (deviation_in**2).sum(1)
    np.testing.assert_allclose(out - mean, (images - mean) * factors[:, None, None, None],
                               atol=1e-2)
    assert rounded(factors) == {0.5, 1.5}


def test_saturation_keeps_grey_grey_and_scales_colour_about_the_grey_of_same_luma():
    grey = np.repeat(texture(8)[..., :1], 3, axis=-1)
    np.testing.assert_allclose(augment(grey, "saturation"), grey, atol=1e-3)
    images = texture(16, low=80, high=170)
    out = augment(images, "saturation")
    np.testing.assert_allclose(luma(out), luma(images), atol=1e-2)
    chroma_in, chroma_out = images - luma(images)[..., None], out - luma(out)[..., None]
    factors = np.sqrt((chroma_out**2).sum(axis=(1, 2, 3)) / (chroma_in**2).sum(axis=(1, 2, 3)))
    np.testing.assert_allclose(chroma_out, chroma_in * factors[:, None, None, None], atol=1e-2)
    assert rounded(factors) == {0.5, 1.5}


def hues(colours: np.ndarray) -> np.ndarray:
    """HSV hue in degrees of [..., 3] 0..255 colours."""
    flat = colours.reshape(-1, 3) / 255
    return np.array([colorsys.rgb_to_hsv(*c)[0] * 360 for c in flat]).reshape(colours.shape[:-1])


def test_hue_keeps_luma_and_leaves_green_leaves_green():
    # Leaf and seedling greens, HSV hue 80..130 degrees.
    greens = np.array([(60, 140, 40), (90, 160, 60), (40, 100, 30), (120, 170, 60),
                       (70, 130, 50), (30, 200, 30), (150, 200, 50), (100, 180, 90)], np.float32)
    images = np.repeat(np.tile(greens[:, None, None], [1, 4, 4, 1]), 4, axis=0)  # 32 images
    out = augment(images, "hue")
    np.testing.assert_allclose(luma(out), luma(images), atol=2.5)  # up to clipping
    before, after = hues(images[:, 0, 0]), hues(out[:, 0, 0])
    change = after - before
    assert np.abs(change).max() <= 30, "more than a small hue shift"
    assert np.abs(change).min() >= 5, "some image's hue did not shift"
    assert (change < 0).any() and (change > 0).any()
    # Yellowish to bluish green: nowhere near red (0) or blue (240).
    assert 45 <= after.min() and after.max() <= 160


def test_sharpness_keeps_flat_images_flat_and_blurs_or_sharpens_edges():
    flat = np.full([8, SIZE, SIZE, 3], [90, 140, 60], np.float32)
    np.testing.assert_allclose(augment(flat, "sharpness"), flat, atol=1e-3)
    edges = np.full([16, SIZE, SIZE, 3], 80, np.float32)
    edges[:, :, SIZE // 2 :] = 170
    out = augment(edges, "sharpness")
    overshoot = (out.max(axis=(1, 2, 3)) > 170.5) | (out.min(axis=(1, 2, 3)) < 79.5)
    between = ((out > 81) & (out < 169)).any(axis=(1, 2, 3))
    assert overshoot.any() and (between & ~overshoot).any(), "both sharpened and blurred"
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 125, atol=3)


@pytest.mark.parametrize("shape", [(6, 16, 16, 3), (4, 12, 20, 3)], ids=["square", "oblong"])
def test_output_is_finite_clipped_and_shaped_as_the_input(shape):
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, shape).astype(np.float32)
    images[0], images[1] = 0, 255  # extremes, where brightness and sharpening clip
    out = augment(images, num_ops=4)
    assert out.shape == shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 255


def test_same_seed_same_output_and_another_seed_another():
    images = texture(8)
    first = augment(images, num_ops=2, seed_value=3)
    np.testing.assert_array_equal(first, augment(images, num_ops=2, seed_value=3))
    assert not np.allclose(first, augment(images, num_ops=2, seed_value=4), atol=1)


def test_eager_tf_function_tf_data_and_xla_agree():
    images, batch_seed = tf.constant(texture(8)), seed(11)

    def fn(images, batch_seed):
        return randaugment.randaugment_batch(images, batch_seed, 2, 9.0)

    eager = fn(images, batch_seed).numpy()
    graph = tf.function(fn)(images, batch_seed).numpy()
    data = next(iter(tf.data.Dataset.from_tensors((images, batch_seed)).map(fn))).numpy()
    compiled = tf.function(fn, jit_compile=True)(images, batch_seed).numpy()
    # Graphs may reorder float arithmetic (grappler): a few ulps.
    np.testing.assert_allclose(graph, eager, atol=1e-3)
    np.testing.assert_allclose(data, eager, atol=1e-3)
    # XLA rounds differently (fused multiply-adds); its random draws must match.
    np.testing.assert_allclose(compiled, eager, atol=0.25)


def test_images_of_a_batch_draw_their_own_ops():
    images = np.repeat(texture(1), 32, axis=0)
    out = augment(images)
    distinct = {np.round(image, 1).tobytes() for image in out}
    assert len(distinct) >= 12


def test_ops_are_drawn_uniformly_and_with_replacement():
    draws = randaugment._draw(1000, seed(2), 2, 1.0, randaugment.OPS)
    counts = np.bincount(draws["op"].numpy().ravel(), minlength=len(randaugment.OPS))
    # 2000 draws over 12 ops: 167 each, standard deviation 12.
    assert np.abs(counts - 2000 / 12).max() < 50, counts
    # Drawn twice, brightness applies twice: factors 0.5 * 0.5, 0.5 * 1.5, 1.5 * 1.5.
    images = texture(32, low=40, high=100)
    factors = (augment(images, "brightness", num_ops=2) / images).reshape(32, -1)[:, 0]
    assert rounded(factors) == {0.25, 0.75, 2.25}


def test_single_image_equals_the_batch_function_on_a_batch_of_one():
    image = texture(1)[0]
    single = randaugment.randaugment(tf.constant(image), seed(5), 2, 8.0).numpy()
    batch = randaugment.randaugment_batch(tf.constant(image[None]), seed(5), 2, 8.0).numpy()
    assert single.shape == image.shape
    np.testing.assert_array_equal(single, batch[0])
    assert not np.allclose(single, image, atol=1)


@pytest.mark.parametrize(
    "num_ops,magnitude,ops,message",
    [(2, 10.5, randaugment.OPS, "magnitude must be in 0..10"),
     (-1, 5.0, randaugment.OPS, "num_ops must be >= 0"),
     (2, 5.0, ("rotate", "invert"), r"unknown RandAugment ops \['invert'\]")],
)
def test_bad_arguments_are_clear_errors(num_ops, magnitude, ops, message):
    with pytest.raises(ValueError, match=message):
        randaugment.randaugment_batch(tf.zeros([1, 4, 4, 3]), seed(0), num_ops, magnitude, ops=ops)
