"""torchvision / timm ResNet weights into our Keras ResNets: numerics, errors, head, gs://.

The numerical check runs an independent forward pass of torchvision's ResNet
in numpy (NCHW, float64, torchvision's padding) on a random state dict laid
out as torchvision's, and compares its logits with the Keras model's after
`load_torchvision_weights`. To show the check can fail, each bug a port
typically has (a flipped kernel, a transposed fc, swapped BN statistics, a
one-pixel shift of the stride-2 padding) is applied to the reference, and
the logits must then disagree by far more than the tolerance.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import safetensors.numpy

from trainer import models, pretrained

# Relative to the largest logit: float32 Keras against float64 numpy through
# ~50 layers stays around 1e-6; the bugs below are off by 1e-1 and more.
RTOL = 1e-4
BUG_MARGIN = 100  # a bug must be off by at least BUG_MARGIN * RTOL
EPS = 1e-5  # torchvision's BatchNorm2d default
ARCHS = {"resnet18": ((2, 2, 2, 2), False), "resnet50": ((3, 4, 6, 3), True)}
# (arch, width, image size, classes). Classes equal the pooled features, so a
# transposed fc matrix has the right shape and only the numbers can tell.
# Sizes that make odd feature maps (7, 3) exercise the padding at both parities.
EQUIVALENCE_CASES = {"resnet18": (8, 56, 64), "resnet50": (8, 48, 256)}


# --- torchvision's layout and forward pass, written from torchvision's models/resnet.py ---


def _blocks(arch: str, width: int):
    """(key prefix, in channels, planes, stride, bottleneck) of each residual block."""
    stage_sizes, bottleneck = ARCHS[arch]
    channels = width
    for stage, num_blocks in enumerate(stage_sizes):
        planes = width * 2**stage
        for i in range(num_blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            yield f"layer{stage + 1}.{i}", channels, planes, stride, bottleneck
            channels = planes * 4 if bottleneck else planes


def _out_channels(arch: str, width: int) -> int:
    _, bottleneck = ARCHS[arch]
    return width * 8 * (4 if bottleneck else 1)


def _block_convs(in_channels: int, planes: int, bottleneck: bool) -> list[tuple[int, int, int]]:
    """(in, out, kernel) of conv1, conv2[, conv3]."""
    if bottleneck:
        return [(in_channels, planes, 1), (planes, planes, 3), (planes, planes * 4, 1)]
    return [(in_channels, planes, 3), (planes, planes, 3)]


def random_state_dict(
    arch: str, width: int, num_classes: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """A torchvision-layout state dict with random weights and BN statistics, float32."""
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}

    def conv(key: str, in_channels: int, out_channels: int, kernel: int) -> None:
        std = np.sqrt(2.0 / (in_channels * kernel * kernel))  # He init: activations stay O(1)
        state[f"{key}.weight"] = rng.normal(0, std, (out_channels, in_channels, kernel, kernel))

    def bn(key: str, channels: int, gamma: tuple[float, float] = (0.5, 1.5)) -> None:
        state[f"{key}.weight"] = rng.uniform(*gamma, channels)
        state[f"{key}.bias"] = rng.uniform(-0.3, 0.3, channels)
        # Positive means, so the swapped-statistics bug gives wrong numbers, not NaN.
        state[f"{key}.running_mean"] = rng.uniform(0.05, 0.5, channels)
        state[f"{key}.running_var"] = rng.uniform(0.5, 2.0, channels)
        state[f"{key}.num_batches_tracked"] = np.array(1000, np.int64)

    conv("conv1", 3, width, 7)
    bn("bn1", width)
    for prefix, in_channels, planes, stride, bottleneck in _blocks(arch, width):
        convs = _block_convs(in_channels, planes, bottleneck)
        for n, (cin, cout, kernel) in enumerate(convs, 1):
            conv(f"{prefix}.conv{n}", cin, cout, kernel)
            # Small gammas on each branch's last BN, as trained nets have, keep
            # the residual sum (and so the logits) from growing with depth.
            bn(f"{prefix}.bn{n}", cout, (0.1, 0.4) if n == len(convs) else (0.5, 1.5))
        out_channels = planes * 4 if bottleneck else planes
        if stride != 1 or in_channels != out_channels:
            conv(f"{prefix}.downsample.0", in_channels, out_channels, 1)
            bn(f"{prefix}.downsample.1", out_channels)
    features = _out_channels(arch, width)
    state["fc.weight"] = rng.uniform(-1, 1, (num_classes, features)) / np.sqrt(features)
    state["fc.bias"] = rng.uniform(-0.1, 0.1, num_classes)
    return {k: v if v.dtype == np.int64 else v.astype(np.float32) for k, v in state.items()}


def _pad(x: np.ndarray, before: int, after: int, value: float = 0.0) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (before, after), (before, after)), constant_values=value)


def _conv(x: np.ndarray, w: np.ndarray, stride: int, pad: tuple[int, int]) -> np.ndarray:
    """nn.Conv2d without bias: cross-correlation of NCHW `x` with (out, in, kh, kw) `w`."""
    kh, kw = w.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(_pad(x, *pad), (kh, kw), axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", windows[:, :, ::stride, ::stride], w, optimize=True)


def _max_pool(x: np.ndarray, pad: tuple[int, int]) -> np.ndarray:
    """nn.MaxPool2d(3, stride=2, padding=1): torch pads with -inf."""
    windows = np.lib.stride_tricks.sliding_window_view(_pad(x, *pad, -np.inf), (3, 3), axis=(2, 3))
    return windows[:, :, ::2, ::2].max(axis=(-2, -1))


def _bn(x: np.ndarray, state: dict[str, np.ndarray], key: str) -> np.ndarray:
    """BatchNorm2d in eval mode."""
    shape = (1, -1, 1, 1)
    mean, var = state[f"{key}.running_mean"], state[f"{key}.running_var"]
    scale = state[f"{key}.weight"] / np.sqrt(var + EPS)
    return (x - mean.reshape(shape)) * scale.reshape(shape) + state[f"{key}.bias"].reshape(shape)


def reference_logits(
    state: dict[str, np.ndarray], arch: str, width: int, images: np.ndarray, *, pad_shift: int = 0
) -> np.ndarray:
    """torchvision's ResNet.forward in eval mode, float64, on NCHW `images`.

    `pad_shift` moves every stride-2 window padding by that many pixels
    (before - shift, after + shift): the sampling-grid bug to detect.
    """
    state = {k: v.astype(np.float64) for k, v in state.items()}
    relu = lambda t: np.maximum(t, 0.0)
    strided = lambda p: (p - pad_shift, p + pad_shift)
    x = relu(_bn(_conv(images, state["conv1.weight"], 2, strided(3)), state, "bn1"))
    x = _max_pool(x, strided(1))
    for prefix, in_channels, planes, stride, bottleneck in _blocks(arch, width):
        y = x
        convs = _block_convs(in_channels, planes, bottleneck)
        for n, (_, _, kernel) in enumerate(convs, 1):
            # v1.5: the stride sits on conv2 (the first conv of a basic block is conv1 == its 3x3).
            conv_stride = stride if n == (2 if bottleneck else 1) else 1
            pad = kernel // 2
            pad = strided(pad) if conv_stride == 2 else (pad, pad)
            y = _bn(
                _conv(y, state[f"{prefix}.conv{n}.weight"], conv_stride, pad),
                state,
                f"{prefix}.bn{n}",
            )
            if n < len(convs):
                y = relu(y)
        shortcut = x
        if f"{prefix}.downsample.0.weight" in state:
            shortcut = _conv(x, state[f"{prefix}.downsample.0.weight"], stride, (0, 0))
            shortcut = _bn(shortcut, state, f"{prefix}.downsample.1")
        x = relu(y + shortcut)
    pooled = x.mean(axis=(2, 3))
    return pooled @ state["fc.weight"].T + state["fc.bias"]


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest deviation relative to the largest expected logit (NaN counts as infinite)."""
    error = float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))
    return error if np.isfinite(error) else np.inf


