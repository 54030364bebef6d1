"""Picks the distribution strategy, precision and XLA setting at start-up.

Everything device-dependent is decided here, once, so the training loop below
is the same code on a laptop CPU, eight GPUs, several GPU hosts or a TPU pod.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

from absl import logging
import tensorflow as tf

from trainer.config import STRATEGIES


@dataclasses.dataclass(frozen=True)
class Runtime:
    """The resolved device setup the trainer runs with."""

    strategy: tf.distribute.Strategy
    kind: str  # "cpu", "gpu" or "tpu": what the replicas run on.
    precision: str  # A Keras dtype policy name.
    jit_compile: bool

    @property
    def num_replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def is_chief(self) -> bool:
        return is_chief(self.strategy)

    @property
    def num_hosts(self) -> int:
        """Processes that each feed their own replicas: workers, or TPU hosts."""
        if isinstance(self.strategy, tf.distribute.TPUStrategy):
            return self.strategy.extended.num_hosts
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver:
            tasks = resolver.cluster_spec().as_dict()
            return max(1, sum(len(tasks.get(kind, ())) for kind in ("chief", "worker")))
        return 1


def split_cpu(num_devices: int) -> None:
    """Splits the host CPU into logical devices, to run mirrored code without GPUs.

    Must run before TensorFlow initialises its devices.
    """
    if num_devices < 2:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices
    )


def _tpu_attached(tpu: str | None) -> bool:
    # A TPU VM exposes its chips as /dev/accel* (v2-v4) or /dev/vfio/* (v5+);
    # Cloud TPU nodes and Vertex set TPU_NAME. Probing the resolver instead
    # would wait on the network on every CPU/GPU start-up.
    return bool(
        tpu
        or os.environ.get("TPU_NAME")
        or glob.glob("/dev/accel*")
        or glob.glob("/dev/vfio/[0-9]*")
    )


def _make_tpu_strategy(tpu: str | None) -> tf.distribute.TPUStrategy:
    name = tpu or os.environ.get("TPU_NAME") or "local"
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as e:
        raise RuntimeError(
            f"cannot reach TPU {name!r} ({str(e).splitlines()[0]}); on a TPU VM pass "
            "--tpu=local, else the TPU name, or use --strategy=default"
        ) from e
    return tf.distribute.TPUStrategy(resolver)


def make_strategy(name: str, *, tpu: str | None = None) -> tf.distribute.Strategy:
    """Builds the tf.distribute strategy named on the command line."""
    # Physical devices: listing logical ones initialises TensorFlow, after
    # which MultiWorkerMirroredStrategy can no longer set up collective ops.
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        if _tpu_attached(tpu):
            name = "tpu"
        elif len(gpus) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        # NCCL is GPU-only; logical CPU devices reduce through one device.
        return tf.distribute.MirroredStrategy(
            devices=[d.name for d in tf.config.list_logical_devices("CPU")],
            cross_device_ops=tf.distribute.ReductionToOneDevice(),
        )
    if name == "multi_worker_mirrored":
        _check_tf_config()
        implementation = (
            tf.distribute.experimental.CommunicationImplementation.NCCL
            if gpus
            else tf.distribute.experimental.CommunicationImplementation.RING
        )
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=implementation
            )
        )
    if name == "tpu":
        return _make_tpu_strategy(tpu)
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def _check_tf_config() -> None:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return  # A single worker; MWMS then runs like mirrored on local devices.
    try:
        cluster = json.loads(raw)["cluster"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            "TF_CONFIG is not valid JSON with a 'cluster' key; see "
            "https://www.tensorflow.org/guide/distributed_training#TF_CONFIG"
        ) from e
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError("TF_CONFIG's 'cluster' must map task types to address lists")


def wait_for_all_workers(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker has called it; a no-op with one process.

    MultiWorkerMirrored workers must leave together: when one exits while
    another still works (the chief exporting), the coordination service
    reports the first as crashed, and the last waits about a minute at exit.
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        tf.function(lambda: strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(0)), axis=None))()


def device_kind(strategy: tf.distribute.Strategy) -> str:
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    if tf.config.list_logical_devices("GPU"):
        return "gpu"
    return "cpu"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, summaries and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    # Vertex and Keras' convention: an explicit "chief" task, else worker 0.
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


def resolve_precision(flag: str, kind: str) -> str:
    """`auto` = bf16 on TPU, fp16 with loss scaling on GPU, float32 on CPU."""
    if flag != "auto":
        return flag
    return {"tpu": "mixed_bfloat16", "gpu": "mixed_float16"}.get(kind, "float32")


def resolve_jit(flag: str, kind: str) -> bool:
    """`auto` = XLA on GPU/TPU; off on CPU, where it was slower than graphs."""
    if flag == "auto":
        return kind in ("gpu", "tpu")
    return flag == "true"


def setup_runtime(
    strategy_name: str,
    *,
    tpu: str | None,
    precision: str,
    jit_compile: str,
) -> Runtime:
    """Creates the strategy and resolves the `auto` settings for its devices."""
    strategy = make_strategy(strategy_name, tpu=tpu)
    kind = device_kind(strategy)
    runtime = Runtime(
        strategy=strategy,
        kind=kind,
        precision=resolve_precision(precision, kind),
        jit_compile=resolve_jit(jit_compile, kind),
    )
    logging.info(
        "strategy %s with %d replica(s) on %s, precision %s, XLA %s",
        type(strategy).__name__,
        runtime.num_replicas,
        kind,
        runtime.precision,
        "on" if runtime.jit_compile else "off",
    )
    return runtime
