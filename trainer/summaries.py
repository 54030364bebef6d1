"""Steps -> TensorBoard: what the chief writes under `<summaries>/{train,eval}`.

Non-chief workers have no writers, and every method does nothing, so the
loop calls these unconditionally.

Training scalars are not flushed as they are written: on gs:// every flush
re-uploads the whole event file. They reach it at the first write at least
`_FLUSH_MILLIS` after the previous flush, at each evaluation, at `flush()`
and `close()`, and when the writer is garbage collected, which includes any
exit of the Python process other than a kill by signal or `os._exit`.
"""

from __future__ import annotations

import posixpath
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

# TF's default; a queue long enough that only time, not the number of
# summaries written, triggers a flush.
_FLUSH_MILLIS = 120_000
_MAX_QUEUE = 10_000


class Summaries:
    """The train and eval event writers of one run; `close()` (or `with`) flushes them."""

    def __init__(self, summary_dir: str, *, enabled: bool):
        self._writers = {
            name: tf.summary.create_file_writer(
                posixpath.join(summary_dir, name), max_queue=_MAX_QUEUE, flush_millis=_FLUSH_MILLIS
            )
            for name in (("train", "eval") if enabled else ())
        }

    def __enter__(self) -> "Summaries":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def train_scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Scalars of one loop of steps; not flushed (see the module docstring)."""
        if self._use("train"):
            for name, value in values.items():
                tf.summary.scalar(name, value, step=step)

    def eval_results(self, step: int, results: Mapping[str, Any], class_names: Sequence[str], *,
                     prefix: str = "") -> None:
        """Loss, accuracy, macro F1, per-class recall, the confusion matrix as image and table.

        Args:
          prefix: of every tag: `ema/` for the weight average's evaluation.
        """
        if self._use("eval"):
            for name in ("loss", "accuracy", "macro_f1"):
                tf.summary.scalar(prefix + name, results[name], step=step)
            for name, recall in zip(class_names, results["recall"]):
                tf.summary.scalar(f"{prefix}recall/{name}", recall, step=step)
            confusion = results["confusion"]
            image = confusion_image(confusion, class_names, step, results["accuracy"])
            tf.summary.image(prefix + "confusion_matrix", image[None], step=step)
            tf.summary.text(
                prefix + "confusion_matrix_counts", _markdown_table(confusion, class_names),
                step=step)
        # Rare, and what a user waits for; the training scalars so far too.
        self.flush()

    def input_images(self, step: int, images: tf.Tensor, mean, std) -> None:
        """A few augmented training inputs, un-normalised for viewing."""
        if self._use("train"):
            images = tf.cast(images, tf.float32) * tf.constant(std) + tf.constant(mean)
            images = tf.clip_by_value(images, 0.0, 1.0)
            tf.summary.image("input_images", images, step=step, max_outputs=8)
            self.flush()  # Once per run.

    def hparams(self, values: Mapping[str, Any]) -> None:
        if self._use("train"):
            hparams_api.hparams(dict(values))
            self.flush()  # Once per run.

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        """Flushes and closes the writers; they take no more summaries."""
        for writer in self._writers.values():
            writer.close()

    def _use(self, name: str) -> bool:
        """Sends tf.summary calls to the `name` writer; False if there are no writers.

        Not `with writer.as_default()`, which flushes on exit. The writer
        stays the default afterwards, as TF has no public way back to the
        previous one: harmless, as every method sets its own, but it keeps
        the writer alive, and what it holds unflushed, until `close()`.
        """
        writer = self._writers.get(name)
        if writer is None:
            return False
        writer.set_as_default()
        return True


def _markdown_table(confusion: np.ndarray, class_names: Sequence[str]) -> str:
    header = "| label \\ prediction | " + " | ".join(class_names) + " |"
    rule = "|---" * (len(class_names) + 1) + "|"
    rows = [
        f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |"
        for name, row in zip(class_names, confusion)
    ]
    return "\n".join([header, rule, *rows])


# The confusion-matrix image. Colour is the share of each true class's row,
# not the raw count: the classes are imbalanced about 3x, and a row-normalised
# diagonal shows every class's recall on one scale. The counts are written in
# the cells, so nothing is lost.
_WHITE = np.array([255.0, 255.0, 255.0])
_BLUE = np.array([8.0, 48.0, 107.0])
_GRID = (200, 200, 200)
_INK = (25, 25, 25)
_FAINT = (120, 120, 120)
_ZERO = (185, 185, 185)  # Zeros are most cells: visible, but behind the errors.
_MARGIN, _PAD, _GAP, _MIN_CELL = 12, 6, 1, 40


def confusion_image(confusion: np.ndarray, class_names: Sequence[str], step: int,
                    accuracy: float) -> np.ndarray:
    """Renders a labelled confusion matrix as an [H, W, 3] uint8 RGB image.

    True classes are the rows, predicted classes the columns (names written
    vertically), each cell holds its count over a white-to-blue row share,
    and the title gives the step, accuracy and number of examples.
    """
    confusion = np.asarray(confusion)
    k = len(class_names)
    if confusion.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {confusion.shape} for {k} class names; "
                         f"it must be {k} x {k}, rows true classes, columns predictions")
    title_font, label_font, count_font = _font(17), _font(14), _font(13)
    title = f"Confusion matrix at step {step}: accuracy {accuracy:.1%}"
    subtitle = (f"{int(confusion.sum())} examples; colour: share of the true class's row "
                "(recall on the diagonal)")
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_height = _text_size(measure, title, title_font)[1]
    line = _text_size(measure, "Ag", label_font)[1]
    names_width = max(_text_size(measure, name, label_font)[0] for name in class_names)
    widest_count = _text_size(measure, str(int(confusion.max(initial=0))), count_font)[0]
    cell = max(_MIN_CELL, widest_count + 2 * _PAD)
    grid_size = _cell_start(k, cell)

    # Top to bottom: title, subtitle, axis title, column names, grid; left to
    # right: axis title, row names, grid.
    axis_y = _MARGIN + title_height + _PAD + line + 3 * _PAD
    top = axis_y + line + 2 * _PAD + names_width
    left = _MARGIN + line + 2 * _PAD + names_width + _PAD
    header_width = max(_text_size(measure, text, font)[0]
                       for text, font in ((title, title_font), (subtitle, label_font)))
    width = max(left + grid_size, _MARGIN + header_width) + _MARGIN
    image = Image.new("RGB", (width, top + grid_size + _MARGIN), "white")
    draw = ImageDraw.Draw(image)

    _draw_at(draw, (_MARGIN, _MARGIN), title, title_font, _INK)
    _draw_at(draw, (_MARGIN, _MARGIN + title_height + _PAD), subtitle, label_font, _FAINT)
    _draw_centred(draw, (left, axis_y, left + grid_size, axis_y + line), "Predicted class",
                  label_font, _INK)
    axis_width = _text_size(draw, "True class", label_font)[0]
    _draw_vertical(image, _MARGIN + line // 2, top + (grid_size + axis_width) // 2,
                   "True class", label_font, _INK)
    for i, name in enumerate(class_names):
        # Row names end at the grid, column names start at it: each sits by its cells.
        start = _cell_start(i, cell)
        name_width = _text_size(draw, name, label_font)[0]
        _draw_centred(draw, (left - _PAD - name_width, top + start, left - _PAD,
                             top + start + cell), name, label_font, _INK)
        _draw_vertical(image, left + start + cell // 2, top - _PAD, name, label_font, _INK)
    _draw_cells(draw, confusion, (left, top), cell, count_font)
    return np.asarray(image, dtype=np.uint8)


def _draw_cells(draw: ImageDraw.ImageDraw, confusion: np.ndarray, origin: tuple[int, int],
                cell: int, font) -> None:
    """The grid: row-share colours on grid-coloured lines, each count in its cell."""
    grid_size = _cell_start(len(confusion), cell)
    draw.rectangle((*origin, origin[0] + grid_size - 1, origin[1] + grid_size - 1), fill=_GRID)
    colours = _cell_colours(confusion)
    for (i, j), count in np.ndenumerate(confusion):
        x, y = origin[0] + _cell_start(j, cell), origin[1] + _cell_start(i, cell)
        colour = tuple(int(c) for c in colours[i, j])
        draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=colour)
        _draw_centred(draw, (x, y, x + cell, y + cell), str(int(count)), font,
                      _count_ink(count, colour))


def _cell_start(index: int, cell: int) -> int:
    """Offset of row or column `index` from the grid's edge, past the lines before it."""
    return _GAP + index * (cell + _GAP)


