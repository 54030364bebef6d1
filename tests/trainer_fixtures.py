"""The trainer as tests run it: as a process, one or several workers on 127.0.0.1.

Registered in `tests/conftest.py` (for the `start_trainers` fixture); test
modules import the helpers from here, never from each other.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model=resnet18", "--width=8", "--image_size=32", "--batch_size=4",
        "--steps_per_loop=2", "--warmup_epochs=0", "--learning_rate=0.05", "--label_smoothing=0.1"]
# Every regulariser at once: the strategy, precision, XLA and preemption tests
# run with them, so each combination is covered by one run, not two.
REGULARISED = ["--randaugment=2,9", "--mixup=0.2", "--cutmix=1.0", "--ema_decay=0.9"]


def run_module(module: str, *args: str, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GCE_METADATA_IP": "127.0.0.1:9",
           **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def train(data_dir: str, model_dir: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return run_module("trainer.main", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                      *TINY, *args, env=env)


def checkpoint_step(model_dir: str) -> int:
    path = tf.train.latest_checkpoint(model_dir)
    return int(tf.train.load_variable(path, "step/.ATTRIBUTES/VARIABLE_VALUE"))


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    for word in words:
        assert word in last, last



EXIT_PREEMPTED = 143  # trainer/preemption.py: 128 + SIGTERM.


class TrainerProcess:
    """`python -m trainer.main` in the background, its output read line by line as it runs."""

    def __init__(self, args: list[str], env: dict[str, str], name: str = "trainer",
                 module: str = "trainer.main"):
        self.name = name
        self.lines: list[str] = []
        self._done = False
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=REPO, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 240) -> re.Match:
        """The first output line matching `pattern`, waiting for it if need be."""
        regex, seen = re.compile(pattern), 0
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                if self._done:
                    pytest.fail(f"{self.name} ended ({self.process.poll()}) without logging "
                                f"{pattern!r}:\n{self.tail()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{self.name} did not log {pattern!r} in {timeout}s:\n{self.tail()}")
                self._changed.wait(deadline - time.monotonic())

    def all(self, pattern: str) -> list[re.Match]:
        with self._changed:
            return [m for line in self.lines if (m := re.search(pattern, line))]

    def send(self, sig: int) -> None:
        self.process.send_signal(sig)

    def finish(self, timeout: float = 240) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"{self.name} still running after {timeout}s:\n{self.tail()}")
        self._reader.join(timeout=10)
        return code

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def last_line(self) -> str:
        """The last line the trainer wrote, skipping the C++ runtime's own log lines.

        When the chief of a multi-worker run exits first, the others' TF
        runtime logs its lost heartbeats after the trainer's final message.
        """
        with self._changed:
            ours = [line for line in self.lines
                    if line.startswith("error:") or re.search(r"\.py:\d+\] ", line)]
            return ours[-1] if ours else ""

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.name} ---\n" + self.output[-chars:]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def vertex_tf_config(ports: list[int], task_type: str, index: int) -> str:
    """TF_CONFIG as Vertex AI sets it: a chief, then workers, plus keys TF does not use."""
    addresses = [f"127.0.0.1:{port}" for port in ports]
    return json.dumps({
        "cluster": {"chief": addresses[:1], "worker": addresses[1:]},
        "task": {"type": task_type, "index": index, "trial": ""},
        "job": {"worker_pool_specs": [{"python_package_spec": {"python_module": "trainer.main"}}]},
        "environment": "cloud",
    })


@pytest.fixture
def start_trainers():
    """`start(data_dir, model_dir, *args, workers=1, env=os.environ) -> [chief, worker...]`.

    With `workers` > 1, MultiWorkerMirrored processes on free loopback ports,
    each with its own TMPDIR (`<model_dir>.tmp-<i>`). Any process still
    running when the test ends is killed.
    """
    started: list[TrainerProcess] = []

    def start(data_dir: str, model_dir: str, *args: str, workers: int = 1,
              env: dict[str, str] | None = None) -> list[TrainerProcess]:
        base = {**(env or os.environ), "TF_CPP_MIN_LOG_LEVEL": "2",
                "GCE_METADATA_IP": "127.0.0.1:9"}
        command = [f"--data_dir={data_dir}", f"--model_dir={model_dir}", *TINY, *args]
        if workers == 1:
            processes = [TrainerProcess(command, base)]
        else:
            ports = free_ports(workers)
            processes = []
            for i in range(workers):
                task_type, index = ("chief", 0) if i == 0 else ("worker", i - 1)
                tmp = f"{model_dir.rstrip('/')}.tmp-{i}" if "://" not in model_dir else None
                worker_env = {**base, "TF_CONFIG": vertex_tf_config(ports, task_type, index)}
                if tmp:
                    os.makedirs(tmp, exist_ok=True)
                    worker_env["TMPDIR"] = tmp
                processes.append(TrainerProcess(
                    [*command, "--strategy=multi_worker_mirrored"], worker_env,
                    name=f"{task_type}:{index}"))
        started.extend(processes)
        return processes

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait(timeout=30)


def finish_all(processes: list[TrainerProcess]) -> list[int]:
    return [p.finish() for p in processes]


def list_files(directory: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, f), directory)
                  for root, _, files in os.walk(directory) for f in files)


def checkpoint_steps(model_dir: str) -> list[int]:
    return sorted(int(f[len("ckpt-"):-len(".index")]) for f in os.listdir(model_dir)
                  if re.fullmatch(r"ckpt-\d+\.index", f))


def last_logged_step(process: TrainerProcess) -> int:
    steps = process.all(r"\bstep (\d+)/\d+ ")
    return int(steps[-1].group(1)) if steps else 0


def sigterm_kill_9_and_resume(start, data_dir: str, model_dir: str, *, workers: int,
                              list_files: Callable[[], list[str]],
                              env: dict[str, str] | None = None, mode: str = "train",
                              extra_flags: tuple[str, ...] = ()) -> str:
    """SIGTERM, rerun, kill -9, rerun: the same command each time, as a scheduler retries it.

    With several workers the signals go to the last one only, as when one VM
    of the job is preempted or lost. `list_files()` names what is in
    `model_dir`, recursively. Returns what it measured, for the report.
    """
    def saved_steps() -> list[int]:
        return sorted(int(m.group(1)) for f in list_files()
                      if (m := re.fullmatch(r"ckpt-(\d+)\.index", f)))

    command = ["--train_steps=150", "--steps_per_loop=50", "--checkpoint_every=50", f"--mode={mode}",
               *extra_flags]
    # Seeded, so a failure replays with the same timing; printed, so its report has them.
    seed = int(os.environ.get("SEEDLINGS_TEST_SEED", "0"))
    rng = random.Random(seed)
    sigterm_delay, kill_delay = round(rng.uniform(0.0, 0.2), 3), round(rng.uniform(0.0, 0.8), 3)
    print(f"signal delays {sigterm_delay} s and {kill_delay} s (SEEDLINGS_TEST_SEED={seed})")

    # 1. SIGTERM while the second loop of 50 steps runs (or the save before it).
    run = start(data_dir, model_dir, *command, workers=workers, env=env)
    run[-1].wait_for(r"step 50/150")
    time.sleep(sigterm_delay)
    run[-1].send(signal.SIGTERM)
    assert finish_all(run) == [EXIT_PREEMPTED] * workers, "\n".join(p.tail() for p in run)
    stops = {int(p.wait_for(r"preempted at step (\d+) of 150").group(1)) for p in run}
    assert len(stops) == 1, stops  # Every worker stopped after the same step.
    stopped = stops.pop()
    # Loops end only at 50, 100 and 150: any other step was a stop mid-loop
    # (in practice always; 100 only if the signal came in that loop's last step).
    assert 50 < stopped < 150, stopped
    for process in run:
        assert "preempted at step" in process.last_line(), process.tail()
        assert last_logged_step(process) == stopped
    assert saved_steps() == [50, stopped]

    # 2. The same command resumes at exactly that step. kill -9 while training.
    run = start(data_dir, model_dir, *command, workers=workers, env=env)
    for process in run:
        process.wait_for(rf"restored \S+ckpt-{stopped} at step {stopped}")
    run[-1].wait_for(r"step \d+/150")
    time.sleep(kill_delay)  # In a save, a loop, or even the export.
    run[-1].send(signal.SIGKILL)
    codes = finish_all(run)
    assert codes[-1] == -signal.SIGKILL
    for survivor, code in zip(run[:-1], codes):
        # It notices within seconds and says what to do: no hang.
        assert code == 1 and "lost contact with another worker" in survivor.last_line(), (
            survivor.tail())
    killed_after = max(last_logged_step(p) for p in run)
    left = sorted(f for f in list_files() if f.startswith(("ckpt-", "checkpoint")))
    newest = max(saved_steps())

    # 3. The rerun resumes from the newest complete checkpoint.
    run = start(data_dir, model_dir, *command, workers=workers, env=env)
    resumed = {int(p.wait_for(r"restored \S+ at step (\d+)").group(1)) for p in run}
    assert finish_all(run) == [0] * workers, "\n".join(p.tail() for p in run)
    assert len(resumed) == 1
    resumed = resumed.pop()
    # The newest checkpoint whose index was written, unless the kill cut that
    # index short: then it is skipped with a warning.
    if resumed != newest:
        assert run[0].all(rf"ckpt-{newest} does not restore"), run[0].tail()
    assert resumed in (stopped, 100, 150) and resumed >= stopped
    assert max(saved_steps()) == 150
    return (f"SIGTERM stopped at {stopped}, saved {stopped} (lost 0); kill -9 after step >= "
            f"{killed_after}, resumed at {resumed}; checkpoint files after kill -9: {left}")
