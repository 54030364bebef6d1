"""TFDS both ways: converted folders read as TFDS data sets, TFDS data sets as the input.

Every TFDS data set here is made in the test, in a temporary folder: nothing
is downloaded.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import records
from input_pipeline.conversion import pipeline
from input_pipeline.conversion.options import ConversionError, ConvertOptions
from input_pipeline.conversion.tfds_source import TfdsInput
from tests import image_fixtures as fx
from tests.conversion_fixtures import MODULE, REPO, TFDS_FILES, all_records, convert
from tests.trainer_fixtures import assert_ok, checkpoint_step, train

STAND_IN_CLASSES = ["Black-grass", "Charlock", "Common wheat"]
CITATION = "@misc{stand_in,\n  title = {A stand-in},\n  year = {2026}\n}"


def _image(label: int, index: int) -> np.ndarray:
    """A distinct picture per example: no two are copies of each other."""
    image = np.zeros((24 + index % 16, 32 + 2 * label, 3), dtype=np.uint8)
    image[..., label] = 120
    image[index % image.shape[0], :, (label + 1) % 3] = 2 * index + 1
    return image


def _examples(split: str, per_class: int) -> list[tuple[str, dict]]:
    offset = {"train": 0, "validation": 40, "test": 80}[split]
    return [
        (f"{split}-{label}-{i}", {"image": _image(label, offset + i), "label": label})
        for label in range(len(STAND_IN_CLASSES)) for i in range(per_class)
    ]


def _store(name: str, data_dir: str, splits: dict[str, list], features=None) -> None:
    features = features or tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(names=STAND_IN_CLASSES),
    })
    tfds.dataset_builders.store_as_tfds_dataset(
        name, "1.0.0", features, splits, data_dir=data_dir, homepage="https://example.org/plants",
        citation=CITATION)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """Prepared TFDS data sets: with train, validation and test splits; with train only."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    _store("plants_three_splits", data_dir, {
        "train": _examples("train", 6), "validation": _examples("validation", 2),
        "test": _examples("test", 1)})
    _store("plants_train_only", data_dir, {"train": _examples("train", 5)})
    return data_dir


def _convert_tfds(name, data_dir, output_dir, **options) -> dict:
    options.setdefault("show_progress", False)
    return pipeline.convert(TfdsInput(name, data_dir), str(output_dir), ConvertOptions(**options))


# Our records, read by TFDS.


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    fx.make_class_folders(str(root / "in"), {"Alpha": 5, "Beta": 4, "Gamma": 6}, size=(40, 32))
    fx.noise_png(str(root / "in" / "Beta" / "wide.png"), size=(90, 30))
    info = convert(root / "in", root / "out", num_shards=2, num_workers=1)
    return root / "out", info


def test_converted_folder_is_a_tfds_data_set_with_every_record(converted):
    out, info = converted
    builder = tfds.builder_from_directory(str(out))
    label = builder.info.features["image/class/label"]
    assert isinstance(label, tfds.features.ClassLabel)
    assert label.names == info["class_names"]
    ours = all_records(str(out))
    tfds_info = json.loads((out / records.TFDS_INFO_FILE).read_text())
    seen = set()
    for split in records.SPLITS:
        expected = info["splits"][split]["num_examples"]
        assert builder.info.splits[split].num_examples == expected
        assert builder.info.splits[split].shard_lengths == info["splits"][split]["shard_lengths"]
        [on_disk] = [s for s in tfds_info["splits"] if s["name"] == split]
        assert sum(int(n) for n in on_disk["shardLengths"]) == expected
        examples = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
        assert len(examples) == expected
        for example in examples:
            record = ours[example["image/filename"].decode()]
            image = example["image/encoded"]
            assert record["split"] == split
            assert example["image/class/label"] == record["label"]
            assert label.int2str(example["image/class/label"]) == record["text"]
            assert image.dtype == np.uint8 and image.shape == (record["height"],
                                                               record["width"], 3)
            np.testing.assert_array_equal(image, record["image"])
            seen.add(example["image/filename"])
    assert len(seen) == len(ours)


def test_tfds_slices_and_supervised_pairs_of_a_converted_folder(converted):
    out, info = converted
    builder = tfds.builder_from_directory(str(out))
    train = info["splits"]["train"]["num_examples"]
    half = sum(1 for _ in builder.as_dataset(split="train[:50%]"))
    assert 0 < half < train and half == builder.info.splits["train[:50%]"].num_examples
    image, label = builder.as_dataset(split="validation", as_supervised=True).element_spec
    assert (image.dtype, image.shape.as_list(), label.dtype) == (tf.uint8, [None, None, 3],
                                                                 tf.int64)


