"""The Vertex AI `CustomJob` request: what to run where, checked, as the REST body.

Pure: nothing here reads files or the network, so a dry run builds exactly what a submission
sends, and every mistake found here is a `LaunchError` before anything is sent.
launch/vertex.py reads the flags into a `JobConfig` and sends what `build_custom_job` returns.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

from launch import trainer_args

TRAINER_MODULE = "trainer.main"
# Vertex only runs Python packages on its prebuilt executors, and its newest TensorFlow
# one is 2.17: older than the container path (2.21), but enough for quick code edits.
DEFAULT_EXECUTOR_IMAGE = "us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-17.py310:latest"

# Machine shapes whose name fixes the GPU type and count (Vertex AI, "Configure compute
# resources for custom training"); --accelerator_type/--accelerator_count may be left out.
FIXED_GPU_MACHINES: dict[str, tuple[str, int]] = {
    **{f"a2-highgpu-{n}g": ("NVIDIA_TESLA_A100", n) for n in (1, 2, 4, 8)},
    "a2-megagpu-16g": ("NVIDIA_TESLA_A100", 16),
    **{f"a2-ultragpu-{n}g": ("NVIDIA_A100_80GB", n) for n in (1, 2, 4, 8)},
    "a3-highgpu-8g": ("NVIDIA_H100_80GB", 8),
    **{f"g2-standard-{cpus}": ("NVIDIA_L4", 1) for cpus in (4, 8, 12, 16, 32)},
    "g2-standard-24": ("NVIDIA_L4", 2),
    "g2-standard-48": ("NVIDIA_L4", 4),
    "g2-standard-96": ("NVIDIA_L4", 8),
}
# N1 machines take GPUs as attachments, in these counts only.
N1_GPU_COUNTS: dict[str, tuple[int, ...]] = {
    "NVIDIA_TESLA_T4": (1, 2, 4),
    "NVIDIA_TESLA_V100": (1, 2, 4, 8),
    "NVIDIA_TESLA_P100": (1, 2, 4),
    "NVIDIA_TESLA_P4": (1, 2, 4),
}
# Single-host Cloud TPU v5e slices: the machine's chip count fixes the topology.
TPU_TOPOLOGIES: dict[str, str] = {
    "ct5lp-hightpu-1t": "1x1",
    "ct5lp-hightpu-4t": "2x2",
    "ct5lp-hightpu-8t": "2x4",
}
_N1_MACHINE = re.compile(r"n1-(standard|highmem|highcpu)-\d+")
_CPU_MACHINE = re.compile(
    r"(n1|n2|n2d|e2|c2|c2d|c3|m1)-(standard|highmem|highcpu|ultramem|megamem)-\d+")
_REGION = re.compile(r"[a-z]+-[a-z]+\d+")
# Project IDs (with the legacy `domain:` prefix) or project numbers.
_PROJECT = re.compile(r"(?:[a-z][-a-z0-9.]*:)?[a-z][-a-z0-9]{4,28}[a-z0-9]|[0-9]{1,20}")
# A Docker image reference: [host[:port]/]path[:tag][@sha256:digest].
_IMAGE = re.compile(r"(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
                    r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*(?::\w[\w.-]{0,127})?"
                    r"(?:@sha256:[0-9a-f]{64})?")
MAX_DISPLAY_NAME = 128  # Vertex AI's limit.
# No run of this model needs more hosts; a larger count is a slip of the keyboard.
MAX_REPLICAS = 64


class LaunchError(Exception):
    """A mistake the user can fix; `main` prints it as one line and exits with 1."""


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """What to run where: everything `build_custom_job` needs, read once from the flags."""

    project: str
    region: str
    output_dir: str
    display_name: str
    image_uri: str | None = None
    machine_type: str = "a2-highgpu-1g"
    accelerator_type: str | None = None
    accelerator_count: int | None = None
    tpu_topology: str | None = None
    replica_count: int = 1
    trainer_args: tuple[str, ...] = ()

    def check(self, *, with_package: bool = False) -> None:
        """Raises LaunchError for settings Vertex AI would reject, or reject late."""
        for name in ("project", "region", "output_dir"):
            if not getattr(self, name):
                raise LaunchError(f"--{name} is required")
        if not _PROJECT.fullmatch(self.project):
            raise LaunchError(
                f"--project={self.project} is not a project ID (6-30 lowercase letters, digits "
                f"and hyphens, starting with a letter, not ending with a hyphen)")
        if not _REGION.fullmatch(self.region):
            raise LaunchError(f"--region={self.region} is not a region like us-central1")
        # baseOutputDirectory takes gs:// only, not the /gcs/ mount.
        problem = trainer_args.cloud_path_problem(self.output_dir)
        if problem:
            raise LaunchError(f"--output_dir={self.output_dir}: {problem}")
        if not self.display_name.strip() or len(self.display_name) > MAX_DISPLAY_NAME:
            raise LaunchError(f"--display_name must be 1 to {MAX_DISPLAY_NAME} characters, "
                              f"got {len(self.display_name)}")
        if not self.image_uri and not with_package:
            raise LaunchError("--image_uri is required: build and push launch/Dockerfile first")
        if with_package and self.machine_type in TPU_TOPOLOGIES and not self.image_uri:
            raise LaunchError("no prebuilt TPU executor has TensorFlow >= 2.20: run TPU jobs "
                              "from the launch/Dockerfile.tpu image instead of --package")
        if self.image_uri and not _IMAGE.fullmatch(self.image_uri):
            raise LaunchError(f"--image_uri={self.image_uri} is not an image reference like "
                              f"REGION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE:TAG")
        if not 1 <= self.replica_count <= MAX_REPLICAS:
            raise LaunchError(f"--replica_count must be in [1, {MAX_REPLICAS}], "
                              f"got {self.replica_count}")
        if self.machine_type in TPU_TOPOLOGIES and self.replica_count > 1:
            raise LaunchError("TPU jobs run on one host: drop --replica_count")


def make_machine_spec(
    machine_type: str,
    accelerator_type: str | None = None,
    accelerator_count: int | None = None,
    tpu_topology: str | None = None,
) -> dict[str, Any]:
    """The REST `MachineSpec`, with accelerators checked against what the machine takes.

    Accelerator type, count and TPU topology default to what the machine type implies
    (a2-highgpu-8g: 8 x NVIDIA_TESLA_A100), so usually only the machine type is needed.

    Raises:
      LaunchError: for an unknown machine type or accelerators it cannot have.
    """
    wants_gpu = bool(accelerator_type or accelerator_count)
    if machine_type in TPU_TOPOLOGIES:
        return _tpu_machine_spec(machine_type, tpu_topology, wants_gpu)
    if tpu_topology:
        raise LaunchError(
            f"--tpu_topology needs a TPU machine type ({', '.join(TPU_TOPOLOGIES)}), "
            f"not {machine_type}"
        )
    if machine_type in FIXED_GPU_MACHINES:
        return _fixed_gpu_machine_spec(machine_type, accelerator_type, accelerator_count)
    if _N1_MACHINE.fullmatch(machine_type) and wants_gpu:
        return _n1_gpu_machine_spec(machine_type, accelerator_type, accelerator_count)
    if not _CPU_MACHINE.fullmatch(machine_type):
        raise LaunchError(
            f"unknown --machine_type={machine_type}: use a GPU shape "
            f"(a2-highgpu-8g, g2-standard-4, ...), n1-standard-N with --accelerator_type, "
            f"a TPU ({', '.join(TPU_TOPOLOGIES)}) or a CPU machine"
        )
    if wants_gpu:
        raise LaunchError(f"{machine_type} takes no accelerators; use an a2/a3/g2 or n1 machine")
    return {"machineType": machine_type}


def _tpu_machine_spec(machine_type: str, tpu_topology: str | None,
                      wants_gpu: bool) -> dict[str, Any]:
    topology = TPU_TOPOLOGIES[machine_type]
    if tpu_topology not in (None, topology):
        raise LaunchError(
            f"--tpu_topology={tpu_topology} does not match {machine_type}, "
            f"a {topology} slice"
        )
    if wants_gpu:
        raise LaunchError(f"{machine_type} is a TPU machine: drop the --accelerator_* flags")
    return {"machineType": machine_type, "tpuTopology": topology}


def _fixed_gpu_machine_spec(machine_type: str, accelerator_type: str | None,
                            accelerator_count: int | None) -> dict[str, Any]:
    gpu, count = FIXED_GPU_MACHINES[machine_type]
    if accelerator_type not in (None, gpu) or accelerator_count not in (None, count):
        raise LaunchError(
            f"{machine_type} comes with exactly {count} x {gpu}, not "
            f"{count if accelerator_count is None else accelerator_count} x "
            f"{accelerator_type or gpu}"
        )
    return {"machineType": machine_type, "acceleratorType": gpu, "acceleratorCount": count}


def _n1_gpu_machine_spec(machine_type: str, accelerator_type: str | None,
                         accelerator_count: int | None) -> dict[str, Any]:
    if accelerator_type not in N1_GPU_COUNTS:
        raise LaunchError(
            f"{machine_type} takes --accelerator_type={'|'.join(N1_GPU_COUNTS)}, "
            f"not {accelerator_type}"
        )
    allowed = N1_GPU_COUNTS[accelerator_type]
    count = 1 if accelerator_count is None else accelerator_count
    if count not in allowed:
        raise LaunchError(
            f"--accelerator_count={count} is not allowed for {accelerator_type} on "
            f"{machine_type}: use one of {', '.join(map(str, allowed))}"
        )
    return {"machineType": machine_type, "acceleratorType": accelerator_type,
            "acceleratorCount": count}


def hardware_flags(machine_spec: dict[str, Any], replica_count: int) -> list[str]:
    """The trainer flags the job's hardware needs; they go before the user's."""
    if "tpuTopology" in machine_spec:
        # On Vertex TPU VMs the chips are attached to the host the trainer runs on.
        return ["--strategy=tpu", "--tpu=local"]
    if replica_count > 1:
        # Vertex sets TF_CONFIG on every replica; this strategy reads it.
        return ["--strategy=multi_worker_mirrored"]
    # One host: the trainer's --strategy=auto picks one_device or mirrored itself.
    return []


def build_custom_job(config: JobConfig, package_uri: str | None = None) -> dict[str, Any]:
    """The REST `CustomJob` resource (camelCase) that `projects.locations.customJobs.create` takes.

    Args:
      config: the job; checked here, so a dry run fails exactly like a submission.
      package_uri: gs:// URI of an uploaded sdist; runs it on `pythonPackageSpec`
        instead of the `containerSpec` image.
    """
    config.check(with_package=package_uri is not None)
    machine = make_machine_spec(config.machine_type, config.accelerator_type,
                                config.accelerator_count, config.tpu_topology)
    args = hardware_flags(machine, config.replica_count) + list(config.trainer_args)
    if package_uri is None:
        # No `command`: the image's ENTRYPOINT is `python -m trainer.main`.
        code = {"containerSpec": {"imageUri": config.image_uri, "args": args}}
    else:
        code = {"pythonPackageSpec": {
            "executorImageUri": config.image_uri or DEFAULT_EXECUTOR_IMAGE,
            "packageUris": [package_uri],
            "pythonModule": TRAINER_MODULE,
            "args": args,
        }}
    chief = {"machineSpec": machine, "replicaCount": 1, **code}
    pools = [chief]
    if config.replica_count > 1:
        # The first pool must hold exactly one replica, the chief; the rest are workers.
        pools.append({**copy.deepcopy(chief), "replicaCount": config.replica_count - 1})
    return {
        "displayName": config.display_name,
        "jobSpec": {
            "workerPoolSpecs": pools,
            # Vertex derives AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR
            # from this, and the trainer writes there when --model_dir is not given.
            "baseOutputDirectory": {"outputUriPrefix": config.output_dir},
        },
    }


def staged_package_uri(staging_bucket: str, display_name: str, sdist_name: str) -> str:
    """Where the sdist goes: one folder per job name (an upload never replaces one)."""
    return f"{staging_bucket.rstrip('/')}/{display_name}/{sdist_name}"
