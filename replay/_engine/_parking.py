"""Parked runs' machines: a bounded cache, so that a parked run costs little memory.

A run that sleeps, waits out a retry back-off or is suspended leaves its task. What it
leaves behind is its `RunMachine`, paused at the command it waits on, kept here at
most `size` at a time, least recently parked dropped first. Waking a cached run
continues the same generator; a dropped one is loaded and replayed from the top.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from replay._core._machine import RunMachine


class ParkedCache:
    """At most `size` parked machines; the least recently parked are dropped first.

    Dropping one closes its generator on the engine's loop thread (its `finally`
    blocks run; nothing it yields is executed) and calls `on_drop(run_id)`.

    Args:
        size: How many parked machines to keep (0: none, every wake-up replays).
        on_drop: Called with the run id of every machine dropped.
    """

    def __init__(self, size: int, on_drop: Callable[[str], None]) -> None:
        self._size = size
        self._on_drop = on_drop
        self._parked: OrderedDict[str, RunMachine] = OrderedDict()

    def __len__(self) -> int:
        return len(self._parked)

    def put(self, run_id: str, machine: RunMachine) -> None:
        """Keep `machine`, dropping the oldest entries beyond the size."""
        self.drop(run_id)
        self._parked[run_id] = machine
        while len(self._parked) > self._size:
            self.drop(next(iter(self._parked)))

    def take(self, run_id: str) -> RunMachine | None:
        """Remove and return the run's parked machine, if cached."""
        return self._parked.pop(run_id, None)

    def drop(self, run_id: str) -> None:
        """Close and forget the run's parked machine, if cached."""
        machine = self._parked.pop(run_id, None)
        if machine is not None:
            machine.close()
            self._on_drop(run_id)

    def clear(self) -> None:
        """Drop every parked machine (engine shutdown)."""
        for run_id in list(self._parked):
            self.drop(run_id)
