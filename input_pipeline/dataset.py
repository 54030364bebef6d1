"""Records -> batches: the tf.data pipeline for training and evaluation.

One chain, read top to bottom from `create_dataset` through the functions
it calls in turn:
list shards -> shard per input pipeline (`sharing.share_split`) -> interleave
(`_read_share`) -> shuffle -> batch -> parse -> decode/augment
(`_train_batches`, or `_eval_batches` without the shuffle) -> prefetch.
With `cache_decoded`, training decodes once instead (`_cached_train_batches`,
augmenting with `cached_augment.py`):
... interleave -> parse -> decode -> cache -> shuffle -> batch -> augment ...
Training may add RandAugment (`randaugment.py`) to either path, after the
crops and before normalisation, and mixup or CutMix (`mixing.py`) after
normalisation; then batches hold soft targets instead of labels.

Records are batched while still serialized, and each map call parses and
preprocesses a whole batch (one image at a time, with the pure functions of
`preprocessing.py`): tf.data's overhead per map call would otherwise show
at small image sizes, where decoding and resizing are cheap.

Input pipelines (one per worker or TPU host) share the split by file when
there are at least as many shards as pipelines, else by record: each then
reads every shard and keeps its every n-th record.

Evaluation batches have a static shape. The last batch is padded with
all-zero images labelled -1 (`PADDING_LABEL`); metrics must ignore examples
whose label is < 0. When there are several input pipelines (workers or TPU
hosts), every pipeline also yields the same number of batches, topping up
with batches made only of padding, so no worker waits for a batch that never
comes.

When a pipeline fails on a damaged record, `records.find_corrupt_shards`
names the shard it came from, which tf.data's error does not.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from input_pipeline import cached_augment, preprocessing, randaugment, records, sharing
from input_pipeline import mixing as mixing_lib

# Label of the examples that pad evaluation batches to a static shape.
PADDING_LABEL = -1

# Only what the pipeline uses; the other features are never parsed.
_PARSE_SPEC = {key: records.FEATURE_SPEC[key] for key in ("image/encoded", "image/class/label")}

# Shards read at once. More than the cores, so one slow read (gs://) does
# not stall the others, and enough to mix classes before the shuffle buffer.
_MAX_OPEN_SHARDS = 16


# Over 60 lines by its docstring (one Args entry per option) alone: the body is a
# short dispatcher, its checks and branches in the functions below.
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
    randaugment: tuple[int, float] | None = None,
    mixing: mixing_lib.MixOptions | None = None,
) -> tf.data.Dataset:
    """Batches of (images, labels) from the converter's records.

    Args:
      data_dir: local or gs:// folder written by `input_pipeline.make_tfrecords`.
      split: `train` or `validation`.
      batch_size: examples per batch of this input pipeline (for a strategy:
        `input_context.get_per_replica_batch_size(global_batch_size)`).
      image_size: side of the square output images.
      training: random crops, flips and rotations, shuffled, repeated, last
        partial batch dropped. Otherwise centre crops of this pipeline's share
        in a fixed order, each once, the last batch padded (module docstring).
      input_context: from `strategy.distribute_datasets_from_function`.
      dtype: of the images; casting here keeps the conversion on the host.
      shuffle_buffer: encoded records held for shuffling, capped at this
        pipeline's share (2048 is about half the Kaggle training split).
      seed: seeds shard order, shuffle and augmentation; parallel reads still
        reorder training batches, evaluation is always repeatable.
      info: `records_info.json`, read if None. With several pipelines or
        replicas, pass `records.with_shard_lengths(info, data_dir)` once, or
        records of old conversions are counted at every call.
      cache_decoded: training only: decode each image once into memory
        (2 * 3 * `cached_augment.cache_side(image_size)`**2 bytes each) and
        augment whole batches from there, with the same distribution.
      randaugment: training only: (N, M), RandAugment with N operations per
        image at magnitude M (0..10) after the crops
        (`randaugment.randaugment_batch`); None: off.
      mixing: training only: mixup and CutMix of whole batches
        (`mixing.mix_batch`); None or not `enabled`: off.

    Returns:
      images `[batch_size, image_size, image_size, 3]` in `dtype`, normalised
      with the data set's mean and std, and int32 labels `[batch_size]`; with
      `mixing` enabled, float32 targets `[batch_size, num_classes]` instead of
      labels, each row summing to 1 (no label smoothing).

    Raises:
      FileNotFoundError: `data_dir`, its `records_info.json` or shards missing.
      ValueError: shards missing or cut short, a training pipeline left
        without records, or `randaugment` or `mixing` for evaluation.
    """
    mixing = _check_arguments(batch_size, training, randaugment, mixing)
    # The defaults: one pipeline feeding one replica.
    context = input_context or tf.distribute.InputContext()
    num_pipelines = context.num_input_pipelines
    replicas_per_pipeline = context.num_replicas_in_sync // num_pipelines
    distributed = num_pipelines > 1 or replicas_per_pipeline > 1
    info = _read_info(data_dir, split, info, with_shard_lengths=distributed)

    shards, shares = sharing.share_split(data_dir, split, info, num_pipelines, training=training)
    seeds = _Seeds.for_pipeline(seed, context.input_pipeline_id)
    # The cache replays its first pass instead of reading the files again.
    own_records = _read_share(shards, shares[context.input_pipeline_id], training=training,
                              repeat=training and not cache_decoded, seed=seeds.files)
    spec = _BatchSpec(batch_size, image_size, dtype, info.mean, info.std,
                      randaugment, mixing, info.num_classes)
    if not training:
        num_batches = None  # as many as this pipeline's records fill
        if distributed:
            num_batches = sharing.eval_batches_per_pipeline(
                shares, info.shard_lengths[split], batch_size, replicas_per_pipeline)
        ds = _eval_batches(own_records, spec, num_batches)
    else:
        # A buffer larger than this pipeline's share of the split would only
        # fill up with repeats (and, on gs://, re-read every shard many times).
        share = math.ceil(info.num_examples.get(split, shuffle_buffer) / num_pipelines)
        make_batches = (functools.partial(_cached_train_batches, num_cached=share)
                        if cache_decoded else _train_batches)
        ds = make_batches(own_records, spec, min(shuffle_buffer, share), seeds)
    return ds.with_options(_options(training)).prefetch(tf.data.AUTOTUNE)


def _check_arguments(batch_size: int, training: bool, randaugment: tuple[int, float] | None,
                     mixing: mixing_lib.MixOptions | None) -> mixing_lib.MixOptions | None:
    """Refuses what no pipeline can do; returns `mixing` if it mixes at all, else None."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    mixing = mixing if mixing is not None and mixing.enabled else None
    if not training and (randaugment is not None or mixing is not None):
        raise ValueError(
            f"randaugment={randaugment} and mixing={mixing} augment training batches only: "
            "pass them with training=True, and leave evaluation as it is")
    return mixing


