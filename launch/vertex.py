"""Submits a training run to Vertex AI as a `CustomJob`: GPU host(s) or a Cloud TPU.

    python -m launch.vertex --project=P --region=us-central1 --image_uri=IMAGE \\
        --output_dir=gs://BUCKET/runs/r1 --machine_type=a2-highgpu-8g \\
        -- --flagfile=configs/gpu_8x.cfg --data_dir=gs://BUCKET/seedlings/records

Everything after `--` is handed to `python -m trainer.main`, after the `--strategy`
(and `--tpu`) flags that the job's hardware needs. `--dry_run` prints the request
body, the REST `CustomJob` resource, and sends nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from absl import app, flags

TRAINER_MODULE = "trainer.main"
# Vertex only runs Python packages on its prebuilt executors, and its newest TensorFlow
# one is 2.17: older than the container path (2.21), but enough for quick code edits.
DEFAULT_EXECUTOR_IMAGE = "us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-17.py310:latest"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

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
        if not _REGION.fullmatch(self.region):
            raise LaunchError(f"--region={self.region} is not a region like us-central1")
        if not self.output_dir.startswith("gs://"):
            raise LaunchError(
                f"--output_dir must be a gs:// path (the job's machines cannot see local "
                f"paths), got {self.output_dir}"
            )
        if not self.image_uri and not with_package:
            raise LaunchError("--image_uri is required: build and push launch/Dockerfile first")
        if self.replica_count < 1:
            raise LaunchError(f"--replica_count must be at least 1, got {self.replica_count}")
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
        topology = TPU_TOPOLOGIES[machine_type]
        if tpu_topology not in (None, topology):
            raise LaunchError(
                f"--tpu_topology={tpu_topology} does not match {machine_type}, "
                f"a {topology} slice"
            )
        if wants_gpu:
            raise LaunchError(f"{machine_type} is a TPU machine: drop the --accelerator_* flags")
        return {"machineType": machine_type, "tpuTopology": topology}
    if tpu_topology:
        raise LaunchError(
            f"--tpu_topology needs a TPU machine type ({', '.join(TPU_TOPOLOGIES)}), "
            f"not {machine_type}"
        )
    if machine_type in FIXED_GPU_MACHINES:
        gpu, count = FIXED_GPU_MACHINES[machine_type]
        if accelerator_type not in (None, gpu) or accelerator_count not in (None, count):
            raise LaunchError(
                f"{machine_type} comes with exactly {count} x {gpu}, not "
                f"{count if accelerator_count is None else accelerator_count} x "
                f"{accelerator_type or gpu}"
            )
        return {"machineType": machine_type, "acceleratorType": gpu, "acceleratorCount": count}
    if _N1_MACHINE.fullmatch(machine_type) and wants_gpu:
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
    if not _CPU_MACHINE.fullmatch(machine_type):
        raise LaunchError(
            f"unknown --machine_type={machine_type}: use a GPU shape "
            f"(a2-highgpu-8g, g2-standard-4, ...), n1-standard-N with --accelerator_type, "
            f"a TPU ({', '.join(TPU_TOPOLOGIES)}) or a CPU machine"
        )
    if wants_gpu:
        raise LaunchError(f"{machine_type} takes no accelerators; use an a2/a3/g2 or n1 machine")
    return {"machineType": machine_type}


def trainer_args(machine_spec: dict[str, Any], replica_count: int,
                 user_args: Sequence[str]) -> list[str]:
    """The trainer's argv: the strategy the hardware needs, then the user's flags."""
    if "tpuTopology" in machine_spec:
        # On Vertex TPU VMs the chips are attached to the host the trainer runs on.
        required = ["--strategy=tpu", "--tpu=local"]
    elif replica_count > 1:
        # Vertex sets TF_CONFIG on every replica; this strategy reads it.
        required = ["--strategy=multi_worker_mirrored"]
    else:
        # One host: the trainer's --strategy=auto picks one_device or mirrored itself.
        required = []
    for arg in user_args:
        if not arg.startswith("--"):
            raise LaunchError(f"trainer arguments must be --name=value flags, got {arg!r}")
        name = arg.split("=", 1)[0]
        for flag in required:
            if flag.split("=", 1)[0] == name and flag != arg:
                raise LaunchError(f"{arg} conflicts with this job's hardware, which needs {flag}")
    return required + list(user_args)


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
    args = trainer_args(machine, config.replica_count, config.trainer_args)
    if package_uri is None:
        # No `command`: the image's ENTRYPOINT is `python -m trainer.main`.
        code = {"containerSpec": {"imageUri": config.image_uri, "args": args}}
    else:
        if "tpuTopology" in machine and not config.image_uri:
            raise LaunchError("no prebuilt TPU executor has TensorFlow >= 2.20: run TPU jobs "
                              "from the launch/Dockerfile.tpu image instead of --package")
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


def default_display_name(now: datetime.datetime) -> str:
    return f"seedlings-{now:%Y%m%d-%H%M%S}"


def staged_package_uri(staging_bucket: str, display_name: str, sdist_name: str) -> str:
    """Where the sdist goes: one folder per job, so jobs never overwrite each other's code."""
    if not staging_bucket.startswith("gs://"):
        raise LaunchError(f"--staging_bucket must be a gs:// path, got {staging_bucket}")
    return f"{staging_bucket.rstrip('/')}/{display_name}/{sdist_name}"


