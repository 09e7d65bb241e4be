"""Where the `replay` command gets its answers: a running engine, or the database itself.

`open_source(path)` first looks for an engine serving the file (its socket next to the
database); if there is none, the command opens the file itself, read-only unless it
stores a signal or a cancellation, and closes it when the command ends. Both sources
answer the same read-only queries, so every subcommand is written once, against
`Source`.

A ``postgresql://`` URL has no socket beside it: the command always reads the database
itself (`replay._pg._access.PgAccess`, behind the same `FileSource`), whether or not
an engine runs on it. It writes only while none does; while engines run, it queues its
signals, cancellations and terminations for them (`replay._cli._queued`). The command's
queries are written once for both databases: ``?`` placeholders, and `EVENT_COLUMNS`
rather than DuckDB's ``EXCLUDE``.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from replay._channel._client import ChannelError, Connection, connect
from replay._channel._protocol import WireError, from_wire, socket_path
from replay._checks import checked_key
from replay._cli import _queued
from replay._codec import encode, to_json
from replay._core._history import RunHistory
from replay._core._records import Encoded, Record, Run
from replay._core._signals import check_signal, misdirected_signal
from replay._core._state import RunStatus, fold
from replay._errors import DatabaseLocked, ReplayError, RunFinished, RunNotFound
from replay._pg._url import is_postgres_url, require_psycopg, shown_url
from replay._store import FileAccess, ReadQuery
from replay._types import Event, RunInfo, RunState

if TYPE_CHECKING:  # psycopg is optional: PgAccess is imported when a URL is opened
    from replay._pg._access import CommandQuery, PgAccess

CHUNK_ROWS = 1000
# How long to look for the engine's socket when the file is locked: an engine that is
# starting holds the lock a moment before its socket appears, and one that is closing
# removes its socket a moment before it lets go of the file.
LOCKED_GRACE_SECONDS = 1.0
_POLL_SECONDS = 0.05
# The columns of `replay_events` but `value` (the codec's bytes; `value_json` shows it),
# in the view's order: what the command prints of events, on either database.
EVENT_COLUMNS = ", ".join(name for name in Event.__dataclass_fields__ if name != "value")


class CliError(Exception):
    """A failure the command reports in one message, with exit status 1."""


@dataclass
class Result:
    """A query's answer: columns, DuckDB type names, and the rows in chunks."""

    columns: list[str]
    types: list[str]
    chunks: Iterator[list[tuple[Any, ...]]]
    _rows: list[tuple[Any, ...]] | None = field(default=None, repr=False)

    def rows(self) -> list[tuple[Any, ...]]:
        """Return every row (reading the rest of the answer)."""
        if self._rows is None:
            self._rows = [row for chunk in self.chunks for row in chunk]
        return self._rows


def shown(path: str) -> str:
    """Return the database as the command prints it: a URL's password masked."""
    return shown_url(path) if is_postgres_url(path) else path


# The password of a URL, even one too malformed to parse (which libpq may quote whole).
_PASSWORD = re.compile(r"postgres(?:ql)?://[^:@/?#]*:([^@/?#]+)@")


def masked(text: str, path: str) -> str:
    """Return a message about `path` with the URL's password, wherever it is quoted, masked."""
    found = _PASSWORD.match(path) if is_postgres_url(path) else None
    return text if found is None else text.replace(f":{found[1]}@", ":***@")


