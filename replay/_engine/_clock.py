"""The engine clock: wall-clock datetimes read through trio's clock.

Every timestamp, deadline and back-off goes through `EngineClock`, so a
`trio.testing.MockClock` moves the whole engine in virtual time. The anchor (which
wall-clock instant trio's time 0 corresponds to) is taken once per trio run and shared
by every engine in it, so reopening an engine later in the same `trio.run` continues
from the same virtual time.

This module also guards against the thread trap (docs/time.md): trio's autojump
treats a task waiting on a worker thread as idle and would jump virtual time past a
step that is still running. `busy_thread()` raises the mock clock's autojump threshold
to infinity while any worker-thread call is outstanding.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import trio

if TYPE_CHECKING:
    import trio.testing

from replay._epoch import micros, moment

T = TypeVar("T")

_MAX_DRIFT_US = 1_000_000  # how far the wall clock may run ahead before the clock catches up
_GUARD: trio.lowlevel.RunVar[_ThreadGuard] = trio.lowlevel.RunVar("replay_thread_guard")


def is_mock_clock(clock: trio.abc.Clock) -> trio.testing.MockClock | None:
    """Return `clock` if it is trio's `MockClock` (virtual time), else None.

    `trio.testing` is not imported for this: a program that made a `MockClock` has
    imported it, and importing it costs a program that did not (it imports pytest when
    pytest is installed) about a tenth of a second.
    """
    testing = sys.modules.get("trio.testing")
    if testing is not None and isinstance(clock, testing.MockClock):
        return cast("trio.testing.MockClock", clock)
    return None


class _Anchor:
    """Which wall-clock instant trio's time `zero` is; shared by a trio run's engines.

    `wall_us`: that instant in microseconds since the epoch (integers keep every
    reading exact).
    """

    __slots__ = ("wall_us", "zero")

    def __init__(self, wall: datetime, zero: float) -> None:
        self.wall_us = micros(wall)
        self.zero = zero


_ANCHOR: trio.lowlevel.RunVar[_Anchor] = trio.lowlevel.RunVar("replay_anchor")


def set_virtual_start(start: datetime) -> None:
    """Anchor this trio run's engine clock so that "now" is `start`.

    Must be called inside `trio.run` before an engine opens (used by replay.testing).

    Raises:
        ValueError: `start` is a naive datetime.
    """
    if start.tzinfo is None:
        raise ValueError(f"virtual start must be an aware datetime, got {start!r}")
    _ANCHOR.set(_Anchor(start.astimezone(UTC), trio.current_time()))


class EngineClock:
    """Wall-clock time as seen by the engines of one trio run: trio's clock plus an anchor.

    The anchor is shared by every engine in the trio run and only ever moves forward,
    so a later engine continues from where an earlier one's clock was.

    Args:
        floor: The latest timestamp already recorded in the database; the clock never
            reads below it (time only moves forward).
    """

    __slots__ = ("_anchor", "_virtual")

    def __init__(self, floor: datetime | None = None) -> None:
        try:
            self._anchor = _ANCHOR.get()
        except LookupError:
            self._anchor = _Anchor(datetime.now(UTC), trio.current_time())
            _ANCHOR.set(self._anchor)
        self._virtual = is_mock_clock(trio.lowlevel.current_clock()) is not None
        if floor is not None:
            behind = micros(floor) - micros(self.now())
            if behind > 0:
                self._anchor.wall_us += behind

    def now(self) -> datetime:
        """Return the current engine time, aware, in UTC."""
        anchor = self._anchor
        us = anchor.wall_us + round((trio.current_time() - anchor.zero) * 1_000_000)
        if not self._virtual:
            # The wall clock ran ahead (machine suspended, NTP step): catch up at once.
            wall_us = time.time_ns() // 1000
            if wall_us - us > _MAX_DRIFT_US:
                anchor.wall_us += wall_us - us
                us = wall_us
        return moment(us)

    def trio_deadline(self, at: datetime) -> float:
        """Return the trio clock reading at which the engine clock reads `at`."""
        return self._anchor.zero + (micros(at) - self._anchor.wall_us) / 1_000_000

    def is_virtual(self) -> bool:
        """Tell whether trio runs on a mock clock (virtual time)."""
        return self._virtual

    async def sleep_until(self, at: datetime) -> None:
        """Sleep until the engine clock reads `at` (at once if that has passed)."""
        await trio.sleep_until(self.trio_deadline(at))


class _ThreadGuard:
    """Counts outstanding worker-thread calls and freezes autojump while any runs."""

    __slots__ = ("_busy", "_clock", "_saved")

    def __init__(self) -> None:
        self._busy = 0
        self._saved = 0.0
        # A trio run keeps its clock; `isinstance` with an ABC costs about a microsecond.
        clock = trio.lowlevel.current_clock()
        self._clock = is_mock_clock(clock)

    def enter(self) -> None:
        clock = self._clock
        if clock is not None:
            if self._busy == 0:
                self._saved = clock.autojump_threshold
                clock.autojump_threshold = math.inf
            self._busy += 1

    def __enter__(self) -> None:
        self.enter()

    def __exit__(self, *exc_info: object) -> None:
        self.exit()

    def exit(self) -> None:
        clock = self._clock
        if clock is not None and self._busy > 0:
            self._busy -= 1
            if self._busy == 0:
                clock.autojump_threshold = self._saved


def thread_guard() -> _ThreadGuard:
    """Return this trio run's thread guard."""
    try:
        return _GUARD.get()
    except LookupError:
        guard = _ThreadGuard()
        _GUARD.set(guard)
        return guard


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    """Run `function(*args)` in a worker thread without letting virtual time jump."""
    with busy_thread():
        return await trio.to_thread.run_sync(function, *args)


def busy_thread() -> _ThreadGuard:
    """Keep virtual time from jumping while the body waits on a worker thread.

    Used as ``with busy_thread(): ...``; the guard counts, so uses may nest and overlap.
    """
    return thread_guard()