def _read_info(data_dir: str, split: str, info: records.DatasetInfo | None, *,
               with_shard_lengths: bool) -> records.DatasetInfo:
    if not tf.io.gfile.isdir(data_dir):
        raise FileNotFoundError(
            f"data_dir {data_dir} does not exist: create records with "
            f"`python -m input_pipeline.make_tfrecords --input_dir IMAGES --output_dir {data_dir}`"
        )
    info = info or records.read_dataset_info(data_dir)
    # Sharing by record and the evaluation's top-up need the records per
    # shard (counted if the caller did not, see `create_dataset`'s `info`).
    return records.with_shard_lengths(info, data_dir, [split]) if with_shard_lengths else info


@dataclasses.dataclass(frozen=True)
class _BatchSpec:
    """What every batch of one pipeline holds, and how its images are normalised and augmented."""

    batch_size: int
    image_size: int
    dtype: tf.DType
    mean: Sequence[float]
    std: Sequence[float]
    randaugment: tuple[int, float] | None = None  # (N, M)
    mixing: mixing_lib.MixOptions | None = None  # enabled, or None
    num_classes: int = 0  # the targets' length, with mixing


class _Seeds(NamedTuple):
    """Independent seeds for the shard order, the record shuffle and the augmentations."""

    files: int | None
    shuffle: int | None
    augment: int | None

    @classmethod
    def for_pipeline(cls, seed: int | None, pipeline_id: int) -> _Seeds:
        # Different on every worker; None stays random.
        if seed is None:
            return cls(None, None, None)
        return cls(*np.random.SeedSequence([seed, pipeline_id]).generate_state(3).tolist())


