"""Durable deadlines on trio's clock: one task, one heap, no polling interval.

Sleeps, retry back-offs and suspend timeouts are recorded as wall-clock deadlines
(`wake_at`). A parked run registers its deadline here; the timer task sleeps until the
earliest one and calls the engine's wake-up function for every run that is due. An
entry whose run has moved on meanwhile (woken by a signal, resumed) is harmless: the
engine checks the run's durable state when the entry fires.

In real time the engine clock can drift from trio's clock (the machine was suspended,
NTP stepped the wall clock). The timer task checks the drift at most once a second
while deadlines are pending and re-anchors the clock, so deadlines recorded as wall
time still fire at the right wall time.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from datetime import datetime

import trio

from replay._engine._clock import EngineClock

# How often, in real time, the wall clock is compared with trio's clock.
_DRIFT_CHECK_SECONDS = 1.0


class Timers:
    """Calls `wake(run_id)` when a run's deadline comes.

    Args:
        clock: The engine clock (deadlines are wall-clock datetimes).
        wake: Called on the loop, once per due entry.
    """

    def __init__(self, clock: EngineClock, wake: Callable[[str], None]) -> None:
        self._clock = clock
        self._wake = wake
        self._heap: list[tuple[datetime, int, str]] = []
        self._order = itertools.count()
        self._changed = trio.Event()

    def add(self, run_id: str, at: datetime) -> None:
        """Wake `run_id` at `at` (at once if `at` has passed)."""
        heapq.heappush(self._heap, (at, next(self._order), run_id))
        if self._heap[0][2] == run_id:
            self._changed.set()

    def __len__(self) -> int:
        return len(self._heap)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The timer task: fire due entries until cancelled."""
        task_status.started()
        while True:
            self._fire_due()
            self._changed = trio.Event()
            deadline = math.inf if not self._heap else self._next_deadline()
            with trio.move_on_at(deadline):
                await self._changed.wait()

    def _next_deadline(self) -> float:
        deadline = self._clock.trio_deadline(self._heap[0][0])
        if self._clock.is_virtual():
            return deadline
        return min(deadline, trio.current_time() + _DRIFT_CHECK_SECONDS)

    def _fire_due(self) -> None:
        now = self._clock.now()  # reading the clock also catches up with a drifted wall clock
        while self._heap and self._heap[0][0] <= now:
            _, _, run_id = heapq.heappop(self._heap)
            self._wake(run_id)
