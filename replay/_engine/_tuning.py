"""Two process-wide interpreter settings while engines are open, and pauses in bulk work.

**The cyclic garbage collector.** An engine holds many long-lived objects (every
parked run, every history being replayed), and makes many more while runs step. With
CPython's default first threshold (700 new container objects), the collector runs so
often that its full collections, which walk every object, take half the time of waking
20,000 runs at once; with 50,000, a fifth (each young object a run holds while it waits
is walked again and again before it is old). While any engine is open the first
threshold is at least `THRESHOLD` (young cyclic garbage waits for some tens of megabytes
instead of a few hundred objects).

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
it.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

THRESHOLD = 200_000
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
        self._lock = threading.Lock()
        self._open = 0
        self._found: V | None = None  # the value to put back, if it was changed
        self._applied: V | None = None  # the value as read back after the change

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the setting while the body runs (nested and concurrent uses count)."""
        with self._lock:
            if self._open == 0:
                found = self._read()
                if not self._suffices(found):
                    self._write(self._wanted)
                    self._found, self._applied = found, self._read()
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                if self._open == 0 and self._found is not None:
                    if self._read() == self._applied:  # else the process changed it: kept
                        self._write(self._found)
                    self._found = self._applied = None


def _set_first_threshold(first: int) -> None:
    gc.set_threshold(first, *gc.get_threshold()[1:])


_COLLECTOR = _WhileOpen(lambda: gc.get_threshold()[0], _set_first_threshold, THRESHOLD,
                        lambda found: found >= THRESHOLD)
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