class Source(Protocol):
    """What a subcommand can ask of a database, live or not."""

    live: bool
    queued: bool
    """Whether writes are queued for the engines running on a PostgreSQL database."""
    description: str
    noun: str
    """What the command calls the database in messages: ``file`` or ``database``."""

    def now(self) -> datetime:
        """Return the engine clock's time (for a file: what an engine would read)."""

    def query(self, sql: str, params: Any = None, timeout: float | None = None) -> Result:
        """Run one read-only query, stopped after `timeout` seconds if given."""

    def signal(self, run_id: str, key: str, payload: Any) -> tuple[str, str | None]:
        """Signal a run; return its state afterwards and a warning for a misdirected one."""

    def resume(self, run_id: str) -> tuple[str, str]:
        """Resume a run; return its state before and after."""

    def cancel(self, run_id: str, reason: str | None) -> tuple[str, bool]:
        """Cancel a run; return its state afterwards and whether this request counted."""

    def terminate(self, run_id: str, reason: str | None) -> str:
        """Terminate a run; return its state afterwards."""

    def purge(self, request: dict[str, Any]) -> dict[str, Any]:
        """Purge (see `replay._cli._retention`); return the report's fields."""

    def close(self) -> None:
        """Let go of the database."""


def open_source(path: str, *, write: bool = False) -> Source:
    """Return the engine serving `path`, or else the file itself.

    Raises:
        CliError: There is no database at `path`, it cannot be used, or a process
            that does not serve the replay command holds it; for a PostgreSQL URL,
            also: `write` is set and another writing command holds it.
    """
    if is_postgres_url(path):
        return _postgres(path, write)
    deadline = time.monotonic() + LOCKED_GRACE_SECONDS
    while True:
        live = _live(path)
        if live is not None:
            return live
        try:
            return FileSource(path, write=write)
        except FileNotFoundError:
            raise CliError(f"no database at {path!r}; pass the path your application gives "
                           "replay.open_engine()") from None
        except DatabaseLocked as locked:
            if time.monotonic() >= deadline:
                raise CliError(_locked_message(path, locked)) from None
        except ReplayError as error:
            raise CliError(str(error)) from None
        time.sleep(_POLL_SECONDS)


def _postgres(url: str, write: bool) -> FileSource:
    """Open the PostgreSQL database at `url` for one command (never an engine's socket).

    Raises:
        CliError: psycopg is missing, the database cannot be used, or `write` is set
            and another writing command holds it.
    """
    try:
        require_psycopg()
    except ModuleNotFoundError as error:
        raise CliError(str(error)) from None
    from replay._pg._access import PgAccess  # psycopg is optional: imported only here

    try:
        return FileSource(url, access=PgAccess(url, write=write))
    except ReplayError as error:
        raise CliError(str(error)) from None


def _live(path: str) -> LiveSource | None:
    try:
        connection = connect(path)
    except ChannelError as error:
        raise CliError(error.message) from None
    if connection is None:
        return None
    with connection:
        hello = connection.request("hello")
    return LiveSource(path, int(hello["pid"]), hello["now"])


def _locked_message(path: str, locked: DatabaseLocked) -> str:
    holder = f"process {locked.pid}" if locked.pid is not None else "another process"
    sock = socket_path(path)
    if os.path.lexists(sock):  # a channel that refuses: failed, stopping, or left behind
        return (f"database {path!r} is held by {holder}, and its replay channel {sock!r} "
                "refuses connections: the engine's channel failed (its log says why) or "
                "the engine is stopping, or the socket was left by a process that died; "
                "run the command again, or once the application stops")
    return (f"database {path!r} is held by {holder}, which does not serve the replay "
            "command (an engine opened with serve_cli=False, or not a replay engine); "
            "use engine.sql() inside that application, or run the command once it stops")


