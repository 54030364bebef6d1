"""The benchmark scripts as tests run them: as a user does, or loaded as a module.

Command lines a script refuses run in one process for all their cases (see
`run_script_per_case`): each real run would cost a TensorFlow import, three
seconds of CPU, for an error found in milliseconds. `--help` and the smoke
runs are real runs.

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

from tests.main_per_case import run_per_case

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

# A stand-in for the trainer: evaluations 0.5, 0.9, 0.95 at steps 1 to 3, as
# the trainer writes them to MODEL_DIR/eval; the last one 3 s after the
# second, far longer than the 0.25 s between polls of accuracy_runs. Run as
# [sys.executable, "-c", FAKE_TRAINER, MODEL_DIR].
FAKE_TRAINER = """
import sys, time
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
writer = EventFileWriter(sys.argv[1] + "/eval")
for step, accuracy, pause in ((1, 0.5, 0.5), (2, 0.9, 3), (3, 0.95, 0)):
    value = summary_pb2.Summary.Value(tag="accuracy", simple_value=accuracy)
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                     summary=summary_pb2.Summary(value=[value])))
    writer.flush()
    time.sleep(pause)
"""


def run_script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python scripts/NAME.py ARGS` from the repository root."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GCE_METADATA_IP": "127.0.0.1:9"}
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, f"{name}.py"), *args],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_script_per_case(name: str,
                        command_lines: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """`run_script(name, *args)` for each args in `command_lines`, all in one process."""
    define = ("from tests.benchmark_scripts import load_script\n"
              "import bench  # After tests.benchmark_scripts, which puts scripts/ on sys.path.\n"
              f"script = load_script({name!r})\n"
              "script.define_flags()\n"
              "main, parse_flags = script.main, bench.parse_flags")
    return run_per_case(define, f"scripts/{name}.py", command_lines)


def load_script(name: str) -> ModuleType:
    """scripts/NAME.py as a module, without running its main."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def assert_ok(result: subprocess.CompletedProcess) -> None:
    """A run that finished: status 0, else the ends of its output in the failure."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def assert_usage_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """A refused command line: status 2, one line naming what is wrong, no data made."""
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "generating" not in result.stdout and "preparing" not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, last


def assert_refused(name: str, cases: dict[str, tuple[list[str], list[str]]], *common: str) -> None:
    """Each of `cases`, `(args, words)`: `scripts/NAME.py *args *common` is a usage error
    whose line names the words. All run in one process (see `run_script_per_case`)."""
    results = run_script_per_case(name, [[*args, *common] for args, _ in cases.values()])
    for (case, (_, words)), result in zip(cases.items(), results):
        try:
            assert_usage_error(result, *words)
        except AssertionError as e:
            raise AssertionError(f"{case}: {e}") from None


def documented_flags(name: str) -> list[str]:
    """The flags `python scripts/NAME.py --help` documents, sorted; its exit checked too."""
    result = run_script(name, "--help", timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr  # absl's exit after help
    return sorted(re.findall(r"^  (--\S+):", result.stdout, re.MULTILINE))
