"""Predicts species for a folder or glob of images and writes a Kaggle submission.

    python -m trainer.predict --model_dir=DIR --input=test/ --output=submission.csv
    python -m trainer.predict --model_dir=DIR --input=test/ --format=tflite_int8

--format picks the exported model: the SavedModel, or an edge model beside
it run as on a device (LiteRT, onnxruntime; `trainer/edge_runtime.py`).

The CSV has the competition's header `file,species`, one row per predicted
image (its file name, without the folder), sorted by file name. It is
written whole or not at all: an existing --output is replaced only by a
complete new CSV.

Every path flag is checked before the model loads. An input file that is
empty, cannot be read (e.g. a symlink to nothing) or does not decode
(truncated, damaged, not an image) costs only itself: it is named on stderr,
one line each (`skipped PATH: why`), and the other images are predicted.

Exit status:
  0  every image predicted, the CSV written.
  1  a one-line `error: ...` (a bad flag, or no image could be predicted);
     nothing written, an existing --output left as it was.
  3  some images skipped (listed on stderr); the CSV written with a row for
     every other image. Kaggle wants a row for each test image: replace the
     listed files and rerun.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import posixpath
import re
import sys
from typing import Any, Callable, Iterator, Sequence

from absl import app
from absl import flags

from input_pipeline.image_suffixes import TF_IMAGE_SUFFIXES as IMAGE_SUFFIXES
from trainer import edge_runtime
from trainer.config import EXPORT_FORMATS

# TensorFlow and `input_pipeline.storage` (which imports it) are imported
# inside the functions that need them, so `--help` and flag errors answer at
# once instead of after seconds of loading TensorFlow.

EXIT_SKIPPED = 3
MAX_BATCH_SIZE = 4096

# The SavedModel's serving signature: image_bytes=string [n] -> dict of tensors.
Serve = Callable[..., dict[str, Any]]

_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None,
    "Training output folder holding export/, the SavedModel (local or gs://).")
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None,
    "A SavedModel folder, instead of --model_dir (pass one of the two).")
_INPUT = flags.DEFINE_string(
    "input", None,
    "A folder of images (e.g. Kaggle's test/; not recursive), a glob like 'test/*.png' "
    f"(quote it), or one image. Images are files ending in {', '.join(IMAGE_SUFFIXES)}; "
    f"bad ones are skipped and listed (exit status {EXIT_SKIPPED}).")
_OUTPUT = flags.DEFINE_string(
    "output", "submission.csv",
    "Where to write the CSV (local or gs://); its folder must exist.")
_FORMAT = flags.DEFINE_enum(
    "format", edge_runtime.SAVED_MODEL, EXPORT_FORMATS,
    "Which exported model predicts: saved_model, or tflite_fp16, tflite_int8 (the LiteRT "
    "interpreter, ai-edge-litert) or onnx (onnxruntime), exported beside it with the "
    "trainer's --export_formats and fed the uint8 images their preprocessing.json describes. "
    'The edge formats need `pip install -e ".[edge]"`.')
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 32, "Images per call of the model.",
    lower_bound=1, upper_bound=MAX_BATCH_SIZE)


@dataclasses.dataclass(frozen=True)
class Skipped:
    """An input file that got no prediction, and why, in words for the user."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"skipped {self.path}: {self.reason}"


def is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def missing_flags(model_dir: str | None, export_dir: str | None, input_: str | None
                  ) -> str | None:
    """What the user must add or drop before anything can run, or None."""
    if not input_:
        return "pass --input: a folder of images, a glob or an image"
    if bool(model_dir) == bool(export_dir):
        return ("pass --model_dir (the training output folder) or --export_dir (a SavedModel "
                "folder)" + (", not both" if model_dir else ""))
    return None


def list_images(pattern: str) -> list[str]:
    """The images `--input` names: a folder's (not recursive), a glob's, or one file.

    Returns:
      Paths, sorted.

    Raises:
      storage.PathError: `pattern` names no image, in a line saying what to pass.
    """
    import tensorflow as tf
    from input_pipeline import storage

    flag = f"--input={pattern}"
    try:
        if tf.io.gfile.isdir(pattern):
            # listdir, not a glob of folder/*: a folder's name may hold [ or *.
            files = [posixpath.join(pattern, name) for name in tf.io.gfile.listdir(pattern)
                     if is_image_name(name)]
            if not files:
                raise storage.PathError(
                    f"{flag} is a folder with no images ({', '.join(IMAGE_SUFFIXES)}): "
                    "pass the folder that holds the test images")
        elif tf.io.gfile.exists(pattern):
            if not is_image_name(pattern):
                raise storage.PathError(
                    f"{flag} is a file but not an image ({', '.join(IMAGE_SUFFIXES)}): pass "
                    "a folder of images, a glob or an image")
            files = [pattern]
        elif _is_glob(pattern):
            files = [f for f in tf.io.gfile.glob(pattern) if is_image_name(f)]
            if not files:
                raise storage.PathError(
                    f"no images match {flag}: check the pattern, or pass the folder")
        else:
            # A shell leaves ~ in --input=~/x alone; only a word starting with ~ expands.
            hint = "; write $HOME for ~" if pattern.startswith("~") else ""
            raise storage.PathError(f"{flag} does not exist{hint}")
    except tf.errors.OpError as e:
        raise storage.PathError(f"{flag} cannot be read ({storage.first_line(e)})") from e
    return sorted(files)


