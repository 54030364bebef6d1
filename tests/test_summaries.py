"""Summaries: what reaches the event files, and when.

Read back with `tests/events.py`, as TensorBoard would read them.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image, ImageFont
import pytest

from tests.events import read_events
from trainer import metrics
from trainer.summaries import Summaries, confusion_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASS_NAMES = ("cat", "dog")
SEEDLINGS = ("Black-grass", "Charlock", "Cleavers", "Common Chickweed", "Common wheat",
             "Fat Hen", "Loose Silky-bent", "Maize", "Scentless Mayweed", "Shepherds Purse",
             "Small-flowered Cranesbill", "Sugar beet")
LONGEST = SEEDLINGS.index("Small-flowered Cranesbill")


def eval_results() -> dict:
    confusion = np.array([[3, 1], [0, 4]])
    return {"loss": 0.5, "confusion": confusion, **metrics.from_confusion(confusion)}


def scalar_steps(log_dir: str, tag: str) -> list[int]:
    return [step for step, _ in read_events(log_dir).get(tag, [])]


def test_train_scalars_wait_for_a_flush(tmp_path):
    # On gs:// every flush re-uploads the event file: not one per log line.
    summaries = Summaries(str(tmp_path), enabled=True)
    for step in (10, 20, 30):
        summaries.train_scalars(step, {"loss": 1.0 / step, "accuracy": 0.5})
    assert scalar_steps(str(tmp_path / "train"), "loss") == []
    summaries.flush()
    events = read_events(str(tmp_path / "train"))
    assert [step for step, _ in events["loss"]] == [10, 20, 30]
    np.testing.assert_allclose([value for _, value in events["loss"]], [0.1, 0.05, 1 / 30])


def test_evaluation_flushes_train_and_eval(tmp_path):
    summaries = Summaries(str(tmp_path), enabled=True)
    summaries.train_scalars(10, {"loss": 0.7})
    summaries.eval_results(10, eval_results(), CLASS_NAMES)
    assert scalar_steps(str(tmp_path / "train"), "loss") == [10]
    eval_events = read_events(str(tmp_path / "eval"))
    for tag in ("loss", "accuracy", "macro_f1", "recall/cat", "recall/dog",
                "confusion_matrix", "confusion_matrix_counts"):
        assert [step for step, _ in eval_events[tag]] == [10], tag
    assert eval_events["accuracy"] == [(10, pytest.approx(7 / 8))]


def test_close_flushes_and_with_closes(tmp_path):
    with Summaries(str(tmp_path), enabled=True) as summaries:
        summaries.train_scalars(5, {"loss": 1.0})
    assert scalar_steps(str(tmp_path / "train"), "loss") == [5]


@pytest.mark.parametrize("ending", ["return", "sys.exit(143)", "raise RuntimeError"])
def test_train_scalars_reach_the_file_when_the_process_exits(tmp_path, ending):
    # Without flush() or close(): as the trainer's test processes end.
    code = textwrap.dedent(
        f"""
        import sys
        from trainer.summaries import Summaries

        def run():
            summaries = Summaries(sys.argv[1], enabled=True)
            summaries.train_scalars(1, {{"loss": 1.0}})
            summaries.train_scalars(2, {{"loss": 0.5}})
            {ending}

        run()
        """
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == {"return": 0, "sys.exit(143)": 143}.get(ending, 1), proc.stderr
    assert scalar_steps(str(tmp_path / "train"), "loss") == [1, 2]


def test_disabled_writes_nothing(tmp_path):
    with Summaries(str(tmp_path), enabled=False) as summaries:
        summaries.hparams({"model": "resnet18"})
        summaries.train_scalars(1, {"loss": 1.0})
        summaries.eval_results(1, eval_results(), CLASS_NAMES)
    assert not os.listdir(tmp_path)


def known_confusion(k: int = len(SEEDLINGS)) -> np.ndarray:
    """Row i: about 90% right, then 8, 2 and 0 predicted as classes i+1, i+2, i+3.

    Each row's counts differ, so its cells must differ in colour, and the
    matrix is not symmetric, so rows and columns cannot be swapped unseen.
    """
    confusion = np.zeros((k, k), np.int64)
    for i in range(k):
        confusion[i, i] = 90 + i
        confusion[i, (i + 1) % k] = 8
        confusion[i, (i + 2) % k] = 2
    return confusion


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in a 1-D mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def strong_blue(image: np.ndarray) -> np.ndarray:
    """Where blue is well above red: only in cells holding most of their row; no text is blue."""
    return image[..., 2].astype(int) - image[..., 0].astype(int) > 80


def dark_cells(image: np.ndarray) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(row bands, column bands) of the strongly blue cells, the grid lines between them."""
    blue = strong_blue(image)
    return runs(blue.any(axis=1)), runs(blue.any(axis=0))


def png_images(log_dir: str, tag: str = "confusion_matrix") -> list[tuple[int, np.ndarray]]:
    """[(step, RGB array)] of an image summary, decoded as TensorBoard's browser would."""
    images = []
    for step, value in read_events(log_dir)[tag]:
        # An image summary holds width, height, then the encoded images.
        (png,) = [v for v in np.asarray(value).ravel() if v.startswith(b"\x89PNG")]
        images.append((step, np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))))
    return images


