"""Running work in order, in parallel worker processes, with bounded memory.

Spawned workers import this module (to run `_run_chunk`) and `encoding`
(the work itself), so it imports no TensorFlow.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import multiprocessing
import signal
import sys
from typing import Any, Callable, Iterable, Iterator, Sequence

import tqdm

from input_pipeline.conversion.options import ConversionError

# Items per task sent to a worker, and tasks in flight per worker: enough to
# keep workers busy while a big image holds the head of the ordered stream,
# few enough to keep memory flat (about 64 encoded images per worker).
_CHUNK_SIZE = 8
_CHUNKS_IN_FLIGHT_PER_WORKER = 8


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


def ordered_map(
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

    Args:
      fn: picklable by name (a module-level function), run on every item.
      items: the inputs, read lazily.
      executor: from `worker_pool`; None runs `fn` in this process.
      num_workers: the pool's size, which sets how many chunks are in flight.
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
def worker_pool(num_workers: int) -> Iterator[concurrent.futures.Executor | None]:
    """Worker processes, or None to work in this process when 1 is asked for.

    Raises:
      ConversionError: a worker died (the pool is broken); the caller's
        cleanup, such as removing the shard in progress, has run.
    """
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


def progress_bar(total: int, description: str, enabled: bool) -> tqdm.tqdm:
    """A bar of `total` images on stderr, shown only when `enabled` and on a terminal."""
    # disable=None: bars only on a terminal. In a log or a pipe, redrawn bars
    # are noise, and an error must stay the one line the user reads.
    return tqdm.tqdm(
        total=total, desc=description, unit="img", file=sys.stderr,
        disable=None if enabled else True, dynamic_ncols=True,
    )
