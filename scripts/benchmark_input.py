"""Images per second of the training input pipeline, against the Keras default.

Three pipelines run in turns on the same synthetic seedlings (Kaggle-layout
PNGs of realistic sizes, 60-1500 px, from `input_pipeline.synthetic`), all
with the same batch and output size and all on every core of this machine:

- records: `create_dataset(..., training=True)` on the records that
  `input_pipeline.make_tfrecords` wrote from those PNGs. Per image it does a
  fused JPEG decode-and-random-crop, random flips and rotations, a bilinear
  resize, normalisation.
- keras: `keras.utils.image_dataset_from_directory` on the original PNG
  folder, shuffled as it defaults to, plus `.prefetch(AUTOTUNE)`. It decodes
  the whole PNG and resizes it; no augmentation, no normalisation.
- decode only: the records read, parsed and JPEG-decoded, nothing else: the
  rate a records pipeline could reach if augmentation were free. The records
  pipeline can beat it, because its fused crop skips part of the decode.

Read the records-vs-keras ratio for what it is: most of the win comes from
the converter having shrunk the images (longer side at most
`--max_image_side`) and re-encoded them as JPEG once, while the Keras
baseline decodes the full-size PNGs on every epoch. That is the honest
comparison of what a user would run instead of converting; it is not a claim
about what tf.data tricks alone are worth.

The numbers are wall-clock throughput on a machine that may be busy with
other work: each pipeline runs `--rounds` times, alternating, and the median
is reported. CPU ms/image (CPU time of this process, every thread, per
image) is much less sensitive to other load: it is what a pipeline takes
away from training on the same cores.

Usage: python scripts/benchmark_input.py [--work_dir=DIR] [--images_per_class=40]
         [--max_image_side=512] [--image_size=224] [--batch_size=64] [--seconds=15]
         [--max_batches=500] [--rounds=3]
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import bench  # First: puts the repository root on sys.path.
import keras
import tensorflow as tf
from absl import flags

from input_pipeline import records
from input_pipeline.conversion.options import (
    DEFAULT_MAX_IMAGE_SIDE,
    ConversionError,
    ConvertOptions,
)
from input_pipeline.dataset import create_dataset

WARMUP_BATCHES = 10


def keras_dataset(train_dir: str, image_size: int, batch_size: int) -> tf.data.Dataset:
    ds = keras.utils.image_dataset_from_directory(
        train_dir, image_size=(image_size, image_size), batch_size=batch_size, seed=0, verbose=False
    )
    return ds.repeat().prefetch(tf.data.AUTOTUNE)


def decode_only_dataset(records_dir: str, batch_size: int) -> tf.data.Dataset:
    """Read, parse and decode_jpeg, with the records pipeline's parallelism."""
    shards = sorted(tf.io.gfile.glob(records.shard_pattern(records_dir, records.TRAIN)))
    spec = {"image/encoded": records.FEATURE_SPEC["image/encoded"]}

    def decode(serialized: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_jpeg(
            tf.io.parse_single_example(serialized, spec)["image/encoded"], channels=3
        )
        # One pixel: the whole decode still runs, and batches stay rectangular.
        return image[0, 0]

    ds = tf.data.Dataset.from_tensor_slices(shards).repeat()
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=len(shards),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    options = tf.data.Options()
    options.deterministic = False
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


class Rate(NamedTuple):
    images_per_second: float
    cpu_ms_per_image: float  # CPU time of this process, every thread

    def __str__(self) -> str:
        return f"{self.images_per_second:8.1f} images/s {self.cpu_ms_per_image:7.3f} CPU ms/image"


def measure(ds: tf.data.Dataset, batch_size: int, seconds: float, max_batches: int) -> Rate:
    """How fast iterating `ds` goes, after a warm-up."""
    iterator = iter(ds)
    # Fills shuffle buffers and lets tf.data's autotuner settle.
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    batches, start, start_cpu = 0, time.perf_counter(), time.process_time()
    while batches < max_batches and time.perf_counter() - start < seconds:
        next(iterator)
        batches += 1
    images = batches * batch_size
    cpu_ms = 1000 * (time.process_time() - start_cpu) / images
    return Rate(images / (time.perf_counter() - start), cpu_ms)


def folder_megabytes(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f))
               for d, _, files in os.walk(folder) for f in files) / 1e6


