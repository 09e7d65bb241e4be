"""Python's cyclic garbage collector while engines are open, and in bulk work.

An engine holds many long-lived objects (every parked run, every history being
replayed), and makes many more while runs step. With CPython's default first
threshold (700 new container objects), the collector runs so often that its full
collections, which walk every object, take half the time of waking 20,000 runs at
once; with 50,000, a fifth (each young object a run holds while it waits is walked
again and again before it is old). While any engine is open in the process the
first threshold is at least `THRESHOLD` (young cyclic garbage waits for some tens of
megabytes instead of a few hundred objects); the last engine to close puts back the
thresholds it found, unless they were changed meanwhile. A process that sets a
higher threshold keeps it.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

THRESHOLD = 200_000

_lock = threading.Lock()
_open = 0
_found: tuple[int, ...] | None = None  # the thresholds to put back, if we raised them


@contextlib.contextmanager
def collector_tuned() -> Iterator[None]:
    """Raise the collector's first threshold to `THRESHOLD` while the body runs."""
    global _open, _found
    with _lock:
        if _open == 0:
            found = gc.get_threshold()
            if found[0] < THRESHOLD:
                gc.set_threshold(THRESHOLD, *found[1:])
                _found = found
        _open += 1
    try:
        yield
    finally:
        with _lock:
            _open -= 1
            if _open == 0 and _found is not None:
                if gc.get_threshold()[0] == THRESHOLD:
                    gc.set_threshold(*_found)
                _found = None


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
