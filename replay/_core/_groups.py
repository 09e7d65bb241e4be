"""Groups under way: which members started, which are done, and how a group is decided.

A `GroupRun` is one `All`, `Gather` or `Race` being executed. The run's history is
the source of truth for every member (a step's outcome, a sleep fired, a signal taken,
a nested group decided); the group adds what is not recorded: which attempts are
under way. Members start in list order, at most `limit` at once; a member counts
against the limit from its start to its outcome.

A group is decided by the first member outcome it observes that decides it (a race's
first outcome, an `All`'s first failure, the last member of an `All` or `Gather`),
and records that decision (``group/completed`` or ``group/failed``) in the same commit
as the member's outcome: on replay the group's value comes from its records alone
(`_group_replay`), so a race replays to the same winner in any process. The only
outcomes that become durable on their own are signals; among those, the earliest
recorded (`seq`) is observed first. Members still under way when a group is decided
are cancelled and recorded as ``cancelled``; members not started never start.

Pure: no I/O. The run machine (`_machine`) hosts groups: it records their members'
step outcomes and turns their state into decisions for the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, Protocol

from replay._commands import Sleep, Step, Suspend
from replay._core._decisions import Attempt, Now, at
from replay._core._group_replay import TIMED_OUT, shape_of
from replay._core._history import KeyRecord, RunHistory
from replay._core._records import Encoded, ErrorText, Record, Run
from replay._errors import StepFailed, SuspendTimeout
from replay._parallel import GROUP_TYPES, Child, Group, Member, Race, kind_of
from replay._types import RunState

_ZERO = timedelta(0)


class Host(Protocol):
    """What a group needs from the run machine that hosts it."""

    run: Run

    @property
    def history(self) -> RunHistory:
        """The run's memo."""

    def emit(self, record: Record) -> None:
        """Record `record` (applied to the history at once, committed with the decision)."""

    def encoded(self, value: Any, key: str) -> Encoded:
        """Encode a value for a record."""

    def running_unless(self) -> RunState | None:
        """The run state a record that makes progress carries."""

    @property
    def mark(self) -> bool:
        """Whether the next attempt is the run's first since the engine opened."""

    @mark.setter
    def mark(self, value: bool) -> None: ...

    def interrupted(self, step: Step, record: KeyRecord, attempt: int) -> StepFailed | None:
        """Record that `attempt` died with the process (the step fails at the limit)."""

    def start_child(self, child: Child, state: RunState | None) -> None:
        """Record a child's start; the engine starts the run with the commit."""

    def stop_child(self, child: Child) -> None:
        """The engine cancels the child's run after the commit."""


