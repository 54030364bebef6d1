"""Which file goes where: unusable files and copies dropped, then splits and shards.

Runs in the parent process. The plan follows from the sorted listing and
the seed alone, never from worker scheduling, so the output is the same
whatever the number of workers.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import random
from typing import Sequence

from input_pipeline import records
from input_pipeline.conversion import encoding, parallel
from input_pipeline.conversion.classes import Skipped, SourceImage
from input_pipeline.conversion.options import ConversionError, ConvertOptions


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    num_shards: int
    sources: tuple[SourceImage, ...]  # in record order


def scan(
    sources: Sequence[SourceImage],
    executor: concurrent.futures.Executor | None,
    options: ConvertOptions,
) -> tuple[list[SourceImage], list[Skipped]]:
    """Drops unreadable files and byte-identical copies; returns (kept, skipped).

    Of identical copies the first in sorted order is kept, so a copy can
    never land in both splits.
    """
    results = parallel.ordered_map(
        encoding.probe, (s.path for s in sources), executor, options.workers()
    )
    kept, skipped = [], []
    first_copy: dict[bytes, SourceImage] = {}
    with parallel.progress_bar(len(sources), "scanning", options.show_progress) as bar:
        for source, (digest, reason) in zip(sources, results):
            bar.update()
            if reason is None and digest in first_copy:
                reason = f"duplicate: same bytes as {first_copy[digest].rel}"
            if reason is not None:
                skipped.append((source, reason))
                continue
            first_copy[digest] = source
            kept.append(source)
    return kept, skipped


def check_every_class_has_images(
    class_names: Sequence[str], counts: collections.Counter, skipped: Sequence[Skipped]
) -> None:
    """Raises ConversionError naming the first class with no image counted in `counts`."""
    for label, name in enumerate(class_names):
        if counts[label] == 0:
            in_class = [(s, reason) for s, reason in skipped if s.label == label]
            example = f" (e.g. {in_class[0][0].rel}: {in_class[0][1]})" if in_class else ""
            raise ConversionError(
                f"class '{name}' has no valid images: {len(in_class)} file(s) skipped{example}"
            )


def _num_validation(class_size: int, fraction: float) -> int:
    # At least one per class (when it has two), so per-class validation
    # metrics exist; never all of it, so every class is trained on.
    if class_size < 2:
        return 0
    return min(class_size - 1, max(1, round(class_size * fraction)))


def _shards(split: str, sources: Sequence[SourceImage], num_shards: int) -> list[ShardPlan]:
    num_shards = max(1, min(num_shards, len(sources)))  # no empty shards
    bounds = [len(sources) * i // num_shards for i in range(num_shards + 1)]
    return [
        ShardPlan(split, i, num_shards, tuple(sources[bounds[i] : bounds[i + 1]]))
        for i in range(num_shards)
    ]


def _stratified_split(
    sources: Sequence[SourceImage], num_classes: int, options: ConvertOptions,
    rng: random.Random,
) -> tuple[list[SourceImage], list[SourceImage]]:
    by_class: list[list[SourceImage]] = [[] for _ in range(num_classes)]
    for source in sources:
        by_class[source.label].append(source)
    train, validation = [], []
    for members in by_class:
        rng.shuffle(members)
        n_val = _num_validation(len(members), options.validation_fraction)
        validation += members[:n_val]
        train += members[n_val:]
    return train, validation


def plan_shards(
    sources: Sequence[SourceImage], num_classes: int, options: ConvertOptions
) -> list[ShardPlan]:
    """Assigns every file to a split and shard, from the seed alone.

    Files whose source chose their split (a TFDS data set's validation
    split) keep it. Otherwise the split is stratified: each class is
    shuffled and split on its own. Each split is then shuffled so that every
    shard mixes all classes.
    """
    rng = random.Random(options.seed)
    if any(source.split for source in sources):
        train = [s for s in sources if s.split == records.TRAIN]
        validation = [s for s in sources if s.split == records.VALIDATION]
    else:
        train, validation = _stratified_split(sources, num_classes, options, rng)
    rng.shuffle(train)
    rng.shuffle(validation)
    train_shards = _shards(records.TRAIN, train, options.num_shards)
    val_share = len(validation) / max(1, len(train))
    return train_shards + _shards(
        records.VALIDATION, validation, round(len(train_shards) * val_share)
    )
