"""A few tiny records in the converter's exact layout, for tests to read.

Every example is a solid colour that is unique in its split: red and blue say
the class, green says which example it is. A solid colour survives every
crop, flip, rotation and resize, so a test can tell from any output image
which record it came from, and so check labels and sharding after
augmentation. `records_info.json` carries made-up statistics, far from the
real data set's defaults, so a test can tell they were used.

Registered in `tests/conftest.py`; use the `tiny_records` fixture, or call
`write_records` for another shape of data set.
"""

from __future__ import annotations

import dataclasses
import io
import os
import posixpath
from collections.abc import Sequence

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from input_pipeline import records

CLASS_NAMES = ("Black-grass", "Charlock", "Common wheat", "Shepherds Purse")
MEAN = (0.45, 0.55, 0.35)
STD = (0.25, 0.2, 0.3)


@dataclasses.dataclass(frozen=True)
class FixtureExample:
    label: int
    colour: tuple[int, int, int]
    filename: str


@dataclasses.dataclass(frozen=True)
class RecordSet:
    data_dir: str
    class_names: tuple[str, ...]
    examples: dict[str, tuple[FixtureExample, ...]]  # split -> in record order
    num_shards: dict[str, int]
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD

    def nearest_example(self, split: str, colour: Sequence[float]) -> FixtureExample:
        """The example of `split` whose colour is closest to `colour` (0..255)."""
        distances = [np.linalg.norm(np.subtract(e.colour, colour)) for e in self.examples[split]]
        return self.examples[split][int(np.argmin(distances))]


def example_colour(label: int, index: int) -> tuple[int, int, int]:
    """Red and blue from the class, green from the example's index (< 20).

    Steps of 60 and 12 levels stay far apart after JPEG's rounding (a few
    levels on a flat colour).
    """
    return (30 + 60 * label, 8 + 12 * index, 220 - 60 * label)


def _encode_jpeg(colour: tuple[int, int, int], height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_records(
    data_dir: str,
    *,
    examples_per_split: dict[str, int] | None = None,
    num_shards: dict[str, int] | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    shard_lengths: bool = True,
) -> RecordSet:
    """Writes shards, labels.txt and records_info.json as the converter does.

    Examples cycle through the classes and are dealt to shards round-robin;
    image sizes vary between 40 and 80 px, some not square. Without
    `shard_lengths`, records_info.json lacks the records per shard, as the
    converter wrote it before it listed them.
    """
    examples_per_split = examples_per_split or {records.TRAIN: 18, records.VALIDATION: 13}
    num_shards = num_shards or {records.TRAIN: 4, records.VALIDATION: 3}
    tf.io.gfile.makedirs(data_dir)
    examples: dict[str, tuple[FixtureExample, ...]] = {}
    for split, count in examples_per_split.items():
        split_examples = []
        writers = [
            tf.io.TFRecordWriter(
                posixpath.join(data_dir, records.shard_name(split, i, num_shards[split]))
            )
            for i in range(num_shards[split])
        ]
        for index in range(count):
            label = index % len(class_names)
            example = FixtureExample(
                label=label,
                colour=example_colour(label, index),
                filename=f"{class_names[label]}/{split}_{index:03d}.png",
            )
            height, width = 40 + (index * 7) % 41, 40 + (index * 13) % 41
            record = records.make_example(
                _encode_jpeg(example.colour, height, width),
                height=height,
                width=width,
                filename=example.filename,
                label=label,
                class_name=class_names[label],
            )
            writers[index % len(writers)].write(record.SerializeToString())
            split_examples.append(example)
        for writer in writers:
            writer.close()
        examples[split] = tuple(split_examples)

    records.write_labels(data_dir, class_names)
    records.write_json(
        posixpath.join(data_dir, records.INFO_FILE),
        {
            "name": "tiny_seedlings",
            "class_names": list(class_names),
            "splits": {
                split: {
                    "num_examples": len(split_examples),
                    "num_shards": num_shards[split],
                    **({"shard_lengths": [len(split_examples[i::num_shards[split]])
                                          for i in range(num_shards[split])]}
                       if shard_lengths else {}),
                    "class_counts": {
                        name: sum(e.label == k for e in split_examples)
                        for k, name in enumerate(class_names)
                    },
                }
                for split, split_examples in examples.items()
            },
            "image": {"format": "JPEG", "mean": list(MEAN), "std": list(STD)},
        },
    )
    return RecordSet(
        data_dir=data_dir,
        class_names=tuple(class_names),
        examples=examples,
        num_shards=dict(num_shards),
    )


@pytest.fixture(scope="session")
def tiny_records(tmp_path_factory: pytest.TempPathFactory) -> RecordSet:
    """18 train and 13 validation examples, 4 classes, 4 and 3 shards."""
    return write_records(os.fspath(tmp_path_factory.mktemp("tiny_records")))
