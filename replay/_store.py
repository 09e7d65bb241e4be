"""The DuckDB store: schema, views, the group-commit writer thread, history loading.

This is the only module that imports duckdb. Everything here is synchronous; the
engine calls it from worker threads (reads) or hands batches to the writer thread.

Design (measured, see docs/performance.md): DuckDB's cost is per statement, so the hot path writes
each batch of records as one Appender flush, which in autocommit mode is one
transaction and one fsync of the WAL. The event table is append-only, has no primary
key and no UPDATEs; run state is derived from the newest state-carrying event.
A single-column index on `run_id` keeps loading one run's history fast in big files.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import queue
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from replay._errors import DatabaseError, DatabaseLocked, QueryError, ReplayError
from replay._history import Record

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replay_meta (name VARCHAR, value VARCHAR);
CREATE TABLE IF NOT EXISTS replay_event_log (
    seq BIGINT, run_id VARCHAR, workflow VARCHAR, key VARCHAR, kind VARCHAR,
    event VARCHAR, attempt INTEGER, value BLOB, value_json JSON, error_type VARCHAR,
    error VARCHAR, recorded_at TIMESTAMPTZ, duration_ms DOUBLE, wake_at TIMESTAMPTZ,
    name VARCHAR, error_types VARCHAR, run_state VARCHAR, status_text VARCHAR
);
CREATE INDEX IF NOT EXISTS replay_event_log_run_id ON replay_event_log (run_id);
CREATE OR REPLACE VIEW replay_events AS
    SELECT seq, run_id, workflow, key, kind, event, attempt, value, value_json,
           error_type, error, recorded_at, duration_ms, wake_at
    FROM replay_event_log;
CREATE OR REPLACE VIEW replay_runs AS
    WITH latest AS (
        SELECT run_id, run_state, key, wake_at, status_text, error_type, error, value_json
        FROM replay_event_log WHERE run_state IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1
    ), started AS (
        SELECT run_id, workflow, recorded_at, value_json
        FROM replay_event_log WHERE kind = 'run' AND event = 'started'
    ), touched AS (
        SELECT run_id, max(recorded_at) AS updated_at FROM replay_event_log GROUP BY run_id
    )
    SELECT s.run_id, s.workflow, l.run_state AS state, s.recorded_at AS created_at,
           t.updated_at, s.value_json AS input_json,
           CASE WHEN l.run_state = 'completed' THEN l.value_json END AS output_json,
           CASE WHEN l.run_state = 'failed' THEN l.error_type END AS error_type,
           CASE WHEN l.run_state = 'failed' THEN l.error END AS error,
           CASE WHEN l.run_state IN ('sleeping', 'suspended') THEN l.key END AS waiting_for,
           CASE WHEN l.run_state IN ('sleeping', 'suspended') THEN l.wake_at END AS wake_at,
           CASE WHEN l.run_state = 'suspended' THEN l.status_text END AS status_text
    FROM started s JOIN latest l USING (run_id) JOIN touched t USING (run_id);
"""

# Column order of replay_event_log, as `record_row` produces it.
_COLUMNS = (
    "seq, run_id, workflow, key, kind, event, attempt, value, value_json, error_type, "
    "error, recorded_at, duration_ms, wake_at, name, error_types, run_state, status_text"
)

_RUN_SUMMARY = """
    WITH latest AS (
        SELECT run_id, run_state, key, wake_at, status_text, error_type, error, value
        FROM replay_event_log WHERE run_state IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1
    ), started AS (
        SELECT run_id, workflow, recorded_at FROM replay_event_log
        WHERE kind = 'run' AND event = 'started'
    ), touched AS (
        SELECT run_id, max(recorded_at) AS updated_at FROM replay_event_log GROUP BY run_id
    )
    SELECT s.run_id, s.workflow, l.run_state, s.recorded_at, t.updated_at, l.key,
           l.wake_at, l.status_text, l.error_type, l.error, l.value
    FROM started s JOIN latest l USING (run_id) JOIN touched t USING (run_id)
"""



@dataclass(frozen=True, slots=True)
class RunRow:
    """A run's state as the database has it, read when the engine opens."""

    run_id: str
    workflow: str
    state: str
    created_at: datetime
    updated_at: datetime
    waiting_for: str | None
    wake_at: datetime | None
    status_text: str | None
    error_type: str | None
    error: str | None
    value: bytes | None


