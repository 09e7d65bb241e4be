"""Signals: whether one may be taken, when to warn, and news for a run parked at open.

`news_for_parked` says whether a parked run found at open has a signal, a child's end
or a cancellation to take. The same rules hold whoever records the signal: the engine,
or the `replay` command writing into a file no engine holds.
"""

from __future__ import annotations

from replay._core._history import RunHistory
from replay._core._records import Record
from replay._core._state import RunStatus
from replay._errors import SignalRejected
from replay._types import FINISHED, RunInfo, RunState

MAX_UNDELIVERED_SIGNALS = 100


def check_signal(run_id: str, state: RunState, history: RunHistory, key: str,
                 parked_here: bool) -> None:
    """Decide whether a signal for `key` may be taken by a run in `state`.

    Args:
        run_id: The run.
        state: Its durable state.
        history: Its memo (or an empty one when it is parked on `key`: nothing is
            recorded for the key yet and its mailbox limit does not apply).
        key: The signal's key.
        parked_here: Whether the run is suspended on `key` right now.

    Raises:
        SignalRejected: It may not, with the reason.
    """
    if state in FINISHED:
        raise SignalRejected(
            f"run {run_id!r} is {state.value}; signals to finished runs are rejected",
            run_id=run_id, key=key)
    entry = history.get(key)
    if entry is not None and entry.kind != "suspend":
        raise SignalRejected(
            f"run {run_id!r} recorded key {key!r} as a {entry.kind}, not a Suspend; a "
            "signal can only answer a Suspend", run_id=run_id, key=key)
    if entry is not None and entry.cancelled:
        raise SignalRejected(
            f"key {key!r} of run {run_id!r} was cancelled (it lost a race, or its run "
            "was cancelled); nothing waits for this signal, so it is rejected",
            run_id=run_id, key=key)
    if key in history.signals or (entry is not None and entry.timed_out):
        why = "timed out" if entry is not None and entry.timed_out else "already has a signal"
        raise SignalRejected(
            f"key {key!r} of run {run_id!r} {why}; a Suspend takes one value, so this "
            "signal is rejected", run_id=run_id, key=key)
    if not parked_here and history.undelivered() >= MAX_UNDELIVERED_SIGNALS:
        raise SignalRejected(
            f"run {run_id!r} already holds {MAX_UNDELIVERED_SIGNALS} undelivered signals; "
            "no more are taken until it reaches their keys", run_id=run_id, key=key)


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


def news_for_parked(status: RunStatus, history: RunHistory, records: list[Record]) -> bool:
    """Whether a parked run found at open has news: it must run to take them.

    A signal stored while no engine held the file, a child's end or a cancellation
    recorded while the run's engine could not act on it.
    """
    if not status.waiting:
        return False
    if history.cancel_pending:
        return True
    if status.state is not RunState.SUSPENDED:
        return False
    if status.waiting_for in history.signals or history.signal_awaited():
        return True
    parked_at = max((r.seq for r in records if r.run_state is not None), default=0)
    return any(r.seq > parked_at and r.kind == "child" and r.event in ("completed", "failed")
               for r in records)
