"""--export_formats and `predict --format`: TFLite float16 and int8, and ONNX, as a user gets them.

One tiny run trained and exported in every format is shared by the module
(`edge_run`); each model is converted once, there. The tests check what a
user sees: the files in export/, what LiteRT and onnxruntime say about each
model's inputs and outputs, the CSVs `trainer.predict` writes through each
format, the JSON a device-side developer reproduces the preprocessing from,
and one-line errors that leave the SavedModel in place.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from input_pipeline import preprocessing, records
from tests.main_per_case import run_main_per_case
from tests.trainer_fixtures import TINY, assert_ok, run_module, train
from trainer import config, edge_export, edge_runtime
from trainer.warm_start import NORMALIZATION_FILE

EDGE = ("tflite_fp16", "tflite_int8", "onnx")
ALL_FORMATS = "--export_formats=saved_model," + ",".join(EDGE)
TRAINED = ["--train_steps=200", "--steps_per_loop=100", "--batch_size=8", "--learning_rate=0.3",
           "--label_smoothing=0"]
EXIT_SKIPPED = 3
OLD_CSV = "file,species\nold.png,Charlock\n"


@pytest.fixture(scope="module")
def edge_run(tiny_records, tmp_path_factory) -> str:
    """A run that tells the fixture's colours apart, exported in every format at its end.

    Trained until no two classes nearly tie on any test image (top-1 ahead of
    the second by 0.97 or more in the runs measured; training on CPU is not
    bit-exact): near ties would let rounding flip a top-1.
    """
    model_dir = os.fspath(tmp_path_factory.mktemp("edge_run"))
    assert_ok(train(tiny_records.data_dir, model_dir, *TRAINED, "--mode=train", ALL_FORMATS))
    return model_dir


@pytest.fixture(scope="module")
def test_images(tiny_records, tmp_path_factory) -> str:
    """The validation colours as PNGs and JPEGs of several shapes, and a file that is no image."""
    folder = tmp_path_factory.mktemp("test_images")
    for i, example in enumerate(tiny_records.examples[records.VALIDATION]):
        name = f"{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.new("RGB", (40 + 9 * i, 90 - 3 * i), example.colour).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    return os.fspath(folder)


def test_every_format_is_written_with_its_contract(edge_run, tiny_records):
    export_dir = os.path.join(edge_run, "export")
    files = set(os.listdir(export_dir))
    assert {"saved_model.pb", "variables", "labels.txt", "preprocessing.json",
            "model_fp16.tflite", "model_int8.tflite", "model.onnx"} <= files, files
    assert not [f for f in files if f.endswith(".tmp")]
    assert records.read_labels(export_dir) == list(tiny_records.class_names)
    contract = json.load(open(os.path.join(export_dir, "preprocessing.json")))
    normalization = json.load(open(os.path.join(edge_run, NORMALIZATION_FILE)))
    assert contract["input"] == {"name": "image", "dtype": "uint8", "shape": [1, 32, 32, 3],
                                 "layout": "NHWC", "channels": "RGB"}
    assert contract["crop"]["fraction"] == preprocessing.EVAL_CROP_FRACTION
    assert contract["normalization"]["mean"] == normalization["mean"]
    assert contract["normalization"]["std"] == normalization["std"]
    assert contract["output"]["shape"] == [1, 4]
    assert contract["models"] == {fmt: edge_runtime.MODEL_FILES[fmt] for fmt in EDGE}
    assert tuple(edge_runtime.MODEL_FILES) == config.EXPORT_FORMATS  # one file per flag value
    sizes = {fmt: os.path.getsize(os.path.join(export_dir, edge_runtime.MODEL_FILES[fmt]))
             for fmt in EDGE}
    assert sizes["tflite_int8"] < sizes["tflite_fp16"] < sizes["onnx"], sizes


def test_each_runtime_sees_uint8_in_float32_out_and_int8_is_integer_only(edge_run):
    """Read with LiteRT and onnxruntime themselves, not through trainer code."""
    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter

    export_dir = os.path.join(edge_run, "export")
    for fmt in ("tflite_fp16", "tflite_int8"):
        interpreter = Interpreter(os.path.join(export_dir, edge_runtime.MODEL_FILES[fmt]))
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        assert (inp["dtype"], list(inp["shape"])) == (np.uint8, [1, 32, 32, 3]), fmt
        assert (out["dtype"], list(out["shape"])) == (np.float32, [1, 4]), fmt
        if fmt == "tflite_int8":
            assert inp["quantization"] == (1.0, 0)  # the pixels as they are
            floats = [t["name"] for t in interpreter.get_tensor_details()
                      if t["dtype"] == np.float32]
            assert floats == [out["name"]], floats  # only the dequantised probabilities
    session = onnxruntime.InferenceSession(os.path.join(export_dir, "model.onnx"))
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("image", "tensor(uint8)", [1, 32, 32, 3])
    assert (out.name, out.type, out.shape) == ("probabilities", "tensor(float)", [1, 4])


def test_predict_writes_the_same_csv_through_each_format(edge_run, test_images, tmp_path):
    formats = ("saved_model", *EDGE)
    outputs = {fmt: tmp_path / f"{fmt}.csv" for fmt in formats}
    damaged = tmp_path / "damaged"
    shutil.copytree(os.path.join(edge_run, "export"), damaged)
    (damaged / "model.onnx").write_bytes(b"not a protocol buffer")
    *results, refused = run_main_per_case("trainer.predict", [
        *([f"--model_dir={edge_run}", f"--input={test_images}", f"--output={outputs[fmt]}",
           f"--format={fmt}"] for fmt in formats),
        [f"--export_dir={damaged}", f"--input={test_images}", f"--output={tmp_path}/x.csv",
         "--format=onnx"]])
    assert _error_line(refused).startswith(f"error: {damaged}/model.onnx does not load (")
    assert _error_line(refused).endswith(
        "export it again with `python -m trainer.main --mode=export --export_formats=onnx`")
    assert not os.path.exists(tmp_path / "x.csv")
    for fmt, result in zip(formats, results):
        assert result.returncode == EXIT_SKIPPED, (fmt, result.stderr[-2000:])
        skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
        assert len(skipped) == 1 and "broken.png: damaged or not an image (" in skipped[0], fmt
        assert "function_node" not in skipped[0]
    csvs = {fmt: outputs[fmt].read_text() for fmt in formats}
    rows = csvs["saved_model"].splitlines()
    assert len(rows) == 1 + 13 and len({row.split(",")[1] for row in rows[1:]}) > 1, rows
    for fmt in EDGE:
        assert csvs[fmt] == csvs["saved_model"], fmt


def test_probabilities_agree_with_the_saved_model(edge_run, test_images):
    export_dir = os.path.join(edge_run, "export")
    names = sorted(f for f in os.listdir(test_images) if not f.startswith("broken"))
    encoded = tf.constant([open(os.path.join(test_images, n), "rb").read() for n in names])
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    reference = serve(image_bytes=encoded)["probabilities"].numpy()
    # fp16 weights and ONNX's float32 differ from it by the uint8 rounding of the
    # input and float error; int8 by its steps of 1/256 and its quantised weights.
    tolerance = {"tflite_fp16": 0.01, "onnx": 0.01, "tflite_int8": 0.08}
    for fmt in EDGE:
        probabilities = edge_runtime.load_serving(fmt, export_dir)(encoded)["probabilities"]
        assert np.abs(probabilities.numpy() - reference).max() < tolerance[fmt], fmt
        assert (probabilities.numpy().argmax(-1) == reference.argmax(-1)).all(), fmt


def test_preprocessing_json_reproduces_with_pil(edge_run):
    """A device-side developer's code, from the JSON alone, gives the contract's image."""
    export_dir = os.path.join(edge_run, "export")
    contract = json.load(open(os.path.join(export_dir, "preprocessing.json")))
    size = contract["input"]["shape"][1]
    assert contract["resize"]["pil"] == f"Image.resize(({size}, {size}), Image.BILINEAR)"
    rng = np.random.default_rng(0)
    for height, width in ((90, 61), (25, 40), (130, 130)):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        side = max(int(contract["crop"]["fraction"] * min(height, width)), 1)
        top, left = (height - side) // 2, (width - side) // 2
        crop = Image.fromarray(pixels[top:top + side, left:left + side])
        device = np.asarray(crop.resize((size, size), Image.BILINEAR), np.int16)
        ours = edge_runtime.contract_image(tf.constant(_png(pixels)), size).numpy()
        assert np.abs(ours - device).max() <= 1, (height, width)
        # And it is the evaluation preprocessing, up to the rounding to uint8.
        evaluated = preprocessing.preprocess_for_eval(tf.constant([_png(pixels)]), size,
                                                      contract["normalization"]["mean"],
                                                      contract["normalization"]["std"])[0]
        normalised = preprocessing.normalize(tf.constant(ours), contract["normalization"]["mean"],
                                             contract["normalization"]["std"])
        step = 0.5 / (255 * min(contract["normalization"]["std"]))
        assert np.abs(evaluated.numpy() - normalised.numpy()).max() <= step + 1e-5


def _png(pixels: np.ndarray) -> bytes:
    return tf.io.encode_png(pixels).numpy()


def test_a_model_that_does_not_convert_is_one_line_and_writes_nothing(tmp_path):
    """An op no converter knows: every format fails, each named, and nothing is left."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: tf.ensure_shape(
        tf.numpy_function(np.sin, [t], tf.float32, stateful=False), t.shape))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x)))
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    (export_dir / "saved_model.pb").write_bytes(b"the SavedModel, exported before")
    info = records.DatasetInfo(class_names=("a", "b", "c", "d"), num_examples={}, num_shards={})
    with pytest.raises(edge_export.EdgeExportError) as raised:
        edge_export.export_edge_models(
            model, os.fspath(export_dir), EDGE, image_size=32, info=info,
            calibration=lambda: [np.zeros([1, 32, 32, 3], np.uint8)])
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"the SavedModel is in {export_dir}, but ")
    assert "tflite_fp16 ('tf.PyFuncStateless' op is neither a custom op nor a flex op)" in message
    assert "tflite_int8 ('tf.PyFuncStateless' op" in message
    assert "onnx ([ONNXRuntimeError]" in message and "PyFuncStateless" in message
    assert os.listdir(export_dir) == ["saved_model.pb"]
    assert (export_dir / "saved_model.pb").read_bytes() == b"the SavedModel, exported before"


