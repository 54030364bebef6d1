"""The converter's options: defaults, bounds and the one error type.

TF-free: the command line checks its flags with these before TensorFlow is
loaded, and spawned workers import the bounds they enforce.
"""

from __future__ import annotations

import dataclasses
import os

DEFAULT_MAX_IMAGE_SIDE = 512
# Bounds of the options. Seeds: the trainer's (trainer/config.py), so one seed
# works end to end. Shards: far past any useful count for the real set
# (DATASET.md) and within the five digits of the shard names. Image side:
# below the trainer's smallest --image_size a stored image could only be
# upscaled; above JPEG_MAX_SIDE JPEG cannot store it. Workers: past a few per
# core, more processes only cost memory, and an unbounded count would start
# one per image.
MAX_SEED = 2**31 - 1
MAX_SHARDS = 10_000
MIN_IMAGE_SIDE = 32
JPEG_MAX_SIDE = 65_500
WORKERS_PER_CORE = 4


class ConversionError(Exception):
    """A problem with the input, the output folder or the options, in one line."""


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """How to convert; the one place of the defaults and bounds, the CLI's included."""

    num_shards: int = 8  # train shards; validation gets proportionally fewer, at least 1
    validation_fraction: float = 0.1  # share of each class held out, in (0, 1)
    seed: int = 0  # fixes the split and the record order (not the worker count)
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE  # longer side limit; 0 keeps the size
    jpeg_quality: int = 95
    num_workers: int | None = None  # processes decoding images; None: all cores
    overwrite: bool = False  # replace the converted files of an earlier run
    show_progress: bool = True  # tqdm bars on stderr, when it is a terminal

    def check(self) -> None:
        """Raises ConversionError naming the first bad value and its range."""
        _check_range("--num_shards", self.num_shards, 1, MAX_SHARDS)
        # Written so that NaN, which fails every comparison, is refused too.
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConversionError(
                "--validation_fraction must be in (0, 1), "
                f"got {self.validation_fraction}"
            )
        _check_range("--seed", self.seed, 0, MAX_SEED)
        if self.max_image_side != 0:
            _check_range("--max_image_side", self.max_image_side, MIN_IMAGE_SIDE,
                         JPEG_MAX_SIDE, "0 (full size) or ")
        _check_range("--jpeg_quality", self.jpeg_quality, 1, 100)
        if self.num_workers is not None:
            cores = _usable_cores()
            _check_range("--num_workers", self.num_workers, 1, WORKERS_PER_CORE * cores,
                         suffix=f" ({WORKERS_PER_CORE} per usable core, {cores} cores)")

    def workers(self) -> int:
        """The number of processes that decode images: as asked, else one per core."""
        return self.num_workers or _usable_cores()


def _check_range(
    flag: str, value: int, low: int, high: int, prefix: str = "", suffix: str = ""
) -> None:
    if not low <= value <= high:
        raise ConversionError(f"{flag} must be {prefix}in {low}..{high}{suffix}, got {value}")


def _usable_cores() -> int:
    """The cores this process may use: a container's CPU set, not all of the host's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
