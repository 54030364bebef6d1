"""Converts a folder of plant-seedling photographs into sharded TFRecords.

  python -m input_pipeline.make_tfrecords --input_dir=IN --output_dir=OUT [flags]

Input. IN is a folder of class folders (`IN/<Class Name>/*.png`, the Aarhus
`NonsegmentedV2/` layout) or a Kaggle competition root: if IN has a `train/`
subfolder, classes are read from `IN/train/` and the rest (`test/`, the csv) is
ignored. Which folders are classes:
  * a class folder is a direct subfolder of IN (or IN/train) that directly holds
    at least one file with an image extension; its name is the class name and
    labels are 0-based indices into the sorted class names;
  * any other folder (one holding only subfolders, such as a stray nested copy
    `nonsegmentedv2/` of the data set, or one with no image files) is not a class:
    it is listed under `non_class_folders` in records_info.json and in the
    summary, and nothing in it is read. Subfolders of class folders likewise;
  * hidden files and folders (names starting with '.') are ignored.
Or, with --tfds_name (and --tfds_data_dir) instead of --input_dir, a prepared
TFDS data set with one Image and one ClassLabel feature: class names and
labels are its ClassLabel's, its validation split is kept where it has one,
its test split is left out, and its licence and citation are printed and
recorded. Its images are staged in a local temporary folder (about the data
set's size) and converted as a folder's are. Nothing is downloaded unless
--tfds_download is passed.

Images. Each one is decoded to 3-channel RGB (alpha composited over black,
16-bit scaled to 8-bit, palette/grey/CMYK converted, EXIF orientation applied),
shrunk so its longer side is at most --max_image_side (default 512: the real
images are several times larger (DATASET.md), a classifier trained at 224 px
gains nothing from more, and 512 leaves room for random crops and zoom), and re-encoded as JPEG.
Files that cannot be used (not an image, empty, truncated, over 50 megapixels,
a broken symlink, a name that is not UTF-8) are skipped and reported with a
reason; symlinked class folders and files are followed. Byte-identical copies: the first in
sorted order (class, then file name) is kept and the others are reported as
skipped duplicates, so a copy can never land in both splits.

Output. OUT receives `train-00000-of-00008.tfrecord` ...,
`validation-00000-of-00001.tfrecord` ..., `labels.txt`, TFDS's metadata
(`dataset_info.json`, `features.json`: `tfds.builder_from_directory(OUT)` reads
the folder as a TFDS data set) and, written last, `records_info.json`, which
lists each split's records per shard (`shard_lengths`). Each shard is written under a hidden temporary name and
renamed when complete, so an interrupted run never leaves a shard that looks
complete. OUT may be any tf.io.gfile path (local, gs://, ram://) but not IN's
class folders or a folder inside them; before any image is read, it is refused
if not empty (without --overwrite) and proven writable with a probe file.

Work. This process lists the files, de-duplicates them and plans, from the
sorted listing and --seed alone, which file goes to which split, shard and
position. Worker processes (spawned, PIL and numpy only, no TensorFlow)
hash, decode, resize and encode in chunks; this process takes their results
in plan order and is the only one that writes. So the output is byte-identical
whatever --num_workers, and memory stays flat: a bounded number of chunks is in
flight and channel statistics are summed as histograms.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

from absl import app, flags, logging

# Only TF-free modules at the top: `--help` and bad flags answer at once, and
# spawned workers, which import this module again as their `__main__`, stay
# without TensorFlow. The conversion itself is imported in `main`.
from input_pipeline.conversion.options import (
    JPEG_MAX_SIDE,
    MAX_SEED,
    MAX_SHARDS,
    MIN_IMAGE_SIDE,
    WORKERS_PER_CORE,
    ConversionError,
    ConvertOptions,
)

if TYPE_CHECKING:
    from input_pipeline.conversion.tfds_source import TfdsInput


def _define_path_flags(main: dict[str, str]) -> None:
    flags.DEFINE_string(
        "input_dir", None,
        "Local folder of class folders (IN/<Class Name>/*.png) or a Kaggle root "
        "holding train/. A class folder directly holds image files; other folders "
        "are reported, not read. Or pass --tfds_name instead.",
        **main,
    )
    flags.DEFINE_string(
        "tfds_name", None,
        "Instead of --input_dir: a prepared TFDS image classification data set, e.g. "
        "plant_village or plant_village:1.0.2, with one Image and one ClassLabel feature.",
        **main,
    )
    flags.DEFINE_string(
        "tfds_data_dir", None,
        "With --tfds_name: the TFDS data folder that holds it; default TFDS's own "
        "($TFDS_DATA_DIR or ~/tensorflow_datasets).",
        **main,
    )
    flags.DEFINE_boolean(
        "tfds_download", False,
        "With --tfds_name: let TFDS download and prepare the data set into "
        "--tfds_data_dir when it is not prepared there. Off: nothing is downloaded.",
        **main,
    )
    flags.DEFINE_string(
        "output_dir", None,
        "Folder for the shards, labels.txt, records_info.json and TFDS's metadata: "
        "local, gs:// or any tf.io.gfile path. Must be empty unless --overwrite.",
        required=True, **main,
    )


def _define_option_flags(main: dict[str, str]) -> None:
    defaults = ConvertOptions()
    flags.DEFINE_integer(
        "num_shards", defaults.num_shards,
        f"Number of train shards, 1..{MAX_SHARDS} (capped at the number of examples); "
        "validation gets proportionally fewer, at least 1.",
        **main,
    )
    flags.DEFINE_float(
        "validation_fraction", defaults.validation_fraction,
        "Share of each class held out for validation, in (0, 1); at least one "
        "image of every class with two or more.",
        **main,
    )
    flags.DEFINE_integer(
        "seed", defaults.seed,
        f"Seed of the train/validation split and of the record order, 0..{MAX_SEED}.",
        **main,
    )
    flags.DEFINE_integer(
        "max_image_side", defaults.max_image_side,
        "Shrink images so that the longer side is at most this many pixels, "
        f"keeping the aspect ratio: {MIN_IMAGE_SIDE}..{JPEG_MAX_SIDE}, or 0 to keep the "
        "original size.",
        **main,
    )
    flags.DEFINE_integer(
        "jpeg_quality", defaults.jpeg_quality, "Quality of the re-encoded JPEGs, 1..100.", **main
    )
    flags.DEFINE_integer(
        "num_workers", None,
        f"Processes decoding and encoding images, 1 to {WORKERS_PER_CORE} per usable core; "
        "default one per core. 1 works in this process.",
        **main,
    )
    flags.DEFINE_boolean(
        "overwrite", defaults.overwrite,
        "Replace the converted files already in --output_dir (shards, labels.txt, "
        "records_info.json, TFDS's metadata); other files are left alone.",
        **main,
    )


def _define_flags() -> None:
    # Defined here, not at import, so that modules importing this one (which
    # have flags of their own, e.g. --seed) do not collide with these. --help
    # lists the main module's flags: naming it makes that work for the
    # `seedlings-make-tfrecords` script as well as for `python -m`.
    main = {"module_name": sys.argv[0]}
    _define_path_flags(main)
    _define_option_flags(main)


def _fail(message: str) -> NoReturn:
    sys.exit(f"make_tfrecords: error: {message}")


def _stop(signum: int, frame: Any) -> None:
    # SIGTERM (kill, a scheduler) stops the run as Ctrl-C does. By default it
    # would end this process alone, leaving its workers waiting forever.
    raise KeyboardInterrupt


def _parse_flags(argv: list[str]) -> list[str]:
    # absl's default parser prints two lines; users get one line naming the flag.
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        _fail(str(error))


def _source(f: flags.FlagValues) -> str | TfdsInput:
    """--input_dir, or the TFDS data set the --tfds_* flags name."""
    folder, tfds_name = f["input_dir"].present, f["tfds_name"].present
    if folder and tfds_name:
        _fail("pass --input_dir=FOLDER or --tfds_name=NAME (a TFDS data set), not both")
    if not folder and not tfds_name:
        _fail("pass --input_dir=FOLDER (class folders of images) or --tfds_name=NAME "
              "(a prepared TFDS data set)")
    if tfds_name and not (f.tfds_name or "").strip():
        _fail("--tfds_name is empty: name a TFDS data set, e.g. --tfds_name=plant_village")
    if folder:
        for flag in ("tfds_data_dir", "tfds_download"):
            if f[flag].present:
                _fail(f"--{flag} goes with --tfds_name, not with --input_dir")
        return f.input_dir
    from input_pipeline.conversion.tfds_source import TfdsInput  # imports TensorFlow

    return TfdsInput(f.tfds_name, f.tfds_data_dir, f.tfds_download)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    if not f["verbosity"].present:
        # Warnings and up, as absl's default promises: else TFDS's notices on
        # reading a data set show at INFO level around the summary.
        logging.set_verbosity(logging.WARNING)
    options = ConvertOptions(
        num_shards=f.num_shards, validation_fraction=f.validation_fraction, seed=f.seed,
        max_image_side=f.max_image_side, jpeg_quality=f.jpeg_quality,
        num_workers=f.num_workers, overwrite=f.overwrite,
    )
    try:
        options.check()  # convert() checks too; here a bad number costs no TF start-up
        source = _source(f)
        from input_pipeline.conversion import pipeline, records_info  # imports TensorFlow

        info = pipeline.convert(source, f.output_dir, options)
    except ConversionError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        _fail("interrupted: complete shards are kept, records_info.json is not written")
    print(records_info.format_summary(info))


def run() -> None:
    """Console entry point (`seedlings-make-tfrecords`)."""
    # The converter runs no TF math: these only silence the notices TF prints
    # on import, so that an error stays the one line the user needs.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    signal.signal(signal.SIGTERM, _stop)
    _define_flags()
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