def find_export_dir(model_dir: str | None, export_dir: str | None,
                    fmt: str = edge_runtime.SAVED_MODEL) -> str:
    """The export folder that --model_dir or --export_dir (one of them) names, holding `fmt`.

    Checked, not loaded: loading takes seconds.

    Raises:
      storage.PathError: no model of format `fmt` there.
    """
    import tensorflow as tf
    from input_pipeline import storage

    model_file = edge_runtime.MODEL_FILES[fmt]
    if fmt == edge_runtime.SAVED_MODEL:
        what, itself, exporting = "SavedModel", "a SavedModel", "--mode=export"
        hint = " (no saved_model.pb)"
    else:
        what, itself = model_file, "an export folder"
        exporting = f"--mode=export --export_formats={fmt}"
        hint = f" (export it with `python -m trainer.main {exporting}`)"

    def has_model(folder: str) -> bool:
        return tf.io.gfile.exists(posixpath.join(folder, model_file))

    if export_dir:
        storage.check_input_dir(export_dir, "--export_dir")
        if not has_model(export_dir):
            raise storage.PathError(f"--export_dir={export_dir} holds no {what}{hint}: pass the "
                                    "export/ folder inside a training run's --model_dir")
        return export_dir
    storage.check_input_dir(model_dir, "--model_dir")
    exported = posixpath.join(model_dir, "export")
    if has_model(exported):
        return exported
    if has_model(model_dir):
        raise storage.PathError(
            f"--model_dir={model_dir} is {itself} itself: pass --export_dir={model_dir}")
    raise storage.PathError(
        f"--model_dir={model_dir} holds no {what} in export/: let its training finish, or "
        f"export its latest checkpoint with `python -m trainer.main {exporting}` and the run's "
        "flags")


def check_output(path: str) -> None:
    """Proves a CSV can be written at `path` before any prediction is spent on it.

    Raises:
      storage.PathError: `path` is a folder, its folder is missing or is a
        file, or nothing can be written there (e.g. a gs:// bucket that does
        not exist).
    """
    from input_pipeline import storage

    storage.check_output_file(path, "--output")
    folder = posixpath.dirname(path) if "://" in path else os.path.dirname(path)
    storage.check_output_dir(folder or ".", "the folder of --output")


def load_serving(export_dir: str) -> Serve:
    """The SavedModel's `serving_default` signature (encoded image bytes in).

    Raises:
      storage.PathError: the SavedModel does not load, or is not one that
        `trainer.export` writes.
    """
    import tensorflow as tf
    from input_pipeline import storage

    try:
        serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    except KeyError:
        serve = None
    except (tf.errors.OpError, OSError, ValueError) as e:
        raise storage.PathError(
            f"the SavedModel in {export_dir} cannot be loaded ({storage.first_line(e)}): "
            "export it again with `python -m trainer.main --mode=export`") from e
    if serve is None or "image_bytes" not in serve.structured_input_signature[1]:
        raise storage.PathError(
            f"the SavedModel in {export_dir} has no serving_default signature taking "
            "image_bytes: pass one exported by `python -m trainer.main`")
    return serve


def error_line(error: Exception) -> str:
    """One line for the user; for a TensorFlow error, the failing op's own words.

    A tf.function's error starts `Graph execution error:` and puts the op's
    message (e.g. `Invalid PNG data, size 300`) on a later line, before the
    `[[{{node ...}}]]` trace.
    """
    import tensorflow as tf
    from input_pipeline import storage

    if isinstance(error, tf.errors.OpError):
        for line in reversed(error.message.splitlines()):
            if line.strip() and not line[0].isspace() and not line.startswith(
                    ("Graph execution error", "Detected at node", "<stack traces")):
                # A tf.function run eagerly puts its name before the op's message.
                line = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", line)
                return re.sub(r"\s*\[\[.*", "", line).strip()
    return storage.first_line(error)


