"""The on-disk contract between the converter and the input pipeline.

One place defines the tf.train.Example schema, the shard file names and
`dataset_info.json`, so the writer (`make_tfrecords`) and the reader
(`input_pipeline`) cannot drift apart. The schema is the Inception
`build_image_data` convention that TF Model Garden's classification decoder
reads (see DATASET.md).
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from typing import Any, Sequence

import tensorflow as tf

from input_pipeline import preprocessing

TRAIN = "train"
VALIDATION = "validation"
SPLITS = (TRAIN, VALIDATION)

INFO_FILE = "dataset_info.json"
LABELS_FILE = "labels.txt"

# Per-channel statistics of the real Aarhus/Kaggle images (0..1 scale), used
# when dataset_info.json does not carry statistics of its own.
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


def find_corrupt_shards(data_dir: str, split: str) -> list[str]:
    """Shards of `split` that fail to read, parse or decode, each with the reason.

    A slow full read: for naming the culprit after the input pipeline failed,
    since tf.data's own error does not say which file it was reading.
    """
    corrupt = []
    for path in sorted(tf.io.gfile.glob(shard_pattern(data_dir, split))):
        try:
            for serialized in tf.data.TFRecordDataset(path):
                features = tf.io.parse_single_example(serialized, FEATURE_SPEC)
                preprocessing.decode_image(features["image/encoded"])
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            reason = e.message.strip().splitlines()[0] if e.message.strip() else type(e).__name__
            corrupt.append(f"{path} ({reason})")
    return corrupt


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the input pipeline and trainer need to know about a converted set."""

    class_names: tuple[str, ...]
    num_examples: dict[str, int]
    num_shards: dict[str, int]
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Writes JSON all-or-nothing: a temp file, then a rename.

    On gs:// a rename is copy + delete, but the copy is a single object
    write, so readers still never see a half-written file.
    """
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)


def write_labels(data_dir: str, class_names: Sequence[str]) -> None:
    path = posixpath.join(data_dir, LABELS_FILE)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write("".join(name + "\n" for name in class_names))
    tf.io.gfile.rename(tmp, path, overwrite=True)


def read_labels(data_dir: str) -> list[str]:
    with tf.io.gfile.GFile(posixpath.join(data_dir, LABELS_FILE)) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def read_dataset_info(data_dir: str) -> DatasetInfo:
    """Reads `dataset_info.json` written by the converter.

    Raises:
      FileNotFoundError: with a message naming the directory and the fix.
    """
    path = posixpath.join(data_dir, INFO_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} not found: --data_dir must be a folder written by "
            "`python -m input_pipeline.make_tfrecords`"
        )
    with tf.io.gfile.GFile(path) as f:
        raw = json.load(f)
    splits = raw["splits"]
    image = raw.get("image", {})
    return DatasetInfo(
        class_names=tuple(raw["class_names"]),
        num_examples={s: int(v["num_examples"]) for s, v in splits.items()},
        num_shards={s: int(v["num_shards"]) for s, v in splits.items()},
        mean=tuple(image.get("mean", DEFAULT_MEAN)),
        std=tuple(image.get("std", DEFAULT_STD)),
    )
