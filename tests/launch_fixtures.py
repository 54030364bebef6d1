"""Pytest plugin: what the launcher tests run against, so that nothing reaches Google Cloud.

Real submissions go to a fake Vertex AI endpoint on 127.0.0.1 (with a throw-away
service-account key whose token URI is that fake too); `gcloud` is a stub on PATH that
records its arguments; the launchers run in an environment without Google credentials or
config. Uploads go to the shared fake-gcs-server fixture (tests/gcs_fixtures.py).

Registered in `tests/conftest.py`; use the `fake_vertex` and `gcloud_stub` fixtures, and
run the launchers as a user does with `run_vertex` and `run_tpu_script`.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU_SCRIPT = REPO / "launch" / "tpu_vm.sh"
GPU_IMAGE = "us-central1-docker.pkg.dev/p/seedlings/trainer-gpu:abc"


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


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str,
                          prog: str = "launch.vertex", status: int = 1) -> None:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    assert expected in lines[0], lines[0]


# ---- A fake Vertex AI on 127.0.0.1. ----


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


# ---- A recording `gcloud` on PATH, for launch/tpu_vm.sh. ----


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