def _read_share(
    shards: list[str], own: sharing.Share, *, training: bool, repeat: bool, seed: int | None
) -> tf.data.Dataset:
    """This pipeline's serialized records, its shards read in parallel.

    In training the shard order is shuffled (and, with `repeat`, drawn anew
    every epoch); evaluation reads in a fixed order.
    """
    files = tf.data.Dataset.from_tensor_slices(
        ([shards[i] for i in own.shards], tf.constant(own.offsets, tf.int64))
    )
    if training:
        files = files.shuffle(len(own.shards), seed=seed)
        if repeat:
            files = files.repeat()

    def read_own_records(path: tf.Tensor, offset: tf.Tensor) -> tf.data.Dataset:
        shard = tf.data.TFRecordDataset(path)
        return shard if own.stride == 1 else shard.shard(own.stride, offset)

    return files.interleave(
        read_own_records,
        # More than this pipeline's files would open the next epoch's copies
        # of the same files at once.
        cycle_length=min(len(own.shards), _MAX_OPEN_SHARDS),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not training,
    )


def _batch_seeds(seed: int | None) -> tf.data.Dataset:
    """One stateless seed per batch (split per example where needed): pure preprocessing."""
    return tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)


def _finish_batch(images: tf.Tensor, labels: tf.Tensor, randaugment_seed: tf.Tensor | None,
                  mix_seed: tf.Tensor | None, spec: _BatchSpec) -> tuple[tf.Tensor, tf.Tensor]:
    """Cropped float32 0..255 images -> RandAugment (on pixel values), normalisation,
    mixing (in float32), the cast: (images in `spec.dtype`, labels or soft targets)."""
    if spec.randaugment is not None:
        images = randaugment.randaugment_batch(images, randaugment_seed, *spec.randaugment)
    images = preprocessing.normalize(images, spec.mean, spec.std)
    if spec.mixing is not None:
        images, labels = mixing_lib.mix_batch(images, labels, mix_seed, spec.num_classes,
                                              spec.mixing)
    return tf.cast(images, spec.dtype), labels


def _train_batches(
    own_records: tf.data.Dataset, spec: _BatchSpec, buffer: int, seeds: _Seeds
) -> tf.data.Dataset:
    """Shuffled records, batched, then decoded and augmented image by image
    (RandAugment and mixing, if asked, on the whole batch)."""
    batch_seeds = _batch_seeds(seeds.augment)
    # Shuffle the small encoded records, before they are decoded.
    ds = own_records.shuffle(buffer, seed=seeds.shuffle)
    ds = ds.batch(spec.batch_size, drop_remainder=True)

    def parse_and_augment(serialized: tf.Tensor, batch_seed: tf.Tensor):
        image_bytes, labels = _parse(serialized)
        if spec.randaugment is None and spec.mixing is None:
            example_seeds = tf.random.experimental.stateless_split(batch_seed, num=spec.batch_size)
            images = preprocessing.preprocess_for_train(
                image_bytes, example_seeds, spec.image_size, spec.mean, spec.std)
            return tf.cast(images, spec.dtype), labels
        # RandAugment and mixing work on the whole batch: it is normalised
        # after them, not image by image.
        crop_seed, randaugment_seed, mix_seed = tf.unstack(preprocessing.split_seed(batch_seed, 3))
        example_seeds = tf.random.experimental.stateless_split(crop_seed, num=spec.batch_size)
        images = preprocessing.crop_flip_resize_for_train(
            image_bytes, example_seeds, spec.image_size)
        return _finish_batch(images, labels, randaugment_seed, mix_seed, spec)

    return tf.data.Dataset.zip((ds, batch_seeds)).map(
        parse_and_augment, num_parallel_calls=tf.data.AUTOTUNE)


