"""Submits a training run to Vertex AI as a `CustomJob`: GPU host(s) or a Cloud TPU.

    python -m launch.vertex --project=P --region=us-central1 --image_uri=IMAGE \\
        --output_dir=gs://BUCKET/runs/r1 --machine_type=a2-highgpu-8g \\
        -- --flagfile=configs/gpu_8x.cfg --data_dir=gs://BUCKET/seedlings/records

Everything after `--` is handed to `python -m trainer.main`, after the `--strategy`
(and `--tpu`) flags that the job's hardware needs. Those trainer flags are parsed here
first, with the trainer's own definitions (see launch/trainer_args.py), because a queued job
that fails on its first line has cost its wait. `--dry_run` prints the request body, the REST
`CustomJob` resource, and sends nothing. Every mistake is one line on stderr and exit status 1.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import json
import re
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from absl import app, flags

from launch import trainer_args

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
# Project IDs (with the legacy `domain:` prefix) or project numbers.
_PROJECT = re.compile(r"(?:[a-z][-a-z0-9.]*:)?[a-z][-a-z0-9]{4,28}[a-z0-9]|[0-9]{1,20}")
# A Docker image reference: [host[:port]/]path[:tag][@sha256:digest].
_IMAGE = re.compile(r"(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
                    r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*(?::\w[\w.-]{0,127})?"
                    r"(?:@sha256:[0-9a-f]{64})?")
MAX_DISPLAY_NAME = 128  # Vertex AI's limit.
# No run of this model needs more hosts; a larger count is a slip of the keyboard.
MAX_REPLICAS = 64
# Vertex AI mounts Cloud Storage at /gcs/BUCKET on every machine of a custom job.
JOB_STORAGE = ("gs://", "/gcs/")


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


def default_display_name(now: datetime.datetime) -> str:
    return f"seedlings-{now:%Y%m%d-%H%M%S}"


def check_staging_bucket(staging_bucket: str) -> None:
    """Raises LaunchError unless `staging_bucket` is a gs:// folder (uploads need gs://)."""
    problem = trainer_args.cloud_path_problem(staging_bucket)
    if problem:
        raise LaunchError(f"--staging_bucket={staging_bucket}: {problem}")


def staged_package_uri(staging_bucket: str, display_name: str, sdist_name: str) -> str:
    """Where the sdist goes: one folder per job name (an upload never replaces one)."""
    return f"{staging_bucket.rstrip('/')}/{display_name}/{sdist_name}"


def check_api_endpoint(api_endpoint: str) -> None:
    """Raises LaunchError unless the endpoint is an https URL (or http on this machine)."""
    url = urllib.parse.urlsplit(api_endpoint)
    if url.scheme not in ("http", "https") or not url.hostname or " " in api_endpoint:
        raise LaunchError(f"--api_endpoint={api_endpoint} is not an http(s) URL like "
                          f"https://us-central1-aiplatform.googleapis.com")
    # The request carries the user's access token: only a local fake may see it in clear.
    if url.scheme == "http" and url.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise LaunchError(f"--api_endpoint={api_endpoint} would send your credentials "
                          f"unencrypted: use https:// (http:// only for localhost)")


def console_url(job_name: str, region: str, project: str) -> str:
    """Console page of a job, from its resource name projects/N/locations/R/customJobs/ID."""
    job_id = job_name.rsplit("/", 1)[-1]
    return (f"https://console.cloud.google.com/vertex-ai/locations/{region}/training/"
            f"{job_id}?project={project}")


# ---- I/O: checking the trainer flags (flagfiles), building, uploading, submitting. ----


