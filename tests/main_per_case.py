"""A command's `main` once per command line, all in one process that imports TensorFlow once.

For start-up checks that fail in milliseconds, after an import of
TensorFlow that costs three seconds of CPU: a real `python -m MODULE ARGS`
per case would pay it every time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What the command does after its imports, once per ARGS: fresh flags each
# time, stdout and stderr kept apart, and the exit status as the interpreter
# makes it (a string exit: printed, status 1). Run with the code that binds
# `main` and `parse_flags` (its flags defined) first.
_RUN_EACH_CASE = """
import contextlib, io, json, sys, traceback
from absl import flags

def run(args):
    flags.FLAGS.unparse_flags()
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main(parse_flags([sys.argv[1], *args]))
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else int(e.code is not None)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            status = 1
    return status, stdout.getvalue(), stderr.getvalue()

print(json.dumps([run(args) for args in json.load(sys.stdin)]))
"""


def run_main_per_case(module: str, cases: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """`python -m module *args` for each args in `cases`, as if each ran on its own.

    `module` defines `parse_flags(argv)` and `main(argv)`, as `trainer.main`
    and `trainer.predict` do.
    """
    return run_per_case(f"from {module} import main, parse_flags", module, cases)


def run_per_case(define: str, program: str,
                 cases: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """`program *args` for each args in `cases`, with `main` and `parse_flags` from `define`."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GCE_METADATA_IP": "127.0.0.1:9"}
    driver = subprocess.run([sys.executable, "-c", f"{define}\n{_RUN_EACH_CASE}", program],
                            cwd=REPO, env=env, input=json.dumps(cases), capture_output=True,
                            text=True, timeout=300)
    assert driver.returncode == 0, driver.stderr[-3000:]
    # The last line: anything the command wrote to the real stdout comes before it.
    results = json.loads(driver.stdout.strip().splitlines()[-1])
    return [subprocess.CompletedProcess(args, status, stdout, stderr)
            for args, (status, stdout, stderr) in zip(cases, results)]