def read_image_bytes(path: str) -> bytes | Skipped:
    """The file's bytes, or why it has none worth sending to the model."""
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except (tf.errors.OpError, OSError) as e:
        if os.path.islink(path) and not os.path.exists(path):
            return Skipped(path, f"a symlink to {os.readlink(path)}, which does not exist")
        return Skipped(path, f"cannot be read ({error_line(e)})")
    # Empty files are common (an interrupted download) and need no model call.
    return data if data else Skipped(path, "empty file (0 bytes)")


def _predicted_classes(serve: Serve, contents: Sequence[bytes]) -> list[str]:
    import tensorflow as tf

    predicted = serve(image_bytes=tf.constant(contents))["predicted_class"].numpy()
    return [name.decode("utf-8") for name in predicted]


def predict_batch(serve: Serve, images: Sequence[tuple[str, bytes]]
                  ) -> tuple[list[tuple[str, str]], list[Skipped]]:
    """(path, class) for each image that decodes, and the images that do not.

    One call of the model for the batch. A bad image fails that call without
    saying which one it was, so only then is each image retried alone.
    """
    import tensorflow as tf

    try:
        classes = _predicted_classes(serve, [data for _, data in images])
        return [(path, name) for (path, _), name in zip(images, classes)], []
    except tf.errors.InvalidArgumentError as e:
        if len(images) == 1:
            return [], [Skipped(images[0][0], f"damaged or not an image ({error_line(e)})")]
    rows, skipped = [], []
    for image in images:
        image_rows, image_skipped = predict_batch(serve, [image])
        rows += image_rows
        skipped += image_skipped
    return rows, skipped


def _batches(files: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(files), size):
        yield files[start:start + size]


def predict(serve: Serve, files: Sequence[str], batch_size: int,
            on_skip: Callable[[Skipped], None]) -> tuple[list[tuple[str, str]], list[Skipped]]:
    """Predicts `files` in batches.

    Args:
      serve: the SavedModel's serving signature.
      files: image paths.
      batch_size: images per call of the model.
      on_skip: told of each skipped file as soon as its batch is done, so a
        long run reports bad files early.

    Returns:
      (file name, class name) for each predicted file, and the skipped files.
    """
    rows, skipped = [], []
    for batch in _batches(files, batch_size):
        contents = [(path, read_image_bytes(path)) for path in batch]
        batch_rows, batch_skipped = predict_batch(
            serve, [(path, data) for path, data in contents if isinstance(data, bytes)])
        batch_skipped += [data for _, data in contents if isinstance(data, Skipped)]
        for bad in sorted(batch_skipped, key=lambda s: s.path):
            on_skip(bad)
        rows += [(posixpath.basename(path), name) for path, name in batch_rows]
        skipped += batch_skipped
    return rows, skipped


def submission_csv(rows: Sequence[tuple[str, str]]) -> str:
    """The Kaggle CSV: header `file,species`, rows sorted by file name."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "species"])
    writer.writerows(sorted(rows))
    return buffer.getvalue()


def _print_skipped(bad: Skipped) -> None:
    print(bad, file=sys.stderr, flush=True)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}; flags look like --name=value")
    missing = missing_flags(_MODEL_DIR.value, _EXPORT_DIR.value, _INPUT.value)
    if missing:
        sys.exit(f"error: {missing}")
    import tensorflow as tf
    from input_pipeline import storage

    try:
        # Cheapest first, and all before the model loads: a typo costs a second.
        check_output(_OUTPUT.value)
        edge_runtime.check_packages([_FORMAT.value], f"--format={_FORMAT.value}",
                                    converting=False)
        export_dir = find_export_dir(_MODEL_DIR.value, _EXPORT_DIR.value, _FORMAT.value)
        files = list_images(_INPUT.value)
        serve = (load_serving(export_dir) if _FORMAT.value == edge_runtime.SAVED_MODEL
                 else edge_runtime.load_serving(_FORMAT.value, export_dir))
        rows, skipped = predict(serve, files, _BATCH_SIZE.value, on_skip=_print_skipped)
        if not rows:
            raise ValueError(f"no image could be predicted ({len(skipped)} skipped, listed "
                             f"above): {_OUTPUT.value} not written")
    except (ValueError, tf.errors.OpError) as e:
        sys.exit(f"error: {error_line(e)}")
    try:
        storage.write_atomically(_OUTPUT.value, submission_csv(rows))
    except tf.errors.OpError as e:
        sys.exit(f"error: --output={_OUTPUT.value} cannot be written ({error_line(e)})")
    print(f"wrote {len(rows)} predictions to {_OUTPUT.value}")
    if skipped:
        # Not "skipped ...": that prefix marks one file per line, for grep.
        print(f"{len(skipped)} of {len(files)} images skipped (listed above): the CSV has rows "
              f"for the other {len(rows)} only", file=sys.stderr)
        sys.exit(EXIT_SKIPPED)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag is one line on stderr, not a usage dump."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
