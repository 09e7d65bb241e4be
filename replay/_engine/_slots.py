"""Run states as users see them (`RunState`, `RunInfo`) and as the engine keeps them.

A `RunSlot` is the engine's in-memory view of one run. It changes only by applying
records *after* they are committed, so whatever `status()`, `runs()` or `Run.wait()`
report is already durable.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import trio

from replay._core._history import Record, RunHistory
from replay._store import RunRow
from replay._types import RunInfo, RunState


class RunSlot:
    """The engine's record of one run (internal)."""

    __slots__ = (
        "_changed", "_durable", "_lock", "active", "created_at", "durable", "error",
        "error_type",
        "history", "message", "needs_start_mark", "output", "run_id", "settling", "state",
        "status_text", "updated_at",
        "waiting_for", "wake_at", "workflow",
    )

    def __init__(self, run_id: str, workflow: str, state: RunState, created_at: datetime):
        self.run_id = run_id
        self.workflow = workflow
        self.state = state
        self.created_at = created_at
        self.updated_at = created_at
        self.output: bytes | None = None
        self.error: str | None = None
        self.error_type: str | None = None
        self.message: bytes | None = None
        self.waiting_for: str | None = None
        self.wake_at: datetime | None = None
        self.status_text: str | None = None
        # The memo, while the run executes in this process (None: load from the file).
        self.history: RunHistory | None = None
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

    @property
    def letting_go(self) -> bool:
        """True while the run's task has recorded a park or an end but still owns it."""
        return self.active and self.settling

    @property
    def lock(self) -> trio.Lock:
        """The run's lock: signals and parking decisions take it (made on first use)."""
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

    def restore(self, row: RunRow) -> None:
        """Take the state a run had in the file when the engine opened."""
        self.updated_at = row.updated_at
        self.waiting_for = row.waiting_for
        self.wake_at = row.wake_at
        self.status_text = row.status_text
        if self.state is RunState.FAILED:
            self.error, self.error_type, self.message = row.error, row.error_type, row.value
        elif self.state is RunState.COMPLETED:
            self.output = row.value
        self.mark_durable()

    def apply(self, record: Record) -> None:
        """Take a committed record into account (and into the memo, if loaded)."""
        if self.history is not None:
            self.history.apply(record)
        if record.recorded_at is not None:
            self.updated_at = record.recorded_at
        if record.run_state is None:
            return
        self.state = RunState(record.run_state)
        self.settling = self.active and self.state is not RunState.RUNNING
        waiting = self.state in (RunState.SLEEPING, RunState.SUSPENDED)
        self.waiting_for = record.key if waiting else None
        self.wake_at = record.wake_at if waiting else None
        self.status_text = record.status_text if self.state is RunState.SUSPENDED else None
        failed = self.state is RunState.FAILED
        self.error = record.error if failed else None
        self.error_type = record.error_type if failed else None
        self.message = record.value if failed else None
        self.output = record.value if self.state is RunState.COMPLETED else None
        self.notify()

    def notify(self) -> None:
        """Wake everything waiting for this run to change."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def info(self, decode: Callable[[bytes], Any]) -> RunInfo:
        """Return a `RunInfo` snapshot."""
        return RunInfo(
            run_id=self.run_id,
            workflow=self.workflow,
            state=self.state,
            created_at=self.created_at,
            updated_at=self.updated_at,
            output=None if self.output is None else decode(self.output),
            error=self.error,
            error_type=self.error_type,
            waiting_for=self.waiting_for,
            wake_at=self.wake_at,
            status_text=self.status_text,
        )
