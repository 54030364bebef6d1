"""Rendering: one plant, placed and drawn over soil, as a greenhouse photograph.

`render_seedling` draws image `index` of a class from its own random stream:
size of the file, growth stage, the species' parts (`species`), placement in
the frame, plant green, soil, then lighting, shadow and sensor grain. Only the
plant's parts differ between species; everything drawn here comes from one
distribution shared by all classes. PIL and numpy only.
"""

from __future__ import annotations

import colorsys
import math
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from input_pipeline.synthetic.geometry import Part, rotate
from input_pipeline.synthetic.species import CLASS_NAMES, PLANTS

# Sizes spread like the real images' (DATASET.md), with the tail cut at
# _MAX_SIDE because huge PNGs cost generation time and teach a demo nothing new.
_MEDIAN_SIDE = 270
_MIN_SIDE, _MAX_SIDE = 60, 1500
_SQUARE_FRACTION = 0.65
_MIN_ASPECT, _MAX_ASPECT = 0.94, 1.33
_RGBA_FRACTION = 0.1

# Shapes are drawn on a canvas of at most this many pixels and then resized:
# drawing cost stays flat for large outputs, and small outputs get antialiased.
_MIN_CANVAS, _MAX_CANVAS = 128, 320

# Plants are scaled to cover a fraction of the frame drawn from one shared
# range, clamped so that thin-leaved species are not blown up past the frame.
_COVERAGE_RANGE = (0.1, 0.35)
_EXTENT_RANGE = (0.45, 1.15)


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) spread like the real set: log-normal side, mostly square."""
    long_side = round(np.clip(_MEDIAN_SIDE * math.exp(rng.normal(0.0, 0.55)), _MIN_SIDE, _MAX_SIDE))
    if rng.random() < _SQUARE_FRACTION:
        return long_side, long_side
    # Real width/height ratios run from slightly tall to wide (DATASET.md).
    ratio = rng.uniform(_MIN_ASPECT, _MAX_ASPECT)
    short_side = max(_MIN_SIDE, round(long_side / max(ratio, 1.0 / ratio)))
    return (long_side, short_side) if ratio >= 1.0 else (short_side, long_side)


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Value noise in [0, 1]: `cells` random values per side, smoothly upsampled."""
    coarse = Image.fromarray(rng.random((cells, cells), dtype=np.float32), mode="F")
    return np.asarray(coarse.resize(size, Image.BICUBIC), dtype=np.float32)


