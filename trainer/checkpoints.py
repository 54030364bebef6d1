"""Steps -> checkpoints: where this process saves, what it restores, each save made once.

A crash or kill -9 costs at most the steps since the last periodic save: the
CheckpointManager writes the data files, then the index, and only then
rewrites the `checkpoint` file naming the latest one (a rename locally, a
single object write on gs://), so an interrupted save is never picked up.
`restore_newest` still reads each candidate back and falls back to an older
one if, say, a disk lost unflushed data in a power cut. A failed write is
one line naming the step and the intact previous checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import tempfile
from typing import Any, Callable, Collection, Iterator, Mapping

from absl import logging
import tensorflow as tf

from input_pipeline import storage
from trainer.strategy import Runtime


class Checkpoints:
    """The checkpoints of one run, through the tf.train.CheckpointManager it owns.

    `path` and `saved_step` are the newest checkpoint restored or saved (None
    and -1: none yet). They are the same on every worker, which must all save
    at the same steps. `restored` names the parts that checkpoint held.
    """

    def __init__(self, parts: Mapping[str, Any], directory: str, *, step_counter: tf.Variable,
                 max_to_keep: int, optional: Collection[str] = ()):
        """Nothing saved yet.

        Args:
          parts: what each checkpoint holds, by name: the first component of
            its keys (`model/...`).
          directory: where this process saves (see `save_dir`).
          optional: parts that a checkpoint of an older run may lack (the
            weight average of --ema_decay): it restores without them.
        """
        _remove_interrupted_writes(directory)
        self._parts, self._optional = dict(parts), frozenset(optional)
        self._checkpoint, self._step_counter = tf.train.Checkpoint(**parts), step_counter
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, directory, max_to_keep=max_to_keep, step_counter=step_counter)
        # Created now, not at the first save, so that a restore matches every
        # saved value and leaves TF nothing to warn about at exit.
        _ = self._checkpoint.save_counter
        self.path: str | None = None
        self.saved_step = -1
        self.restored: frozenset[str] = frozenset()

    def restore_newest(self, directory: str) -> str | None:
        """Restores the newest checkpoint in `directory` that reads back whole (see `restore_newest`).

        Every worker restores the chief's checkpoints, though only the chief
        saves into that folder.
        """
        restored = restore_newest(self._restore, directory)
        if restored:
            self.path, self.saved_step = restored, int(self._step_counter.numpy())
            held = saved_parts(restored)
            self.restored = held & self._parts.keys()
            missing = sorted(self._parts.keys() - held)
            logging.info("restored %s at step %d%s", restored, self.saved_step,
                         f" (saved without {', '.join(missing)})" if missing else "")
            if unused := sorted(held - self._parts.keys() - {"save_counter"}):
                logging.info("%s also holds %s, which this run does not use", restored,
                             ", ".join(unused))
        return restored

    def _restore(self, path: str) -> None:
        """Restores `path` into every part, or every part but the optional ones it lacks."""
        held = saved_parts(path)
        parts = {name: part for name, part in self._parts.items()
                 if name in held or name not in self._optional}
        checkpoint = (self._checkpoint if parts.keys() == self._parts.keys()
                      else tf.train.Checkpoint(**parts))
        status = checkpoint.restore(path).assert_existing_objects_matched()
        if checkpoint is not self._checkpoint:
            self._checkpoint.save_counter.assign(checkpoint.save_counter)
        if held - parts.keys() - {"save_counter"}:
            # A part this run does not use (an average, with --ema_decay now
            # off) stays unread, as it should: no warning about it at exit.
            status.expect_partial()

    def save(self, step: int) -> None:
        """Saves `step` once; a second call for the same step does nothing.

        Raises:
          RuntimeError: the write failed (disk full, bucket not writable). The
            previous checkpoint stays the latest: the manager names a new one
            only after its files are complete.
        """
        if step == self.saved_step:
            return
        try:
            path = self._manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as e:
            raise RuntimeError(
                f"could not write the checkpoint of step {step} to {self._manager.directory} "
                f"({storage.first_line(e)}); the latest good one, {self.path or 'none'}, is "
                "intact: fix the disk or bucket and rerun to resume from it"
            ) from e
        self.path, self.saved_step = path, step


@contextlib.contextmanager
def save_dir(runtime: Runtime, checkpoint_dir: str) -> Iterator[str]:
    """Yields where this process saves: `checkpoint_dir` on the chief, else a scratch folder.

    Every MultiWorkerMirrored worker must take part in saving, but only the
    chief's copy is kept; the others write to a local scratch folder, removed
    on exit. Summaries, traces, metrics.json and exports need no scratch: only
    the chief writes them at all.
    """
    if runtime.is_chief:
        yield checkpoint_dir
        return
    # Named after the model dir and the task, so that the rerun of a killed
    # worker removes what the killed one left.
    resolver = runtime.strategy.cluster_resolver
    run_id = hashlib.sha256(checkpoint_dir.encode()).hexdigest()[:12]
    scratch = os.path.join(tempfile.gettempdir(), f"seedlings-worker-ckpt-{run_id}-"
                                                  f"{resolver.task_type}-{resolver.task_id}")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def restore_newest(restore: Callable[[str], None], directory: str) -> str | None:
    """Restores the newest checkpoint in `directory` that reads back whole.

    Every `ckpt-N.index` is a candidate, newest first, whatever the
    `checkpoint` file says: that file may itself be lost, or lag one save
    behind a kill. A damaged candidate (a truncated file fails its CRC, a
    missing one fails to open) is skipped with a warning.

    Args:
      restore: restores one candidate path; raises if it does not read back.

    Raises:
      RuntimeError: checkpoints exist but none restores (e.g. they are of
        another --model); starting over silently would discard them.
    """
    candidates = newest_first(directory)
    for path in candidates:
        try:
            restore(path)
            return path
        except Exception as e:  # pylint: disable=broad-except
            # Damage shows as OpErrors, IndexError ("read less bytes than
            # requested") or AssertionError (objects missing), and more.
            logging.warning("checkpoint %s does not restore (%s); trying an older one",
                            path, storage.first_line(e))
    if candidates:
        raise RuntimeError(
            f"none of the {len(candidates)} checkpoints in {directory} restores into this model "
            f"(newest: {candidates[0]}); check --model and --width, or use a new --model_dir"
        )
    return None


def saved_parts(path: str) -> frozenset[str]:
    """The parts a checkpoint holds: `model`, `optimizer`, `step`, `ema`, ..., `save_counter`."""
    return frozenset(key.split("/", 1)[0] for key, _ in tf.train.list_variables(path)
                     if "/" in key)


def newest_first(directory: str) -> list[str]:
    """The prefixes of every `ckpt-N` in `directory`, highest N first."""
    numbered = []
    for index_file in tf.io.gfile.glob(posixpath.join(directory, "ckpt-*.index")):
        prefix = index_file[:-len(".index")]
        number = prefix.rpartition("-")[2]
        if number.isdigit():
            numbered.append((int(number), prefix))
    return [prefix for _, prefix in sorted(numbered, reverse=True)]


def _remove_interrupted_writes(directory: str) -> None:
    """Removes what a save killed half-way leaves in `directory`.

    TF writes the `checkpoint` state file as `checkpoint.tmp<hex>` and then
    renames it, and writes checkpoint data under `ckpt-N_temp/` before moving
    it into place; on gs:// a rename is a copy and a delete. A kill -9 in
    between leaves these temporaries: nothing reads them, but they would sit
    in the model folder for good. Only this process saves into `directory`,
    and it has not started saving yet.
    """
    leftovers = (tf.io.gfile.glob(posixpath.join(directory, "checkpoint.tmp*"))
                 + tf.io.gfile.glob(posixpath.join(directory, "ckpt-*_temp")))
    for path in leftovers:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)
    if leftovers:
        logging.info("removed %d temporary file(s) of an interrupted checkpoint save: %s",
                     len(leftovers), ", ".join(posixpath.basename(p.rstrip("/")) for p in leftovers))
