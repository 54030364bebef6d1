"""`python -m launch.vertex`, run as a user runs it: dry runs, mistakes and submissions.

Nothing here reaches Google Cloud. Dry runs print the request; real submissions go to the
fake Vertex AI of tests/launch_fixtures.py; uploads go to the shared fake-gcs-server fixture.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.launch_fixtures import (
    GPU_IMAGE,
    REPO,
    FakeVertex,
    assert_one_line_error,
    hermetic_env,
    run_vertex,
)

BASE = ["--project=my-project", "--region=us-central1", "--output_dir=gs://my-bucket/runs/r1",
        "--display_name=test-job"]


def dry_run_job(*args: str) -> dict[str, Any]:
    result = run_vertex(*BASE, "--dry_run", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# ---- The request body of each job kind, field by field. ----


def test_single_gpu_job() -> None:
    job = dry_run_job(f"--image_uri={GPU_IMAGE}", "--machine_type=a2-highgpu-1g",
                      "--", "--flagfile=configs/gpu_1x.cfg", "--data_dir=gs://my-bucket/records")

    assert job["displayName"] == "test-job"
    assert job["jobSpec"]["baseOutputDirectory"] == {"outputUriPrefix": "gs://my-bucket/runs/r1"}
    (pool,) = job["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {"machineType": "a2-highgpu-1g",
                                   "acceleratorType": "NVIDIA_TESLA_A100", "acceleratorCount": 1}
    assert pool["replicaCount"] == 1
    # No `command`: the image's ENTRYPOINT runs the trainer; one host needs no --strategy.
    assert pool["containerSpec"] == {
        "imageUri": GPU_IMAGE,
        "args": ["--flagfile=configs/gpu_1x.cfg", "--data_dir=gs://my-bucket/records"],
    }
    assert set(job) == {"displayName", "jobSpec"}


def test_n1_machine_takes_gpus_as_attachments() -> None:
    job = dry_run_job(f"--image_uri={GPU_IMAGE}", "--machine_type=n1-standard-16",
                      "--accelerator_type=NVIDIA_TESLA_V100", "--accelerator_count=4")
    assert job["jobSpec"]["workerPoolSpecs"][0]["machineSpec"] == {
        "machineType": "n1-standard-16", "acceleratorType": "NVIDIA_TESLA_V100",
        "acceleratorCount": 4}


def test_multi_worker_job_has_a_chief_pool_and_a_worker_pool() -> None:
    job = dry_run_job(f"--image_uri={GPU_IMAGE}", "--machine_type=a2-highgpu-4g",
                      "--replica_count=3", "--", "--data_dir=gs://my-bucket/records")

    chief, workers = job["jobSpec"]["workerPoolSpecs"]
    assert chief["replicaCount"] == 1
    assert workers["replicaCount"] == 2
    for pool in (chief, workers):
        assert pool["machineSpec"] == {"machineType": "a2-highgpu-4g",
                                       "acceleratorType": "NVIDIA_TESLA_A100",
                                       "acceleratorCount": 4}
        assert pool["containerSpec"] == {
            "imageUri": GPU_IMAGE,
            "args": ["--strategy=multi_worker_mirrored", "--data_dir=gs://my-bucket/records"],
        }


@pytest.mark.parametrize("machine_type, topology",
                         [("ct5lp-hightpu-1t", "1x1"), ("ct5lp-hightpu-4t", "2x2"),
                          ("ct5lp-hightpu-8t", "2x4")])
def test_tpu_job(machine_type: str, topology: str) -> None:
    job = dry_run_job("--image_uri=tpu-image", f"--machine_type={machine_type}",
                      f"--tpu_topology={topology}", "--", "--flagfile=configs/tpu_v5e_8.cfg")

    (pool,) = job["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {"machineType": machine_type, "tpuTopology": topology}
    assert pool["replicaCount"] == 1
    assert pool["containerSpec"] == {
        "imageUri": "tpu-image",
        "args": ["--strategy=tpu", "--tpu=local", "--flagfile=configs/tpu_v5e_8.cfg"],
    }


def test_tpu_topology_defaults_to_the_machines() -> None:
    job = dry_run_job("--image_uri=tpu-image", "--machine_type=ct5lp-hightpu-4t")
    assert job["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]["tpuTopology"] == "2x2"


def test_python_package_dry_run_builds_the_sdist_but_uploads_nothing(gcs_emulator: Any,
                                                                     tmp_path: Path) -> None:
    staging = f"gs://{gcs_emulator.bucket}/dry-run-staging"
    result = run_vertex(*BASE, "--dry_run", f"--package={REPO}", f"--staging_bucket={staging}",
                        "--", "--model=resnet50", "--data_dir=gs://my-bucket/records",
                        env=hermetic_env(tmp_path, **gcs_emulator.storage_env))
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)

    (pool,) = job["jobSpec"]["workerPoolSpecs"]
    assert "containerSpec" not in pool
    spec = pool["pythonPackageSpec"]
    assert spec["executorImageUri"] == (
        "us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-17.py310:latest")
    (uri,) = spec["packageUris"]
    assert re.fullmatch(rf"{staging}/test-job/seedlings-\d+\.\d+\.\d+\.tar\.gz", uri)
    assert spec["pythonModule"] == "trainer.main"
    assert spec["args"] == ["--model=resnet50", "--data_dir=gs://my-bucket/records"]
    assert f"would upload {uri.rsplit('/', 1)[1]} to {uri}" in result.stderr
    assert gcs_emulator.list_objects("dry-run-staging/") == []


# ---- Mistakes: one line on stderr, exit status 1, nothing sent. ----

GPU = [f"--image_uri={GPU_IMAGE}"]
PACKAGE = [f"--package={REPO}", "--staging_bucket=gs://my-bucket/s"]
DATA = "--data_dir=gs://my-bucket/records"


@pytest.mark.parametrize("args, expected", [
    (["--region=us-central1", "--output_dir=gs://my-bucket/o", *GPU], "--project is required"),
    (["--project=my-project", "--output_dir=gs://my-bucket/o", *GPU], "--region is required"),
    (["--project=my-project", "--region=us-central1", *GPU], "--output_dir is required"),
    ([*BASE, *GPU, "--region=us central"], "not a region"),
    ([*BASE, *GPU, "--output_dir=/tmp/out"],
     "--output_dir=/tmp/out: must be gs://BUCKET/PATH (the job's machines cannot see local"),
    ([*BASE, *GPU, "--output_dir=gs://"], "--output_dir=gs://: names no bucket"),
    ([*BASE, *GPU, "--output_dir=gs://b b/r"], "'b b' is not a bucket name (3-63 lowercase"),
    ([*BASE, *GPU, "--output_dir=gs://b/r"], "'b' is not a bucket name"),
    ([*BASE, *GPU, "--output_dir=gs://-bucket/r"], "'-bucket' is not a bucket name"),
    ([*BASE, *GPU, "--project=my project"], "--project=my project is not a project ID (6-30"),
    ([*BASE, *GPU, "--project=p"], "--project=p is not a project ID"),
    ([*BASE, *GPU, "--project=my-project-"], "is not a project ID"),
    ([*BASE, *GPU, "--project="], "flag --project=: is empty: give a value or leave the flag"),
    ([*BASE, *GPU, "--machine_type=n1-standard-8", "--accelerator_type="],
     "flag --accelerator_type=: is empty"),
    ([*BASE, *GPU, "--display_name=" + "x" * 200],
     "--display_name must be 1 to 128 characters, got 200"),
    ([*BASE, *GPU, "--display_name= "], "flag --display_name= : is empty"),
    ([*BASE], "--image_uri is required"),
    ([*BASE, "--image_uri=my image"], "--image_uri=my image is not an image reference"),
    ([*BASE, *GPU, "--api_endpoint=notaurl"], "--api_endpoint=notaurl is not an http(s) URL"),
    ([*BASE, *GPU, "--api_endpoint=http://example.com"], "would send your credentials unencrypted"),
    ([*BASE, *GPU, "--bogus=1"], "Unknown command line flag 'bogus' (--help lists the flags)"),
    ([*BASE, *GPU, "--replica_count=two"], "flag --replica_count=two: "),
    ([*BASE, *GPU, "stray", "--", DATA], "unexpected argument 'stray': launcher flags look like"),
    ([*BASE, *GPU, "--machine_type=n1-standard-8", "--accelerator_type=NVIDIA_TESLA_T4",
      "--accelerator_count=8"], "--accelerator_count=8 is not allowed for NVIDIA_TESLA_T4"),
    ([*BASE, *GPU, "--machine_type=n1-standard-8", "--accelerator_type=NVIDIA_L4"],
     "takes --accelerator_type=NVIDIA_TESLA_T4|"),
    ([*BASE, *GPU, "--machine_type=a2-highgpu-8g", "--accelerator_count=4"],
     "a2-highgpu-8g comes with exactly 8 x NVIDIA_TESLA_A100, not 4"),
    ([*BASE, *GPU, "--machine_type=g2-standard-8", "--accelerator_type=NVIDIA_TESLA_A100"],
     "g2-standard-8 comes with exactly 1 x NVIDIA_L4"),
    ([*BASE, *GPU, "--machine_type=e2-standard-8", "--accelerator_count=1"],
     "e2-standard-8 takes no accelerators"),
    ([*BASE, *GPU, "--machine_type=a2-highgpu-3g"], "unknown --machine_type=a2-highgpu-3g"),
    ([*BASE, *GPU, "--machine_type=ct5lp-hightpu-8t", "--tpu_topology=2x2"],
     "--tpu_topology=2x2 does not match ct5lp-hightpu-8t, a 2x4 slice"),
    ([*BASE, *GPU, "--machine_type=a2-highgpu-1g", "--tpu_topology=2x4"],
     "--tpu_topology needs a TPU machine type"),
    ([*BASE, *GPU, "--machine_type=ct5lp-hightpu-8t", "--accelerator_count=8"],
     "is a TPU machine"),
    ([*BASE, *GPU, "--machine_type=ct5lp-hightpu-8t", "--replica_count=2"],
     "TPU jobs run on one host"),
    ([*BASE, *GPU, "--replica_count=0"], "--replica_count must be in [1, 64], got 0"),
    ([*BASE, *GPU, "--replica_count=100000"], "--replica_count must be in [1, 64], got 100000"),
    ([*BASE, f"--package={REPO}"], "--package needs --staging_bucket"),
    ([*BASE, *GPU, "--staging_bucket=gs://my-bucket/staging"],
     "--staging_bucket is only used with --package"),
    ([*BASE, f"--package={REPO}", "--staging_bucket=/tmp/staging"],
     "--staging_bucket=/tmp/staging: must be gs://BUCKET/PATH"),
    ([*BASE, f"--package={REPO}", "--staging_bucket=gs://"], "--staging_bucket=gs://: names no"),
    ([*BASE, f"--package={REPO / 'configs'}", "--staging_bucket=gs://my-bucket/s", "--", DATA],
     "is not a directory with a setup.py"),
    ([*BASE, *PACKAGE, "--machine_type=ct5lp-hightpu-8t"], "no prebuilt TPU executor"),
    # The sdist installs only the Python packages: no configs/, for flagfiles or the demo.
    ([*BASE, *PACKAGE, "--", "--flagfile=configs/gpu_1x.cfg", DATA],
     "trainer flag --flagfile=configs/gpu_1x.cfg: this job's code has no configs/"),
    ([*BASE, *PACKAGE, "--", "--model=resnet50"], "trainer flag --data_dir is required here"),
])
def test_bad_input_is_a_one_line_error(args: list[str], expected: str) -> None:
    assert_one_line_error(run_vertex("--dry_run", *args), expected)


@pytest.mark.parametrize("args, expected", [
    (["--bogus=1"], "trainer flag --bogus=1: trainer.main has no such flag"),
    (["--image_sise=64"], "trainer flag --image_sise=64: trainer.main has no such flag (did you "
                          "mean --image_size?)"),
    (["--image_size=100000"],
     "trainer flag --image_size=100000: 100000 is not an integer in the range [32, 2048]"),
    (["--learning_rate=nan"], "trainer flag --learning_rate=nan: must be a finite number"),
    (["--model=resnet51"], "trainer flag --model=resnet51: value should be one of <resnet18|"),
    (["--cache_decoded=maybe"], "trainer flag --cache_decoded=maybe: "),
    (["--batch_size"], "trainer flags: Missing value for flag --batch_size"),
    (["--train_steps=0", "--epochs=0", DATA], "trainer flags: set --train_steps or --epochs"),
    (["--data_dir", "gs://my-bucket/records"],
     "trainer arguments must be --name=value flags, got 'gs://my-bucket/records'"),
    (["--model=resnet50", "--", "--width=8"], "trainer arguments must be --name=value flags, "
                                              "got '--'"),
    (["--flagfile=configs/nope.cfg"],
     f"trainer flag --flagfile=configs/nope.cfg: there is no file {REPO}/configs/nope.cfg"),
    ([f"--flagfile={REPO}/configs/gpu_1x.cfg"], "the job has only the repository's configs/"),
    (["--flagfile=setup.py"], "trainer flag --flagfile=setup.py: the job has only the "
                              "repository's configs/ folder: put the file there"),
    (["--flagfile=configs/../setup.py"], "the job has only the repository's configs/"),
    (["--data_dir=/local/path"], "trainer flag --data_dir=/local/path: must be gs://BUCKET/PATH "
                                 "or /gcs/BUCKET/PATH (the job's machines cannot see local"),
    (["--model_dir=output/run"], "trainer flag --model_dir=output/run: must be gs://"),
    (["--pretrained=resnet50.safetensors"],
     "trainer flag --pretrained=resnet50.safetensors: must be gs://"),
    (["--init_checkpoint=/runs/r1"], "trainer flag --init_checkpoint=/runs/r1: must be gs://"),
    (["--data_dir=gs://"], "trainer flag --data_dir=gs://: names no bucket"),
    (["--data_dir="], "trainer flag --data_dir= is empty: give gs://BUCKET/PATH or leave it out"),
    (["--flagfile=configs/gpu_1x.cfg", "--model_dir=/gcs/B/run"], "'B' is not a bucket name"),
    (["--strategy=tpu"], "trainer flag --strategy=tpu needs a TPU machine type (ct5lp-hightpu"),
    (["--tpu=local"], "trainer flag --tpu=local needs a TPU machine type"),
    (["--run_with_pdb"], "trainer flag --run_with_pdb: trainer.main has no such flag"),
])
def test_bad_trainer_flag_is_a_one_line_error_and_sends_nothing(
        args: list[str], expected: str, fake_vertex: tuple[FakeVertex, dict]) -> None:
    server, env = fake_vertex
    result = run_vertex(*BASE, *GPU, f"--api_endpoint={server.url}", "--", *args, env=env)
    assert_one_line_error(result, expected)
    assert server.requests == []


@pytest.mark.parametrize("args, expected", [
    (["--replica_count=2", "--", "--strategy=mirrored"], "trainer flag --strategy=mirrored: the "
     "launcher sets --strategy=multi_worker_mirrored for this hardware; drop it"),
    (["--machine_type=ct5lp-hightpu-8t", "--", "--tpu=my-tpu"],
     "trainer flag --tpu=my-tpu: the launcher sets --tpu=local for this hardware"),
    (["--machine_type=ct5lp-hightpu-8t", "--", "--flagfile=configs/tpu_v5e_8.cfg",
      "--strategy=tpu"], "trainer flag --strategy=tpu: the launcher sets --strategy=tpu"),
])
def test_flags_the_launcher_sets_are_refused(args: list[str], expected: str) -> None:
    assert_one_line_error(run_vertex(*BASE, *GPU, "--dry_run", *args), expected)


def test_trainer_flags_are_read_as_the_job_reads_them(tmp_path: Path) -> None:
    # From another folder: flagfiles are the repository's configs/, as in the image's /app.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--flagfile=configs/gpu_1x.cfg", "--data_dir=/gcs/my-bucket/records",
            "--model_dir=gs://my-bucket/runs/r1/model", "--v=1", "--alsologtostderr"]
    result = run_vertex(*BASE, *GPU, "--dry_run", "--", *args, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # Sent as given: the job resolves configs/ against its own copy.
    assert json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"][0]["containerSpec"][
        "args"] == args


def test_package_of_another_project_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "setup.py").write_text("import setuptools\nsetuptools.setup(name='other')\n")
    result = run_vertex(*BASE, "--dry_run", f"--package={tmp_path}",
                        "--staging_bucket=gs://my-bucket/s", "--", DATA)
    assert_one_line_error(result, f"--package={tmp_path} has no trainer.main: give the path of "
                                  f"this repository")


def test_launchers_import_no_tensorflow() -> None:
    # The trainer-flag check included: it must answer in a moment, not after TF's import.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "launch.vertex", *BASE, *GPU, "--dry_run",
         "--", "--flagfile=configs/gpu_1x.cfg", DATA],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "trainer.config" in result.stderr  # The import log is there,
    assert "tensorflow" not in result.stderr  # and TF is not in it.


def test_help_documents_every_flag() -> None:
    result = run_vertex("--help")  # absl exits 1 after printing the help.
    assert "Traceback" not in result.stderr
    for name in ("project", "region", "image_uri", "output_dir", "display_name", "machine_type",
                 "accelerator_type", "accelerator_count", "tpu_topology", "replica_count",
                 "package", "staging_bucket", "api_endpoint", "dry_run"):
        assert f"--{name}" in result.stdout, name


def test_no_credentials_is_a_one_line_error(tmp_path: Path) -> None:
    env = hermetic_env(tmp_path, GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "missing.json"))
    # The endpoint is a closed local port: even found credentials could not reach anything.
    result = run_vertex(*BASE, *GPU, "--api_endpoint=http://127.0.0.1:9", env=env)
    assert_one_line_error(result, "no Google Cloud credentials")
    assert "gcloud auth application-default login" in result.stderr


# ---- Real submissions, to a fake Vertex AI on 127.0.0.1. ----


def test_submit_prints_the_job_name_and_console_link(fake_vertex: tuple[FakeVertex, dict]) -> None:
    server, env = fake_vertex
    result = run_vertex(*BASE, *GPU, f"--api_endpoint={server.url}", "--",
                        "--data_dir=gs://my-bucket/records", env=env)

    assert result.returncode == 0, result.stderr
    (request,) = server.requests
    assert request["path"] == "/v1/projects/my-project/locations/us-central1/customJobs"
    assert request["authorization"] == "Bearer fake-token"
    assert request["body"] == dry_run_job(*GPU, "--", "--data_dir=gs://my-bucket/records")
    assert result.stdout.splitlines() == [
        "submitted projects/123/locations/us-central1/customJobs/456",
        "https://console.cloud.google.com/vertex-ai/locations/us-central1/training/456"
        "?project=my-project",
    ]


def test_rejected_job_is_a_one_line_error(fake_vertex: tuple[FakeVertex, dict]) -> None:
    server, env = fake_vertex
    server.reply = (400, {"error": {"code": 400, "message": "Machine type\n is not supported.",
                                    "status": "INVALID_ARGUMENT"}})
    result = run_vertex(*BASE, *GPU, f"--api_endpoint={server.url}", env=env)
    assert_one_line_error(
        result, "Vertex AI rejected the job (HTTP 400): Machine type is not supported.")


def test_package_is_uploaded_and_run_from_the_staging_bucket(
        gcs_emulator: Any, fake_vertex: tuple[FakeVertex, dict]) -> None:
    server, env = fake_vertex
    env.update(gcs_emulator.storage_env)
    staging = f"gs://{gcs_emulator.bucket}/staging"
    args = [*BASE, f"--package={REPO}", f"--staging_bucket={staging}",
            f"--api_endpoint={server.url}", "--", "--model=resnet50", DATA]
    result = run_vertex(*args, env=env)
    assert result.returncode == 0, result.stderr

    (name,) = gcs_emulator.list_objects("staging/")
    assert re.fullmatch(r"staging/test-job/seedlings-[\d.]+\.tar\.gz", name)
    spec = server.requests[0]["body"]["jobSpec"]["workerPoolSpecs"][0]["pythonPackageSpec"]
    assert spec["packageUris"] == [f"gs://{gcs_emulator.bucket}/{name}"]
    # What Vertex would pip-install: the sdist of this repository, trainer included.
    uploaded = gcs_emulator.read_object(name)
    with tarfile.open(fileobj=io.BytesIO(uploaded)) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    assert {"setup.py", "trainer/main.py", "input_pipeline/__init__.py"} <= members

    # The same job name again would replace the code the first job (maybe still queued) runs.
    again = run_vertex(*args, env=env)
    assert_one_line_error(again, f"gs://{gcs_emulator.bucket}/{name} already exists")
    assert "choose another --display_name" in again.stderr
    assert len(server.requests) == 1 and gcs_emulator.read_object(name) == uploaded


def test_package_of_a_rejected_job_is_deleted(gcs_emulator: Any,
                                              fake_vertex: tuple[FakeVertex, dict]) -> None:
    server, env = fake_vertex
    env.update(gcs_emulator.storage_env)
    server.reply = (400, {"error": {"message": "Quota exceeded."}})
    result = run_vertex(*BASE, f"--package={REPO}",
                        f"--staging_bucket=gs://{gcs_emulator.bucket}/rejected",
                        f"--api_endpoint={server.url}", "--", DATA, env=env)
    assert_one_line_error(result, "Vertex AI rejected the job (HTTP 400): Quota exceeded.")
    # No job will install it, and it would stop a retry under the same --display_name.
    assert gcs_emulator.list_objects("rejected/") == []



def test_upload_failure_is_a_one_line_error(gcs_emulator: Any, tmp_path: Path) -> None:
    env = hermetic_env(tmp_path, **gcs_emulator.storage_env)
    result = run_vertex(*BASE, f"--package={REPO}", "--staging_bucket=gs://no-such-bucket/s",
                        "--api_endpoint=http://127.0.0.1:9", "--", DATA, env=env)
    assert_one_line_error(result, "uploading seedlings-")
    assert "gs://no-such-bucket/s/test-job/" in result.stderr and "404" in result.stderr
