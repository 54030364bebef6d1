"""The edge models' contract, and running them as a device does (LiteRT, onnxruntime).

`model_fp16.tflite`, `model_int8.tflite` and `model.onnx` share one contract,
written beside them to `preprocessing.json` by `write_contract` and read back
by `read_contract`, so the trainer that writes it and the tools that read it
(`trainer.predict --format`, scripts/benchmark_export.py) cannot drift apart:

  in:  `image`, uint8 RGB [1, image_size, image_size, 3], NHWC: the central
       square of `preprocessing.EVAL_CROP_FRACTION` of the shorter side,
       resized bilinearly with antialiasing (what PIL's `Image.resize(...,
       Image.BILINEAR)` does, to within one level), rounded to uint8. The
       evaluation preprocessing of `preprocessing.preprocess_for_eval`, up to
       that rounding.
  out: `probabilities`, float32 [1, num_classes], in the order of labels.txt.

Normalisation is inside the models: a device sends the pixels as they are.

The converters (`trainer/edge_export.py`) and these runtimes come from the
`edge` extra; `check_packages` names what is missing before any work starts.
"""

from __future__ import annotations

import importlib
import json
import posixpath
from typing import Any, Callable, Protocol, Sequence

import numpy as np

# TensorFlow is imported where it is used: `trainer.predict` answers --help
# and flag mistakes without it.

SAVED_MODEL = "saved_model"
# The file that holds each format, in the export folder.
MODEL_FILES = {
    SAVED_MODEL: "saved_model.pb",
    "tflite_fp16": "model_fp16.tflite",
    "tflite_int8": "model_int8.tflite",
    "onnx": "model.onnx",
}
EDGE_FORMATS = tuple(f for f in MODEL_FILES if f != SAVED_MODEL)
CONTRACT_FILE = "preprocessing.json"
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
INSTALL_HINT = 'pip install -e ".[edge]"'
# The int8 model's uint8 input is the pixels themselves: scale 1, zero point 0.
INT8_INPUT_QUANTIZATION = (1.0, 0)

# Module -> PyPI package, for each edge format: to run it, and to convert to
# it. The trainer runs each converted model once before writing it, so
# converting needs the runtime too. TFLite's converter is TensorFlow's own.
_RUNTIMES = {"tflite_fp16": {"ai_edge_litert": "ai-edge-litert"},
             "tflite_int8": {"ai_edge_litert": "ai-edge-litert"},
             "onnx": {"onnxruntime": "onnxruntime"}}
_CONVERTERS = {"onnx": {"tf2onnx": "tf2onnx", "onnx": "onnx"}}


def check_packages(formats: Sequence[str], flag: str, *, converting: bool) -> None:
    """Raises ValueError naming the packages `formats` need that do not import.

    An import, not a lookup: a package that is installed but broken (a
    missing dependency, a wheel for another Python) fails here too.
    """
    needed: dict[str, str] = {}
    for fmt in formats:
        needed.update(_RUNTIMES.get(fmt, {}))
        if converting:
            needed.update(_CONVERTERS.get(fmt, {}))
    missing = []
    for module, package in needed.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ValueError(f"{flag} needs {', '.join(missing)}, which "
                         f"{'does' if len(missing) == 1 else 'do'} not import: {INSTALL_HINT}")


def contract_image(image_bytes: Any, image_size: int) -> Any:
    """One encoded image -> uint8 [image_size, image_size, 3], as the edge models take it.

    Raises:
      tf.errors.InvalidArgumentError: not an image TensorFlow decodes.
    """
    import tensorflow as tf
    from input_pipeline import preprocessing

    image = preprocessing.center_crop(preprocessing.decode_image(image_bytes))
    image = preprocessing.resize(image, image_size, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def write_contract(export_dir: str, *, image_size: int, class_names: Sequence[str],
                   mean: Sequence[float], std: Sequence[float], formats: Sequence[str]) -> None:
    """Writes labels.txt and preprocessing.json beside the edge models."""
    from input_pipeline import preprocessing, records

    records.write_labels(export_dir, class_names)
    contract = {
        "models": {fmt: MODEL_FILES[fmt] for fmt in formats},
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [1, image_size, image_size, 3],
                  "layout": "NHWC", "channels": "RGB"},
        "crop": {"kind": "central square", "fraction": preprocessing.EVAL_CROP_FRACTION,
                 "side": "floor(fraction * min(height, width)), at least 1",
                 "top": "(height - side) // 2", "left": "(width - side) // 2"},
        # What `preprocessing.resize(..., antialias=True)` does, for a device
        # to reproduce; tests/test_edge_export.py checks PIL's equivalent.
        "resize": {"size": [image_size, image_size], "method": "bilinear", "antialias": True,
                   "half_pixel_centers": True,
                   "pil": f"Image.resize(({image_size}, {image_size}), Image.BILINEAR)"},
        "rounding": "to the nearest integer, clipped to 0..255",
        "normalization": {"inside_model": True, "formula": "(pixel / 255 - mean) / std",
                          "mean": list(mean), "std": list(std)},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [1, len(class_names)],
                   "meaning": "probabilities, in the order of labels.txt"},
        "int8_input_quantization": dict(zip(("scale", "zero_point"), INT8_INPUT_QUANTIZATION)),
    }
    records.write_json(posixpath.join(export_dir, CONTRACT_FILE), contract)


