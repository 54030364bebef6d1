"""Converts a folder of plant-seedling photographs into sharded TFRecords.

  python -m input_pipeline.make_tfrecords --input_dir=IN --output_dir=OUT [flags]

Input. IN is a folder of class folders (`IN/<Class Name>/*.png`, the Aarhus
`NonsegmentedV2/` layout) or a Kaggle competition root: if IN has a `train/`
subfolder, classes are read from `IN/train/` and the rest (`test/`, the csv) is
ignored. Which folders are classes:
  * a class folder is a direct subfolder of IN (or IN/train) that directly holds
    at least one file with an image extension; its name is the class name and
    labels are 0-based indices into the sorted class names;
  * any other folder (one holding only subfolders, such as a stray nested copy
    `nonsegmentedv2/` of the data set, or one with no image files) is not a class:
    it is listed under `non_class_folders` in dataset_info.json and in the
    summary, and nothing in it is read. Subfolders of class folders likewise;
  * hidden files and folders (names starting with '.') are ignored.

Images. Each one is decoded to 3-channel RGB (alpha composited over black,
16-bit scaled to 8-bit, palette/grey/CMYK converted, EXIF orientation applied),
shrunk so its longer side is at most --max_image_side (default 512: the real
images reach 3652 px, a classifier trained at 224 px gains nothing from more,
and 512 leaves room for random crops and zoom), and re-encoded as JPEG.
Files that cannot be used (not an image, empty, truncated, over 50 megapixels,
a broken symlink, a name that is not UTF-8) are skipped and reported with a
reason; symlinked class folders and files are followed. Byte-identical copies: the first in
sorted order (class, then file name) is kept and the others are reported as
skipped duplicates, so a copy can never land in both splits.

Output. OUT receives `train-00000-of-00008.tfrecord` ...,
`validation-00000-of-00001.tfrecord` ..., `labels.txt` and, written last,
`dataset_info.json`, which lists each split's records per shard
(`shard_lengths`). Each shard is written under a hidden temporary name and
renamed when complete, so an interrupted run never leaves a shard that looks
complete. OUT may be any tf.io.gfile path (local, gs://, ram://) but not IN's
class folders or a folder inside them; before any image is read, it is refused
if not empty (without --overwrite) and proven writable with a probe file.

Work. This process lists the files, de-duplicates them and plans, from the
sorted listing and --seed alone, which file goes to which split, shard and
position. Worker processes (spawned, PIL and numpy only, no TensorFlow)
hash, decode, resize and encode in chunks; this process takes their results
in plan order and is the only one that writes. So the output is byte-identical
whatever --num_workers, and memory stays flat: a bounded number of chunks is in
flight and channel statistics are summed as histograms.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import multiprocessing
import os
import posixpath
import random
import signal
import sys
import unicodedata
import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import tqdm
from absl import app, flags
from PIL import Image, ImageOps

# TensorFlow (through `records`) is imported inside the functions that write
# output, never at module level: spawned workers import this module to reach
# `_probe` and `_encode`, and keeping TF out of them saves seconds of start-up
# and hundreds of MB per worker.

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
KAGGLE_TRAIN_FOLDER = "train"
DEFAULT_MAX_IMAGE_SIDE = 512
# The largest real image is 3652x3457 (12.6 Mpx). 50 Mpx leaves room for
# bigger cameras while capping a worker's decoded image at 150 MB.
MAX_PIXELS = 50_000_000
TMP_PREFIX = ".tmp-"
DATASET_NAME = "plant_seedlings"
# Bounds of the options. Seeds: the trainer's (trainer/config.py), so one seed
# works end to end. Shards: far past any useful count (the real set fits in 8)
# and within the five digits of the shard names. Image side: below the
# trainer's smallest --image_size a stored image could only be upscaled; above
# 65500 px JPEG cannot store it. Workers: past a few per core, more processes
# only cost memory, and an unbounded count would start one per image.
MAX_SEED = 2**31 - 1
MAX_SHARDS = 10_000
MIN_IMAGE_SIDE = 32
JPEG_MAX_SIDE = 65_500
WORKERS_PER_CORE = 4
# Images per task sent to a worker, and tasks in flight per worker: enough to
# keep workers busy while a big image holds the head of the ordered stream,
# few enough to keep memory flat (about 64 encoded images per worker).
_CHUNK_SIZE = 8
_CHUNKS_IN_FLIGHT_PER_WORKER = 8


class ConversionError(Exception):
    """A problem with the input, the output folder or the options, in one line."""


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """How to convert; the one place of the defaults and bounds, the CLI's included."""

    num_shards: int = 8  # train shards; validation gets proportionally fewer, at least 1
    validation_fraction: float = 0.1  # share of each class held out, in (0, 1)
    seed: int = 0  # fixes the split and the record order (not the worker count)
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE  # longer side limit; 0 keeps the size
    jpeg_quality: int = 95
    num_workers: int | None = None  # processes decoding images; None: all cores
    overwrite: bool = False  # replace the converted files of an earlier run
    show_progress: bool = True  # tqdm bars on stderr, when it is a terminal

    def check(self) -> None:
        """Raises ConversionError naming the first bad value and its range."""
        _check_range("--num_shards", self.num_shards, 1, MAX_SHARDS)
        # Written so that NaN, which fails every comparison, is refused too.
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConversionError(
                "--validation_fraction must be in (0, 1), "
                f"got {self.validation_fraction}"
            )
        _check_range("--seed", self.seed, 0, MAX_SEED)
        if self.max_image_side != 0:
            _check_range("--max_image_side", self.max_image_side, MIN_IMAGE_SIDE,
                         JPEG_MAX_SIDE, "0 (full size) or ")
        _check_range("--jpeg_quality", self.jpeg_quality, 1, 100)
        if self.num_workers is not None:
            cores = _usable_cores()
            _check_range("--num_workers", self.num_workers, 1, WORKERS_PER_CORE * cores,
                         suffix=f" ({WORKERS_PER_CORE} per usable core, {cores} cores)")

    def workers(self) -> int:
        return self.num_workers or _usable_cores()


