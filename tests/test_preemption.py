"""Preemption and crashes, with real processes and real signals.

SIGTERM must cost no step; kill -9 at most the steps since the last complete
checkpoint; a damaged or unwritable checkpoint must never cost the run. The
tests drive `python -m trainer.main` as a user or a scheduler would.

`sigterm_kill_9_and_resume` runs here on two MultiWorkerMirrored workers and
in `test_gcs_end_to_end.py` on one process (the default strategy) on gs://;
`TrainerProcess` and `start_trainers` serve the multi-worker tests too.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

import pytest
import tensorflow as tf

from input_pipeline import records
from tests.record_fixtures import write_records
from tests.test_trainer import REPO, TINY, assert_ok, assert_one_line_error, checkpoint_step, train

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


WATCHER_SCRIPT = r"""
import os, signal, threading, time
import tensorflow as tf
from trainer import preemption

# A compiled loop that runs until told to stop, like the training loop with
# a huge --steps_per_loop: Python never regains control while it runs.
with preemption.SigtermWatcher() as sigterm:
    stop_requested = preemption.make_stop_check(tf.distribute.get_strategy(), sigterm.flag)

    @tf.function
    def loop(limit):
        def step(steps, x, preempted):
            return steps + 1, tf.tanh(x @ x), stop_requested()

        steps, _, preempted = tf.while_loop(
            lambda steps, x, preempted: (steps < limit) & ~preempted, step,
            [tf.constant(0), tf.random.normal([64, 64]), tf.constant(False)])
        return steps, preempted

    loop(tf.constant(1))  # Trace first, so the signal lands mid-execution.
    sent = []
    threading.Timer(1.0, lambda: (sent.append(time.monotonic()),
                                  os.kill(os.getpid(), signal.SIGTERM))).start()
    steps, preempted = loop(tf.constant(10**9))
    stopped_after = time.monotonic() - sent[0]
