"""ResNet v1.5 (He et al. 2016) as Keras 3 functional models, channels_last.

v1.5 is the variant torchvision, TF Model Garden and NVIDIA train: the
bottleneck block downsamples in its 3x3 conv instead of its first 1x1 conv.
Layers are named after their position, e.g. `stage2_block1_2_conv` is the
second conv of the first block of the second stage, `..._proj_conv` the
projection shortcut, so tests, checkpoints and summaries can refer to them.

Models compute in the global Keras dtype policy (e.g. `mixed_bfloat16`) but
always return float32 logits, so losses and metrics never see float16.
Batch norm runs on TF's fused kernel (`FusedBatchNormalization`) with Keras'
own variables and moving averages.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import keras
import tensorflow as tf
from keras import layers

_DATA_FORMAT = "channels_last"
# The classification head: the one layer fine-tuning replaces or trains apart.
HEAD = "logits"
# Keras' momentum weights the old moving average, so 0.9 here is PyTorch's
# momentum=0.1: the torchvision / flax / Model Garden settings.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5
_BOTTLENECK_EXPANSION = 4
# Input dtypes TF's fused batch-norm kernel takes (with float32 statistics),
# on CPU, GPU and under XLA.
_FUSED_BN_DTYPES = ("float32", "float16", "bfloat16")


def _biased_variance_factor(inputs: tf.Tensor) -> float | tf.Tensor:
    """(n - 1) / n for the n values per channel of NHWC `inputs`: unbiased -> biased.

    A Python number when the shape is static, as for training batches, so it
    adds no op to the step.
    """
    count = inputs.shape[:-1].num_elements()
    if count is None:
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
    return (count - 1) / count


@keras.saving.register_keras_serializable(package="seedlings")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' BatchNormalization, computed by TF's fused kernel on NHWC inputs.

    Keras 3 normalises with separate moments and arithmetic ops, which made
    batch norm about a quarter of a CPU training step; the single
    `FusedBatchNormV3` kernel (and its gradient kernel) cut the CPU time per
    image by ~15%. The variables, their names and the moving-average update
    are Keras' own, so checkpoints, parameter counts and the replicas'
    statistics (each replica `assign`s its own, as with Keras' layer) are
    unchanged. Inputs the kernel does not take (other ranks or dtypes, masks,
    renorm, synchronized statistics, no gamma or beta) go to Keras' layer.
    """

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True
            )
            # The kernel normalises with the biased batch variance but returns
            # the unbiased one (Bessel's correction, n / (n - 1)), the one
            # PyTorch averages. Keras averages the biased one: undo the
            # correction, so the moving variance is what Keras' layer keeps.
            variance *= _biased_variance_factor(inputs)
            # Keras' update, word for word, rather than the kernel's own
            # (`exponential_avg_factor`), which averages the unbiased variance.
            self.moving_mean.assign(
                self.moving_mean * self.momentum + mean * (1.0 - self.momentum)
            )
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                self.gamma,
                self.beta,
                mean=self.moving_mean,
                variance=self.moving_variance,
                epsilon=self.epsilon,
                is_training=False,
            )
        return tf.cast(outputs, self.compute_dtype)

    def _fusable(self, inputs, mask) -> bool:
        return (
            len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and tf.as_dtype(inputs.dtype).name in _FUSED_BN_DTYPES
            and mask is None
            and self.scale
            and self.center
            and not self.renorm
            and not self.synchronized
        )


@keras.saving.register_keras_serializable(package="seedlings")
class PointwiseSubsamplingConv2D(layers.Conv2D):
    """A 1x1 convolution at stride `subsample`, computed as subsample, then stride 1.

    A strided 1x1 conv only reads every `subsample`-th pixel, so taking those
    first gives the same values. It avoids oneDNN's strided 1x1 weight
    gradient, which in TF 2.21's CPU build crashes the process for inputs of
    fewer than 16 channels from 56 px up (uxlfoundation/oneDNN#6035). One
    layer, with Conv2D's own variables, so checkpoints keep their layout.
    """

    def __init__(self, filters: int, kernel_size: int = 1, *, subsample: int, **kwargs):
        if kernel_size != 1 or kwargs.get("strides", 1) != 1:
            raise ValueError("PointwiseSubsamplingConv2D is a 1x1 conv whose stride is `subsample`")
        super().__init__(filters, 1, **kwargs)
        self.subsample = subsample

    def call(self, inputs):
        return super().call(inputs[:, :: self.subsample, :: self.subsample, :])

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        shrink = lambda side: None if side is None else (side - 1) // self.subsample + 1
        return super().compute_output_shape((batch, shrink(height), shrink(width), channels))

    def get_config(self) -> dict:
        return {**super().get_config(), "subsample": self.subsample}


