"""The run-state fold: what a run as a whole is doing, from its events.

A run's state is the `run_state` of its newest record that carries one; the details
that go with it (the key it waits on, its deadline, its output or failure) come from
that same record. `RunStatus.after` is the one fold: the engine keeps each run's
status with it, the command line folds a file's records with it, the history checker
folds golden histories with it, and the ``replay_runs`` view computes the same in SQL
(a test checks that they agree).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from replay._core._records import Record
from replay._types import FINISHED, RunState

_WAITING = frozenset({RunState.SLEEPING, RunState.SUSPENDED})
_STATES = frozenset(state.value for state in RunState)


@dataclass(frozen=True, slots=True)
class RunStatus:
    """A run's state and the details that go with it (values still encoded).

    Attributes:
        state: The run's `RunState`.
        waiting_for: The key a sleeping or suspended run waits on.
        wake_at: When a waiting run wakes (its sleep, back-off or suspend deadline).
        status_text: The `status` of the `Suspend` a suspended run waits on.
        output: The encoded output of a completed run.
        error: The traceback text of a failed (or cancelled) run.
        error_type: The qualified name of the exception that failed the run
            (``replay.Cancelled`` for a cancelled one).
        message: The encoded message of that exception (a cancelled run's reason).
        note_text: The text of the run's newest `Note` (kept whatever its state).
        note_value: The encoded value of that note.
    """

    state: RunState
    waiting_for: str | None = None
    wake_at: datetime | None = None
    status_text: str | None = None
    output: bytes | None = None
    error: str | None = None
    error_type: str | None = None
    message: bytes | None = None
    note_text: str | None = None
    note_value: bytes | None = None

    @property
    def shown_status(self) -> str | None:
        """The run's status text: its `Suspend`'s status while suspended, else its note's."""
        return self.status_text or self.note_text

    @property
    def finished(self) -> bool:
        """Whether the run completed, failed or was cancelled."""
        return self.state in FINISHED

    @property
    def waiting(self) -> bool:
        """Whether the run sleeps or is suspended."""
        return self.state in _WAITING

    def after(self, record: Record) -> RunStatus:
        """Return the status once `record` is recorded (itself if it changes nothing)."""
        if record.run_state is None:
            if record.kind == "note":
                return replace(self, note_text=record.status_text, note_value=record.value)
            return self
        status = status_of(record)
        if self.note_text is None:
            return status
        return replace(status, note_text=self.note_text, note_value=self.note_value)


def status_of(record: Record) -> RunStatus:
    """Return the status a state-carrying record gives its run.

    Raises:
        ValueError: The record carries no run state, or an unknown one.
    """
    if record.run_state is None:
        raise ValueError(f"record {record.kind}/{record.event} carries no run state")
    state = RunState(record.run_state)
    if state in _WAITING:
        return RunStatus(state, waiting_for=record.key, wake_at=record.wake_at,
                         status_text=record.status_text if state is RunState.SUSPENDED
                         else None)
    if state is RunState.COMPLETED:
        return RunStatus(state, output=record.value)
    if state in (RunState.FAILED, RunState.CANCELLED):
        # A cancelled run's "message" is the reason given to `cancel`.
        return RunStatus(state, error=record.error, error_type=record.error_type,
                         message=record.value)
    return RunStatus(state)


def fold(records: Iterable[Record]) -> RunStatus | None:
    """Fold a run's records, in order, into its status (None: nothing carried one)."""
    latest: Record | None = None
    note: Record | None = None
    for record in records:  # only the newest of each counts: one status made, not one each
        if record.run_state is not None:
            latest = record
        elif record.kind == "note":
            note = record
    if latest is None:
        return None
    status = status_of(latest)
    if note is None:
        return status
    return replace(status, note_text=note.status_text, note_value=note.value)


def run_problem(workflow: str | None, state: str | None, created_at: datetime | None
                ) -> str | None:
    """Return what is wrong with a run whose records say this, or None if nothing.

    A run with an unknown newest state, or a start with no workflow name or time, was
    damaged by hand: it cannot be folded, and fails alone instead.
    """
    if state not in _STATES:
        return f"its newest run state is {state!r}, which is not a run state"
    if workflow is None:
        return "its run/started event has no workflow name"
    if created_at is None:
        return "its run/started event has no recorded_at"
    return None


def damaged_message(run_id: str, path: str, problem: str) -> str:
    """Return the error a damaged run fails with (nothing is written to the file)."""
    return (f"run {run_id!r} is damaged in {path!r}: {problem}; repair its rows in "
            "replay_event_log, or restore the file from a backup, and open it again")
