"""The trainer's options: each defined once, with its default, help and bounds.

`TrainConfig` is the one object `main` builds from the flags and hands down;
`define_flags` turns its fields (and the few flags that only `main` reads)
into absl flags. The flag set imports no TensorFlow, so `--help`, a bad flag
and the launchers' check of trainer flags answer at once.
"""

from __future__ import annotations

import dataclasses
import math
import os
import posixpath
from typing import Any, Callable, Mapping, Sequence

from absl import flags

from input_pipeline.conversion.options import MAX_SEED

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
OPTIMIZERS = ("sgd", "adamw")
MODES = ("train", "train_and_eval", "eval", "export")
JIT_COMPILE = ("auto", "true", "false")
INIT_MODULES = ("all", "backbone")
# What --export_formats may list; trainer/edge_runtime.py names each one's file.
EXPORT_FORMATS = ("saved_model", "tflite_fp16", "tflite_int8", "onnx")

# The CPU demo's flags, applied when --data_dir is not given.
DEMO_FLAGFILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "configs", "cpu_demo.cfg")

# Upper bounds that no sensible run reaches, so that a slip of the keyboard
# is refused with its range instead of allocating terabytes or overflowing.
MAX_IMAGE_SIZE = 2048
MAX_STEPS = 10**9


@dataclasses.dataclass(frozen=True)
class Paths:
    """Where each kind of output goes.

    With --model_dir everything lives under it. On Vertex AI without
    --model_dir, the service's AIP_* locations are used instead so its console
    finds checkpoints, TensorBoard logs and the model where it expects them.
    """

    checkpoints: str
    summaries: str
    export: str
    # What named each of the three folders, for error messages.
    origins: tuple[str, str, str] = ("--model_dir", "--model_dir", "--model_dir")

    @property
    def metrics_file(self) -> str:
        return posixpath.join(self.checkpoints, "metrics.json")

    @classmethod
    def resolve(cls, model_dir: str | None, environ: Mapping[str, str] = os.environ) -> "Paths":
        if model_dir:
            return cls(model_dir, model_dir, posixpath.join(model_dir, "export"))
        checkpoints = environ.get("AIP_CHECKPOINT_DIR")
        if not checkpoints:
            raise ValueError(
                "--model_dir is required (or run on Vertex AI, which sets AIP_CHECKPOINT_DIR)"
            )
        named = lambda variable: variable if environ.get(variable) else "AIP_CHECKPOINT_DIR"
        return cls(
            checkpoints=checkpoints,
            summaries=environ.get("AIP_TENSORBOARD_LOG_DIR", checkpoints),
            export=environ.get("AIP_MODEL_DIR", posixpath.join(checkpoints, "export")),
            origins=("AIP_CHECKPOINT_DIR", named("AIP_TENSORBOARD_LOG_DIR"),
                     named("AIP_MODEL_DIR")),
        )

    def folders(self) -> dict[str, str]:
        """Each distinct output folder, and what named it."""
        named: dict[str, str] = {}
        for folder, origin in zip((self.checkpoints, self.summaries, self.export), self.origins):
            named.setdefault(folder, origin)
        return named