class GroupRun:
    """One group under way.

    Args:
        group: The group command.
        host: The run machine.
        flight: Attempts under way by step key, shared by a group and its nested groups.
        stopped: Where the attempts under way that the group cancels go (shared too).
        parent: The enclosing group, for a nested one.
    """

    def __init__(self, group: Group, host: Host, flight: dict[str, Attempt],
                 stopped: list[Attempt], parent: GroupRun | None = None) -> None:
        self.group = group
        self._host = host
        self._flight = flight
        self._stopped = stopped
        self._parent = parent
        self._started: dict[str, Member] = {}  # started, outcome not observed yet
        self._nested: dict[str, GroupRun] = {}
        self._next = 0  # the next member to start, in list order
        self.decided = False
        self.new_attempts: list[Attempt] = []  # attempts to make (top group only)
        self.alone: Attempt | None = None  # a start-marked attempt under way (top only)

    @property
    def key(self) -> str:
        """The group's key."""
        return self.group.key

    # -- inputs --

    def advance(self, now: Now, may_time_out: bool) -> None:
        """Start members up to the limit and decide every started member that is due.

        Members a signal answered are observed first, the earliest recorded first (a
        signal is the only outcome that is durable before its group observes it);
        then the others, in list order. A suspend's deadline is decided only when
        `may_time_out` (under the run's lock, which a signal holds until it commits).
        """
        history = self._host.history
        record = history.get(self.key)
        if record is not None and record.done and not record.cancelled:
            self.decided = True  # decided before: its records say how
            return
        if record is None:
            self._record_start()
        if not self.group.members:
            self._decide(None, None, {})  # an empty group: nothing to wait for
            return
        self._fill()
        while not self.decided:
            for member in self._by_signal_order():
                if self.decided:
                    return
                if member.key in self._started:
                    self._decide_member(member, now, may_time_out)
            if self.decided or not self._fill():
                return

    def refill(self, now: Now) -> None:
        """Start and decide new members while there is room (a member just finished)."""
        while not self.decided and self._room() and self._next < len(self.group.members):
            member = self.group.members[self._next]
            self._next += 1
            self._started[member.key] = member
            self._decide_member(member, now, may_time_out=False)

    def attempt_ended(self, key: str, now: Now) -> None:
        """A member step's attempt ended; its records are in the history now."""
        owner = self.owner_of(key)
        if owner is None:
            return
        self._flight.pop(key, None)
        if self.alone is not None and self.alone.step.key == key:
            self.alone = None  # the members held back start now
            owner_member = owner._started.get(key)
            if owner_member is not None and owner._done(owner_member):
                owner._member_finished(owner_member)
            self.advance(now, may_time_out=False)
            return
        member = owner._started.get(key)
        if member is not None and owner._done(member):
            owner._member_finished(member)
        group: GroupRun | None = owner
        while group is not None:
            group.refill(now)
            group = group._parent

    def cancel(self, why: str, reason: Encoded | None = None, *, by_run: bool = False) -> None:
        """Cancel every member under way; record the group cancelled (thrown in with `reason`).

        `by_run`: the run's cancellation, which child members follow as their
        ``on_parent_close`` says (a decided group cancels its losing children).
        """
        for member in list(self._started.values()):
            self._cancel_member(member, why, by_run)
        self._started.clear()
        self.decided = True
        self._host.emit(self._host.run.group_cancelled(self.key, why, reason))

    # -- what the machine asks --

    def owner_of(self, key: str) -> GroupRun | None:
        """Return the group (this or a nested one) whose started member has `key`."""
        if key in self._started:
            return self
        for nested in self._nested.values():
            owner = nested.owner_of(key)
            if owner is not None:
                return owner
        return None

    def next_wake(self) -> datetime | None:
        """Return the earliest deadline of a waiting member (a sleep, back-off, timeout)."""
        if not self._nested and len(self._flight) >= len(self._started):
            return None  # a fan-out's common case: every started member has an attempt
        deadlines = [entry.wake_at for _, entry in self._waiting() if entry.wake_at]
        return min(deadlines, default=None)

    def waits_for_signal(self) -> bool:
        """Whether a member waits for a signal (or a child run's end, which comes alike)."""
        return any(entry.kind in ("suspend", "child") for _, entry in self._waiting())

    def status_text(self) -> str | None:
        """The status of the first member suspend that waits."""
        return next((entry.status_text for _, entry in self._waiting()
                     if entry.kind == "suspend" and entry.status_text), None)

    # -- members --

    def _record_start(self) -> None:
        self._host.emit(self._host.run.group_started(
            self.key, self.group.kind, self._host.encoded(shape_of(self.group), self.key)))

    def _fill(self) -> bool:
        """Start members in list order while there is room; tell whether any started."""
        started = False
        while self._room() and self._next < len(self.group.members):
            member = self.group.members[self._next]
            self._next += 1
            self._started[member.key] = member
            started = True
        return started

    def _room(self) -> bool:
        limit = self.group.limit
        return limit is None or len(self._started) < limit

    def _by_signal_order(self) -> list[Member]:
        """Started members, those a signal answered first (earliest recorded first)."""
        seqs = self._host.history.signal_seqs
        started = list(self._started.values())
        return sorted(started, key=lambda m: seqs.get(m.key, 0) if isinstance(m, Suspend)
                      and m.key in seqs else float("inf"))

    def _decide_member(self, member: Member, now: Now, may_time_out: bool) -> None:
        """Decide a started member: start its attempt, record its wait, or its outcome."""
        if isinstance(member, GROUP_TYPES):
            nested = self._nested.get(member.key)
            if nested is None:
                nested = self._nested[member.key] = GroupRun(
                    member, self._host, self._flight, self._stopped, self)
            nested.advance(now, may_time_out)
        elif member.key not in self._flight:
            if isinstance(member, Step):
                self._step(member, now)
            elif isinstance(member, Sleep):
                self._sleep(member, now)
            elif isinstance(member, Child):
                if self._host.history.get(member.key) is None:
                    self._host.start_child(member, None)
            else:
                self._suspend(member, now, may_time_out)
        if member.key in self._started and self._done(member):
            self._member_finished(member)

    def _step(self, step: Step, now: Now) -> None:
        host, top = self._host, self._top()
        record = host.history.get(step.key)
        if record is not None and record.started is not None:
            # Its attempt was under way when the process died: charged, or failed.
            host.interrupted(step, record, record.started)
            record = host.history.get(step.key)
        if record is not None and (record.done or (record.wake_at and record.wake_at > at(now))):
            return
        if top.alone is not None:
            return  # the run's first attempt since the open runs alone; this one waits
        number = (record.attempts if record else 0) + 1
        attempt = Attempt((), (), step=step, number=number, start=None)
        if host.mark:
            # The run's first attempt since the engine opened: its start is recorded
            # and it runs alone, so that a process death is charged to it only.
            host.mark = False
            host.emit(host.run.step_started(step.key, number, step.name,
                                            host.running_unless()))
            top.alone = attempt
        self._flight[step.key] = attempt
        top.new_attempts.append(attempt)

    def _sleep(self, sleep: Sleep, now: Now) -> None:
        host, record = self._host, self._host.history.get(sleep.key)
        if record is None or record.wake_at is None:
            wake_at = sleep.until or at(now) + (sleep.duration or _ZERO)
            host.emit(host.run.sleep_scheduled(sleep.key, wake_at, state=None))
        elif record.done:
            return
        else:
            wake_at = record.wake_at
        if wake_at <= at(now):
            host.emit(host.run.sleep_fired(sleep.key, wake_at))

    def _suspend(self, suspend: Suspend, now: Now, may_time_out: bool) -> None:
        host, key = self._host, suspend.key
        record = host.history.get(key)
        if key in host.history.signals:
            if record is None:
                host.emit(host.run.signal_taken(key, suspend.status))
            return
        if record is None or record.cancelled:  # a cancelled one waits again after a resume
            deadline = None if suspend.timeout is None else at(now) + suspend.timeout
            host.emit(host.run.suspended(key, deadline, suspend.status, state=None))
        elif (may_time_out and not record.done and record.wake_at is not None
              and record.wake_at <= at(now)):
            error = SuspendTimeout(host.run.run_id, key)
            host.emit(host.run.suspend_timed_out(
                key, record.wake_at, ErrorText(TIMED_OUT, (), str(error)),
                state=host.running_unless()))

    def _done(self, member: Member) -> bool:
        if isinstance(member, GROUP_TYPES):
            nested = self._nested.get(member.key)
            return nested is not None and nested.decided and not _cancelled(
                self._host.history.get(member.key))
        if member.key in self._flight:
            return False
        record = self._host.history.get(member.key)
        if isinstance(member, Suspend):
            return member.key in self._host.history.signals or (
                record is not None and record.timed_out)
        return record is not None and record.done and not record.cancelled

    def _failure(self, member: Member) -> tuple[str, KeyRecord] | None:
        """Return ``(leaf key, record)`` of a finished member's failure, if it failed."""
        record = self._host.history.get(member.key)
        if record is None:
            return None
        if isinstance(member, GROUP_TYPES):
            if record.failure is None or record.failed_member is None:
                return None
            leaf = self._host.history.get(record.failed_member)
            return (record.failed_member, record) if leaf is not None else None
        if record.failure is not None or record.timed_out:
            return member.key, record
        return None

    def _member_finished(self, member: Member) -> None:
        """Observe a member's outcome: it may decide the group."""
        del self._started[member.key]
        failure = self._failure(member)
        group = self.group
        if isinstance(group, Race):
            name = group.names[group.members.index(member)]
            self._decide(member, failure, {"winner": name})
        elif failure is not None and group.kind == "all":
            self._decide(member, failure, {"member": failure[0]})
        elif not self._started and self._next >= len(group.members):
            self._decide(None, None, {})
        if self.decided and self._parent is not None:
            self._parent._nested_decided(self)

    def _nested_decided(self, nested: GroupRun) -> None:
        member = self._started.get(nested.key)
        if member is not None:
            self._member_finished(member)

    def _decide(self, member: Member | None, failure: tuple[str, KeyRecord] | None,
                detail: dict[str, Any]) -> None:
        host = self._host
        self.decided = True
        why = (f"group {self.key!r} was decided by {member.key!r}" if member is not None
               else f"group {self.key!r} was decided")
        for other in list(self._started.values()):
            self._cancel_member(other, why)
        self._started.clear()
        state = host.running_unless()
        encoded = host.encoded(detail, self.key)
        if failure is None:
            host.emit(host.run.group_completed(self.key, self.group.kind, encoded, state))
            return
        leaf, record = failure
        error = _failure_text(host.run.run_id, leaf, record)
        attempts = record.failure.attempts if record.failure is not None else None
        host.emit(host.run.group_failed(self.key, leaf, encoded, error, attempts, state))

    def _cancel_member(self, member: Member, why: str, by_run: bool = False) -> None:
        host, key = self._host, member.key
        if isinstance(member, GROUP_TYPES):
            nested = self._nested.get(key)
            if nested is not None and not nested.decided:
                nested.cancel(why, by_run=by_run)
            return
        attempt = self._flight.pop(key, None)
        record = host.history.get(key)
        if attempt is not None:
            top = self._top()
            if top.alone is attempt:
                top.alone = None
            self._stopped.append(attempt)
            host.emit(host.run.step_cancelled(key, attempt.number, attempt.step.name, why,
                                              None))
        elif isinstance(member, Step):
            if record is not None and not record.done:  # waiting out a back-off
                host.emit(host.run.step_cancelled(key, record.attempts + 1, member.name, why,
                                                  None))
        elif record is not None and not record.done and key not in host.history.signals:
            host.emit(host.run.waiting_cancelled(kind_of(member), key, why, None))
            if isinstance(member, Child) and not (by_run and member.on_parent_close == "abandon"):
                host.stop_child(member)

    def _waiting(self) -> Iterator[tuple[str, KeyRecord]]:
        """Every started leaf that waits (a deadline or a signal), nested ones included."""
        history = self._host.history
        flight, records = self._flight, history.keys
        for key, member in self._started.items():
            if key in flight:
                continue  # the common case in a fan-out: an attempt under way
            if isinstance(member, GROUP_TYPES):
                nested = self._nested.get(key)
                if nested is not None:
                    yield from nested._waiting()
                continue
            record = records.get(key)
            if record is None or record.done:
                continue
            if record.kind == "suspend" and key in history.signals:
                continue
            yield key, record

    def _top(self) -> GroupRun:
        return self if self._parent is None else self._parent._top()


def _cancelled(record: KeyRecord | None) -> bool:
    return record is not None and record.cancelled


def _failure_text(run_id: str, key: str, record: KeyRecord) -> ErrorText:
    failure = record.failure
    if failure is not None:
        return ErrorText(failure.error_type, failure.error_types, failure.message)
    return ErrorText(TIMED_OUT, (TIMED_OUT,), str(SuspendTimeout(run_id, key)))
