"""ImageNet weights of torchvision / timm ResNets, read from `.safetensors`, into our ResNets.

`trainer.models` builds torchvision's ResNet v1.5 layer for layer (same
parameter counts, stride on the 3x3, symmetric padding, BN epsilon 1e-5), so
a torchvision state dict maps one tensor to one variable; only the layouts
differ (NCHW kernels (out, in, kh, kw) against Keras' (kh, kw, in, out)).

Where the files come from:
  * timm on the Hugging Face hub, already as `model.safetensors` in
    torchvision's key layout: `timm/resnet50.tv_in1k` (torchvision's
    IMAGENET1K_V1 weights, 76.1% top-1) and `timm/resnet50.tv2_in1k`
    (IMAGENET1K_V2, 80.9%), both BSD-3-Clause like torchvision; and
    `timm/resnet50.a1_in1k` (80.4% at 224 px, "ResNet strikes back"),
    Apache-2.0. E.g.
    https://huggingface.co/timm/resnet50.a1_in1k/resolve/main/model.safetensors
    (about 102 MB).
  * torchvision's own `.pth` files (`resnet18`, `34`, `50`, `101`, `152`, e.g.
    https://download.pytorch.org/models/resnet50-0676ba61.pth), BSD-3-Clause,
    turned into `.safetensors` once, wherever torch is installed, with

      python -c "import torch, safetensors.torch as s; s.save_file({k: v.contiguous() for k, v in torch.load('resnet50-0676ba61.pth', map_location='cpu').items()}, 'resnet50.safetensors')"

    (`save_file` wants contiguous tensors, hence the dict comprehension).

All of these expect RGB in [0, 1] normalised with `IMAGENET_MEAN` and
`IMAGENET_STD`. Reading needs only `safetensors`' numpy API, not torch, and
goes through `tf.io.gfile`, so `gs://` paths work as local ones do.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import keras
import numpy as np
import safetensors
import safetensors.numpy
import tensorflow as tf

from input_pipeline import storage

# What the published weights were trained on: RGB in [0, 1], then (x - mean) / std.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Keras variable name -> (torchvision parameter name, axes that take the torch
# array to the Keras layout). Conv kernels go (out, in, kh, kw) -> (kh, kw, in,
# out); the Dense kernel is fc.weight (out, in) transposed.
_CONV_AXES = (2, 3, 1, 0)
_PARAMETERS: dict[type, dict[str, tuple[str, tuple[int, ...]]]] = {
    keras.layers.Conv2D: {"kernel": ("weight", _CONV_AXES)},
    keras.layers.BatchNormalization: {
        "gamma": ("weight", (0,)),
        "beta": ("bias", (0,)),
        "moving_mean": ("running_mean", (0,)),
        "moving_variance": ("running_var", (0,)),
    },
    keras.layers.Dense: {"kernel": ("weight", (1, 0)), "bias": ("bias", (0,))},
}
_HEAD = "fc"
_BLOCK_LAYER = re.compile(r"stage(\d+)_block(\d+)_(\d|proj)_(conv|bn)")
_TORCH_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.")
# torchvision's depths, to name what a file holds: (blocks per stage, bottleneck).
_TORCHVISION_DEPTHS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}


class LoadedWeights(NamedTuple):
    """What `load_torchvision_weights` did, for the training log."""

    tensors: int  # tensors copied into model variables
    head_loaded: bool  # False: fc.* skipped, the head keeps its fresh initialisation


class _Target(NamedTuple):
    variable: keras.Variable
    axes: tuple[int, ...]  # np.transpose(torch_array, axes) has the variable's layout
    torch_shape: tuple[int, ...]


def torchvision_module(layer_name: str) -> str | None:
    """The torchvision module path of a `trainer.models` layer, e.g. `layer2.0.downsample.0`.

    None for layers without parameters (padding, pooling, ReLU, add).
    """
    fixed = {"stem_conv": "conv1", "stem_bn": "bn1", "logits": _HEAD}
    if layer_name in fixed:
        return fixed[layer_name]
    match = _BLOCK_LAYER.fullmatch(layer_name)
    if not match:
        return None
    stage, block, position, kind = match.groups()
    prefix = f"layer{stage}.{int(block) - 1}"
    if position == "proj":
        # torchvision's shortcut is Sequential(conv, bn): indices 0 and 1.
        return f"{prefix}.downsample.{0 if kind == 'conv' else 1}"
    return f"{prefix}.{kind}{position}"


def _torch_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    """The torch-layout shape whose transpose by `axes` is `shape`."""
    torch_shape = [0] * len(axes)
    for keras_axis, torch_axis in enumerate(axes):
        torch_shape[torch_axis] = shape[keras_axis]
    return tuple(torch_shape)


def _targets(model: keras.Model) -> dict[str, _Target]:
    """torchvision key -> where it goes in `model`, in the model's layer order."""
    targets: dict[str, _Target] = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        module = torchvision_module(layer.name)
        parameters = next((p for kind, p in _PARAMETERS.items() if isinstance(layer, kind)), None)
        for variable in layer.weights:
            if module is None or parameters is None or variable.name not in parameters:
                raise ValueError(
                    f"Model variable {variable.path} has no torchvision counterpart; "
                    "load into a model from trainer.models.create_model."
                )
            name, axes = parameters[variable.name]
            targets[f"{module}.{name}"] = _Target(
                variable, axes, _torch_shape(tuple(variable.shape), axes)
            )
    if "conv1.weight" not in targets or f"{_HEAD}.bias" not in targets:
        raise ValueError(
            f"Model {model.name!r} has no stem_conv or logits layer; "
            "load into a model from trainer.models.create_model."
        )
    return targets


