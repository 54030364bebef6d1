"""End-to-end tests of the converter on small images made here with PIL.

Conversions are shared through module-scoped fixtures, and the command-line
cases run as concurrent subprocesses, to keep the whole file well under a
minute on two cores.
"""

from __future__ import annotations

import concurrent.futures
import functools
import glob
import hashlib
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import make_tfrecords, records
from tests import image_fixtures as fx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
MODULE = [PYTHON, "-m", "input_pipeline.make_tfrecords"]


# ---------------------------------------------------------------------------
# Helpers.


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


def convert(input_dir, output_dir, **kwargs) -> dict:
    kwargs.setdefault("show_progress", False)
    return make_tfrecords.convert(str(input_dir), str(output_dir), **kwargs)


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


def test_output_folder_holds_exactly_the_shards_labels_and_info(mixed):
    _, out, info, _ = mixed
    expected = {records.INFO_FILE, records.LABELS_FILE}
    for split in records.SPLITS:
        n = info["splits"][split]["num_shards"]
        expected |= {records.shard_name(split, i, n) for i in range(n)}
    assert set(os.listdir(out)) == expected
    assert info["splits"]["train"]["num_shards"] == 3
    assert info["splits"]["validation"]["num_shards"] == 1


def test_labels_and_dataset_info_content(mixed):
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
    summary = make_tfrecords.format_summary(info)
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
# Splits: stratified, duplicate-safe and deterministic.

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


def test_a_file_gone_after_listing_is_skipped_not_a_crash(tmp_path):
    # Between the listing and a worker's open, a file can be removed.
    gone = str(tmp_path / "gone.png")
    assert make_tfrecords._probe(gone) == (None, "unreadable: No such file or directory")
    assert make_tfrecords._encode((gone, 512, 95)) == "unreadable: No such file or directory"


def test_workers_do_not_import_tensorflow():
    # Spawned workers import this module to run _probe and _encode.
    code = "import sys, input_pipeline.make_tfrecords; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([PYTHON, "-c", code], cwd=REPO).returncode == 0


def test_workers_start_deaf_to_ctrl_c_and_sigterm_and_the_parent_does_not():
    # Ctrl-C (and a scheduler's SIGTERM) may signal the whole process group;
    # a worker still importing when it lands would print a traceback of its
    # own. Workers are spawned on demand, so every one must start blocked.
    blocked_signals = functools.partial(signal.pthread_sigmask, signal.SIG_BLOCK)
    with make_tfrecords._executor(2) as executor:
        worker_masks = list(
            make_tfrecords._ordered_map(blocked_signals, [[]] * 64, executor, 2)
        )
    assert all({signal.SIGINT, signal.SIGTERM} <= mask for mask in worker_masks)
    assert not {signal.SIGINT, signal.SIGTERM} & signal.pthread_sigmask(signal.SIG_BLOCK, [])


# ---------------------------------------------------------------------------
# Output folder safety.


def test_non_empty_output_is_refused_and_overwrite_replaces_old_shards(plain, tmp_path):
    root, _, _ = plain
    out = tmp_path / "out"
    convert(root / "in", out, num_workers=1, num_shards=3)
    (out / "notes.md").write_text("mine")
    (out / ".tmp-train-00000-of-00003.tfrecord").write_bytes(b"left by a killed run")
    with pytest.raises(make_tfrecords.ConversionError, match="not empty.*--overwrite"):
        convert(root / "in", out, num_workers=1, num_shards=2)
    convert(root / "in", out, num_workers=1, num_shards=2, overwrite=True)
    assert sorted(os.listdir(out)) == [
        "dataset_info.json", "labels.txt", "notes.md",
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
        "validation-00000-of-00001.tfrecord",
    ]


def test_failure_mid_run_leaves_only_complete_shards(plain, tmp_path, monkeypatch):
    root, _, _ = plain
    encode, calls = make_tfrecords._encode, []

    def failing_encode(task):
        calls.append(task)
        if len(calls) == 31:  # train shards hold 14 records: fail inside the third
            raise RuntimeError("simulated worker failure")
        return encode(task)

    monkeypatch.setattr(make_tfrecords, "_encode", failing_encode)
    with pytest.raises(RuntimeError, match="simulated"):
        convert(root / "in", tmp_path / "out", num_workers=1, **SPLIT_OPTIONS)
    left = shard_bytes(str(tmp_path / "out"))
    reference = shard_bytes(str(root / "one"))
    assert sorted(left) == ["train-00000-of-00004.tfrecord", "train-00001-of-00004.tfrecord"]
    assert all(left[name] == reference[name] for name in left)  # complete, not partial
    assert sorted(os.listdir(tmp_path / "out")) == sorted(left)  # no temp file, no info


