"""Loopback-only TLS-terminating CONNECT proxy and a throw-away test CA.

TensorFlow's GCS filesystem has its endpoints hard-coded to
`https://www.googleapis.com` and `https://storage.googleapis.com`, but its libcurl
honours `https_proxy` and `CURL_CA_BUNDLE`. This proxy accepts `CONNECT` only for
those hosts, terminates TLS with a leaf certificate signed by a test CA made at
runtime, and forwards each HTTP request in plain HTTP to a GCS emulator on
127.0.0.1. It never opens a connection to anything but the emulator.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

GOOGLE_API_HOSTS: tuple[str, ...] = ("www.googleapis.com", "storage.googleapis.com")

# Hop-by-hop headers (RFC 9110 7.6.1) plus framing headers that the proxy recomputes,
# because it de-chunks bodies and re-frames them with Content-Length.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
    }
)
_MAX_LINE = 65536
# TF 2.21 asks for a bucket's storage layout before renaming a directory (to
# use the hierarchical-namespace folder API); fake-gcs-server has no such route.
_STORAGE_LAYOUT = re.compile(r"^/storage/v1/b/(?P<bucket>[^/?]+)/storageLayout(?:\?.*)?$")
_MAX_HEADER_BYTES = 65536


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throw-away CA and a server certificate signed by it."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_test_tls_files(out_dir: Path, hosts: tuple[str, ...] = GOOGLE_API_HOSTS) -> TlsFiles:
    """Create a test CA and a leaf certificate for `hosts` in `out_dir`.

    EC P-256 keys because they are generated in milliseconds; the CA lives one day
    so a leaked file is useless soon after the test run.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    # Backdate a little: clock skew between cert creation and curl's check must not matter.
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "seedlings test CA (throw-away)")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(
        ca_cert=out_dir / "test-ca.pem",
        server_cert=out_dir / "server-cert.pem",
        server_key=out_dir / "server-key.pem",
    )
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.server_key.chmod(0o600)
    return files


class _BadRequest(Exception):
    """The client sent something this proxy will not parse."""


def _read_connect_head(sock: socket.socket) -> bytes:
    """Read the CONNECT request head byte-exactly.

    A buffered reader could swallow the first bytes of the TLS ClientHello, so read
    with recv until the blank line and insist that nothing follows it.
    """
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise _BadRequest("client closed before CONNECT head")
        buf += chunk
        if len(buf) > _MAX_HEADER_BYTES:
            raise _BadRequest("CONNECT head too large")
    head, _, rest = buf.partition(b"\r\n\r\n")
    if rest:
        raise _BadRequest("data sent before the tunnel was established")
    return head


def _read_chunked(rfile: BinaryIO) -> bytes:
    """Read a chunked request body (trailers are read and dropped)."""
    parts: list[bytes] = []
    while True:
        line = rfile.readline(_MAX_LINE)
        if not line:
            raise _BadRequest("EOF in chunk size")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        data = rfile.read(size)
        if len(data) != size:
            raise _BadRequest("EOF in chunk data")
        parts.append(data)
        rfile.readline(_MAX_LINE)  # CRLF after the chunk
    while True:  # trailers end with an empty line
        line = rfile.readline(_MAX_LINE)
        if line in (b"\r\n", b"\n", b""):
            break
    return b"".join(parts)