def read_contract(export_dir: str) -> tuple[int, list[str]]:
    """(image_size, class names) of the edge models in `export_dir`.

    Raises:
      ValueError: preprocessing.json or labels.txt missing or damaged.
    """
    import tensorflow as tf
    from input_pipeline import records, storage

    path = posixpath.join(export_dir, CONTRACT_FILE)
    try:
        with tf.io.gfile.GFile(path) as f:
            image_size = int(json.load(f)["input"]["shape"][1])
        class_names = records.read_labels(export_dir)
    except (tf.errors.OpError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"{path} or labels.txt beside it is missing or damaged "
                         f"({storage.first_line(e)}): export "
                         "again with `python -m trainer.main --mode=export --export_formats=...`"
                         ) from e
    return image_size, class_names


class EdgeModel(Protocol):
    """An edge model loaded in its runtime: uint8 [1, S, S, 3] in, float32 [1, C] out."""

    input_shape: tuple[int, ...]
    input_dtype: type
    input_quantization: tuple[float, int]  # (0.0, 0): not quantised

    def __call__(self, image: np.ndarray) -> np.ndarray: ...


class _LiteRT:
    """A .tflite model in the LiteRT interpreter (tf.lite.Interpreter is deprecated)."""

    def __init__(self, content: bytes, num_threads: int):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=content, num_threads=num_threads)
        (signature,) = interpreter.get_signature_list()
        self._run = interpreter.get_signature_runner(signature)
        details = self._run.get_input_details()[INPUT_NAME]
        self.input_shape = tuple(int(d) for d in details["shape"])
        self.input_dtype = details["dtype"]
        self.input_quantization = tuple(details["quantization"])

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self._run(**{INPUT_NAME: image})[OUTPUT_NAME]


class _OnnxRuntime:
    """A .onnx model in onnxruntime, on the CPU."""

    def __init__(self, content: bytes, num_threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = num_threads, 1
        self._session = onnxruntime.InferenceSession(content, options,
                                                     providers=["CPUExecutionProvider"])
        (inputs,) = self._session.get_inputs()
        self.input_shape = tuple(inputs.shape)
        self.input_dtype = {"tensor(uint8)": np.uint8}.get(inputs.type, inputs.type)
        self.input_quantization = (0.0, 0)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: image})[0]


def load_model(fmt: str, content: bytes, num_threads: int = 1) -> EdgeModel:
    """An edge model of format `fmt` from its file's bytes, in its runtime.

    One thread by default: what a phone or a robot's spare core gives, and
    what makes latencies comparable.
    """
    return (_OnnxRuntime if fmt == "onnx" else _LiteRT)(content, num_threads)


def open_model(fmt: str, export_dir: str, num_threads: int = 1) -> EdgeModel:
    """The edge model of format `fmt` in `export_dir` (local or gs://).

    Raises:
      ValueError: its file does not load in the runtime.
    """
    import tensorflow as tf

    path = posixpath.join(export_dir, MODEL_FILES[fmt])
    with tf.io.gfile.GFile(path, "rb") as f:
        content = f.read()
    try:
        return load_model(fmt, content, num_threads)
    except Exception as e:
        # Each runtime has its own errors: LiteRT's are ValueErrors,
        # onnxruntime's (InvalidProtobuf, Fail, ...) plain Exceptions.
        raise ValueError(f"{path} does not load ({str(e).strip().splitlines()[0]}): export it "
                         f"again with `python -m trainer.main --mode=export "
                         f"--export_formats={fmt}`") from e


def load_serving(fmt: str, export_dir: str) -> Callable[..., dict[str, Any]]:
    """The edge model as `trainer.predict` calls a SavedModel: image_bytes=[n] -> dict.

    Each image goes through `contract_image`, as on a device, then through
    the model on its own (the models take one image). A file that does not
    decode raises as the SavedModel's signature does.
    """
    import tensorflow as tf

    image_size, class_names = read_contract(export_dir)
    model = open_model(fmt, export_dir)
    # Traced once: faster than eager ops per image, and a bad image fails
    # with the same words as in the SavedModel's signature.
    preprocess = tf.function(lambda data: contract_image(data, image_size)[None],
                             input_signature=[tf.TensorSpec([], tf.string)])

    def serve(image_bytes: tf.Tensor) -> dict[str, Any]:
        probabilities = np.concatenate(
            [model(preprocess(data).numpy()) for data in image_bytes])
        predicted = [class_names[i] for i in probabilities.argmax(axis=-1)]
        return {OUTPUT_NAME: tf.constant(probabilities), "predicted_class": tf.constant(predicted)}

    return serve