def _option(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
            lower: float | None = None, upper: float | None = None) -> Any:
    """A TrainConfig field that is also a flag of the same name."""
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": choices, "lower": lower, "upper": upper})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything the trainer needs. The help texts are the flags' `--help`."""

    data_dir: str
    paths: Paths
    profile_steps: tuple[int, int] | None = None
    # Where and on what.
    strategy: str = _option(
        "auto", "Distribution strategy. auto: TPU if one is attached, else mirrored over all "
        "GPUs if more than one, else default.", choices=STRATEGIES)
    tpu: str | None = _option(
        None, "TPU name, or 'local' on a TPU VM (implies a TPU for auto).")
    # What.
    model: str = _option("resnet50", "ResNet v1.5 depth.", choices=MODELS)
    width: int = _option(
        64, "Filters of the first stage (64 is the standard ResNet).", lower=1, upper=512)
    image_size: int = _option(
        224, "Training and evaluation image side in pixels.", lower=32, upper=MAX_IMAGE_SIZE)
    batch_size: int = _option(
        256, "Global batch size, split evenly across replicas.", lower=1, upper=65536)
    train_steps: int = _option(0, "Steps to train for; 0: use --epochs.", lower=0, upper=MAX_STEPS)
    epochs: float = _option(
        90.0, "Epochs to train for when --train_steps is 0.", lower=0, upper=100_000)
    steps_per_loop: int = _option(
        100, "Steps per call of the compiled training loop (and per log line).",
        lower=1, upper=100_000)
    eval_every: int = _option(
        0, "Evaluate every N steps (0: only at the end).", lower=0, upper=MAX_STEPS)
    checkpoint_every: int = _option(
        1000, "Save a checkpoint every N steps (and at the end).", lower=1, upper=MAX_STEPS)
    keep_checkpoints: int = _option(3, "Checkpoints to keep.", lower=1, upper=1000)
    # Where the weights start.
    init_checkpoint: str | None = _option(
        None, "Warm-start a new run from a checkpoint of this trainer: a prefix "
        "(DIR/ckpt-N) or a model_dir, whose newest checkpoint is used; local or gs://. Step, "
        "optimizer slots and schedule start fresh, and the inputs are normalised as that run "
        "normalised them. A rerun resumes from its own --model_dir instead.")
    init_checkpoint_modules: str | None = _option(
        None, "What --init_checkpoint loads: all, or backbone (everything but the "
        "classification head). Default: all when the class counts match, else backbone.",
        choices=INIT_MODULES)
    pretrained: str | None = _option(
        None, "Start from ImageNet weights in the torchvision/timm layout, a .safetensors file "
        "(local or gs://): torchvision's resnet18-152 converted with safetensors, or timm's "
        "resnet50.tv_in1k / tv2_in1k / a1_in1k model.safetensors from the Hugging Face hub. "
        "Loads the backbone (--width=64); the head starts fresh; inputs are normalised with "
        "ImageNet's statistics. See the README's 'Fine-tune from ImageNet weights'.")
    backbone_lr_multiplier: float = _option(
        1.0, "Learning rate of everything but the head, as a multiple of --learning_rate "
        "(fine-tuning recipes use 0.1 or lower).", lower=0, upper=10)
    freeze_backbone_epochs: float = _option(
        0.0, "First train only the head for this many epochs, the backbone frozen with its "
        "batch norm in inference mode, then everything.", lower=0, upper=100_000)
    # How.
    optimizer: str = _option("sgd", "sgd (momentum 0.9) or adamw.", choices=OPTIMIZERS)
    learning_rate: float = _option(
        0.1, "Peak learning rate per 256 images, scaled linearly with the global batch.",
        lower=0, upper=100)
    warmup_epochs: float = _option(
        5.0, "Linear warm-up epochs before cosine decay (at most half the run).",
        lower=0, upper=100_000)
    weight_decay: float = _option(
        1e-3, "Decoupled weight decay of conv/dense kernels, never BN or biases: each step "
        "scales kernels by 1 - lr * decay (1e-3 with SGD momentum 0.9 ~ classic L2 of 1e-4; "
        "AdamW usually wants ~0.05).", lower=0, upper=1)
    label_smoothing: float = _option(
        0.1, "Label smoothing of the training loss.", lower=0, upper=0.99)
    cache_decoded: bool = _option(
        False, "Decode each training image once and keep it in memory (2 x 3 x "
        "(2 x image_size)^2 bytes per image: 130 MB for the CPU demo), augmenting whole "
        "batches from there, with a fraction of the input CPU per image. For data sets that "
        "fit in memory.")
    # Regularisation.
    randaugment: tuple[int, float] | None = None  # --randaugment, parsed
    mixup: float = _option(
        0.0, "mixup: blend pairs of training images and their labels with a weight drawn from "
        "Beta(ALPHA, ALPHA); 0: off (0.2 to 0.4 is usual).", lower=0, upper=10)
    cutmix: float = _option(
        0.0, "CutMix: paste a box of one training image into another, labels weighted by "
        "area, the area drawn from Beta(ALPHA, ALPHA); 0: off (1.0 is usual). With --mixup "
        "too, each mixed batch uses one of the two, at even odds.", lower=0, upper=10)
    mix_prob: float = _option(
        1.0, "Fraction of training batches that --mixup / --cutmix mix.", lower=0, upper=1)
    ema_decay: float = _option(
        0.0, "Keep an exponential moving average of the weights and batch-norm statistics "
        "with this decay per step (e.g. 0.9998), warmed up as min(D, (1 + step) / (10 + "
        "step)); evaluated beside the raw weights (eval/ema/*) and exported. 0: off.",
        lower=0, upper=0.999999)
    zero_init_residual: bool = _option(
        True, "Start each residual block's last BN gamma at zero (helps large batches).")
    mixed_precision: str = _option(
        "auto", "auto: bf16 on TPU, fp16 with dynamic loss scaling on GPU, float32 on CPU.",
        choices=PRECISIONS)
    jit_compile: str = _option(
        "auto", "XLA-compile the train step. auto: on for GPU/TPU, off on CPU.",
        choices=JIT_COMPILE)
    seed: int = _option(0, "Seed for weights and data order.", lower=0, upper=MAX_SEED)
    mode: str = _option(
        "train_and_eval", "train (then export), train_and_eval (eval every --eval_every and at "
        "the end, then export), eval or export (the latest checkpoint).", choices=MODES)
    export_formats: tuple[str, ...] = _option(
        ("saved_model",), "Comma-separated models to export at the end of training and in "
        "--mode=export. saved_model (always written): encoded image bytes in. tflite_fp16, "
        "tflite_int8 (full-integer, calibrated on training images) and onnx: for devices, "
        "written beside it as model_fp16.tflite, model_int8.tflite and model.onnx with "
        "labels.txt and preprocessing.json; they take uint8 RGB [1, image_size, image_size, 3], "
        "centre-cropped and resized as preprocessing.json says, and return float32 "
        "probabilities. They need `pip install -e \".[edge]\"`, checked at start-up.",
        choices=EXPORT_FORMATS)

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        """The fields that are flags of the same name."""
        return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _define(field: dataclasses.Field, flag_values: flags.FlagValues) -> None:
    meta, name, default = field.metadata, field.name, field.default
    kwargs = {"flag_values": flag_values}
    if isinstance(default, tuple):
        # A comma-separated list, each item one of the choices.
        flags.DEFINE_list(name, list(default), meta["help"], **kwargs)
        flags.register_validator(
            name, _parses(lambda values: parse_choices(values, meta["choices"])), **kwargs)
    elif meta["choices"]:
        flags.DEFINE_enum(name, default, meta["choices"], meta["help"], **kwargs)
    elif isinstance(default, bool):
        flags.DEFINE_bool(name, default, meta["help"], **kwargs)
    elif isinstance(default, int):
        flags.DEFINE_integer(name, default, meta["help"], lower_bound=meta["lower"],
                             upper_bound=meta["upper"], **kwargs)
    elif isinstance(default, float):
        flags.DEFINE_float(name, default, meta["help"], lower_bound=meta["lower"],
                           upper_bound=meta["upper"], **kwargs)
        # absl's bounds let NaN through: every comparison with it is false.
        flags.register_validator(name, math.isfinite, message="must be a finite number in "
                                 f"[{meta['lower']}, {meta['upper']}]", **kwargs)
    else:
        flags.DEFINE_string(name, default, meta["help"], **kwargs)


