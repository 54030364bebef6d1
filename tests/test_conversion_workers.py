"""The worker side: TF-free by construction, deaf to Ctrl-C and SIGTERM, unfazed by lost files."""

from __future__ import annotations

import functools
import signal
import subprocess

from input_pipeline.conversion import encoding, parallel
from tests.conversion_fixtures import PYTHON, REPO


def test_a_file_gone_after_listing_is_skipped_not_a_crash(tmp_path):
    # Between the listing and a worker's open, a file can be removed.
    gone = str(tmp_path / "gone.png")
    assert encoding.probe(gone) == (None, "unreadable: No such file or directory")
    assert encoding.encode((gone, 512, 95)) == "unreadable: No such file or directory"


# What a spawned worker imports: the modules its tasks name, and the command
# line again, as its __main__, when the converter runs as `python -m`.
WORKER_MODULES = ("input_pipeline.conversion.parallel", "input_pipeline.conversion.encoding",
                  "input_pipeline.make_tfrecords")


def test_the_modules_workers_import_do_not_import_tensorflow():
    code = (f"import sys, {', '.join(WORKER_MODULES)}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))")
    result = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_spawned_workers_run_without_tensorflow():
    # This process has TensorFlow loaded; a spawned worker starts afresh and
    # imports only what its task names. eval is a builtin, so the task names
    # nothing of this test module (which imports TensorFlow).
    loaded = "[m for m in __import__('sys').modules if m.split('.')[0] == 'tensorflow']"
    with parallel.worker_pool(2) as executor:
        found = list(parallel.ordered_map(eval, [loaded] * 32, executor, 2))
    assert found == [[]] * 32


def test_workers_start_deaf_to_ctrl_c_and_sigterm_and_the_parent_does_not():
    # Ctrl-C (and a scheduler's SIGTERM) may signal the whole process group;
    # a worker still importing when it lands would print a traceback of its
    # own. Workers are spawned on demand, so every one must start blocked.
    blocked_signals = functools.partial(signal.pthread_sigmask, signal.SIG_BLOCK)
    with parallel.worker_pool(2) as executor:
        worker_masks = list(
            parallel.ordered_map(blocked_signals, [[]] * 64, executor, 2)
        )
    assert all({signal.SIGINT, signal.SIGTERM} <= mask for mask in worker_masks)
    assert not {signal.SIGINT, signal.SIGTERM} & signal.pthread_sigmask(signal.SIG_BLOCK, [])
