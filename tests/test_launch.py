"""Cloud launchers, run as a user runs them: `python -m launch.vertex` and `launch/tpu_vm.sh`.

Nothing here reaches Google Cloud. Dry runs print the request; real submissions go to a
fake Vertex AI endpoint on 127.0.0.1 (with a throw-away service-account key whose token
URI is that fake too); uploads go to the shared fake-gcs-server fixture; `gcloud` is a
stub on PATH that records its arguments.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launch import trainer_args

REPO = Path(__file__).resolve().parents[1]
TPU_SCRIPT = REPO / "launch" / "tpu_vm.sh"
BASE = ["--project=my-project", "--region=us-central1", "--output_dir=gs://my-bucket/runs/r1",
        "--display_name=test-job"]
GPU_IMAGE = "us-central1-docker.pkg.dev/p/seedlings/trainer-gpu:abc"
# Values for the shell variables used in the documented commands.
DOC_VARS = {"PROJECT": "my-project", "REGION": "us-central1", "ZONE": "us-west4-a",
            "BUCKET": "gs://my-bucket", "IMAGE": GPU_IMAGE,
            "TPU_IMAGE": "us-central1-docker.pkg.dev/p/seedlings/tpu:abc"}


def hermetic_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """os.environ without any Google credentials or config, and no route to a metadata server."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GOOGLE_", "CLOUDSDK_", "STORAGE_EMULATOR"))}
    env.update(CLOUDSDK_CONFIG=str(tmp_path / "gcloud-config"), NO_GCE_CHECK="true",
               GCE_METADATA_IP="127.0.0.1:9", GCE_METADATA_HOST="127.0.0.1:9",
               no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    env.update(extra)
    return env


def run_vertex(*args: str, env: dict[str, str] | None = None,
               cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launch.vertex", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def dry_run_job(*args: str) -> dict[str, Any]:
    result = run_vertex(*BASE, "--dry_run", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str,
                          prog: str = "launch.vertex", status: int = 1) -> None:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    assert expected in lines[0], lines[0]


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


class FakeVertex(http.server.ThreadingHTTPServer):
    """Answers the OAuth token exchange and records `customJobs.create` requests."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeVertexHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.requests: list[dict[str, Any]] = []
        self.reply: tuple[int, dict[str, Any]] = (
            200, {"name": "projects/123/locations/us-central1/customJobs/456"})


class _FakeVertexHandler(http.server.BaseHTTPRequestHandler):
    server: FakeVertex

    def do_POST(self) -> None:  # noqa: N802 (the http.server naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/token":
            status, payload = 200, {"access_token": "fake-token", "token_type": "Bearer",
                                    "expires_in": 3600}
        else:
            self.server.requests.append({"path": self.path, "body": json.loads(body),
                                         "authorization": self.headers.get("Authorization")})
            status, payload = self.server.reply
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def private_key_pem() -> str:
    """A throw-away RSA key, made once: generating one costs more than a launcher run."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture
def fake_vertex(tmp_path: Path,
                private_key_pem: str) -> Iterator[tuple[FakeVertex, dict[str, str]]]:
    """The fake server, and an environment whose ADC is a key that trades tokens with it."""
    server = FakeVertex()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    key_file = tmp_path / "service-account.json"
    key_file.write_text(json.dumps({
        "type": "service_account", "project_id": "p", "private_key_id": "test",
        "private_key": private_key_pem,
        "client_email": "trainer@p.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": f"{server.url}/token",
    }))
    try:
        yield server, hermetic_env(tmp_path, GOOGLE_APPLICATION_CREDENTIALS=str(key_file))
    finally:
        server.shutdown()
        server.server_close()


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

# ---- launch/tpu_vm.sh, with a recording `gcloud` stub on PATH. ----


@pytest.fixture
def gcloud_stub(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose `gcloud` logs its arguments; FAKE_* choose its answers."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "gcloud.log"
    stub = bin_dir / "gcloud"
    stub.write_text('#!/usr/bin/env bash\n'
                    'printf "%s\\0" "$@" >> "$GCLOUD_LOG"; echo >> "$GCLOUD_LOG"\n'
                    'case " $* " in\n'
                    '  *" describe "*) echo "${FAKE_DESCRIBE_OUT:-}"; '
                    'exit "${FAKE_DESCRIBE_RC:-1}" ;;\n'
                    '  *trainer.main*) exit "${FAKE_TRAIN_RC:-0}" ;;\n'
                    'esac\n')
    stub.chmod(0o755)
    env = hermetic_env(tmp_path, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                       GCLOUD_LOG=str(log), TMPDIR=str(tmp_path),
                       PYTHON=sys.executable)  # The script checks the trainer flags with it.
    return env, log


def gcloud_calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split("\0")[:-1] for line in log.read_text().splitlines() if line]


def run_tpu_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(TPU_SCRIPT), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


TPU_ARGS = ["--project=my-project", "--zone=us-west4-a", "--name=v5e",
            "--accelerator_type=v5litepod-8", "--version=v2-alpha-tpuv5-lite"]
MODEL_DIR = "--model_dir=gs://my-bucket/runs/v5e"
WHERE = ["--zone=us-west4-a", "--project=my-project"]


def test_tpu_script_dry_run_prints_the_gcloud_commands(gcloud_stub: tuple[dict, Path],
                                                       tmp_path: Path) -> None:
    env, log = gcloud_stub
    result = run_tpu_script(*TPU_ARGS, "--delete", "--dry_run", "--",
                            "--flagfile=configs/tpu_v5e_8.cfg",
                            "--data_dir=gs://my-bucket/my records", MODEL_DIR, env=env)
    assert result.returncode == 0, result.stderr
    assert gcloud_calls(log) == []  # Printed, never run.

    create, pack, scp, install, train, delete = map(shlex.split, result.stdout.splitlines())
    tpu_vm = ["gcloud", "compute", "tpus", "tpu-vm"]
    assert create == [*tpu_vm, "create", "v5e", *WHERE, "--accelerator-type=v5litepod-8",
                      "--version=v2-alpha-tpuv5-lite"]
    archive = str(tmp_path / "seedlings-v5e.tgz")
    assert pack[:3] == ["tar", "-czf", archive] and "configs" in pack and "trainer" in pack
    assert scp == [*tpu_vm, "scp", archive, "v5e:seedlings.tgz", "--worker=all", *WHERE]
    assert install[:6] == [*tpu_vm, "ssh", "v5e"] and "--worker=all" in install
    assert "'./seedlings[tpu]' -f https://storage.googleapis.com/libtpu-tf-releases/index.html" \
        in install[-1]
    assert train[:6] == [*tpu_vm, "ssh", "v5e"] and "--worker=all" in train
    remote = train[-1].removeprefix("--command=")
    # The remote shell gets the trainer flags back exactly, spaces included.
    assert shlex.split(remote) == [
        "cd", "seedlings", "&&", "python3", "-m", "trainer.main", "--strategy=tpu", "--tpu=local",
        "--flagfile=configs/tpu_v5e_8.cfg", "--data_dir=gs://my-bucket/my records", MODEL_DIR]
    assert delete == [*tpu_vm, "delete", "v5e", *WHERE, "--quiet"]


def test_tpu_script_creates_installs_trains_and_deletes(gcloud_stub: tuple[dict, Path],
                                                        tmp_path: Path) -> None:
    env, log = gcloud_stub
    result = run_tpu_script(*TPU_ARGS, "--delete", "--", "--model=resnet50", MODEL_DIR, env=env)
    assert result.returncode == 0, result.stderr

    verbs = [call[3] for call in gcloud_calls(log)]
    assert verbs == ["describe", "create", "scp", "ssh", "ssh", "delete"]
    with tarfile.open(tmp_path / "seedlings-v5e.tgz") as archive:
        names = set(archive.getnames())
    assert {"setup.py", "trainer/main.py", "configs/tpu_v5e_8.cfg"} <= names
    assert not any("__pycache__" in n for n in names)


def test_tpu_script_reuses_an_existing_vm_and_keeps_it(gcloud_stub: tuple[dict, Path]) -> None:
    env, log = gcloud_stub
    result = run_tpu_script(*TPU_ARGS, "--", MODEL_DIR,
                            env={**env, "FAKE_DESCRIBE_RC": "0",
                                 "FAKE_DESCRIBE_OUT": "v5litepod-8"})
    assert result.returncode == 0, result.stderr
    assert [call[3] for call in gcloud_calls(log)] == ["describe", "scp", "ssh", "ssh"]


def test_tpu_script_refuses_an_existing_vm_of_another_type(gcloud_stub: tuple[dict, Path]) -> None:
    env, log = gcloud_stub
    result = run_tpu_script(*TPU_ARGS, "--delete", "--", MODEL_DIR,
                            env={**env, "FAKE_DESCRIBE_RC": "0", "FAKE_DESCRIBE_OUT": "v4-8"})
    assert_one_line_error(result, "TPU VM v5e already exists as a v4-8, not v5litepod-8: use "
                                  "another --name, or --accelerator_type=v4-8", "tpu_vm.sh", 2)
    # Neither used nor deleted: it is someone's VM.
    assert [call[3] for call in gcloud_calls(log)] == ["describe"]


def test_tpu_script_deletes_the_vm_when_training_fails(gcloud_stub: tuple[dict, Path]) -> None:
    env, log = gcloud_stub
    result = run_tpu_script(*TPU_ARGS, "--delete", "--", MODEL_DIR,
                            env={**env, "FAKE_TRAIN_RC": "3"})
    assert result.returncode == 3
    assert [call[3] for call in gcloud_calls(log)][-2:] == ["ssh", "delete"]


TPU_WHERE = ["--project=my-project", "--zone=us-west4-a"]


@pytest.mark.parametrize("args, expected", [
    (["--zone=us-west4-a", "--", MODEL_DIR], "--project is required"),
    (["--project=", "--zone=us-west4-a", "--", MODEL_DIR], "--project is required"),
    (["--project=my-project", "--", MODEL_DIR], "--zone is required"),
    (["--project"], "--project needs a value"),
    (["--project", "--zone=us-west4-a"], "--project needs a value"),
    (["--project=my project", "--zone=us-west4-a", "--", MODEL_DIR],
     "--project=my project is not a project ID (6-30 lowercase"),
    ([*TPU_WHERE, "--zone=us west", "--", MODEL_DIR], "--zone=us west is not a zone like us-west4"),
    ([*TPU_WHERE, "--name=Bad_Name", "--", MODEL_DIR], "--name=Bad_Name is not a TPU name (up to"),
    ([*TPU_WHERE, "--name=" + "a" * 64, "--", MODEL_DIR], "is not a TPU name"),
    ([*TPU_WHERE, "--accelerator_type=garbage", "--", MODEL_DIR],
     "--accelerator_type=garbage is not a TPU type like v5litepod-8"),
    ([*TPU_WHERE, "--version=a b", "--", MODEL_DIR], "--version=a b is not a TPU software version"),
    ([*TPU_WHERE, "--model=resnet50"], "unknown argument --model=resnet50 (trainer flags go after"),
    ([*TPU_WHERE, "stray", "--", MODEL_DIR], "unknown argument stray"),
    # The trainer flags: the same check as launch.vertex's, and --model_dir must be gs://.
    ([*TPU_WHERE], "trainer flag --model_dir is required here"),
    ([*TPU_WHERE, "--", "--model_dir=/tmp/run"],
     "trainer flag --model_dir=/tmp/run: must be gs://BUCKET/PATH (the job's machines cannot"),
    ([*TPU_WHERE, "--", MODEL_DIR, "--data_dir=/data/records"],
     "trainer flag --data_dir=/data/records: must be gs://BUCKET/PATH"),
    ([*TPU_WHERE, "--", MODEL_DIR, "--data_dir=gs://b b/r"], "'b b' is not a bucket name"),
    ([*TPU_WHERE, "--", MODEL_DIR, "--bogus=1"], "trainer flag --bogus=1: trainer.main has no"),
    ([*TPU_WHERE, "--", MODEL_DIR, "--image_size=100000"],
     "trainer flag --image_size=100000: 100000 is not an integer in the range [32, 2048]"),
    ([*TPU_WHERE, "--", MODEL_DIR, "--learning_rate=nan"], "trainer flag --learning_rate=nan: "),
    ([*TPU_WHERE, "--", MODEL_DIR, "--strategy=mirrored"],
     "trainer flag --strategy=mirrored: the launcher sets --strategy=tpu for this hardware"),
    ([*TPU_WHERE, "--", MODEL_DIR, "--flagfile=configs/nope.cfg"],
     "trainer flag --flagfile=configs/nope.cfg: there is no file"),
])
def test_tpu_script_bad_input_is_a_one_line_error(args: list[str], expected: str,
                                                  gcloud_stub: tuple[dict, Path]) -> None:
    env, log = gcloud_stub
    result = run_tpu_script(*args, env=env)  # Not a dry run: the stub would record a create.
    assert_one_line_error(result, expected, "tpu_vm.sh", 2)
    assert result.stdout == ""
    assert gcloud_calls(log) == []


def test_tpu_script_without_a_usable_python_is_a_one_line_error(
        gcloud_stub: tuple[dict, Path], tmp_path: Path) -> None:
    env, log = gcloud_stub
    args = [*TPU_WHERE, "--", MODEL_DIR]
    result = run_tpu_script(*args, env={**env, "PYTHON": str(tmp_path / "no-python")})
    assert_one_line_error(result, f"no {tmp_path / 'no-python'} to check the trainer flags with",
                          "tpu_vm.sh", 2)
    # A Python without this repository's requirements (-S: no site-packages, so no absl).
    bare = tmp_path / "bare-python"
    bare.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S "$@"\n')
    bare.chmod(0o755)
    result = run_tpu_script(*args, env={**env, "PYTHON": str(bare)})
    assert_one_line_error(result, f"{bare} could not check the trainer flags "
                                  f"(ModuleNotFoundError: No module named 'absl')", "tpu_vm.sh", 2)
    assert gcloud_calls(log) == []


# ---- Dockerfiles. ----


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with `\\` continuations joined and comments dropped."""
    logical = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), " ".join(arguments.split())))
    return pairs


@pytest.mark.parametrize("name, extra, find_links", [
    ("Dockerfile", "gpu", None),
    ("Dockerfile.tpu", "tpu", "https://storage.googleapis.com/libtpu-tf-releases/index.html"),
])
def test_dockerfile(name: str, extra: str, find_links: str | None) -> None:
    instructions = dockerfile_instructions(REPO / "launch" / name)
    setup_py = (REPO / "setup.py").read_text()

    (base,) = [args for op, args in instructions if op == "FROM"]
    # Pinned to an exact Python release that setup.py's python_requires accepts.
    match = re.fullmatch(r"python:3\.(\d+)\.\d+-slim-\w+", base)
    assert match and int(match[1]) >= 10, base

    runs = [args for op, args in instructions if op == "RUN"]
    installs = [r for r in runs if f'pip install ".[{extra}]"' in r]
    assert installs, runs
    assert f'"{extra}": [' in setup_py
    if find_links:
        assert f"-f {find_links}" in installs[0]
    assert any("pip install --no-deps --force-reinstall ." in r for r in runs)

    copies = [args for op, args in instructions if op == "COPY"]
    for folder in ("input_pipeline", "trainer", "launch", "configs"):
        assert f"{folder}/ {folder}/" in copies, folder
    assert ("WORKDIR", "/app") in instructions  # configs/ resolves against it.
    (entrypoint,) = [args for op, args in instructions if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["python", "-m", "trainer.main"]


# ---- Flagfiles. ----

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.cfg"))


def test_the_checked_flags_are_the_trainers() -> None:
    # The launchers' check names these; a rename in trainer/config.py must show up here.
    names = set(trainer_args.trainer_flag_values())
    assert {*trainer_args.SHARED_PATH_FLAGS, "strategy", "tpu"} <= names


def test_every_config_is_there() -> None:
    assert CONFIGS == ["cpu_demo.cfg", "gpu_1x.cfg", "gpu_8x.cfg", "gpu_multiworker.cfg",
                       "tpu_v5e_8.cfg"]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_a_flagfile_of_trainer_flags(name: str) -> None:
    path = REPO / "configs" / name
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# "), "start with a header: what hardware, how to run"
    settings = [line for line in lines if line.strip() and not line.startswith("#")]
    for line in settings:
        assert re.fullmatch(r"--[a-z_]+=\S+", line), line
    # Hardware flags come from the launchers; here they would defeat launch.vertex's check.
    assert not any(line.startswith(("--strategy=", "--tpu=")) for line in settings)

    # As the launchers read it: unknown flags or bad values raise.
    fv = trainer_args.check([f"--flagfile=configs/{name}"], trainer_args.Target())
    if name == "cpu_demo.cfg":
        assert (fv.model, fv.width, fv.mixed_precision) == ("resnet18", 16, "float32")
        assert 64 <= fv.image_size <= 96 and fv.batch_size == 64 and 0 < fv.train_steps <= 5000
        assert fv.cache_decoded  # the demo's data set fits in memory many times over
    else:
        assert (fv.model, fv.image_size, fv.optimizer) == ("resnet50", 224, "sgd")
        tpu = name.startswith("tpu")
        assert fv.mixed_precision == ("mixed_bfloat16" if tpu else "mixed_float16")
        replicas = {"gpu_1x.cfg": 1, "gpu_8x.cfg": 8, "gpu_multiworker.cfg": 8, "tpu_v5e_8.cfg": 8}
        assert fv.batch_size == 128 * replicas[name]
        assert fv.label_smoothing == 0.1 and fv.weight_decay == 1e-3


# ---- The documented commands run (as dry runs). ----


def documented_commands(text: str, program: str) -> list[str]:
    """Shell commands starting with `program` in `text`, comment markers and `\\` joined."""
    text = re.sub(r"^#\s{0,3}", "", text, flags=re.M)  # flagfile headers are comments
    text = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in text.splitlines() if line.strip().startswith(program)]


def run_documented(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    prelude = "".join(f"{k}={shlex.quote(v)}; " for k, v in DOC_VARS.items())
    # The README defines these two in its code block.
    prelude += 'COMMON="--project=$PROJECT --region=$REGION"; DATA=$BUCKET/seedlings/records; '
    command = command.replace("python -m launch.vertex",
                              f"{sys.executable} -m launch.vertex --dry_run")
    command = command.replace("launch/tpu_vm.sh", "bash launch/tpu_vm.sh --dry_run")
    return subprocess.run(["bash", "-c", prelude + command], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_readme_commands_work(gcloud_stub: tuple[dict, Path]) -> None:
    env, log = gcloud_stub
    readme = (REPO / "README.md").read_text()
    assert "\n## Train on Vertex AI\n" in readme and "\n## Train on a TPU VM\n" in readme
    # The cloud sections: from "Train on Vertex AI" to the next section after the TPU VM one.
    text = readme.split("\n## Train on Vertex AI\n", 1)[1].split("\n## Tests\n", 1)[0]

    kinds = set()
    for command in documented_commands(text, "python -m launch.vertex"):
        result = run_documented(command, env)
        assert result.returncode == 0, (command, result.stderr)
        pools = json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"]
        spec = pools[0]["machineSpec"]
        kinds.add("package" if "pythonPackageSpec" in pools[0] else
                  "tpu" if "tpuTopology" in spec else f"{len(pools)} pools")
    assert kinds == {"1 pools", "2 pools", "tpu", "package"}

    scripts = documented_commands(text, "launch/tpu_vm.sh")
    assert len(scripts) == 2
    for command in scripts:
        result = run_documented(command, env)
        assert result.returncode == 0, (command, result.stderr)
        assert "trainer.main --strategy=tpu --tpu=local" in result.stdout.replace("\\ ", " ")
    assert gcloud_calls(log) == []


@pytest.mark.parametrize("name", [c for c in CONFIGS if c != "cpu_demo.cfg"])
def test_config_header_commands_work(name: str, gcloud_stub: tuple[dict, Path]) -> None:
    env, _ = gcloud_stub
    text = (REPO / "configs" / name).read_text()
    commands = documented_commands(text, "python -m launch.vertex")
    commands += documented_commands(text, "launch/tpu_vm.sh")
    assert commands, "the header should say how to run it"
    for command in commands:
        assert f"--flagfile=configs/{name}" in command
        result = run_documented(command, env)
        assert result.returncode == 0, (command, result.stderr)
