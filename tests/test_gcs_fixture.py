"""Checks that the `gcs_emulator` fixture serves TensorFlow's own `gs://` client.

Every TF check runs in a subprocess, because TF's GCS filesystem reads its proxy,
CA and auth settings from the environment when it is first used in a process.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import ssl
import struct
import subprocess
import sys
import textwrap
import urllib.parse

import pytest

from tests.gcs_fixtures import GcsEmulator

# Generous per-subprocess limit: a hang should fail with diagnostics, not stall CI.
_TIMEOUT_S = 90


def run_python(gcs: GcsEmulator, code: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run `code` in a fresh interpreter with the emulator env; return its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env={**(env if env is not None else gcs.subprocess_env()), "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
    )
    if proc.returncode != 0:
        gcs.check_alive()
        pytest.fail(
            f"subprocess failed ({proc.returncode})\n--- stderr ---\n{proc.stderr[-6000:]}\n"
            + gcs.diagnostics()
        )
    return proc.stdout


def _prefix(gcs: GcsEmulator, gs_dir: str) -> str:
    """Object-name prefix (inside the bucket) of a `gs://bucket/...` directory."""
    return gs_dir.removeprefix(f"gs://{gcs.bucket}/")


def test_gfile_operations(gcs_emulator: GcsEmulator, gcs_dir: str) -> None:
    run_python(
        gcs_emulator,
        """
        import sys
        import tensorflow as tf

        d = sys.argv[1]
        gf = tf.io.gfile
        with gf.GFile(f"{d}/a.txt", "w") as f:
            f.write("alpha")
        with gf.GFile(f"{d}/b.bin", "wb") as f:
            f.write(b"\\x00\\x01" * 1000)
        gf.makedirs(f"{d}/sub/deeper")
        with gf.GFile(f"{d}/sub/c.txt", "w") as f:
            f.write("gamma")

        assert gf.exists(f"{d}/a.txt") and not gf.exists(f"{d}/nope.txt")
        assert gf.isdir(d) and gf.isdir(f"{d}/sub") and not gf.isdir(f"{d}/a.txt")
        assert gf.GFile(f"{d}/a.txt").read() == "alpha"
        assert gf.stat(f"{d}/b.bin").length == 2000
        # Quirk: on gs:// listdir reports sub-directories with a trailing "/".
        assert sorted(gf.listdir(d)) == ["a.txt", "b.bin", "sub/"], gf.listdir(d)
        assert sorted(gf.glob(f"{d}/*.txt")) == [f"{d}/a.txt"], gf.glob(f"{d}/*.txt")
        assert gf.glob(f"{d}/sub/*.txt") == [f"{d}/sub/c.txt"]

        # Rename is copy + delete on GCS (not atomic), for files and directories.
        gf.rename(f"{d}/a.txt", f"{d}/renamed.txt")
        assert not gf.exists(f"{d}/a.txt") and gf.GFile(f"{d}/renamed.txt").read() == "alpha"
        try:
            gf.rename(f"{d}/b.bin", f"{d}/renamed.txt", overwrite=False)
            raise SystemExit("rename over an existing file must fail without overwrite")
        except tf.errors.AlreadyExistsError:
            pass
        gf.rename(f"{d}/sub", f"{d}/moved")
        assert gf.GFile(f"{d}/moved/c.txt").read() == "gamma" and not gf.exists(f"{d}/sub/c.txt")

        gf.rmtree(d)
        assert not gf.exists(f"{d}/renamed.txt") and not gf.exists(f"{d}/moved/c.txt")
        print("ok")
        """,
        gcs_dir,
    )
    # rmtree really removed everything, markers included, on the server side.
    assert gcs_emulator.list_objects(_prefix(gcs_emulator, gcs_dir)) == []


def test_checkpoint_manager(gcs_emulator: GcsEmulator, gcs_dir: str) -> None:
    out = run_python(
        gcs_emulator,
        """
        import sys
        import tensorflow as tf

        d = sys.argv[1] + "/ckpt"
        v = tf.Variable(0.0)
        step = tf.Variable(0, dtype=tf.int64)
        ckpt = tf.train.Checkpoint(v=v, step=step)
        manager = tf.train.CheckpointManager(ckpt, d, max_to_keep=2)
        saved = []
        for i in range(1, 4):
            v.assign(float(i) * 1.5)
            step.assign(i)
            saved.append(manager.save(checkpoint_number=i))

        # Rotation: only the last two survive, and the first one's files are gone.
        assert manager.checkpoints == saved[1:], manager.checkpoints
        assert not tf.io.gfile.glob(saved[0] + ".*"), tf.io.gfile.glob(saved[0] + ".*")
        assert tf.train.latest_checkpoint(d) == saved[-1]

        # Restore into fresh objects, as a new process would.
        v2 = tf.Variable(-1.0)
        step2 = tf.Variable(-1, dtype=tf.int64)
        restored = tf.train.Checkpoint(v=v2, step=step2)
        manager2 = tf.train.CheckpointManager(restored, d, max_to_keep=2)
        status = restored.restore(manager2.latest_checkpoint)
        status.assert_existing_objects_matched()
        assert float(v2.numpy()) == 4.5 and int(step2.numpy()) == 3
        print(" ".join(sorted(tf.io.gfile.listdir(d))))
        """,
        gcs_dir,
    )
    names = out.split()
    assert "checkpoint" in names and "ckpt-3.index" in names and "ckpt-1.index" not in names


def test_summary_scalars(gcs_emulator: GcsEmulator, gcs_dir: str) -> None:
    out = run_python(
        gcs_emulator,
        """
        import sys
        import tensorflow as tf

        d = sys.argv[1] + "/logs/train"
        writer = tf.summary.create_file_writer(d)
        with writer.as_default():
            for step in range(3):
                tf.summary.scalar("loss", 1.0 / (step + 1), step=step)
        writer.close()

        files = tf.io.gfile.glob(d + "/events.out.tfevents.*")
        assert len(files) == 1, files
        values = {}
        for event in tf.compat.v1.train.summary_iterator(files[0]):
            for value in event.summary.value:
                if value.tag == "loss":
                    values[event.step] = float(tf.make_ndarray(value.tensor))
        expected = {0: 1.0, 1: 0.5, 2: 1.0 / 3}
        assert values.keys() == expected.keys(), values
        assert all(abs(values[k] - expected[k]) < 1e-6 for k in expected), values  # float32
        print("ok")
        """,
        gcs_dir,
    )
    assert out.strip().endswith("ok")


def test_resumable_upload_10mb(gcs_emulator: GcsEmulator, gcs_dir: str) -> None:
    size = 10 * 1024 * 1024
    body_bytes_before = gcs_emulator.proxy.request_body_bytes
    out = run_python(
        gcs_emulator,
        """
        import hashlib, sys
        import numpy as np
        import tensorflow as tf

        path, size = sys.argv[1], int(sys.argv[2])
        data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
        assert tf.io.gfile.stat(path).length == size
        with tf.io.gfile.GFile(path, "rb") as f:
            back = f.read()
        assert back == data
        print(hashlib.sha256(data).hexdigest())
        """,
        f"{gcs_dir}/big.bin",
        str(size),
    )
    blob = gcs_emulator.read_object(f"{_prefix(gcs_emulator, gcs_dir)}/big.bin")
    assert len(blob) == size
    assert hashlib.sha256(blob).hexdigest() == out.split()[-1]
    # The 10 MB PUT went straight to the emulator's http Location (no_proxy), not
    # through the TLS proxy: only the small session-creating requests did.
    assert gcs_emulator.proxy.request_body_bytes - body_bytes_before < 1024 * 1024


def test_google_cloud_storage_client(gcs_emulator: GcsEmulator, gcs_dir: str) -> None:
    prefix = _prefix(gcs_emulator, gcs_dir)
    out = run_python(
        gcs_emulator,
        """
        import sys
        from google.cloud import storage

        bucket_name, prefix = sys.argv[1], sys.argv[2]
        client = storage.Client()
        bucket = client.bucket(bucket_name)
        bucket.blob(f"{prefix}/hello.txt").upload_from_string(b"hi from gcs client")
        names = [b.name for b in client.list_blobs(bucket_name, prefix=prefix + "/")]
        assert names == [f"{prefix}/hello.txt"], names
        assert bucket.blob(f"{prefix}/hello.txt").download_as_bytes() == b"hi from gcs client"
        print("ok")
        """,
        gcs_emulator.bucket,
        prefix,
        env={**os.environ, **gcs_emulator.storage_env},  # storage_env alone is enough
    )
    assert out.strip().endswith("ok")
    assert gcs_emulator.list_objects(prefix) == [f"{prefix}/hello.txt"]


def _parse_tfrecords(blob: bytes) -> list[bytes]:
    """Decode TFRecord framing (u64 length, u32 crc, data, u32 crc) without TF."""
    records, pos = [], 0
    while pos < len(blob):
        (length,) = struct.unpack_from("<Q", blob, pos)
        records.append(blob[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
    return records


def test_tfrecords_cross_between_tf_and_emulator(gcs_emulator: GcsEmulator, gcs_dir: str) -> None:
    """TFRecords round-trip through TF, and the bytes really live in the emulator.

    One subprocess (TF import is the slow part) proves traffic in both directions:
    TF reads an object seeded directly into the emulator, and the TFRecord TF
    writes is listed and decoded straight from the emulator, without TF.
    """
    prefix = _prefix(gcs_emulator, gcs_dir)
    gcs_emulator.upload_object(f"{prefix}/seeded.txt", b"seeded by the test")
    forwarded_before = gcs_emulator.proxy.requests_forwarded
    rejected_before = len(gcs_emulator.proxy.rejected)
    out = run_python(
        gcs_emulator,
        """
        import sys
        import tensorflow as tf

        d = sys.argv[1]
        print(tf.io.gfile.GFile(f"{d}/seeded.txt", "rb").read().decode())
        records = [f"record-{i}".encode() * (i + 1) for i in range(200)]
        for name, options in [("plain.tfrecord", None), ("zipped.tfrecord.gz", "GZIP")]:
            with tf.io.TFRecordWriter(f"{d}/{name}", options=options) as w:
                for r in records:
                    w.write(r)
            ds = tf.data.TFRecordDataset(f"{d}/{name}", compression_type=options or "")
            got = [x.numpy() for x in ds]
            assert got == records, (name, len(got))
        """,
        gcs_dir,
    )
    assert out.strip() == "seeded by the test"
    assert gcs_emulator.list_objects(prefix) == [
        f"{prefix}/plain.tfrecord",
        f"{prefix}/seeded.txt",
        f"{prefix}/zipped.tfrecord.gz",
    ]
    blob = gcs_emulator.read_object(f"{prefix}/plain.tfrecord")
    assert _parse_tfrecords(blob) == [f"record-{i}".encode() * (i + 1) for i in range(200)]
    assert gcs_emulator.proxy.requests_forwarded > forwarded_before
    # TF never tried to tunnel anywhere but the googleapis hosts.
    assert gcs_emulator.proxy.rejected[rejected_before:] == []


def test_proxy_keep_alive_chunked_and_head(gcs_emulator: GcsEmulator, gcs_dir: str) -> None:
    """Several requests share one verified TLS tunnel; chunked bodies and HEAD are framed right."""
    prefix = _prefix(gcs_emulator, gcs_dir)
    ctx = ssl.create_default_context(cafile=gcs_emulator.tf_env["CURL_CA_BUNDLE"])
    conn = http.client.HTTPSConnection("127.0.0.1", gcs_emulator.proxy.port, context=ctx, timeout=10)
    conn.set_tunnel("www.googleapis.com", 443)  # cert is checked against this name
    tunnels_before = gcs_emulator.proxy.tunnels_opened
    try:
        name = urllib.parse.quote(f"{prefix}/chunked.bin", safe="")
        conn.request(
            "POST",
            f"/upload/storage/v1/b/{gcs_emulator.bucket}/o?uploadType=media&name={name}",
            body=iter([b"abc", b"defgh"]),  # sent as two chunks
            encode_chunked=True,
        )
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        resp.read()

        conn.request("GET", f"/{gcs_emulator.bucket}/{name}", headers={"Range": "bytes=2-5"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (206, b"cdef")

        conn.request("HEAD", f"/storage/v1/b/{gcs_emulator.bucket}/o/{name}")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b""

        conn.request("GET", f"/storage/v1/b/{gcs_emulator.bucket}/o/{name}?alt=media")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"abcdefgh")
    finally:
        conn.close()
    assert gcs_emulator.proxy.tunnels_opened - tunnels_before == 1


def test_proxy_refuses_other_hosts(gcs_emulator: GcsEmulator) -> None:
    """The proxy only tunnels to googleapis hosts, and never forwards plain requests."""
    request_line = "GET http://example.com/ HTTP/1.1"
    for request in (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"CONNECT www.googleapis.com:80 HTTP/1.1\r\nHost: www.googleapis.com:80\r\n\r\n",
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", gcs_emulator.proxy.port), timeout=5) as sock:
            sock.sendall(request)
            assert sock.recv(1024).startswith(b"HTTP/1.1 403"), request
    assert gcs_emulator.proxy.rejected[-3:] == ["example.com:443", "www.googleapis.com:80", request_line]


def test_env_is_loopback_only(gcs_emulator: GcsEmulator) -> None:
    """Every address the fixture hands out is on 127.0.0.1."""
    assert gcs_emulator.endpoint.startswith("http://127.0.0.1:")
    for key in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        assert gcs_emulator.tf_env[key].startswith("http://127.0.0.1:")
    assert gcs_emulator.storage_env["STORAGE_EMULATOR_HOST"] == gcs_emulator.endpoint
    assert os.path.isfile(gcs_emulator.tf_env["CURL_CA_BUNDLE"])
    assert "GCS_RESOLVE_REFRESH_SECS" not in gcs_emulator.subprocess_env()
