"""Writing the shards and the metadata: the parent is the only process that writes.

Every file lands whole or not at all: shards are written under a hidden
temporary name and renamed when complete, and records_info.json, which
marks the folder as a finished data set, is written last.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import os
import posixpath
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow as tf

from input_pipeline import records, storage
from input_pipeline.conversion import encoding, parallel, tfds_metadata
from input_pipeline.conversion.classes import Skipped, SourceImage
from input_pipeline.conversion.options import ConversionError, ConvertOptions
from input_pipeline.conversion.planning import ShardPlan

TMP_PREFIX = ".tmp-"


def _check_outside_class_folders(output_dir: str, class_root: str | None) -> None:
    """Refuses an output folder that is the class root or inside it.

    There, the records would mix with the photographs, and the next
    conversion would read them as a class folder or as bad images. Beside or
    above the class folders is fine (a Kaggle root IN, or IN/records beside
    IN/train): the converter writes and removes only its own file names at
    the top of --output_dir, never in the subfolders that hold the photographs.
    """
    if not output_dir or "://" in output_dir or class_root is None:
        # Empty: storage says so; remote: the input is local, so no overlap;
        # no class folders: a TFDS input.
        return
    out, root = os.path.realpath(output_dir), os.path.realpath(class_root)
    if os.path.commonpath([out, root]) == root:
        suggestion = os.path.join(os.path.dirname(os.path.abspath(class_root)), "records")
        raise ConversionError(
            f"--output_dir={output_dir} is inside the class folders of --input_dir "
            f"({class_root}): the records would land among the photographs; pass a "
            f"folder outside it, e.g. --output_dir={suggestion}"
        )


def check_output_dir(output_dir: str, class_root: str | None, overwrite: bool) -> None:
    """Refuses, before any image is read, an output folder that cannot work.

    The not-empty refusal comes before anything is created; then a probe file
    proves the folder (or the bucket) exists and grants writes.

    Raises:
      ConversionError: naming the flag and what to do.
    """
    try:
        storage.check_spelling(output_dir, "--output_dir")
    except storage.PathError as error:
        raise ConversionError(str(error)) from error
    _check_outside_class_folders(output_dir, class_root)
    try:
        if not overwrite and tf.io.gfile.isdir(output_dir) and tf.io.gfile.listdir(output_dir):
            raise ConversionError(
                f"--output_dir={output_dir} is not empty; pass --overwrite to replace "
                "the converted data in it"
            )
        storage.check_output_dir(output_dir, "--output_dir")
    except storage.PathError as error:
        raise ConversionError(str(error)) from error
    except tf.errors.OpError as error:
        raise ConversionError(
            f"--output_dir={output_dir} cannot be read ({storage.first_line(error)})"
        ) from error


@contextlib.contextmanager
def failures_in_one_line(output_dir: str) -> Iterator[None]:
    """Turns a failed write (disk full, a folder where a file goes) into one line.

    The folder was writable at start-up, so this is rare and late; shards are
    renamed only when complete and records_info.json is written last, so what
    is left does not look like a finished data set.
    """
    try:
        yield
    except tf.errors.OpError as error:
        raise ConversionError(
            f"writing to --output_dir={output_dir} failed ({storage.first_line(error)}); "
            "complete shards are kept, records_info.json is not written"
        ) from error


def remove_old_outputs(output_dir: str) -> None:
    """Removes what an earlier run wrote (and only that)."""
    # records_info.json first: if this is interrupted, what is left must not
    # look like a complete data set.
    names = [records.INFO_FILE, records.LABELS_FILE]
    names += [name + storage.TMP_SUFFIX for name in names]  # temporaries of records.write_*
    paths = [posixpath.join(output_dir, n) for n in names]
    paths += tfds_metadata.written_files(output_dir)  # and our old records_info.json's name
    for split in records.SPLITS:
        paths += tf.io.gfile.glob(records.shard_pattern(output_dir, split))
    paths += tf.io.gfile.glob(posixpath.join(output_dir, TMP_PREFIX + "*"))
    for path in paths:
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)


@contextlib.contextmanager
def _atomic_shard(output_dir: str, name: str) -> Iterator[tf.io.TFRecordWriter]:
    """A TFRecordWriter on a hidden temporary name, renamed when complete.

    On gs:// the rename is copy + delete, but the copy is one object write,
    so the final name still appears only with complete content.
    """
    tmp = posixpath.join(output_dir, TMP_PREFIX + name)
    writer = None
    try:
        # Inside the try: a Ctrl-C just after the file is created must
        # remove it too.
        writer = tf.io.TFRecordWriter(tmp)
        yield writer
    except BaseException:
        if writer is not None:
            writer.close()
        with contextlib.suppress(tf.errors.OpError):
            tf.io.gfile.remove(tmp)
        raise
    writer.close()
    tf.io.gfile.rename(tmp, posixpath.join(output_dir, name), overwrite=True)


@dataclasses.dataclass
class Tally:
    """Running totals of what was written; flat in the size of the data set."""

    class_counts: dict[str, collections.Counter]  # split -> label -> examples
    shard_lengths: dict[str, list[int]]  # split -> records in each shard, in index order
    statistics_split: str  # whose pixels make mean and std
    histogram: np.ndarray
    skipped: list[Skipped]

    @classmethod
    def start(cls, skipped: list[Skipped]) -> Tally:
        """Nothing written yet; `skipped` holds what scanning left out."""
        counts = {split: collections.Counter() for split in records.SPLITS}
        lengths: dict[str, list[int]] = {split: [] for split in records.SPLITS}
        return cls(counts, lengths, records.TRAIN, np.zeros(3 * 256, dtype=np.int64), skipped)

    def add(self, split: str, source: SourceImage, encoded: encoding.EncodedImage) -> None:
        self.class_counts[split][source.label] += 1
        if split == self.statistics_split:
            self.histogram += encoded.histogram


def _example_bytes(source: SourceImage, encoded: encoding.EncodedImage) -> bytes:
    return records.make_example(
        encoded.jpeg,
        height=encoded.height,
        width=encoded.width,
        filename=source.rel,
        label=source.label,
        class_name=source.class_name,
    ).SerializeToString(deterministic=True)  # sorted map keys: reruns give equal bytes


def write_shards(
    plan: Sequence[ShardPlan],
    output_dir: str,
    executor: concurrent.futures.Executor | None,
    options: ConvertOptions,
    tally: Tally,
) -> None:
    """Encodes every planned file in plan order and writes the shards, counting in `tally`."""
    tasks = (
        (s.path, options.max_image_side, options.jpeg_quality)
        for shard in plan
        for s in shard.sources
    )
    results = parallel.ordered_map(encoding.encode, tasks, executor, options.workers())
    total = sum(len(shard.sources) for shard in plan)
    with parallel.progress_bar(total, "converting", options.show_progress) as bar:
        for shard in plan:
            name = records.shard_name(shard.split, shard.index, shard.num_shards)
            length = 0
            with _atomic_shard(output_dir, name) as writer:
                for source, result in zip(shard.sources, results):
                    bar.update()
                    if isinstance(result, str):
                        tally.skipped.append((source, result))
                        continue
                    writer.write(_example_bytes(source, result))
                    tally.add(shard.split, source, result)
                    length += 1
            # Counted as written, so files skipped while encoding are not in
            # it: readers size the data set without reading every shard.
            tally.shard_lengths[shard.split].append(length)


def write_metadata(output_dir: str, class_names: Sequence[str], info: dict[str, Any]) -> None:
    """Writes labels.txt, TFDS's metadata, then records_info.json (`info`)."""
    records.write_labels(output_dir, class_names)
    tfds_metadata.write(output_dir, info)
    # Last of all: its presence is what marks the folder as complete.
    records.write_json(posixpath.join(output_dir, records.INFO_FILE), info)
