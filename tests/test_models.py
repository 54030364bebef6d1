"""ResNet v1.5: parameter counts against torchvision, strides, dtypes, init."""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import models

# Trainable parameters of torchvision.models.resnet*(num_classes=1000). BN
# moving statistics are buffers in PyTorch and non-trainable in Keras.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


@functools.cache
def _narrow_model(name: str, zero_init_residual: bool = False) -> keras.Model:
    """A narrow model shared by the tests that only inspect it (not trained)."""
    return models.create_model(name, 10, width=4, zero_init_residual=zero_init_residual)


def _num_trainable(model: keras.Model) -> int:
    return sum(math.prod(v.shape) for v in model.trainable_variables)


def _layers_of(model: keras.Model, kind: type) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, kind)]


@pytest.fixture
def dtype_policy(request):
    """Sets the global Keras dtype policy for one test, then restores it."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_trainable_parameters_match_torchvision(name):
    model = models.create_model(name, 1000)
    assert _num_trainable(model) == TORCHVISION_PARAMS[name]


def test_model_names_are_the_variants():
    assert models.MODEL_NAMES == ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="resnet26") as error:
        models.create_model("resnet26", 10)
    for name in models.MODEL_NAMES:
        assert name in str(error.value)


def test_bottleneck_downsamples_in_the_3x3_conv():
    model = _narrow_model("resnet50")
    for stage in (2, 3, 4):
        prefix = f"stage{stage}_block1"
        assert model.get_layer(f"{prefix}_1_conv").strides == (1, 1)
        assert model.get_layer(f"{prefix}_2_conv").kernel_size == (3, 3)
        assert model.get_layer(f"{prefix}_2_conv").strides == (2, 2)
        assert model.get_layer(f"{prefix}_3_conv").strides == (1, 1)
        assert model.get_layer(f"{prefix}_proj_conv").strides == (2, 2)
        # Only the first block of a stage downsamples.
        assert model.get_layer(f"stage{stage}_block2_2_conv").strides == (1, 1)
    # Stage 1 follows the max-pool and keeps its resolution, but still
    # projects: the bottleneck widens width -> 4 * width.
    assert model.get_layer("stage1_block1_2_conv").strides == (1, 1)
    assert model.get_layer("stage1_block1_proj_conv").strides == (1, 1)
    assert model.get_layer("stem_conv").strides == (2, 2)
    assert model.get_layer("stem_pool").strides == (2, 2)


def test_basic_block_downsamples_in_its_first_conv_and_projects_only_then():
    model = _narrow_model("resnet18")
    assert model.get_layer("stage2_block1_1_conv").strides == (2, 2)
    assert model.get_layer("stage2_block1_2_conv").strides == (1, 1)
    names = {layer.name for layer in model.layers}
    assert "stage1_block1_proj_conv" not in names  # width -> width: identity
    assert {f"stage{s}_block1_proj_conv" for s in (2, 3, 4)} <= names


@pytest.mark.parametrize(
    "size, final_size", [(32, 1), (33, 2), (64, 2), (224, 7)]
)
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_output_shapes_at_any_input_size(name, size, final_size):
    model = _narrow_model(name)
    # The last feature map is ceil(size / 32) on a side, as in torchvision.
    features = keras.Model(model.input, model.get_layer("avg_pool").input)
    images = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32")
    feature_map, logits = features(images), model(images)
    assert tuple(feature_map.shape[:3]) == (2, final_size, final_size)
    assert tuple(logits.shape) == (2, 10)
    assert np.all(np.isfinite(logits))


def test_fixed_input_shape():
    model = models.create_model("resnet18", 5, width=4, input_shape=(40, 48, 3))
    assert tuple(model.input.shape) == (None, 40, 48, 3)
    assert tuple(model.output.shape) == (None, 5)


@pytest.mark.parametrize("dtype_policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_logits_are_float32_under_mixed_precision(dtype_policy):
    model = models.create_model("resnet18", 3, width=4)
    compute_dtype = dtype_policy.removeprefix("mixed_")
    assert model.get_layer("stem_conv").compute_dtype == compute_dtype
    assert model.get_layer("stage4_block2_2_conv").compute_dtype == compute_dtype
    # Variables stay float32 for the optimizer.
    assert all(v.dtype == "float32" for v in model.variables)
    logits = model(tf.random.normal((2, 32, 32, 3)), training=False)
    assert model.output.dtype == "float32"
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_batch_norm_after_every_conv_and_no_conv_bias(name):
    model = _narrow_model(name)
    convs = _layers_of(model, keras.layers.Conv2D)
    norms = _layers_of(model, keras.layers.BatchNormalization)
    conv_prefixes = [conv.name.removesuffix("_conv") for conv in convs]
    assert conv_prefixes == [norm.name.removesuffix("_bn") for norm in norms]
    assert all(not conv.use_bias for conv in convs)
    assert all(norm.momentum == 0.9 and norm.epsilon == 1e-5 for norm in norms)
    head = model.get_layer("logits")
    assert head.use_bias and head.dtype_policy.name == "float32"


def test_conv_init_is_untruncated_he_normal_with_fan_out():
    model = models.create_model("resnet18", 10, width=16)
    kernel = model.get_layer("stage4_block2_1_conv").kernel.numpy()  # 3x3, 128 -> 128
    expected_std = math.sqrt(2.0 / (3 * 3 * kernel.shape[-1]))
    assert kernel.std() == pytest.approx(expected_std, rel=0.03)
    # A truncated normal would stop at 2 standard deviations.
    assert np.abs(kernel).max() > 3 * expected_std


def _last_bn_names(model: keras.Model, last: str) -> list[str]:
    return [layer.name for layer in model.layers if layer.name.endswith(f"_{last}_bn")]


@pytest.mark.parametrize("name, last", [("resnet18", "2"), ("resnet50", "3")])
def test_zero_init_residual_zeroes_the_last_gamma_of_each_block(name, last):
    default = _narrow_model(name)
    zeroed = _narrow_model(name, zero_init_residual=True)
    last_bns = _last_bn_names(zeroed, last)
    assert len(last_bns) == (8 if name == "resnet18" else 16)
    for layer in zeroed.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            expected = 0.0 if layer.name in last_bns else 1.0
            np.testing.assert_array_equal(layer.gamma.numpy(), expected, err_msg=layer.name)
    for layer in _layers_of(default, keras.layers.BatchNormalization):
        np.testing.assert_array_equal(layer.gamma.numpy(), 1.0, err_msg=layer.name)


def test_zero_init_residual_makes_identity_blocks_pass_their_input_through():
    model = _narrow_model("resnet18", zero_init_residual=True)
    probe = keras.Model(
        model.input,
        [model.get_layer(f"stage1_block{i}_out").output for i in (1, 2)],
    )
    block_in, block_out = probe(tf.random.normal((2, 64, 64, 3)), training=False)
    # Residual branch is exactly 0 and the input is post-ReLU: out == in.
    np.testing.assert_allclose(block_out, block_in, atol=1e-6)


def test_one_training_step_updates_everything():
    model = models.create_model("resnet18", 4, width=4)
    images = tf.random.normal((4, 32, 32, 3))
    labels = tf.constant([0, 1, 2, 3])
    moving_mean_before = model.get_layer("stem_bn").moving_mean.numpy().copy()
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        loss = tf.reduce_mean(loss)
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(loss.numpy())
    for variable, grad in zip(model.trainable_variables, grads):
        assert grad is not None, variable.path
        assert np.all(np.isfinite(grad)), variable.path
        assert np.any(grad.numpy() != 0), variable.path
    # training=True updates the BN moving statistics.
    assert np.any(model.get_layer("stem_bn").moving_mean.numpy() != moving_mean_before)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        models.create_model("resnet18", 0)
    with pytest.raises(ValueError, match="input_shape"):
        models.create_model("resnet18", 10, input_shape=(32, 32))