def test_confusion_image_in_the_event_file_is_labelled_and_counted(tmp_path):
    confusion = known_confusion()
    results = {"loss": 0.5, "confusion": confusion, **metrics.from_confusion(confusion)}
    with Summaries(str(tmp_path), enabled=True) as summaries:
        summaries.eval_results(300, results, SEEDLINGS)
    [(step, image)] = png_images(str(tmp_path / "eval"))
    assert step == 300
    np.testing.assert_array_equal(image, confusion_image(confusion, SEEDLINGS, 300,
                                                         results["accuracy"]))
    rows, columns = dark_cells(image)
    # The diagonal runs from the top left of the grid to its bottom right.
    assert len(rows) == len(columns) == 12, (rows, columns)
    blue = strong_blue(image)
    for i, (y0, y1) in enumerate(rows):
        assert runs(blue[y0:y1].any(axis=0)) == [columns[i]], f"row {i}"
        # Square cells, as many as the name lines need.
        assert y1 - y0 == columns[i][1] - columns[i][0] >= 24
    # Row names left of the grid, column names above it, both wider than a cell.
    assert columns[0][0] > 150 and rows[0][0] > 150


def cell_colour(image, rows, columns, i, j) -> tuple[int, ...]:
    # A corner of the cell, clear of its centred count.
    return tuple(int(c) for c in image[rows[i][0] + 3, columns[j][0] + 3])


def test_confusion_colour_is_each_rows_share_with_the_count_written_on_it():
    confusion = known_confusion()
    image = confusion_image(confusion, SEEDLINGS, 1, 0.9)
    # Same shares, other counts: only the written numbers may change.
    tripled = confusion_image(3 * confusion, SEEDLINGS, 1, 0.9)
    assert image.shape == tripled.shape
    rows, columns = dark_cells(image)
    for i in range(12):
        right, eight, two, zero = (cell_colour(image, rows, columns, i, (i + d) % 12)
                                   for d in range(4))
        # True classes are rows: row i's 8 errors are in column i+1, not in row i+1.
        assert sum(right) < sum(eight) < sum(two) < sum(zero), (i, right, eight, two, zero)
        assert cell_colour(image, rows, columns, (i + 1) % 12, i) == zero
        for j in range(12):
            (y0, y1), (x0, x1) = rows[i], columns[j]
            cell, cell_tripled = image[y0:y1, x0:x1], tripled[y0:y1, x0:x1]
            assert (cell_colour(tripled, rows, columns, i, j)
                    == cell_colour(image, rows, columns, i, j)), f"({i}, {j})"
            assert len(np.unique(cell.reshape(-1, 3), axis=0)) > 2, f"no count in ({i}, {j})"
            if confusion[i, j]:
                assert not np.array_equal(cell, cell_tripled), f"count ({i}, {j}) not written"


def test_confusion_class_names_sit_by_their_row_and_column():
    image = confusion_image(known_confusion(), SEEDLINGS, 1, 0.9)
    rows, columns = dark_cells(image)
    left, top = columns[0][0], rows[0][0]
    row_strips = [image[y0:y1, :left] for y0, y1 in rows]
    column_strips = [image[:top, x0:x1] for x0, x1 in columns]
    for strip in row_strips + column_strips:
        assert len(np.unique(strip.reshape(-1, 3), axis=0)) > 2, "a class name is missing"
    # The longest name fits: its ink stays clear of the image's edges.
    assert (row_strips[LONGEST][:, :2] == 255).all()
    assert (column_strips[LONGEST][:2] == 255).all()
    for i in range(12):
        if i == LONGEST:  # Renaming it would change the layout.
            continue
        renamed = confusion_image(known_confusion(), SEEDLINGS[:i] + ("Xy",) + SEEDLINGS[i + 1:],
                                  1, 0.9)
        assert renamed.shape == image.shape
        changed_rows = [j for j, (y0, y1) in enumerate(rows)
                        if not np.array_equal(renamed[y0:y1, :left], row_strips[j])]
        changed_columns = [j for j, (x0, x1) in enumerate(columns)
                           if not np.array_equal(renamed[:top, x0:x1], column_strips[j])]
        assert changed_rows == changed_columns == [i]
        np.testing.assert_array_equal(renamed[top:, left:], image[top:, left:])


@pytest.mark.parametrize("other", [{"step": 2000}, {"accuracy": 0.25}])
def test_confusion_title_gives_step_and_accuracy(other):
    values = {"step": 1000, "accuracy": 0.875}
    image = confusion_image(known_confusion(), SEEDLINGS, **values)
    changed = confusion_image(known_confusion(), SEEDLINGS, **{**values, **other})
    title_y0, title_y1 = runs((image != 255).any(axis=(1, 2)))[0]  # The first line of ink.
    differs = (image != changed).any(axis=(1, 2))
    assert differs.any() and not differs[:title_y0].any() and not differs[title_y1:].any()


def test_confusion_image_without_a_scalable_font(monkeypatch):
    # Pillow < 10.1, as `pillow>=10.0` allows: `load_default()` takes no size.
    def load_default():
        return ImageFont.load_default_imagefont()

    monkeypatch.setattr(ImageFont, "load_default", load_default)
    image = confusion_image(known_confusion(), SEEDLINGS, 1, 0.9)
    rows, columns = dark_cells(image)
    assert len(rows) == len(columns) == 12
    assert (image[rows[LONGEST][0]:rows[LONGEST][1], :2] == 255).all()
    assert len(np.unique(image[rows[LONGEST][0]:rows[LONGEST][1], :columns[0][0]])) > 2


def test_confusion_image_refuses_a_matrix_of_another_size():
    with pytest.raises(ValueError, match=r"shape \(2, 2\) for 12 class names"):
        confusion_image(np.eye(2), SEEDLINGS, 1, 1.0)
