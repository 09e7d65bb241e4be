"""Opening a database file: locks, damaged files, and the read-only query check."""

from __future__ import annotations

import os
import re
from pathlib import Path

import duckdb

from replay._errors import DatabaseError, DatabaseLocked, QueryError

LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


ENGINE_LOCK_ADVICE = "; stop that engine first, or pass lock_timeout= to wait for it"


def connect(
    path: str, *, read_only: bool = False, lock_advice: str = ENGINE_LOCK_ADVICE
) -> duckdb.DuckDBPyConnection:
    """Open `path` with external access disabled.

    Raises:
        DatabaseLocked: Another process holds the file (`lock_advice` ends the message).
        DatabaseError: The file cannot be opened as a DuckDB database.
    """
    # External access off: engine.sql() must read nothing but this database.
    config: dict[str, str | bool | int | float | list[str]] = {
        "enable_external_access": False
    }
    try:
        return duckdb.connect(path, read_only=read_only, config=config)
    except duckdb.IOException as error:
        held = LOCK_HOLDER.search(str(error))
        if held is None:
            raise unusable(path, error) from error
        pid = int(held["pid"])
        raise DatabaseLocked(
            f"database {path!r} is locked by another process ({describe_pid(pid)})"
            f"{lock_advice}",
            pid=pid,
        ) from error
    except duckdb.Error as error:
        raise unusable(path, error) from error


def describe_pid(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"PID {pid}"
    return f"PID {pid}: {command.strip()[:120]}"


def unusable(path: str, error: BaseException) -> DatabaseError:
    return DatabaseError(
        f"cannot open {path!r} as a replay database: {error}; if the file is corrupted, "
        "restore it from a backup or move it aside to start a new database"
    )


def damaged(path: str, error: BaseException) -> DatabaseError:
    """Return the error for a database that fails while being read."""
    return DatabaseError(
        f"cannot read {path!r}: {error}; the file may be damaged: restore it from a backup"
    )


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


_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s*(\([^)]*\))?\s*(ANALYZE\b)?", re.IGNORECASE)


def check_read_only(cursor: duckdb.DuckDBPyConnection, sql: str) -> None:
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
