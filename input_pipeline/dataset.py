"""Records -> batches: the tf.data pipeline for training and evaluation.

One chain, read top to bottom in `create_dataset`:
list shards -> shard per input pipeline -> interleave -> shuffle -> batch ->
parse -> decode/augment -> prefetch.
With `cache_decoded`, training decodes once instead:
... interleave -> parse -> decode -> cache -> shuffle -> batch -> augment ...

Records are batched while still serialized, and each map call parses and
preprocesses a whole batch (one image at a time, with the pure functions of
`preprocessing.py`). A map call per image cost about 40 us of tf.data
overhead: 12-15% of the pipeline's CPU time at the CPU demo's 64 px, though
nothing measurable at 224 px, where decoding and resizing dominate.

Input pipelines (one per worker or TPU host) share the split by file when
there are at least as many shards as pipelines, else by record: each then
reads every shard and keeps its every n-th record.

Evaluation batches have a static shape. The last batch is padded with
all-zero images labelled -1 (`PADDING_LABEL`); metrics must ignore examples
whose label is < 0. When there are several input pipelines (workers or TPU
hosts), every pipeline also yields the same number of batches, topping up
with batches made only of padding, so no worker waits for a batch that never
comes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from input_pipeline import preprocessing, records

# Label of the examples that pad evaluation batches to a static shape.
PADDING_LABEL = -1

# Only what the pipeline uses; the other features are never parsed.
_PARSE_SPEC = {key: records.FEATURE_SPEC[key] for key in ("image/encoded", "image/class/label")}

# Shards read at once. More than the cores, so one slow read (gs://) does
# not stall the others, and enough to mix classes before the shuffle buffer.
_MAX_OPEN_SHARDS = 16


def create_dataset(
    data_dir: str,
    split: str,
    *,
    batch_size: int,
    image_size: int,
    training: bool,
    input_context: tf.distribute.InputContext | None = None,
    dtype: tf.DType = tf.float32,
    shuffle_buffer: int = 2048,
    seed: int | None = None,
    info: records.DatasetInfo | None = None,
    cache_decoded: bool = False,
) -> tf.data.Dataset:
    """Batches of (images, labels) from the converter's records.

    Args:
      data_dir: local or gs:// folder written by `input_pipeline.make_tfrecords`.
      split: `train` or `validation`.
      batch_size: examples per batch of *this* input pipeline (for a strategy:
        `input_context.get_per_replica_batch_size(global_batch_size)`).
      image_size: side of the square output images.
      training: random crops, flips and rotations, shuffled, repeated forever,
        last partial batch dropped. Otherwise centre crop, every example of
        this pipeline's share exactly once in a fixed order, last batch
        padded (see the module docstring).
      input_context: from `strategy.distribute_datasets_from_function`; each
        input pipeline reads a disjoint subset of the shard files or, when
        there are fewer files than pipelines, of the records.
      dtype: of the images (float32, bfloat16, float16). Casting here puts the
        conversion on the host, off the accelerator.
      shuffle_buffer: records (still encoded) held for shuffling in training,
        capped at this pipeline's share of the split. 2048 is about half the
        Kaggle training split: ~100 MB of JPEG at the converter's default
        512 px, mixed further by the shard shuffle and interleave.
      seed: seeds the shard order, the shuffle and the augmentations. Training
        reads in parallel without preserving order, so even with a seed the
        batches are not bit-for-bit repeatable; evaluation always is.
      info: the data set's `dataset_info.json`; read from `data_dir` if None.
        With several pipelines or replicas, the records per shard are
        counted at each call unless `info` has them: pass
        `records.with_shard_lengths(info, data_dir)`, counted once, for
        records converted before dataset_info.json listed them.
      cache_decoded: training only: decode each image once, keep it in memory
        (squeezed to a square of `preprocessing.cache_side(image_size)`, with
        its transpose: 2 * 3 * side**2 bytes per image, 130 MB for the CPU
        demo), and augment whole batches from there with the same crop, flip
        and rotation distribution. A fifth of the input CPU time per image
        at 64 px; for data sets that fit in memory. Ignored for evaluation.

    Returns:
      images `[batch_size, image_size, image_size, 3]` in `dtype`, normalised
      with the data set's mean and std, and int32 labels `[batch_size]`.

    Raises:
      FileNotFoundError: `data_dir`, its `dataset_info.json` or the shards are
        missing.
      ValueError: shards missing or cut short by an incomplete conversion or
        copy, or, for training, an input pipeline left without records.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not tf.io.gfile.isdir(data_dir):
        raise FileNotFoundError(
            f"data_dir {data_dir} does not exist: create records with "
            f"`python -m input_pipeline.make_tfrecords --input_dir IMAGES --output_dir {data_dir}`"
        )
    if info is None:
        info = records.read_dataset_info(data_dir)
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    replicas_per_pipeline = (
        input_context.num_replicas_in_sync // num_pipelines if input_context else 1
    )
    if num_pipelines > 1 or replicas_per_pipeline > 1:
        # Sharing by record and the evaluation's top-up need the records per
        # shard (counted if the caller did not, see `info`).
        info = records.with_shard_lengths(info, data_dir, [split])
    shards = records.list_shards(data_dir, split, info)

    shard_lengths = info.shard_lengths.get(split)
    shares = _shares(len(shards), num_pipelines, shard_lengths)
    if training and shard_lengths is not None:
        _check_every_pipeline_has_records(shares, shard_lengths, split, data_dir)
    own = shares[pipeline_id]
    if own.stride > 1:
        # Evaluation reads its small split quickly either way.
        logging.log(
            logging.WARNING if training else logging.INFO,
            "the %s split has %d shards in %s, fewer than the %d input pipelines: each reads "
            "the whole split and keeps one record in %d; convert with more shards "
            "(--num_shards) for each to read only its own files",
            split, len(shards), data_dir, num_pipelines, num_pipelines,
        )
    files = tf.data.Dataset.from_tensor_slices(
        ([shards[i] for i in own.shards], tf.constant(own.offsets, tf.int64))
    )
    # Independent seeds for the shard order, the record shuffle and the
    # augmentations, different on every worker; None stays random.
    file_seed, shuffle_seed, augment_seed = (
        [None] * 3
        if seed is None
        else np.random.SeedSequence([seed, pipeline_id]).generate_state(3).tolist()
    )
    if training:
        files = files.shuffle(len(own.shards), seed=file_seed)
        if not cache_decoded:  # the cache replays the first pass instead
            files = files.repeat()

    def read_own_records(path: tf.Tensor, offset: tf.Tensor) -> tf.data.Dataset:
        shard = tf.data.TFRecordDataset(path)
        return shard if own.stride == 1 else shard.shard(own.stride, offset)

    ds = files.interleave(
        read_own_records,
        # More than this pipeline's files would open the next epoch's copies
        # of the same files at once.
        cycle_length=min(len(own.shards), _MAX_OPEN_SHARDS),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not training,
    )

    mean, std = info.mean, info.std
    if training:
        # One stateless seed per batch (split into one per example where
        # needed) keeps the preprocessing pure.
        batch_seeds = tf.data.Dataset.random(seed=augment_seed).batch(2, drop_remainder=True)
        # A buffer larger than this pipeline's share of the split would only
        # fill up with repeats (and, on gs://, re-read every shard many times).
        share = math.ceil(info.num_examples.get(split, shuffle_buffer) / num_pipelines)
        buffer = min(shuffle_buffer, share)
    if training and cache_decoded:
        side = preprocessing.cache_side(image_size)
        logging.info(
            "caching %d decoded training images at %d px in memory: about %.0f MB",
            share, side, share * 2 * side * side * 3 / 2**20,
        )

        def parse_and_decode(serialized: tf.Tensor):
            image_bytes, label = _parse(serialized)
            images, shape = preprocessing.decode_for_cache(image_bytes, side)
            return images, shape, label

        ds = ds.map(parse_and_decode, num_parallel_calls=tf.data.AUTOTUNE).cache()
        ds = ds.shuffle(buffer, seed=shuffle_seed).repeat().batch(batch_size, drop_remainder=True)

        # XLA fuses the crops' gathers and interpolation, the normalization
        # and the cast into a few loops over the batch: the whole pipeline
        # took a third less CPU time than with TF's kernels, op by op.
        @tf.function(jit_compile=True)
        def augment_images(images, shapes, batch_seed: tf.Tensor):
            images = preprocessing.random_crop_flip_rotate_batch(
                images, shapes, batch_seed, image_size
            )
            return tf.cast(preprocessing.normalize(images, mean, std), dtype)

        def augment(batch, batch_seed: tf.Tensor):
            images, shapes, labels = batch
            return augment_images(images, shapes, batch_seed), labels

        ds = tf.data.Dataset.zip((ds, batch_seeds)).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    elif training:
        # Shuffle the small encoded records, before they are decoded.
        ds = ds.shuffle(buffer, seed=shuffle_seed).batch(batch_size, drop_remainder=True)

        def parse_and_augment(serialized: tf.Tensor, batch_seed: tf.Tensor):
            image_bytes, labels = _parse(serialized)
            seeds = tf.random.experimental.stateless_split(batch_seed, num=batch_size)
            images = preprocessing.preprocess_for_train(image_bytes, seeds, image_size, mean, std)
            return tf.cast(images, dtype), labels

        ds = tf.data.Dataset.zip((ds, batch_seeds)).map(
            parse_and_augment, num_parallel_calls=tf.data.AUTOTUNE
        )
    else:

        def parse_and_preprocess(serialized: tf.Tensor):
            image_bytes, labels = _parse(serialized)
            images = preprocessing.preprocess_for_eval(image_bytes, image_size, mean, std)
            return _pad_batch(tf.cast(images, dtype), labels, batch_size)

        ds = ds.batch(batch_size).map(parse_and_preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        # tf.distribute hands each replica whole batches and drops a last
        # step that cannot feed every replica: so every pipeline yields the
        # same number of batches, a multiple of the replicas it feeds.
        if num_pipelines > 1 or replicas_per_pipeline > 1:
            num_batches = _max_batches_per_pipeline(shares, shard_lengths, batch_size)
            num_batches = math.ceil(num_batches / replicas_per_pipeline) * replicas_per_pipeline
            ds = _top_up_with_padding(ds, num_batches)

    return ds.with_options(_options(training)).prefetch(tf.data.AUTOTUNE)


def _parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Serialized tf.train.Examples (a batch or one) -> (encoded images, int32 labels)."""
    features = tf.io.parse_example(serialized, _PARSE_SPEC)
    return features["image/encoded"], tf.cast(features["image/class/label"], tf.int32)


@dataclasses.dataclass(frozen=True)
class _Share:
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
) -> list[_Share]:
    """What each input pipeline reads: disjoint, and together every record once.

    `shard_lengths` may be None only with at least as many shards as pipelines.
    """
    if num_shards >= num_pipelines:
        # By file: each pipeline reads only its own files instead of reading
        # everything and discarding most of it.
        files = [tuple(range(p, num_shards, num_pipelines)) for p in range(num_pipelines)]
        return [_Share(own, (0,) * len(own), 1) for own in files]
    # By record, numbered across the shards in order: pipeline p keeps
    # records p::n, so the shares differ by one record at most and stay
    # disjoint whatever order the files are read in.
    starts = list(itertools.accumulate(shard_lengths, initial=0))[:-1]
    return [
        _Share(tuple(range(num_shards)), tuple((p - start) % num_pipelines for start in starts),
               num_pipelines)
        for p in range(num_pipelines)
    ]


def _check_every_pipeline_has_records(
    shares: list[_Share], shard_lengths: Sequence[int], split: str, data_dir: str
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


def _pad_batch(images: tf.Tensor, labels: tf.Tensor, batch_size: int):
    """Pads a (last, partial) batch to `batch_size` with zero images labelled -1."""
    missing = batch_size - tf.shape(labels)[0]
    images = tf.pad(images, [[0, missing], [0, 0], [0, 0], [0, 0]])
    labels = tf.pad(labels, [[0, missing]], constant_values=PADDING_LABEL)
    # A static batch dimension: XLA and TPUs compile one program for all.
    images = tf.ensure_shape(images, [batch_size, *images.shape[1:]])
    return images, tf.ensure_shape(labels, [batch_size])


def _top_up_with_padding(ds: tf.data.Dataset, num_batches: int) -> tf.data.Dataset:
    """Appends all-padding batches until there are exactly `num_batches`."""
    images_spec, labels_spec = ds.element_spec
    padding = tf.data.Dataset.from_tensors(
        (
            tf.zeros(images_spec.shape, images_spec.dtype),
            tf.fill(labels_spec.shape, tf.constant(PADDING_LABEL, labels_spec.dtype)),
        )
    )
    return ds.concatenate(padding.repeat()).take(num_batches)


def _max_batches_per_pipeline(
    shares: list[_Share], shard_lengths: Sequence[int], batch_size: int
) -> int:
    """Batches of the input pipeline with the most evaluation examples.

    From exact record counts: an estimate that came out low would silently
    drop examples.
    """
    return math.ceil(max(share.num_records(shard_lengths) for share in shares) / batch_size)


def _options(training: bool) -> tf.data.Options:
    options = tf.data.Options()
    # Training needs no fixed order: let parallel reads and maps hand over
    # whichever element is ready first. Evaluation keeps its order.
    options.deterministic = not training
    # Each op of the pipeline on one thread: parallelism comes from
    # tf.data's own map and read threads. Otherwise a batched op (the cached
    # path's crops) spreads over the intra-op pool that runs the
    # training step and queues between its ops: with one thread, the records-fed
    # loop went from 88-91% to 92-94% of the in-memory-fed loop's images/s on 2
    # cores (paired runs in one process). Each pipeline alone, cached or not,
    # costs the same CPU per image either way, within this machine's noise.
    options.threading.max_intra_op_parallelism = 1
    # Everything else stays at tf.data's defaults (autotuned parallelism and
    # prefetch, map+batch fusion).
    return options
