"""The converted folder as a TFDS data set: TFDS's own metadata beside our shards.

`tfds.builder_from_directory(OUT)` then reads the shards as they are, with
the image decoded to uint8 RGB and the label a `ClassLabel` of our class
names. TFDS's metadata writer does the writing: the features are our
Example keys (`records.FEATURE_SPEC`), kept flat, so TFDS parses the
records Model Garden and our pipeline read, and `as_supervised=True` gives
(image, label) pairs.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import records

# Our shard names (`records.shard_name`) in TFDS's template language.
FILENAME_TEMPLATE = "{SPLIT}-{SHARD_X_OF_Y}.{FILEFORMAT}"
FILE_FORMAT = "tfrecord"
IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
# What `write` leaves in the folder: TFDS's metadata, the licence when the
# source states one, and the ClassLabel's names (`<key with dots>.labels.txt`).
FILES = (records.TFDS_INFO_FILE, "features.json", "LICENSE")
LABEL_NAMES_GLOB = "*.labels.txt"


def features(class_names: list[str]) -> tfds.features.FeaturesDict:
    """Every key of our records, as the TFDS feature that decodes it."""
    kinds = {
        tf.string: tfds.features.Text(),
        tf.int64: tfds.features.Scalar(tf.int64),
    }
    feature_dict = {key: kinds[spec.dtype] for key, spec in records.FEATURE_SPEC.items()}
    feature_dict[IMAGE_KEY] = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
    feature_dict[LABEL_KEY] = tfds.features.ClassLabel(names=class_names)
    return tfds.features.FeaturesDict(feature_dict)


def _split_infos(output_dir: str, info: dict[str, Any],
                 template: tfds.core.ShardedFileTemplate) -> list[tfds.core.SplitInfo]:
    # From what the converter counted, so no shard is read again.
    split_infos = []
    for split, entry in info["splits"].items():
        shards = tf.io.gfile.glob(records.shard_pattern(output_dir, split))
        split_infos.append(tfds.core.SplitInfo(
            name=split, shard_lengths=list(entry["shard_lengths"]),
            num_bytes=sum(tf.io.gfile.stat(path).length for path in shards),
            filename_template=template,
        ))
    return split_infos


def write(output_dir: str, info: dict[str, Any]) -> None:
    """Writes TFDS's metadata for the shards `info` (records_info.json's content) describes.

    TFDS writes through etils' paths, which know local folders and a few
    clouds but not every tf.io.gfile scheme (ram://, for one). So its writer
    works in a local folder that holds empty files of the shards' names
    only (it reads none: the split sizes are given), and the files it
    writes are copied into `output_dir`, each as one write.
    """
    with tempfile.TemporaryDirectory(prefix="seedlings-tfds-metadata-") as local:
        shard_names = set()
        for split in info["splits"]:
            for path in tf.io.gfile.glob(records.shard_pattern(output_dir, split)):
                shard_names.add(posixpath.basename(path))
                open(os.path.join(local, posixpath.basename(path)), "wb").close()
        _write_metadata(local, output_dir, info)
        for name in sorted(set(os.listdir(local)) - shard_names):
            tf.io.gfile.copy(os.path.join(local, name), posixpath.join(output_dir, name),
                             overwrite=True)


def _write_metadata(local: str, output_dir: str, info: dict[str, Any]) -> None:
    origin = info.get("tfds", {})
    template = tfds.core.ShardedFileTemplate(
        data_dir=local, template=FILENAME_TEMPLATE, dataset_name=info["name"],
        filetype_suffix=FILE_FORMAT,
    )
    description = (f"Images from {info['source']}, converted by "
                   "`python -m input_pipeline.make_tfrecords`.")
    if origin.get("description"):
        description += "\n\n" + origin["description"]
    tfds.folder_dataset.write_metadata(
        data_dir=local,
        features=features(info["class_names"]),
        split_infos=_split_infos(output_dir, info, template),
        filename_template=template,
        # Tests open the folder with builder_from_directory; this check would
        # print to stdout and read a record again in every conversion.
        check_data=False,
        description=description,
        homepage=origin.get("homepage") or None,
        citation=origin.get("citation") or None,
        license=origin.get("license") or None,
        supervised_keys=(IMAGE_KEY, LABEL_KEY),
    )


def written_files(output_dir: str) -> list[str]:
    """The paths `write` may have left in `output_dir` (for --overwrite)."""
    paths = [posixpath.join(output_dir, name) for name in FILES]
    return paths + tf.io.gfile.glob(posixpath.join(output_dir, LABEL_NAMES_GLOB))
