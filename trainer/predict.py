"""Predicts species for a folder or glob of images and writes a Kaggle submission.

    python -m trainer.predict --model_dir=DIR --input=test/ --output=submission.csv

The CSV has the competition's header `file,species`, one row per image,
sorted by file name.
"""

from __future__ import annotations

import csv
import io
import posixpath
import sys
from typing import Iterator, Sequence

from absl import app
from absl import flags
import tensorflow as tf

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Training output folder holding export/ (local or gs://).")
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "A SavedModel folder to use instead of <model_dir>/export.")
_INPUT = flags.DEFINE_string(
    "input", None, "A folder of images (e.g. Kaggle's test/) or a glob like 'test/*.png'.")
_OUTPUT = flags.DEFINE_string("output", "submission.csv", "Where to write the CSV.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per call of the model.")


def list_images(pattern: str) -> list[str]:
    """Image files in a folder (non-recursive), or matching a glob; sorted."""
    if tf.io.gfile.isdir(pattern):
        pattern = posixpath.join(pattern, "*")
    files = [f for f in tf.io.gfile.glob(pattern) if f.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        raise FileNotFoundError(f"no images match --input={pattern}")
    return sorted(files)


def _batches(files: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(files), size):
        yield files[start:start + size]


def predict(export_dir: str, files: Sequence[str], batch_size: int) -> list[tuple[str, str]]:
    """Returns (file name, predicted class name) for each file."""
    if not tf.io.gfile.exists(posixpath.join(export_dir, "saved_model.pb")):
        raise FileNotFoundError(
            f"no SavedModel in {export_dir}; train first or run `python -m trainer.main "
            "--mode=export`")
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    rows = []
    for batch in _batches(files, batch_size):
        contents = [tf.io.gfile.GFile(f, "rb").read() for f in batch]
        predicted = serve(image_bytes=tf.constant(contents))["predicted_class"].numpy()
        rows += [(posixpath.basename(f), c.decode("utf-8")) for f, c in zip(batch, predicted)]
    return rows


def write_submission(path: str, rows: Sequence[tuple[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "species"])
    writer.writerows(rows)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(buffer.getvalue())
    tf.io.gfile.rename(tmp, path, overwrite=True)


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        if not (_MODEL_DIR.value or _EXPORT_DIR.value):
            raise ValueError("pass --model_dir (or --export_dir)")
        if not _INPUT.value:
            raise ValueError("pass --input: a folder of images or a glob")
        if _BATCH_SIZE.value < 1:
            raise ValueError(f"--batch_size must be >= 1, got {_BATCH_SIZE.value}")
        export_dir = _EXPORT_DIR.value or posixpath.join(_MODEL_DIR.value, "export")
        rows = predict(export_dir, list_images(_INPUT.value), _BATCH_SIZE.value)
        write_submission(_OUTPUT.value, rows)
    except (ValueError, FileNotFoundError, tf.errors.OpError) as e:
        sys.exit(f"error: {str(e).splitlines()[0]}")
    print(f"wrote {len(rows)} predictions to {_OUTPUT.value}")


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
