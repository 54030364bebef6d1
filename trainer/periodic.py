"""When to act: loop boundaries, periodic actions and throughput.

Kept free of TensorFlow and of the wall clock (the clock is an argument) so
the logic is tested exactly, as CommonLoopUtils does.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable


def next_stop(step: int, target: int, steps_per_loop: int, *,
              intervals: tuple[int, ...] = (), milestones: tuple[int, ...] = ()) -> int:
    """The step at which the next loop of training steps must return to Python.

    A loop runs at most `steps_per_loop` steps and stops early on any multiple
    of an interval (eval, checkpoint) and at any milestone (profiling), so
    those actions happen at exactly the steps the user asked for.
    """
    stop = min(target, step + steps_per_loop)
    for every in intervals:
        if every > 0:
            stop = min(stop, (step // every + 1) * every)
    for milestone in milestones:
        if milestone > step:
            stop = min(stop, milestone)
    return stop


@dataclasses.dataclass(frozen=True)
class Every:
    """Fires on steps that are multiples of `steps` (never when `steps` is 0)."""

    steps: int

    def due(self, step: int) -> bool:
        return self.steps > 0 and step > 0 and step % self.steps == 0


@dataclasses.dataclass
class Throughput:
    """Images per second over the last loop, and the time left at that pace."""

    global_batch_size: int
    clock: Callable[[], float] = time.monotonic
    _last_time: float | None = None
    _last_step: int = 0

    def start(self, step: int) -> None:
        self._last_time, self._last_step = self.clock(), step

    def update(self, step: int, target: int) -> tuple[float, float]:
        """Returns (images/s, seconds left) since the last call, then restarts."""
        now = self.clock()
        elapsed = max(now - self._last_time, 1e-9)
        steps = step - self._last_step
        self._last_time, self._last_step = now, step
        images_per_second = steps * self.global_batch_size / elapsed
        seconds_left = (target - step) * elapsed / steps if steps else 0.0
        return images_per_second, seconds_left


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
