"""The `replay` command's and the live channel's access: chunked reads, Arrow, files.

Used when the command opens a file itself (no engine holds it) and by the engine's
channel server; exports go through a private in-memory database so that the files
keep the query's column types.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import duckdb

from replay._errors import QueryError
from replay._history import Record
from replay._store._connect import check_read_only, connect, damaged
from replay._store._rows import RunRow, record_row, row_record, utc, utc_or_none
from replay._store._schema import COLUMNS, RUN_SUMMARY, check_existing_schema
from replay._store._writer_store import Store


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
            check_read_only(self._cursor, sql)
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
        check_read_only(cursor, sql)
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
        self._con = connect(path, read_only=not write, lock_advice="")
        try:
            check_existing_schema(self._con, path)
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
        rows = self._read(RUN_SUMMARY + " WHERE s.run_id = ?", [run_id])
        if not rows:
            return None
        row = rows[0]
        return RunRow(row[0], row[1], row[2], utc(row[3]), utc(row[4]), row[5],
                      utc_or_none(row[6]), row[7], row[8], row[9], row[10])

    def load_history(self, run_id: str) -> list[Record]:
        """Return every record of one run in `seq` order."""
        rows = self._read(
            f"SELECT {COLUMNS} FROM replay_event_log WHERE run_id = ? ORDER BY seq", [run_id])
        return [row_record(row) for row in rows]

    def append(self, record: Record) -> None:
        """Commit one record (its `seq` and `recorded_at` set by the caller)."""
        marks = ", ".join("?" * len(COLUMNS.split(",")))
        self._read(f"INSERT INTO replay_event_log ({COLUMNS}) VALUES ({marks})",
                   list(record_row(record)))

    def _read(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        try:
            return self._con.execute(sql, params).fetchall()
        except duckdb.Error as error:
            raise damaged(self.path, error) from error

    def close(self) -> None:
        """Close the file."""
        self._con.close()


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
