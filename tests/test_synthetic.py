"""Tests for the synthetic seedlings generator: what lands on disk and the CLI."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from input_pipeline import synthetic
from tests.file_trees import tree

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Enough images for stable statistics, few enough to write in a few seconds.
SAMPLE_PER_CLASS = 16


def _files(train_dir: str) -> dict[str, bytes]:
    root = pathlib.Path(train_dir)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> str:
    return synthetic.generate(str(tmp_path_factory.mktemp("sample")), SAMPLE_PER_CLASS, seed=7)


@pytest.fixture(scope="module")
def sample_images(sample: str) -> list[tuple[int, Image.Image]]:
    images = []
    for label, name in enumerate(synthetic.CLASS_NAMES):
        for path in sorted(pathlib.Path(sample, name).glob("*.png")):
            with Image.open(path) as image:
                image.load()
                images.append((label, image))
    return images


@pytest.fixture(scope="module")
def small_pixels(sample_images: list[tuple[int, Image.Image]]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and 64x64 RGB arrays in [0, 1]: the resolution the CPU demo trains at."""
    labels = np.array([label for label, _ in sample_images])
    pixels = np.stack(
        [np.asarray(image.convert("RGB").resize((64, 64)), np.float32) / 255 for _, image in sample_images]
    )
    return labels, pixels


def test_kaggle_layout_with_real_class_names(tmp_path: pathlib.Path) -> None:
    train_dir = synthetic.generate(str(tmp_path), images_per_class=2, seed=0)

    assert train_dir == str(tmp_path / "train")
    assert sorted(os.listdir(train_dir)) == sorted(synthetic.CLASS_NAMES)
    assert "Shepherds Purse" in synthetic.CLASS_NAMES  # no apostrophe, as on disk
    assert len(synthetic.CLASS_NAMES) == 12
    for name in synthetic.CLASS_NAMES:
        files = os.listdir(os.path.join(train_dir, name))
        assert len(files) == 2
        assert all(re.fullmatch(r"[0-9a-f]{9}\.png", f) for f in files), files


def test_same_seed_writes_identical_bytes_and_other_seed_differs(tmp_path: pathlib.Path) -> None:
    first = _files(synthetic.generate(str(tmp_path / "a"), images_per_class=1, seed=3))
    again = _files(synthetic.generate(str(tmp_path / "b"), images_per_class=1, seed=3))
    other = _files(synthetic.generate(str(tmp_path / "c"), images_per_class=1, seed=4))

    assert first == again
    assert set(first).isdisjoint(other)
    assert set(first.values()).isdisjoint(other.values())


def test_image_does_not_depend_on_generation_order() -> None:
    # Rendering image 5 alone gives the pixels it has inside a full run.
    alone = np.asarray(synthetic.render_seedling(2, 11, 5))
    for index in range(6):
        in_run = synthetic.render_seedling(2, 11, index)
    np.testing.assert_array_equal(alone, np.asarray(in_run))


def test_some_files_carry_an_alpha_channel(sample_images: list[tuple[int, Image.Image]]) -> None:
    modes = [image.mode for _, image in sample_images]
    assert set(modes) == {"RGB", "RGBA"}
    assert 0.02 < modes.count("RGBA") / len(modes) < 0.25


def test_sizes_spread_like_the_real_set(sample_images: list[tuple[int, Image.Image]]) -> None:
    sizes = np.array([image.size for _, image in sample_images])  # (width, height)
    aspects = sizes[:, 0] / sizes[:, 1]

    assert sizes.min() >= 60 and sizes.max() <= 1500
    assert 180 <= np.median(sizes.max(axis=1)) <= 380
    assert sizes.max() >= 600 and sizes.min() <= 120  # a real spread, not one size
    assert np.all((aspects > 0.93) & (aspects < 1.34))
    assert 0.4 < np.mean(aspects == 1.0) < 0.9  # mostly square, not all