def console_url(job_name: str, region: str, project: str) -> str:
    """Console page of a job, from its resource name projects/N/locations/R/customJobs/ID."""
    job_id = job_name.rsplit("/", 1)[-1]
    return (f"https://console.cloud.google.com/vertex-ai/locations/{region}/training/"
            f"{job_id}?project={project}")


# ---- I/O: building, uploading, submitting. ----


def build_sdist(package_dir: Path, dist_dir: Path) -> Path:
    """Builds the source distribution of the package in `package_dir`; returns its path."""
    if not (package_dir / "setup.py").is_file():
        raise LaunchError(f"--package={package_dir} is not a directory with a setup.py")
    # --egg-base keeps the build's metadata out of the user's checkout.
    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(dist_dir),
         "sdist", "--dist-dir", str(dist_dir)],
        cwd=package_dir, capture_output=True, text=True, check=False,
    )
    sdists = sorted(dist_dir.glob("*.tar.gz"))
    if result.returncode or len(sdists) != 1:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise LaunchError(f"building the sdist in {package_dir} failed: {lines[-1]}")
    return sdists[0]


@contextmanager
def _cloud_errors(action: str) -> Iterator[None]:
    """Turns credential, HTTP and network failures into one-line LaunchErrors."""
    import google.auth.exceptions
    import requests
    from google.api_core import exceptions as api_exceptions

    try:
        yield
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise LaunchError(
            f"no Google Cloud credentials ({_one_line(e)}): run `gcloud auth "
            f"application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
        ) from None
    except (google.auth.exceptions.GoogleAuthError, api_exceptions.GoogleAPICallError,
            requests.RequestException) as e:
        raise LaunchError(f"{action} failed: {_one_line(e)}") from None


def _one_line(error: object, limit: int = 300) -> str:
    return " ".join(str(error).split())[:limit]


def upload_to_gcs(path: Path, uri: str, project: str) -> None:
    """Copies a local file to gs://bucket/object (honours STORAGE_EMULATOR_HOST)."""
    from google.cloud import storage  # Only --package needs it; keeps dry runs light.

    bucket, _, name = uri.removeprefix("gs://").partition("/")
    with _cloud_errors(f"uploading {path.name} to {uri}"):
        storage.Client(project=project).bucket(bucket).blob(name).upload_from_filename(str(path))


