"""The command line: flags, path checks and one-line errors around `generate`.

Flags are defined when the command starts (`run`), not at import, so modules
that import the generator (e.g. the trainer) neither inherit them nor clash
on --seed. TensorFlow comes in only through the path checks (`storage`),
after the flags are parsed, so `--help` and a bad flag answer without it.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn, Sequence

from absl import app, flags

from input_pipeline.synthetic import layout
from input_pipeline.synthetic.species import CLASS_NAMES

FLAGS = flags.FLAGS

# The real classes hold a few hundred images each; far past that, a typo is
# likelier than a wish.
MAX_IMAGES_PER_CLASS = 10_000


def _define_flags() -> None:
    # Keyed to the program being run so that `--help` lists them for the
    # `seedlings-synthetic` console script too, not only `-m`.
    from input_pipeline.conversion.options import MAX_SEED  # one seed range end to end

    program = sys.argv[0]
    flags.DEFINE_string(
        "output_dir", None,
        "Local folder to write; images go to OUTPUT_DIR/train/<Class Name>/*.png. It must "
        "not hold other images there (a real data set, another seed's).",
        module_name=program,
    )
    flags.DEFINE_integer(
        "images_per_class", layout.DEFAULT_IMAGES_PER_CLASS,
        f"Images to write for each of the 12 classes, 1..{MAX_IMAGES_PER_CLASS}.",
        lower_bound=1, upper_bound=MAX_IMAGES_PER_CLASS, module_name=program,
    )
    flags.DEFINE_integer(
        "seed", 0, f"Random seed, 0..{MAX_SEED}; the same seed writes byte-identical files.",
        lower_bound=0, upper_bound=MAX_SEED, module_name=program,
    )
    flags.mark_flag_as_required("output_dir")


def _fail(message: str) -> NoReturn:
    sys.exit(f"synthetic: error: {message}")


def _parse_flags(argv: list[str]) -> list[str]:
    # absl's default parser prints two lines; users get one line naming the flag.
    try:
        return FLAGS(argv)
    except flags.Error as error:
        _fail(str(error))


def _check_output_dir(output_dir: str, images_per_class: int, seed: int) -> None:
    if "://" in output_dir:  # `generate` writes with os and PIL
        _fail(f"--output_dir must be a local folder, got {output_dir}")
    # TensorFlow (through `storage`) only for the command line: the generator
    # itself stays PIL and numpy.
    from input_pipeline import storage

    try:
        storage.check_output_dir(output_dir, "--output_dir")
    except storage.PathError as error:
        _fail(str(error))
    train = layout.TRAIN_FOLDER
    foreign = layout.foreign_images(os.path.join(output_dir, train), images_per_class, seed)
    if foreign:
        _fail(
            f"--output_dir={output_dir} already holds {len(foreign)} file(s) in {train}/ that "
            f"this run would not write (e.g. {train}/{foreign[0]}): pass an empty or new folder"
        )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    _check_output_dir(FLAGS.output_dir, FLAGS.images_per_class, FLAGS.seed)
    try:
        train_dir = layout.generate(FLAGS.output_dir, FLAGS.images_per_class, FLAGS.seed)
    except OSError as error:
        _fail(f"cannot write synthetic images: {error}")
    except KeyboardInterrupt:
        # Files are written in place, so the last may be cut short; a rerun
        # with the same flags rewrites every file whole.
        _fail("interrupted: the last image may be incomplete; rerun with the same flags")
    print(f"Wrote {FLAGS.images_per_class} images for each of {len(CLASS_NAMES)} classes to {train_dir}")


def run() -> None:
    """Console entry point (`seedlings-synthetic`)."""
    # Only the path checks import TensorFlow: keep its start-up notices off
    # stderr, so that an error stays the one line the user needs.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    _define_flags()
    app.run(main, flags_parser=_parse_flags)
