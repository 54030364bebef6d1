"""Synthetic plant seedlings in the Kaggle layout, for demos and tests.

Writes `OUTPUT_DIR/train/<Class Name>/<hex>.png` for the 12 real species, so
every stage downstream (converter, input pipeline, trainer) runs unchanged on a
machine that has no copy of the real photographs.

Each image is a top-down seedling on a soil-and-gravel background. The species
differ only in the shape, number, arrangement and relative size of their
leaves; plant greens, soil colours, lighting, growth stage and the fraction of
the frame the plant covers are drawn from one distribution shared by all
classes, so colour statistics alone cannot tell the classes apart but a small
CNN can.

Usage: python -m input_pipeline.synthetic --output_dir=DIR
         [--images_per_class=N] [--seed=S]
"""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import math
import os
import sys
from typing import Callable, Sequence

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw, ImageFilter

FLAGS = flags.FLAGS

# Exactly as spelled on disk in the Kaggle and Aarhus downloads (DATASET.md).
CLASS_NAMES = (
    "Black-grass",
    "Charlock",
    "Cleavers",
    "Common Chickweed",
    "Common wheat",
    "Fat Hen",
    "Loose Silky-bent",
    "Maize",
    "Scentless Mayweed",
    "Shepherds Purse",
    "Small-flowered Cranesbill",
    "Sugar beet",
)

DEFAULT_IMAGES_PER_CLASS = 100

# Real images: 49 px to 3.6k px, median side about 267 px. The tail is cut at
# 1500 px because huge PNGs cost generation time and teach a demo nothing new.
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


@dataclasses.dataclass(frozen=True)
class _Part:
    """One filled leaf outline (width 0) or stem/segment polyline, in plant units."""

    points: np.ndarray  # (n, 2)
    shade: float  # multiplies the plant's green, so neighbouring leaves stay distinct
    width: float = 0.0