def _conv_initializer() -> keras.initializers.Initializer:
    # torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu"): an
    # untruncated normal with std sqrt(2 / (k * k * out_channels)). A fresh
    # instance per layer, because an unseeded Keras initializer returns the
    # same values on every call.
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def _dense_initializer() -> keras.initializers.Initializer:
    # torchvision's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


def _conv_bn(
    x: keras.KerasTensor,
    filters: int,
    kernel_size: int,
    name: str,
    *,
    strides: int = 1,
    relu: bool = True,
    zero_gamma: bool = False,
) -> keras.KerasTensor:
    """Conv (no bias: BN's beta replaces it) -> BatchNorm -> optional ReLU."""
    padding = "same"
    if strides > 1 and kernel_size > 1:
        # Pad symmetrically, as torchvision does. Keras' "same" pads only the
        # bottom/right on even sizes at stride 2, which shifts the sampling
        # grid by one pixel relative to the reference implementations.
        x = layers.ZeroPadding2D(kernel_size // 2, data_format=_DATA_FORMAT, name=f"{name}_pad")(x)
        padding = "valid"
    conv = layers.Conv2D
    if strides > 1 and kernel_size == 1:
        conv = functools.partial(PointwiseSubsamplingConv2D, subsample=strides)
        strides = 1
    x = conv(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        data_format=_DATA_FORMAT,
        use_bias=False,
        kernel_initializer=_conv_initializer(),
        name=f"{name}_conv",
    )(x)
    x = FusedBatchNormalization(
        axis=-1,
        momentum=_BN_MOMENTUM,
        epsilon=_BN_EPSILON,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=f"{name}_bn",
    )(x)
    if relu:
        x = layers.ReLU(name=f"{name}_relu")(x)
    return x


def _shortcut(x: keras.KerasTensor, filters: int, strides: int, name: str) -> keras.KerasTensor:
    """Identity, or a 1x1 conv + BN projection where the shape changes."""
    if strides == 1 and x.shape[-1] == filters:
        return x
    return _conv_bn(x, filters, 1, f"{name}_proj", strides=strides, relu=False)


def _merge(
    shortcut: keras.KerasTensor, residual: keras.KerasTensor, name: str
) -> keras.KerasTensor:
    x = layers.Add(name=f"{name}_add")([shortcut, residual])
    return layers.ReLU(name=f"{name}_out")(x)


def basic_block(
    x: keras.KerasTensor, filters: int, *, strides: int, name: str, zero_init_residual: bool
) -> keras.KerasTensor:
    """Two 3x3 convs (ResNet-18/34); the first one downsamples."""
    shortcut = _shortcut(x, filters, strides, name)
    y = _conv_bn(x, filters, 3, f"{name}_1", strides=strides)
    y = _conv_bn(y, filters, 3, f"{name}_2", relu=False, zero_gamma=zero_init_residual)
    return _merge(shortcut, y, name)


def bottleneck_block(
    x: keras.KerasTensor, filters: int, *, strides: int, name: str, zero_init_residual: bool
) -> keras.KerasTensor:
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50+); v1.5: the 3x3 downsamples."""
    out_filters = filters * _BOTTLENECK_EXPANSION
    shortcut = _shortcut(x, out_filters, strides, name)
    y = _conv_bn(x, filters, 1, f"{name}_1")
    # A strided 1x1 conv (v1) would skip 3/4 of its input pixels; striding
    # the 3x3 instead costs a little speed for ~0.5% top-1 on ImageNet.
    y = _conv_bn(y, filters, 3, f"{name}_2", strides=strides)
    y = _conv_bn(y, out_filters, 1, f"{name}_3", relu=False, zero_gamma=zero_init_residual)
    return _merge(shortcut, y, name)


Block = Callable[..., keras.KerasTensor]


def _resnet(
    num_classes: int,
    *,
    stage_sizes: Sequence[int],
    block: Block,
    name: str,
    zero_init_residual: bool,
    width: int,
    input_shape: tuple[int | None, int | None, int],
) -> keras.Model:
    inputs = keras.Input(shape=input_shape, name="images")
    x = _conv_bn(inputs, width, 7, "stem", strides=2)
    # Zero padding is as good as -inf padding here: the inputs are post-ReLU.
    x = layers.ZeroPadding2D(1, data_format=_DATA_FORMAT, name="stem_pool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, data_format=_DATA_FORMAT, name="stem_pool")(x)
    for i, num_blocks in enumerate(stage_sizes):
        for j in range(num_blocks):
            x = block(
                x,
                width * 2**i,
                strides=2 if i > 0 and j == 0 else 1,
                name=f"stage{i + 1}_block{j + 1}",
                zero_init_residual=zero_init_residual,
            )
    # Pool and classify in float32 whatever the policy: the mean over a large
    # feature map and the logits are where float16 would lose precision, and
    # the loss must see float32 logits.
    x = layers.GlobalAveragePooling2D(data_format=_DATA_FORMAT, dtype="float32", name="avg_pool")(x)
    logits = layers.Dense(
        num_classes, kernel_initializer=_dense_initializer(), dtype="float32", name=HEAD
    )(x)
    return keras.Model(inputs, logits, name=name)


_VARIANTS: dict[str, Callable[..., keras.Model]] = {
    "resnet18": functools.partial(_resnet, stage_sizes=(2, 2, 2, 2), block=basic_block),
    "resnet34": functools.partial(_resnet, stage_sizes=(3, 4, 6, 3), block=basic_block),
    "resnet50": functools.partial(_resnet, stage_sizes=(3, 4, 6, 3), block=bottleneck_block),
    "resnet101": functools.partial(_resnet, stage_sizes=(3, 4, 23, 3), block=bottleneck_block),
    "resnet152": functools.partial(_resnet, stage_sizes=(3, 8, 36, 3), block=bottleneck_block),
}

MODEL_NAMES: tuple[str, ...] = tuple(_VARIANTS)


def create_model(
    name: str,
    num_classes: int,
    *,
    zero_init_residual: bool = False,
    width: int = 64,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
) -> keras.Model:
    """Builds an uncompiled ResNet v1.5 that maps images to float32 logits.

    Args:
      name: one of `MODEL_NAMES`.
      num_classes: size of the output layer.
      zero_init_residual: start the last BN of every residual block at
        gamma = 0, so each block starts as the identity (Goyal et al. 2017).
      width: filters of the stem and first stage (64 is the standard ResNet;
        narrower nets train on a CPU).
      input_shape: (height, width, channels); the default None spatial dims
        accept any image size >= 32 px.

    Returns:
      A functional `keras.Model` computing in the global dtype policy.
    """
    if name not in _VARIANTS:
        raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}.")
    if num_classes < 1 or width < 1:
        raise ValueError(f"num_classes and width must be positive, got {num_classes} and {width}.")
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}.")
    return _VARIANTS[name](
        num_classes,
        name=name,
        zero_init_residual=zero_init_residual,
        width=width,
        input_shape=tuple(input_shape),
    )


class ModelSize(NamedTuple):
    """What a model holds, counted without building it."""

    parameters: int  # every variable's values, batch-norm statistics included
    # Conv output values per image. Training keeps each for the backward
    # pass (its batch norm needs it), so this is a floor on activation memory.
    conv_activations: int


def model_size(name: str, num_classes: int, *, width: int, image_size: int) -> ModelSize:
    """Counts parameters and activations of `create_model(name, ...)` arithmetically.

    Building a model to count would allocate its weights, which is what a
    start-up check must not do for a model that does not fit.
    """
    if name not in _VARIANTS:
        raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}.")
    variant = _VARIANTS[name].keywords
    bottleneck = variant["block"] is bottleneck_block
    parameters = activations = 0

    def conv_bn(side: int, in_channels: int, out_channels: int, kernel: int) -> None:
        nonlocal parameters, activations
        # Conv kernel, then BN's gamma, beta, moving mean and variance.
        parameters += kernel * kernel * in_channels * out_channels + 4 * out_channels
        activations += side * side * out_channels

    halve = lambda side: (side - 1) // 2 + 1  # every stride-2 layer, padded as torchvision
    side = halve(image_size)
    conv_bn(side, 3, width, 7)
    side, channels = halve(side), width  # the stem's max pool
    for i, num_blocks in enumerate(variant["stage_sizes"]):
        filters = width * 2**i
        out_channels = filters * _BOTTLENECK_EXPANSION if bottleneck else filters
        for j in range(num_blocks):
            in_side, side = side, halve(side) if i > 0 and j == 0 else side
            if in_side != side or channels != out_channels:
                conv_bn(side, channels, out_channels, 1)  # projection shortcut
            if bottleneck:
                conv_bn(in_side, channels, filters, 1)
                conv_bn(side, filters, filters, 3)
                conv_bn(side, filters, out_channels, 1)
            else:
                conv_bn(side, channels, filters, 3)
                conv_bn(side, filters, filters, 3)
            channels = out_channels
    parameters += channels * num_classes + num_classes  # the dense head
    return ModelSize(parameters, activations)


def head_variables(model: keras.Model) -> list[keras.Variable]:
    """The classification head's variables; everything else is the backbone."""
    return model.get_layer(HEAD).trainable_variables


def num_convs(name: str) -> int:
    """Conv layers of `create_model(name, ...)`, projections included."""
    variant = _VARIANTS[name].keywords
    per_block = 3 if variant["block"] is bottleneck_block else 2
    # Bottleneck nets widen in their first stage too, so every stage projects.
    projections = len(variant["stage_sizes"]) - (0 if per_block == 3 else 1)
    return 1 + per_block * sum(variant["stage_sizes"]) + projections