@dataclasses.dataclass(frozen=True)
class Settings:
    """The flags, read once."""

    work_dir: str | None
    images_per_class: int
    max_image_side: int
    image_size: int
    batch_size: int
    seconds: float
    max_batches: int
    rounds: int


def pipelines(settings: Settings,
              data: bench.SyntheticData) -> dict[str, Callable[[], tf.data.Dataset]]:
    """Name -> a fresh dataset of that pipeline."""
    batch_size, image_size = settings.batch_size, settings.image_size
    return {
        "records (create_dataset, training)": lambda: create_dataset(
            data.records_dir, records.TRAIN, batch_size=batch_size, image_size=image_size,
            training=True,
        ),
        "keras image_dataset_from_directory": lambda: keras_dataset(
            data.images_dir, image_size, batch_size
        ),
        "decode only (records -> decode_jpeg)": lambda: decode_only_dataset(
            data.records_dir, batch_size
        ),
    }


def report(runs: dict[str, list[Rate]]) -> str:
    """The medians of each pipeline, and the records pipeline against the others."""
    rates = {name: bench.median(r, lambda m: m.images_per_second) for name, r in runs.items()}
    lines = [f"  {'':40s} {'images/s':>8s} {'CPU ms/image':>13s}"]
    for name, r in runs.items():
        cpu_ms = bench.median(r, lambda m: m.cpu_ms_per_image)
        lines.append(f"  {name:40s} {rates[name]:8.1f} {cpu_ms:13.3f}")
    ours, keras_rate, decode_rate = rates.values()
    lines.append(f"records / keras:       {ours / keras_rate:.2f}x")
    lines.append(f"records / decode only: {100 * ours / decode_rate:.0f}% of the bare JPEG "
                 "decode rate")
    return "\n".join(lines)


def benchmark(settings: Settings, work_dir: str) -> str:
    data = bench.synthetic_records(work_dir, settings.images_per_class,
                                   max_image_side=settings.max_image_side)
    print(
        f"source: {folder_megabytes(data.images_dir):.0f} MB of PNG; records: "
        f"{folder_megabytes(data.records_dir):.0f} MB of JPEG; {os.cpu_count()} cores; "
        f"batch {settings.batch_size}, {settings.image_size} px", flush=True
    )
    load_before = bench.load_average()
    runs = bench.alternate(
        {name: lambda make=make: measure(make(), settings.batch_size, settings.seconds,
                                         settings.max_batches)
         for name, make in pipelines(settings, data).items()},
        settings.rounds, show=str,
    )
    return (f"\nmedians of {settings.rounds} round(s)\n{report(runs)}\n"
            f"{bench.load_line(load_before)}")


def main(argv: Sequence[str]) -> None:
    del argv  # bench.parse_flags refused any
    settings = bench.read_flags(Settings)
    with tempfile.TemporaryDirectory(prefix="benchmark_input-") as tmp:
        print(benchmark(settings, settings.work_dir or tmp))


def _valid_max_image_side(value: int) -> bool:
    # The converter's own check, before minutes of generating images.
    try:
        ConvertOptions(max_image_side=value).check()
    except ConversionError as e:
        raise flags.ValidationError(str(e)) from None
    return True


def define_flags() -> None:
    flags.DEFINE_string("work_dir", None, "Keeps the generated PNGs and records for reuse; "
                        "default: a temp dir, removed after.")
    flags.DEFINE_integer("images_per_class", 40, "Synthetic images per class.", lower_bound=1)
    flags.DEFINE_integer("max_image_side", DEFAULT_MAX_IMAGE_SIDE,
                         "Longer side of the images the converter stores (its --max_image_side; "
                         "0 keeps the full size).")
    flags.register_validator("max_image_side", _valid_max_image_side)
    flags.DEFINE_integer("image_size", 224, "Output image side in pixels, of every pipeline.",
                         lower_bound=1)
    flags.DEFINE_integer("batch_size", 64, "Images per batch, of every pipeline.", lower_bound=1)
    flags.DEFINE_float("seconds", 15.0, "Timed seconds per pipeline and round.")
    # Written so that NaN, which fails every comparison, is refused too.
    flags.register_validator("seconds", lambda seconds: seconds > 0, "must be more than 0")
    flags.DEFINE_integer("max_batches", 500, "Stop a timing early after this many batches.",
                         lower_bound=1)
    flags.DEFINE_integer("rounds", 3, "Runs of each pipeline, taking turns; the median counts.",
                         lower_bound=1)


if __name__ == "__main__":
    define_flags()
    bench.run(main)
