"""What the web view asks of a database: `Backend`, and the plain data it answers with.

Two backends exist: a running engine serving its own page
(`replay._engine._ui_backend`), and the ``replay ui`` command (`replay._cli._ui`),
which reaches another process's engine over the live channel or reads the file
itself. The pages are written once, against this protocol: every read is one
read-only query over the public views (`replay_runs`, `replay_events`), as the
``replay`` command's are, and a watch yields `Update` dicts, so the page code never
sees the engine's objects or the channel's messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from replay._errors import ReplayError

# What one update of a watched run holds (all plain data):
#   kind: "snapshot" or "event" (progress updates are not shown);
#   seq: the newest event it reflects (the SSE id, the after_seq of a reconnect);
#   info: the run's replay_runs-like fields after it (state, waiting_for, wake_at,
#         status_text, ...), or None;
#   event: for "event", the event's replay_events fields (value_json as JSON text).
Update = dict[str, Any]


class Refused(ReplayError):
    """The backend refused a request; the page shows the message and changes nothing.

    Raised for what has no replay error of its own, such as resuming a run when no
    engine holds the file, or an engine that stopped during the request.

    Attributes:
        status: The HTTP status the page answers with (404, 409, 503, ...).
    """

    def __init__(self, message: str, *, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Table:
    """A query's answer: its columns, DuckDB type names and rows.

    Attributes:
        columns: The column names.
        types: The DuckDB type name of each column (``JSON`` columns hold JSON text).
        rows: The rows, at most the `max_rows` asked for.
        truncated: More rows followed that were not read.
    """

    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool = False

    def dicts(self) -> list[dict[str, Any]]:
        """Return the rows as dicts by column name."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@dataclass
class Outcome:
    """What an action did, in words for the page.

    Attributes:
        message: One sentence saying what happened (shown as the flash).
        warning: A second sentence when the action was taken but may not do what the
            user meant (a signal for a key the run does not wait on).
    """

    message: str
    warning: str | None = None


@dataclass
class Facts:
    """Who answers: shown in the page's header.

    Attributes:
        live: An engine is running on the file, so runs change and watches update.
        description: Who answers, e.g. ``the engine in process 4242``.
        noun: What the messages call the database when no engine answers: ``file``
            (a DuckDB file, which no engine holds then) or ``database`` (a PostgreSQL
            database, read directly whether or not an engine runs on it).
    """

    live: bool
    description: str
    noun: str = "file"


class Backend(Protocol):
    """A database as the web view sees it; every method may be called concurrently."""

    @property
    def facts(self) -> Facts:
        """Say whether an engine is running on the file, and which."""

    @property
    def dialect(self) -> str:
        """Say which SQL `query` reads: ``"duckdb"`` or ``"postgres"``.

        The views have the same columns on both stores, but the SQL page's examples
        are written in the dialect of the database it reads (`replay._ui._examples`).
        """

    async def now(self) -> datetime:
        """Return the engine clock's time (for a file: never before its newest event)."""

    async def query(self, sql: str, params: Sequence[Any] | None = None, *,
                    max_rows: int = 1000) -> Table:
        """Run one read-only query over the views and return at most `max_rows` rows.

        Raises:
            QueryError: The text is not exactly one read-only query, or it failed or
                took too long.
            Refused: The database cannot be read now (the engine stopped, ...).
        """

    def watch(self, run_id: str, after_seq: int | None
              ) -> AbstractAsyncContextManager[AsyncIterator[Update]]:
        """Watch one run: ``async with backend.watch(...) as updates: async for ...``.

        Without `after_seq` the first update is a snapshot; with it, the run's events
        after that seq come first, then every new one. The iteration ends after the
        event that finishes the run, or when the engine stops.

        Raises:
            RunNotFound: No such run.
            Refused: Nothing can be watched (no engine is running).
        """

    async def signal(self, run_id: str, key: str, payload: Any) -> Outcome:
        """Deliver `payload` to the run's ``Suspend(key)``, as ``replay signal`` does.

        Raises:
            RunNotFound: No such run.
            SignalRejected: The run is finished, or the key already has a value.
            EncodingError: The payload cannot be recorded.
            Refused: The request cannot be carried out now.
        """

    async def resume(self, run_id: str) -> Outcome:
        """Resume a failed (or parked) run, as ``replay resume`` does.

        Raises:
            RunNotFound: No such run.
            Refused: No engine holds the file (resuming runs workflow code), or the
                engine refused.
        """

    async def cancel(self, run_id: str, reason: str | None) -> Outcome:
        """Cancel a run, as ``replay cancel`` does.

        Raises:
            RunNotFound: No such run.
            RunFinished: The run is finished.
            Refused: The request cannot be carried out now.
        """


# -- what an action did, in the same words whichever backend did it --


def signalled(run_id: str, key: str, state: str, facts: Facts,
              warning: str | None = None) -> Outcome:
    """Say that a signal was taken: by an engine, or stored for the next one."""
    if facts.live:
        text = (f"signal for {key!r} recorded in run {run_id!r} by {facts.description}; "
                f"the run is {state}")
    elif facts.noun == "database":
        text = (f"signal for {key!r} stored in run {run_id!r}'s mailbox; no engine runs on "
                "the database, so the run takes it when an engine next opens the database")
    else:
        text = (f"signal for {key!r} stored in run {run_id!r}'s mailbox; no engine holds "
                "the file, so the run takes it when an engine next opens the file")
    return Outcome(text, warning)


def resumed(run_id: str, before: str, after: str) -> Outcome:
    """Say what a resume did (``replay resume``'s words)."""
    if before not in ("completed", "running"):
        return Outcome(f"resumed run {run_id!r} ({before} -> {after})")
    if before == after:
        return Outcome(f"run {run_id!r} is {before}; resume changes nothing")
    return Outcome(f"run {run_id!r} was {before}; resume changes nothing (it is {after} now)")


def cancelled(run_id: str, state: str, requested: bool, facts: Facts) -> Outcome:
    """Say what a cancellation did (``replay cancel``'s words)."""
    if not requested:
        return Outcome(f"run {run_id!r} was already asked to cancel; cancel changes nothing "
                       f"(the run is {state})")
    if facts.live:
        return Outcome(f"cancellation of run {run_id!r} recorded by {facts.description}; "
                       f"the run is {state}")
    if facts.noun == "database":
        return Outcome(f"cancellation of run {run_id!r} stored in the database; no engine "
                       "runs on it, so the run takes it when an engine next opens the "
                       f"database (it is {state} until then)")
    return Outcome(f"cancellation of run {run_id!r} stored in the file; no engine holds it, "
                   "so the run takes it when an engine next opens the file (it is "
                   f"{state} until then)")