def check_trainer_flags(config: JobConfig, *, with_package: bool = False) -> None:
    """Parses the trainer flags as the job will, reading its flagfiles from configs/.

    Raises:
      LaunchError: for a flag the job would fail on, or one its hardware cannot honour.
    """
    machine = make_machine_spec(config.machine_type, config.accelerator_type,
                                config.accelerator_count, config.tpu_topology)
    target = trainer_args.Target(sets=tuple(hardware_flags(machine, config.replica_count)),
                                 storage=JOB_STORAGE, ships_configs=not with_package)
    try:
        parsed = trainer_args.check(config.trainer_args, target)
    except trainer_args.TrainerFlagError as e:
        raise LaunchError(str(e)) from None
    if "tpuTopology" not in machine and (parsed.tpu or parsed.strategy == "tpu"):
        flag = parsed["tpu" if parsed.tpu else "strategy"].serialize()
        raise LaunchError(f"trainer flag {flag} needs a TPU machine type "
                          f"({', '.join(TPU_TOPOLOGIES)}), not {config.machine_type}")


def build_sdist(package_dir: Path, dist_dir: Path) -> Path:
    """Builds the source distribution of the package in `package_dir`; returns its path."""
    if not (package_dir / "setup.py").is_file():
        raise LaunchError(f"--package={package_dir} is not a directory with a setup.py")
    # Any other project would build and upload, and the job fail on `python -m trainer.main`.
    if not (package_dir / TRAINER_MODULE.replace(".", "/")).with_suffix(".py").is_file():
        raise LaunchError(f"--package={package_dir} has no {TRAINER_MODULE}: give the path of "
                          f"this repository")
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


@contextlib.contextmanager
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
    from google.api_core import exceptions as api_exceptions
    from google.cloud import storage  # Only --package needs it; keeps dry runs light.

    bucket, _, name = uri.removeprefix("gs://").partition("/")
    with _cloud_errors(f"uploading {path.name} to {uri}"):
        blob = storage.Client(project=project).bucket(bucket).blob(name)
        try:
            # Only if no object is there: a queued job of the same name may still install it.
            blob.upload_from_filename(str(path), if_generation_match=0)
        except api_exceptions.PreconditionFailed:
            raise LaunchError(f"{uri} already exists (the code of an earlier job with this "
                              f"--display_name, maybe still queued): choose another "
                              f"--display_name") from None


def delete_from_gcs(uri: str, project: str) -> None:
    """Deletes the object gs://bucket/object."""
    from google.cloud import storage

    bucket, _, name = uri.removeprefix("gs://").partition("/")
    with _cloud_errors(f"deleting {uri}"):
        storage.Client(project=project).bucket(bucket).blob(name).delete()


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
    """Checks everything first, then builds the job (staging any package), prints or submits it."""
    if staging_bucket and package_dir is None:
        raise LaunchError("--staging_bucket is only used with --package")
    if package_dir is not None and not staging_bucket:
        raise LaunchError("--package needs --staging_bucket=gs://... for the sdist")
    # Everything that can be checked here is, before the build and before anything is sent.
    config.check(with_package=package_dir is not None)
    if staging_bucket:
        check_staging_bucket(staging_bucket)
    if api_endpoint is not None:
        check_api_endpoint(api_endpoint)
    check_trainer_flags(config, with_package=package_dir is not None)
    with tempfile.TemporaryDirectory() as dist_dir:
        staged: tuple[Path, str] | None = None  # (local sdist, its gs:// URI)
        if package_dir is not None:
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
    try:
        created = submit_custom_job(job, config.project, config.region, api_endpoint)
    except LaunchError:
        if staged:
            # No job will install it, and it would block a retry under the same name.
            with contextlib.suppress(LaunchError):
                delete_from_gcs(staged[1], config.project)
        raise
    if staged:
        print(f"uploaded {staged[0].name} to {staged[1]}", file=sys.stderr)
    print(f"submitted {created['name']}")
    print(console_url(created["name"], config.region, config.project))


# ---- Command line. ----

FLAGS = flags.FLAGS


def _define_string(name: str, default: str | None, help: str) -> None:
    """A string flag that may be left out, but not given empty: `--project=` is a slip."""
    flags.DEFINE_string(name, default, help)
    flags.register_validator(name, lambda value: value is None or bool(value.strip()),
                             message="is empty: give a value or leave the flag out")


