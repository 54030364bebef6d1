"""The benchmark scripts as tests run them: as a user does, or loaded as a module.

`scripts/` is put on sys.path as `python scripts/X.py` has it, so that the
scripts' `import bench` and `import accuracy_runs` work here too.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from types import ModuleType

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)


def run_script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python scripts/NAME.py ARGS` from the repository root."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GCE_METADATA_IP": "127.0.0.1:9"}
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, f"{name}.py"), *args],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def load_script(name: str) -> ModuleType:
    """scripts/NAME.py as a module, without running its main."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def assert_usage_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """A refused command line: status 2, one line naming what is wrong, nothing generated."""
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "generating" not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, last


def documented_flags(name: str) -> list[str]:
    """The flags `python scripts/NAME.py --help` documents, sorted; its exit checked too."""
    result = run_script(name, "--help", timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr  # absl's exit after help
    return sorted(re.findall(r"^  (--\S+):", result.stdout, re.MULTILINE))
