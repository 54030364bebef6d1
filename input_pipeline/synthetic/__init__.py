"""Synthetic plant seedlings in the Kaggle layout, for demos and tests.

Writes `OUTPUT_DIR/train/<Class Name>/<hex>.png` for the 12 real species, so
every stage downstream (converter, input pipeline, trainer) runs unchanged on a
machine that has no copy of the real photographs.

Each image is a top-down seedling on a soil-and-gravel background. The species
differ only in the shape, number, arrangement and relative size of their
leaves; plant greens, soil colours, lighting, growth stage and the fraction of
the frame the plant covers are drawn from one distribution shared by all
classes, so colour statistics alone cannot tell the classes apart but a small
CNN can.

Usage: python -m input_pipeline.synthetic --output_dir=DIR
         [--images_per_class=N] [--seed=S]
"""
# The stages, in the order an image is made: `species` (which leaves, where)
# builds a plant from `geometry` (leaf outlines in plant units); `render` draws
# it as a photograph; `layout` names the files and writes the folders; `cli`
# is the command line. All but the command line's path checks are PIL and
# numpy only.

from input_pipeline.synthetic.cli import MAX_IMAGES_PER_CLASS, run
from input_pipeline.synthetic.layout import (
    DEFAULT_IMAGES_PER_CLASS,
    file_name,
    foreign_images,
    generate,
)
from input_pipeline.synthetic.render import render_seedling
from input_pipeline.synthetic.species import CLASS_NAMES

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_IMAGES_PER_CLASS",
    "MAX_IMAGES_PER_CLASS",
    "file_name",
    "foreign_images",
    "generate",
    "render_seedling",
    "run",
]
