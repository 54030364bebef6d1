"""The data set on disk: `OUTPUT_DIR/train/<Class Name>/<hex>.png`, the Kaggle layout.

Which files a run writes depends only on (seed, images per class), so a rerun
rewrites the same names and `foreign_images` can tell this run's files from
anything else in the folder. os and PIL only.
"""

from __future__ import annotations

import hashlib
import os

from input_pipeline.synthetic.render import render_seedling
from input_pipeline.synthetic.species import CLASS_NAMES

DEFAULT_IMAGES_PER_CLASS = 100
TRAIN_FOLDER = "train"


def file_name(seed: int, class_index: int, index: int) -> str:
    """Kaggle-like file name (`0021e90e4.png`), stable for (seed, class, index)."""
    digest = hashlib.sha1(f"{seed}/{class_index}/{index}".encode()).hexdigest()
    return f"{digest[:9]}.png"


def generate(output_dir: str, images_per_class: int = DEFAULT_IMAGES_PER_CLASS, seed: int = 0) -> str:
    """Writes `output_dir/train/<Class Name>/<hex>.png` for all 12 classes.

    Files already in the folders are overwritten when their names match and
    otherwise left alone.

    Args:
      output_dir: folder to write into; created if missing.
      images_per_class: images written for each class (at least 1).
      seed: non-negative seed; the same seed writes byte-identical files.

    Returns:
      The path of the `train` folder, ready for the converter.

    Raises:
      ValueError: on images_per_class < 1 or a negative seed.
    """
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be at least 1, got {images_per_class}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    train_dir = os.path.join(output_dir, TRAIN_FOLDER)
    for class_index, class_name in enumerate(CLASS_NAMES):
        class_dir = os.path.join(train_dir, class_name)
        os.makedirs(class_dir, exist_ok=True)
        for index in range(images_per_class):
            image = render_seedling(class_index, seed, index)
            # Noisy photo-like pixels barely compress, so the fastest level
            # writes files hardly bigger than the default's, much sooner.
            image.save(os.path.join(class_dir, file_name(seed, class_index, index)), compress_level=1)
    return train_dir


def foreign_images(train_dir: str, images_per_class: int, seed: int) -> list[str]:
    """Files under `train_dir`'s class folders that `generate` would not write.

    Writing among them would mix synthetic seedlings into a real data set (or
    into another seed's), which nothing downstream could tell apart, and
    could overwrite a real photograph whose name happens to match.

    Returns:
      Their paths relative to `train_dir` (`Maize/0a1b2c3d4.png`), sorted per class.
    """
    foreign = []
    for class_index, name in enumerate(CLASS_NAMES):
        ours = {file_name(seed, class_index, i) for i in range(images_per_class)}
        class_dir = os.path.join(train_dir, name)
        if os.path.isdir(class_dir):
            foreign += [os.path.join(name, f) for f in sorted(os.listdir(class_dir)) if f not in ours]
    return foreign