def _cached_train_batches(
    own_records: tf.data.Dataset, spec: _BatchSpec, buffer: int, seeds: _Seeds,
    *, num_cached: int,
) -> tf.data.Dataset:
    """Records decoded once into a cache, shuffled and batched from there, and
    augmented a whole batch at a time (`cached_augment`).

    `own_records` must not repeat: its first pass fills the cache of about
    `num_cached` images.
    """
    batch_seeds = _batch_seeds(seeds.augment)
    side = cached_augment.cache_side(spec.image_size)
    logging.info(
        "caching %d decoded training images at %d px in memory: about %.0f MB",
        num_cached, side, num_cached * 2 * side * side * 3 / 2**20,
    )

    def parse_and_decode(serialized: tf.Tensor):
        image_bytes, label = _parse(serialized)
        images, shape = cached_augment.decode_for_cache(image_bytes, side)
        return images, shape, label

    ds = own_records.map(parse_and_decode, num_parallel_calls=tf.data.AUTOTUNE).cache()
    ds = ds.shuffle(buffer, seed=seeds.shuffle).repeat().batch(
        spec.batch_size, drop_remainder=True)

    def crop(images, shapes, seed: tf.Tensor):
        return cached_augment.random_crop_flip_rotate_batch(images, shapes, seed, spec.image_size)

    compiled = functools.partial(tf.function, jit_compile=True)
    if spec.randaugment is None and spec.mixing is None:
        # XLA fuses the crops' gathers and interpolation, the normalization
        # and the cast into a few loops over the batch, where TF's kernels, op
        # by op, would each make a copy of it.
        @compiled
        def augment_images(images, shapes, labels, batch_seed: tf.Tensor):
            return _finish_batch(crop(images, shapes, batch_seed), labels, None, None, spec)
    else:
        # The crops compiled apart: in one program, XLA ran 1.3 to 2 times
        # slower (at 64 px), as if it recomputed crops that the next stage
        # reads in another order (RandAugment's gathers, the reversed batch).
        crop_compiled = compiled(crop)
        finish_compiled = compiled(functools.partial(_finish_batch, spec=spec))

        def augment_images(images, shapes, labels, batch_seed: tf.Tensor):
            crop_seed, randaugment_seed, mix_seed = tf.unstack(
                preprocessing.split_seed(batch_seed, 3))
            images = crop_compiled(images, shapes, crop_seed)
            return finish_compiled(images, labels, randaugment_seed, mix_seed)

    def augment(batch, batch_seed: tf.Tensor):
        images, shapes, labels = batch
        return augment_images(images, shapes, labels, batch_seed)

    return tf.data.Dataset.zip((ds, batch_seeds)).map(augment, num_parallel_calls=tf.data.AUTOTUNE)


def _eval_batches(
    own_records: tf.data.Dataset, spec: _BatchSpec, num_batches: int | None
) -> tf.data.Dataset:
    """Records in order, batched, decoded and centre-cropped; the last batch
    padded, and with `num_batches`, topped up with padding batches to that many."""

    def parse_and_preprocess(serialized: tf.Tensor):
        image_bytes, labels = _parse(serialized)
        images = preprocessing.preprocess_for_eval(
            image_bytes, spec.image_size, spec.mean, spec.std)
        return _pad_batch(tf.cast(images, spec.dtype), labels, spec.batch_size)

    ds = own_records.batch(spec.batch_size).map(
        parse_and_preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return ds if num_batches is None else _top_up_with_padding(ds, num_batches)


def _parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Serialized tf.train.Examples (a batch or one) -> (encoded images, int32 labels)."""
    features = tf.io.parse_example(serialized, _PARSE_SPEC)
    return features["image/encoded"], tf.cast(features["image/class/label"], tf.int32)


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


def _options(training: bool) -> tf.data.Options:
    options = tf.data.Options()
    # Training needs no fixed order: let parallel reads and maps hand over
    # whichever element is ready first. Evaluation keeps its order.
    options.deterministic = not training
    # Each op of the pipeline on one thread: parallelism comes from
    # tf.data's own map and read threads. Otherwise a batched op (the cached
    # path's crops) spreads over the intra-op pool that runs the training
    # step and queues between its ops, which slows the records-fed loop; the
    # pipeline alone costs the same CPU per image either way.
    options.threading.max_intra_op_parallelism = 1
    # Everything else stays at tf.data's defaults (autotuned parallelism and
    # prefetch, map+batch fusion).
    return options