# --- fixtures ---


def _save(tmp_path, state: dict[str, np.ndarray], name: str = "weights.safetensors") -> str:
    path = os.fspath(tmp_path / name)
    safetensors.numpy.save_file(state, path)
    return path


class Loaded:
    """A Keras model loaded from a random torchvision state dict, with its logits."""

    def __init__(self, arch: str, tmp_path):
        width, size, classes = EQUIVALENCE_CASES[arch]
        self.arch, self.width = arch, width
        self.state = random_state_dict(arch, width, classes, seed=len(arch))
        rng = np.random.default_rng(1)
        self.images = rng.uniform(-2, 2, (2, 3, size, size)).astype(np.float32)  # normalised RGB
        model = models.create_model(arch, classes, width=width)
        self.result = pretrained.load_torchvision_weights(model, _save(tmp_path, self.state))
        nhwc = np.transpose(self.images, (0, 2, 3, 1))
        self.logits = np.asarray(model(nhwc, training=False), np.float64)

    def reference(self, state=None, **kwargs) -> np.ndarray:
        return reference_logits(state or self.state, self.arch, self.width, self.images, **kwargs)


@pytest.fixture(scope="module", params=list(EQUIVALENCE_CASES))
def loaded(request, tmp_path_factory) -> Loaded:
    return Loaded(request.param, tmp_path_factory.mktemp(request.param))