_define_string("project", None, "Google Cloud project that runs and pays for the job. "
               "Required.")
_define_string("region", None, "Vertex AI region, e.g. us-central1 (TPU v5e: a region "
               "that offers it, e.g. us-west1). Required.")
_define_string("image_uri", None, "Training image built from launch/Dockerfile (GPU) or "
               "launch/Dockerfile.tpu (TPU). Required, except with --package, where it "
               f"is the executor image and defaults to {DEFAULT_EXECUTOR_IMAGE}.")
_define_string("output_dir", None, "gs:// folder for the job's outputs: Vertex AI hands "
               "<output_dir>/model, /checkpoints and /logs to the trainer as AIP_MODEL_DIR, "
               "AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR. Required.")
_define_string("display_name", None, "Job name in the console, at most 128 characters; default "
               "seedlings-<UTC time>.")
_define_string("machine_type", "a2-highgpu-1g", "Machine of every replica: a GPU shape "
               "(a2-highgpu-1g/2g/4g/8g, a2-ultragpu-*, a3-highgpu-8g, g2-standard-*), "
               "n1-* with --accelerator_type, a TPU v5e host (ct5lp-hightpu-1t/4t/8t) or "
               "a CPU machine.")
_define_string("accelerator_type", None, "GPU type, e.g. NVIDIA_TESLA_T4 for n1 machines; "
               "a2/a3/g2 machines imply theirs.")
flags.DEFINE_integer("accelerator_count", None, "GPUs per replica; a2/a3/g2 machines imply "
                     "theirs, n1 machines default to 1.")
_define_string("tpu_topology", None, "TPU slice shape; must match the machine type "
               "(ct5lp-hightpu-1t: 1x1, -4t: 2x2, -8t: 2x4), which implies it.")
flags.DEFINE_integer("replica_count", 1, f"Hosts, 1 to {MAX_REPLICAS}. Above 1: a chief pool of "
                     "one replica plus a worker pool of N-1, trained with "
                     "--strategy=multi_worker_mirrored.")
_define_string("package", None, "Path of this repository: build its sdist, upload it to "
               "--staging_bucket and run it on a prebuilt executor (pythonPackageSpec) "
               "instead of --image_uri's container.")
_define_string("staging_bucket", None, "gs:// folder the --package sdist is uploaded to, "
               "under <display_name>/; an earlier job's sdist there is never replaced.")
_define_string("api_endpoint", None, "Vertex AI API root; default "
               "https://<region>-aiplatform.googleapis.com (override for Private Service "
               "Connect, or a local fake in tests: http:// only on localhost).")
flags.DEFINE_bool("dry_run", False, "Print the CustomJob request body as JSON and send nothing "
                  "(with --package: build the sdist but do not upload it).")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a mistake is one line, and only what follows `--` is the trainer's.

    absl alone would hand main() stray arguments before `--` mixed with the trainer flags.
    """
    split = argv.index("--") if "--" in argv else len(argv)
    try:
        stray = FLAGS(argv[:split])[1:]
    except flags.Error as e:
        sys.exit(f"launch.vertex: error: {' '.join(str(e).split())} (--help lists the flags)")
    if stray:
        sys.exit(f"launch.vertex: error: unexpected argument {stray[0]!r}: launcher flags look "
                 f"like --name=value, and trainer flags go after --")
    return [argv[0], *argv[split + 1:]]


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
        trainer_args=tuple(argv[1:]),  # What followed `--` (see parse_flags).
    )
    try:
        launch(config, package_dir=Path(FLAGS.package) if FLAGS.package else None,
               staging_bucket=FLAGS.staging_bucket, dry_run=FLAGS.dry_run,
               api_endpoint=FLAGS.api_endpoint)
    except LaunchError as e:
        sys.exit(f"launch.vertex: error: {e}")


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