def test_gs_output_is_checked_at_start_up_and_left_clean(gcs_emulator, gcs_dir, tmp_path):
    # The emulator has one bucket: another name is a bucket that does not exist.
    images = fx.make_class_folders(str(tmp_path / "in"), {"A": 3, "B": 3}, size=(8, 8))
    # Its scan would fail: an error about the bucket shows it is checked first.
    scan_fails = fx.make_class_folders(str(tmp_path / "no_valid"), {"A": 2}, size=(8, 8))
    fx.not_an_image(str(tmp_path / "no_valid" / "B" / "0.png"))
    prefix = gcs_dir.removeprefix(f"gs://{gcs_emulator.bucket}/")
    gcs_emulator.upload_object(f"{prefix}/full/notes.txt", b"mine")
    outputs = {"missing bucket": f"gs://no-such-{gcs_emulator.bucket}/data",
               "not empty": f"{gcs_dir}/full", "good": f"{gcs_dir}/data"}
    processes = {
        name: subprocess.Popen(
            MODULE + [f"--input_dir={images if name == 'good' else scan_fails}",
                      f"--output_dir={out}", "--num_workers=1"],
            cwd=REPO, env=gcs_emulator.subprocess_env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        for name, out in outputs.items()
    }
    results = {name: p.communicate(timeout=300) + (p.returncode,) for name, p in processes.items()}

    for name, message in (("missing bucket", "bucket gs://no-such-"),
                          ("not empty", "is not empty; pass --overwrite")):
        _, stderr, returncode = results[name]
        assert returncode != 0 and "Traceback" not in stderr
        [line] = stderr.strip().splitlines()
        assert line.startswith(f"make_tfrecords: error: --output_dir={outputs[name]}")
        assert message in line
    assert gcs_emulator.list_objects(f"{prefix}/full") == [f"{prefix}/full/notes.txt"]
    _, stderr, returncode = results["good"]
    assert returncode == 0, stderr + gcs_emulator.diagnostics()
    info = json.loads(gcs_emulator.read_object(f"{prefix}/data/{records.INFO_FILE}"))
    expected = {records.INFO_FILE, records.LABELS_FILE}
    for split in records.SPLITS:
        n = info["splits"][split]["num_shards"]
        expected |= {records.shard_name(split, i, n) for i in range(n)}
    # No probe file of the start-up check, no temporary name, is left.
    written = {name.removeprefix(f"{prefix}/data/")
               for name in gcs_emulator.list_objects(f"{prefix}/data/")}
    assert written - {""} == expected


@pytest.fixture(scope="module")
def slow_input(tmp_path_factory):
    """Enough noise images that a run can be stopped inside its second shard."""
    root = tmp_path_factory.mktemp("slow")
    for i in range(60):
        fx.noise_png(str(root / "in" / "A" / f"{i}.png"), size=(256, 256), seed=i)
        fx.noise_png(str(root / "in" / "B" / f"{i}.png"), size=(256, 256), seed=1000 + i)
    reference = convert(root / "in", root / "reference", num_workers=1, num_shards=2)
    return root / "in", root / "reference", reference


def session_processes(session: int) -> list[int]:
    """The live (not zombie) processes of a session, from Linux's /proc."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                state, _, _, sid = f.read().rsplit(")", 1)[1].split()[:4]
        except OSError:  # ended meanwhile
            continue
        if int(sid) == session and state != "Z":
            found.append(int(stat.split("/")[2]))
    return found


@pytest.mark.parametrize(
    "stop, to_group, workers, left_behind",
    [
        # Ctrl-C (to the whole process group, workers included): the parent
        # removes the shard in progress and says so in one line.
        (signal.SIGINT, True, 2, []),
        # SIGTERM to the parent alone (kill PID): the same, and its workers
        # end with it rather than wait forever.
        (signal.SIGTERM, False, 2, []),
        # A hard kill cannot clean up: the shard in progress stays under its
        # temporary name, which no reader matches.
        (signal.SIGKILL, True, 1, [".tmp-train-00001-of-00002.tfrecord"]),
    ],
    ids=["ctrl-c", "sigterm", "kill"],
)
def test_stopped_run_leaves_no_shard_that_looks_complete(
    slow_input, tmp_path, stop, to_group, workers, left_behind
):
    src, reference_dir, reference = slow_input
    out = tmp_path / "out"
    process = subprocess.Popen(
        MODULE + [f"--input_dir={src}", f"--output_dir={out}", "--num_shards=2",
                  f"--num_workers={workers}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while not (out / ".tmp-train-00001-of-00002.tfrecord").exists():
            assert process.poll() is None and time.time() < deadline, "run ended too soon"
            time.sleep(0.002)
        (os.killpg if to_group else os.kill)(process.pid, stop)  # inside the second shard
    finally:
        _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    deadline = time.time() + 10  # multiprocessing's resource tracker ends just after
    while session_processes(process.pid):
        assert time.time() < deadline, f"left running: {session_processes(process.pid)}"
        time.sleep(0.05)
    assert sorted(os.listdir(out)) == left_behind + ["train-00000-of-00002.tfrecord"]
    name = "train-00000-of-00002.tfrecord"
    assert (out / name).read_bytes() == (reference_dir / name).read_bytes()
    if stop != signal.SIGKILL:
        assert stderr.strip() == (
            "make_tfrecords: error: interrupted: complete shards are kept, "
            "dataset_info.json is not written"
        )
    with pytest.raises(make_tfrecords.ConversionError, match="not empty"):
        convert(src, out, num_workers=1, num_shards=2)
    rerun = convert(src, out, num_workers=1, num_shards=2, overwrite=True)
    assert rerun == reference
    assert shard_bytes(str(out)) == shard_bytes(str(reference_dir))
    assert not glob.glob(str(out / ".tmp-*"))


def test_progress_bars_show_on_a_terminal_only(plain, tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    root, _, _ = plain
    for stream, expect_bars in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        convert(root / "in", tmp_path / str(expect_bars), num_workers=1, show_progress=True)
        assert ("scanning" in stream.getvalue()) is expect_bars
        assert ("converting" in stream.getvalue()) is expect_bars


def test_class_with_no_valid_images_is_an_error(tmp_path):
    fx.make_class_folders(str(tmp_path / "in"), {"A": 3}, size=(8, 8))
    fx.not_an_image(str(tmp_path / "in" / "B" / "0.png"))
    fx.truncated_png(str(tmp_path / "in" / "B" / "1.png"))
    with pytest.raises(make_tfrecords.ConversionError, match="class 'B' has no valid images"):
        convert(tmp_path / "in", tmp_path / "out", num_workers=1)
    assert not os.path.exists(tmp_path / "out" / records.INFO_FILE)


# ---------------------------------------------------------------------------
# The command line, run as subprocesses, several at once.


def tree(root: pathlib.Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (or target of every link) below `root`.

    Empty folders are left out: a refused run may leave the output folder
    it made, which holds nothing that could look like data.
    """
    found = {}
    for folder, subfolders, files in os.walk(root):
        for name in subfolders + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                found[rel] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return found


def _cli_cases(tmp: pathlib.Path) -> dict[str, tuple[list[str], str]]:
    """name -> (command, text the one-line error must contain).

    A case writes only into tmp/cases/<name>, which also holds whatever input,
    file or link it alone needs; everything else in `tmp` is shared and read only.
    """
    good = tmp / "good"
    fx.make_class_folders(str(good), {"A": 3, "B": 3}, size=(8, 8))
    (tmp / "empty").mkdir()
    fx.make_class_folders(str(tmp / "nested" / "copy"), {"A": 1}, size=(8, 8))
    # Output cases read an input whose scan fails: their own message shows
    # that the output folder is checked first.
    scan_fails = tmp / "no_valid"
    fx.make_class_folders(str(scan_fails), {"A": 2}, size=(8, 8))
    fx.not_an_image(str(scan_fails / "B" / "0.png"))
    cases = {}

    def own(name: str) -> pathlib.Path:
        (tmp / "cases" / name).mkdir(parents=True, exist_ok=True)
        return tmp / "cases" / name

    def case(name: str, message: str, *flags: str, input_dir=good, output=None) -> None:
        output = own(name) / "out" if output is None else output
        command = MODULE + [f"--input_dir={input_dir}", f"--output_dir={output}", *flags]
        cases[name] = (command, message)

    def copy_of(source: pathlib.Path, name: str) -> pathlib.Path:
        return pathlib.Path(shutil.copytree(source, own(name) / source.name))

    case("input missing", "does not exist", input_dir=tmp / "nope")
    case("input empty", "is empty", input_dir=tmp / "empty")
    case("input flag empty", "--input_dir is empty", input_dir="")
    (own("input is a file") / "photo.png").write_text("x")
    case("input is a file", "is a file, not a folder",
         input_dir=own("input is a file") / "photo.png")
    (own("input dangling symlink") / "in").symlink_to(own("input dangling symlink") / "gone")
    case("input dangling symlink", "is a symlink to",
         input_dir=own("input dangling symlink") / "in")
    case("input remote", "must be a local folder", input_dir="gs://b/in")
    case("input ~ after =", "--input_dir=~/images starts with ~", input_dir="~/images")
    case("no class folders", "no class folders", input_dir=tmp / "nested")
    lines = own("class name with a line break") / "in"
    fx.make_class_folders(str(lines), {"A\nB": 1, "C": 1}, size=(8, 8))
    case("class name with a line break", "holds a control character", input_dir=lines)
    case("class without valid images", "class 'B' has no valid", input_dir=scan_fails)

    full = own("output not empty") / "full"
    full.mkdir()
    (full / "old.txt").write_text("x")
    case("output not empty", "not empty; pass --overwrite", input_dir=scan_fails, output=full)
    case("output flag empty", "--output_dir is empty", input_dir=scan_fails, output="")
    # Unrefused, it would make ./~/records: checked in the shared-inputs test.
    case("output ~ after =", "--output_dir=~/records starts with ~", input_dir=scan_fails,
         output="~/records")
    (own("output is a file") / "out").write_text("x")
    case("output is a file", "is a file, not a folder", input_dir=scan_fails)
    (own("output under a file") / "file").write_text("x")
    case("output under a file", "cannot be written", input_dir=scan_fails,
         output=own("output under a file") / "file" / "sub")
    (own("output dangling symlink") / "out").symlink_to(own("output dangling symlink") / "gone")
    case("output dangling symlink", "is a symlink to", input_dir=scan_fails)
    case("output not UTF-8", "is not UTF-8", input_dir=scan_fails,
         output=own("output not UTF-8") / "caf\udce9")
    root = copy_of(good, "output is the class root")
    case("output is the class root", "inside the class folders", "--overwrite",
         input_dir=root, output=root)
    kaggle = own("output in a class folder") / "kaggle"
    fx.make_class_folders(str(kaggle / "train"), {"A": 2, "B": 2}, size=(8, 8))
    case("output in a class folder", f"inside the class folders of --input_dir ({kaggle}/train)",
         "--overwrite", input_dir=kaggle, output=kaggle / "train" / "A")
    linked = copy_of(good, "output links into a class folder")
    (own("output links into a class folder") / "out").symlink_to(linked / "A")
    case("output links into a class folder", "inside the class folders", "--overwrite",
         input_dir=linked)
    (own("folder where a file goes") / "out" / records.INFO_FILE).mkdir(parents=True)
    (own("folder where a file goes") / "out" / records.INFO_FILE / "mine.txt").write_text("x")
    case("folder where a file goes", "writing to --output_dir", "--overwrite", "--num_workers=1")

    case("num_shards 0", "--num_shards must be in 1..10000, got 0", "--num_shards=0")
    case("num_shards 10001", "--num_shards must be in 1..10000", "--num_shards=10001")
    case("num_shards text", "--num_shards", "--num_shards=many")
    case("fraction 1.5", "--validation_fraction", "--validation_fraction=1.5")
    case("fraction 0", "--validation_fraction", "--validation_fraction=0")
    case("fraction nan", "--validation_fraction must be in (0, 1), got nan",
         "--validation_fraction=nan")
    case("fraction inf", "--validation_fraction must be in (0, 1), got inf",
         "--validation_fraction=inf")
    case("max side -1", "--max_image_side", "--max_image_side=-1")
    case("max side 5", "--max_image_side must be 0 (full size) or in 32..65500, got 5",
         "--max_image_side=5")
    case("max side 65501", "--max_image_side must be 0 (full size) or in 32..65500",
         "--max_image_side=65501")
    case("quality 0", "--jpeg_quality must be in 1..100", "--jpeg_quality=0")
    case("quality 101", "--jpeg_quality", "--jpeg_quality=101")
    workers = f"--num_workers must be in 1..{4 * len(os.sched_getaffinity(0))} "
    case("workers 0", workers, "--num_workers=0")
    case("workers 100000", workers, "--num_workers=100000")
    case("seed -1", "--seed must be in 0..2147483647, got -1", "--seed=-1")
    case("seed 2**31", "--seed must be in 0..2147483647", "--seed=2147483648")
    case("seed text", "--seed", "--seed=x")
    cases["no input flag"] = (MODULE + [f"--output_dir={own('no input flag') / 'out'}"],
                              "--input_dir")
    case("stray argument", "unexpected arguments: extra", "extra")
    case("unknown flag", "shards", "--shards=3")
    return cases


def _odd_names(tmp: pathlib.Path) -> pathlib.Path:
    """Spaces, non-ASCII, non-UTF-8 names, symlinks good and broken: the input tree."""
    root, elsewhere = tmp / "odd input", tmp / "elsewhere"
    fx.make_class_folders(str(root), {"Común chickweed": 2, "Fat Hen": 2}, size=(8, 8))
    os.rename(root / "Común chickweed" / "000.png", root / "Común chickweed" / "foto ñ 0.png")
    fx.noise_png(str(elsewhere / "Linked class" / "0.png"), size=(8, 8), seed=1)
    fx.noise_png(str(elsewhere / "lone.png"), size=(8, 8), seed=2)
    fx.noise_png(os.fsdecode(bytes(root / "Fat Hen") + b"/caf\xe9.png"), size=(8, 8), seed=3)
    hen = root / "Fat Hen"
    (root / "Linked").symlink_to(elsewhere / "Linked class")
    (hen / "link.png").symlink_to(elsewhere / "lone.png")
    (hen / "gone.png").symlink_to(elsewhere / "nowhere.png")
    (hen / "loop.png").symlink_to(hen / "loop.png")
    (hen / "up").symlink_to(root)
    (root / "Loop").symlink_to(root / "Loop")
    return root


def _once_per_run(tmp_path_factory, name: str, compute: Callable[[], Any]) -> Any:
    """compute()'s JSON result, computed by one pytest-xdist worker of the run only.

    Every worker that runs a test of this module would otherwise make the
    module fixture again: dozens of processes, each importing TensorFlow.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return compute()
    shared = tmp_path_factory.getbasetemp().parent  # one folder per run, for all workers
    result = shared / f"{name}.json"
    try:
        os.close(os.open(shared / f"{name}.lock", os.O_CREAT | os.O_EXCL))
    except FileExistsError:  # another worker computes it
        deadline = time.time() + 900
        while not result.exists():
            assert time.time() < deadline, f"no {result} from the worker making it"
            time.sleep(0.2)
        value = json.loads(result.read_text())
        assert "failed" not in value, value.get("failed")
        return value["value"]
    try:
        value = {"value": compute()}
    except BaseException as error:
        value = {"failed": f"{type(error).__name__}: {error}"}
        raise
    finally:
        (shared / f"{name}.json.tmp").write_text(json.dumps(value))
        os.rename(shared / f"{name}.json.tmp", result)
    return value["value"]


def _run_cli(tmp: pathlib.Path) -> dict[str, Any]:
    cases = _cli_cases(tmp)
    fx.make_class_folders(str(tmp / "wrapped"), {"A": 4, "B": 4}, size=(8, 8))
    commands = {name: [str(arg) for arg in command] for name, (command, _) in cases.items()}
    commands["help"] = MODULE + ["--help"]
    commands["odd names"] = MODULE + [f"--input_dir={_odd_names(tmp)}",
                                      f"--output_dir={tmp / 'odd out ü'}", "--num_workers=2"]
    # Relative paths from another folder: the wrapper must not change directory.
    commands["wrapper"] = [os.path.join(REPO, "scripts", "make_tfrecords.sh"),
                           "wrapped", "wrapped_out", "--num_shards=2"]
    commands["wrapper usage"] = [os.path.join(REPO, "scripts", "make_tfrecords.sh")]
    before = tree(tmp)

    def run(name: str) -> tuple[int, str, str]:
        done = subprocess.run(commands[name], cwd=tmp if name.startswith("wrapper") else REPO,
                              capture_output=True, text=True, timeout=300)
        return done.returncode, done.stdout, done.stderr

    # A few at a time: each one that reaches a path check imports TensorFlow.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = dict(zip(commands, pool.map(run, commands)))
    messages = {name: message for name, (_, message) in cases.items()}
    return dict(tmp=str(tmp), messages=messages, results=results, before=before,
                after=tree(tmp))


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    made = _once_per_run(tmp_path_factory, "make_tfrecords_cli",
                         lambda: _run_cli(tmp_path_factory.mktemp("cli")))
    return (pathlib.Path(made["tmp"]), made["messages"], made["results"], made["before"],
            made["after"])


CLI_ERRORS = [
    "input missing", "input empty", "input flag empty", "input is a file",
    "input dangling symlink", "input remote", "input ~ after =", "no class folders",
    "class name with a line break", "class without valid images", "output not empty",
    "output flag empty", "output ~ after =", "output is a file", "output under a file",
    "output dangling symlink", "output not UTF-8", "output is the class root",
    "output in a class folder", "output links into a class folder", "folder where a file goes",
    "num_shards 0", "num_shards 10001", "num_shards text", "fraction 1.5", "fraction 0",
    "fraction nan", "fraction inf", "max side -1", "max side 5", "max side 65501", "quality 0",
    "quality 101", "workers 0", "workers 100000", "seed -1", "seed 2**31", "seed text",
    "no input flag", "stray argument", "unknown flag",
]


@pytest.mark.parametrize("case", CLI_ERRORS)
def test_cli_errors_are_one_line_and_change_nothing(cli, case):
    tmp, cases, results, before, after = cli
    returncode, _, stderr = results[case]
    assert returncode != 0
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("make_tfrecords: error: ")
    assert cases[case] in lines[0]
    # Nothing of the case's own lost, changed or added: no records, no info.
    mine = lambda snapshot: {p: h for p, h in snapshot.items()
                             if p.startswith(os.path.join("cases", case) + os.sep)}
    assert mine(after) == mine(before)


def test_cli_cases_are_all_tested_and_leave_shared_inputs_alone(cli):
    tmp, cases, results, before, after = cli
    assert sorted(cases) == sorted(CLI_ERRORS)
    made_by_successes = ("wrapped_out" + os.sep, "odd out ü" + os.sep)
    shared = lambda snapshot: {p: h for p, h in snapshot.items()
                               if not p.startswith(("cases" + os.sep, *made_by_successes))}
    assert shared(after) == shared(before)
    assert not os.path.exists(os.path.join(REPO, "~"))


def test_odd_names_and_symlinks_convert_and_broken_entries_are_reported(cli):
    tmp, _, results, _, _ = cli
    returncode, stdout, stderr = results["odd names"]
    assert returncode == 0, stderr
    assert "Traceback" not in stderr
    info = json.loads((tmp / "odd out ü" / records.INFO_FILE).read_text())
    assert info["class_names"] == ["Común chickweed", "Fat Hen", "Linked"]
    found = all_records(str(tmp / "odd out ü"))
    assert {f: r["label"] for f, r in found.items()} == {
        "Común chickweed/foto ñ 0.png": 0, "Común chickweed/001.png": 0,
        "Fat Hen/000.png": 1, "Fat Hen/001.png": 1, "Fat Hen/link.png": 1,
        "Linked/0.png": 2,
    }
    reasons = skip_reasons(info)
    assert sorted(reasons) == ["Fat Hen/caf\\xe9.png", "Fat Hen/gone.png", "Fat Hen/loop.png"]
    assert reasons["Fat Hen/caf\\xe9.png"].startswith("file name is not UTF-8")
    assert reasons["Fat Hen/gone.png"] == (
        f"broken symlink: to {tmp / 'elsewhere' / 'nowhere.png'} (No such file or directory)"
    )
    assert reasons["Fat Hen/loop.png"].startswith("broken symlink: ")
    folders = {d["folder"]: d["reason"] for d in info["non_class_folders"]}
    assert folders == {"Fat Hen/up": "is inside a class folder; not read",
                       "Loop": "is a broken symlink; not read"}
    assert "Común chickweed" in stdout and "skipped 3 file(s)" in stdout


def test_help_documents_every_flag(cli):
    _, _, results, _, _ = cli
    _, stdout, _ = results["help"]
    for flag in ("input_dir", "output_dir", "num_shards", "validation_fraction", "seed",
                 "max_image_side", "jpeg_quality", "num_workers", "overwrite"):
        assert f"--{flag}" in stdout or f"--[no]{flag}" in stdout


def test_shell_wrapper_converts_and_prints_a_summary(cli):
    tmp, _, results, _, _ = cli
    returncode, stdout, stderr = results["wrapper"]
    assert returncode == 0, stderr
    assert "train: 6 examples in 2 shard(s)" in stdout
    assert "validation: 2 examples in 1 shard(s)" in stdout
    assert records.read_dataset_info(str(tmp / "wrapped_out")).num_shards["train"] == 2
    returncode, _, stderr = results["wrapper usage"]
    assert returncode == 2 and stderr.startswith("usage:")
