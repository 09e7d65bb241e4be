"""`Run` handles, and the argument checks and conversions of the engine's API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replay._codec import decode
from replay._core._history import Record, RunHistory
from replay._engine._slots import RunSlot
from replay._errors import SignalRejected, WorkflowFailed
from replay._types import FINISHED, SETTLED, Event, RunInfo, RunState

if TYPE_CHECKING:
    from replay._engine._facade import Engine


class Run:
    """A handle to one run of an engine.

    Attributes:
        run_id: The run's id.
        workflow: The run's workflow name.
    """

    __slots__ = ("_engine", "run_id", "workflow")

    def __init__(self, engine: Engine, run_id: str, workflow: str) -> None:
        self._engine = engine
        self.run_id = run_id
        self.workflow = workflow

    def __repr__(self) -> str:
        return f"Run(run_id={self.run_id!r}, workflow={self.workflow!r})"

    async def wait(self) -> RunInfo:
        """Wait until the run completes, fails, is cancelled or is suspended.

        Sleeps and retry back-offs are waited through.

        Raises:
            EngineClosed: The engine closed first.
        """
        return await self._engine._wait_for(self.run_id, SETTLED)

    async def result(self) -> Any:
        """Wait for the run to finish and return its output.

        A suspended run is waited through too: the result comes once a signal lets it
        finish.

        Raises:
            WorkflowFailed: The run failed.
            EngineClosed: The engine closed first.
        """
        info = await self._engine._wait_for(self.run_id, FINISHED)
        if info.state is RunState.COMPLETED:
            return info.output
        slot = self._engine._slot(self.run_id)
        message = "" if slot.message is None else str(decode(slot.message))
        raise WorkflowFailed(
            self.run_id, info.error_type or "builtins.Exception", message, info.error or ""
        )


def checked_run_id(run_id: object) -> str:
    """Return `run_id` if it can name a run.

    Raises:
        TypeError: It is not a str.
        ValueError: It is empty or not valid unicode text.
    """
    if not isinstance(run_id, str):
        raise TypeError(f"run_id must be a str, got {run_id!r} ({type(run_id).__name__})")
    if not run_id:
        raise ValueError("run_id must be a non-empty string, got ''")
    try:
        run_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"run_id must be valid unicode text, got {run_id!r}") from None
    return run_id


def checked_key(key: object) -> str:
    """Return `key` if it can name a `Suspend` to signal.

    Raises:
        TypeError: It is not a str.
        ValueError: It is empty or not valid unicode text.
    """
    if not isinstance(key, str):
        raise TypeError(
            f"engine.signal(run_id, key, payload): key must be a str, got {key!r} "
            f"({type(key).__name__})"
        )
    if not key:
        raise ValueError("engine.signal(run_id, key, payload): key must be a non-empty string")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"engine.signal(run_id, key, payload): key must be valid unicode text, got {key!r}"
        ) from None
    return key


def checked_state(state: RunState | str) -> RunState:
    """Return `state` as a `RunState`.

    Raises:
        ValueError: It names no run state.
    """
    try:
        return RunState(state)
    except ValueError:
        names = ", ".join(s.value for s in RunState)
        raise ValueError(f"unknown run state {state!r}; expected one of {names}") from None


def event_of(record: Record) -> Event:
    """Return the public `Event` of a loaded record, its value decoded."""
    return Event(
        seq=record.seq, run_id=record.run_id, workflow=record.workflow, key=record.key,
        kind=record.kind, event=record.event, attempt=record.attempt,
        value=None if record.value is None else decode(record.value),
        value_json=record.value_json, error_type=record.error_type, error=record.error,
        recorded_at=record.recorded_at,  # type: ignore[arg-type]
        duration_ms=record.duration_ms, wake_at=record.wake_at,
    )


MAX_UNDELIVERED_SIGNALS = 100


def misdirected_signal(info: RunInfo, key: str) -> str | None:
    """Return a warning if `info`'s run waits for another key than `key`, else None.

    A signal for a key the run does not wait on is kept in its mailbox (the run may
    reach that key later), but when the run is suspended on a different key it is
    most often a typo, and the run would wait until its timeout.
    """
    if info.state is not RunState.SUSPENDED or info.waiting_for in (None, key):
        return None
    return (f"run {info.run_id!r} waits for a signal for {info.waiting_for!r}, not "
            f"{key!r}; the signal for {key!r} is kept in its mailbox until the run "
            f"suspends on {key!r}. Did you mean {info.waiting_for!r}?")


def check_signal(slot: RunSlot, history: RunHistory, key: str, parked_here: bool) -> None:
    """Decide whether a signal for `key` may be taken (under the run's lock).

    Raises:
        SignalRejected: It may not, with the reason.
    """
    run_id = slot.run_id
    if slot.state in FINISHED:
        raise SignalRejected(
            f"run {run_id!r} is {slot.state.value}; signals to finished runs are rejected",
            run_id=run_id, key=key)
    entry = history.get(key)
    if entry is not None and entry.kind != "suspend":
        raise SignalRejected(
            f"run {run_id!r} recorded key {key!r} as a {entry.kind}, not a Suspend; a "
            "signal can only answer a Suspend", run_id=run_id, key=key)
    if key in history.signals or (entry is not None and entry.timed_out):
        why = "timed out" if entry is not None and entry.timed_out else "already has a signal"
        raise SignalRejected(
            f"key {key!r} of run {run_id!r} {why}; a Suspend takes one value, so this "
            "signal is rejected", run_id=run_id, key=key)
    if not parked_here and history.undelivered() >= MAX_UNDELIVERED_SIGNALS:
        raise SignalRejected(
            f"run {run_id!r} already holds {MAX_UNDELIVERED_SIGNALS} undelivered signals; "
            "no more are taken until it reaches their keys", run_id=run_id, key=key)