def _cell_colours(confusion: np.ndarray) -> np.ndarray:
    """[k, k, 3] uint8: white for none of the row, dark blue for all of it."""
    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    return np.round(_WHITE + share[..., None] * (_BLUE - _WHITE)).astype(np.uint8)


def _count_ink(count: int, background: tuple[int, int, int]) -> tuple[int, int, int]:
    if count == 0:
        return _ZERO
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (255, 255, 255) if luminance < 140 else _INK


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own scalable font, so no system fonts are needed.

    Pillow < 10.1 has no `size`: its fixed bitmap font is small but legible,
    and the layout measures whichever font it gets.
    """
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _draw_at(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font, fill) -> None:
    """`text` with the top left of its ink at `xy`."""
    left, top, _, _ = draw.textbbox((0, 0), text, font=font)
    draw.text((xy[0] - left, xy[1] - top), text, font=font, fill=fill)


def _draw_centred(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], text: str,
                  font, fill) -> None:
    # From the text's bounding box, not anchors: the bitmap fallback font has none.
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = (box[0] + box[2] - (right - left)) // 2 - left
    y = (box[1] + box[3] - (bottom - top)) // 2 - top
    draw.text((x, y), text, font=font, fill=fill)


def _draw_vertical(image: Image.Image, centre_x: int, bottom: int, text: str, font,
                   fill) -> None:
    """`text` read bottom to top, centred on `centre_x`, its end at `bottom`."""
    width, height = _text_size(ImageDraw.Draw(image), text, font)
    mask = Image.new("L", (width, height))
    _draw_centred(ImageDraw.Draw(mask), (0, 0, width, height), text, font, 255)
    mask = mask.rotate(90, expand=True)
    x, y = centre_x - mask.width // 2, bottom - mask.height
    image.paste(fill, (x, y, x + mask.width, y + mask.height), mask)
