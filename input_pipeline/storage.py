"""Local and gs:// paths that the command-line tools read and write.

Each tool checks its path flags here at start-up, before any work, so that a
typo in a bucket name or a file where a folder belongs is one line naming
the flag, not a TensorFlow traceback after hours of training. Every check
goes through `tf.io.gfile`, so the same code covers local folders, gs:// and
ram://. Whole-file writes (`write_atomically`) never leave a half-written
file under the final name.
"""

from __future__ import annotations

import os
import posixpath
import uuid

import tensorflow as tf


# What `write_atomically` appends to a file's name while writing it.
TMP_SUFFIX = ".tmp"


class PathError(ValueError):
    """A path flag that cannot work, in one line naming the flag and the fix."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type when it has none.

    TensorFlow's errors carry multi-line op traces; users need the first.
    """
    text = (error.message if isinstance(error, tf.errors.OpError) else str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _is_local(path: str) -> bool:
    return "://" not in path


def check_spelling(path: str, flag: str) -> None:
    """Raises PathError for a path no file system call can mean as typed.

    Every check below starts with it; call it alone before touching a path
    in other ways.
    """
    if path.startswith("~"):
        # A shell expands ~ only at the start of a word, so `--flag=~/x`
        # arrives as is: an input "does not exist", an output lands in ./~/x.
        raise PathError(f"{flag}={path} starts with ~, which the shell does not expand after "
                        f"'=': write {flag} {path} (a space, no '=') or use $HOME")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # a name of bytes that are not UTF-8, as Python hands it over
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise PathError(f"{flag}={shown} is not UTF-8, which TensorFlow's file system needs: "
                        "pass another path") from None


def _dangling_symlink(path: str) -> str | None:
    """The target of `path` if it is a symlink to nothing, else None."""
    if _is_local(path) and os.path.islink(path) and not os.path.exists(path):
        return os.readlink(path)
    return None


def _check_bucket(path: str, flag: str) -> None:
    """Raises PathError if `path` is on gs:// in a bucket that does not exist.

    Asked first because TF's makedirs in a missing bucket never returns: it
    "creates" the bucket root without error, finds it still missing, and
    tries again.
    """
    if not path.startswith("gs://"):
        return
    bucket = "gs://" + path[len("gs://"):].split("/", 1)[0]
    if not tf.io.gfile.exists(bucket):
        raise PathError(
            f"{flag}={path}: the bucket {bucket} does not exist or this account cannot see it: "
            "check the bucket name and your credentials")


def check_input_dir(path: str, flag: str) -> None:
    """Raises PathError unless `path` is an existing folder.

    Args:
      path: local or gs:// path.
      flag: the flag's name as the user typed it, e.g. `--data_dir`.
    """
    if not path:
        raise PathError(f"{flag} is empty: pass a folder")
    check_spelling(path, flag)
    target = _dangling_symlink(path)
    if target is not None:
        raise PathError(f"{flag}={path} is a symlink to {target}, which does not exist")
    try:
        exists, is_dir = tf.io.gfile.exists(path), tf.io.gfile.isdir(path)
    except tf.errors.OpError as e:
        raise PathError(f"{flag}={path} cannot be read ({first_line(e)})") from e
    if not exists:
        raise PathError(f"{flag}={path} does not exist")
    if not is_dir:
        raise PathError(f"{flag}={path} is a file, not a folder: pass the folder that holds it")


def check_output_dir(path: str, flag: str) -> None:
    """Makes `path` if needed and proves this process can write files into it.

    A probe file is written and removed: on gs:// that is the only way to
    learn that the bucket exists and grants writes before the first
    checkpoint is due.

    Raises:
      PathError: `path` is a file, sits under a file, is a dangling symlink,
        or cannot be created or written.
    """
    if not path:
        raise PathError(f"{flag} is empty: pass a folder")
    check_spelling(path, flag)
    target = _dangling_symlink(path)
    if target is not None:
        raise PathError(
            f"{flag}={path} is a symlink to {target}, which does not exist: create the "
            "target folder or pass another path"
        )
    try:
        _check_bucket(path, flag)
        if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
            raise PathError(f"{flag}={path} is a file, not a folder: pass a folder")
        tf.io.gfile.makedirs(path)
        probe = posixpath.join(path, f".write-check-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as e:
        raise PathError(
            f"{flag}={path} cannot be written ({first_line(e)}): check the path, its "
            "permissions or the bucket name"
        ) from e


def check_not_a_file(path: str, flag: str) -> None:
    """Raises PathError if `path`, a folder to be made later, is an existing file."""
    check_spelling(path, flag)
    try:
        is_file = tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)
    except tf.errors.OpError as e:
        raise PathError(f"{flag}: {path} cannot be checked ({first_line(e)})") from e
    if is_file:
        raise PathError(f"{flag}: {path} is a file where a folder goes: move the file away")


def check_output_file(path: str, flag: str) -> None:
    """Raises PathError unless a file can be written at `path`.

    The folder it goes into must exist already: a mistyped folder is more
    often a mistake than a wish for a new one.
    """
    if not path:
        raise PathError(f"{flag} is empty: pass a file name")
    check_spelling(path, flag)
    try:
        if tf.io.gfile.isdir(path):
            raise PathError(f"{flag}={path} is a folder: pass a file name, e.g. {path}/out.csv")
        parent = posixpath.dirname(path) if not _is_local(path) else os.path.dirname(path)
        if parent and _is_local(path) and not os.path.isdir(parent):
            what = "is a file" if os.path.exists(parent) else "does not exist"
            raise PathError(f"{flag}={path}: the folder {parent} {what}; create the folder first")
    except tf.errors.OpError as e:
        raise PathError(f"{flag}={path} cannot be checked ({first_line(e)})") from e


def write_atomically(path: str, data: str | bytes) -> None:
    """Writes `data` to `path` whole or not at all: a temporary file, then a rename.

    On gs:// a rename is copy + delete, but the copy is a single object
    write, so readers still never see a half-written file. A failed write
    removes its temporary file and leaves an older `path` as it was.

    Raises:
      tf.errors.OpError: the write or the rename failed.
    """
    tmp = path + TMP_SUFFIX
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        with tf.io.gfile.GFile(tmp, mode) as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        try:
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
        except tf.errors.OpError:
            pass  # The original error is the one to report.
        raise