class LiveSource:
    """A running engine, reached over its socket (one connection per request)."""

    live = True
    queued = False
    noun = "file"

    def __init__(self, path: str, pid: int, now: datetime) -> None:
        self.path = path
        self.description = f"the engine in process {pid}"
        self._now = now

    def now(self) -> datetime:
        """Return the engine clock's time when the command reached the engine."""
        return self._now

    def _connect(self) -> Connection:
        try:
            connection = connect(self.path)
        except ChannelError as error:
            raise CliError(error.message) from None
        if connection is None:
            raise CliError(f"the engine serving {self.path!r} stopped during the command; "
                           "run it again")
        return connection

    def query(self, sql: str, params: Any = None, timeout: float | None = None) -> Result:
        """Run one read-only query in the engine (under its query_timeout by default)."""
        connection = self._connect()
        try:
            header = connection.request("query", sql=sql, params=params, timeout=timeout)
        except BaseException:
            connection.close()
            raise
        return Result(header["columns"], header["types"], _closing(connection.rows(), connection))

    def signal(self, run_id: str, key: str, payload: Any) -> tuple[str, str | None]:
        """Signal a run through the engine, which wakes it if it waits on `key`."""
        with self._connect() as connection:
            answer = connection.request("signal", run_id=run_id, key=key, payload=payload)
        warning = answer.get("warning")
        return str(answer["state"]), None if warning is None else str(warning)

    def resume(self, run_id: str) -> tuple[str, str]:
        """Resume a run through the engine (which has the workflow code)."""
        with self._connect() as connection:
            answer = connection.request("resume", run_id=run_id)
        return str(answer["before"]), str(answer["state"])

    def cancel(self, run_id: str, reason: str | None) -> tuple[str, bool]:
        """Cancel a run through the engine, which wakes it if it is parked."""
        with self._connect() as connection:
            answer = connection.request("cancel", run_id=run_id, reason=reason)
        return str(answer["state"]), bool(answer["requested"])

    def terminate(self, run_id: str, reason: str | None) -> str:
        """End a run ``cancelled`` through the engine (which stops its task)."""
        with self._connect() as connection:
            answer = connection.request("terminate", run_id=run_id, reason=reason)
        return str(answer["state"])

    def purge(self, request: dict[str, Any]) -> dict[str, Any]:
        """Purge through the engine, which reports after each batch; return its report.

        No time limit: a large purge reads its plan and writes its archive before the
        first batch. Ctrl-C stops it after the batch under way.
        """
        report: dict[str, Any] = {}
        with self._connect() as connection:
            connection.request("purge", **request)
            while not (message := connection.receive(timeout=None)).get("end"):
                report = message["progress"][-1]
        try:
            return {name: from_wire(item) for name, item in report.items()}
        except WireError as error:
            raise CliError(f"malformed answer from the engine: {error}") from None

    def close(self) -> None:
        """Nothing to let go of: every request had its own connection."""


def _closing(chunks: Iterator[list[tuple[Any, ...]]], connection: Connection
             ) -> Iterator[list[tuple[Any, ...]]]:
    try:
        yield from chunks
    finally:
        connection.close()