class TlsTerminatingProxy:
    """A bounded, thread-per-connection CONNECT proxy for `GOOGLE_API_HOSTS`.

    Every tunnelled request goes to `http://upstream_host:upstream_port` with `Host`
    rewritten to it; CONNECT to any other target and plain proxy requests get 403,
    so a test can never leak traffic off loopback through this proxy.
    """

    def __init__(
        self,
        upstream_port: int,
        tls: TlsFiles,
        *,
        upstream_host: str = "127.0.0.1",
        allowed_hosts: tuple[str, ...] = GOOGLE_API_HOSTS,
        max_connections: int = 32,
        idle_timeout: float = 30.0,
    ) -> None:
        if not ipaddress.ip_address(upstream_host).is_loopback:
            raise ValueError(f"upstream must be a loopback address, got {upstream_host}")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.allowed_hosts = frozenset(allowed_hosts)
        self.idle_timeout = idle_timeout
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self._ssl.load_cert_chain(str(tls.server_cert), str(tls.server_key))
        # Offer only HTTP/1.1, so curl never tries HTTP/2 inside the tunnel.
        self._ssl.set_alpn_protocols(["http/1.1"])
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._active: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.port = 0
        # Counters for tests and for diagnosing a failing run.
        self.tunnels_opened = 0
        self.requests_forwarded = 0
        self.request_body_bytes = 0
        self.rejected: list[str] = []
        self.errors: list[str] = []
        # Last requests as "METHOD target -> status (ms)", printed when a test fails.
        self.recent: deque[str] = deque(maxlen=100)
        # Requests answered by a shim because the emulator lacks the endpoint.
        self.shimmed = 0

    @property
    def url(self) -> str:
        """Value for `https_proxy`."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Bind a free loopback port and start accepting in a daemon thread."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))  # port 0: no race between xdist workers
        listener.listen(64)
        listener.settimeout(0.2)  # lets the accept loop notice stop()
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="gcs-proxy-accept", daemon=True)
        self._acceptor.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every open connection and join the threads."""
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            active = list(self._active)
            threads = list(self._threads)
        for sock in active:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(timeout)

    def __enter__(self) -> "TlsTerminatingProxy":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            # Take a slot before accepting: excess clients wait in the listen backlog
            # instead of spawning unbounded threads.
            if not self._slots.acquire(timeout=0.2):
                continue
            try:
                conn, _ = self._listener.accept()
            except (socket.timeout, OSError):
                self._slots.release()
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), name="gcs-proxy-conn", daemon=True)
            with self._lock:
                self._active.add(conn)
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        tls_conn: ssl.SSLSocket | None = None
        try:
            conn.settimeout(self.idle_timeout)
            # Without this, Nagle + the client's delayed ACK add ~40 ms to every
            # request (small response after the small TLS session-ticket write).
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            target = self._handshake_connect(conn)
            if target is None:
                return
            tls_conn = self._ssl.wrap_socket(conn, server_side=True)
            with self._lock:
                self._active.add(tls_conn)
            self._serve_tunnel(tls_conn)
        except Exception as exc:  # noqa: BLE001 - one bad connection must not kill the proxy
            if not self._stop.is_set():
                self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._active.discard(conn)
                if tls_conn is not None:
                    self._active.discard(tls_conn)
                self._threads.discard(threading.current_thread())
            for sock in (tls_conn, conn):
                if sock is not None:
                    try:
                        sock.close()
                    except OSError:
                        pass
            self._slots.release()

    def _handshake_connect(self, conn: socket.socket) -> str | None:
        """Answer the CONNECT; return the target or None if it was refused."""
        head = _read_connect_head(conn).decode("latin-1")
        request_line = head.split("\r\n", 1)[0]
        parts = request_line.split()
        if len(parts) != 3 or parts[0].upper() != "CONNECT":
            self.rejected.append(request_line)
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return None
        host, _, port = parts[1].rpartition(":")
        if host.lower() not in self.allowed_hosts or port != "443":
            self.rejected.append(parts[1])
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return None
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        with self._lock:
            self.tunnels_opened += 1
        return parts[1]

    def _serve_tunnel(self, tls_conn: ssl.SSLSocket) -> None:
        """Serve keep-alive HTTP/1.1 requests arriving inside the TLS tunnel."""
        rfile = tls_conn.makefile("rb")
        upstream = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=120)
        try:
            while not self._stop.is_set():
                try:
                    line = rfile.readline(_MAX_LINE)
                except TimeoutError:
                    return  # an idle keep-alive connection is not an error
                if not line or line in (b"\r\n", b"\n"):
                    return  # client closed the keep-alive connection
                method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
                headers = http.client.parse_headers(rfile)
                if headers.get("Expect", "").lower() == "100-continue":
                    # curl waits (up to 1 s) for this before sending large bodies.
                    tls_conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body: bytes | None = None
                if "chunked" in headers.get("Transfer-Encoding", "").lower():
                    body = _read_chunked(rfile)
                elif headers.get("Content-Length") is not None:
                    length = int(headers["Content-Length"])
                    body = rfile.read(length)
                    if len(body) != length:
                        raise _BadRequest("EOF in request body")
                out_headers = [(k, v) for k, v in headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}]
                started = time.monotonic()
                status, reason, resp_headers, resp_body = self._forward(upstream, method, target, out_headers, body)
                if status == 404 and method.upper() == "GET":
                    status, reason, resp_headers, resp_body = self._shim_storage_layout(
                        upstream, target, out_headers, (status, reason, resp_headers, resp_body)
                    )
                with self._lock:
                    self.requests_forwarded += 1
                    self.request_body_bytes += len(body or b"")
                    self.recent.append(f"{method} {target} -> {status} ({(time.monotonic() - started) * 1000:.0f} ms)")

                conn_tokens = headers.get("Connection", "").lower()
                close = "close" in conn_tokens or (version == "HTTP/1.0" and "keep-alive" not in conn_tokens)
                lines = [f"HTTP/1.1 {status} {reason}"]
                upstream_length: str | None = None
                for k, v in resp_headers:
                    if k.lower() == "content-length":
                        upstream_length = v
                    if k.lower() not in _HOP_BY_HOP:
                        lines.append(f"{k}: {v}")
                if method.upper() == "HEAD":
                    # A HEAD response advertises the GET length but carries no body.
                    if upstream_length is not None:
                        lines.append(f"Content-Length: {upstream_length}")
                    resp_body = b""
                elif status in (204, 304) or 100 <= status < 200:
                    resp_body = b""
                else:
                    lines.append(f"Content-Length: {len(resp_body)}")
                if close:
                    lines.append("Connection: close")
                tls_conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + resp_body)
                if close:
                    return
        finally:
            upstream.close()
            rfile.close()

    def _shim_storage_layout(
        self,
        upstream: http.client.HTTPConnection,
        target: str,
        headers: list[tuple[str, str]],
        original: tuple[int, str, list[tuple[str, str]], bytes],
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Answer `GET .../storageLayout` for an existing bucket as a flat (non-HNS) bucket.

        Only used when the emulator itself returned 404, so an emulator that learns
        this endpoint takes over. TF then falls back to per-object rename.
        """
        match = _STORAGE_LAYOUT.match(target)
        if not match:
            return original
        bucket = match.group("bucket")
        status, _, _, meta = self._forward(upstream, "GET", f"/storage/v1/b/{bucket}", headers, None)
        if status != 200:
            return original
        location = json.loads(meta or b"{}").get("location", "US-CENTRAL1")
        layout = {
            "kind": "storage#storageLayout",
            "bucket": urllib.parse.unquote(bucket),
            "location": location,
            "locationType": "region",
            "hierarchicalNamespace": {"enabled": False},
        }
        with self._lock:
            self.shimmed += 1
        return 200, "OK", [("Content-Type", "application/json; charset=utf-8")], json.dumps(layout).encode()

    def _forward(
        self,
        upstream: http.client.HTTPConnection,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send one request to the emulator and read the whole response."""
        for attempt in range(2):
            try:
                upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                upstream.putheader("Host", f"{self.upstream_host}:{self.upstream_port}")
                for k, v in headers:
                    upstream.putheader(k, v)
                if body is not None:
                    upstream.putheader("Content-Length", str(len(body)))
                upstream.endheaders(body)
                resp = upstream.getresponse()
                # http.client handles chunked / content-length / close framing for us.
                data = resp.read()
                return resp.status, resp.reason, resp.getheaders(), data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A stale keep-alive connection to the emulator: reconnect once.
                upstream.close()
                if attempt == 1:
                    raise
            except (ConnectionRefusedError, socket.timeout) as exc:
                upstream.close()
                msg = f"emulator unreachable: {exc}".encode()
                return 502, "Bad Gateway", [("Content-Type", "text/plain")], msg
        raise AssertionError("unreachable")
