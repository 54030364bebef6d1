"""The one configuration object `main` builds from flags and hands down."""

from __future__ import annotations

import dataclasses
import os
import posixpath


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

    @property
    def metrics_file(self) -> str:
        return posixpath.join(self.checkpoints, "metrics.json")

    @classmethod
    def resolve(cls, model_dir: str | None, environ=os.environ) -> "Paths":
        if model_dir:
            return cls(model_dir, model_dir, posixpath.join(model_dir, "export"))
        checkpoints = environ.get("AIP_CHECKPOINT_DIR")
        if not checkpoints:
            raise ValueError(
                "--model_dir is required (or run on Vertex AI, which sets AIP_CHECKPOINT_DIR)"
            )
        return cls(
            checkpoints=checkpoints,
            summaries=environ.get("AIP_TENSORBOARD_LOG_DIR", checkpoints),
            export=environ.get("AIP_MODEL_DIR", posixpath.join(checkpoints, "export")),
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything the trainer needs; see trainer/main.py's flags for meanings."""

    data_dir: str
    paths: Paths
    strategy: str = "auto"
    tpu: str | None = None
    model: str = "resnet50"
    width: int = 64
    image_size: int = 224
    batch_size: int = 256
    train_steps: int = 0
    epochs: float = 0.0
    steps_per_loop: int = 100
    eval_every: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    warmup_epochs: float = 5.0
    weight_decay: float = 1e-3
    label_smoothing: float = 0.1
    mixed_precision: str = "auto"
    jit_compile: str = "auto"
    seed: int = 0
    mode: str = "train_and_eval"
    profile_steps: tuple[int, int] | None = None
    zero_init_residual: bool = True
    cache_decoded: bool = False