def _check_range(
    flag: str, value: int, low: int, high: int, prefix: str = "", suffix: str = ""
) -> None:
    if not low <= value <= high:
        raise ConversionError(f"{flag} must be {prefix}in {low}..{high}{suffix}, got {value}")


def _usable_cores() -> int:
    """The cores this process may use: a container's CPU set, not all of the host's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ---------------------------------------------------------------------------
# Finding classes.


@dataclasses.dataclass(frozen=True)
class SourceImage:
    path: str  # as opened
    rel: str  # relative to input_dir, '/'-separated: reported and stored in records
    label: int
    class_name: str


Skipped = tuple[SourceImage, str]  # a file left out, and why


@dataclasses.dataclass(frozen=True)
class InputLayout:
    """What `find_classes` found in the input folder."""

    root: str  # the folder holding the class folders: input_dir or input_dir/train
    class_names: tuple[str, ...]
    sources: tuple[SourceImage, ...]  # every usable file of every class, sorted
    unusable: tuple[Skipped, ...]  # broken symlinks, names not UTF-8...: skipped, and why
    non_class_folders: tuple[dict[str, str], ...]


def _visible_entries(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _shown(path: str) -> str:
    """`path` as printable text: bytes that are not UTF-8 appear as `\\xff`.

    Python hands such names over with lone surrogates, which UTF-8 encoding
    refuses: in a record, on stdout and in TensorFlow's paths.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


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
        return None if _shown(entry.name) == entry.name else "file name is not UTF-8: rename it"
    if entry.is_symlink():  # and neither file nor folder: dangling, or a loop
        try:
            os.stat(entry.path)
        except OSError as error:
            return f"broken symlink: to {_shown(os.readlink(entry.path))} ({error.strerror})"
    return "not a regular file"


def _check_class_name(root: str, name: str) -> None:
    # A class name is a line of labels.txt and UTF-8 text in every record.
    if _shown(name) != name or any(unicodedata.category(c) == "Cc" for c in name):
        raise ConversionError(
            f"class folder {name!r} in {_shown(root)} has a name that is not UTF-8 or "
            "holds a control character (a line break?): rename it"
        )


def _check_input_dir(input_dir: str) -> None:
    from input_pipeline import storage

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
    """Lists class folders and their files under `input_dir` (rule in the module doc)."""
    _check_input_dir(input_dir)
    root = os.path.join(input_dir, KAGGLE_TRAIN_FOLDER)
    if not os.path.isdir(root):
        root = input_dir
    rel = lambda path: _shown(os.path.relpath(path, input_dir).replace(os.sep, "/"))
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
    return InputLayout(root, names, tuple(sources), tuple(unusable), tuple(non_class))