def test_records_converted_before_the_tfds_metadata_still_train(converted, tmp_path):
    out, _ = converted
    legacy = tmp_path / "legacy"
    shutil.copytree(out, legacy)
    # The layout of then: our metadata under TFDS's name, no TFDS files.
    for name in TFDS_FILES:
        os.remove(legacy / name)
    os.replace(legacy / records.INFO_FILE, legacy / records.TFDS_INFO_FILE)
    assert records.read_dataset_info(str(legacy)) == records.read_dataset_info(str(out))
    model_dir = str(tmp_path / "run")
    assert_ok(train(str(legacy), model_dir, "--train_steps=2", "--mode=train"))
    assert checkpoint_step(model_dir) == 2


def test_overwrite_turns_a_folder_of_the_old_layout_into_the_new_one(converted, tmp_path):
    out, _ = converted
    legacy = tmp_path / "legacy"
    shutil.copytree(out, legacy)
    for name in TFDS_FILES:
        os.remove(legacy / name)
    os.replace(legacy / records.INFO_FILE, legacy / records.TFDS_INFO_FILE)
    images = tmp_path / "in"
    fx.make_class_folders(str(images), {"Alpha": 3, "Beta": 3}, size=(40, 32))
    convert(images, legacy, num_shards=1, num_workers=1, overwrite=True)
    assert tfds.builder_from_directory(str(legacy)).info.splits["train"].num_examples == 4
    assert records.read_dataset_info(str(legacy)).class_names == ("Alpha", "Beta")


def test_a_tfds_folder_the_converter_did_not_write_is_refused_with_the_fix(tfds_dir):
    prepared = os.path.join(tfds_dir, "plants_three_splits", "1.0.0")
    with pytest.raises(FileNotFoundError, match="convert it with .*--tfds_name=NAME"):
        records.read_dataset_info(prepared)


# TFDS data sets as input.


def test_tfds_data_set_converts_trains_and_exports(tfds_dir, tmp_path):
    out = tmp_path / "records"
    result = subprocess.run(
        [*MODULE, "--tfds_name=plants_three_splits", f"--tfds_data_dir={tfds_dir}",
         f"--output_dir={out}", "--num_shards=2", "--num_workers=1"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "licence: not stated by the data set: see https://example.org/plants" in result.stdout
    assert "cite:\n  @misc{stand_in," in result.stdout
    assert (out / records.LABELS_FILE).read_text().splitlines() == STAND_IN_CLASSES
    info = json.loads((out / records.INFO_FILE).read_text())
    # The data set's own validation split, and no test image anywhere.
    assert {s: e["num_examples"] for s, e in info["splits"].items()} == {
        "train": 18, "validation": 6}
    assert info["splits"]["validation"]["class_counts"] == dict.fromkeys(STAND_IN_CLASSES, 2)
    assert info["tfds"]["splits"] == ["train", "validation"]
    assert info["tfds"]["unused_splits"] == ["test"]
    assert (info["tfds"]["name"], info["tfds"]["version"]) == ("plants_three_splits", "1.0.0")
    assert info["tfds"]["citation"] == CITATION
    source = tfds.builder("plants_three_splits", data_dir=tfds_dir)
    for split in records.SPLITS:
        labels = sorted(int(e["label"]) for e in tfds.as_numpy(source.as_dataset(split=split)))
        assert sorted(r["label"] for r in all_records(str(out)).values()
                      if r["split"] == split) == labels
    assert tfds.builder_from_directory(str(out)).info.citation == CITATION

    model_dir = tmp_path / "run"
    assert_ok(train(str(out), str(model_dir), "--train_steps=2", "--mode=train"))
    serve = tf.saved_model.load(str(model_dir / "export")).signatures["serving_default"]
    png = io.BytesIO()
    Image.fromarray(_image(1, 3)).save(png, "PNG")
    answer = serve(image_bytes=tf.constant([png.getvalue()]))
    assert [n.decode() for n in answer["class_names"].numpy()[0]] == STAND_IN_CLASSES


def test_a_tfds_data_set_with_train_only_gets_our_stratified_split(tfds_dir, tmp_path):
    info = _convert_tfds("plants_train_only", tfds_dir, tmp_path / "out", num_workers=1,
                         validation_fraction=0.2)
    counts = {s: e["class_counts"] for s, e in info["splits"].items()}
    assert counts == {"train": dict.fromkeys(STAND_IN_CLASSES, 4),
                      "validation": dict.fromkeys(STAND_IN_CLASSES, 1)}
    assert info["tfds"]["splits"] == ["train"] and info["tfds"]["unused_splits"] == []


def test_bad_images_and_copies_in_a_tfds_data_set_are_skipped_and_reported(tmp_path):
    png = io.BytesIO()
    Image.fromarray(_image(0, 0)).save(png, "PNG")
    examples = _examples("train", 3)
    examples += [("bad", {"image": png.getvalue()[:60], "label": 1}),
                 ("copy", {"image": _image(0, 0), "label": 2})]
    # TFDS stores bytes as given: a PNG cut short, and a copy of a training picture.
    _store("plants_with_bad_images", str(tmp_path / "tfds"), {"train": examples})
    info = _convert_tfds("plants_with_bad_images", str(tmp_path / "tfds"), tmp_path / "out",
                         num_workers=1)
    reasons = sorted(entry["reason"].split(":")[0] for entry in info["skipped"])
    assert reasons == ["duplicate", "truncated"]
    assert sum(e["num_examples"] for e in info["splits"].values()) == 9


class LocalPlants(tfds.core.GeneratorBasedBuilder):
    """A data set TFDS "downloads" by generating it here: what --tfds_download runs."""

    VERSION = tfds.core.Version("2.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "species": tfds.features.ClassLabel(names=STAND_IN_CLASSES),
                # A second label: the supervised keys say which one is the class.
                "leaf_stage": tfds.features.ClassLabel(names=["young", "old"]),
            }),
            supervised_keys=("image", "species"), homepage="https://example.org/local",
            license="CC BY 4.0")

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for key, example in _examples("train", 4):
            yield key, {"image": example["image"], "species": example["label"], "leaf_stage": 1}


