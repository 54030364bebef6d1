"""The built-in data set: synthetic seedlings, generated and converted once, then cached."""

from __future__ import annotations

import os

from absl import logging

from input_pipeline import records
from input_pipeline import synthetic
from input_pipeline.conversion.options import ConvertOptions
from input_pipeline.conversion.pipeline import convert

# Bump when the generator changes, so stale caches are not reused.
GENERATOR_VERSION = 1
IMAGES_PER_CLASS = 120
# The demo trains at <= 96 px: storing 160 px JPEGs keeps decoding cheap
# while leaving room for random crops.
MAX_IMAGE_SIDE = 160


def prepare(cache_dir: str, *, images_per_class: int = IMAGES_PER_CLASS, seed: int = 0) -> str:
    """Returns a records folder of synthetic seedlings, making it on first use."""
    root = os.path.join(cache_dir, f"synthetic-v{GENERATOR_VERSION}-{images_per_class}-{seed}")
    records_dir = os.path.join(root, "records")
    if os.path.exists(os.path.join(records_dir, records.INFO_FILE)):
        logging.info("using cached synthetic records in %s", records_dir)
        return records_dir
    logging.info("generating %d synthetic images per class in %s (once)", images_per_class, root)
    images_dir = synthetic.generate(os.path.join(root, "images"), images_per_class, seed)
    # records_info.json is written last, so a folder without it is an
    # interrupted earlier attempt: replace it.
    convert(images_dir, records_dir, ConvertOptions(num_shards=4, seed=seed,
                                                    max_image_side=MAX_IMAGE_SIDE, overwrite=True))
    return records_dir
