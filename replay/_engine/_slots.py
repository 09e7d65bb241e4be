"""`RunSlot`: the engine's in-memory view of one run.

A slot changes only by applying records *after* they are committed (`apply`), so
whatever `status()`, `runs()` or `Run.wait()` report is already durable. Its status is
the core's run-state fold; its `machine` is the run's execution while it runs or is
parked in the cache. Who owns the run (`active`) is written by the scheduler's
`RunTasks` (`_tasks`) alone; `settling` is set as a record that parks or ends an owned
run commits (`apply`) and cleared by `RunTasks` when the run's task lets go.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import trio

from replay._codec import encode
from replay._core._machine import RunMachine
from replay._core._records import Record, started_record
from replay._core._state import RunStatus, damaged_message, fold, run_problem
from replay._epoch import EPOCH, moment
from replay._store import ParkedRow, RunRow, from_epoch_us
from replay._types import RunInfo, RunState

if TYPE_CHECKING:
    from replay._engine._watching import Watchers

_ENDED_BADLY = (RunState.FAILED, RunState.CANCELLED)
_STATES = {state.value: state for state in RunState}


def _datetime(at: datetime | int) -> datetime:
    """`at`, or the time `at` microseconds after the epoch."""
    return moment(at) if isinstance(at, int) else at


def needs_start_mark(started_seq: int, opened_at: int, state: RunState) -> bool:
    """Whether a run's first step attempt since the open must run alone, its start marked.

    A run started by this engine (after `seq` `opened_at`) had no earlier process to die
    in. Nor had a run waiting for a signal or a child when the engine opened: whatever
    wakes it (the signal, its timeout, the child's end) records it as running before
    any attempt, so if this process dies in that attempt, the next open finds it running
    and marks it then. A sleeping run keeps the mark: a retry back-off ends with no
    record before the next attempt, which could otherwise kill every process for ever.
    """
    return started_seq <= opened_at and state is not RunState.SUSPENDED


class RunSlot:
    """The engine's record of one run (internal)."""

    __slots__ = (
        "_changed",
        "_created",
        "_durable",
        "_lock",
        "_updated",
        "active",
        "durable",
        "generation",
        "listener",
        "machine",
        "needs_start_mark",
        "parent",
        "purged",
        "run_id",
        "seq",
        "settling",
        "status",
        "task_scope",
        "watchers",
        "workflow",
    )

    def __init__(self, run_id: str, workflow: str, status: RunStatus,
                 created_at: datetime | int):
        self.run_id = run_id
        self.workflow = workflow
        self.status = status
        # When the run started and last changed, each a datetime or microseconds since
        # the epoch (see `parked`: converted when first read).
        self._created: datetime | int = created_at
        self._updated: datetime | int = created_at
        # The run's execution while a task drives it or it is parked in the cache.
        self.machine: RunMachine | None = None
        # True while a task drives the run: one run executes in one place at a time.
        self.active = False
        # True from the commit of a record that parks or ends the run until its task has
        # let go: the state already says it waits (or is finished), but the task still
        # owns the run, so a call must wait for it instead of deciding from the state.
        self.settling = False
        # True until the run's first step attempt since the engine opened has ended: that
        # attempt runs alone with its start recorded, so a process death is charged to
        # it (runs started by this engine have no earlier process to die in).
        self.needs_start_mark = True
        # trio objects are made on first use: a parked run should cost little memory.
        self._changed: trio.Event | None = None
        self._lock: trio.Lock | None = None
        # True once the run's start is committed (at once for runs loaded from the file).
        self.durable = False
        self._durable: trio.Event | None = None
        # Told of each signal and cancellation committed while the run's task waits on
        # its step attempts (set by the driver).
        self.listener: Callable[[Record], None] | None = None
        # A child run's parent: its run id and its key for this run.
        self.parent: tuple[str, str] | None = None
        # The scope of the run's task while one drives it (`terminate` cancels it).
        self.task_scope: trio.CancelScope | None = None
        # How many times the run continued as new (its current generation).
        self.generation = 0
        # True once a purge deleted the run: nothing more may be written for it.
        self.purged = False
        # The newest committed record's `seq`, and who is told of each record.
        self.seq = 0
        self.watchers: Watchers | None = None

    @classmethod
    def restored(cls, row: RunRow, opened_at: int = 0) -> RunSlot:
        """Return the slot of a run as the file has it.

        A run started after `seq` `opened_at` (by this engine) has no earlier process
        to die in: its first attempt needs no start mark.
        """
        state = RunState(row.state)
        status = RunStatus(
            state, waiting_for=row.waiting_for, wake_at=row.wake_at,
            status_text=row.status_text if state is RunState.SUSPENDED else None,
            note_text=row.note_text, note_value=row.note_value,
            output=row.value if state is RunState.COMPLETED else None,
            error=row.error if state in _ENDED_BADLY else None,
            error_type=row.error_type if state in _ENDED_BADLY else None,
            message=row.value if state in _ENDED_BADLY else None)
        slot = cls(row.run_id, row.workflow, status, row.created_at)
        if row.parent_run_id is not None:
            # The parent's key for this run, as its run/started records it.
            slot.parent = (row.parent_run_id,
                           row.parent_key or row.run_id[len(row.parent_run_id) + 1:])
        slot.updated_at = row.updated_at
        slot.generation, slot.seq = row.generation, row.last_seq
        slot.needs_start_mark = needs_start_mark(row.started_seq, opened_at, state)
        slot.mark_durable()
        return slot

    @classmethod
    def parked(cls, row: ParkedRow, opened_at: int,
               statuses: dict[tuple[Any, ...], RunStatus]) -> RunSlot:
        """Return the slot of a quiet parked run from its state as `OPEN_STATES` reads it.

        The same slot as `restored` gives, built without a `RunRow` in between: an open
        may hold 100,000 of them. Runs parked alike share one (immutable) `RunStatus`
        from `statuses`, which the caller keeps for the whole open.
        """
        (run_id, workflow, state_text, created_us, updated_us, waiting_for, wake_us,
         status_text, started_seq, parent_run_id, note_text, note_value, generation,
         last_seq, parent_key, _deadline, _quiet) = row
        shared = (state_text, waiting_for, wake_us, status_text, note_text, note_value)
        status = statuses.get(shared)
        if status is None:
            state = _STATES[state_text]
            status = statuses[shared] = RunStatus(
                state, waiting_for, from_epoch_us(wake_us),
                status_text if state is RunState.SUSPENDED else None,
                None, None, None, None, note_text, note_value)
        # Timestamps stay microseconds until read: an open may not have the time to
        # make 200,000 datetimes that few callers look at.
        slot = cls(run_id, workflow, status, created_us)
        if parent_run_id is not None:
            slot.parent = (parent_run_id, parent_key or run_id[len(parent_run_id) + 1:])
        slot._updated = updated_us
        slot.generation, slot.seq = generation or 0, last_seq
        slot.needs_start_mark = needs_start_mark(started_seq, opened_at, status.state)
        slot.durable = True  # nobody waits for a slot just made
        return slot

    @classmethod
    def folded(cls, records: list[Record], path: str, opened_at: int) -> RunSlot | None:
        """Return the slot of a run from its records in order (the core's fold).

        A run damaged by hand (see `run_problem`) fails alone with a `DatabaseError`
        saying what is wrong; nothing is written. None: the records hold no run.
        """
        started = started_record(records)
        latest = next((r for r in reversed(records) if r.run_state is not None), None)
        if started is None or latest is None:
            return None
        times = [r.recorded_at for r in records if r.recorded_at is not None]
        created = started.recorded_at or (max(times) if times else EPOCH)
        problem = run_problem(started.workflow, latest.run_state, started.recorded_at)
        if problem is None:
            status = fold(records) or RunStatus(RunState.RUNNING)
        else:
            text = damaged_message(started.run_id, path, problem)
            status = RunStatus(RunState.FAILED, error=text, error_type="replay.DatabaseError",
                               message=encode(text, key="error"))
        slot = cls(started.run_id, started.workflow or "", status, created)
        if started.name is not None and started.key is not None:
            slot.parent = (started.name, started.key)
        slot.updated_at = max(times) if times else created
        slot.generation = max((r.generation for r in records), default=0)
        slot.seq = records[-1].seq
        slot.needs_start_mark = needs_start_mark(started.seq, opened_at, status.state)
        slot.mark_durable()
        return slot

    @property
    def created_at(self) -> datetime:
        """When the run started."""
        self._created = created = _datetime(self._created)
        return created

    @created_at.setter
    def created_at(self, value: datetime) -> None:
        self._created = value

    @property
    def updated_at(self) -> datetime:
        """When the run last changed (its newest record's time)."""
        self._updated = updated = _datetime(self._updated)
        return updated

    @updated_at.setter
    def updated_at(self, value: datetime) -> None:
        self._updated = value

    @property
    def state(self) -> RunState:
        """The run's durable state."""
        return self.status.state

    @property
    def letting_go(self) -> bool:
        """True while the run's task has recorded a park or an end but still owns it."""
        return self.active and self.settling

    @property
    def lock(self) -> trio.Lock:
        """The run's lock: signals, loads and resumes take it (made on first use)."""
        if self._lock is None:
            self._lock = trio.Lock()
        return self._lock

    def drop_idle_lock(self) -> None:
        """Forget the run's lock if nobody holds or waits for it (a parked run)."""
        lock = self._lock
        if lock is not None and not lock.locked() and lock.statistics().tasks_waiting == 0:
            self._lock = None

    async def wait_changed(self) -> None:
        """Wait until the run's state changes (or the engine closes)."""
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    def mark_durable(self) -> None:
        """Record that the run's start is committed, waking `wait_durable` callers."""
        self.durable = True
        if self._durable is not None:
            self._durable.set()
            self._durable = None

    async def wait_durable(self) -> None:
        """Wait until the run's start is committed."""
        if not self.durable:
            if self._durable is None:
                self._durable = trio.Event()
            await self._durable.wait()

    def apply(self, record: Record) -> None:
        """Take a committed record into account (a signal goes into the machine's mailbox)."""
        self.seq = record.seq
        if record.recorded_at is not None:
            self._updated = record.recorded_at
        if record.kind == "signal" or record.event == "cancel_requested" or (
                record.kind == "child" and record.event in ("completed", "failed")):
            if self.machine is not None:
                self.machine.deliver(record)
            if self.listener is not None:
                self.listener(record)
        if record.run_state is not None:
            if record.event == "continued":
                self.generation = record.generation
            self.status = self.status.after(record)
            self.settling = self.active and self.status.state is not RunState.RUNNING
            self.notify()
        elif record.kind == "note":
            self.status = self.status.after(record)
            self.notify()
        watchers = self.watchers
        if watchers is not None and watchers.active:
            watchers.published(self, record)

    def notify(self) -> None:
        """Wake everything waiting for this run to change."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def info(self, decode: Callable[[bytes], Any], status: RunStatus | None = None,
             updated_at: datetime | None = None) -> RunInfo:
        """Return a `RunInfo` snapshot (of `status`, when given: an earlier one)."""
        status = status or self.status
        return RunInfo(
            run_id=self.run_id,
            workflow=self.workflow,
            state=status.state,
            created_at=self.created_at,
            updated_at=updated_at or self.updated_at,
            output=None if status.output is None else decode(status.output),
            error=status.error,
            error_type=status.error_type,
            waiting_for=status.waiting_for,
            wake_at=status.wake_at,
            status_text=status.shown_status,
            parent_run_id=None if self.parent is None else self.parent[0],
            status_value=None if status.note_value is None else decode(status.note_value),
            generation=self.generation,
        )