def torchvision_variables(model: keras.Model) -> dict[str, keras.Variable]:
    """The torchvision state-dict key each variable of `model` takes, e.g. `bn1.running_var`.

    `model` comes from `trainer.models.create_model` (any name and width).
    """
    return {key: target.variable for key, target in _targets(model).items()}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a `.safetensors` file (a local or `gs://` path) into numpy arrays, by key.

    Raises:
      FileNotFoundError: no file at `path` (or no such bucket).
      OSError: `path` exists but cannot be read, e.g. a directory.
      ValueError: the bytes are not safetensors, or hold bfloat16.
    """
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except tf.errors.NotFoundError:
        raise FileNotFoundError(f"No weights file at {path}; check the path and bucket.") from None
    except tf.errors.OpError as e:
        raise OSError(f"Cannot read weights file {path}: {storage.first_line(e)}.") from None
    try:
        return safetensors.numpy.load(data)
    except safetensors.SafetensorError as e:
        raise ValueError(
            f"{path} is not a .safetensors file ({e}); convert a .pth with the command in "
            "trainer/pretrained.py's docstring."
        ) from None
    except KeyError as e:
        # numpy has no bfloat16, so safetensors' numpy API cannot map it.
        raise ValueError(
            f"{path} holds {e.args[0]} tensors, which numpy cannot read; save them as float32."
        ) from None


def _architecture(keys: list[str]) -> str | None:
    """Names the ResNet that has these torchvision keys (width-agnostic), e.g. 'resnet18'."""
    blocks: dict[int, int] = {}
    for key in keys:
        if match := _TORCH_BLOCK.match(key):
            stage, block = int(match[1]), int(match[2])
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    if not blocks:
        return None
    depths = tuple(blocks.get(stage, 0) for stage in range(1, max(blocks) + 1))
    bottleneck = any(".conv3." in key for key in keys)
    kind = "bottleneck" if bottleneck else "basic"
    return _TORCHVISION_DEPTHS.get((depths, bottleneck), f"ResNet with {depths} {kind} blocks")


def _check_architecture(
    state: dict[str, np.ndarray], targets: dict[str, _Target], path: str
) -> None:
    """Compares depth, block type and width before single tensors, for an actionable message."""
    held, wanted = _architecture(list(state)), _architecture(list(targets))
    if held is None:
        raise ValueError(
            f"{path} holds no torchvision ResNet tensors (e.g. {next(iter(state), 'none')!r}); "
            "expected keys like 'layer1.0.conv1.weight'."
        )
    if held != wanted:
        raise ValueError(
            f"{path} holds a {held}, but the model is a {wanted}; "
            f"create the model as a {held} or load {wanted} weights."
        )
    stem = state.get("conv1.weight")
    model_width = targets["conv1.weight"].torch_shape[0]
    if stem is not None and stem.ndim == 4 and stem.shape[0] != model_width:
        raise ValueError(
            f"{path} holds width-{stem.shape[0]} weights (conv1.weight has {stem.shape[0]} "
            f"filters), but the model's width is {model_width}; "
            f"create the model with width={stem.shape[0]}."
        )


def _first_of(keys: list[str]) -> str:
    return repr(keys[0]) + (f" (and {len(keys) - 1} more)" if len(keys) > 1 else "")


def _check_tensors(state: dict[str, np.ndarray], targets: dict[str, _Target], path: str) -> None:
    """Every target has one tensor of its shape, every tensor has a target."""
    missing = [key for key in targets if key not in state]
    if missing:
        raise ValueError(
            f"{path} has no tensor {_first_of(missing)} for the model's "
            f"{targets[missing[0]].variable.path}; the file is not a complete ResNet state dict."
        )
    unexpected = [key for key in state if key not in targets]
    if unexpected:
        raise ValueError(
            f"{path} holds tensor {_first_of(unexpected)} that no model variable takes; "
            "is it a torchvision ResNet state dict?"
        )
    for key, target in targets.items():
        array = state[key]
        if tuple(array.shape) != target.torch_shape or not np.issubdtype(array.dtype, np.floating):
            raise ValueError(
                f"{path}: tensor {key!r} is {array.dtype} {tuple(array.shape)}, but "
                f"{target.variable.path} needs float {target.torch_shape} (torchvision layout)."
            )


def _loads_head(
    state: dict[str, np.ndarray], targets: dict[str, _Target], load_head: bool | None
) -> bool:
    if load_head is not None:
        return load_head
    # A head for other classes is what fine-tuning trains from scratch, so it
    # is skipped rather than an error, as timm and big_vision do.
    file_head = state.get(f"{_HEAD}.weight", state.get(f"{_HEAD}.bias"))
    model_classes = targets[f"{_HEAD}.bias"].torch_shape[0]
    return file_head is not None and file_head.shape[:1] == (model_classes,)


def load_torchvision_weights(
    model: keras.Model, path: str, *, load_head: bool | None = None
) -> LoadedWeights:
    """Copies a torchvision / timm ResNet state dict from `.safetensors` into `model`.

    Checks everything before it assigns anything, so a bad file leaves the
    model as it was. `num_batches_tracked` (PyTorch's BN step counter) is
    ignored. Only shapes are checked, so any width loads, as long as model
    and file agree.

    Args:
      model: from `trainer.models.create_model(name, num_classes, width=...)`,
        of the file's architecture and width (64 for published weights).
      path: a local or `gs://` path of a `.safetensors` file.
      load_head: whether to load the head (`fc.*`) too. None (the default):
        when the file's head has the model's number of classes (1000 for
        ImageNet weights); otherwise (e.g. 12 plant classes, or a file
        without a head) the head keeps its fresh initialisation and `fc.*`
        are skipped. False: always skip them; True: they must fit.

    Returns:
      How many tensors were loaded and whether the head was among them.

    Raises:
      FileNotFoundError: no file at `path`; OSError: it cannot be read.
      ValueError: the file is not safetensors, or holds a different
        architecture or width, or a tensor is missing, unexpected or
        mis-shaped; the message names it.
    """
    state = {
        key: array
        for key, array in read_state_dict(path).items()
        if not key.endswith(".num_batches_tracked")
    }
    targets = _targets(model)
    _check_architecture(state, targets, path)
    head_loaded = _loads_head(state, targets, load_head)
    if not head_loaded:
        state = {key: a for key, a in state.items() if not key.startswith(f"{_HEAD}.")}
        targets = {key: t for key, t in targets.items() if not key.startswith(f"{_HEAD}.")}
    _check_tensors(state, targets, path)
    for key, target in targets.items():
        value = np.transpose(state[key], target.axes).astype(target.variable.dtype)
        target.variable.assign(value)
    return LoadedWeights(tensors=len(targets), head_loaded=head_loaded)
