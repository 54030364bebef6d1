"""What a run of the command line leaves in its output folder when refused or stopped.

A gs:// folder is checked before any image is read and left clean; a run
stopped by Ctrl-C, SIGTERM or kill -9 leaves only complete shards.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import time

import pytest

from input_pipeline import records
from input_pipeline.conversion.options import ConversionError
from tests import image_fixtures as fx
from tests.conversion_fixtures import MODULE, REPO, TFDS_FILES, convert, shard_bytes


def test_gs_output_is_checked_at_start_up_and_left_clean(gcs_emulator, gcs_dir, tmp_path):
    # The emulator has one bucket: another name is a bucket that does not exist.
    images = fx.make_class_folders(str(tmp_path / "in"), {"A": 3, "B": 3}, size=(8, 8))
    # Its scan would fail: an error about the bucket shows it is checked first.
    scan_fails = fx.make_class_folders(str(tmp_path / "no_valid"), {"A": 2}, size=(8, 8))
    fx.not_an_image(str(tmp_path / "no_valid" / "B" / "0.png"))
    prefix = gcs_dir.removeprefix(f"gs://{gcs_emulator.bucket}/")
    gcs_emulator.upload_object(f"{prefix}/full/notes.txt", b"mine")
    outputs = {"missing bucket": f"gs://no-such-{gcs_emulator.bucket}/data",
               "not empty": f"{gcs_dir}/full", "good": f"{gcs_dir}/data"}
    processes = {
        name: subprocess.Popen(
            MODULE + [f"--input_dir={images if name == 'good' else scan_fails}",
                      f"--output_dir={out}", "--num_workers=1"],
            cwd=REPO, env=gcs_emulator.subprocess_env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        for name, out in outputs.items()
    }
    results = {name: p.communicate(timeout=300) + (p.returncode,) for name, p in processes.items()}

    for name, message in (("missing bucket", "bucket gs://no-such-"),
                          ("not empty", "is not empty; pass --overwrite")):
        _, stderr, returncode = results[name]
        assert returncode != 0 and "Traceback" not in stderr
        [line] = stderr.strip().splitlines()
        assert line.startswith(f"make_tfrecords: error: --output_dir={outputs[name]}")
        assert message in line
    assert gcs_emulator.list_objects(f"{prefix}/full") == [f"{prefix}/full/notes.txt"]
    _, stderr, returncode = results["good"]
    assert returncode == 0, stderr + gcs_emulator.diagnostics()
    info = json.loads(gcs_emulator.read_object(f"{prefix}/data/{records.INFO_FILE}"))
    expected = {records.INFO_FILE, records.LABELS_FILE, *TFDS_FILES}
    for split in records.SPLITS:
        n = info["splits"][split]["num_shards"]
        expected |= {records.shard_name(split, i, n) for i in range(n)}
    # No probe file of the start-up check, no temporary name, is left.
    written = {name.removeprefix(f"{prefix}/data/")
               for name in gcs_emulator.list_objects(f"{prefix}/data/")}
    assert written - {""} == expected


@pytest.fixture(scope="module")
def slow_input(tmp_path_factory):
    """Enough noise images that a run can be stopped inside its second shard."""
    root = tmp_path_factory.mktemp("slow")
    for i in range(60):
        fx.noise_png(str(root / "in" / "A" / f"{i}.png"), size=(256, 256), seed=i)
        fx.noise_png(str(root / "in" / "B" / f"{i}.png"), size=(256, 256), seed=1000 + i)
    reference = convert(root / "in", root / "reference", num_workers=1, num_shards=2)
    return root / "in", root / "reference", reference


def session_processes(session: int) -> list[int]:
    """The live (not zombie) processes of a session, from Linux's /proc."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                state, _, _, sid = f.read().rsplit(")", 1)[1].split()[:4]
        except OSError:  # ended meanwhile
            continue
        if int(sid) == session and state != "Z":
            found.append(int(stat.split("/")[2]))
    return found


@pytest.mark.parametrize(
    "stop, to_group, workers, left_behind",
    [
        # Ctrl-C (to the whole process group, workers included): the parent
        # removes the shard in progress and says so in one line.
        (signal.SIGINT, True, 2, []),
        # SIGTERM to the parent alone (kill PID): the same, and its workers
        # end with it rather than wait forever.
        (signal.SIGTERM, False, 2, []),
        # A hard kill cannot clean up: the shard in progress stays under its
        # temporary name, which no reader matches.
        (signal.SIGKILL, True, 1, [".tmp-train-00001-of-00002.tfrecord"]),
    ],
    ids=["ctrl-c", "sigterm", "kill"],
)
def test_stopped_run_leaves_no_shard_that_looks_complete(
    slow_input, tmp_path, stop, to_group, workers, left_behind
):
    src, reference_dir, reference = slow_input
    out = tmp_path / "out"
    process = subprocess.Popen(
        MODULE + [f"--input_dir={src}", f"--output_dir={out}", "--num_shards=2",
                  f"--num_workers={workers}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
        # As in a terminal: a runner started in the background (nohup, `&`)
        # ignores SIGINT, and a child would inherit that and never see Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 120
        while not (out / ".tmp-train-00001-of-00002.tfrecord").exists():
            assert process.poll() is None and time.time() < deadline, "run ended too soon"
            time.sleep(0.002)
        (os.killpg if to_group else os.kill)(process.pid, stop)  # inside the second shard
    finally:
        _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    deadline = time.time() + 10  # multiprocessing's resource tracker ends just after
    while session_processes(process.pid):
        assert time.time() < deadline, f"left running: {session_processes(process.pid)}"
        time.sleep(0.05)
    assert sorted(os.listdir(out)) == left_behind + ["train-00000-of-00002.tfrecord"]
    name = "train-00000-of-00002.tfrecord"
    assert (out / name).read_bytes() == (reference_dir / name).read_bytes()
    if stop != signal.SIGKILL:
        assert stderr.strip() == (
            "make_tfrecords: error: interrupted: complete shards are kept, "
            "records_info.json is not written"
        )
    with pytest.raises(ConversionError, match="not empty"):
        convert(src, out, num_workers=1, num_shards=2)
    rerun = convert(src, out, num_workers=1, num_shards=2, overwrite=True)
    assert rerun == reference
    assert shard_bytes(str(out)) == shard_bytes(str(reference_dir))
    assert not glob.glob(str(out / ".tmp-*"))