def _nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Fits class centroids on even-indexed images, scores on odd-indexed ones."""
    train, test = np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1
    centroids = np.stack([features[train & (labels == k)].mean(axis=0) for k in range(12)])
    distances = ((features[test][:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    return float(np.mean(distances.argmin(axis=1) == labels[test]))


def test_classes_are_not_separable_by_colour_statistics(small_pixels: tuple[np.ndarray, np.ndarray]) -> None:
    labels, pixels = small_pixels
    mean_rgb = pixels.mean(axis=(1, 2))
    bins = np.minimum((pixels * 4).astype(int), 3) @ np.array([16, 4, 1])  # 4x4x4 colour cube
    histograms = np.stack([np.bincount(b.ravel(), minlength=64) / b.size for b in bins])

    # Chance is 1/12; a generator that leaks the class through colour or
    # plant size scores far higher.
    assert _nearest_centroid_accuracy(mean_rgb, labels) < 0.4
    assert _nearest_centroid_accuracy(histograms, labels) < 0.4


def test_plants_are_green_on_soil(small_pixels: tuple[np.ndarray, np.ndarray]) -> None:
    _, pixels = small_pixels
    # Mean colour near the real data's (DATASET.md), and every image shows
    # some plant. Soil and pebbles are never greener than red, even after
    # white balance.
    np.testing.assert_allclose(pixels.mean(axis=(0, 1, 2)), [0.329, 0.289, 0.207], atol=0.05)
    plant = (pixels[..., 1] > 1.03 * pixels[..., 0]) & (pixels[..., 1] > pixels[..., 2])
    assert plant.mean(axis=(1, 2)).min() > 0.02


def test_rejects_bad_arguments(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="images_per_class"):
        synthetic.generate(str(tmp_path), images_per_class=0)
    with pytest.raises(ValueError, match="seed"):
        synthetic.generate(str(tmp_path), images_per_class=1, seed=-1)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "input_pipeline.synthetic", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_the_dataset(tmp_path: pathlib.Path) -> None:
    result = _cli(f"--output_dir={tmp_path}", "--images_per_class=1", "--seed=5")

    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "train").rglob("*.png"))) == 12
    assert str(tmp_path / "train") in result.stdout
    # The CLI and the library write the same bytes for the same seed.
    assert _files(str(tmp_path / "train")) == _files(synthetic.generate(str(tmp_path / "lib"), 1, seed=5))


def test_cli_help_documents_every_flag() -> None:
    # absl's --help exits with status 1 by design; only the text matters.
    result = _cli("--help")

    for flag in ("--output_dir", "--images_per_class", "--seed"):
        assert flag in result.stdout
    assert "Usage: python -m input_pipeline.synthetic --output_dir=DIR" in result.stdout


@pytest.fixture
def no_tensorflow(tmp_path: pathlib.Path) -> dict[str, str]:
    """Environment for a subprocess in which `import tensorflow` fails."""
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("raise ImportError('no TensorFlow here')\n")
    path = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


@pytest.mark.parametrize("args, output", [
    (["--help"], "--images_per_class"),
    (["--output_dir=out", "--seed=-1"], "--seed=-1: -1 is not an integer"),
], ids=["help", "bad flag"])
def test_cli_answers_help_and_bad_flags_without_tensorflow(
    no_tensorflow: dict[str, str], args: list[str], output: str,
) -> None:
    result = _cli(*args, env=no_tensorflow)

    assert "Traceback" not in result.stderr, result.stderr
    assert output in result.stdout + result.stderr


def test_generator_needs_no_tensorflow(no_tensorflow: dict[str, str]) -> None:
    code = "from input_pipeline import synthetic; synthetic.render_seedling(0, 0, 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=no_tensorflow,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr


def _a_file(tmp: pathlib.Path) -> None:
    (tmp / "file").write_text("mine")


def _dangling_link(tmp: pathlib.Path) -> None:
    (tmp / "link").symlink_to(tmp / "gone")


def _real_photographs(tmp: pathlib.Path) -> None:
    (tmp / "kaggle" / "train" / "Maize").mkdir(parents=True)
    (tmp / "kaggle" / "train" / "Maize" / "0a1b2c3d4.png").write_bytes(b"a real photograph")


@pytest.mark.parametrize(
    "output, setup, args, message",
    [
        ("out", None, ["--images_per_class=0"], "--images_per_class=0: 0 is not"),
        ("out", None, ["--images_per_class=10001"],
         "--images_per_class=10001: 10001 is not an integer in the range [1, 10000]"),
        ("out", None, ["--seed=-1"], "--seed=-1: -1 is not"),
        ("out", None, ["--seed=2147483648"], "is not an integer in the range [0, 2147483647]"),
        (None, None, [], "--output_dir"),
        ("out", None, ["--bogus=1"], "Unknown command line flag 'bogus'"),
        ("out", None, ["extra"], "unexpected arguments: extra"),
        ("file", _a_file, [], "is a file, not a folder"),
        ("file/sub", _a_file, [], "--output_dir={tmp}/file/sub cannot be written"),
        ("link", _dangling_link, [], "is a symlink to {tmp}/gone, which does not exist"),
        ("gs://bucket/out", None, [], "--output_dir must be a local folder"),
        ("~/synthetic", None, [], "--output_dir=~/synthetic starts with ~"),
        ("kaggle", _real_photographs, [],
         "already holds 1 file(s) in train/ that this run would not write "
         "(e.g. train/Maize/0a1b2c3d4.png)"),
    ],
    ids=["images 0", "images 10001", "seed -1", "seed 2**31", "no output_dir", "unknown flag",
         "stray argument", "output a file", "output under a file", "output dangling symlink",
         "output remote", "output ~ after =", "output holds other images"],
)
def test_cli_bad_flag_or_path_is_a_one_line_error_and_changes_nothing(
    tmp_path: pathlib.Path, output: str | None, setup: Callable | None, args: list[str],
    message: str,
) -> None:
    if setup:
        setup(tmp_path)
    if output:
        as_typed = "://" in output or output.startswith("~")
        args = [f"--output_dir={output if as_typed else tmp_path / output}", *args]
    before = tree(tmp_path)
    # One image a class, should a check let the run through; a case's own flag comes later and wins.
    result = _cli("--images_per_class=1", *args)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("synthetic: error: ")
    assert message.format(tmp=tmp_path) in result.stderr
    assert tree(tmp_path) == before  # nothing written, nothing lost
    assert not (REPO_ROOT / "~").exists()


def test_cli_refuses_other_images_but_not_its_own(tmp_path: pathlib.Path) -> None:
    # A rerun with the same flags (after Ctrl-C, say) or with more images is
    # allowed; fewer images or another seed would leave a mixed data set.
    train_dir = synthetic.generate(str(tmp_path), images_per_class=2, seed=0)

    assert synthetic.foreign_images(train_dir, 2, 0) == []
    assert synthetic.foreign_images(train_dir, 3, 0) == []
    assert len(synthetic.foreign_images(train_dir, 1, 0)) == 12
    assert len(synthetic.foreign_images(train_dir, 2, 1)) == 24


def test_cli_ctrl_c_is_one_line(tmp_path: pathlib.Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "input_pipeline.synthetic", f"--output_dir={tmp_path}",
         "--images_per_class=200"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
        # As in a terminal: a runner started in the background (nohup, `&`)
        # ignores SIGINT, and a child would inherit that and never see Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 120
        while not list(tmp_path.rglob("*.png")):
            assert process.poll() is None and time.time() < deadline, "run ended too soon"
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
    finally:
        _, stderr = process.communicate(timeout=60)

    assert process.returncode != 0
    assert stderr.strip() == (
        "synthetic: error: interrupted: the last image may be incomplete; rerun with the same flags"
    )
