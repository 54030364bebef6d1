"""SIGTERM -> stop at the next step boundary, on every strategy and every host.

Preemption reaches the trainer as a SIGTERM with a short grace period: a GCE
Spot/preemptible VM, TPU maintenance, a Vertex AI job cancel, Kubernetes.
`tf.distribute.experimental.PreemptionCheckpointHandler` covers only
Mirrored/MultiWorkerMirrored off GCP (it does nothing on GCP CPU or TPU VMs),
so the trainer handles the signal itself, the same way everywhere:

1. `SigtermWatcher` turns SIGTERM into a flag variable at once. A Python
   signal handler alone would run only when the main thread is back in the
   interpreter, i.e. after the compiled loop of `steps_per_loop` steps; but
   the C-level handler also writes the signal number to `set_wakeup_fd`'s
   pipe, and a watcher thread reading that pipe sets the flag while the loop
   still runs.
2. The compiled loop calls `make_stop_check(...)()` after every step. With
   several workers the flag is all-reduced, so that every worker stops after
   the same step and all of them take part in the checkpoint.
3. The trainer saves at that step and raises `Preempted`, which ends the
   process with `EXIT_PREEMPTED`.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable

from absl import logging
import tensorflow as tf

# 128 + SIGTERM: what a shell, Docker and Kubernetes report for a process
# stopped by SIGTERM, so supervisors treat it as "terminated", not as a bug.
# A process that dies of the signal itself (before the watcher is installed)
# shows the same 143 in a shell; the trainer's last log line tells them
# apart ("preempted at step N ... rerun the same command to resume").
EXIT_PREEMPTED = 128 + signal.SIGTERM


class Preempted(SystemExit):
    """Raised once the preemption checkpoint is saved; exits with EXIT_PREEMPTED.

    A SystemExit, so that it passes through the error handlers meant for
    failures and the process ends with the documented status.
    """

    def __init__(self, message: str):
        super().__init__(EXIT_PREEMPTED)
        self.message = message


class SigtermWatcher:
    """Sets `flag` to 1 as soon as SIGTERM arrives, even inside a compiled loop.

    Use as a context manager from the main thread; on exit the previous
    handler and wakeup fd come back.
    """

    def __init__(self):
        # Outside any strategy scope: a plain variable on this host's CPU,
        # which the watcher thread can assign while the loop reads it.
        with tf.device("CPU:0"):
            self.flag = tf.Variable(0, dtype=tf.int32, trainable=False, name="sigterm")
        self._read_fd = self._write_fd = -1
        self._thread: threading.Thread | None = None
        self._previous_handler = None
        self._previous_wakeup_fd = -1

    def __enter__(self) -> "SigtermWatcher":
        if threading.current_thread() is not threading.main_thread():
            # Python lets only the main thread handle signals (e.g. not a
            # notebook's worker thread): train on, without this safety net.
            logging.warning("not on the main thread: SIGTERM will not save a checkpoint")
            return self
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # set_wakeup_fd requires it.
        self._thread = threading.Thread(target=self._watch, name="sigterm-watcher", daemon=True)
        self._thread.start()
        # Handler first: once the wakeup fd is set a SIGTERM must not kill us.
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._thread is None:
            return
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        signal.signal(signal.SIGTERM, self._previous_handler)
        os.close(self._write_fd)  # The watcher's read() returns b"" and it ends.
        self._thread.join(timeout=5)
        os.close(self._read_fd)

    @property
    def requested(self) -> bool:
        return bool(self.flag.numpy())

    def _on_sigterm(self, signum, frame) -> None:
        # Runs late (on the main thread, between bytecodes) and only has to
        # keep the default action from killing the process: the watcher
        # thread has already set the flag.
        del signum, frame

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data and not self.requested:
                logging.warning("SIGTERM: saving a checkpoint at the next step boundary, then "
                                "exiting with status %d", EXIT_PREEMPTED)
                self.flag.assign(1)


def make_stop_check(strategy: tf.distribute.Strategy,
                    flag: tf.Variable) -> Callable[[], tf.Tensor]:
    """Returns `stop_requested() -> bool tensor`, for use inside the compiled loop.

    One process drives all replicas of Default, OneDevice, Mirrored and TPU
    strategies, so its own flag decides. MultiWorkerMirrored runs a process
    per host and a SIGTERM may reach only one of them (one preempted VM):
    summing the flag over all replicas lets every worker see the same answer
    at the same step, and they stop together instead of waiting forever for
    a peer's collective.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return lambda: flag.read_value() > 0

    def stop_requested() -> tf.Tensor:
        votes = strategy.run(lambda: tf.identity(flag.read_value()))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None) > 0

    return stop_requested
