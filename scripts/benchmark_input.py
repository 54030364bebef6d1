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
that tf.data tricks alone are 3x faster.

The numbers are wall-clock throughput on a machine that may be busy with
other work: each pipeline runs `--rounds` times, alternating, and the median
is reported. CPU ms/image (CPU time of this process, every thread, per
image) is much less sensitive to other load: it is what a pipeline takes
away from training on the same cores.

Usage: python scripts/benchmark_input.py [--work_dir DIR] [--images_per_class N]
         [--image_size 224] [--batch_size 64] [--seconds 15] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Run as `python scripts/benchmark_input.py`: the repository root is not on
# sys.path by itself.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from input_pipeline import make_tfrecords, records, synthetic  # noqa: E402
from input_pipeline.dataset import create_dataset  # noqa: E402

WARMUP_BATCHES = 10


def prepare_data(work_dir: str, images_per_class: int, max_image_side: int) -> tuple[str, str]:
    """Synthetic PNGs and their records under `work_dir`, reused if present."""
    images_dir = os.path.join(work_dir, "images")
    train_dir = os.path.join(images_dir, "train")  # synthetic.generate's layout
    records_dir = os.path.join(work_dir, f"records-{max_image_side}")
    if not os.path.isdir(train_dir):
        print(
            f"generating {images_per_class} synthetic PNGs per class in {images_dir} ...",
            flush=True,
        )
        train_dir = synthetic.generate(images_dir, images_per_class, seed=0)
    if not os.path.exists(os.path.join(records_dir, records.INFO_FILE)):
        print(
            f"converting to records (longer side <= {max_image_side} px) in {records_dir} ...",
            flush=True,
        )
        make_tfrecords.convert(
            train_dir,
            records_dir,
            num_shards=8,
            validation_fraction=0.1,
            seed=0,
            max_image_side=max_image_side,
            jpeg_quality=95,
            num_workers=None,
            overwrite=True,
            show_progress=False,
        )
    return train_dir, records_dir


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


def measure(
    ds: tf.data.Dataset, batch_size: int, seconds: float, max_batches: int
) -> tuple[float, float]:
    """(images per second, CPU milliseconds per image) of iterating `ds`."""
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
    return images / (time.perf_counter() - start), cpu_ms


def folder_megabytes(folder: str) -> float:
    return (
        sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)
        / 1e6
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work_dir", help="keeps the generated PNGs and records for reuse (default: a temp dir)"
    )
    parser.add_argument("--images_per_class", type=int, default=40)
    parser.add_argument("--max_image_side", type=int, default=make_tfrecords.DEFAULT_MAX_IMAGE_SIDE)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument(
        "--seconds", type=float, default=15.0, help="timed seconds per pipeline and round"
    )
    parser.add_argument(
        "--max_batches", type=int, default=500, help="stop a timing early after this many batches"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating runs of each pipeline; the median counts"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="benchmark_input-") as tmp:
        train_dir, records_dir = prepare_data(
            args.work_dir or tmp, args.images_per_class, args.max_image_side
        )
        print(
            f"source: {folder_megabytes(train_dir):.0f} MB of PNG; records: "
            f"{folder_megabytes(records_dir):.0f} MB of JPEG; {os.cpu_count()} cores; "
            f"batch {args.batch_size}, {args.image_size} px"
        )
        pipelines: dict[str, Callable[[], tf.data.Dataset]] = {
            "records (create_dataset, training)": lambda: create_dataset(
                records_dir,
                records.TRAIN,
                batch_size=args.batch_size,
                image_size=args.image_size,
                training=True,
            ),
            "keras image_dataset_from_directory": lambda: keras_dataset(
                train_dir, args.image_size, args.batch_size
            ),
            "decode only (records -> decode_jpeg)": lambda: decode_only_dataset(
                records_dir, args.batch_size
            ),
        }
        rates: dict[str, list[float]] = {name: [] for name in pipelines}
        cpu: dict[str, list[float]] = {name: [] for name in pipelines}
        for round_index in range(args.rounds):
            for name, make in pipelines.items():
                rate, cpu_ms = measure(make(), args.batch_size, args.seconds, args.max_batches)
                rates[name].append(rate)
                cpu[name].append(cpu_ms)
                print(f"round {round_index + 1}: {name:40s} {rate:8.1f} images/s "
                      f"{cpu_ms:7.3f} CPU ms/image", flush=True)

    ours, keras_rate, decode_rate = (statistics.median(r) for r in rates.values())
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nmedians (load average {load} on {os.cpu_count()} cores: above that, noisy)")
    print(f"  {'':40s} {'images/s':>8s} {'CPU ms/image':>13s}")
    for name in pipelines:
        print(f"  {name:40s} {statistics.median(rates[name]):8.1f} "
              f"{statistics.median(cpu[name]):13.3f}")
    print(f"records / keras:       {ours / keras_rate:.2f}x")
    print(f"records / decode only: {100 * ours / decode_rate:.0f}% of the bare JPEG decode rate")


if __name__ == "__main__":
    main()
