"""Runs a test module as a script in a fresh Python process, for its JSON results.

For checks that must configure TensorFlow before it initialises (e.g. two
logical CPU devices for MirroredStrategy), which it has already done in the
pytest process. The module prints one line of JSON last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module_script(module: str, *, timeout: float = 300) -> dict:
    """`python -m module` from the repository root -> the JSON of its last stdout line."""
    process = subprocess.run(
        [sys.executable, "-m", module], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=timeout,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])
