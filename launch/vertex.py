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
import datetime
import json
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from absl import app, flags

from launch import trainer_args
# The request is built, purely, in launch/custom_job.py; here are the command line and the
# I/O that sends it (credentials, the sdist, Cloud Storage, the HTTP submission), apart, so
# a dry run builds exactly what a submission sends.
from launch.custom_job import (
    DEFAULT_EXECUTOR_IMAGE,
    MAX_DISPLAY_NAME,
    MAX_REPLICAS,
    TPU_TOPOLOGIES,
    TRAINER_MODULE,
    JobConfig,
    LaunchError,
    build_custom_job,
    hardware_flags,
    make_machine_spec,
    staged_package_uri,
)

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# Vertex AI mounts Cloud Storage at /gcs/BUCKET on every machine of a custom job.
JOB_STORAGE = ("gs://", "/gcs/")


def default_display_name(now: datetime.datetime) -> str:
    return f"seedlings-{now:%Y%m%d-%H%M%S}"


def check_staging_bucket(staging_bucket: str) -> None:
    """Raises LaunchError unless `staging_bucket` is a gs:// folder (uploads need gs://)."""
    problem = trainer_args.cloud_path_problem(staging_bucket)
    if problem:
        raise LaunchError(f"--staging_bucket={staging_bucket}: {problem}")


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
_define_string("display_name", None, f"Job name in the console, at most {MAX_DISPLAY_NAME} "
               "characters; default seedlings-<UTC time>.")
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
