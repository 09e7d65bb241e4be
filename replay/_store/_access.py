"""The `replay` command's and the live channel's access: chunked reads, Arrow, files.

Used when the command opens a file itself (no engine holds it) and by the engine's
channel server; exports go through a private in-memory database so that the files
keep the query's column types.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import duckdb

from replay._core._records import Record
from replay._store._connect import connect, damaged, private_wal
from replay._store._purge import purge_file
from replay._store._queries import ReadQuery
from replay._store._readers import CLI_ADVICE, timed_out_message
from replay._store._rows import RunRow, history_records, record_row, run_row, utc_or_none
from replay._store._schema import (
    COLUMNS,
    RUN_SUMMARY,
    TABLE_COLUMNS,
    check_existing_schema,
    older,
    stored_version,
    upgrade,
)
from replay._types import PurgeReport


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
        self._con = self._opened(write)

    def _opened(self, write: bool) -> duckdb.DuckDBPyConnection:
        """Open the file; one written by an earlier release is upgraded first.

        An upgrade needs to write: the file is opened for writing once, upgraded,
        and opened again as asked.
        """
        con = connect(self.path, read_only=not write, lock_advice="")
        try:
            if write or not older(stored_version(con)):
                if write:
                    upgrade(con)
                check_existing_schema(con, self.path)
                return con
        except duckdb.Error as error:
            con.close()
            raise damaged(self.path, error) from error
        except BaseException:
            con.close()
            raise
        con.close()
        upgrading = connect(self.path, lock_advice="")
        try:
            upgrade(upgrading)
        finally:
            upgrading.close()
        return self._opened(write=False)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None,
              timeout: float | None = None) -> ReadQuery:
        """Start one read-only query (see `ReadQuery`), stopped after `timeout` seconds.

        Raises:
            QueryError: It is not exactly one read-only query, or it failed.
        """
        query = ReadQuery(self._con, sql, params, timeout=timeout,
                          timed_out=timed_out_message(timeout or 0.0, CLI_ADVICE))
        try:
            query.start()
        except BaseException:
            query.close()
            raise
        return query

    def last_seq_and_time(self) -> tuple[int, datetime | None]:
        """Return the largest `seq` and `recorded_at` in the file."""
        seq, at = self._read("SELECT max(seq), max(recorded_at) FROM replay_event_all", [])[0]
        return int(seq or 0), utc_or_none(at)

    def run_row(self, run_id: str) -> RunRow | None:
        """Return one run's current state, or None if there is no such run."""
        rows = self._read(RUN_SUMMARY + " WHERE s.run_id = ?", [run_id])
        if not rows:
            return None
        return run_row(rows[0], self.path)

    def load_history(self, run_id: str) -> list[Record]:
        """Return every record of one run in `seq` order.

        Raises:
            DatabaseError: The run's rows are damaged.
        """
        rows = self._read(
            f"SELECT {COLUMNS} FROM replay_event_all WHERE run_id = ? ORDER BY seq", [run_id])
        return history_records(rows, self.path)

    def append(self, record: Record) -> None:
        """Commit one record (its `seq` and `recorded_at` set by the caller).

        It joins the run's current generation, as the engine's records do.
        """
        found = self._read("SELECT max(coalesce(generation, 0)) FROM replay_event_all "
                           "WHERE run_id = ?", [record.run_id])
        record.generation = int(found[0][0] or 0)
        marks = ", ".join("?" * len(TABLE_COLUMNS.split(",")))
        private_wal(self.path)
        self._read(f"INSERT INTO replay_event_log ({TABLE_COLUMNS}) VALUES ({marks})",
                   list(record_row(record)))

    def purge(self, cutoff: datetime, states: Sequence[str], workflow: str | None,
              archive_to: str | None, dry_run: bool) -> PurgeReport:
        """Purge the file as an engine does (see `replay._store._purge`).

        Raises:
            ValueError: `archive_to` exists or cannot be written (nothing is deleted).
            OSError: Writing the archive failed (nothing is deleted).
            DatabaseError: The file cannot be read or written.
        """
        try:
            return purge_file(self._con, self.path, cutoff, states, workflow, archive_to,
                              dry_run, batch_runs=1000)
        except duckdb.Error as error:
            raise damaged(self.path, error) from error

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
