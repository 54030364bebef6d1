"""`convert()` end to end on small images made here with PIL: records, skips, layouts.

A folder with every kind of file is converted once, with two workers, and its
tests share the result.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import sys

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import records
from input_pipeline.conversion import records_info
from input_pipeline.conversion.options import ConversionError
from tests import image_fixtures as fx
from tests.conversion_fixtures import TFDS_FILES, all_records, convert, read_split, skip_reasons


# ---------------------------------------------------------------------------
# A folder with every kind of file, converted once with two workers.

PLAIN = {"Alpha": 12, "Beta": 10, "Gamma": 6}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    src = root / "in"
    fx.make_class_folders(str(src), PLAIN)
    g = str(src / "Gamma")
    fx.rgba_png(f"{g}/rgba.png", (10, 200, 30))
    fx.grey_png(f"{g}/grey.png", 77)
    fx.palette_png(f"{g}/palette.png", (1, 2, 250))
    fx.grey16_png(f"{g}/grey16.png", 0x8000)
    fx.rgb16_png(f"{g}/rgb16.png", (0xFF00, 0x8000, 0x0000))
    fx.cmyk_jpeg(f"{g}/cmyk.jpg", (0, 255, 255, 0))  # pure red in CMYK
    fx.exif_rotated_jpeg(f"{g}/rotated.jpg")
    fx.not_an_image(str(src / "Alpha" / "notes.png"))
    fx.not_an_image(str(src / "Alpha" / "readme.txt"))
    fx.empty_file(str(src / "Alpha" / "empty.png"))
    fx.truncated_png(str(src / "Beta" / "truncated.png"))
    fx.bomb_png(str(src / "Beta" / "bomb.png"), 20_000)  # over PIL's own limit
    fx.bomb_png(str(src / "Beta" / "big.png"), 8_000)  # over the converter's
    shutil.copy(src / "Alpha" / "000.png", src / "Alpha" / "000_copy.png")
    shutil.copy(src / "Alpha" / "001.png", src / "Beta" / "alpha_001.png")
    (src / "Alpha" / ".DS_Store").write_bytes(b"\0\1junk")
    fx.make_class_folders(str(src / "nonsegmentedv2"), {"Alpha": 2, "Beta": 2})
    fx.not_an_image(str(src / "docs" / "notes.txt"))
    fx.class_image(str(src / "Alpha" / "extra" / "x.png"), (0, 0, 0), 99)
    out = root / "out"
    info = convert(src, out, num_shards=3, num_workers=2)
    return src, out, info, all_records(str(out))


def test_output_folder_holds_exactly_the_shards_labels_and_metadata(mixed):
    _, out, info, _ = mixed
    expected = {records.INFO_FILE, records.LABELS_FILE, *TFDS_FILES}
    for split in records.SPLITS:
        n = info["splits"][split]["num_shards"]
        expected |= {records.shard_name(split, i, n) for i in range(n)}
    assert set(os.listdir(out)) == expected
    assert info["splits"]["train"]["num_shards"] == 3
    assert info["splits"]["validation"]["num_shards"] == 1


def test_labels_and_records_info_content(mixed):
    src, out, info, found = mixed
    assert (out / "labels.txt").read_text() == "Alpha\nBeta\nGamma\n"
    on_disk = json.loads((out / records.INFO_FILE).read_text())
    assert on_disk == info
    assert set(on_disk) == {
        "name", "source", "class_names", "splits", "image", "seed",
        "validation_fraction", "skipped", "non_class_folders",
    }
    assert on_disk["name"] == "plant_seedlings"
    assert on_disk["source"] == str(src)
    assert on_disk["class_names"] == ["Alpha", "Beta", "Gamma"]
    assert on_disk["image"]["format"] == "JPEG"
    assert on_disk["image"]["jpeg_quality"] == 95
    assert on_disk["image"]["max_image_side"] == 512
    assert (on_disk["seed"], on_disk["validation_fraction"]) == (0, 0.1)
    for split in records.SPLITS:
        in_split = [r for r in found.values() if r["split"] == split]
        entry = on_disk["splits"][split]
        assert entry["num_examples"] == len(in_split)
        for name, count in entry["class_counts"].items():
            assert count == sum(r["text"] == name for r in in_split)
    dataset = records.read_dataset_info(str(out))
    assert dataset.class_names == ("Alpha", "Beta", "Gamma")
    assert dataset.num_examples == {s: info["splits"][s]["num_examples"] for s in records.SPLITS}


def test_records_follow_the_schema_and_decode_as_rgb_jpeg(mixed):
    _, _, _, found = mixed
    names = ["Alpha", "Beta", "Gamma"]
    for filename, record in found.items():
        assert record["image"].ndim == 3 and record["image"].shape[2] == 3
        assert record["image"].shape[:2] == (record["height"], record["width"])
        assert (record["format"], record["colorspace"], record["channels"]) == ("JPEG", "RGB", 3)
        assert record["text"] == names[record["label"]]
        assert filename.startswith(record["text"] + "/")


def test_label_matches_the_pixels(mixed):
    _, _, _, found = mixed
    plain = [r for f, r in found.items() if os.path.basename(f)[:3].isdigit()]
    assert len(plain) == sum(PLAIN.values())  # originals kept, their copies dropped
    for record in plain:
        centre = record["image"][20, 20].astype(int)
        np.testing.assert_allclose(centre, fx.CLASS_COLOURS[record["label"]], atol=6)


@pytest.mark.parametrize(
    "name, expected_rgb",
    [
        ("grey.png", (77, 77, 77)),
        ("palette.png", (1, 2, 250)),
        ("grey16.png", (128, 128, 128)),  # 0x8000 scaled, not clipped to white
        ("rgb16.png", (255, 128, 0)),
        ("cmyk.jpg", (255, 0, 0)),
    ],
)
def test_every_colour_mode_becomes_the_right_rgb(mixed, name, expected_rgb):
    _, _, _, found = mixed
    image = found[f"Gamma/{name}"]["image"]
    np.testing.assert_allclose(image.reshape(-1, 3).mean(axis=0), expected_rgb, atol=4)


def test_alpha_is_composited_over_black(mixed):
    image = mixed[3]["Gamma/rgba.png"]["image"].astype(int)
    np.testing.assert_allclose(image[10, 3], (10, 200, 30), atol=6)  # opaque half
    np.testing.assert_allclose(image[10, 16], (0, 0, 0), atol=6)  # transparent half


def test_exif_orientation_is_applied(mixed):
    image = mixed[3]["Gamma/rotated.jpg"]["image"].astype(int)
    assert image.shape == (48, 24, 3)  # stored 48 wide x 24 high, shown tall
    np.testing.assert_allclose(image[24, 20], (255, 0, 0), atol=20)  # top -> right
    np.testing.assert_allclose(image[24, 3], (0, 0, 255), atol=20)  # bottom -> left


@pytest.mark.parametrize(
    "file, reason",
    [
        ("Alpha/notes.png", "not an image"),
        ("Alpha/readme.txt", "not an image"),
        ("Alpha/empty.png", "empty file"),
        ("Beta/truncated.png", "truncated"),
        ("Beta/bomb.png", "decompression bomb"),
        ("Beta/big.png", "decompression bomb"),
        ("Alpha/000_copy.png", "duplicate: same bytes as Alpha/000.png"),
        ("Beta/alpha_001.png", "duplicate: same bytes as Alpha/001.png"),
    ],
)
def test_bad_files_are_skipped_with_a_reason(mixed, file, reason):
    _, _, info, found = mixed
    assert skip_reasons(info)[file].startswith(reason)
    assert file not in found


def test_hidden_files_are_ignored_and_every_skip_is_reported(mixed):
    _, _, info, _ = mixed
    assert len(info["skipped"]) == 8
    assert not any(".DS_Store" in f for f in skip_reasons(info))


def test_folders_that_are_not_classes_are_reported_not_read(mixed):
    _, out, info, found = mixed
    folders = {d["folder"]: d["reason"] for d in info["non_class_folders"]}
    assert set(folders) == {"nonsegmentedv2", "docs", "Alpha/extra"}
    assert "only subfolders" in folders["nonsegmentedv2"]
    assert "no image files" in folders["docs"]
    assert not any(f.startswith(("nonsegmentedv2", "docs", "Alpha/extra")) for f in found)
    summary = records_info.format_summary(info)
    assert "not a class folder, not read: nonsegmentedv2/" in summary
    assert "skipped 8 file(s)" in summary


def test_channel_statistics_are_those_of_the_train_images(mixed):
    _, out, info, _ = mixed
    pixels = np.concatenate(
        [r["image"].reshape(-1, 3) / 255.0 for r in read_split(str(out), "train")]
    )
    # The converter measures before JPEG encoding; the tolerance covers it.
    np.testing.assert_allclose(info["image"]["mean"], pixels.mean(axis=0), atol=0.01)
    np.testing.assert_allclose(info["image"]["std"], pixels.std(axis=0), atol=0.01)


def test_shard_lengths_are_the_records_in_each_shard(mixed):
    _, out, info, _ = mixed
    assert skip_reasons(info)["Beta/truncated.png"].startswith("truncated")  # skipped late
    for split in records.SPLITS:
        shards = sorted(glob.glob(records.shard_pattern(str(out), split)))
        in_files = [sum(1 for _ in tf.data.TFRecordDataset(path)) for path in shards]
        entry = info["splits"][split]
        assert entry["shard_lengths"] == in_files
        assert sum(in_files) == entry["num_examples"]


# ---------------------------------------------------------------------------
# Images and layouts.


def test_max_image_side_shrinks_keeping_the_aspect_ratio(tmp_path):
    src = tmp_path / "in"
    fx.noise_png(str(src / "A" / "wide.png"), size=(300, 150))
    fx.noise_png(str(src / "A" / "small.png"), size=(40, 30), seed=1)
    fx.noise_png(str(src / "B" / "tall.png"), size=(90, 270), seed=2)
    fx.noise_png(str(src / "B" / "tall2.png"), size=(90, 270), seed=3)
    sizes = lambda out: {f: (r["width"], r["height"]) for f, r in all_records(str(out)).items()}
    convert(src, tmp_path / "small", num_workers=1, max_image_side=100)
    assert sizes(tmp_path / "small") == {
        "A/wide.png": (100, 50), "A/small.png": (40, 30),
        "B/tall.png": (33, 100), "B/tall2.png": (33, 100),
    }
    # Kept at full size, a side over JPEG's limit cannot be stored: skipped.
    fx.raw_png(str(src / "B" / "too_wide.png"), 65_501, 1, 8, 0, lambda: [bytes(65_501)])
    info = convert(src, tmp_path / "full", num_workers=1, max_image_side=0)
    assert sizes(tmp_path / "full")["A/wide.png"] == (300, 150)
    assert skip_reasons(info)["B/too_wide.png"].startswith("too large: 65501x1 px")


def test_kaggle_root_reads_classes_from_train(tmp_path):
    fx.make_class_folders(str(tmp_path / "kaggle" / "train"), {"A": 3, "B": 3}, size=(8, 8))
    fx.noise_png(str(tmp_path / "kaggle" / "test" / "0021e90e4.png"), size=(8, 8))
    (tmp_path / "kaggle" / "sample_submission.csv").write_text("file,species\n")
    info = convert(tmp_path / "kaggle", tmp_path / "out", num_workers=1)
    assert info["class_names"] == ["A", "B"]
    assert "train/A/000.png" in all_records(str(tmp_path / "out"))


def test_gfile_output_path_works(tmp_path):
    # ram:// lives in one process: it works here because only the parent
    # process touches the output folder, workers never do.
    fx.make_class_folders(str(tmp_path / "in"), {"A": 6, "B": 6}, size=(8, 8))
    out = "ram://converter_test/out"
    info = convert(tmp_path / "in", out, num_workers=2, num_shards=2)
    assert records.read_dataset_info(out).num_examples == {"train": 10, "validation": 2}
    assert records.read_labels(out) == ["A", "B"]
    assert sum(len(read_split(out, s)) for s in records.SPLITS) == 12
    assert not tf.io.gfile.glob(out + "/.tmp-*")
    assert info["splits"]["train"]["num_shards"] == 2


# ---------------------------------------------------------------------------
# Progress and failures.


def test_progress_bars_show_on_a_terminal_only(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    fx.make_class_folders(str(tmp_path / "in"), {"A": 3, "B": 3}, size=(8, 8))
    for stream, expect_bars in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        convert(tmp_path / "in", tmp_path / str(expect_bars), num_workers=1, show_progress=True)
        assert ("scanning" in stream.getvalue()) is expect_bars
        assert ("converting" in stream.getvalue()) is expect_bars


def test_class_with_no_valid_images_is_an_error(tmp_path):
    fx.make_class_folders(str(tmp_path / "in"), {"A": 3}, size=(8, 8))
    fx.not_an_image(str(tmp_path / "in" / "B" / "0.png"))
    fx.truncated_png(str(tmp_path / "in" / "B" / "1.png"))
    with pytest.raises(ConversionError, match="class 'B' has no valid images"):
        convert(tmp_path / "in", tmp_path / "out", num_workers=1)
    assert not os.path.exists(tmp_path / "out" / records.INFO_FILE)
