"""`replay compact`: rewrite a database file into a fresh one, to give deleted space back.

Deleting rows (a purge) does not shrink a DuckDB file: the space is reused by later
writes, never returned. A compaction copies what is left into a new file next to the
old one, in `seq` order, then atomically puts it in the old one's place.

It needs the file to itself, from the copy to the rename: an engine holding the file
makes it fail at once (the file lock tells). The steps:

1. Open the file for writing (so no engine holds it), bring an older release's file
   to this schema version, check it, and fold its write-ahead log in (CHECKPOINT).
2. Create a new owner-only file in a private directory beside it, with the schema.
3. Attach the old file read-only (its lock held from here on), copy ``replay_meta``
   and ``replay_event_log`` in `seq` order, checkpoint and fsync the new file.
4. Remove the old file's write-ahead log (its content is in the new file), rename the
   new file over the old one and fsync the directory. Only then let go of both.

A crash before step 4 leaves the old file as it was (and a private directory to
remove); during it, the old file without its log (everything was checkpointed in step
1) or the new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import duckdb

from replay._errors import DatabaseError, DatabaseLocked
from replay._store._connect import LOCK_HOLDER, _create_private, connect, describe_pid
from replay._store._hot import settle
from replay._store._purge import fsync_path
from replay._store._schema import check_existing_schema, check_schema, upgrade

COMPACT_ADVICE = ("; compact needs the file to itself: stop the engine first (replay purge "
                  "works while it runs; compact afterwards)")


def file_size(path: str) -> int:
    """Return the bytes the database takes on disk: the file and its write-ahead log."""
    return sum(os.path.getsize(name) for name in (path, f"{path}.wal")
               if os.path.exists(name))


def compact(path: str) -> tuple[int, int]:
    """Rewrite the database at `path` into a fresh file in its place.

    Returns:
        The bytes it took before (file and write-ahead log) and after.

    Raises:
        FileNotFoundError: There is no file at `path`.
        DatabaseLocked: A process (an engine) holds the file.
        DatabaseError: It is not a usable replay database, or the copy failed (the old
            file is left as it was).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    before = file_size(path)
    _fold_log(path)
    private = tempfile.mkdtemp(prefix=".replay-compact-",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        fresh = os.path.join(private, "compacted.duckdb")
        _create_private(fresh)
        con = duckdb.connect(fresh)
        try:
            check_schema(con, fresh)
            _copy(con, path)
            fsync_path(fresh)
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{path}.wal")  # checkpointed in _fold_log; copied anyway
            os.replace(fresh, path)
            fsync_path(os.path.dirname(os.path.abspath(path)))
        finally:
            con.close()
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return before, file_size(path)


def _fold_log(path: str) -> None:
    """Check the file (upgrading an older release's) and fold its log in.

    Raises:
        DatabaseLocked: A process holds the file.
        DatabaseError: It is not a usable replay database.
    """
    con = connect(path, lock_advice=COMPACT_ADVICE)
    try:
        upgrade(con)
        check_existing_schema(con, path)
        con.execute("CHECKPOINT")
    except duckdb.Error as error:
        raise DatabaseError(f"cannot compact {path!r}: {error}") from error
    finally:
        con.close()


def _copy(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Copy the old file's tables into the new one (open on `con`), then checkpoint.

    Raises:
        DatabaseLocked: A process took the file since it was checked.
        DatabaseError: The copy failed.
    """
    try:
        con.execute(f"ATTACH '{_literal(path)}' AS old (READ_ONLY)")
    except duckdb.IOException as error:
        held = LOCK_HOLDER.search(str(error))
        if held is None:
            raise DatabaseError(f"cannot compact {path!r}: {error}") from error
        pid = int(held["pid"])
        raise DatabaseLocked(f"database {path!r} is locked by another process "
                             f"({describe_pid(pid)}){COMPACT_ADVICE}", pid=pid) from error
    if os.path.exists(f"{path}.wal") and os.path.getsize(f"{path}.wal") > 0:
        # A process wrote to the file after it was checkpointed: start again.
        raise DatabaseError(f"cannot compact {path!r}: another process wrote to it while it "
                            "was being compacted; run the command again once it stops")
    try:
        columns = ", ".join(row[0] for row in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = 'old' "
            "AND table_name = 'replay_event_log' ORDER BY column_index").fetchall())
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM replay_meta")
        con.execute("INSERT INTO replay_meta SELECT * FROM old.replay_meta")
        con.execute(f"INSERT INTO replay_event_log ({columns}) SELECT {columns} "
                    "FROM old.replay_event_log ORDER BY seq")
        con.execute("INSERT INTO replay_event_hot SELECT * FROM old.replay_event_hot")
        con.execute("COMMIT")
        settle(con)
        con.execute("CHECKPOINT")
    except duckdb.Error as error:
        raise DatabaseError(f"cannot compact {path!r}: copying it failed: {error}; the "
                            "file is left as it was") from error


def _literal(text: str) -> str:
    return text.replace("'", "''")
