"""Where a run's weights start, and the input statistics that go with them.

A new run starts from scratch, from a checkpoint of another run of this
trainer (`--init_checkpoint`), or from ImageNet weights in the torchvision
layout (`--pretrained`). Weights are only as good as the inputs they were
trained on, so each start fixes how inputs are normalised: the data set's
own statistics from scratch, those of the init run, or ImageNet's. They are
written to `normalization.json` in the model dir before the first step, and
a resumed run, an evaluation and an export read them back, so training,
evaluation and the served model cannot disagree.

A run that finds a checkpoint in its own model dir resumes from it and
applies no init again: the same command then continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath

from absl import logging
import keras
import tensorflow as tf

from input_pipeline import records, storage
from trainer import checkpoints
from trainer import models
from trainer import pretrained
from trainer.config import TrainConfig

NORMALIZATION_FILE = "normalization.json"


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std on the 0..1 scale, and where they come from."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str

    def write(self, model_dir: str) -> None:
        payload = {"mean": list(self.mean), "std": list(self.std), "source": self.source}
        storage.write_atomically(posixpath.join(model_dir, NORMALIZATION_FILE),
                                 json.dumps(payload, indent=2) + "\n")

    @classmethod
    def read(cls, model_dir: str) -> "Normalization | None":
        """The statistics a run in `model_dir` recorded, or None (a run older than this file)."""
        path = posixpath.join(model_dir, NORMALIZATION_FILE)
        if not tf.io.gfile.exists(path):
            return None
        try:
            with tf.io.gfile.GFile(path) as f:
                raw = json.load(f)
            return cls(tuple(raw["mean"]), tuple(raw["std"]), raw.get("source", path))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is damaged ({storage.first_line(e)}): restore it or start "
                             "a new --model_dir") from e


def start(config: TrainConfig, model: keras.Model, info: records.DatasetInfo, *,
          resumed: bool, is_chief: bool) -> records.DatasetInfo:
    """Initialises `model` as the flags ask, unless the run resumed; returns `info` normalised so.

    Args:
      resumed: whether `model` was restored from the run's own checkpoint.
      is_chief: whether this process records the statistics for the run.

    Returns:
      `info` with the mean and std that training, evaluation and the export use.
    """
    if resumed:
        normalization = Normalization.read(config.paths.checkpoints)
        if config.init_checkpoint or config.pretrained:
            logging.info("resumed from the run's own checkpoint: --%s is not applied again",
                         "init_checkpoint" if config.init_checkpoint else "pretrained")
    elif config.init_checkpoint:
        normalization = init_from_checkpoint(config, model, info.num_classes)
    elif config.pretrained:
        loaded = pretrained.load_torchvision_weights(model, config.pretrained, load_head=False)
        logging.info("initialised from %s: %s; the head starts fresh", config.pretrained, loaded)
        normalization = Normalization(pretrained.IMAGENET_MEAN, pretrained.IMAGENET_STD,
                                      f"ImageNet, for {config.pretrained}")
    else:
        normalization = None
    if normalization is None:  # from scratch, or a run from before normalization.json
        normalization = Normalization(info.mean, info.std, f"{config.data_dir} (training split)")
    if is_chief and not resumed:
        normalization.write(config.paths.checkpoints)
    logging.info("inputs normalised with mean %s, std %s (%s)", list(normalization.mean),
                 list(normalization.std), normalization.source)
    return dataclasses.replace(info, mean=normalization.mean, std=normalization.std)


def init_from_checkpoint(config: TrainConfig, model: keras.Model,
                         num_classes: int) -> Normalization | None:
    """Copies an init checkpoint's weights into `model`; returns that run's statistics.

    Raises:
      ValueError: the checkpoint holds another model or width, or its head
        does not fit and `--init_checkpoint_modules=all` asks for it.
      FileNotFoundError: no checkpoint at `config.init_checkpoint`.
    """
    prefix = _checkpoint_prefix(config.init_checkpoint)
    name, width, classes = _describe(prefix)
    if (name, width) != (config.model, config.width):
        raise ValueError(
            f"--init_checkpoint={config.init_checkpoint} holds a {name} of width {width}, this "
            f"run trains a {config.model} of width {config.width}: pass --model={name} "
            f"--width={width}, or another checkpoint")
    modules = config.init_checkpoint_modules or ("all" if classes == num_classes else "backbone")
    # Outside the strategy: only its values are used, copied into `model`.
    source = models.create_model(name, classes, width=width)
    tf.train.Checkpoint(model=source).restore(prefix).expect_partial().assert_existing_objects_matched()
    skipped = {v.path for v in models.head_variables(source)} if modules == "backbone" else set()
    values = {v.path: v for v in source.variables}
    copied = 0
    for target in model.variables:
        if target.path in skipped:
            continue
        value = values[target.path]
        if tuple(target.shape) != tuple(value.shape):
            raise ValueError(
                f"--init_checkpoint={config.init_checkpoint}: {target.path} has shape "
                f"{tuple(value.shape)} there and {tuple(target.shape)} here ({classes} vs "
                f"{num_classes} classes): use --init_checkpoint_modules=backbone")
        target.assign(value.numpy())
        copied += 1
    logging.info("initialised %s of the model (%d tensors) from %s%s", modules, copied, prefix,
                 "; the head starts fresh" if skipped else "")
    recorded = Normalization.read(posixpath.dirname(prefix))
    if recorded is None:
        logging.warning("%s has no %s (a run from before it was written): normalising with "
                        "this data set's statistics", posixpath.dirname(prefix), NORMALIZATION_FILE)
        return None
    return dataclasses.replace(recorded, source=f"{recorded.source}, via {prefix}")


def _checkpoint_prefix(path: str) -> str:
    """`path` itself if it is a checkpoint prefix, else the newest checkpoint in that folder."""
    if tf.io.gfile.exists(path + ".index"):
        return path
    newest = checkpoints.newest_first(path) if tf.io.gfile.isdir(path) else []
    if not newest:
        raise FileNotFoundError(
            f"--init_checkpoint={path} is neither a checkpoint prefix (DIR/ckpt-N) nor a folder "
            "holding checkpoints")
    return newest[0]


def _describe(prefix: str) -> tuple[str, int, int]:
    """(model name, width, classes) of the model saved in a checkpoint of this trainer."""
    shapes = [shape for key, shape in tf.train.list_variables(prefix) if _is_model_value(key)]
    kernels = [shape for shape in shapes if len(shape) == 4]
    heads = [shape for shape in shapes if len(shape) == 2]
    stems = [shape for shape in kernels if shape[:3] == [7, 7, 3]]
    names = [name for name in models.MODEL_NAMES if models.num_convs(name) == len(kernels)]
    if not (names and len(heads) == 1 and len(stems) == 1):
        raise ValueError(f"--init_checkpoint={prefix} is not a checkpoint of this trainer's "
                         "ResNets: pass a prefix or model_dir that `python -m trainer.main` wrote")
    return names[0], stems[0][3], heads[0][1]


def _is_model_value(key: str) -> bool:
    """Whether a checkpoint key holds a model variable (saved under whichever owner came first).

    The model's trainable variables are saved under the optimizer's list of
    them, its batch-norm statistics under the model; the optimizer's slots,
    iterations, the step and the save counter are not the model's.
    """
    owner = key.split("/", 2)[:2]
    return key.endswith("/.ATTRIBUTES/VARIABLE_VALUE") and (
        owner[0] == "model" or owner == ["optimizer", "_trainable_variables"])