class FileSource:
    """The database itself, opened by the command: a file no engine holds, or a URL.

    Args:
        path: The database file, or a ``postgresql://`` URL.
        write: Open the file for writing (to store a signal, a cancellation, a purge).
        access: The database, opened already (a URL's `PgAccess`); by default the
            file at `path`, opened here.

    Attributes:
        queued: Engines run on the PostgreSQL database (its `PgAccess` was opened to
            write, and found them): signals, cancellations and terminations are queued
            for them (`replay._cli._queued`), checked first against the database.

    Raises:
        FileNotFoundError: There is no file at `path`.
        DatabaseLocked: Another process holds the file.
        DatabaseError: The file is not a usable replay database.
    """

    live = False

    def __init__(self, path: str, *, write: bool = False,
                 access: PgAccess | None = None) -> None:
        self.path = path
        self.shown = shown(path)
        self._postgres = is_postgres_url(path)
        self.noun = "database" if self._postgres else "file"
        self.description = (f"the PostgreSQL database {self.shown!r}" if self._postgres
                            else f"the file {path!r}")
        self._access = access if access is not None else FileAccess(path, write=write)
        # Messages waiting for an engine count as written, whoever queued them.
        self._pg = access
        # Where to queue writes: the database, while engines run on it.
        self._queue = access if access is not None and access.engines_run else None
        self.queued = self._queue is not None

    def now(self) -> datetime:
        """Return what an engine's clock would read: never before the newest record."""
        _, last = self._access.last_seq_and_time()
        now = datetime.now(UTC)
        return now if last is None or last < now else last

    def query(self, sql: str, params: Any = None, timeout: float | None = None) -> Result:
        """Run one read-only query on the file (the same check as `engine.sql`)."""
        query = self._access.query(sql, params, timeout)
        return Result(list(query.columns), list(query.types), _chunks(query))

    def signal(self, run_id: str, key: str, payload: Any) -> tuple[str, str | None]:
        """Store a signal in the run's mailbox, exactly as an engine records one.

        The next engine to open the database delivers it (a run suspended on `key` wakes
        as the engine opens). The checks are the engine's own. While engines run on a
        PostgreSQL database, the signal is queued for them instead.
        """
        row = self._access.run_row(run_id)
        if row is None:
            raise RunNotFound(run_id)
        key = checked_key(key)
        data, value_json = encode(payload, key=key), to_json(payload)
        if self._pg is not None:
            _queued.refuse_queued_signal(self._pg, run_id, key)
        records = self._access.load_history(run_id)
        status = fold(records) or RunStatus(RunState.RUNNING)
        history = RunHistory(records)
        parked_here = status.state is RunState.SUSPENDED and status.waiting_for == key
        check_signal(run_id, status.state, history, key, parked_here)
        if self._queue is not None:
            self._queue.send(run_id, "signal", key, data, value_json)
        else:
            seq, _ = self._access.last_seq_and_time()
            # Not the run's state: the engine that opens the file next wakes the run.
            record = Run(run_id, row.workflow).signalled(key, Encoded(data, value_json),
                                                         None)
            record.seq, record.recorded_at = seq + 1, self.now()
            self._access.append(record)
        info = RunInfo(run_id, row.workflow, status.state, row.created_at, row.updated_at,
                       waiting_for=status.waiting_for)
        return status.state.value, misdirected_signal(info, key)

    def cancel(self, run_id: str, reason: str | None) -> tuple[str, bool]:
        """Record the run's cancellation in the file, exactly as an engine records one.

        The record carries no run state: the next engine to open the file wakes a
        parked run with a pending cancellation, and a running one meets it at the
        next command it waits on. A second cancellation records nothing. While engines
        run on a PostgreSQL database, the cancellation is queued for them instead.

        Returns:
            The run's state (unchanged until an engine opens the file, or takes the
            queued cancellation), and False if its cancellation was requested before.

        Raises:
            RunNotFound: No such run.
            RunFinished: The run is finished.
        """
        queued = self._pg is not None and _queued.cancel_queued(self._pg, run_id)
        workflow, status, records = self._unfinished(run_id, "cancelled")
        if queued or RunHistory(records).cancel_reason is not None:
            return status.state.value, False
        encoded = Encoded(encode(reason, key="reason"), to_json(reason))
        if self._queue is not None:
            self._queue.send(run_id, "cancel", None, encoded.data, encoded.json)
            return status.state.value, True
        seq, _ = self._access.last_seq_and_time()
        record = Run(run_id, workflow).cancel_requested(encoded, None)
        record.seq, record.recorded_at = seq + 1, self.now()
        self._access.append(record)
        return status.state.value, True

    def terminate(self, run_id: str, reason: str | None) -> str:
        """Queue the termination for the engines running on a PostgreSQL database.

        Otherwise refuse: ending a run must stop its task and settle its parent and
        children, which only an engine can do.

        Returns:
            The run's state (unchanged until the engine takes the termination).

        Raises:
            RunNotFound: No such run.
            RunFinished: The run is finished.
            CliError: No engine runs on the database.
        """
        _, status, _ = self._unfinished(run_id, "terminated")
        if self._queue is not None:
            encoded = Encoded(encode(reason, key="reason"), to_json(reason))
            self._queue.send(run_id, "terminate", None, encoded.data, encoded.json)
            return status.state.value
        if self._postgres:
            raise CliError(
                f"terminate needs an engine, and no engine runs on the PostgreSQL "
                f"database {self.shown!r}: ending a run at once must stop whatever of it "
                "still runs and tell its parent and child runs, which only an engine can "
                "do; run the command again while an engine runs on the database (it "
                "queues the termination for that engine), or use `replay cancel "
                f"{shlex.quote(self.shown)} {shlex.quote(run_id)}`, which is stored in the "
                "database and taken when an engine next opens it")
        raise CliError(
            f"terminate needs the engine, and no engine holds {self.path!r}: ending a run "
            "at once must stop whatever of it still runs and tell its parent and child "
            "runs, which only the engine can do; run the command while an engine holds "
            f"the file, or use `replay cancel {shlex.quote(self.path)} {shlex.quote(run_id)}`, "
            "which is stored in the file and taken when an engine next opens it")

    def _unfinished(self, run_id: str, what: str
                    ) -> tuple[str, RunStatus, list[Record]]:
        """Return an unfinished run's workflow, state and records.

        Raises:
            RunNotFound: No such run.
            RunFinished: The run is finished (the engine's words).
        """
        row = self._access.run_row(run_id)
        if row is None:
            raise RunNotFound(run_id)
        records = self._access.load_history(run_id)
        status = fold(records) or RunStatus(RunState.RUNNING)
        if status.finished:
            raise RunFinished(
                f"run {run_id!r} is {status.state.value}; a finished run cannot be {what}",
                run_id=run_id, state=status.state.value)
        return row.workflow, status, records

    def workflow_of(self, run_id: str) -> str:
        """Return the name of the run's workflow.

        Raises:
            RunNotFound: No such run.
        """
        row = self._access.run_row(run_id)
        if row is None:
            raise RunNotFound(run_id)
        return row.workflow

    def resume(self, run_id: str) -> tuple[str, str]:
        """Refuse: resuming runs workflow code, which the file does not have.

        ``replay resume --workflows`` resumes in the command's own engine instead
        (`replay._cli._resume`).

        Raises:
            RunNotFound: No such run.
            CliError: Always, otherwise.
        """
        workflow = self.workflow_of(run_id)
        if self._postgres:
            raise CliError(
                "resume needs the workflow code, and the replay command reaches no engine "
                "on a PostgreSQL database: pass the modules that define workflow "
                f"{workflow!r} with --workflows MODULE[,MODULE...] to resume the run in "
                f"this command while no engine runs on {self.shown!r}, or call "
                "engine.resume(run_id) in the application whose engine runs on it")
        raise CliError(
            f"resume needs the workflow code, and no engine holds {self.path!r}: pass the "
            f"modules that define workflow {workflow!r} with --workflows MODULE[,MODULE...] "
            "to resume the run in this command, or run the command while your "
            "application's engine holds the file, or call engine.resume(run_id) in it")

    def purge(self, request: dict[str, Any]) -> dict[str, Any]:
        """Purge the database as an engine would (no engine holds it: nothing races).

        `request` holds `Engine.purge`'s arguments, checked, and ``dry_run``.

        Raises:
            CliError: Engines run on the PostgreSQL database (they purge it themselves).
        """
        if self._queue is not None:
            raise CliError(_queued.purge_refused(self.shown))
        report = self._access.purge(self.now() - request["older_than"], request["states"],
                                    request["workflow"], request["archive_to"],
                                    request["dry_run"])
        return {name: getattr(report, name) for name in report.__dataclass_fields__}

    def close(self) -> None:
        """Close the database."""
        self._access.close()


def _chunks(query: ReadQuery | CommandQuery) -> Iterator[list[tuple[Any, ...]]]:
    try:
        while rows := query.fetch(CHUNK_ROWS):
            yield rows
    finally:
        query.close()
