"""The `replay` command's writes on a PostgreSQL schema while engines run on it: queued.

An engine holds the runs it executes in memory, so the command cannot append to their
history behind its back. Engines that share a schema pass each other signals,
cancellations and terminations through its inbox (``replay_inbox``), and the command
does the same: `replay._cli._file_source.FileSource` checks what the database shows (the run
exists and has not finished; a signal passes the engine's checks on the run's history),
then queues the message (`replay._pg._access.PgAccess.send`) and returns. The engine
that holds the run, or the next to claim its family, delivers it at once, as if it were
called there, and logs a refusal that only it can see (a second signal for a key sent
meanwhile, say). A purge is not queued: engines purge themselves (`engine.purge()`).

Here: the checks against messages still waiting in the inbox (made on every write to a
PostgreSQL database: a message may wait there while no engine runs, for a run of a
workflow the last engines did not register), and what the command and the web view say.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replay._errors import SignalRejected

if TYPE_CHECKING:  # psycopg is optional
    from replay._pg._access import PgAccess


def refuse_queued_signal(access: PgAccess, run_id: str, key: str) -> None:
    """Refuse a second signal for `key` while the first one waits in the inbox.

    Checked before the run's history is read: a message is deleted only once its
    record is committed, so one of the two always shows an earlier signal.

    Raises:
        SignalRejected: A signal for `key` of the run waits for its engine.
    """
    if access.pending(run_id, "signal", key):
        raise SignalRejected(
            f"key {key!r} of run {run_id!r} already has a signal, queued for the engine "
            "that holds the run; a Suspend takes one value, so this signal is rejected",
            run_id=run_id, key=key)


def cancel_queued(access: PgAccess, run_id: str) -> bool:
    """Return whether a cancellation of the run waits in the inbox (checked first, too)."""
    return access.pending(run_id, "cancel")


def _delivery(state: str) -> str:
    return ("an engine runs on the database, so the engine that holds the run (or the "
            "next to claim it) delivers it at once, and logs a refusal only it can see "
            f"(the run is {state} until then)")


def signal_said(run_id: str, key: str, where: str, state: str) -> str:
    """Say that a signal was queued (`where`: the database, as the message names it)."""
    return f"signal for {key!r} queued for run {run_id!r} in {where}; {_delivery(state)}"


def cancel_said(run_id: str, where: str, state: str) -> str:
    """Say that a cancellation was queued."""
    return f"cancellation of run {run_id!r} queued in {where}; {_delivery(state)}"


def terminate_said(run_id: str, where: str, state: str) -> str:
    """Say that a termination was queued."""
    return f"termination of run {run_id!r} queued in {where}; {_delivery(state)}"


def purge_refused(shown: str) -> str:
    """Say why the command does not purge a database engines run on, and what does."""
    return (f"an engine runs on the PostgreSQL database {shown!r}, and the replay command "
            "purges a PostgreSQL database only while no engine runs on it (an engine may "
            "be resuming or reading a finished run as it is deleted); purge through an "
            "engine (engine.purge() in its application, or open_engine(retention=...)), "
            "which deletes between its own commits, one worker at a time, or stop the "
            "engines first; --dry-run works while they run")
