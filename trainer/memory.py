"""Will a run fit in this host's memory? Answered before anything is allocated.

A run that cannot fit should say so at start-up in one line, not die with
a MemoryError traceback (or the kernel's OOM killer) once the first batch or
the decoded-image cache is built. The estimate only counts what the run
cannot do without, so it is a floor: a run it refuses could never fit.
Device memory (GPU/TPU) is not checked: TensorFlow does not say how much a
device has before it allocates, so there only the host's share is counted.
"""

from __future__ import annotations

import math

from input_pipeline import cached_augment, records
from trainer import models
from trainer.config import TrainConfig
from trainer.strategy import Runtime

_GIB = 2**30
# Values per variable a training step keeps: the variable and its gradient,
# plus the optimizer's slots (SGD momentum; AdamW's two moments).
_VALUES_PER_PARAMETER = {"sgd": 3, "adamw": 4}


def available_bytes() -> int | None:
    """Memory the kernel can hand out now without swapping (Linux), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def host_bytes_needed(config: TrainConfig, info: records.DatasetInfo, runtime: Runtime,
                      *, training: bool) -> dict[str, int]:
    """The run's floor of host memory, by what needs it (bytes)."""
    size = models.model_size(config.model, info.num_classes, width=config.width,
                             image_size=config.image_size)
    host_batch = math.ceil(config.batch_size / runtime.num_hosts)
    image_values = config.image_size**2 * 3
    needed = {"an input batch": host_batch * image_values * 4}  # float32 until the last cast
    if runtime.kind == "cpu":  # the model lives in host memory too
        values = _VALUES_PER_PARAMETER[config.optimizer] if training else 1
        needed["the model's variables"] = size.parameters * 4 * values
        if training:
            compute_bytes = 4 if runtime.precision == "float32" else 2
            needed["activations"] = host_batch * size.conv_activations * compute_bytes
    if training and config.cache_decoded:
        side = cached_augment.cache_side(config.image_size)
        share = math.ceil(info.num_examples[records.TRAIN] / runtime.num_hosts)
        needed["the decoded-image cache"] = share * 2 * side * side * 3  # two uint8 copies
    return needed


def check_fits(config: TrainConfig, info: records.DatasetInfo, runtime: Runtime,
               *, training: bool, available: int | None = None) -> None:
    """Raises MemoryError, in one line, when the run's floor exceeds the free memory.

    Args:
      available: free bytes; None reads them from the system (and skips the
        check where it cannot).
    """
    available = available_bytes() if available is None else available
    if available is None:
        return
    needed = host_bytes_needed(config, info, runtime, training=training)
    total = sum(needed.values())
    if total <= available:
        return
    parts = ", ".join(f"{what} {n / _GIB:.1f}" for what, n in
                      sorted(needed.items(), key=lambda item: -item[1]))
    raise MemoryError(
        f"this run needs at least {total / _GIB:.1f} GiB of host memory ({parts} GiB) but "
        f"{available / _GIB:.1f} GiB is free: lower --batch_size, --image_size or --width"
        + (", or drop --cache_decoded" if "the decoded-image cache" in needed else "")
    )
