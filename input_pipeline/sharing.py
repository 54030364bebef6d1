"""How the input pipelines (one per worker or TPU host) share a split's records.

By file when there are at least as many shards as pipelines: each pipeline
then reads only its own files. By record otherwise: each reads every shard
and keeps its every n-th record, so training and evaluation still see each
example exactly once, at the cost of reading the split once per pipeline.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

from absl import logging

from input_pipeline import records


def share_split(
    data_dir: str, split: str, info: records.DatasetInfo, num_pipelines: int,
    *, training: bool,
) -> tuple[list[str], list[Share]]:
    """The split's shard files and every input pipeline's share of them (see `_shares`)."""
    shards = records.list_shards(data_dir, split, info)
    shard_lengths = info.shard_lengths.get(split)
    shares = _shares(len(shards), num_pipelines, shard_lengths)
    if training and shard_lengths is not None:
        _check_every_pipeline_has_records(shares, shard_lengths, split, data_dir)
    if shares[0].stride > 1:
        # Evaluation reads its small split quickly either way.
        logging.log(
            logging.WARNING if training else logging.INFO,
            "the %s split has %d shards in %s, fewer than the %d input pipelines: each reads "
            "the whole split and keeps one record in %d; convert with more shards "
            "(--num_shards) for each to read only its own files",
            split, len(shards), data_dir, num_pipelines, num_pipelines,
        )
    return shards, shares


@dataclasses.dataclass(frozen=True)
class Share:
    """The records one input pipeline reads: of each of its shards, every
    `stride`-th record from that shard's offset."""

    shards: tuple[int, ...]  # Indices into the sorted shard files.
    offsets: tuple[int, ...]  # One per shard.
    stride: int

    def num_records(self, shard_lengths: Sequence[int]) -> int:
        return sum(len(range(offset, shard_lengths[shard], self.stride))
                   for shard, offset in zip(self.shards, self.offsets))


def _shares(
    num_shards: int, num_pipelines: int, shard_lengths: Sequence[int] | None
) -> list[Share]:
    """What each input pipeline reads: disjoint, and together every record once.

    `shard_lengths` may be None only with at least as many shards as pipelines.
    """
    if num_shards >= num_pipelines:
        # By file: each pipeline reads only its own files instead of reading
        # everything and discarding most of it.
        files = [tuple(range(p, num_shards, num_pipelines)) for p in range(num_pipelines)]
        return [Share(own, (0,) * len(own), 1) for own in files]
    # By record, numbered across the shards in order: pipeline p keeps
    # records p::n, so the shares differ by one record at most and stay
    # disjoint whatever order the files are read in.
    starts = list(itertools.accumulate(shard_lengths, initial=0))[:-1]
    return [
        Share(tuple(range(num_shards)), tuple((p - start) % num_pipelines for start in starts),
               num_pipelines)
        for p in range(num_pipelines)
    ]


def _check_every_pipeline_has_records(
    shares: list[Share], shard_lengths: Sequence[int], split: str, data_dir: str
) -> None:
    # A pipeline with no records would end its stream at the first step,
    # while the other workers wait for it in their collectives.
    for pipeline, share in enumerate(shares):
        if share.num_records(shard_lengths) == 0:
            raise ValueError(
                f"the {split} split in {data_dir} has {sum(shard_lengths)} examples in "
                f"{len(shard_lengths)} shards, which leaves input pipeline {pipeline} of "
                f"{len(shares)} none to train on: convert more images or train on fewer "
                "workers or hosts"
            )


def eval_batches_per_pipeline(
    shares: list[Share], shard_lengths: Sequence[int], batch_size: int,
    replicas_per_pipeline: int,
) -> int:
    """Evaluation batches every input pipeline yields, padding included.

    tf.distribute hands each replica whole batches and drops a last step
    that cannot feed every replica: so every pipeline yields as many batches
    as the one with the most examples, rounded up to a multiple of the
    replicas it feeds. From exact record counts: an estimate that came out
    low would silently drop examples.
    """
    most = math.ceil(max(share.num_records(shard_lengths) for share in shares) / batch_size)
    return math.ceil(most / replicas_per_pipeline) * replicas_per_pipeline