# ---------------------------------------------------------------------------
# Work done in the worker processes: PIL and numpy only.


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    jpeg: bytes
    height: int
    width: int
    # 768 bins (R, G, B): exact, small, and summable in any order, so channel
    # statistics do not depend on worker scheduling.
    histogram: np.ndarray


def _skip_reason(error: Exception) -> str:
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image: PIL cannot identify the format"
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"decompression bomb: {error}"
    if isinstance(error, OSError) and error.errno is not None:
        # The file system's error (PIL's own OSErrors carry no errno): e.g. a
        # file removed or made unreadable after it was listed.
        return f"unreadable: {error.strerror}"
    if isinstance(error, OSError) and "truncated" in str(error):
        return f"truncated: {error}"
    return f"corrupt: {type(error).__name__}: {error}"


def _open_checked(path: str) -> Image.Image:
    """Opens (reads the header only) and refuses images over MAX_PIXELS."""
    with warnings.catch_warnings():
        # PIL only warns between its limit and twice its limit; make it fatal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(path)
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise Image.DecompressionBombError(
            f"{width}x{height} pixels is over the {MAX_PIXELS} pixel limit"
        )
    return image


def _probe(path: str) -> tuple[bytes | None, str | None]:
    """Phase 1: (sha256 of the file bytes, None) or (None, why it is unusable).

    Only the header is decoded here; truncation is caught in `_encode`.
    """
    try:
        if os.path.getsize(path) == 0:
            return None, "empty file"
        _open_checked(path).close()
        with open(path, "rb") as f:
            # Streams the file, so a huge file costs no memory.
            return hashlib.file_digest(f, "sha256").digest(), None
    except Exception as error:  # noqa: BLE001 - see _encode
        return None, _skip_reason(error)


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    # PIL's own I;16 -> L conversion clips at 255 instead of scaling, which
    # would turn every 16-bit greyscale photograph white.
    values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
    return Image.fromarray(values.astype(np.uint8), "L").convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 3-channel RGB."""
    if image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    ):
        # Composite over black: the segmented Aarhus images use black for
        # "no plant", and the colour hidden under alpha 0 is arbitrary.
        rgba = image.convert("RGBA")
        rgb = Image.new("RGB", rgba.size)
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb
    if image.mode == "I" or image.mode.startswith("I;16"):
        return _sixteen_bit_to_rgb(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    longer = max(image.size)
    if not max_side or longer <= max_side:
        return image
    scale = max_side / longer
    size = tuple(max(1, round(side * scale)) for side in image.size)
    # reducing_gap first shrinks by an integer factor (fast box filter), then
    # resamples with Lanczos: near-identical output, several times faster on
    # the 3000 px originals.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _encode(task: tuple[str, int, int]) -> EncodedImage | str:
    """Phase 2: one file -> RGB JPEG and histogram, or the reason it is skipped."""
    path, max_side, quality = task
    try:
        with _open_checked(path) as image:
            image.load()  # truncation surfaces here
            ImageOps.exif_transpose(image, in_place=True)
            rgb = _shrink(_to_rgb(image), max_side)
    except Exception as error:  # noqa: BLE001
        # PIL's format plugins raise a zoo of exception types on malformed
        # input (OSError, SyntaxError, struct.error, ValueError...). A failure
        # confined to one file must be reported, not end a long run.
        return _skip_reason(error)
    if max(rgb.size) > JPEG_MAX_SIDE:  # only with --max_image_side=0
        return (f"too large: {rgb.width}x{rgb.height} px, JPEG stores at most "
                f"{JPEG_MAX_SIDE} px a side; pass --max_image_side")
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=quality)
    histogram = np.asarray(rgb.histogram(), dtype=np.int64)
    return EncodedImage(buffer.getvalue(), rgb.height, rgb.width, histogram)


# ---------------------------------------------------------------------------
# Running work in order, in parallel, with bounded memory.


def _run_chunk(fn: Callable[[Any], Any], chunk: Sequence[Any]) -> list[Any]:
    return [fn(item) for item in chunk]


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ordered_map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    executor: concurrent.futures.Executor | None,
    num_workers: int,
) -> Iterator[Any]:
    """map() in input order, in chunks, with a bounded number of chunks in flight.

    Input order makes the output independent of worker scheduling; the bound
    keeps memory flat (Executor.map would submit every item up front); chunks
    keep the per-task cost of the process pool (pickling, queues, wake-ups)
    small next to the work.
    """
    if executor is None:
        yield from map(fn, items)
        return
    pending: collections.deque = collections.deque()
    for chunk in _chunks(items, _CHUNK_SIZE):
        with _stop_signals_blocked():  # submit may spawn a worker
            pending.append(executor.submit(_run_chunk, fn, chunk))
        if len(pending) >= _CHUNKS_IN_FLIGHT_PER_WORKER * num_workers:
            yield from pending.popleft().result()
    while pending:
        yield from pending.popleft().result()


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Blocks Ctrl-C and SIGTERM in this thread; a worker spawned meanwhile inherits the block.

    Ctrl-C in a terminal signals the whole process group, and so may a
    SIGTERM (a scheduler, `docker stop`). Only the parent should act on them
    (remove the shard in progress, stop the pool). A worker that got Ctrl-C
    would print its own traceback, even while still importing, before any
    pool initializer could ignore it; one ended by SIGTERM would break the
    pool under the parent. The pool spawns workers on demand, inside submit,
    so each submit runs blocked; a signal arriving meanwhile reaches the
    parent when the block lifts.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT, signal.SIGTERM])
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _executor(num_workers: int) -> Iterator[concurrent.futures.Executor | None]:
    """Worker processes, or None to work in this process when 1 is asked for."""
    if num_workers <= 1:
        yield None
        return
    # spawn, not fork: forking a parent that has TF's threads running can
    # deadlock the children.
    context = multiprocessing.get_context("spawn")
    executor = concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context)
    try:
        yield executor
    except concurrent.futures.BrokenExecutor as error:  # e.g. a worker killed for memory
        raise ConversionError(
            "a worker process died (out of memory?); no partial shard was left"
        ) from error
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _progress(total: int, description: str, enabled: bool) -> tqdm.tqdm:
    # disable=None: bars only on a terminal. In a log or a pipe, redrawn bars
    # are noise, and an error must stay the one line the user reads.
    return tqdm.tqdm(
        total=total, desc=description, unit="img", file=sys.stderr,
        disable=None if enabled else True, dynamic_ncols=True,
    )


# ---------------------------------------------------------------------------
# Scanning, de-duplicating and planning (parent process).


def _scan(
    sources: Sequence[SourceImage],
    executor: concurrent.futures.Executor | None,
    options: ConvertOptions,
) -> tuple[list[SourceImage], list[Skipped]]:
    """Drops unreadable files and byte-identical copies; returns (kept, skipped)."""
    results = _ordered_map(_probe, (s.path for s in sources), executor, options.workers())
    kept, skipped = [], []
    first_copy: dict[bytes, SourceImage] = {}
    with _progress(len(sources), "scanning", options.show_progress) as bar:
        for source, (digest, reason) in zip(sources, results):
            bar.update()
            if reason is None and digest in first_copy:
                reason = f"duplicate: same bytes as {first_copy[digest].rel}"
            if reason is not None:
                skipped.append((source, reason))
                continue
            first_copy[digest] = source
            kept.append(source)
    return kept, skipped


def _check_every_class_has_images(
    class_names: Sequence[str], counts: collections.Counter, skipped: Sequence[Skipped]
) -> None:
    for label, name in enumerate(class_names):
        if counts[label] == 0:
            in_class = [(s, reason) for s, reason in skipped if s.label == label]
            example = f" (e.g. {in_class[0][0].rel}: {in_class[0][1]})" if in_class else ""
            raise ConversionError(
                f"class '{name}' has no valid images: {len(in_class)} file(s) skipped{example}"
            )


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    num_shards: int
    sources: tuple[SourceImage, ...]  # in record order


def _num_validation(class_size: int, fraction: float) -> int:
    # At least one per class (when it has two), so per-class validation
    # metrics exist; never all of it, so every class is trained on.
    if class_size < 2:
        return 0
    return min(class_size - 1, max(1, round(class_size * fraction)))


def _shards(split: str, sources: Sequence[SourceImage], num_shards: int) -> list[ShardPlan]:
    num_shards = max(1, min(num_shards, len(sources)))  # no empty shards
    bounds = [len(sources) * i // num_shards for i in range(num_shards + 1)]
    return [
        ShardPlan(split, i, num_shards, tuple(sources[bounds[i] : bounds[i + 1]]))
        for i in range(num_shards)
    ]


def plan_shards(
    sources: Sequence[SourceImage], num_classes: int, options: ConvertOptions
) -> list[ShardPlan]:
    """Assigns every file to a split and shard, from the seed alone.

    Stratified: each class is shuffled and split on its own. Each split is
    then shuffled so that every shard mixes all classes.
    """
    from input_pipeline import records

    rng = random.Random(options.seed)
    by_class: list[list[SourceImage]] = [[] for _ in range(num_classes)]
    for source in sources:
        by_class[source.label].append(source)
    train, validation = [], []
    for members in by_class:
        rng.shuffle(members)
        n_val = _num_validation(len(members), options.validation_fraction)
        validation += members[:n_val]
        train += members[n_val:]
    rng.shuffle(train)
    rng.shuffle(validation)
    train_shards = _shards(records.TRAIN, train, options.num_shards)
    val_share = len(validation) / max(1, len(train))
    return train_shards + _shards(
        records.VALIDATION, validation, round(len(train_shards) * val_share)
    )


# ---------------------------------------------------------------------------
# Writing (parent process; the only process that touches the output folder).


def _check_outside_class_folders(output_dir: str, class_root: str) -> None:
    """Refuses an output folder that is the class root or inside it.

    There, the records would mix with the photographs, and the next
    conversion would read them as a class folder or as bad images. Beside or
    above the class folders is fine (a Kaggle root IN, or IN/records beside
    IN/train): the converter writes and removes only its own file names at
    the top of --output_dir, never in the subfolders that hold the photographs.
    """
    if not output_dir or "://" in output_dir:
        return  # empty: storage says so; remote: the input is local, so no overlap
    out, root = os.path.realpath(output_dir), os.path.realpath(class_root)
    if os.path.commonpath([out, root]) == root:
        suggestion = os.path.join(os.path.dirname(os.path.abspath(class_root)), "records")
        raise ConversionError(
            f"--output_dir={output_dir} is inside the class folders of --input_dir "
            f"({class_root}): the records would land among the photographs; pass a "
            f"folder outside it, e.g. --output_dir={suggestion}"
        )


def _check_output_dir(output_dir: str, class_root: str, overwrite: bool) -> None:
    """Refuses, before any image is read, an output folder that cannot work.

    The not-empty refusal comes before anything is created; then a probe file
    proves the folder (or the bucket) exists and grants writes.
    """
    import tensorflow as tf
    from input_pipeline import storage

    try:
        storage.check_spelling(output_dir, "--output_dir")
    except storage.PathError as error:
        raise ConversionError(str(error)) from error
    _check_outside_class_folders(output_dir, class_root)
    try:
        if not overwrite and tf.io.gfile.isdir(output_dir) and tf.io.gfile.listdir(output_dir):
            raise ConversionError(
                f"--output_dir={output_dir} is not empty; pass --overwrite to replace "
                "the converted data in it"
            )
        storage.check_output_dir(output_dir, "--output_dir")
    except storage.PathError as error:
        raise ConversionError(str(error)) from error
    except tf.errors.OpError as error:
        raise ConversionError(
            f"--output_dir={output_dir} cannot be read ({storage.first_line(error)})"
        ) from error


@contextlib.contextmanager
def _writing(output_dir: str) -> Iterator[None]:
    """Turns a failed write (disk full, a folder where a file goes) into one line.

    The folder was writable at start-up, so this is rare and late; shards are
    renamed only when complete and dataset_info.json is written last, so what
    is left does not look like a finished data set.
    """
    import tensorflow as tf
    from input_pipeline import storage

    try:
        yield
    except tf.errors.OpError as error:
        raise ConversionError(
            f"writing to --output_dir={output_dir} failed ({storage.first_line(error)}); "
            "complete shards are kept, dataset_info.json is not written"
        ) from error


def _remove_old_outputs(output_dir: str) -> None:
    """Removes what an earlier run wrote (and only that)."""
    import tensorflow as tf
    from input_pipeline import records

    # dataset_info.json first: if this is interrupted, what is left must not
    # look like a complete data set.
    names = [records.INFO_FILE, records.LABELS_FILE]
    names += [name + ".tmp" for name in names]  # temporaries of records.write_*
    paths = [posixpath.join(output_dir, n) for n in names]
    for split in records.SPLITS:
        paths += tf.io.gfile.glob(records.shard_pattern(output_dir, split))
    paths += tf.io.gfile.glob(posixpath.join(output_dir, TMP_PREFIX + "*"))
    for path in paths:
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)


@contextlib.contextmanager
def _atomic_shard(output_dir: str, name: str) -> Iterator[Any]:
    """A TFRecordWriter on a hidden temporary name, renamed when complete.

    On gs:// the rename is copy + delete, but the copy is one object write,
    so the final name still appears only with complete content.
    """
    import tensorflow as tf

    tmp = posixpath.join(output_dir, TMP_PREFIX + name)
    writer = None
    try:
        # Inside the try: a Ctrl-C just after the file is created must
        # remove it too.
        writer = tf.io.TFRecordWriter(tmp)
        yield writer
    except BaseException:
        if writer is not None:
            writer.close()
        with contextlib.suppress(tf.errors.OpError):
            tf.io.gfile.remove(tmp)
        raise
    writer.close()
    tf.io.gfile.rename(tmp, posixpath.join(output_dir, name), overwrite=True)


@dataclasses.dataclass
class _Tally:
    """Running totals of what was written; flat in the size of the data set."""

    class_counts: dict[str, collections.Counter]  # split -> label -> examples
    shard_lengths: dict[str, list[int]]  # split -> records in each shard, in index order
    statistics_split: str  # whose pixels make mean and std
    histogram: np.ndarray
    skipped: list[Skipped]

    def add(self, split: str, source: SourceImage, encoded: EncodedImage) -> None:
        self.class_counts[split][source.label] += 1
        if split == self.statistics_split:
            self.histogram += encoded.histogram


def _example_bytes(source: SourceImage, encoded: EncodedImage) -> bytes:
    from input_pipeline import records

    return records.make_example(
        encoded.jpeg,
        height=encoded.height,
        width=encoded.width,
        filename=source.rel,
        label=source.label,
        class_name=source.class_name,
    ).SerializeToString(deterministic=True)  # sorted map keys: reruns give equal bytes


def _write_shards(
    plan: Sequence[ShardPlan],
    output_dir: str,
    executor: concurrent.futures.Executor | None,
    options: ConvertOptions,
    tally: _Tally,
) -> None:
    """Encodes every planned file in plan order and writes the shards."""
    from input_pipeline import records

    tasks = (
        (s.path, options.max_image_side, options.jpeg_quality)
        for shard in plan
        for s in shard.sources
    )
    results = _ordered_map(_encode, tasks, executor, options.workers())
    total = sum(len(shard.sources) for shard in plan)
    with _progress(total, "converting", options.show_progress) as bar:
        for shard in plan:
            name = records.shard_name(shard.split, shard.index, shard.num_shards)
            length = 0
            with _atomic_shard(output_dir, name) as writer:
                for source, result in zip(shard.sources, results):
                    bar.update()
                    if isinstance(result, str):
                        tally.skipped.append((source, result))
                        continue
                    writer.write(_example_bytes(source, result))
                    tally.add(shard.split, source, result)
                    length += 1
            # Counted as written, so files skipped while encoding are not in
            # it: readers size the data set without reading every shard.
            tally.shard_lengths[shard.split].append(length)


# ---------------------------------------------------------------------------
# dataset_info.json and the summary.


def _channel_stats(histogram: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0..1 scale from a (3, 256) histogram."""
    values = np.arange(256, dtype=np.float64) / 255.0
    counts = histogram.reshape(3, 256).astype(np.float64)
    n = counts.sum(axis=1)
    mean = counts @ values / n
    var = counts @ (values**2) / n - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def _dataset_info(
    input_dir: str,
    layout: InputLayout,
    plan: Sequence[ShardPlan],
    options: ConvertOptions,
    tally: _Tally,
) -> dict[str, Any]:
    mean, std = _channel_stats(tally.histogram)
    splits = {}
    for split, counts in tally.class_counts.items():
        splits[split] = {
            "num_examples": sum(counts.values()),
            "num_shards": sum(1 for shard in plan if shard.split == split),
            "shard_lengths": tally.shard_lengths[split],
            "class_counts": {n: counts[i] for i, n in enumerate(layout.class_names)},
        }
    return {
        "name": DATASET_NAME,
        "source": _shown(input_dir),
        "class_names": list(layout.class_names),
        "splits": splits,
        "image": {
            "format": "JPEG",
            "jpeg_quality": options.jpeg_quality,
            "max_image_side": options.max_image_side,
            "mean": mean,
            "std": std,
        },
        "seed": options.seed,
        "validation_fraction": options.validation_fraction,
        "skipped": [{"file": s.rel, "reason": reason} for s, reason in tally.skipped],
        "non_class_folders": list(layout.non_class_folders),
    }


