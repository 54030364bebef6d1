"""A trained Keras model -> TFLite (float16, full-integer int8) and ONNX models for devices.

`trainer.export` calls this after the SavedModel is in place, with the same
weights. Every model follows the contract of `trainer/edge_runtime.py`:
uint8 RGB [1, S, S, 3] in, already cropped and resized; normalisation
inside; float32 probabilities [1, C] out.

How, and why so:
- Keras 3 models do not convert through `TFLiteConverter.from_keras_model`,
  and a SavedModel of a tf.Module holding one keeps its Keras variables as
  resource variables through `from_saved_model` (VAR_HANDLE ops: NaN
  outputs, and int8 calibration fails), where plain tf.Variables are frozen
  into constants. So the functions converted here call the model
  statelessly on copies of its weights in plain tf.Variables; TFLite
  converts a SavedModel of them, tf2onnx the function itself. (Weights made
  constants of the graph convert too, but double the converters' memory.)
- float16: TF Model Garden's recipe, weights stored as float16 and computed
  in float32 (DEFAULT optimisation, float16 supported type).
- int8: full-integer (TFLITE_BUILTINS_INT8 only), calibrated on
  `CALIBRATION_IMAGES` training images through the contract's
  preprocessing. At the edges: uint8 in, so a camera frame goes in as it is,
  with scale 1 and zero point 0, and no float op before the first integer
  one, which integer-only accelerators (Edge TPU, NPUs) need; float32 out,
  the contract's probabilities, dequantised by one op at the end rather than
  leaving every caller to apply the output's scale. The input's scale comes
  from the range calibration sees, so the calibration set starts with an
  image that holds a black and a white pixel (see `_with_anchor`): data sets
  without either would otherwise get another scale. (Pinning the range with
  a FakeQuant op instead leaves a float dequantise-quantise pair behind it.)
- Each model runs once in its runtime before it is written, so a model that
  converts but does not run (as the variable-holding one above) fails here,
  not on a device.
"""

from __future__ import annotations

import dataclasses
import posixpath
import tempfile
import warnings
from typing import Callable, Sequence

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from input_pipeline import preprocessing, records, storage
from trainer import edge_runtime

# "A few hundred", as TFLite's documentation recommends; more moves the
# ranges little and costs a calibration pass each.
CALIBRATION_IMAGES = 300
# ONNX 1.12's opset (2022): old enough for the runtimes on devices, and run by
# every onnxruntime the `edge` extra allows.
ONNX_OPSET = 17

Calibration = Callable[[], list[np.ndarray]]
_LOGGED_LINES = 40


class EdgeExportError(RuntimeError):
    """An edge format that did not convert, in one line; the other files are written."""


@dataclasses.dataclass(frozen=True)
class _EdgeFunctions:
    module: tf.Module  # holds the weights: saving it saves them
    from_uint8: tf.types.experimental.GenericFunction  # the contract's signature
    from_float: tf.types.experimental.GenericFunction  # pixels 0..255 as float32, for int8


def export_edge_models(model: keras.Model, export_dir: str, formats: Sequence[str], *,
                       image_size: int, info: records.DatasetInfo,
                       calibration: Calibration) -> None:
    """Converts `model` to each of `formats` and writes them to `export_dir`, each whole.

    Args:
      model: float32, with the weights to export.
      formats: edge formats (`edge_runtime.EDGE_FORMATS`).
      info: class names, and the mean and std the model was trained with.
      calibration: uint8 [1, S, S, 3] images for int8, called only for it.

    Raises:
      EdgeExportError: some format did not convert or did not run; the
        others are written, and so is the contract if any one was.
    """
    functions = _edge_functions(model, info, image_size)
    written, failures = [], []
    for fmt in formats:
        path = posixpath.join(export_dir, edge_runtime.MODEL_FILES[fmt])
        try:
            content = _convert(fmt, functions, calibration)
            _check(fmt, content, image_size, info.num_classes)
            storage.write_atomically(path, content)
        except Exception as e:
            # Converters raise anything (ConverterError, ValueError, KeyError,
            # ...); one format's failure must not cost the others. MLIR's
            # messages go on to print the whole graph: the head says why.
            logging.warning("%s did not convert: %s", fmt,
                            "\n".join(str(e).splitlines()[:_LOGGED_LINES]))
            failures.append(f"{fmt} ({_reason(e)})")
            continue
        written.append(fmt)
        logging.info("exported %s to %s (%.1f MB)", fmt, path, len(content) / 1e6)
    try:
        if written:
            edge_runtime.write_contract(export_dir, image_size=image_size,
                                        class_names=info.class_names, mean=info.mean,
                                        std=info.std, formats=written)
    except tf.errors.OpError as e:
        failures.append(f"{edge_runtime.CONTRACT_FILE} ({storage.first_line(e)})")
    if failures:
        raise EdgeExportError(
            f"the SavedModel is in {export_dir}"
            f"{', with ' + ', '.join(written) if written else ''}, but {'; '.join(failures)} "
            "did not convert: the log above has the converter's message")


