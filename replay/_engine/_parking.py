"""Parked runs: no task, at most a cached generator, woken by a timer or a signal.

A run that sleeps, waits out a retry back-off or is suspended leaves its task. What it
leaves behind is a `Parked` (its interpreter, paused at the decision it waits on), kept
in a bounded least-recently-used cache. Waking a cached run continues the same
generator; an evicted one is re-created and replayed from the top, which gives the
same result because every recorded outcome is sent back again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from replay._core._interpreter import Execute, Interpreter


@dataclass(frozen=True, slots=True)
class Park:
    """A run must wait: until `wake_at`, or (None) until a signal arrives."""

    wake_at: datetime | None


@dataclass(frozen=True, slots=True)
class Parked:
    """A parked run's paused execution."""

    interpreter: Interpreter
    decision: Execute


class ParkedCache:
    """At most `size` parked executions; the least recently parked are dropped first.

    Dropping one closes its generator on the engine's loop thread (its `finally`
    blocks run; nothing it yields is executed) and calls `on_drop(run_id)`, so the
    engine can release the run's memo too.

    Args:
        size: How many parked generators to keep (0: none, every wake-up replays).
        on_drop: Called with the run id of every execution dropped.
    """

    def __init__(self, size: int, on_drop: Callable[[str], None]) -> None:
        self._size = size
        self._on_drop = on_drop
        self._parked: OrderedDict[str, Parked] = OrderedDict()

    def __len__(self) -> int:
        return len(self._parked)

    def put(self, run_id: str, parked: Parked) -> None:
        """Keep `parked`, dropping the oldest entries beyond the size."""
        self.drop(run_id)
        self._parked[run_id] = parked
        while len(self._parked) > self._size:
            oldest = next(iter(self._parked))
            self.drop(oldest)

    def take(self, run_id: str) -> Parked | None:
        """Remove and return the run's parked execution, if cached."""
        return self._parked.pop(run_id, None)

    def drop(self, run_id: str) -> None:
        """Close and forget the run's parked execution, if cached."""
        parked = self._parked.pop(run_id, None)
        if parked is not None:
            parked.interpreter.close()
            self._on_drop(run_id)

    def clear(self) -> None:
        """Drop every parked execution (engine shutdown)."""
        for run_id in list(self._parked):
            self.drop(run_id)
