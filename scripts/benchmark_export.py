"""The edge exports against the SavedModel: file size, accuracy, agreement and latency.

  python scripts/benchmark_export.py --model_dir=RUN --data_dir=RECORDS
      [--formats=tflite_fp16,tflite_int8,onnx] [--latency_runs=300] [--max_images=0]

RUN is a training run exported with
`--export_formats=saved_model,tflite_fp16,tflite_int8,onnx` (at the end of
training or with --mode=export); RECORDS the records it was trained on.
For the SavedModel and each edge format (`trainer/edge_runtime.py`):
  size        its file (the SavedModel: saved_model.pb and variables/), and
              as a fraction of the float32 file: model.onnx when measured
              (float32 weights and the graph, one file, as a device loads
              it), else the SavedModel;
  accuracy    top-1 on the validation split of RECORDS (or its first
              --max_images), and the difference to the SavedModel's;
  agreement   the fraction of those images whose top-1 class is the
              SavedModel's;
  latency     one image at a time on one thread of this CPU: the median and
              90th percentile of --latency_runs calls after warm-up. Edge
              models get the contract's uint8 image, so their time is the
              runtime's alone; the SavedModel gets the encoded image (its
              signature's input), so its time includes decoding, cropping
              and resizing, which the report gives on its own too.
Edge models are fed as a device would feed them: each image through the
contract's preprocessing to uint8, then the LiteRT interpreter or
onnxruntime; the SavedModel gets the encoded images.

Targets (issue 18): top-1 agreement of tflite_fp16 and onnx >= 99.5%;
tflite_int8 accuracy within 1 point of the SavedModel's; the int8 file at
most 30% of the float32 one. Figures are noisy when other processes share
the CPU: the load average is printed so a reader can tell.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import bench  # First: puts the repository root on sys.path.
import numpy as np
from absl import flags
from accuracy_runs import text_table

from trainer import config, edge_runtime

AGREEMENT_TARGET = 0.995
INT8_ACCURACY_POINTS = 1.0
INT8_SIZE_RATIO = 0.30
WARMUP_RUNS = 10
_NOTES = {edge_runtime.SAVED_MODEL: "encoded image in: decode, crop, resize included",
          "tflite_fp16": "LiteRT, uint8 in", "tflite_int8": "LiteRT, uint8 in, full-integer",
          "onnx": "onnxruntime, uint8 in"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The flags, read once."""

    model_dir: str
    data_dir: str
    formats: list[str]
    latency_runs: int
    max_images: int


@dataclasses.dataclass(frozen=True)
class Measured:
    """One format's figures."""

    fmt: str
    size: int  # bytes
    predicted: np.ndarray  # top-1 class per validation image
    latencies: list[float]  # seconds per call

    def percentile(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100)[q - 1] * 1000


def export_dir_of(settings: Settings) -> str:
    """The run's export/ folder, holding every format asked for, or a usage error."""
    folder = os.path.join(settings.model_dir, "export")
    for fmt in (edge_runtime.SAVED_MODEL, *settings.formats):
        if not os.path.exists(os.path.join(folder, edge_runtime.MODEL_FILES[fmt])):
            bench.usage_error(
                f"--model_dir={settings.model_dir} holds no export/{edge_runtime.MODEL_FILES[fmt]}"
                f": export it with `python -m trainer.main --mode=export "
                f"--export_formats=saved_model,{','.join(settings.formats)}` and the run's flags")
    return folder


def validation_split(data_dir: str, max_images: int) -> tuple[list[bytes], np.ndarray, tuple]:
    """(encoded images, labels, class names) of the validation split, or its first max_images."""
    import tensorflow as tf
    from input_pipeline import records

    info = records.read_dataset_info(data_dir)
    shards = records.list_shards(data_dir, records.VALIDATION, info)
    spec = {key: records.FEATURE_SPEC[key] for key in ("image/encoded", "image/class/label")}
    encoded, labels = [], []
    for serialized in tf.data.TFRecordDataset(shards).take(max_images or -1):
        example = tf.io.parse_single_example(serialized, spec)
        encoded.append(example["image/encoded"].numpy())
        labels.append(int(example["image/class/label"]))
    return encoded, np.array(labels), info.class_names


