"""Tests for the synthetic seedlings generator: what lands on disk and the CLI."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from input_pipeline import synthetic

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


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "input_pipeline.synthetic", *args],
        cwd=REPO_ROOT,
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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--images_per_class=0"], "images_per_class"),
        (["--seed=-1"], "seed"),
        ([], "output_dir"),
    ],
)
def test_cli_bad_flag_is_a_one_line_error(tmp_path: pathlib.Path, args: list[str], message: str) -> None:
    if args:
        args = [f"--output_dir={tmp_path}", *args]
    result = _cli(*args)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if message in line]
    assert len(errors) == 1 and "FATAL" in errors[0], result.stderr
    assert not (tmp_path / "train").exists()
