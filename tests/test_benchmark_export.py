"""Smoke tests of `scripts/benchmark_export.py`, run as a user runs it.

A tiny untrained ResNet is exported in every format in this process (the
trainer's export, without a training run); the script's table must hold the
figures the test measures itself: each file's size and ratio, the
SavedModel's accuracy, its agreement with itself, and target lines that
follow from the table. Never how fast anything was: latencies are only
checked to be there.
"""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import records
from tests.benchmark_scripts import assert_ok, assert_refused, documented_flags, run_script
from trainer import edge_runtime, export, models

# Not float16: its row and target line take the code path of ONNX's, and
# leaving it out checks --formats and saves a conversion.
FORMATS = ("saved_model", "tflite_int8", "onnx")
MAX_IMAGES = 10


@pytest.fixture(scope="module")
def exported_run(tiny_records, tmp_path_factory) -> str:
    run = os.fspath(tmp_path_factory.mktemp("run"))
    info = records.read_dataset_info(tiny_records.data_dir)
    model = models.create_model("resnet18", info.num_classes, width=8)
    checkpoint = tf.train.Checkpoint(model=model).save(os.path.join(run, "ckpt"))
    export.export_saved_model(checkpoint, os.path.join(run, "export"), model_name="resnet18",
                              width=8, image_size=32, info=info, formats=FORMATS,
                              data_dir=tiny_records.data_dir)
    return run


def saved_model_accuracy(export_dir: str, data_dir: str, count: int) -> float:
    """Top-1 accuracy of the SavedModel's signature on the first `count` validation records."""
    info = records.read_dataset_info(data_dir)
    spec = {key: records.FEATURE_SPEC[key] for key in ("image/encoded", "image/class/label")}
    examples = [tf.io.parse_single_example(s, spec) for s in tf.data.TFRecordDataset(
        records.list_shards(data_dir, records.VALIDATION, info)).take(count)]
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    probabilities = serve(image_bytes=tf.stack([e["image/encoded"] for e in examples]))
    labels = np.array([int(e["image/class/label"]) for e in examples])
    return float(np.mean(probabilities["probabilities"].numpy().argmax(-1) == labels))


def table_row(stdout: str, fmt: str) -> list[str]:
    """size MB, / float32, accuracy, vs SavedModel, agreement, median ms, p90 ms of `fmt`."""
    match = re.search(rf"^{fmt} +(\S+) +(\S+) +(\S+)% +(\S+) pt +(\S+)% +(\S+) +(\S+)  ", stdout,
                      re.MULTILINE)
    assert match, stdout
    return list(match.groups())


def test_reports_every_format_with_the_figures_measured_here(exported_run, tiny_records):
    result = run_script("benchmark_export", f"--model_dir={exported_run}",
                        f"--data_dir={tiny_records.data_dir}", "--latency_runs=3",
                        f"--max_images={MAX_IMAGES}", "--formats=tflite_int8,onnx")
    assert_ok(result)
    out = result.stdout
    assert f"32 px, 4 classes, {MAX_IMAGES} validation images" in out and "3 runs" in out
    export_dir = os.path.join(exported_run, "export")
    variables = os.path.join(export_dir, "variables")
    sizes = {fmt: os.path.getsize(os.path.join(export_dir, edge_runtime.MODEL_FILES[fmt]))
             for fmt in FORMATS}
    sizes["saved_model"] += sum(os.path.getsize(os.path.join(variables, f))
                                for f in os.listdir(variables))
    rows = {fmt: table_row(out, fmt) for fmt in FORMATS}
    accuracy = saved_model_accuracy(export_dir, tiny_records.data_dir, MAX_IMAGES)
    assert float(rows["saved_model"][2]) == pytest.approx(100 * accuracy, abs=0.005)
    assert rows["saved_model"][3:5] == ["+0.00", "100.00"]
    for fmt, (size, ratio, accuracy_cell, points, agreement, median, p90) in rows.items():
        assert float(size) == pytest.approx(sizes[fmt] / 1e6, abs=5e-4), fmt
        assert float(ratio) == pytest.approx(sizes[fmt] / sizes["onnx"], abs=5e-4), fmt
        assert float(points) == pytest.approx(
            float(accuracy_cell) - float(rows["saved_model"][2]), abs=0.011), fmt
        assert 0 <= float(agreement) <= 100 and 0 < float(median) <= float(p90), fmt
    assert not re.search(r"^tflite_fp16 ", out, re.MULTILINE) and "tflite_fp16 top-1" not in out
    agreement = float(rows["onnx"][4])
    assert re.search(rf"^  onnx top-1 agreement with the SavedModel: {rows['onnx'][4]}% "
                     rf"\(>= 99.5%: {'met' if agreement >= 99.5 else 'MISSED'}\)$", out,
                     re.MULTILINE), out
    points, ratio = float(rows["tflite_int8"][3]), sizes["tflite_int8"] / sizes["onnx"]
    assert (f"tflite_int8 accuracy - SavedModel accuracy: {rows['tflite_int8'][3]} points "
            f"(within 1: {'met' if abs(points) <= 1 else 'MISSED'})") in out
    assert (f"tflite_int8 file / float32 file (model.onnx): {ratio:.3f} "
            f"(<= 0.30: {'met' if ratio <= 0.3 else 'MISSED'})") in out
    assert re.search(r"^contract preprocessing of one image .*: [0-9.]+ ms median$", out,
                     re.MULTILINE), out
    assert "load average" in out


def test_help_lists_every_flag():
    assert documented_flags("benchmark_export") == [
        "--data_dir", "--formats", "--latency_runs", "--max_images", "--model_dir"]


def test_refused_command_lines_are_one_line(exported_run, tiny_records, tmp_path):
    without_onnx = tmp_path / "run"
    shutil.copytree(exported_run, without_onnx)
    os.remove(without_onnx / "export" / "model.onnx")
    assert_refused("benchmark_export", {
        "no model_dir": ([], ["pass --model_dir"]),
        "unknown format": ([f"--model_dir={exported_run}", "--formats=tflite"],
                           ["--formats=['tflite']", "unknown 'tflite'"]),
        "format not exported": ([f"--model_dir={without_onnx}", "--formats=onnx"],
                                ["holds no export/model.onnx", "--mode=export",
                                 "--export_formats=saved_model,onnx"]),
    }, f"--data_dir={tiny_records.data_dir}")
