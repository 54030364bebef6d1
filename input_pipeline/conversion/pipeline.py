"""The conversion, start to end: find classes, scan, plan, write shards, write metadata."""

from __future__ import annotations

import collections
import contextlib
import tempfile
from typing import Any

from input_pipeline.conversion import (
    classes, parallel, planning, records_info, tfds_source, writing,
)
from input_pipeline.conversion.options import ConvertOptions


def _find_input(source: str | tfds_source.TfdsInput, output_dir: str, options: ConvertOptions,
                stack: contextlib.ExitStack) -> classes.InputLayout:
    """The input's classes and files; the output folder checked before any image is read."""
    if isinstance(source, tfds_source.TfdsInput):
        dataset = tfds_source.open_dataset(source)
        writing.check_output_dir(output_dir, None, options.overwrite)
        staging = stack.enter_context(tempfile.TemporaryDirectory(prefix="seedlings-tfds-"))
        return tfds_source.stage(dataset, staging, options)
    layout = classes.find_classes(source)
    writing.check_output_dir(output_dir, layout.root, options.overwrite)
    return layout


def convert(
    source: str | tfds_source.TfdsInput, output_dir: str,
    options: ConvertOptions = ConvertOptions(),
) -> dict[str, Any]:
    """Converts a folder of class folders, or a TFDS data set, into TFRecord shards.

    Args:
      source: a local folder of class folders, or a Kaggle root with train/;
        or a prepared TFDS data set (see `tfds_source`).
      output_dir: any tf.io.gfile folder; must be empty unless `options.overwrite`.
      options: how to convert; checked before anything is read.

    Returns:
      The dict written to records_info.json.

    Workers are started with `spawn`: a script calling this with more than
    one worker needs the usual `if __name__ == "__main__":` guard.

    Raises:
      ConversionError: bad options, input or output folder, or a class left
        without valid images.
    """
    options.check()
    with contextlib.ExitStack() as stack:
        layout = _find_input(source, output_dir, options, stack)
        return _convert(layout, output_dir, options)


def _convert(layout: classes.InputLayout, output_dir: str,
             options: ConvertOptions) -> dict[str, Any]:
    with parallel.worker_pool(min(options.workers(), len(layout.sources))) as executor:
        kept, skipped = planning.scan(layout.sources, executor, options)
        skipped = [*layout.unusable, *skipped]
        counts = collections.Counter(s.label for s in kept)
        planning.check_every_class_has_images(layout.class_names, counts, skipped)
        plan = planning.plan_shards(kept, len(layout.class_names), options)
        tally = writing.Tally.start(skipped)
        with writing.failures_in_one_line(output_dir):
            if options.overwrite:
                writing.remove_old_outputs(output_dir)
            writing.write_shards(plan, output_dir, executor, options, tally)
    # Again after encoding: a class whose every file turned out truncated is
    # as unusable as one with none.
    written = sum(tally.class_counts.values(), collections.Counter())
    planning.check_every_class_has_images(layout.class_names, written, tally.skipped)
    info = records_info.build_info(layout, plan, options, tally)
    with writing.failures_in_one_line(output_dir):
        writing.write_metadata(output_dir, layout.class_names, info)
    return info