@pytest.fixture
def broken_edge_packages(tmp_path, monkeypatch) -> None:
    """ai-edge-litert missing, and a tf2onnx that refuses every model, for child processes."""
    stubs = tmp_path / "stubs"
    (stubs / "ai_edge_litert").mkdir(parents=True)
    (stubs / "ai_edge_litert" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'ai_edge_litert'\")\n")
    (stubs / "tf2onnx").mkdir()
    (stubs / "tf2onnx" / "__init__.py").write_text("from tf2onnx import convert\n")
    (stubs / "tf2onnx" / "convert.py").write_text(
        "def from_function(*args, **kwargs):\n"
        "    raise ValueError(\"Unsupported ops: Counter({'PyFuncStateless': 1})\\nmore\")\n")
    monkeypatch.setenv("PYTHONPATH", os.fspath(stubs))


def test_start_up_errors_and_a_failed_conversion_keep_the_saved_model(
        edge_run, tiny_records, test_images, tmp_path, broken_edge_packages):
    fresh, copy = tmp_path / "fresh", tmp_path / "copy"
    shutil.copytree(edge_run, copy)
    args = [f"--data_dir={tiny_records.data_dir}", *TINY, *TRAINED]
    missing, unknown, failed = run_main_per_case("trainer.main", [
        [*args, f"--model_dir={fresh}", "--export_formats=saved_model,tflite_int8"],
        [*args, f"--model_dir={fresh}", "--export_formats=saved_model,tflite"],
        [*args, f"--model_dir={copy}", "--mode=export", "--export_formats=onnx"]])
    assert _error_line(missing) == (
        'error: --export_formats=saved_model,tflite_int8 needs ai-edge-litert, which does not '
        'import: pip install -e ".[edge]"')
    assert not fresh.exists() or not [f for f in os.listdir(fresh) if f.startswith("ckpt")]
    assert "unknown 'tflite'; choose from saved_model,tflite_fp16,tflite_int8,onnx" in (
        _error_line(unknown))
    assert _error_line(failed) == (
        f"error: the SavedModel is in {copy}/export, but onnx (Unsupported ops: "
        "Counter({'PyFuncStateless': 1})) did not convert: the log above has the converter's "
        "message")
    exported = set(os.listdir(copy / "export"))
    assert "saved_model.pb" in exported and not exported & {"model.onnx", "preprocessing.json"}
    assert tf.saved_model.load(os.fspath(copy / "export")).signatures["serving_default"]

    kept = tmp_path / "kept.csv"
    kept.write_text(OLD_CSV)
    no_runtime, no_model = run_main_per_case("trainer.predict", [
        [f"--model_dir={edge_run}", f"--input={test_images}", f"--output={kept}",
         "--format=tflite_fp16"],
        [f"--model_dir={copy}", f"--input={test_images}", f"--output={kept}", "--format=onnx"]])
    assert _error_line(no_runtime) == ('error: --format=tflite_fp16 needs ai-edge-litert, which '
                                      'does not import: pip install -e ".[edge]"')
    assert _error_line(no_model) == (
        f"error: --model_dir={copy} holds no model.onnx in export/: let its training finish, or "
        "export its latest checkpoint with `python -m trainer.main --mode=export "
        "--export_formats=onnx` and the run's flags")
    assert kept.read_text() == OLD_CSV


def _error_line(result) -> str:
    """The one `error:` line a failed command ends with, checked to be the only message."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def test_help_documents_both_flags():
    trainer, predict = run_module("trainer.main", "--helpfull"), run_module("trainer.predict",
                                                                           "--help")
    assert "--export_formats: Comma-separated models to export" in trainer.stdout
    assert '`pip install -e ".[edge]"`' in trainer.stdout.replace("\n    ", " ")
    assert "--format: <saved_model|tflite_fp16|tflite_int8|onnx>" in predict.stdout