def _reason(error: Exception) -> str:
    """A converter's error in one line.

    A tf.function's trace error starts with "in user code:" and ends with
    the error itself; TFLite's converter names the op that failed after a
    `loc(...)` chain on its first `error:` line; others say it first.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0] == "in user code:":
        return lines[-1]
    line = next((line for line in lines if "error:" in line), lines[0])
    return line.rsplit(")): ", 1)[-1] if "loc(" in line else line


def calibration_images(data_dir: str, info: records.DatasetInfo, image_size: int,
                       count: int = CALIBRATION_IMAGES) -> Calibration:
    """Up to `count` training images through the contract's preprocessing, read when called.

    Read lazily, and only once: a run that exports no int8 model reads none.

    Raises (when called):
      ValueError: the training split has no images.
    """
    cached: list[np.ndarray] = []

    def images() -> list[np.ndarray]:
        if not cached:
            shards = records.list_shards(data_dir, records.TRAIN, info)
            # One record from each shard in turn: the first `count` mix the
            # shards rather than exhausting the first one.
            dataset = tf.data.Dataset.from_tensor_slices(shards).interleave(
                tf.data.TFRecordDataset, cycle_length=len(shards), block_length=1)
            spec = {"image/encoded": records.FEATURE_SPEC["image/encoded"]}
            for serialized in dataset.take(count):
                encoded = tf.io.parse_single_example(serialized, spec)["image/encoded"]
                cached.append(edge_runtime.contract_image(encoded, image_size).numpy()[None])
            if not cached:
                raise ValueError(f"no training images in {data_dir} to calibrate int8 on")
        return cached

    return images


def _edge_functions(model: keras.Model, info: records.DatasetInfo,
                    image_size: int) -> _EdgeFunctions:
    """The model with normalisation and softmax, on its weights in plain tf.Variables.

    Copies: the Keras variables themselves are what the converter does not
    freeze (see above). Not trainable, so nothing counts them as such.
    """
    weights = tf.Module()
    weights.trainable = [tf.Variable(v.numpy(), trainable=False) for v in model.trainable_variables]
    weights.non_trainable = [tf.Variable(v.numpy(), trainable=False)
                             for v in model.non_trainable_variables]

    def probabilities(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        logits, _ = model.stateless_call(
            [v.read_value() for v in weights.trainable],
            [v.read_value() for v in weights.non_trainable],
            preprocessing.normalize(pixels, info.mean, info.std), training=False)
        return {edge_runtime.OUTPUT_NAME: tf.nn.softmax(tf.cast(logits, tf.float32))}

    def signature(dtype: tf.DType) -> list[tf.TensorSpec]:
        return [tf.TensorSpec([1, image_size, image_size, 3], dtype, name=edge_runtime.INPUT_NAME)]

    # No Python control flow to convert: AutoGraph would only trip on the closure.
    @tf.function(input_signature=signature(tf.uint8), autograph=False)
    def from_uint8(image):
        return probabilities(tf.cast(image, tf.float32))

    @tf.function(input_signature=signature(tf.float32), autograph=False)
    def from_float(image):
        return probabilities(image)

    weights.from_uint8, weights.from_float = from_uint8, from_float
    return _EdgeFunctions(weights, from_uint8, from_float)


def _convert(fmt: str, functions: _EdgeFunctions, calibration: Calibration) -> bytes:
    if fmt == "onnx":
        import tf2onnx

        proto, _ = tf2onnx.convert.from_function(
            functions.from_uint8, input_signature=functions.from_uint8.input_signature,
            opset=ONNX_OPSET)
        return proto.SerializeToString()
    int8 = fmt == "tflite_int8"
    with tempfile.TemporaryDirectory() as saved_model:
        tf.saved_model.save(functions.module, saved_model, signatures={
            "serving_default": functions.from_float if int8 else functions.from_uint8})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if int8:
            converter.representative_dataset = lambda: (
                {edge_runtime.INPUT_NAME: image.astype(np.float32)}
                for image in _with_anchor(calibration()))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.float32
        else:
            converter.target_spec.supported_types = [tf.float16]
        with warnings.catch_warnings():
            # int8's calibrator runs the deprecated tf.lite.Interpreter itself.
            warnings.filterwarnings("ignore", ".*tf.lite.Interpreter is deprecated")
            # convert() leaks memory on every call in TF 2.20 and 2.21
            # (tensorflow#122598): an export converts each format once.
            return converter.convert()


def _with_anchor(images: list[np.ndarray]) -> list[np.ndarray]:
    """`images` after one of their mean colour with a black and a white pixel.

    The input's calibrated range is then exactly 0..255, so its uint8 scale
    is 1 and its zero point 0. Real photographs have such pixels, so the
    activations of this nearly flat image stay within the range real images
    give them: the other tensors' ranges hardly move.
    """
    anchor = np.empty_like(images[0])
    anchor[...] = np.concatenate(images).mean(axis=(0, 1, 2)).round()  # per channel
    anchor[0, 0, 0], anchor[0, 0, 1] = 0, 255
    return [anchor, *images]


def _check(fmt: str, content: bytes, image_size: int, num_classes: int) -> None:
    """Runs the converted model once on a grey image: the contract, and finite probabilities.

    Raises:
      ValueError: what breaks the contract.
    """
    model = edge_runtime.load_model(fmt, content)
    shape = (1, image_size, image_size, 3)
    if model.input_shape != shape or model.input_dtype != np.uint8:
        raise ValueError(f"takes {model.input_dtype} {model.input_shape}, not uint8 {shape}")
    if fmt == "tflite_int8" and model.input_quantization != edge_runtime.INT8_INPUT_QUANTIZATION:
        raise ValueError(f"its uint8 input has (scale, zero point) {model.input_quantization}, "
                         f"not {edge_runtime.INT8_INPUT_QUANTIZATION}")
    output = model(np.full(shape, 128, np.uint8))
    # int8 probabilities come in steps of 1/256: their sum may miss 1 by C/512.
    if (output.shape != (1, num_classes) or output.dtype != np.float32
            or not np.isfinite(output).all() or abs(float(output.sum()) - 1) > 0.05):
        raise ValueError(f"gives {output.dtype} {output.shape} summing to {output.sum()}, not "
                         f"float32 probabilities (1, {num_classes})")
