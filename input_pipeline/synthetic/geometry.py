"""Leaf outlines and their placement, in plant units.

A plant is a list of `Part`s in "plant units" (leaves about 0.1 to 1 long),
attached at or around the origin; `render` later places, rotates and scales
it into the frame. Outlines point along +x from their base unless a
docstring says otherwise. numpy only: nothing here draws pixels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Part:
    """One filled leaf outline (width 0) or stem/segment polyline, in plant units."""

    points: np.ndarray  # (n, 2)
    shade: float  # multiplies the plant's green, so neighbouring leaves stay distinct
    width: float = 0.0


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """`points` (n, 2) turned by `angle` radians about the origin."""
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def place(points: np.ndarray, angle: float, origin: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """`points` turned by `angle`, then moved so their origin lands on `origin`."""
    return rotate(points, angle) + np.asarray(origin)


def ray(angle: float, distance: float) -> np.ndarray:
    """The point `distance` from the origin in direction `angle`."""
    return distance * np.array([math.cos(angle), math.sin(angle)])


def radial_angles(rng: np.random.Generator, count: int, jitter: float) -> np.ndarray:
    """`count` directions spread evenly round a random start, each jittered."""
    start = rng.uniform(0.0, 2 * np.pi)
    return start + np.arange(count) * (2 * np.pi / count) + rng.normal(0.0, jitter, count)


def midline(length: float, curl: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` points along a curve from the origin heading +x that turns by `curl`
    radians overall, and the heading at each point."""
    heading = curl * np.linspace(0.0, 1.0, n)
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=1) * (length / (n - 1))
    points = np.concatenate([[[0.0, 0.0]], np.cumsum(steps[:-1], axis=0)])
    return points, heading


def petiole(angle: float, length: float, width: float, shade: float) -> Part:
    """A straight leaf stalk from the origin in direction `angle`."""
    return Part(np.stack([[0.0, 0.0], ray(angle, length)]), shade, width)


def _ribbon(half_widths: np.ndarray, length: float, curl: float) -> np.ndarray:
    """Outline of a leaf whose half-width along its (curled) midline is sampled
    from base to tip by `half_widths`."""
    points, heading = midline(length, curl, len(half_widths))
    normals = np.stack([-np.sin(heading), np.cos(heading)], axis=1)
    left = points + normals * half_widths[:, None]
    right = points - normals * half_widths[:, None]
    return np.concatenate([left, right[::-1]])


def _polar(radii: np.ndarray, thetas: np.ndarray, centre: Sequence[float]) -> np.ndarray:
    return np.asarray(centre) + np.stack([np.cos(thetas), np.sin(thetas)], axis=1) * radii[:, None]


_T = np.linspace(0.0, 1.0, 24)


def grass_blade(rng: np.random.Generator, length: float, width: float, curl: float) -> np.ndarray:
    """Grass leaf: parallel-sided for most of its length, then tapering to a point."""
    half = width / 2 * np.clip((1.0 - _T) / rng.uniform(0.25, 0.4), 0.0, 1.0) ** 0.8
    half = np.maximum(half, 0.002)
    return _ribbon(half, length, curl)


def oval(length: float, width: float, pointed: float = 0.0) -> np.ndarray:
    """Elliptic to ovate leaf; `pointed` in [0, 1] sharpens the tip."""
    half = width / 2 * np.sin(np.pi * _T) ** 0.6 * (1.0 - pointed * _T**2)
    return _ribbon(half, length, 0.0)


def strap(length: float, width: float, curl: float = 0.0) -> np.ndarray:
    """Oblong, round-ended, parallel-sided leaf (sugar beet cotyledon)."""
    half = width / 2 * np.sin(np.pi * _T) ** 0.25
    return _ribbon(half, length, curl)


def kidney(width: float, depth: float, notch: float) -> np.ndarray:
    """Wide leaf with a notch at its tip, attached at the origin, pointing +x."""
    theta = np.linspace(-np.pi, np.pi, 48)
    radii = np.hypot(depth / 2 * np.cos(theta), width / 2 * np.sin(theta))
    radii = radii * (1.0 - notch * np.exp(-((theta / 0.35) ** 2)))
    return _polar(radii, theta, (depth / 2, 0.0))


def wavy_oval(length: float, waves: int) -> np.ndarray:
    """Broad oval with an undulating margin (charlock true leaf), pointing +x."""
    theta = np.linspace(-np.pi, np.pi, 64)
    radii = np.hypot(length / 2 * np.cos(theta), 0.32 * length * np.sin(theta))
    radii = radii * (1.0 + 0.12 * np.sin(waves * theta))
    return _polar(radii, theta, (length / 2, 0.0))


def palmate(radius: float, lobes: int, depth: float) -> np.ndarray:
    """Round, palmately lobed leaf (cranesbill), attached at the origin, pointing +x."""
    theta = np.linspace(-np.pi, np.pi, 96)
    lobe = np.abs(np.cos(lobes * theta / 2)) ** 0.6
    # A deep sinus where the petiole joins, as in real cranesbill leaves.
    sinus = 1.0 - 0.6 * np.exp(-(((np.abs(theta) - np.pi) / 0.3) ** 2))
    radii = radius * (1.0 - depth * (1.0 - lobe)) * sinus
    return _polar(radii, theta, (radius * 0.85, 0.0))


def diamond(length: float, width: float, teeth: int) -> np.ndarray:
    """Rhombic leaf with a toothed margin (fat hen)."""
    t = np.linspace(0.0, 1.0, 64)
    widest = 0.4
    half = width / 2 * np.where(t < widest, t / widest, (1.0 - t) / (1.0 - widest))
    saw = 1.0 - 0.25 * ((t * teeth) % 1.0) * (t > 0.15)
    return _ribbon(np.maximum(half * saw, 0.003), length, 0.0)


def lobed_lanceolate(length: float, width: float, lobes: int, depth: float) -> np.ndarray:
    """Oblanceolate leaf with a wavy, deeply lobed margin (shepherd's purse rosette)."""
    t = np.linspace(0.0, 1.0, 72)
    half = width / 2 * np.clip(t / 0.7, 0.0, 1.0) ** 0.8 * np.clip((1.0 - t) / 0.3, 0.0, 1.0) ** 0.5
    wave = 1.0 - depth * np.abs(np.sin(np.pi * lobes * t)) ** 2 * (t < 0.85)
    return _ribbon(np.maximum(half * wave, 0.004), length, 0.0)