def test_nothing_is_downloaded_unless_asked(tmp_path):
    data_dir, out = tmp_path / "tfds", tmp_path / "out"
    data_dir.mkdir()
    with pytest.raises(ConversionError, match="local_plants is not prepared in .*--tfds_download"):
        pipeline.convert(TfdsInput("local_plants", str(data_dir)), str(out),
                         ConvertOptions(show_progress=False))
    assert not out.exists() and not os.listdir(data_dir)
    info = pipeline.convert(TfdsInput("local_plants", str(data_dir), download=True), str(out),
                            ConvertOptions(num_workers=1, show_progress=False))
    assert (data_dir / "local_plants" / "2.0.0" / records.TFDS_INFO_FILE).exists()
    assert info["class_names"] == STAND_IN_CLASSES
    assert info["tfds"]["license"] == "CC BY 4.0"
    assert sum(e["num_examples"] for e in info["splits"].values()) == 12
    assert tfds.builder_from_directory(str(out)).info.redistribution_info.license == "CC BY 4.0"
    assert (out / "LICENSE").read_text().strip() == "CC BY 4.0"


def test_tfds_data_sets_this_converter_cannot_read_are_one_line_errors(tfds_dir, tmp_path):
    text_labels = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.Text()})
    _store("plants_text_labels", tfds_dir,
           {"train": [(k, {"image": e["image"], "label": "x"}) for k, e in _examples("train", 1)]},
           text_labels)
    two_labels = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(names=STAND_IN_CLASSES),
        "stage": tfds.features.ClassLabel(names=["young", "old"])})
    _store("plants_two_labels", tfds_dir,
           {"train": [(k, {**e, "stage": 0}) for k, e in _examples("train", 1)]}, two_labels)
    cases = {
        "plants_two_labels": "needs one ClassLabel feature, it has label, stage",
        "no_such_data_set": "TFDS has no data set of that name",
        "plants_three_splits:9.9.9": "TFDS has no data set of that name or version",
        "plants_text_labels": "needs one ClassLabel feature, it has none",
    }
    for name, message in cases.items():
        with pytest.raises(ConversionError, match=message):
            _convert_tfds(name, tfds_dir, tmp_path / name)
        assert not (tmp_path / name).exists()
    with pytest.raises(ConversionError, match="--tfds_data_dir=.*does not exist"):
        _convert_tfds("plants_three_splits", str(tmp_path / "nowhere"), tmp_path / "out")


@pytest.mark.parametrize("args, message", [
    (["--tfds_name=x", "--input_dir=."], "pass --input_dir=FOLDER or --tfds_name=NAME"),
    ([], "pass --input_dir=FOLDER (class folders of images) or --tfds_name=NAME"),
    (["--input_dir=.", "--tfds_download"], "--tfds_download goes with --tfds_name"),
    (["--input_dir=.", "--tfds_data_dir=."], "--tfds_data_dir goes with --tfds_name"),
    (["--tfds_name="], "--tfds_name is empty"),
    (["--tfds_name=no_such_data_set"], "--tfds_name=no_such_data_set: TFDS has no data set"),
])
def test_input_flags_are_checked_in_one_line(args, message, tmp_path):
    result = subprocess.run([*MODULE, *args, f"--output_dir={tmp_path / 'out'}"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "error" in line]
    assert line.startswith("make_tfrecords: error: ") and message in line, result.stderr
    assert not (tmp_path / "out").exists()
