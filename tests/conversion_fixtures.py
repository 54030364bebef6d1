"""Running the converter in tests, and reading back what it wrote."""

from __future__ import annotations

import glob
import os
import sys

import tensorflow as tf

from input_pipeline import records
from input_pipeline.conversion import pipeline
from input_pipeline.conversion.options import ConvertOptions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
MODULE = [PYTHON, "-m", "input_pipeline.make_tfrecords"]
# What TFDS's metadata writer leaves beside the shards, for a source that
# states no licence: the TFDS data set's metadata and the ClassLabel's names.
TFDS_FILES = {"dataset_info.json", "features.json", "image.class.label.labels.txt"}


def read_split(data_dir: str, split: str) -> list[dict]:
    """Every record of a split, parsed with the shared schema, image decoded."""
    files = sorted(tf.io.gfile.glob(records.shard_pattern(data_dir, split)))
    out = []
    for serialized in tf.data.TFRecordDataset(files):
        parsed = tf.io.parse_single_example(serialized, records.FEATURE_SPEC)
        image = tf.io.decode_jpeg(parsed["image/encoded"]).numpy()
        out.append({
            "image": image,
            "filename": parsed["image/filename"].numpy().decode(),
            "label": int(parsed["image/class/label"]),
            "text": parsed["image/class/text"].numpy().decode(),
            "height": int(parsed["image/height"]),
            "width": int(parsed["image/width"]),
            "format": parsed["image/format"].numpy().decode(),
            "colorspace": parsed["image/colorspace"].numpy().decode(),
            "channels": int(parsed["image/channels"]),
        })
    return out


def all_records(data_dir: str) -> dict[str, dict]:
    """filename -> record, over both splits (each record knows its split)."""
    found = {}
    for split in records.SPLITS:
        for record in read_split(data_dir, split):
            assert record["filename"] not in found
            found[record["filename"]] = dict(record, split=split)
    return found


def shard_bytes(data_dir: str) -> dict[str, bytes]:
    pattern = [records.shard_pattern(data_dir, s) for s in records.SPLITS]
    return {
        os.path.basename(p): open(p, "rb").read()
        for p in sorted(sum((glob.glob(x) for x in pattern), []))
    }


def skip_reasons(info: dict) -> dict[str, str]:
    return {entry["file"]: entry["reason"] for entry in info["skipped"]}


def convert(input_dir, output_dir, **options) -> dict:
    options.setdefault("show_progress", False)
    return pipeline.convert(str(input_dir), str(output_dir), ConvertOptions(**options))