# --- numerical equivalence, and that the check notices each bug ---


def test_logits_match_torchvision_reference(loaded):
    expected = loaded.reference()
    # Logits of a reasonable size, so a relative tolerance means something.
    assert 0.5 < np.max(np.abs(expected)) < 100, np.max(np.abs(expected))
    error = _relative_error(loaded.logits, expected)
    assert error < RTOL, f"{loaded.arch}: logits differ by {error:.2e} relative"
    assert loaded.result.head_loaded
    assert loaded.result.tensors == sum(not k.endswith("num_batches_tracked") for k in loaded.state)


def _flip_kernels(state):
    return {
        k: v[:, :, ::-1, ::-1] if v.ndim == 4 and v.shape[-1] > 1 else v for k, v in state.items()
    }


def _transpose_fc(state):
    return {**state, "fc.weight": state["fc.weight"].T}


def _swap_bn_statistics(state):
    swap = {"running_mean": "running_var", "running_var": "running_mean"}
    renamed = lambda key: ".".join(swap.get(part, part) for part in key.split("."))
    return {renamed(k): v for k, v in state.items()}


BUGS = {
    "spatially flipped kernels": (_flip_kernels, {}),
    "transposed fc matrix": (_transpose_fc, {}),
    "swapped BN mean and variance": (_swap_bn_statistics, {}),
    "stride-2 padding shifted by one pixel": (lambda state: state, {"pad_shift": 1}),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_equivalence_check_detects(loaded, bug):
    corrupt, options = BUGS[bug]
    error = _relative_error(loaded.logits, loaded.reference(corrupt(loaded.state), **options))
    assert error > BUG_MARGIN * RTOL, f"{loaded.arch}: {bug} changes the logits by only {error:.2e}"


# --- the head, the counts, and errors ---


def _fresh(arch: str = "resnet18", classes: int = 1000, width: int = 4) -> keras.Model:
    return models.create_model(arch, classes, width=width)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> tuple[dict[str, np.ndarray], str]:
    state = random_state_dict("resnet18", 4, 1000)
    return state, _save(tmp_path_factory.mktemp("resnet18"), state)


def test_head_loaded_for_1000_classes(resnet18_file):
    state, path = resnet18_file
    model = _fresh()
    result = pretrained.load_torchvision_weights(model, path)
    assert result == pretrained.LoadedWeights(tensors=102, head_loaded=True)
    head = model.get_layer("logits")
    np.testing.assert_array_equal(head.kernel.numpy(), state["fc.weight"].T)
    np.testing.assert_array_equal(head.bias.numpy(), state["fc.bias"])
    bn = model.get_layer("stage2_block1_proj_bn")
    np.testing.assert_array_equal(
        bn.moving_variance.numpy(), state["layer2.0.downsample.1.running_var"]
    )


def test_head_keeps_fresh_init_for_12_classes(resnet18_file):
    state, path = resnet18_file
    model = _fresh(classes=12)
    head = model.get_layer("logits")
    kernel, bias = head.kernel.numpy(), head.bias.numpy()
    result = pretrained.load_torchvision_weights(model, path)
    assert result == pretrained.LoadedWeights(tensors=100, head_loaded=False)
    np.testing.assert_array_equal(head.kernel.numpy(), kernel)
    np.testing.assert_array_equal(head.bias.numpy(), bias)
    stem = model.get_layer("stem_conv").kernel.numpy()
    np.testing.assert_array_equal(stem, np.transpose(state["conv1.weight"], (2, 3, 1, 0)))


def test_head_skipped_when_asked(resnet18_file):
    path = resnet18_file[1]
    model = _fresh()
    kernel = model.get_layer("logits").kernel.numpy()
    result = pretrained.load_torchvision_weights(model, path, load_head=False)
    assert result == pretrained.LoadedWeights(tensors=100, head_loaded=False)
    np.testing.assert_array_equal(model.get_layer("logits").kernel.numpy(), kernel)


def test_head_that_does_not_fit_when_required(resnet18_file):
    model = _fresh(classes=12)
    with pytest.raises(
        ValueError, match=r"'fc\.weight' is float32 \(1000, 32\), but logits/kernel"
    ):
        pretrained.load_torchvision_weights(model, resnet18_file[1], load_head=True)


def test_mapping_covers_every_variable_once():
    model = _fresh("resnet50", width=2)
    mapping = pretrained.torchvision_variables(model)
    assert len(mapping) == len(model.weights)
    assert {id(v) for v in mapping.values()} == {id(v) for v in model.weights}
    assert set(mapping) == {
        k for k in random_state_dict("resnet50", 2, 1000) if not k.endswith("num_batches_tracked")
    }
    assert mapping["layer3.0.downsample.0.weight"].path == "stage3_block1_proj_conv/kernel"
    assert mapping["layer4.2.bn3.running_var"].path == "stage4_block3_3_bn/moving_variance"


def _load_error(tmp_path, state, model=None, error=ValueError) -> str:
    model = model or _fresh()
    before = [v.numpy() for v in model.weights]
    with pytest.raises(error) as info:
        pretrained.load_torchvision_weights(model, _save(tmp_path, state))
    message = str(info.value)
    assert "\n" not in message
    # Everything is checked before anything is assigned.
    for old, variable in zip(before, model.weights):
        np.testing.assert_array_equal(old, variable.numpy())
    return message


def test_missing_tensor(tmp_path, resnet18_file):
    state = dict(resnet18_file[0])
    del state["layer2.0.bn1.running_var"]
    message = _load_error(tmp_path, state)
    expected = "has no tensor 'layer2.0.bn1.running_var' for the model's stage2_block1_1_bn/"
    assert expected + "moving_variance" in message


def test_unexpected_tensor(tmp_path, resnet18_file):
    state = {**resnet18_file[0], "layer1.0.conv1.bias": np.zeros(4, np.float32)}
    message = _load_error(tmp_path, state)
    assert "holds tensor 'layer1.0.conv1.bias' that no model variable takes" in message


def test_mis_shaped_tensor(tmp_path, resnet18_file):
    state = {**resnet18_file[0], "layer1.1.conv2.weight": np.zeros((4, 4, 1, 1), np.float32)}
    message = _load_error(tmp_path, state)
    assert (
        "tensor 'layer1.1.conv2.weight' is float32 (4, 4, 1, 1), but stage1_block2_2_conv/kernel "
        "needs float (4, 4, 3, 3)" in message
    )


def test_resnet18_file_into_resnet50_model(tmp_path, resnet18_file):
    message = _load_error(tmp_path, resnet18_file[0], model=_fresh("resnet50"))
    assert "holds a resnet18, but the model is a resnet50" in message


def test_width_mismatch(tmp_path):
    message = _load_error(tmp_path, random_state_dict("resnet18", 8, 1000))
    assert (
        "holds width-8 weights" in message
        and "model's width is 4; create the model with width=8" in message
    )


def test_not_a_resnet(tmp_path):
    message = _load_error(tmp_path, {"embeddings.weight": np.zeros((3, 2), np.float32)})
    assert "holds no torchvision ResNet tensors (e.g. 'embeddings.weight')" in message


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "resnet50.pth"
    path.write_bytes(b"PK\x03\x04 a zip of pickles, as torch.save writes")
    with pytest.raises(ValueError, match=r"resnet50\.pth is not a \.safetensors file") as info:
        pretrained.load_torchvision_weights(_fresh(), os.fspath(path))
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    path = os.fspath(tmp_path / "nowhere.safetensors")
    with pytest.raises(FileNotFoundError, match=f"No weights file at {path}"):
        pretrained.load_torchvision_weights(_fresh(), path)


def test_reads_gcs(gcs_emulator, gcs_dir, resnet18_file):
    state, path = resnet18_file
    object_name = gcs_dir.removeprefix(f"gs://{gcs_emulator.bucket}/") + "/resnet18.safetensors"
    with open(path, "rb") as f:
        gcs_emulator.upload_object(object_name, f.read())
    # In a subprocess: TF's gs:// client takes the emulator's proxy settings
    # from the environment once per process (see tests/gcs_fixtures.py).
    code = textwrap.dedent(
        """
        import sys
        from trainer import models, pretrained

        model = models.create_model("resnet18", 1000, width=4)
        print(*pretrained.load_torchvision_weights(model, sys.argv[1]))
        print(float(model.get_layer("logits").bias.numpy().sum()))
        for missing in (sys.argv[1] + ".missing", "gs://no-such-bucket-7f3a/w.safetensors"):
            try:
                pretrained.read_state_dict(missing)
            except FileNotFoundError as e:
                print(e)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, f"gs://{gcs_emulator.bucket}/{object_name}"],
        env={**gcs_emulator.subprocess_env(), "TF_CPP_MIN_LOG_LEVEL": "2"},
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,  # the assert below shows stderr
    )
    assert proc.returncode == 0, proc.stderr[-4000:] + gcs_emulator.diagnostics()
    lines = proc.stdout.splitlines()
    assert lines[0] == "102 True"
    assert float(lines[1]) == pytest.approx(float(state["fc.bias"].sum()), rel=1e-6)
    assert lines[2].startswith(
        f"No weights file at gs://{gcs_emulator.bucket}/{object_name}.missing"
    )
    assert lines[3].startswith("No weights file at gs://no-such-bucket-7f3a/w.safetensors")