def parse_profile_steps(value: str | None) -> tuple[int, int] | None:
    """'FIRST,LAST' -> (FIRST, LAST); None or '' -> None."""
    if not value:
        return None
    try:
        first, last = (int(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"--profile_steps={value!r} must be 'FIRST,LAST', e.g. '10,15'") from None
    if not 0 < first <= last <= MAX_STEPS:
        raise ValueError(f"--profile_steps={value!r} needs 0 < FIRST <= LAST <= {MAX_STEPS}")
    return first, last


def parse_choices(values: Sequence[str], choices: Sequence[str]) -> tuple[str, ...]:
    """A list flag's values, each one of `choices`, in the order given without repeats.

    The message names no flag: absl's validation error starts with the flag and its value.
    """
    unknown = [value for value in values if value not in choices]
    if unknown or not values:
        raise ValueError(f"{'unknown ' + ', '.join(map(repr, unknown)) if unknown else 'empty'}"
                         f"; choose from {','.join(choices)}")
    return tuple(dict.fromkeys(values))


RANDAUGMENT_MAX_OPS = 10
RANDAUGMENT_MAX_MAGNITUDE = 10.0


def parse_randaugment(value: str | None) -> tuple[int, float] | None:
    """'N,M' -> (N, M); None or '' -> None (off)."""
    if not value:
        return None
    try:
        num_ops, magnitude = value.split(",")
        parsed = int(num_ops), float(magnitude)
    except ValueError:
        raise ValueError(f"--randaugment={value!r} must be 'N,M', e.g. '2,9'") from None
    if not (1 <= parsed[0] <= RANDAUGMENT_MAX_OPS
            and 0 <= parsed[1] <= RANDAUGMENT_MAX_MAGNITUDE):  # False for NaN too
        raise ValueError(f"--randaugment={value!r} needs 1 <= N <= {RANDAUGMENT_MAX_OPS} "
                         f"operations and a magnitude 0 <= M <= {RANDAUGMENT_MAX_MAGNITUDE:g}")
    return parsed


def _parses(parse: Callable[[str | None], Any]) -> Callable[[str | None], bool]:
    """An absl validator that accepts what `parse` does and refuses with its message."""
    def valid(value: str | None) -> bool:
        try:
            parse(value)
        except ValueError as e:
            raise flags.ValidationError(str(e)) from None
        return True
    return valid


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines every trainer flag in `flag_values` (the launchers check with a copy)."""
    kwargs = {"flag_values": flag_values}
    flags.DEFINE_integer(
        "cpu_devices", 0, "Split the host CPU into N logical devices, to develop and test "
        "mirrored training without GPUs (0 or 1: no split).", lower_bound=0, upper_bound=64,
        **kwargs)
    flags.DEFINE_string(
        "data_dir", None, "Records written by input_pipeline.make_tfrecords (local or gs://). "
        "Unset: built-in synthetic seedlings and the CPU demo configuration.", **kwargs)
    flags.DEFINE_string(
        "model_dir", None, "Checkpoints, summaries, metrics.json and export/ (local or gs://). "
        "Unset: Vertex AI's AIP_* folders if set, else output/cpu_demo for the demo.", **kwargs)
    flags.DEFINE_string(
        "cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "seedlings"),
        "Where the built-in synthetic data set is generated once and kept.", **kwargs)
    flags.DEFINE_string(
        "profile_steps", None,
        "'FIRST,LAST': record a TensorBoard profiler trace of those training steps.", **kwargs)
    flags.register_validator("profile_steps", _parses(parse_profile_steps), **kwargs)
    flags.DEFINE_string(
        "randaugment", None, "'N,M': RandAugment on training images, N operations per image "
        f"(1 to {RANDAUGMENT_MAX_OPS}) at magnitude M (0 to {RANDAUGMENT_MAX_MAGNITUDE:g}), "
        "from an operation set for plants photographed from above (see "
        "input_pipeline/randaugment.py); e.g. '2,9'. Unset: off.", **kwargs)
    flags.register_validator("randaugment", _parses(parse_randaugment), **kwargs)
    for field in TrainConfig.options():
        _define(field, flag_values)


def from_flags(flag_values: flags.FlagValues, *, data_dir: str, paths: Paths) -> TrainConfig:
    """Reads the parsed flags once; nothing below `main` sees them."""
    if flag_values.train_steps == 0 and flag_values.epochs == 0:
        raise ValueError("set --train_steps or --epochs to more than 0")
    if flag_values.init_checkpoint and flag_values.pretrained:
        raise ValueError("pass --init_checkpoint or --pretrained, not both")
    if flag_values.init_checkpoint_modules and not flag_values.init_checkpoint:
        raise ValueError("--init_checkpoint_modules needs --init_checkpoint")
    if flag_values.mix_prob != 1.0 and not (flag_values.mixup or flag_values.cutmix):
        raise ValueError("--mix_prob needs --mixup or --cutmix")
    return TrainConfig(
        data_dir=data_dir, paths=paths,
        profile_steps=parse_profile_steps(flag_values.profile_steps),
        randaugment=parse_randaugment(flag_values.randaugment),
        **{f.name: _value(f, flag_values) for f in TrainConfig.options()},
    )


def _value(field: dataclasses.Field, flag_values: flags.FlagValues) -> Any:
    value = flag_values[field.name].value
    if isinstance(field.default, tuple):  # a list flag
        return parse_choices(value, field.metadata["choices"])
    return value