def _soil(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Brownish-to-grey soil with blotches, grain and pebbles."""
    w, h = size
    # Brown and grey soils, mixed per image, near the real per-channel mean.
    brown = np.array([0.36, 0.28, 0.18]) * rng.uniform(0.75, 1.25)
    grey = np.array([0.34, 0.31, 0.27]) * rng.uniform(0.75, 1.25)
    base = brown + rng.uniform(0.0, 1.0) * (grey - brown)
    texture = (
        1.0
        + 0.35 * (_smooth_noise(rng, size, 4) - 0.5)
        + 0.3 * (_smooth_noise(rng, size, max(4, w // 12)) - 0.5)
        + 0.25 * (rng.random((h, w), dtype=np.float32) - 0.5)
    )
    soil = Image.fromarray(np.uint8(np.clip(texture[..., None] * base * 255, 0, 255)))
    draw = ImageDraw.Draw(soil)
    scale = min(w, h)
    for _ in range(int(rng.integers(10, 70))):
        r = scale * rng.uniform(0.006, 0.035)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        aspect = rng.uniform(0.6, 1.0)
        tone = np.clip((base + rng.uniform(-0.1, 0.1)) * rng.uniform(0.6, 1.7) + rng.uniform(0.0, 0.1), 0, 1)
        box = np.array([x - r, y - r * aspect, x + r, y + r * aspect])
        shadow = tuple(int(c * 255 * 0.55) for c in base)
        draw.ellipse(tuple(box + 0.2 * r), fill=shadow)  # each pebble casts a small shadow
        draw.ellipse(tuple(box), fill=tuple(int(c * 255) for c in tone))
    return soil


def _plant_green(rng: np.random.Generator) -> np.ndarray:
    """The one distribution of plant greens that every species shares."""
    hue = rng.uniform(0.21, 0.31)
    saturation = rng.uniform(0.4, 0.75)
    value = rng.uniform(0.35, 0.7)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value))


def _draw_parts(
    parts: Sequence[Part],
    size: tuple[int, int],
    transform: Callable[[np.ndarray], np.ndarray],
    pixels_per_unit: float,
    green: np.ndarray | None,
) -> tuple[Image.Image | None, Image.Image]:
    """Rasterises parts into a colour layer (unless `green` is None) and a mask."""
    mask = Image.new("L", size, 0)
    mask_draw = ImageDraw.Draw(mask)
    layer = Image.new("RGB", size) if green is not None else None
    layer_draw = ImageDraw.Draw(layer) if layer is not None else None
    for part in parts:
        xy = [tuple(p) for p in transform(part.points).tolist()]
        fill = tuple(int(c) for c in np.clip(green * part.shade * 255, 0, 255)) if green is not None else None
        if part.width > 0:
            width = max(1, round(part.width * pixels_per_unit))
            mask_draw.line(xy, fill=255, width=width, joint="curve")
            if layer_draw is not None:
                layer_draw.line(xy, fill=fill, width=width, joint="curve")
        else:
            mask_draw.polygon(xy, fill=255)
            if layer_draw is not None:
                layer_draw.polygon(xy, fill=fill)
    return layer, mask


def _coverage_at_unit_extent(parts: Sequence[Part], lo: np.ndarray, span: float) -> float:
    """Fraction of a square frame the plant covers when it spans the whole frame."""
    side = 64
    ppu = side / span
    _, mask = _draw_parts(parts, (side, side), lambda p: (p - lo) * ppu, ppu, None)
    return float(np.asarray(mask).mean() / 255.0)


def _fit_plant(
    rng: np.random.Generator, parts: Sequence[Part], canvas: tuple[int, int]
) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
    """Random placement: returns the plant-units-to-pixels map and pixels per unit."""
    points = np.concatenate([p.points for p in parts])
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = float(max(hi - lo))
    # Size the plant for a coverage drawn from one range shared by all
    # classes, so the share of green in the frame says little about species.
    target = rng.uniform(*_COVERAGE_RANGE)
    extent = math.sqrt(target / max(_coverage_at_unit_extent(parts, lo, span), 1e-3))
    extent = float(np.clip(extent, *_EXTENT_RANGE))

    frame = min(canvas)
    ppu = extent * frame / span
    centre = np.array(canvas) / 2 + rng.normal(0.0, 0.06, 2) * frame
    angle = rng.uniform(0.0, 2 * np.pi)
    mirror = np.array([1.0, -1.0]) if rng.random() < 0.5 else np.ones(2)

    def transform(p: np.ndarray) -> np.ndarray:
        return centre + rotate((p - (lo + hi) / 2) * mirror, angle) * ppu

    return transform, ppu


def _photograph(
    rng: np.random.Generator, soil: Image.Image, layer: Image.Image, mask: Image.Image
) -> Image.Image:
    """Composes plant over soil with a shadow, uneven lighting and sensor grain."""
    w, h = soil.size
    frame = min(w, h)
    # A soft shadow offset from the plant, as under the greenhouse lights.
    offset = rng.normal(0.0, 0.012, 2) * frame
    shadow = mask.transform(soil.size, Image.AFFINE, (1, 0, -offset[0], 0, 1, -offset[1]))
    shadow = np.asarray(shadow.filter(ImageFilter.GaussianBlur(frame * 0.01 + 0.5)), np.float32) / 255
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(0.6)), np.float32)[..., None] / 255

    # Leaves are lit unevenly too.
    plant = np.asarray(layer, np.float32) * (0.85 + 0.3 * _smooth_noise(rng, soil.size, 6))[..., None]
    ground = np.asarray(soil, np.float32) * (1.0 - rng.uniform(0.2, 0.45) * shadow)[..., None]
    image = ground * (1.0 - alpha) + plant * alpha

    # Exposure, white balance and a brightness gradient across the frame.
    gain = (rng.uniform(0.75, 1.25) * rng.uniform(0.93, 1.07, 3)).astype(np.float32)
    direction = rng.uniform(0.0, 2 * np.pi)
    tilt = rng.uniform(0.0, 0.2)
    xs = (np.arange(w, dtype=np.float32) / frame - 0.5) * math.cos(direction)
    ys = (np.arange(h, dtype=np.float32) / frame - 0.5) * math.sin(direction)
    ramp = 1.0 + tilt * (xs[None, :] + ys[:, None])
    # Grain goes on the canvas, not the output: at the output size of the
    # largest images it would make PNG encoding most of the generation time.
    grain = rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(2.0, 6.0)
    image = image * gain * ramp[..., None] + grain
    return Image.fromarray(np.uint8(np.clip(image, 0, 255)))


def render_seedling(class_index: int, seed: int, index: int) -> Image.Image:
    """Draws one synthetic seedling image, deterministically for (seed, class, index).

    Args:
      class_index: index into CLASS_NAMES.
      seed: dataset seed (non-negative).
      index: image number within the class.

    Returns:
      An RGB image, or (for about a tenth of them) an RGBA image.
    """
    # One RNG per image keyed on (seed, class, index), so any image can be
    # regenerated alone and the output does not depend on generation order.
    rng = np.random.default_rng([seed, class_index, index])
    out_size = _image_size(rng)
    zoom = min(1.0, _MAX_CANVAS / max(out_size)) * max(1.0, _MIN_CANVAS / min(out_size))
    canvas = (round(out_size[0] * zoom), round(out_size[1] * zoom))

    parts = PLANTS[CLASS_NAMES[class_index]](rng, float(rng.uniform(0.0, 1.0)))
    transform, ppu = _fit_plant(rng, parts, canvas)
    green = _plant_green(rng)
    soil = _soil(rng, canvas)
    layer, mask = _draw_parts(parts, canvas, transform, ppu, green)
    image = _photograph(rng, soil, layer, mask)
    if image.size != out_size:
        image = image.resize(out_size, Image.BICUBIC)
    if rng.random() < _RGBA_FRACTION:
        image = _with_alpha(rng, image)
    return image


def _with_alpha(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """RGBA, either fully opaque or with a transparent border, as some real files are."""
    rgba = image.convert("RGBA")
    if rng.random() < 0.5:
        w, h = image.size
        border = max(1, round(min(w, h) * rng.uniform(0.01, 0.05)))
        alpha = Image.new("L", (w, h), 0)
        ImageDraw.Draw(alpha).rectangle((border, border, w - 1 - border, h - 1 - border), fill=255)
        rgba.putalpha(alpha)
    return rgba

