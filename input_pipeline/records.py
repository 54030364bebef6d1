"""The on-disk contract between the converter and the input pipeline.

One place defines the tf.train.Example schema, the shard file names and
`records_info.json`, so the writer (`make_tfrecords`) and the reader
(`input_pipeline`) cannot drift apart. The same folder is also a TFDS data
set: `dataset_info.json` and `features.json` there are TFDS's
(`conversion/tfds_metadata.py`). The schema is the Inception
`build_image_data` convention that TF Model Garden's classification decoder
reads (see DATASET.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import posixpath
import struct
from typing import Any, Sequence

from absl import logging
import tensorflow as tf

from input_pipeline import storage
from input_pipeline.preprocessing import decode_image

TRAIN = "train"
VALIDATION = "validation"
SPLITS = (TRAIN, VALIDATION)

INFO_FILE = "records_info.json"
LABELS_FILE = "labels.txt"
# TFDS's metadata, beside ours (conversion/tfds_metadata.py). INFO_FILE's
# content had this name before the folder was a TFDS data set too:
# `read_dataset_info` still reads it there, so folders converted then train.
TFDS_INFO_FILE = "dataset_info.json"

# Per-channel statistics of the real Aarhus/Kaggle images (0..1 scale), used
# when records_info.json does not carry statistics of its own.
DEFAULT_MEAN = (0.329, 0.289, 0.207)
DEFAULT_STD = (0.093, 0.096, 0.106)

FEATURE_SPEC = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string, default_value="JPEG"),
    "image/colorspace": tf.io.FixedLenFeature([], tf.string, default_value="RGB"),
    "image/channels": tf.io.FixedLenFeature([], tf.int64, default_value=3),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/class/text": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_example(
    encoded_jpeg: bytes,
    *,
    height: int,
    width: int,
    filename: str,
    label: int,
    class_name: str,
) -> tf.train.Example:
    """Builds one record in the conventional image-classification schema."""
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": _bytes(encoded_jpeg),
                "image/format": _bytes(b"JPEG"),
                "image/colorspace": _bytes(b"RGB"),
                "image/channels": _int64(3),
                "image/height": _int64(height),
                "image/width": _int64(width),
                "image/filename": _bytes(filename.encode("utf-8")),
                "image/class/label": _int64(label),
                "image/class/text": _bytes(class_name.encode("utf-8")),
            }
        )
    )


def shard_name(split: str, index: int, num_shards: int) -> str:
    """`train-00003-of-00016.tfrecord`."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def shard_pattern(data_dir: str, split: str) -> str:
    return posixpath.join(data_dir, f"{split}-?????-of-?????.tfrecord")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the input pipeline and trainer need to know about a converted set."""

    class_names: tuple[str, ...]
    num_examples: dict[str, int]
    num_shards: dict[str, int]
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    # Records per shard, in shard-index order. Splits converted before the
    # converter wrote them are absent: see `with_shard_lengths`.
    shard_lengths: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Writes JSON all-or-nothing (see `storage.write_atomically`)."""
    storage.write_atomically(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_labels(data_dir: str, class_names: Sequence[str]) -> None:
    storage.write_atomically(posixpath.join(data_dir, LABELS_FILE),
                             "".join(name + "\n" for name in class_names))


def read_labels(data_dir: str) -> list[str]:
    with tf.io.gfile.GFile(posixpath.join(data_dir, LABELS_FILE)) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _is_tfds_info(path: str) -> bool:
    """Whether `path` is TFDS's dataset_info.json: its splits are a list, ours a mapping."""
    try:
        with tf.io.gfile.GFile(path) as f:
            return isinstance(json.load(f).get("splits"), list)
    except (ValueError, AttributeError):
        return False  # damaged: read as ours, which names the damage


def _info_path(data_dir: str) -> str:
    """INFO_FILE in `data_dir`, or TFDS_INFO_FILE where that holds our content."""
    path = posixpath.join(data_dir, INFO_FILE)
    if tf.io.gfile.exists(path):
        return path
    legacy = posixpath.join(data_dir, TFDS_INFO_FILE)
    if tf.io.gfile.exists(legacy):
        if not _is_tfds_info(legacy):
            logging.info("reading %s: converted before %s took its place", legacy, INFO_FILE)
            return legacy
        raise FileNotFoundError(
            f"{data_dir} holds a TFDS data set that the converter did not write: convert it "
            "with `python -m input_pipeline.make_tfrecords --tfds_name=NAME "
            "--tfds_data_dir=DIR --output_dir=OUT` and train on OUT")
    raise FileNotFoundError(
        f"{path} not found: --data_dir must be a folder written by "
        "`python -m input_pipeline.make_tfrecords`"
    )


def read_dataset_info(data_dir: str) -> DatasetInfo:
    """Reads `records_info.json` written by the converter.

    Raises:
      FileNotFoundError: with a message naming the directory and the fix.
      ValueError: the file is damaged or not the converter's.
    """
    path = _info_path(data_dir)
    try:
        with tf.io.gfile.GFile(path) as f:
            raw = json.load(f)
        splits = raw["splits"]
        image = raw.get("image", {})
        info = DatasetInfo(
            class_names=tuple(raw["class_names"]),
            num_examples={s: int(v["num_examples"]) for s, v in splits.items()},
            num_shards={s: int(v["num_shards"]) for s, v in splits.items()},
            mean=tuple(image.get("mean", DEFAULT_MEAN)),
            std=tuple(image.get("std", DEFAULT_STD)),
            shard_lengths={s: tuple(int(n) for n in v["shard_lengths"])
                           for s, v in splits.items() if "shard_lengths" in v},
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        # Hand-edited, truncated or another tool's file of the same name.
        what = f"no {e}" if isinstance(e, KeyError) else storage.first_line(e)
        raise ValueError(
            f"{path} is not one the converter writes ({what}): convert the images again "
            "with `python -m input_pipeline.make_tfrecords`") from e
    if not info.class_names:
        raise ValueError(f"{path} lists no classes: convert the images again")
    statistics = (*info.mean, *info.std)
    if len(statistics) != 6 or not all(math.isfinite(v) for v in statistics) or min(info.std) <= 0:
        # Normalising by them would feed the model infinities.
        raise ValueError(f"{path} has unusable channel statistics (mean {list(info.mean)}, std "
                         f"{list(info.std)}): convert the images again")
    return info


def list_shards(data_dir: str, split: str, info: DatasetInfo) -> list[str]:
    """The shard files of `split`, sorted, checked against `records_info.json`.

    Raises:
      FileNotFoundError: no shard of `split` in `data_dir`.
      ValueError: more or fewer shard files, or entries of shard_lengths, than
        records_info.json lists: an interrupted conversion or copy.
    """
    pattern = shard_pattern(data_dir, split)
    # Sorted, so that every worker agrees on which files and records are whose.
    shards = sorted(tf.io.gfile.glob(pattern))
    if not shards:
        raise FileNotFoundError(
            f"no {split} shards match {pattern}: create records with "
            f"`python -m input_pipeline.make_tfrecords --input_dir IMAGES --output_dir {data_dir}`"
        )
    expected = info.num_shards.get(split)
    if expected is not None and len(shards) != expected:
        raise ValueError(
            f"found {len(shards)} {split} shards in {data_dir} but records_info.json "
            f"lists {expected}: an interrupted conversion or copy? Convert or copy again"
        )
    # Lengths of other files would misplace the pipelines' shares of records.
    lengths = info.shard_lengths.get(split)
    if lengths is not None and len(lengths) != len(shards):
        raise ValueError(
            f"found {len(shards)} {split} shards in {data_dir} but records_info.json has "
            f"shard_lengths for {len(lengths)}: an interrupted conversion or copy? "
            "Convert or copy again"
        )
    return shards


def with_shard_lengths(info: DatasetInfo, data_dir: str,
                       splits: Sequence[str] | None = None) -> DatasetInfo:
    """`info` with the records per shard of every split, counted where it lacks them.

    For records converted before records_info.json listed them: the count is
    a read of the split's record headers, so a trainer does it once at
    start-up rather than at every evaluation. It opens files only, with no
    TensorFlow op, so it can run before a distribution strategy is set up
    (MultiWorkerMirrored must be created before TensorFlow's runtime starts).
    Every split is checked against its shard files, so a missing or partly
    copied shard stops the run before its first step, not at its first
    evaluation.

    Args:
      info: as read by `read_dataset_info(data_dir)`.
      data_dir: the folder holding the shards.
      splits: the splits to check and count; default every split in `info`.

    Raises:
      FileNotFoundError, ValueError: see `list_shards`; ValueError too for a
        truncated shard.
    """
    lengths = dict(info.shard_lengths)
    for split in info.num_shards if splits is None else splits:
        shards = list_shards(data_dir, split, info)
        if split not in lengths:
            logging.info("counting the records of the %d %s shards in %s: records_info.json "
                         "predates shard_lengths", len(shards), split, data_dir)
            lengths[split] = tuple(_count_records(path) for path in shards)
        expected = info.num_examples.get(split)
        if expected is not None and sum(lengths[split]) != expected:
            # Lengths that do not add up would misplace or drop evaluation examples.
            raise ValueError(
                f"the {split} shards in {data_dir} hold {sum(lengths[split])} records but "
                f"records_info.json lists {expected} examples: an interrupted conversion or "
                "copy? Convert or copy again")
    return dataclasses.replace(info, shard_lengths=lengths)


# A TFRecord: its data's length (little-endian uint64) and that length's
# CRC (uint32), the data, the data's CRC (uint32).
_RECORD_HEADER = struct.Struct("<QI")
_RECORD_FOOTER_BYTES = 4


def _count_records(path: str) -> int:
    """Records in one TFRecord file, read from their headers; the data is skipped."""
    count = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        size = f.size()
        while (start := f.tell()) < size:
            header = f.read(_RECORD_HEADER.size)
            # A header cut short counts as a record running past the end.
            length = (_RECORD_HEADER.unpack(header)[0] if len(header) == _RECORD_HEADER.size
                      else size)
            end = start + _RECORD_HEADER.size + length + _RECORD_FOOTER_BYTES
            if end > size:
                raise ValueError(
                    f"{path} ends inside its record {count + 1}: an interrupted conversion or "
                    "copy? Convert or copy again"
                )
            f.seek(end)
            count += 1
    return count


def find_corrupt_shards(data_dir: str, split: str) -> list[str]:
    """Shards of `split` that fail to read, parse or decode, each with the reason.

    A slow full read: for naming the culprit after the input pipeline failed,
    since tf.data's own error does not say which file it was reading.
    """
    corrupt = []
    for path in sorted(tf.io.gfile.glob(shard_pattern(data_dir, split))):
        try:
            for serialized in tf.data.TFRecordDataset(path):
                # Every feature of the schema, not only those the pipeline reads.
                features = tf.io.parse_single_example(serialized, FEATURE_SPEC)
                decode_image(features["image/encoded"])
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            reason = e.message.strip().splitlines()[0] if e.message.strip() else type(e).__name__
            corrupt.append(f"{path} ({reason})")
    return corrupt