# --------------------------------------------------------------------------
# Leaf geometry. A plant is a list of parts in "plant units" (leaves about
# 0.1 to 1 long); rendering places, rotates and scales it into the frame.
# --------------------------------------------------------------------------


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _midline(length: float, curl: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` points along a curve from the origin heading +x that turns by `curl`
    radians overall, and the heading at each point."""
    heading = curl * np.linspace(0.0, 1.0, n)
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=1) * (length / (n - 1))
    points = np.concatenate([[[0.0, 0.0]], np.cumsum(steps[:-1], axis=0)])
    return points, heading


def _ribbon(half_widths: np.ndarray, length: float, curl: float) -> np.ndarray:
    """Outline of a leaf whose half-width along its (curled) midline is sampled
    from base to tip by `half_widths`."""
    midline, heading = _midline(length, curl, len(half_widths))
    normals = np.stack([-np.sin(heading), np.cos(heading)], axis=1)
    left = midline + normals * half_widths[:, None]
    right = midline - normals * half_widths[:, None]
    return np.concatenate([left, right[::-1]])


def _polar(radii: np.ndarray, thetas: np.ndarray, centre: Sequence[float]) -> np.ndarray:
    return np.asarray(centre) + np.stack([np.cos(thetas), np.sin(thetas)], axis=1) * radii[:, None]


def _place(points: np.ndarray, angle: float, origin: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    return _rotate(points, angle) + np.asarray(origin)


def _ray(angle: float, distance: float) -> np.ndarray:
    return distance * np.array([math.cos(angle), math.sin(angle)])


_T = np.linspace(0.0, 1.0, 24)


def _grass_blade(rng: np.random.Generator, length: float, width: float, curl: float) -> np.ndarray:
    # Parallel-sided for most of its length, then tapering to a point.
    half = width / 2 * np.clip((1.0 - _T) / rng.uniform(0.25, 0.4), 0.0, 1.0) ** 0.8
    half = np.maximum(half, 0.002)
    return _ribbon(half, length, curl)


def _oval(length: float, width: float, pointed: float = 0.0) -> np.ndarray:
    """Elliptic to ovate leaf; `pointed` in [0, 1] sharpens the tip."""
    half = width / 2 * np.sin(np.pi * _T) ** 0.6 * (1.0 - pointed * _T**2)
    return _ribbon(half, length, 0.0)


def _strap(length: float, width: float, curl: float = 0.0) -> np.ndarray:
    """Oblong, round-ended, parallel-sided leaf (sugar beet cotyledon)."""
    half = width / 2 * np.sin(np.pi * _T) ** 0.25
    return _ribbon(half, length, curl)


def _kidney(width: float, depth: float, notch: float) -> np.ndarray:
    """Wide leaf with a notch at its tip, attached at the origin, pointing +x."""
    theta = np.linspace(-np.pi, np.pi, 48)
    radii = np.hypot(depth / 2 * np.cos(theta), width / 2 * np.sin(theta))
    radii = radii * (1.0 - notch * np.exp(-((theta / 0.35) ** 2)))
    return _polar(radii, theta, (depth / 2, 0.0))


def _wavy_oval(length: float, waves: int) -> np.ndarray:
    """Broad oval with an undulating margin (charlock true leaf), pointing +x."""
    theta = np.linspace(-np.pi, np.pi, 64)
    radii = np.hypot(length / 2 * np.cos(theta), 0.32 * length * np.sin(theta))
    radii = radii * (1.0 + 0.12 * np.sin(waves * theta))
    return _polar(radii, theta, (length / 2, 0.0))


def _palmate(radius: float, lobes: int, depth: float) -> np.ndarray:
    """Round, palmately lobed leaf (cranesbill), attached at the origin, pointing +x."""
    theta = np.linspace(-np.pi, np.pi, 96)
    lobe = np.abs(np.cos(lobes * theta / 2)) ** 0.6
    # A deep sinus where the petiole joins, as in real cranesbill leaves.
    sinus = 1.0 - 0.6 * np.exp(-(((np.abs(theta) - np.pi) / 0.3) ** 2))
    radii = radius * (1.0 - depth * (1.0 - lobe)) * sinus
    return _polar(radii, theta, (radius * 0.85, 0.0))


def _diamond(length: float, width: float, teeth: int) -> np.ndarray:
    """Rhombic leaf with a toothed margin (fat hen)."""
    t = np.linspace(0.0, 1.0, 64)
    widest = 0.4
    half = width / 2 * np.where(t < widest, t / widest, (1.0 - t) / (1.0 - widest))
    saw = 1.0 - 0.25 * ((t * teeth) % 1.0) * (t > 0.15)
    return _ribbon(np.maximum(half * saw, 0.003), length, 0.0)


def _lobed_lanceolate(length: float, width: float, lobes: int, depth: float) -> np.ndarray:
    """Oblanceolate leaf with a wavy, deeply lobed margin (shepherd's purse rosette)."""
    t = np.linspace(0.0, 1.0, 72)
    half = width / 2 * np.clip(t / 0.7, 0.0, 1.0) ** 0.8 * np.clip((1.0 - t) / 0.3, 0.0, 1.0) ** 0.5
    wave = 1.0 - depth * np.abs(np.sin(np.pi * lobes * t)) ** 2 * (t < 0.85)
    return _ribbon(np.maximum(half * wave, 0.004), length, 0.0)


def _petiole(angle: float, length: float, width: float, shade: float) -> _Part:
    return _Part(np.stack([[0.0, 0.0], _ray(angle, length)]), shade, width)


def _radial_angles(rng: np.random.Generator, count: int, jitter: float) -> np.ndarray:
    start = rng.uniform(0.0, 2 * np.pi)
    return start + np.arange(count) * (2 * np.pi / count) + rng.normal(0.0, jitter, count)


def _shade(rng: np.random.Generator) -> float:
    return float(rng.uniform(0.85, 1.12))


def _grass(
    rng: np.random.Generator,
    counts: tuple[int, int],
    growth: float,
    width: tuple[float, float],
    length: tuple[float, float],
    curl: float,
) -> list[_Part]:
    """Blades fanning out of one base point; species differ in count, width and curl."""
    low, high = counts
    count = min(high, low + int(rng.binomial(high - low, 0.25 + 0.6 * growth)))
    parts = []
    for angle in _radial_angles(rng, count, jitter=0.6):
        blade = _grass_blade(rng, rng.uniform(*length), rng.uniform(*width), rng.normal(0.0, curl))
        parts.append(_Part(_place(blade, angle), _shade(rng)))
    return parts


def _black_grass(rng: np.random.Generator, growth: float) -> list[_Part]:
    return _grass(rng, (2, 5), growth, width=(0.05, 0.065), length=(0.75, 1.0), curl=0.5)


def _loose_silky_bent(rng: np.random.Generator, growth: float) -> list[_Part]:
    return _grass(rng, (5, 10), growth, width=(0.03, 0.04), length=(0.55, 1.0), curl=1.2)


def _common_wheat(rng: np.random.Generator, growth: float) -> list[_Part]:
    return _grass(rng, (1, 2), growth, width=(0.13, 0.16), length=(0.85, 1.0), curl=0.1)


def _maize(rng: np.random.Generator, growth: float) -> list[_Part]:
    parts = []
    for part in _grass(rng, (2, 4), growth, width=(0.22, 0.28), length=(0.6, 0.8), curl=0.2):
        parts.append(part)
        # The pale midrib of a maize leaf: the centreline of the blade outline.
        half = len(part.points) // 2
        midline = (part.points[:half] + part.points[::-1][:half]) / 2
        parts.append(_Part(midline[: int(half * 0.8)], part.shade * 1.3, 0.025))
    return parts


def _charlock(rng: np.random.Generator, growth: float) -> list[_Part]:
    """Two big kidney-shaped, notched cotyledons; rough lobed true leaves later."""
    parts = []
    axis = rng.uniform(0.0, 2 * np.pi)
    for side in (0.0, np.pi):
        angle = axis + side + rng.normal(0.0, 0.2)
        stalk = rng.uniform(0.08, 0.15)
        parts.append(_petiole(angle, stalk, 0.04, 0.9))
        leaf = _kidney(width=rng.uniform(0.55, 0.7), depth=rng.uniform(0.4, 0.5), notch=0.3)
        parts.append(_Part(_place(leaf, angle, _ray(angle, stalk)), _shade(rng)))
    for i in range(int(growth * 3)):
        angle = axis + np.pi / 2 + i * np.pi + rng.normal(0.0, 0.3)
        leaf = _wavy_oval(rng.uniform(0.45, 0.65), waves=int(rng.integers(6, 9)))
        parts.append(_Part(_place(leaf, angle), _shade(rng)))
    return parts


def _cleavers(rng: np.random.Generator, growth: float) -> list[_Part]:
    """Two oval cotyledons under one or two star-like whorls of narrow leaves."""
    parts = []
    axis = rng.uniform(0.0, 2 * np.pi)
    for side in (0.0, np.pi):
        leaf = _kidney(width=rng.uniform(0.18, 0.24), depth=rng.uniform(0.26, 0.32), notch=0.2)
        parts.append(_Part(_place(leaf, axis + side, _ray(axis + side, 0.05)), _shade(rng)))
    whorls = 1 + int(growth > 0.6)
    for whorl in range(whorls):
        count = int(rng.integers(6, 9))
        size = (0.45 + 0.2 * growth) * (0.7 if whorl else 1.0)
        for angle in _radial_angles(rng, count, jitter=0.08) + whorl * np.pi / count:
            leaf = _oval(size * rng.uniform(0.9, 1.1), size * 0.22, pointed=0.8)
            parts.append(_Part(_place(leaf, angle), _shade(rng)))
    return parts


def _common_chickweed(rng: np.random.Generator, growth: float) -> list[_Part]:
    """Branching stems carrying opposite pairs of small pointed ovate leaves."""
    parts = []
    stems = 2 + int(growth * 2.5)
    pairs = 2 + int(growth * 2)
    for angle in _radial_angles(rng, stems, jitter=0.4):
        stem, headings = _midline(rng.uniform(0.55, 0.85), rng.normal(0.0, 0.6), 3 * pairs + 1)
        stem = _place(stem, angle)
        parts.append(_Part(stem, 0.9, 0.025))
        for node, heading in zip(stem[3::3], headings[3::3] + angle):
            size = rng.uniform(0.2, 0.27)
            for side in (-1.0, 1.0):
                leaf = _oval(size, size * 0.55, pointed=0.7)
                parts.append(_Part(_place(leaf, heading + side * rng.uniform(0.7, 1.2), node), _shade(rng)))
    return parts


def _fat_hen(rng: np.random.Generator, growth: float) -> list[_Part]:
    """Two narrow cotyledons and decussate pairs of toothed diamond leaves."""
    parts = []
    axis = rng.uniform(0.0, 2 * np.pi)
    for side in (0.0, np.pi):
        leaf = _strap(rng.uniform(0.3, 0.4), rng.uniform(0.07, 0.09))
        parts.append(_Part(_place(leaf, axis + side), _shade(rng)))
    pairs = 1 + int(growth * 2.5)
    for k in range(pairs):
        size = 0.7 * (0.78**k) * rng.uniform(0.9, 1.1)
        for side in (0.0, np.pi):
            angle = axis + np.pi / 2 * (k + 1) + side + rng.normal(0.0, 0.15)
            parts.append(_petiole(angle, 0.08, 0.035, 0.9))
            leaf = _diamond(size, size * 0.65, teeth=int(rng.integers(4, 7)))
            parts.append(_Part(_place(leaf, angle, _ray(angle, 0.08)), _shade(rng)))
    return parts


def _scentless_mayweed(rng: np.random.Generator, growth: float) -> list[_Part]:
    """Finely divided leaves: a midrib with many thin pinnate segments."""
    parts = []
    axis = rng.uniform(0.0, 2 * np.pi)
    for side in (0.0, np.pi):
        parts.append(_Part(_place(_oval(0.18, 0.08), axis + side), _shade(rng)))
    for angle in _radial_angles(rng, 3 + int(growth * 4), jitter=0.3):
        length = rng.uniform(0.55, 0.9)
        shade = _shade(rng)
        midrib, headings = _midline(length, rng.normal(0.0, 0.4), 10)
        midrib = _place(midrib, angle)
        parts.append(_Part(midrib, shade, 0.04))
        for j in range(2, 10):
            node, heading = midrib[j], headings[j] + angle
            seg = 0.22 * (1.0 - 0.6 * j / 10) * rng.uniform(0.8, 1.2)
            for turn in (-0.9, 0.9):
                tip = node + _ray(heading + turn, seg)
                fork = tip + _ray(heading + turn * 0.3, seg * 0.5)
                parts.append(_Part(np.stack([node, tip, fork]), shade, 0.035))
    return parts


def _shepherds_purse(rng: np.random.Generator, growth: float) -> list[_Part]:
    """A flat rosette of lobed, oblanceolate leaves."""
    count = 5 + int(growth * 7)
    leaves = []
    for angle in _radial_angles(rng, count, jitter=0.2):
        length = rng.uniform(0.55, 0.9)
        leaf = _lobed_lanceolate(length, length * rng.uniform(0.25, 0.32), int(rng.integers(3, 6)), 0.4)
        leaves.append((length, _Part(_place(leaf, angle), _shade(rng))))
    # Older, longer leaves lie underneath the younger ones.
    return [part for _, part in sorted(leaves, key=lambda item: -item[0])]


def _small_flowered_cranesbill(rng: np.random.Generator, growth: float) -> list[_Part]:
    """Round, palmately lobed leaves on long petioles."""
    parts = []
    if growth < 0.5:
        axis = rng.uniform(0.0, 2 * np.pi)
        for side in (0.0, np.pi):
            leaf = _kidney(width=0.3, depth=0.24, notch=0.15)
            parts.append(_Part(_place(leaf, axis + side), _shade(rng)))
    for angle in _radial_angles(rng, 1 + int(growth * 3.5), jitter=0.3):
        stalk = rng.uniform(0.2, 0.4)
        parts.append(_petiole(angle, stalk, 0.035, 0.9))
        leaf = _palmate(rng.uniform(0.24, 0.32), int(rng.integers(5, 8)), rng.uniform(0.3, 0.4))
        parts.append(_Part(_place(leaf, angle, _ray(angle, stalk)), _shade(rng)))
    return parts


def _sugar_beet(rng: np.random.Generator, growth: float) -> list[_Part]:
    """Two long strap-shaped cotyledons; broad ovate true leaves crosswise later."""
    parts = []
    axis = rng.uniform(0.0, 2 * np.pi)
    for side in (0.0, np.pi):
        length = rng.uniform(0.55, 0.7)
        leaf = _strap(length, length * rng.uniform(0.22, 0.27), rng.normal(0.0, 0.15))
        parts.append(_Part(_place(leaf, axis + side + rng.normal(0.0, 0.1)), _shade(rng)))
    pairs = int(growth > 0.35) + int(growth > 0.8)
    for k in range(pairs):
        # True leaves stay shorter than the cotyledons at these growth stages.
        size = rng.uniform(0.3, 0.42) * (0.7**k)
        for side in (0.0, np.pi):
            angle = axis + np.pi / 2 + side + k * 0.6 + rng.normal(0.0, 0.2)
            parts.append(_petiole(angle, 0.12, 0.04, 0.9))
            leaf = _oval(size, size * 0.7, pointed=0.3)
            parts.append(_Part(_place(leaf, angle, _ray(angle, 0.12)), _shade(rng)))
    return parts


_PLANTS: dict[str, Callable[[np.random.Generator, float], list[_Part]]] = {
    "Black-grass": _black_grass,
    "Charlock": _charlock,
    "Cleavers": _cleavers,
    "Common Chickweed": _common_chickweed,
    "Common wheat": _common_wheat,
    "Fat Hen": _fat_hen,
    "Loose Silky-bent": _loose_silky_bent,
    "Maize": _maize,
    "Scentless Mayweed": _scentless_mayweed,
    "Shepherds Purse": _shepherds_purse,
    "Small-flowered Cranesbill": _small_flowered_cranesbill,
    "Sugar beet": _sugar_beet,
}
assert tuple(_PLANTS) == CLASS_NAMES


# --------------------------------------------------------------------------
# Rendering.
# --------------------------------------------------------------------------


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) spread like the real set: log-normal side, mostly square."""
    long_side = round(np.clip(_MEDIAN_SIDE * math.exp(rng.normal(0.0, 0.55)), _MIN_SIDE, _MAX_SIDE))
    if rng.random() < _SQUARE_FRACTION:
        return long_side, long_side
    # Real width/height ratios run from 0.94 (slightly tall) to 1.33 (wide).
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
    parts: Sequence[_Part],
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


def _coverage_at_unit_extent(parts: Sequence[_Part], lo: np.ndarray, span: float) -> float:
    """Fraction of a square frame the plant covers when it spans the whole frame."""
    side = 64
    ppu = side / span
    _, mask = _draw_parts(parts, (side, side), lambda p: (p - lo) * ppu, ppu, None)
    return float(np.asarray(mask).mean() / 255.0)


def _fit_plant(
    rng: np.random.Generator, parts: Sequence[_Part], canvas: tuple[int, int]
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
        return centre + _rotate((p - (lo + hi) / 2) * mirror, angle) * ppu

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

    parts = _PLANTS[CLASS_NAMES[class_index]](rng, float(rng.uniform(0.0, 1.0)))
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


def file_name(seed: int, class_index: int, index: int) -> str:
    """Kaggle-like file name (`0021e90e4.png`), stable for (seed, class, index)."""
    digest = hashlib.sha1(f"{seed}/{class_index}/{index}".encode()).hexdigest()
    return f"{digest[:9]}.png"


def generate(output_dir: str, images_per_class: int = DEFAULT_IMAGES_PER_CLASS, seed: int = 0) -> str:
    """Writes `output_dir/train/<Class Name>/<hex>.png` for all 12 classes.

    Files already in the folders are overwritten when their names match and
    otherwise left alone.

    Args:
      output_dir: folder to write into; created if missing.
      images_per_class: images written for each class (at least 1).
      seed: non-negative seed; the same seed writes byte-identical files.

    Returns:
      The path of the `train` folder, ready for the converter.

    Raises:
      ValueError: on images_per_class < 1 or a negative seed.
    """
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be at least 1, got {images_per_class}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    train_dir = os.path.join(output_dir, "train")
    for class_index, class_name in enumerate(CLASS_NAMES):
        class_dir = os.path.join(train_dir, class_name)
        os.makedirs(class_dir, exist_ok=True)
        for index in range(images_per_class):
            image = render_seedling(class_index, seed, index)
            # Noisy photo-like pixels barely compress: level 1 writes files
            # within 5% of the default level's size, about 5x faster.
            image.save(os.path.join(class_dir, file_name(seed, class_index, index)), compress_level=1)
    return train_dir


# The real classes hold a few hundred images each; past this (120,000 images,
# most of an hour of drawing) a typo is likelier than a wish.
MAX_IMAGES_PER_CLASS = 10_000


def _define_flags() -> None:
    # Defined when the command line starts rather than at import, so modules
    # that import `generate` (e.g. the trainer) do not inherit these flags or
    # clash on --seed. Keyed to the program being run so that `--help` lists
    # them for the `seedlings-synthetic` console script too, not only `-m`.
    from input_pipeline.make_tfrecords import MAX_SEED  # one seed range end to end

    program = sys.argv[0]
    flags.DEFINE_string(
        "output_dir", None,
        "Local folder to write; images go to OUTPUT_DIR/train/<Class Name>/*.png. It must "
        "not hold other images there (a real data set, another seed's).",
        module_name=program,
    )
    flags.DEFINE_integer(
        "images_per_class", DEFAULT_IMAGES_PER_CLASS,
        f"Images to write for each of the 12 classes, 1..{MAX_IMAGES_PER_CLASS}.",
        lower_bound=1, upper_bound=MAX_IMAGES_PER_CLASS, module_name=program,
    )
    flags.DEFINE_integer(
        "seed", 0, f"Random seed, 0..{MAX_SEED}; the same seed writes byte-identical files.",
        lower_bound=0, upper_bound=MAX_SEED, module_name=program,
    )
    flags.mark_flag_as_required("output_dir")


def _fail(message: str) -> None:
    sys.exit(f"synthetic: error: {message}")


def _parse_flags(argv: list[str]) -> list[str]:
    # absl's default parser prints two lines; users get one line naming the flag.
    try:
        return FLAGS(argv)
    except flags.Error as error:
        _fail(str(error))


def _foreign_images(train_dir: str, images_per_class: int, seed: int) -> list[str]:
    """Images under `train_dir` that this run would not write.

    Writing among them would mix synthetic seedlings into a real data set (or
    into another seed's), which nothing downstream could tell apart, and
    could overwrite a real photograph whose name happens to match.
    """
    foreign = []
    for class_index, name in enumerate(CLASS_NAMES):
        ours = {file_name(seed, class_index, i) for i in range(images_per_class)}
        class_dir = os.path.join(train_dir, name)
        if os.path.isdir(class_dir):
            foreign += [os.path.join(name, f) for f in sorted(os.listdir(class_dir)) if f not in ours]
    return foreign


def _check_output_dir(output_dir: str, images_per_class: int, seed: int) -> None:
    if "://" in output_dir:  # `generate` writes with os and PIL
        _fail(f"--output_dir must be a local folder, got {output_dir}")
    # TensorFlow (through `storage`) only for the command line: `generate`
    # itself stays PIL and numpy.
    from input_pipeline import storage

    try:
        storage.check_output_dir(output_dir, "--output_dir")
    except storage.PathError as error:
        _fail(str(error))
    foreign = _foreign_images(os.path.join(output_dir, "train"), images_per_class, seed)
    if foreign:
        _fail(
            f"--output_dir={output_dir} already holds {len(foreign)} file(s) in train/ that "
            f"this run would not write (e.g. train/{foreign[0]}): pass an empty or new folder"
        )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    _check_output_dir(FLAGS.output_dir, FLAGS.images_per_class, FLAGS.seed)
    try:
        train_dir = generate(FLAGS.output_dir, FLAGS.images_per_class, FLAGS.seed)
    except OSError as error:
        _fail(f"cannot write synthetic images: {error}")
    except KeyboardInterrupt:
        # Files are written in place, so the last may be cut short; a rerun
        # with the same flags rewrites every file whole.
        _fail("interrupted: the last image may be incomplete; rerun with the same flags")
    print(f"Wrote {FLAGS.images_per_class} images for each of {len(CLASS_NAMES)} classes to {train_dir}")


def run() -> None:
    """Console entry point (`seedlings-synthetic`)."""
    # Only the path checks import TensorFlow: keep its start-up notices off
    # stderr, so that an error stays the one line the user needs.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    _define_flags()
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
