"""The `replay` command's source when no engine serves the database: the database itself.

A file no engine holds is opened for the length of one command (read-only unless the
command stores a signal, a cancellation or a purge); a ``postgresql://`` URL is read
through `replay._pg._access.PgAccess` whether or not engines run on it, and while they
do, its writes are queued for them (`replay._cli._queued`).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from replay._checks import checked_key
from replay._cli import _queued
from replay._cli._answers import CHUNK_ROWS, CliError, Result, shown
from replay._codec import encode, to_json
from replay._core._history import RunHistory
from replay._core._records import Encoded, Record, Run
from replay._core._signals import check_signal, misdirected_signal
from replay._core._state import RunStatus, fold
from replay._errors import RunFinished, RunNotFound
from replay._pg._url import is_postgres_url
from replay._store import FileAccess, ReadQuery
from replay._types import RunInfo, RunState

if TYPE_CHECKING:  # psycopg is optional: PgAccess is imported when a URL is opened
    from replay._pg._access import CommandQuery, PgAccess


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
