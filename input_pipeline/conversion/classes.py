"""Finding the class folders and their files: the first stage, in the parent process.

Which folders are classes, and which files are skipped before any is read,
is the `Input` rule of the command line's doc (`input_pipeline/make_tfrecords.py`,
printed by --help). Nothing here opens an image.
"""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from typing import Any

from input_pipeline import storage
from input_pipeline.conversion.options import ConversionError
from input_pipeline.image_suffixes import PIL_IMAGE_SUFFIXES

KAGGLE_TRAIN_FOLDER = "train"


@dataclasses.dataclass(frozen=True)
class SourceImage:
    path: str  # as opened
    rel: str  # relative to input_dir, '/'-separated: reported and stored in records
    label: int
    class_name: str
    split: str | None = None  # the source's own split (a TFDS data set's); None: ours to choose


Skipped = tuple[SourceImage, str]  # a file left out, and why


@dataclasses.dataclass(frozen=True)
class InputLayout:
    """What `find_classes` found in the input folder."""

    root: str  # the folder holding the class folders: input_dir or input_dir/train
    class_names: tuple[str, ...]
    sources: tuple[SourceImage, ...]  # every usable file of every class, sorted
    unusable: tuple[Skipped, ...]  # broken symlinks, names not UTF-8...: skipped, and why
    non_class_folders: tuple[dict[str, str], ...]
    source: str = ""  # what was read, as reported and recorded: the folder by default
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)  # a TFDS source's facts


def printable(path: str) -> str:
    """`path` as printable text: bytes that are not UTF-8 appear as `\\xff`.

    Python hands such names over with lone surrogates, which UTF-8 encoding
    refuses: in a record, on stdout and in TensorFlow's paths.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _visible_entries(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in PIL_IMAGE_SUFFIXES


def _kind(entry: os.DirEntry) -> str:
    """What `entry` is, symlinks followed: "dir", "file" or "other" (a broken link, a pipe)."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
    except OSError:  # a symlink loop: only a missing target comes back as False
        pass
    return "other"


def _why_unusable(entry: os.DirEntry) -> str | None:
    """Why an entry of a class folder cannot be read, or None for a regular file."""
    if _kind(entry) == "file":
        return None if printable(entry.name) == entry.name else "file name is not UTF-8: rename it"
    if entry.is_symlink():  # and neither file nor folder: dangling, or a loop
        try:
            os.stat(entry.path)
        except OSError as error:
            return f"broken symlink: to {printable(os.readlink(entry.path))} ({error.strerror})"
    return "not a regular file"


def unusable_class_name(name: str) -> bool:
    """Whether `name` cannot be a class name: a line of labels.txt, UTF-8 in every record."""
    return printable(name) != name or any(unicodedata.category(c) == "Cc" for c in name)


def _check_class_name(root: str, name: str) -> None:
    if unusable_class_name(name):
        raise ConversionError(
            f"class folder {name!r} in {printable(root)} has a name that is not UTF-8 or "
            "holds a control character (a line break?): rename it"
        )


def _check_input_dir(input_dir: str) -> None:
    if "://" in input_dir:
        raise ConversionError(f"--input_dir must be a local folder, got {input_dir}")
    try:
        storage.check_input_dir(input_dir, "--input_dir")
    except storage.PathError as error:
        raise ConversionError(str(error)) from error
    if not _visible_entries(input_dir):
        raise ConversionError(f"--input_dir={input_dir} is empty")


def _no_class_error(root: str, non_class: list[dict[str, str]]) -> ConversionError:
    found = "; ".join(f"{d['folder']}/ {d['reason']}" for d in non_class) or "no subfolders"
    hint = ""
    if any(_kind(e) == "file" and _is_image_name(e.name) for e in _visible_entries(root)):
        hint = " (it holds images directly: point --input_dir at the folder above it)"
    return ConversionError(
        f"no class folders in {root}{hint}: a class folder is a subfolder that "
        f"directly holds image files; found: {found}"
    )


def find_classes(input_dir: str) -> InputLayout:
    """Lists class folders and their files under `input_dir` (the rule in the module doc).

    Raises:
      ConversionError: `input_dir` is missing, remote or empty, holds no class
        folder, or a class folder's name cannot be a label.
    """
    _check_input_dir(input_dir)
    root = os.path.join(input_dir, KAGGLE_TRAIN_FOLDER)
    if not os.path.isdir(root):
        root = input_dir
    rel = lambda path: printable(os.path.relpath(path, input_dir).replace(os.sep, "/"))
    class_files: dict[str, list[os.DirEntry]] = {}
    non_class: list[dict[str, str]] = []
    for folder in _visible_entries(root):
        if _kind(folder) != "dir":
            if _kind(folder) == "other" and folder.is_symlink():
                reason = "is a broken symlink; not read"
                non_class.append({"folder": rel(folder.path), "reason": reason})
            continue  # a file beside the classes, such as a Kaggle csv
        entries = _visible_entries(folder.path)
        files = [e for e in entries if _kind(e) != "dir"]
        subfolders = [e.path for e in entries if _kind(e) == "dir"]
        if any(_kind(e) == "file" and _is_image_name(e.name) for e in files):
            _check_class_name(root, folder.name)
            class_files[folder.name] = files
            reason = "is inside a class folder; not read"
            non_class += [{"folder": rel(s), "reason": reason} for s in subfolders]
        elif subfolders:
            reason = "holds only subfolders (a nested copy of the data set?)"
            non_class.append({"folder": rel(folder.path), "reason": reason})
        else:
            non_class.append({"folder": rel(folder.path), "reason": "holds no image files"})
    if not class_files:
        raise _no_class_error(root, non_class)
    names = tuple(sorted(class_files))
    sources, unusable = [], []
    for label, name in enumerate(names):
        for entry in class_files[name]:
            source = SourceImage(path=entry.path, rel=rel(entry.path), label=label,
                                 class_name=name)
            reason = _why_unusable(entry)
            if reason is None:
                sources.append(source)
            else:
                unusable.append((source, reason))
    return InputLayout(root, names, tuple(sources), tuple(unusable), tuple(non_class),
                       source=printable(input_dir))
