"""Step timing: wall and CPU clocks read at the end of every optimizer step.

The first (warm-up) step is left out when there are two or more: it pays the first
calls, the allocator and the probes' set-up. Readings are medians, so one step slowed
by another process on a shared machine moves a mean, not the reading; the process's
CPU time is the clock such a process slows (wall time) without inflating.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence


class StepClock:
    """The wall and CPU clocks at the start of the run and at each step's end."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []

    def step_done(self) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())

    def durations(self) -> list[float]:
        """Wall time of each timed step."""
        return _per_step(self.ends, self.started)

    def seconds(self) -> float:
        """Median wall time per timed step."""
        return _median(self.durations())

    def cpu_seconds(self) -> float:
        """Median CPU time of this process per timed step."""
        return _median(_per_step(self.cpu_ends, self.cpu_started))


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def _per_step(ends: Sequence[float], started: float) -> list[float]:
    """Each step's share of a clock read at every step's end; the first step left out
    when there are two or more."""
    if len(ends) >= 2:
        return [later - earlier for earlier, later in itertools.pairwise(ends)]
    return [ends[0] - started] if ends else []