def latencies(call: Callable[[], object], runs: int) -> list[float]:
    """Seconds per call of `call`, `runs` times after WARMUP_RUNS untimed ones."""
    for _ in range(WARMUP_RUNS):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def saved_model_size(export_dir: str) -> int:
    """Bytes of saved_model.pb and the variables/ folder."""
    variables = os.path.join(export_dir, "variables")
    return os.path.getsize(os.path.join(export_dir, "saved_model.pb")) + sum(
        os.path.getsize(os.path.join(variables, name)) for name in os.listdir(variables))


def measure_saved_model(export_dir: str, encoded: list[bytes], runs: int) -> Measured:
    import tensorflow as tf

    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    probabilities = np.concatenate([
        serve(image_bytes=tf.constant(encoded[i:i + 32]))["probabilities"].numpy()
        for i in range(0, len(encoded), 32)])
    one = tf.constant(encoded[:1])
    return Measured(edge_runtime.SAVED_MODEL, saved_model_size(export_dir),
                    probabilities.argmax(axis=-1), latencies(lambda: serve(image_bytes=one), runs))


def measure_edge(fmt: str, export_dir: str, images: Sequence[np.ndarray], runs: int) -> Measured:
    """`images`: uint8 [1, S, S, 3] each, through the contract's preprocessing."""
    model = edge_runtime.open_model(fmt, export_dir, num_threads=1)
    predicted = np.array([int(model(image).argmax()) for image in images])
    return Measured(fmt, os.path.getsize(os.path.join(export_dir, edge_runtime.MODEL_FILES[fmt])),
                    predicted, latencies(lambda: model(images[0]), runs))


def report(rows: list[Measured], labels: np.ndarray, preprocessing_ms: float) -> str:
    """The table, then a line per target."""
    by_format = {row.fmt: row for row in rows}
    reference = by_format.get("onnx", by_format[edge_runtime.SAVED_MODEL])
    saved = by_format[edge_runtime.SAVED_MODEL]
    accuracy = {row.fmt: float(np.mean(row.predicted == labels)) for row in rows}
    agreement = {row.fmt: float(np.mean(row.predicted == saved.predicted)) for row in rows}
    table = [["format", "size MB", "/ float32", "accuracy", "vs SavedModel", "agreement",
              "median ms", "p90 ms", "note"]]
    for row in rows:
        table.append([row.fmt, f"{row.size / 1e6:.3f}", f"{row.size / reference.size:.3f}",
                      f"{accuracy[row.fmt]:.2%}",
                      f"{100 * (accuracy[row.fmt] - accuracy[saved.fmt]):+.2f} pt",
                      f"{agreement[row.fmt]:.2%}", f"{row.percentile(50):.3f}",
                      f"{row.percentile(90):.3f}", _NOTES[row.fmt]])
    lines = [text_table(table), "",
             f"contract preprocessing of one image (decode, crop, resize, round): "
             f"{preprocessing_ms:.3f} ms median", "targets (issue 18):"]
    met = lambda ok: "met" if ok else "MISSED"
    for fmt in ("tflite_fp16", "onnx"):
        if fmt in by_format:
            lines.append(f"  {fmt} top-1 agreement with the SavedModel: {agreement[fmt]:.2%} "
                         f"(>= {AGREEMENT_TARGET:.1%}: {met(agreement[fmt] >= AGREEMENT_TARGET)})")
    if "tflite_int8" in by_format:
        points = 100 * (accuracy["tflite_int8"] - accuracy[saved.fmt])
        ratio = by_format["tflite_int8"].size / reference.size
        reference_name = "model.onnx" if reference.fmt == "onnx" else "the SavedModel"
        lines += [f"  tflite_int8 accuracy - SavedModel accuracy: {points:+.2f} points "
                  f"(within {INT8_ACCURACY_POINTS:g}: {met(abs(points) <= INT8_ACCURACY_POINTS)})",
                  f"  tflite_int8 file / float32 file ({reference_name}): {ratio:.3f} "
                  f"(<= {INT8_SIZE_RATIO:.2f}: {met(ratio <= INT8_SIZE_RATIO)})"]
    return "\n".join(lines)


