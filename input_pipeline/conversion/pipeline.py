"""The conversion, start to end: find classes, scan, plan, write shards, write metadata."""

from __future__ import annotations

import collections
from typing import Any

from input_pipeline.conversion import classes, dataset_info, parallel, planning, writing
from input_pipeline.conversion.options import ConvertOptions


def convert(
    input_dir: str, output_dir: str, options: ConvertOptions = ConvertOptions()
) -> dict[str, Any]:
    """Converts `input_dir` into TFRecord shards in `output_dir`.

    Args:
      input_dir: local folder of class folders, or a Kaggle root with train/.
      output_dir: any tf.io.gfile folder; must be empty unless `options.overwrite`.
      options: how to convert; checked before anything is read.

    Returns:
      The dict written to dataset_info.json.

    Workers are started with `spawn`: a script calling this with more than
    one worker needs the usual `if __name__ == "__main__":` guard.

    Raises:
      ConversionError: bad options, input or output folder, or a class left
        without valid images.
    """
    options.check()
    layout = classes.find_classes(input_dir)
    writing.check_output_dir(output_dir, layout.root, options.overwrite)
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
    info = dataset_info.build_info(input_dir, layout, plan, options, tally)
    with writing.failures_in_one_line(output_dir):
        writing.write_metadata(output_dir, layout.class_names, info)
    return info