def clean_text(text: str) -> str:
    """Return `text` storable as DuckDB VARCHAR (lone surrogates escaped)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def record_row(record: Record) -> tuple[Any, ...]:
    """Turn a record into a row of `replay_event_log`, validated for storage."""
    return (
        record.seq, clean_text(record.run_id), clean_text(record.workflow),
        _clean(record.key), record.kind, record.event,
        record.attempt, record.value, _clean(record.value_json), _clean(record.error_type),
        _clean(record.error), record.recorded_at, record.duration_ms, record.wake_at,
        _clean(record.name), _clean(",".join(record.error_types) or None), record.run_state,
        _clean(record.status_text),
    )


def _clean(text: str | None) -> str | None:
    return None if text is None else clean_text(text)


class Store:
    """One open database file: a writer connection and reader cursors.

    Args:
        path: The database file, or ``":memory:"``.
        durability: ``"fsync"`` (commit fsyncs the WAL) or ``"none"``.

    Raises:
        DatabaseLocked: Another process holds the file.
        DatabaseError: The file is not a usable replay database.
    """

    def __init__(self, path: str, durability: str) -> None:
        self.path = path
        self._con = _connect(path)
        try:
            fsync_mode = "NONE" if durability == "none" else "STANDARD"
            self._con.execute(f"SET fsync_mode = '{fsync_mode}'")
            _check_schema(self._con, path)
            self._appender = self._con.appender("replay_event_log")
        except BaseException:
            self._con.close()
            raise
        self._queue: queue.SimpleQueue[tuple[list[tuple[Any, ...]], Callable[..., None]] | None]
        self._queue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    # -- reads (each on its own cursor: a DuckDB connection is single-threaded) --

    def load_runs(self) -> list[RunRow]:
        """Return every run's current state (one query)."""
        rows = self._read(_RUN_SUMMARY, [])
        return [
            RunRow(row[0], row[1], row[2], utc(row[3]), utc(row[4]), row[5],
                   utc_or_none(row[6]), row[7], row[8], row[9], row[10])
            for row in rows
        ]

    def last_seq_and_time(self) -> tuple[int, datetime | None]:
        """Return the largest `seq` and `recorded_at` in the file."""
        seq, at = self._read("SELECT max(seq), max(recorded_at) FROM replay_event_log", [])[0]
        return int(seq or 0), utc_or_none(at)

    def signalled_while_suspended(self) -> list[str]:
        """Return runs suspended on a key whose signal is already in their mailbox.

        Only a signal stored while no engine held the file gets there (an engine wakes
        the run as it records the signal).
        """
        rows = self._read(_SIGNALLED_WHILE_SUSPENDED, [])
        return [row[0] for row in rows]

    def load_history(self, run_id: str) -> list[Record]:
        """Return every record of one run in `seq` order (one query)."""
        rows = self._read(
            f"SELECT {_COLUMNS} FROM replay_event_log WHERE run_id = ? ORDER BY seq", [run_id]
        )
        return [_row_record(row) for row in rows]

    def query(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None
    ) -> list[tuple[Any, ...]]:
        """Run one read-only query (SELECT, WITH … SELECT, EXPLAIN) and return its rows.

        Raises:
            QueryError: The text is not exactly one read-only query, or it failed.
        """
        cursor = self._con.cursor()
        try:
            return self._query(cursor, sql, params)
        except duckdb.Error as error:
            raise QueryError(f"query failed: {error}") from error
        finally:
            cursor.close()

    @staticmethod
    def _query(
        cursor: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | dict[str, Any] | None
    ) -> list[tuple[Any, ...]]:
        _check_read_only(cursor, sql)
        cursor.execute("BEGIN TRANSACTION READ ONLY")
        try:
            return cursor.execute(sql, params).fetchall()
        finally:
            cursor.execute("ROLLBACK")

    def _read(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        try:
            cursor = self._con.cursor()
            try:
                return cursor.execute(sql, params).fetchall()
            finally:
                cursor.close()
        except duckdb.Error as error:
            raise damaged(self.path, error) from error

    # -- the writer thread --

    def start_writer(self) -> None:
        """Start the thread that commits batches handed to `submit`."""
        self._writer = threading.Thread(target=self._write_loop, name="replay-writer", daemon=True)
        self._writer.start()

    def submit(
        self, rows: list[tuple[Any, ...]], done: Callable[[BaseException | None], None]
    ) -> None:
        """Commit `rows` in one transaction on the writer thread, then call `done`.

        `done` runs on the writer thread with None, or with the error that made the
        commit fail (in which case nothing of the batch was written).
        """
        self._queue.put((rows, done))

    def _write_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            rows, done = item
            try:
                self._appender.append_rows(rows)
                self._appender.flush()
            except BaseException as error:  # reported to the engine, which stops
                self._appender.clear()
                done(error)
            else:
                done(None)

    def close(self) -> None:
        """Stop the writer after what it was given, checkpoint and close the file."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
        self._con.close()


_SIGNALLED_WHILE_SUSPENDED = """
    WITH latest AS (
        SELECT run_id, run_state, key FROM replay_event_log WHERE run_state IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1
    )
    SELECT DISTINCT l.run_id FROM latest l
    JOIN replay_event_log s ON s.run_id = l.run_id AND s.kind = 'signal' AND s.key = l.key
    WHERE l.run_state = 'suspended'
"""

_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s*(\([^)]*\))?\s*(ANALYZE\b)?", re.IGNORECASE)


def _check_read_only(cursor: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Accept exactly one SELECT, or an EXPLAIN of one SELECT (decided by statement type).

    `EXPLAIN ANALYZE` executes the statement it explains, so the explained statement
    must itself be a query.
    """
    statements = cursor.extract_statements(sql)
    if not statements:
        raise QueryError(
            "engine.sql() runs exactly one query, got none; pass one SELECT, "
            "WITH ... SELECT or EXPLAIN"
        )
    if len(statements) > 1:
        raise QueryError(
            f"engine.sql() runs exactly one query, got {len(statements)} statements; "
            "send them one at a time"
        )
    kind = statements[0].type.name
    if kind == "EXPLAIN":
        inner = cursor.extract_statements(_EXPLAIN_PREFIX.sub("", statements[0].query, 1))
        kind = inner[0].type.name if len(inner) == 1 else "EXPLAIN"
    if kind != "SELECT":
        raise QueryError(
            f"engine.sql() only reads: {kind} statements are not allowed; "
            "use SELECT, WITH ... SELECT or EXPLAIN"
        )


def damaged(path: str, error: BaseException) -> DatabaseError:
    """Return the error for a database that fails while being read."""
    return DatabaseError(
        f"cannot read {path!r}: {error}; the file may be damaged: restore it from a backup"
    )


def _row_record(row: tuple[Any, ...]) -> Record:
    (seq, run_id, workflow, key, kind, event, attempt, value, value_json, error_type, error,
     recorded_at, duration_ms, wake_at, name, error_types, run_state, status_text) = row
    return Record(
        run_id=run_id, workflow=workflow, kind=kind, event=event, key=key, attempt=attempt,
        value=value, value_json=value_json, error_type=error_type, error=error,
        error_types=tuple(error_types.split(",")) if error_types else (), name=name,
        recorded_at=utc(recorded_at), duration_ms=duration_ms, wake_at=utc_or_none(wake_at),
        run_state=run_state, status_text=status_text, seq=seq,
    )


def utc(value: datetime) -> datetime:
    """Return a TIMESTAMPTZ read from DuckDB as an aware datetime in `datetime.UTC`."""
    return value.astimezone(UTC)


def utc_or_none(value: datetime | None) -> datetime | None:
    """Like `utc`, passing None through."""
    return None if value is None else value.astimezone(UTC)


_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


def _connect(path: str) -> duckdb.DuckDBPyConnection:
    # External access off: engine.sql() must read nothing but this database.
    config: dict[str, str | bool | int | float | list[str]] = {
        "enable_external_access": False
    }
    try:
        return duckdb.connect(path, config=config)
    except duckdb.IOException as error:
        held = _LOCK_HOLDER.search(str(error))
        if held is None:
            raise _unusable(path, error) from error
        pid = int(held["pid"])
        raise DatabaseLocked(
            f"database {path!r} is locked by another process ({_describe(pid)}); "
            "stop that engine first, or pass lock_timeout= to wait for it",
            pid=pid,
        ) from error
    except duckdb.Error as error:
        raise _unusable(path, error) from error


def _describe(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"PID {pid}"
    return f"PID {pid}: {command.strip()[:120]}"


def _unusable(path: str, error: BaseException) -> DatabaseError:
    return DatabaseError(
        f"cannot open {path!r} as a replay database: {error}; if the file is corrupted, "
        "restore it from a backup or move it aside to start a new database"
    )


def _check_schema(con: duckdb.DuckDBPyConnection, path: str) -> None:
    try:
        listed = con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        tables = {row[0] for row in listed}
        if "replay_meta" in tables:
            found = con.execute(
                "SELECT value FROM replay_meta WHERE name = 'schema_version'"
            ).fetchall()
            version = found[0][0] if found else None
            if version != str(SCHEMA_VERSION):
                raise DatabaseError(
                    f"database {path!r} has replay schema version {version!r}, but this "
                    f"version of replay reads schema version {SCHEMA_VERSION}; upgrade "
                    "replay-workflows to open it"
                )
            return
        con.execute("BEGIN TRANSACTION")
        con.execute(_SCHEMA)
        con.execute("INSERT INTO replay_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        con.execute("COMMIT")
    except ReplayError:
        raise
    except duckdb.Error as error:
        raise _unusable(path, error) from error


def file_keys(path: str) -> set[str]:
    """Return keys that identify the file at `path` however it is named.

    The resolved path catches symbolic links; the device and inode numbers (once the
    file exists) catch hard links. An in-memory database has no keys.
    """
    if path == ":memory:":
        return set()
    keys = {os.path.realpath(path)}
    try:
        info = os.stat(path)
    except OSError:
        return keys
    return keys | {f"inode:{info.st_dev}:{info.st_ino}"}


# -- the `replay` command and the live channel: chunked reads, Arrow, offline access --


class ReadQuery:
    """One read-only query's result, fetched in chunks on its own cursor.

    The query runs in a read-only transaction (a snapshot) that stays open until
    `close`. A DuckDB cursor is single-threaded: use one `ReadQuery` from one thread
    at a time (successive worker threads are fine).

    Raises:
        QueryError: The text is not exactly one read-only query, or it failed.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, sql: str,
                 params: Sequence[Any] | dict[str, Any] | None) -> None:
        self._cursor = con.cursor()
        self._open = False
        try:
            _check_read_only(self._cursor, sql)
            self._cursor.execute("BEGIN TRANSACTION READ ONLY")
            self._open = True
            self._cursor.execute(sql, params)
            description = self._cursor.description or []
        except duckdb.Error as error:
            self.close()
            raise QueryError(f"query failed: {error}") from error
        except BaseException:
            self.close()
            raise
        self.columns: tuple[str, ...] = tuple(column[0] for column in description)
        self.types: tuple[str, ...] = tuple(str(column[1]) for column in description)

    def fetch(self, size: int) -> list[tuple[Any, ...]]:
        """Return up to `size` more rows (an empty list at the end).

        Raises:
            QueryError: The query failed while its rows were produced.
        """
        try:
            return self._cursor.fetchmany(size)
        except duckdb.Error as error:
            raise QueryError(f"query failed: {error}") from error

    def close(self) -> None:
        """End the transaction and close the cursor (idempotent)."""
        try:
            if self._open:
                self._open = False
                self._cursor.execute("ROLLBACK")
        except duckdb.Error:
            pass  # the cursor goes away with its transaction
        finally:
            self._cursor.close()


def read_query(store: Store, sql: str,
               params: Sequence[Any] | dict[str, Any] | None) -> ReadQuery:
    """Start one read-only query on an engine's open store (see `ReadQuery`)."""
    return ReadQuery(store._con, sql, params)


def query_arrow(store: Store, sql: str,
                params: Sequence[Any] | dict[str, Any] | None) -> Any:
    """Run one read-only query and return its result as a `pyarrow.Table`.

    Raises:
        ModuleNotFoundError: pyarrow is not installed.
        QueryError: The text is not exactly one read-only query, or it failed.
    """
    if importlib.util.find_spec("pyarrow") is None:
        raise ModuleNotFoundError(
            "engine.sql_arrow() needs pyarrow, which is not installed; "
            "pip install pyarrow (or replay-workflows[arrow]), or use engine.sql()",
            name="pyarrow",
        )
    cursor = store._con.cursor()
    try:
        _check_read_only(cursor, sql)
        cursor.execute("BEGIN TRANSACTION READ ONLY")
        try:
            return cursor.sql(sql, params=params).to_arrow_table()
        finally:
            cursor.execute("ROLLBACK")
    except duckdb.Error as error:
        raise QueryError(f"query failed: {error}") from error
    finally:
        cursor.close()


class FileAccess:
    """A database file opened by the `replay` command while no engine holds it.

    Opened read-only unless `write` is set, never created, with external access
    disabled; the command closes it before it exits.

    Args:
        path: The database file.
        write: Open it for writing (to store a signal).

    Raises:
        FileNotFoundError: There is no file at `path`.
        DatabaseLocked: Another process holds the file.
        DatabaseError: The file is not a usable replay database.
    """

    def __init__(self, path: str, *, write: bool = False) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        self.path = path
        config: dict[str, str | bool | int | float | list[str]] = {
            "enable_external_access": False
        }
        try:
            self._con = duckdb.connect(path, read_only=not write, config=config)
        except duckdb.IOException as error:
            held = _LOCK_HOLDER.search(str(error))
            if held is None:
                raise _unusable(path, error) from error
            pid = int(held["pid"])
            raise DatabaseLocked(
                f"database {path!r} is locked by another process ({_describe(pid)})",
                pid=pid,
            ) from error
        except duckdb.Error as error:
            raise _unusable(path, error) from error
        try:
            _check_existing_schema(self._con, path)
        except BaseException:
            self._con.close()
            raise

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None) -> ReadQuery:
        """Start one read-only query (see `ReadQuery`)."""
        return ReadQuery(self._con, sql, params)

    def last_seq_and_time(self) -> tuple[int, datetime | None]:
        """Return the largest `seq` and `recorded_at` in the file."""
        seq, at = self._read("SELECT max(seq), max(recorded_at) FROM replay_event_log", [])[0]
        return int(seq or 0), utc_or_none(at)

    def run_row(self, run_id: str) -> RunRow | None:
        """Return one run's current state, or None if there is no such run."""
        rows = self._read(_RUN_SUMMARY + " WHERE s.run_id = ?", [run_id])
        if not rows:
            return None
        row = rows[0]
        return RunRow(row[0], row[1], row[2], utc(row[3]), utc(row[4]), row[5],
                      utc_or_none(row[6]), row[7], row[8], row[9], row[10])

    def load_history(self, run_id: str) -> list[Record]:
        """Return every record of one run in `seq` order."""
        rows = self._read(
            f"SELECT {_COLUMNS} FROM replay_event_log WHERE run_id = ? ORDER BY seq", [run_id])
        return [_row_record(row) for row in rows]

    def append(self, record: Record) -> None:
        """Commit one record (its `seq` and `recorded_at` set by the caller)."""
        marks = ", ".join("?" * len(_COLUMNS.split(",")))
        self._read(f"INSERT INTO replay_event_log ({_COLUMNS}) VALUES ({marks})",
                   list(record_row(record)))

    def _read(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        try:
            return self._con.execute(sql, params).fetchall()
        except duckdb.Error as error:
            raise damaged(self.path, error) from error

    def close(self) -> None:
        """Close the file."""
        self._con.close()


def _check_existing_schema(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Check that `path` is a replay database of this schema version; create nothing."""
    try:
        _check_version(con, path)
    except duckdb.Error as error:
        raise _unusable(path, error) from error


def _check_version(con: duckdb.DuckDBPyConnection, path: str) -> None:
    tables = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "replay_meta" not in tables or "replay_event_log" not in tables:
        raise DatabaseError(
            f"{path!r} is a DuckDB file but not a replay database (it has no replay "
            "tables); pass the path your application gives replay.open_engine()"
        )
    found = con.execute("SELECT value FROM replay_meta WHERE name = 'schema_version'").fetchall()
    version = found[0][0] if found else None
    if version != str(SCHEMA_VERSION):
        raise DatabaseError(
            f"database {path!r} has replay schema version {version!r}, but this version of "
            f"replay reads schema version {SCHEMA_VERSION}; upgrade replay-workflows to open it"
        )


def write_export(path: str, file_format: str, columns: Sequence[str], types: Sequence[str],
                 chunks: Iterable[list[tuple[Any, ...]]]) -> int:
    """Write rows to one Parquet, CSV or JSON-lines file, replacing it atomically.

    The rows go through a private in-memory DuckDB database, so the file's column
    types are the query's own (TIMESTAMPTZ, JSON, BLOB, ...).

    Args:
        path: The file to write.
        file_format: ``"parquet"``, ``"csv"`` or ``"json"`` (one object per line).
        columns: The column names.
        types: Their DuckDB type names, as `ReadQuery.types` gives them.
        chunks: The rows, in chunks.

    Returns:
        How many rows were written.

    Raises:
        ValueError: `file_format` is not one of the three.
        OSError: The file cannot be written.
    """
    options = {"parquet": "FORMAT parquet", "csv": "FORMAT csv, HEADER",
               "json": "FORMAT json"}.get(file_format)
    if options is None:
        raise ValueError(f"unknown export format {file_format!r}; use parquet, csv or json")
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        fields = ", ".join(f"{_quoted(name)} {kind}" for name, kind in zip(columns, types,
                                                                           strict=True))
        con.execute(f"CREATE TABLE export ({fields})")
        count = 0
        with con.appender("export") as appender:
            for chunk in chunks:
                appender.append_rows(chunk)
                appender.flush()
                count += len(chunk)
        partial = f"{path}.partial"
        literal = partial.replace("'", "''")
        try:
            con.execute(f"COPY export TO '{literal}' ({options})")
            os.replace(partial, path)
        except duckdb.Error as error:
            raise OSError(f"cannot write {path!r}: {error}") from error
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)
        return count
    finally:
        con.close()


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