def submit_custom_job(job: dict[str, Any], project: str, region: str,
                      api_endpoint: str | None = None) -> dict[str, Any]:
    """POSTs the job with Application Default Credentials; returns the created resource."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    root = api_endpoint or f"https://{region}-aiplatform.googleapis.com"
    url = f"{root.rstrip('/')}/v1/projects/{project}/locations/{region}/customJobs"
    with _cloud_errors("submitting the job"):
        credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        response = AuthorizedSession(credentials).post(url, json=job, timeout=60)
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise LaunchError(f"Vertex AI rejected the job (HTTP {response.status_code}): "
                          f"{_one_line(message)}")
    return response.json()


def launch(config: JobConfig, *, package_dir: Path | None = None,
           staging_bucket: str | None = None, dry_run: bool = False,
           api_endpoint: str | None = None) -> None:
    """Builds the job (staging the package if asked), then prints it or submits it."""
    if staging_bucket and package_dir is None:
        raise LaunchError("--staging_bucket is only used with --package")
    with tempfile.TemporaryDirectory() as dist_dir:
        staged: tuple[Path, str] | None = None  # (local sdist, its gs:// URI)
        if package_dir is not None:
            if not staging_bucket:
                raise LaunchError("--package needs --staging_bucket=gs://... for the sdist")
            config.check(with_package=True)  # Fail before the build on a bad flag.
            sdist = build_sdist(package_dir, Path(dist_dir))
            staged = sdist, staged_package_uri(staging_bucket, config.display_name, sdist.name)
        job = build_custom_job(config, staged[1] if staged else None)
        if dry_run:
            if staged:
                print(f"dry run: would upload {staged[0].name} to {staged[1]}", file=sys.stderr)
            print(json.dumps(job, indent=2))
            return
        if staged:
            upload_to_gcs(*staged, config.project)
            print(f"uploaded {staged[0].name} to {staged[1]}", file=sys.stderr)
    created = submit_custom_job(job, config.project, config.region, api_endpoint)
    print(f"submitted {created['name']}")
    print(console_url(created["name"], config.region, config.project))


# ---- Command line. ----

FLAGS = flags.FLAGS
flags.DEFINE_string("project", None, "Google Cloud project that runs and pays for the job. "
                    "Required.")
flags.DEFINE_string("region", None, "Vertex AI region, e.g. us-central1 (TPU v5e: a region "
                    "that offers it, e.g. us-west1). Required.")
flags.DEFINE_string("image_uri", None, "Training image built from launch/Dockerfile (GPU) or "
                    "launch/Dockerfile.tpu (TPU). Required, except with --package, where it "
                    f"is the executor image and defaults to {DEFAULT_EXECUTOR_IMAGE}.")
flags.DEFINE_string("output_dir", None, "gs:// folder for the job's outputs: Vertex AI hands "
                    "<output_dir>/model, /checkpoints and /logs to the trainer as AIP_MODEL_DIR, "
                    "AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR. Required.")
flags.DEFINE_string("display_name", None, "Job name in the console; default seedlings-<UTC time>.")
flags.DEFINE_string("machine_type", "a2-highgpu-1g", "Machine of every replica: a GPU shape "
                    "(a2-highgpu-1g/2g/4g/8g, a2-ultragpu-*, a3-highgpu-8g, g2-standard-*), "
                    "n1-* with --accelerator_type, a TPU v5e host (ct5lp-hightpu-1t/4t/8t) or "
                    "a CPU machine.")
flags.DEFINE_string("accelerator_type", None, "GPU type, e.g. NVIDIA_TESLA_T4 for n1 machines; "
                    "a2/a3/g2 machines imply theirs.")
flags.DEFINE_integer("accelerator_count", None, "GPUs per replica; a2/a3/g2 machines imply "
                     "theirs, n1 machines default to 1.")
flags.DEFINE_string("tpu_topology", None, "TPU slice shape; must match the machine type "
                    "(ct5lp-hightpu-1t: 1x1, -4t: 2x2, -8t: 2x4), which implies it.")
flags.DEFINE_integer("replica_count", 1, "Hosts. Above 1: a chief pool of one replica plus a "
                     "worker pool of N-1, trained with --strategy=multi_worker_mirrored.")
flags.DEFINE_string("package", None, "Path of this repository: build its sdist, upload it to "
                    "--staging_bucket and run it on a prebuilt executor (pythonPackageSpec) "
                    "instead of --image_uri's container.")
flags.DEFINE_string("staging_bucket", None, "gs:// folder the --package sdist is uploaded to, "
                    "under <display_name>/.")
flags.DEFINE_string("api_endpoint", None, "Vertex AI API root; default "
                    "https://<region>-aiplatform.googleapis.com (override for Private Service "
                    "Connect, or a local fake in tests).")
flags.DEFINE_bool("dry_run", False, "Print the CustomJob request body as JSON and send nothing "
                  "(with --package: build the sdist but do not upload it).")


def main(argv: Sequence[str]) -> None:
    config = JobConfig(
        project=FLAGS.project,
        region=FLAGS.region,
        output_dir=FLAGS.output_dir,
        display_name=FLAGS.display_name
        or default_display_name(datetime.datetime.now(datetime.UTC)),
        image_uri=FLAGS.image_uri,
        machine_type=FLAGS.machine_type,
        accelerator_type=FLAGS.accelerator_type,
        accelerator_count=FLAGS.accelerator_count,
        tpu_topology=FLAGS.tpu_topology,
        replica_count=FLAGS.replica_count,
        trainer_args=tuple(argv[1:]),  # absl leaves what follows `--` here.
    )
    try:
        launch(config, package_dir=Path(FLAGS.package) if FLAGS.package else None,
               staging_bucket=FLAGS.staging_bucket, dry_run=FLAGS.dry_run,
               api_endpoint=FLAGS.api_endpoint)
    except LaunchError as e:
        sys.exit(f"launch.vertex: error: {e}")


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