def benchmark(settings: Settings, export_dir: str) -> str:
    import tensorflow as tf

    # One thread for the SavedModel too, set before TensorFlow's first op.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    encoded, labels, class_names = validation_split(settings.data_dir, settings.max_images)
    image_size, model_classes = edge_runtime.read_contract(export_dir)
    if tuple(model_classes) != tuple(class_names):
        bench.usage_error(f"--data_dir={settings.data_dir} holds other classes than the model "
                          f"in {export_dir}: pass the records it was trained on")
    preprocess = tf.function(lambda data: edge_runtime.contract_image(data, image_size)[None],
                             input_signature=[tf.TensorSpec([], tf.string)])
    images = [preprocess(tf.constant(data)).numpy() for data in encoded]
    load_before = bench.load_average()
    rows = [measure_saved_model(export_dir, encoded, settings.latency_runs)]
    rows += [measure_edge(fmt, export_dir, images, settings.latency_runs)
             for fmt in settings.formats]
    first = tf.constant(encoded[0])
    preprocessing_ms = 1000 * statistics.median(
        latencies(lambda: preprocess(first), settings.latency_runs))
    header = (f"{settings.model_dir}: {image_size} px, {len(class_names)} classes, "
              f"{len(encoded)} validation images of {settings.data_dir}; latency: one image, one "
              f"thread, {settings.latency_runs} runs")
    return f"{header}\n{report(rows, labels, preprocessing_ms)}\n{bench.load_line(load_before)}"


def main(argv: Sequence[str]) -> None:
    del argv  # bench.parse_flags refused any
    settings = bench.read_flags(Settings, formats=config.parse_choices(
        flags.FLAGS.formats, edge_runtime.EDGE_FORMATS))
    if not settings.model_dir or not settings.data_dir:
        bench.usage_error("pass --model_dir (an exported training run) and --data_dir (its "
                          "records)")
    export_dir = export_dir_of(settings)
    try:
        edge_runtime.check_packages(settings.formats, "--formats", converting=False)
        print(benchmark(settings, export_dir))
    except (ValueError, OSError) as e:  # a missing package, damaged records or model
        sys.exit(f"error: {str(e).strip().splitlines()[0]}")


def _valid_formats(values: list[str]) -> bool:
    try:
        config.parse_choices(values, edge_runtime.EDGE_FORMATS)
    except ValueError as e:
        raise flags.ValidationError(str(e)) from None  # absl adds the flag and its value
    return True


def define_flags() -> None:
    flags.DEFINE_string("model_dir", None, "A training run whose export/ holds the SavedModel "
                        "and the --formats, e.g. exported with `python -m trainer.main "
                        "--mode=export --export_formats=saved_model,tflite_fp16,tflite_int8,onnx`.")
    flags.DEFINE_string("data_dir", None, "The records the run was trained on: its validation "
                        "split is measured.")
    flags.DEFINE_list("formats", list(edge_runtime.EDGE_FORMATS),
                      "Comma-separated edge formats to measure against the SavedModel, of "
                      f"{','.join(edge_runtime.EDGE_FORMATS)}.")
    flags.register_validator("formats", _valid_formats)
    flags.DEFINE_integer("latency_runs", 300, "Timed single-image calls per format, after "
                         f"{WARMUP_RUNS} untimed ones; the median and 90th percentile are "
                         "reported.", lower_bound=2)
    flags.DEFINE_integer("max_images", 0, "Measure accuracy on the first N validation images; "
                         "0: all.", lower_bound=0)


if __name__ == "__main__":
    define_flags()
    bench.run(main)
