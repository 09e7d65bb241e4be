"""Two process-wide interpreter settings while engines are open, and pauses in bulk work.

**The cyclic garbage collector.** An engine holds many long-lived objects (every
parked run, every history being replayed), and makes many more while runs step. With
CPython's default first threshold (700 new container objects), the collector runs so
often that its full collections, which walk every object, take half the time of waking
20,000 runs at once; with 50,000, a fifth (each young object a run holds while it waits
is walked again and again before it is old). While any engine is open the first
threshold is at least `THRESHOLD` (young cyclic garbage waits for some tens of megabytes
instead of a few hundred objects), and it adapts: while young collections take more
than `COLLECTOR_SHARE` of the time and find next to no garbage (a burst of runs growing
the heap: 100,000 woken at once spent a fifth of their time there, in pauses of up to
2.6 s), it doubles, up to `MOST_THRESHOLD`; once they are cheap again, or find garbage,
it comes back down (see `next_threshold`).

**The interpreter lock's switch interval.** A thread that wants the GIL while another
runs Python code waits up to `sys.getswitchinterval()` (5 ms by default) before the
other must let it go, and DuckDB's Python API gives the GIL up and takes it back several
times per statement. So while one thread computes (a plain step function crunching
numbers in its worker thread), each commit made on another thread waited for the lock
again and again: a one-row commit took about 17 ms instead of 1, and other runs' steps
slowed 20 to 100 times. While any engine is open the interval is at most
`SWITCH_INTERVAL`: a commit then takes about 3.5 ms beside such a thread, and the
computing thread loses nothing measurable (it keeps the lock while nobody else wants
it).

The last engine to close puts back what it found, unless the setting was changed
meanwhile. A process that already has a higher threshold or a shorter interval keeps
it (and its threshold does not adapt).
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

THRESHOLD = 200_000
MOST_THRESHOLD = 16 * THRESHOLD
# The share of the time young collections may take before the threshold doubles; below
# a quarter of it, the threshold halves (never below `THRESHOLD`).
COLLECTOR_SHARE = 0.05
SWITCH_INTERVAL = 0.0005  # seconds

V = TypeVar("V", int, float)


class _WhileOpen(Generic[V]):
    """A setting held at `wanted` (or better) while any engine is open in the process.

    Args:
        read: Reads the setting.
        write: Changes it.
        wanted: The value engines want.
        suffices: Whether a value found is as good as `wanted` (then it is kept).
    """

    def __init__(self, read: Callable[[], V], write: Callable[[V], None], wanted: V,
                 suffices: Callable[[V], bool]) -> None:
        self._read: Callable[[], V] = read
        self._write: Callable[[V], None] = write
        self._wanted: V = wanted
        self._suffices: Callable[[V], bool] = suffices
        # Reentrant: a collection may start (and call `_Collector._observe`) in the
        # thread that holds the lock, while it allocates.
        self._lock = threading.RLock()
        self._open = 0
        self._found: V | None = None  # the value to put back, if it was changed
        self._applied: V | None = None  # the value as read back after the change

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the setting while the body runs (nested and concurrent uses count)."""
        with self._lock:
            if self._open == 0:
                self._take()
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                if self._open == 0:
                    self._give_back()

    def _take(self) -> None:
        found = self._read()
        if not self._suffices(found):
            self._write(self._wanted)
            self._found, self._applied = found, self._read()

    def _give_back(self) -> None:
        if self._found is not None:
            if self._read() == self._applied:  # else the process changed it: kept
                self._write(self._found)
            self._found = self._applied = None


def next_threshold(first: int, collected: int, pause: float, interval: float) -> int:
    """Return the first threshold to use after a young collection.

    A collection that frees a tenth of a threshold shows garbage worth collecting
    often: back to `THRESHOLD`. One that frees next to nothing and takes more than
    `COLLECTOR_SHARE` of the time walked objects that are alive (runs being woken,
    histories being replayed): collecting half as often halves that cost. One that
    takes under a quarter of the share halves the threshold again.

    Args:
        first: The threshold the collection ran at.
        collected: The objects it freed (cyclic garbage).
        pause: How long it took, in seconds.
        interval: The time from the end of the collection before to its start.
    """
    if collected * 10 >= first:
        return THRESHOLD
    if pause > COLLECTOR_SHARE * interval:
        return min(2 * first, MOST_THRESHOLD)
    if pause * 4 < COLLECTOR_SHARE * interval:
        return max(first // 2, THRESHOLD)
    return first


def _set_first_threshold(first: int) -> None:
    gc.set_threshold(first, *gc.get_threshold()[1:])


class _Collector(_WhileOpen[int]):
    """The collector's first threshold while any engine is open, adapted as it runs.

    Args:
        clock: Seconds, for the collections' pauses and the time between them.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(lambda: gc.get_threshold()[0], _set_first_threshold, THRESHOLD,
                         lambda found: found >= THRESHOLD)
        self._clock = clock
        self._began = self._ended = 0.0  # the collection under way, the one before

    def _take(self) -> None:
        super()._take()
        if self._found is not None:  # a threshold of the process's own is left alone
            self._ended = self._clock()
            gc.callbacks.append(self._observe)

    def _give_back(self) -> None:
        if self._found is not None:
            gc.callbacks.remove(self._observe)
        super()._give_back()

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        """Time each collection; after a young one, adapt the threshold."""
        with self._lock:
            now = self._clock()
            if phase == "start":
                self._began = now
                return
            pause, interval, self._ended = now - self._began, self._began - self._ended, now
            applied = self._applied  # None once closed (set and cleared with `_found`)
            if applied is None or info["generation"] == 2 or gc.get_threshold()[0] != applied:
                return  # closed meanwhile, a full collection, or the process's own value
            wanted = next_threshold(applied, info["collected"], pause, interval)
            if wanted != applied:
                _set_first_threshold(wanted)
                self._applied = wanted


_COLLECTOR = _Collector()
_SWITCHING = _WhileOpen(sys.getswitchinterval, sys.setswitchinterval, SWITCH_INTERVAL,
                        lambda found: found <= SWITCH_INTERVAL)


@contextlib.contextmanager
def tuned_for_engines() -> Iterator[None]:
    """Hold the collector's threshold and the switch interval while the body runs."""
    with _COLLECTOR.held(), _SWITCHING.held():
        yield


@contextlib.contextmanager
def no_collection() -> Iterator[None]:
    """Pause the collector while the body allocates in bulk.

    Reading and holding 100,000 runs makes millions of objects, none of them garbage;
    the collector would walk them all again and again (half the time of an open). It
    is paused for the whole process, for the open's fraction of a second.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
