"""Opening a database file: locks, damaged files, and files only their owner can read.

DuckDB creates its files with the process's umask (usually 0644), and deletes and
re-creates the write-ahead log at every checkpoint. replay's files hold everything its
workflows saw, so they are made owner-only (0600): a new database is created inside a
fresh private directory and linked into place, and the store creates the WAL itself,
empty and 0600, before each write (DuckDB then writes into the file it finds).
The umask cannot be used: it is per process, and other threads create files too.

New files are written in the storage format of DuckDB 1.4 (`STORAGE_VERSION`), so the
DuckDB CLIs and clients users have (1.4 and newer) can read them, not only DuckDB 2.0.
DuckDB keeps a file's format for its whole life: files created before are not changed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import duckdb

from replay._errors import DatabaseError, DatabaseLocked

LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


ENGINE_LOCK_ADVICE = "; stop that engine first, or pass lock_timeout= to wait for it"

# New files are in DuckDB 1.4's storage format, which DuckDB 1.4 and newer read (2.0's
# own is unreadable before 2.0). DuckDB records it in the file and keeps writing in it.
STORAGE_VERSION = "v1.4.0"
Config = dict[str, str | bool | int | float | list[str]]
_CREATE_CONFIG: Config = {"storage_compatibility_version": STORAGE_VERSION}

# A query of one run (`WHERE run_id = ...`) reads its rows by the run_id index only if
# they are at most this many, or at most 0.1 % of the table (DuckDB's default share);
# else it scans the table. The index fetches each row on its own, about 10 us for the
# memo's 14 columns, where a scan costs about 0.3 ms plus 0.01 us a row: DuckDB's
# default of 2,048 rows had a 1,000-step run's memo read in 10 ms from a small file,
# which a scan reads in 2 (measured on the project's machine). The share decides in big
# tables, where it matches that balance; this count decides in small ones.
INDEX_SCAN_MAX_ROWS = 64


def connect(
    path: str, *, read_only: bool = False, lock_advice: str = ENGINE_LOCK_ADVICE
) -> duckdb.DuckDBPyConnection:
    """Open `path` with external access disabled, creating it owner-only if missing.

    Raises:
        DatabaseLocked: Another process holds the file (`lock_advice` ends the message).
        DatabaseError: The file cannot be opened as a DuckDB database.
    """
    # External access off: engine.sql() must read nothing but this database. The storage
    # version only matters if DuckDB creates the file itself (an existing file keeps its).
    config: Config = {
        "enable_external_access": False,
        "index_scan_max_count": INDEX_SCAN_MAX_ROWS,
        **_CREATE_CONFIG,
    }
    try:
        if not read_only and path != ":memory:" and not os.path.exists(path):
            _create_private(path)
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


def _create_private(path: str) -> None:
    """Create an empty DuckDB database at `path` that only its owner can read or write.

    It is made in a fresh private directory beside `path` and hard-linked into place,
    so it is never reachable with wider permissions. If that cannot be done (no hard
    links on this file system), DuckDB creates the file in place and it is restricted
    right after, before anything is written to it. Either way it is written in the
    storage format of `STORAGE_VERSION`.
    """
    try:
        private = tempfile.mkdtemp(prefix=".replay-", dir=os.path.dirname(os.path.abspath(path)))
    except OSError:
        return  # DuckDB's own open reports what is wrong with the directory
    try:
        fresh = os.path.join(private, "new.duckdb")
        duckdb.connect(fresh, config=_CREATE_CONFIG).close()
        os.chmod(fresh, 0o600)
        with contextlib.suppress(FileExistsError):  # another process was quicker: use it
            os.link(fresh, path)
    except OSError:
        duckdb.connect(path, config=_CREATE_CONFIG).close()
        os.chmod(path, 0o600)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def private_wal(path: str) -> None:
    """Make sure `path`'s write-ahead log exists and is owner-only, before a write.

    DuckDB deletes the WAL at every checkpoint and would re-create it with the umask's
    permissions; an empty WAL it finds is used as it is.
    """
    if path == ":memory:":
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(f"{path}.wal", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