print("RESULT", int(steps), bool(preempted), round(stopped_after, 3),
      signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
"""


def test_sigterm_stops_a_running_compiled_loop_at_the_next_step():
    result = subprocess.run([sys.executable, "-c", WATCHER_SCRIPT], cwd=REPO, capture_output=True,
                            text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert_ok(result)
    steps, preempted, stopped_after, default_restored = result.stdout.split("RESULT")[1].split()
    assert preempted == "True" and 0 < int(steps) < 10**9
    # The flag was set by the watcher thread while the loop ran, not after.
    assert float(stopped_after) < 2.0
    assert default_restored == "True"  # Leaving the watcher puts SIGTERM back.
    print(f"\nMEASURED compiled loop stopped {stopped_after}s after SIGTERM, after {steps} steps")


def sigterm_kill_9_and_resume(start, data_dir: str, model_dir: str, *, workers: int,
                              list_files: Callable[[], list[str]],
                              env: dict[str, str] | None = None, mode: str = "train") -> str:
    """SIGTERM, rerun, kill -9, rerun: the same command each time, as a scheduler retries it.

    With several workers the signals go to the last one only, as when one VM
    of the job is preempted or lost. `list_files()` names what is in
    `model_dir`, recursively. Returns what it measured, for the report.
    """
    def saved_steps() -> list[int]:
        return sorted(int(m.group(1)) for f in list_files()
                      if (m := re.fullmatch(r"ckpt-(\d+)\.index", f)))

    command = ["--train_steps=150", "--steps_per_loop=50", "--checkpoint_every=50", f"--mode={mode}"]

    # 1. SIGTERM while the second loop of 50 steps runs (or the save before it).
    run = start(data_dir, model_dir, *command, workers=workers, env=env)
    run[-1].wait_for(r"step 50/150")
    time.sleep(random.uniform(0.0, 0.2))
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
    time.sleep(random.uniform(0.0, 0.8))  # In a save, a loop, or even the export.
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


def test_two_workers_sigterm_loses_no_step_and_kill_9_at_most_the_last_interval(
        tiny_records, tmp_path, start_trainers):
    model_dir = str(tmp_path / "model")
    measured = sigterm_kill_9_and_resume(start_trainers, tiny_records.data_dir, model_dir,
                                         workers=2, list_files=lambda: list_files(model_dir))
    assert checkpoint_step(model_dir) == 150
    assert os.path.exists(os.path.join(model_dir, "export", "saved_model.pb"))
    # The non-chief's scratch checkpoints are gone, even the killed one's.
    assert not [f for f in os.listdir(f"{model_dir}.tmp-1") if f.startswith("seedlings")]
    print(f"\nMEASURED two workers: {measured}")


@pytest.fixture(scope="module")
def checkpointed(tiny_records, tmp_path_factory):
    """A model dir holding ckpt-2 and ckpt-4; tests copy it before changing it."""
    model_dir = str(tmp_path_factory.mktemp("checkpointed"))
    assert_ok(train(tiny_records.data_dir, model_dir, "--train_steps=4", "--checkpoint_every=2",
                    "--mode=train"))
    assert checkpoint_steps(model_dir) == [2, 4]
    return model_dir


def test_damaged_checkpoints_are_skipped_with_a_warning(checkpointed, tiny_records, tmp_path):
    model_dir = str(tmp_path / "model")
    shutil.copytree(checkpointed, model_dir)
    # What a power cut can leave: a truncated data file under an index the
    # `checkpoint` file names, and a newer index that is half written.
    data = os.path.join(model_dir, "ckpt-4.data-00000-of-00001")
    os.truncate(data, os.path.getsize(data) // 2)
    with open(os.path.join(model_dir, "ckpt-6.index"), "wb") as f:
        f.write(b"\x00" * 100)
    result = train(tiny_records.data_dir, model_dir, "--train_steps=4", "--mode=eval")
    assert_ok(result)
    assert re.search(r"checkpoint \S+ckpt-6 does not restore", result.stderr)
    assert re.search(r"checkpoint \S+ckpt-4 does not restore", result.stderr)
    assert re.search(r"restored \S+ckpt-2 at step 2", result.stderr)
    assert "eval at step 2" in result.stderr

    # Checkpoints of another model are never silently replaced by a fresh start.
    result = train(tiny_records.data_dir, model_dir, "--train_steps=4", "--width=16",
                   "--mode=export")
    assert_one_line_error(result, "none of the 3 checkpoints", "--model")


def test_failed_checkpoint_write_is_one_line_and_keeps_the_previous(checkpointed, tiny_records,
                                                                     tmp_path):
    model_dir = str(tmp_path / "model")
    shutil.copytree(checkpointed, model_dir)
    # Tests run as root, where permissions block nothing: a non-empty folder
    # where the save of step 6 must put its data file makes the write fail.
    os.makedirs(os.path.join(model_dir, "ckpt-6.data-00000-of-00001", "in-the-way"))
    result = train(tiny_records.data_dir, model_dir, "--train_steps=6", "--checkpoint_every=2",
                   "--mode=train")
    assert_one_line_error(result, "could not write the checkpoint of step 6", "ckpt-4", "intact")
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-4")
    assert checkpoint_step(model_dir) == 4
    assert checkpoint_steps(model_dir) == [2, 4]


@pytest.mark.parametrize("damage", ["record", "image"])
def test_corrupt_shard_is_a_one_line_error_naming_it(tmp_path, damage):
    data = write_records(str(tmp_path / "data"))
    # Damage every training shard, so the very first batches must meet it.
    shards = [os.path.join(data.data_dir, records.shard_name("train", i, 4)) for i in range(4)]
    for shard in shards:
        if damage == "record":
            # Zero bytes inside the first record's payload: its CRC no longer matches.
            raw = bytearray(open(shard, "rb").read())
            raw[40:60] = bytes(20)
            open(shard, "wb").write(bytes(raw))
        else:
            # Well-formed records whose JPEG bytes are garbage.
            with tf.io.TFRecordWriter(shard) as writer:
                for _ in range(4):
                    writer.write(records.make_example(
                        b"not a jpeg", height=8, width=8, filename="x.png", label=0,
                        class_name=data.class_names[0]).SerializeToString())
    result = train(data.data_dir, str(tmp_path / "out"), "--train_steps=4")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: corrupt data in "), last
    assert all(os.path.basename(shard) in last for shard in shards), last
