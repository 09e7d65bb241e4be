"""The group a run's execution is inside, and the decisions it asks of the engine.

A run executes at most one top-level group at a time (a group's members may be groups
themselves: `GroupRun` handles those). While one is under way, the machine routes
attempt outcomes, wake-ups and cancellations here, and `next` turns the group's state
into a decision: more attempts (`Attempts`), a park (`WaitForSignal` when a member waits
for a signal or a child, else `WaitUntil`), or, once decided, the `Pending` that the
interpreter answers from the group's records.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from replay._core._decisions import (
    Action,
    Attempt,
    Attempts,
    Now,
    Outcome,
    WaitForSignal,
    WaitUntil,
)
from replay._core._groups import GroupRun
from replay._core._interpreter import Pending
from replay._core._recorder import CANCELLED, Recorder
from replay._core._records import Encoded
from replay._parallel import Group
from replay._types import RunState

# Records how a member's attempt ended (the machine's `_settle`, for a group member).
Settle = Callable[[Attempt, Outcome, Now], Any]


class GroupHost:
    """Hosts the group under way in one execution of a run.

    Args:
        rec: The execution's recorder.
        settle: Records how a member step's attempt ended.
    """

    __slots__ = ("_flight", "_parked_until", "_pending", "_rec", "_settle", "group")

    def __init__(self, rec: Recorder, settle: Settle) -> None:
        self._rec = rec
        self._settle = settle
        self.group: GroupRun | None = None
        self._pending: Pending | None = None  # what the group answers once decided
        self._flight: dict[str, Attempt] = {}  # its attempts under way, by step key
        self._parked_until: datetime | None = None  # the deadline its park recorded

    def begin(self, pending: Pending, group: Group, now: Now) -> Action | Pending:
        """Start the group the workflow yielded; decide what it needs first."""
        self.group = GroupRun(group, self._rec, self._flight, self._rec.stopped)
        self._pending = pending
        self.group.advance(now, may_time_out=False)
        return self.next(now)

    def attempt_ended(self, attempt: Attempt, outcome: Outcome, now: Now) -> Action | Pending:
        """A member's attempt ended (one cancelled meanwhile: its outcome is dropped)."""
        assert self.group is not None
        key = attempt.step.key
        if self._flight.get(key) is attempt:
            self._settle(attempt, outcome, now)
            self.group.attempt_ended(key, now)
        return self.next(now)

    def wake(self, now: Now) -> Action | Pending:
        """Decide again about every member that waits (under the run's lock)."""
        assert self.group is not None
        self.group.advance(now, may_time_out=True)
        return self.next(now)

    def cancel(self, reason: Encoded) -> str:
        """Cancel the group with its members under way; return its key (thrown in there)."""
        group = self.group
        assert group is not None
        self.group = self._pending = None
        group.cancel(CANCELLED, reason, by_run=True)
        return group.key

    def next(self, now: Now) -> Action | Pending:
        """Decide what the group needs: attempts, a park, or (decided) its `Pending`."""
        group, pending = self.group, self._pending
        assert group is not None and pending is not None
        if group.decided:
            self.group = self._pending = None
            return pending
        rec = self._rec
        starts = tuple(group.new_attempts)
        group.new_attempts.clear()
        if self._flight:
            if rec.state is not RunState.RUNNING:
                rec.emit(rec.run.group_running(group.key))
            return Attempts(*rec.flush(), start=starts, wake_at=group.next_wake())
        wake_at = group.next_wake()
        state = RunState.SUSPENDED if group.waits_for_signal() else RunState.SLEEPING
        if rec.state is not state or self._parked_until != wake_at:
            rec.emit(rec.run.group_waiting(group.key, state, wake_at, group.status_text()))
            self._parked_until = wake_at
        records, warnings = rec.flush()
        if state is RunState.SUSPENDED:
            return WaitForSignal(records, warnings, key=group.key, deadline=wake_at,
                                 settled=not records)
        assert wake_at is not None, f"group {group.key!r} waits on nothing"
        return WaitUntil(records, warnings, key=group.key, at=wake_at)