def _summary_of_skipped(skipped: Sequence[dict[str, str]]) -> list[str]:
    # Reasons read "kind: detail"; one line per kind keeps a summary of a
    # thousand bad files readable (dataset_info.json lists every one).
    by_kind: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    for entry in skipped:
        by_kind[entry["reason"].split(":")[0]].append(entry)
    lines = [f"skipped {len(skipped)} file(s)" + (":" if skipped else "")]
    for kind, entries in sorted(by_kind.items()):
        first = entries[0]
        lines.append(f"  {kind}: {len(entries)}, e.g. {first['file']} ({first['reason']})")
    return lines


def format_summary(info: dict[str, Any]) -> str:
    """The end-of-run report: examples per split and class, what was skipped."""
    splits = info["splits"]
    lines = [f"converted {info['source']}:"]
    for split, entry in splits.items():
        lines.append(
            f"  {split}: {entry['num_examples']} examples in {entry['num_shards']} shard(s)"
        )
    width = max(len(n) for n in info["class_names"] + ["class"])
    lines.append(f"  {'class':<{width}}" + "".join(f"{s:>12}" for s in splits))
    for name in info["class_names"]:
        counts = "".join(f"{e['class_counts'][name]:>12}" for e in splits.values())
        lines.append(f"  {name:<{width}}{counts}")
    lines += _summary_of_skipped(info["skipped"])
    for folder in info["non_class_folders"]:
        lines.append(f"not a class folder, not read: {folder['folder']}/ {folder['reason']}")
    image = info["image"]
    lines.append(f"train mean {image['mean']} std {image['std']} (RGB, 0..1)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The conversion, start to end.


def convert(input_dir: str, output_dir: str, **options: Any) -> dict[str, Any]:
    """Converts `input_dir` into TFRecord shards in `output_dir`.

    Args:
      input_dir: local folder of class folders, or a Kaggle root with train/.
      output_dir: any tf.io.gfile folder; must be empty unless `overwrite`.
      **options: fields of `ConvertOptions` (num_shards, validation_fraction,
        seed, max_image_side, jpeg_quality, num_workers, overwrite,
        show_progress), with its defaults.

    Returns:
      The dict written to dataset_info.json.

    Workers are started with `spawn`: a script calling this with more than
    one worker needs the usual `if __name__ == "__main__":` guard.

    Raises:
      ConversionError: bad options, input or output folder, or a class left
        without valid images.
    """
    options = ConvertOptions(**options)
    options.check()
    layout = find_classes(input_dir)
    _check_output_dir(output_dir, layout.root, options.overwrite)
    with _executor(min(options.workers(), len(layout.sources))) as executor:
        kept, skipped = _scan(layout.sources, executor, options)
        skipped = [*layout.unusable, *skipped]
        counts = collections.Counter(s.label for s in kept)
        _check_every_class_has_images(layout.class_names, counts, skipped)
        plan = plan_shards(kept, len(layout.class_names), options)
        tally = _new_tally(skipped)
        with _writing(output_dir):
            if options.overwrite:
                _remove_old_outputs(output_dir)
            _write_shards(plan, output_dir, executor, options, tally)
    written = sum(tally.class_counts.values(), collections.Counter())
    _check_every_class_has_images(layout.class_names, written, tally.skipped)
    info = _dataset_info(input_dir, layout, plan, options, tally)
    with _writing(output_dir):
        _write_metadata(output_dir, layout.class_names, info)
    return info


def _new_tally(skipped: list[Skipped]) -> _Tally:
    from input_pipeline import records

    counts = {split: collections.Counter() for split in records.SPLITS}
    lengths: dict[str, list[int]] = {split: [] for split in records.SPLITS}
    return _Tally(counts, lengths, records.TRAIN, np.zeros(3 * 256, dtype=np.int64), skipped)


def _write_metadata(output_dir: str, class_names: Sequence[str], info: dict[str, Any]) -> None:
    from input_pipeline import records

    records.write_labels(output_dir, class_names)
    # Last of all: its presence is what marks the folder as complete.
    records.write_json(posixpath.join(output_dir, records.INFO_FILE), info)


# ---------------------------------------------------------------------------
# Command line.


def _define_flags() -> None:
    # Defined here, not at import, so that modules importing `convert` (which
    # have flags of their own, e.g. --seed) do not collide with these. --help
    # lists the main module's flags: naming it makes that work for the
    # `seedlings-make-tfrecords` script as well as for `python -m`.
    main = {"module_name": sys.argv[0]}
    defaults = ConvertOptions()
    flags.DEFINE_string(
        "input_dir", None,
        "Local folder of class folders (IN/<Class Name>/*.png) or a Kaggle root "
        "holding train/. A class folder directly holds image files; other folders "
        "are reported, not read.",
        required=True, **main,
    )
    flags.DEFINE_string(
        "output_dir", None,
        "Folder for the shards, labels.txt and dataset_info.json: local, gs:// or "
        "any tf.io.gfile path. Must be empty unless --overwrite.",
        required=True, **main,
    )
    flags.DEFINE_integer(
        "num_shards", defaults.num_shards,
        f"Number of train shards, 1..{MAX_SHARDS} (capped at the number of examples); "
        "validation gets proportionally fewer, at least 1.",
        **main,
    )
    flags.DEFINE_float(
        "validation_fraction", defaults.validation_fraction,
        "Share of each class held out for validation, in (0, 1); at least one "
        "image of every class with two or more.",
        **main,
    )
    flags.DEFINE_integer(
        "seed", defaults.seed,
        f"Seed of the train/validation split and of the record order, 0..{MAX_SEED}.",
        **main,
    )
    flags.DEFINE_integer(
        "max_image_side", defaults.max_image_side,
        "Shrink images so that the longer side is at most this many pixels, "
        f"keeping the aspect ratio: {MIN_IMAGE_SIDE}..{JPEG_MAX_SIDE}, or 0 to keep the "
        "original size.",
        **main,
    )
    flags.DEFINE_integer(
        "jpeg_quality", defaults.jpeg_quality, "Quality of the re-encoded JPEGs, 1..100.", **main
    )
    flags.DEFINE_integer(
        "num_workers", None,
        f"Processes decoding and encoding images, 1 to {WORKERS_PER_CORE} per usable core; "
        "default one per core. 1 works in this process.",
        **main,
    )
    flags.DEFINE_boolean(
        "overwrite", defaults.overwrite,
        "Replace the converted files already in --output_dir (shards, labels.txt, "
        "dataset_info.json); other files are left alone.",
        **main,
    )


def _fail(message: str) -> None:
    sys.exit(f"make_tfrecords: error: {message}")


def _stop(signum: int, frame: Any) -> None:
    # SIGTERM (kill, a scheduler) stops the run as Ctrl-C does. By default it
    # would end this process alone, leaving its workers waiting forever.
    raise KeyboardInterrupt


def _parse_flags(argv: list[str]) -> list[str]:
    # absl's default parser prints two lines; users get one line naming the flag.
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        _fail(str(error))


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    try:
        info = convert(
            f.input_dir, f.output_dir, num_shards=f.num_shards,
            validation_fraction=f.validation_fraction, seed=f.seed,
            max_image_side=f.max_image_side, jpeg_quality=f.jpeg_quality,
            num_workers=f.num_workers, overwrite=f.overwrite,
        )
    except ConversionError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        _fail("interrupted: complete shards are kept, dataset_info.json is not written")
    print(format_summary(info))


def run() -> None:
    """Console entry point (`seedlings-make-tfrecords`)."""
    # The converter runs no TF math: these only silence the notices TF prints
    # on import, so that an error stays the one line the user needs.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    signal.signal(signal.SIGTERM, _stop)
    _define_flags()
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
