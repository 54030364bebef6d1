"""The 12 species as plant builders: which leaves, how many, and where.

Each builder takes the image's random stream and a growth stage in [0, 1] and
returns the plant's parts in plant units (see `geometry`). Species differ only
in the shape, number, arrangement and relative size of their leaves; colour,
lighting and size in the frame are drawn later, by `render`, from one
distribution that all species share.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from input_pipeline.synthetic.geometry import (
    Part,
    diamond,
    grass_blade,
    kidney,
    lobed_lanceolate,
    midline,
    oval,
    palmate,
    petiole,
    place,
    radial_angles,
    ray,
    strap,
    wavy_oval,
)


def _shade(rng: np.random.Generator) -> float:
    return float(rng.uniform(0.85, 1.12))


def _grass(
    rng: np.random.Generator,
    counts: tuple[int, int],
    growth: float,
    width: tuple[float, float],
    length: tuple[float, float],
    curl: float,
) -> list[Part]:
    """Blades fanning out of one base point; species differ in count, width and curl."""
    low, high = counts
    count = min(high, low + int(rng.binomial(high - low, 0.25 + 0.6 * growth)))
    parts = []
    for angle in radial_angles(rng, count, jitter=0.6):
        blade = grass_blade(rng, rng.uniform(*length), rng.uniform(*width), rng.normal(0.0, curl))
        parts.append(Part(place(blade, angle), _shade(rng)))
    return parts


def _black_grass(rng: np.random.Generator, growth: float) -> list[Part]:
    return _grass(rng, (2, 5), growth, width=(0.05, 0.065), length=(0.75, 1.0), curl=0.5)


def _loose_silky_bent(rng: np.random.Generator, growth: float) -> list[Part]:
    return _grass(rng, (5, 10), growth, width=(0.03, 0.04), length=(0.55, 1.0), curl=1.2)


def _common_wheat(rng: np.random.Generator, growth: float) -> list[Part]:
    return _grass(rng, (1, 2), growth, width=(0.13, 0.16), length=(0.85, 1.0), curl=0.1)


def _maize(rng: np.random.Generator, growth: float) -> list[Part]:
    parts = []
    for part in _grass(rng, (2, 4), growth, width=(0.22, 0.28), length=(0.6, 0.8), curl=0.2):
        parts.append(part)
        # The pale midrib of a maize leaf: the centreline of the blade outline.
        half = len(part.points) // 2
        midrib = (part.points[:half] + part.points[::-1][:half]) / 2
        parts.append(Part(midrib[: int(half * 0.8)], part.shade * 1.3, 0.025))
    return parts


def _charlock(rng: np.random.Generator, growth: float) -> list[Part]:
    """Two big kidney-shaped, notched cotyledons; rough lobed true leaves later."""
    parts = []
    axis = rng.uniform(0.0, 2 * np.pi)
    for side in (0.0, np.pi):
        angle = axis + side + rng.normal(0.0, 0.2)
        stalk = rng.uniform(0.08, 0.15)
        parts.append(petiole(angle, stalk, 0.04, 0.9))
        leaf = kidney(width=rng.uniform(0.55, 0.7), depth=rng.uniform(0.4, 0.5), notch=0.3)
        parts.append(Part(place(leaf, angle, ray(angle, stalk)), _shade(rng)))
    for i in range(int(growth * 3)):
        angle = axis + np.pi / 2 + i * np.pi + rng.normal(0.0, 0.3)
        leaf = wavy_oval(rng.uniform(0.45, 0.65), waves=int(rng.integers(6, 9)))
        parts.append(Part(place(leaf, angle), _shade(rng)))
    return parts


def _cleavers(rng: np.random.Generator, growth: float) -> list[Part]:
    """Two oval cotyledons under one or two star-like whorls of narrow leaves."""
    parts = []
    axis = rng.uniform(0.0, 2 * np.pi)
    for side in (0.0, np.pi):
        leaf = kidney(width=rng.uniform(0.18, 0.24), depth=rng.uniform(0.26, 0.32), notch=0.2)
        parts.append(Part(place(leaf, axis + side, ray(axis + side, 0.05)), _shade(rng)))
    whorls = 1 + int(growth > 0.6)
    for whorl in range(whorls):
        count = int(rng.integers(6, 9))
        size = (0.45 + 0.2 * growth) * (0.7 if whorl else 1.0)
        for angle in radial_angles(rng, count, jitter=0.08) + whorl * np.pi / count:
            leaf = oval(size * rng.uniform(0.9, 1.1), size * 0.22, pointed=0.8)
            parts.append(Part(place(leaf, angle), _shade(rng)))
    return parts


def _common_chickweed(rng: np.random.Generator, growth: float) -> list[Part]:
    """Branching stems carrying opposite pairs of small pointed ovate leaves."""
    parts = []
    stems = 2 + int(growth * 2.5)
    pairs = 2 + int(growth * 2)
    for angle in radial_angles(rng, stems, jitter=0.4):
        stem, headings = midline(rng.uniform(0.55, 0.85), rng.normal(0.0, 0.6), 3 * pairs + 1)
        stem = place(stem, angle)
        parts.append(Part(stem, 0.9, 0.025))
        for node, heading in zip(stem[3::3], headings[3::3] + angle):
            size = rng.uniform(0.2, 0.27)
            for side in (-1.0, 1.0):
                leaf = oval(size, size * 0.55, pointed=0.7)
                parts.append(Part(place(leaf, heading + side * rng.uniform(0.7, 1.2), node), _shade(rng)))
    return parts


def _fat_hen(rng: np.random.Generator, growth: float) -> list[Part]:
    """Two narrow cotyledons and decussate pairs of toothed diamond leaves."""
    parts = []
    axis = rng.uniform(0.0, 2 * np.pi)
    for side in (0.0, np.pi):
        leaf = strap(rng.uniform(0.3, 0.4), rng.uniform(0.07, 0.09))
        parts.append(Part(place(leaf, axis + side), _shade(rng)))
    pairs = 1 + int(growth * 2.5)
    for k in range(pairs):
        size = 0.7 * (0.78**k) * rng.uniform(0.9, 1.1)
        for side in (0.0, np.pi):
            angle = axis + np.pi / 2 * (k + 1) + side + rng.normal(0.0, 0.15)
            parts.append(petiole(angle, 0.08, 0.035, 0.9))
            leaf = diamond(size, size * 0.65, teeth=int(rng.integers(4, 7)))
            parts.append(Part(place(leaf, angle, ray(angle, 0.08)), _shade(rng)))
    return parts


def _scentless_mayweed(rng: np.random.Generator, growth: float) -> list[Part]:
    """Finely divided leaves: a midrib with many thin pinnate segments."""
    parts = []
    axis = rng.uniform(0.0, 2 * np.pi)
    for side in (0.0, np.pi):
        parts.append(Part(place(oval(0.18, 0.08), axis + side), _shade(rng)))
    for angle in radial_angles(rng, 3 + int(growth * 4), jitter=0.3):
        length = rng.uniform(0.55, 0.9)
        shade = _shade(rng)
        midrib, headings = midline(length, rng.normal(0.0, 0.4), 10)
        midrib = place(midrib, angle)
        parts.append(Part(midrib, shade, 0.04))
        for j in range(2, 10):
            node, heading = midrib[j], headings[j] + angle
            seg = 0.22 * (1.0 - 0.6 * j / 10) * rng.uniform(0.8, 1.2)
            for turn in (-0.9, 0.9):
                tip = node + ray(heading + turn, seg)
                fork = tip + ray(heading + turn * 0.3, seg * 0.5)
                parts.append(Part(np.stack([node, tip, fork]), shade, 0.035))
    return parts


def _shepherds_purse(rng: np.random.Generator, growth: float) -> list[Part]:
    """A flat rosette of lobed, oblanceolate leaves."""
    count = 5 + int(growth * 7)
    leaves = []
    for angle in radial_angles(rng, count, jitter=0.2):
        length = rng.uniform(0.55, 0.9)
        leaf = lobed_lanceolate(length, length * rng.uniform(0.25, 0.32), int(rng.integers(3, 6)), 0.4)
        leaves.append((length, Part(place(leaf, angle), _shade(rng))))
    # Older, longer leaves lie underneath the younger ones.
    return [part for _, part in sorted(leaves, key=lambda item: -item[0])]


def _small_flowered_cranesbill(rng: np.random.Generator, growth: float) -> list[Part]:
    """Round, palmately lobed leaves on long petioles."""
    parts = []
    if growth < 0.5:
        axis = rng.uniform(0.0, 2 * np.pi)
        for side in (0.0, np.pi):
            leaf = kidney(width=0.3, depth=0.24, notch=0.15)
            parts.append(Part(place(leaf, axis + side), _shade(rng)))
    for angle in radial_angles(rng, 1 + int(growth * 3.5), jitter=0.3):
        stalk = rng.uniform(0.2, 0.4)
        parts.append(petiole(angle, stalk, 0.035, 0.9))
        leaf = palmate(rng.uniform(0.24, 0.32), int(rng.integers(5, 8)), rng.uniform(0.3, 0.4))
        parts.append(Part(place(leaf, angle, ray(angle, stalk)), _shade(rng)))
    return parts


def _sugar_beet(rng: np.random.Generator, growth: float) -> list[Part]:
    """Two long strap-shaped cotyledons; broad ovate true leaves crosswise later."""
    parts = []
    axis = rng.uniform(0.0, 2 * np.pi)
    for side in (0.0, np.pi):
        length = rng.uniform(0.55, 0.7)
        leaf = strap(length, length * rng.uniform(0.22, 0.27), rng.normal(0.0, 0.15))
        parts.append(Part(place(leaf, axis + side + rng.normal(0.0, 0.1)), _shade(rng)))
    pairs = int(growth > 0.35) + int(growth > 0.8)
    for k in range(pairs):
        # True leaves stay shorter than the cotyledons at these growth stages.
        size = rng.uniform(0.3, 0.42) * (0.7**k)
        for side in (0.0, np.pi):
            angle = axis + np.pi / 2 + side + k * 0.6 + rng.normal(0.0, 0.2)
            parts.append(petiole(angle, 0.12, 0.04, 0.9))
            leaf = oval(size, size * 0.7, pointed=0.3)
            parts.append(Part(place(leaf, angle, ray(angle, 0.12)), _shade(rng)))
    return parts


# Exactly as spelled on disk in the Kaggle and Aarhus downloads (DATASET.md),
# in sorted order: the converter's labels are indices into the sorted names,
# and each image's random stream is keyed on its class's index here.
PLANTS: dict[str, Callable[[np.random.Generator, float], list[Part]]] = {
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
CLASS_NAMES = tuple(PLANTS)
assert list(CLASS_NAMES) == sorted(CLASS_NAMES)
