"""Splits and shards: stratified, the same whatever the workers, duplicate-safe, never partial."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil

import pytest
import tensorflow as tf

from input_pipeline import records
from input_pipeline.conversion import encoding
from input_pipeline.conversion.options import ConversionError
from tests import image_fixtures as fx
from tests.conversion_fixtures import TFDS_FILES, convert, read_split, shard_bytes


COUNTS = {"A": 40, "B": 20, "C": 10}
SPLIT_OPTIONS = dict(num_shards=4, validation_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    fx.make_class_folders(str(root / "in"), COUNTS, size=(16, 16))
    one = convert(root / "in", root / "one", num_workers=1, **SPLIT_OPTIONS)
    two = convert(root / "in", root / "two", num_workers=2, **SPLIT_OPTIONS)
    return root, one, two


def test_split_is_stratified(plain):
    _, info, _ = plain
    assert info["splits"]["validation"]["class_counts"] == {"A": 8, "B": 4, "C": 2}
    assert info["splits"]["train"]["class_counts"] == {"A": 32, "B": 16, "C": 8}


def test_small_classes_keep_one_validation_and_one_train_image(tmp_path):
    fx.make_class_folders(str(tmp_path / "in"), {"A": 30, "B": 2, "C": 1}, size=(8, 8))
    info = convert(tmp_path / "in", tmp_path / "out", num_workers=1)
    assert info["splits"]["validation"]["class_counts"] == {"A": 3, "B": 1, "C": 0}
    assert info["splits"]["train"]["class_counts"] == {"A": 27, "B": 1, "C": 1}


def test_records_are_identical_whatever_the_number_of_workers(plain):
    root, one, two = plain
    assert one == two
    assert shard_bytes(str(root / "one")) == shard_bytes(str(root / "two"))


def test_shards_mix_classes_and_other_seeds_give_other_splits(plain, tmp_path):
    root, one, _ = plain
    shards = sorted(glob.glob(records.shard_pattern(str(root / "one"), "train")))
    parse = lambda r: int(tf.io.parse_single_example(r, records.FEATURE_SPEC)["image/class/label"])
    assert len(shards) == 4
    assert {parse(r) for r in tf.data.TFRecordDataset(shards[0])} == {0, 1, 2}
    other = convert(root / "in", tmp_path / "other", num_workers=1, **dict(SPLIT_OPTIONS, seed=1))
    validation = lambda d: {r["filename"] for r in read_split(str(d), "validation")}
    assert validation(root / "one") != validation(tmp_path / "other")
    counts = lambda info: info["splits"]["validation"]["class_counts"]
    assert counts(other) == counts(one)


def test_copies_never_land_in_both_splits(tmp_path):
    src = tmp_path / "in"
    fx.make_class_folders(str(src), {"A": 20, "B": 20}, size=(8, 8))
    for name in ("A", "B"):  # every image twice in its class
        for i in range(20):
            shutil.copy(src / name / f"{i:03d}.png", src / name / f"{i:03d}_again.png")
    for i in range(5):  # and a few also in the other class
        shutil.copy(src / "A" / f"{i:03d}.png", src / "B" / f"from_a_{i}.png")
    info = convert(src, tmp_path / "out", num_workers=1, validation_fraction=0.5)
    seen = {}
    for split in records.SPLITS:
        for record in read_split(str(tmp_path / "out"), split):
            digest = hashlib.sha256(record["image"].tobytes()).hexdigest()
            assert digest not in seen, f"{record['filename']} is also {seen[digest]}"
            seen[digest] = record["filename"]
    assert sorted(seen.values()) == [f"{c}/{i:03d}.png" for c in "AB" for i in range(20)]
    assert sum(r["reason"].startswith("duplicate") for r in info["skipped"]) == 45


# ---------------------------------------------------------------------------
# An existing output folder, and a failure half-way.


def test_non_empty_output_is_refused_and_overwrite_replaces_old_shards(plain, tmp_path):
    root, _, _ = plain
    out = tmp_path / "out"
    convert(root / "in", out, num_workers=1, num_shards=3)
    (out / "notes.md").write_text("mine")
    (out / ".tmp-train-00000-of-00003.tfrecord").write_bytes(b"left by a killed run")
    with pytest.raises(ConversionError, match="not empty.*--overwrite"):
        convert(root / "in", out, num_workers=1, num_shards=2)
    convert(root / "in", out, num_workers=1, num_shards=2, overwrite=True)
    assert sorted(os.listdir(out)) == sorted([
        "records_info.json", "labels.txt", "notes.md", *TFDS_FILES,
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
        "validation-00000-of-00001.tfrecord",
    ])


def test_failure_mid_run_leaves_only_complete_shards(plain, tmp_path, monkeypatch):
    root, _, _ = plain
    encode, calls = encoding.encode, []

    def failing_encode(task):
        calls.append(task)
        if len(calls) == 31:  # train shards hold 14 records: fail inside the third
            raise RuntimeError("simulated worker failure")
        return encode(task)

    monkeypatch.setattr(encoding, "encode", failing_encode)
    with pytest.raises(RuntimeError, match="simulated"):
        convert(root / "in", tmp_path / "out", num_workers=1, **SPLIT_OPTIONS)
    left = shard_bytes(str(tmp_path / "out"))
    reference = shard_bytes(str(root / "one"))
    assert sorted(left) == ["train-00000-of-00004.tfrecord", "train-00001-of-00004.tfrecord"]
    assert all(left[name] == reference[name] for name in left)  # complete, not partial
    assert sorted(os.listdir(tmp_path / "out")) == sorted(left)  # no temp file, no info
