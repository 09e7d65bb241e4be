"""Where the `replay` command gets its answers: a running engine, or the database itself.

`open_source(path)` first looks for an engine serving the file (its socket next to the
database); if there is none, the command opens the file itself, read-only unless it
stores a signal or a cancellation, and closes it when the command ends. Both sources
(`LiveSource` in `_live_source`, `FileSource` in `_file_source`) answer the same
read-only queries, so every subcommand is written once, against `Source` (`_answers`).

A ``postgresql://`` URL has no socket beside it: the command always reads the database
itself (`replay._pg._access.PgAccess`, behind the same `FileSource`), whether or not
an engine runs on it. It writes only while none does; while engines run, it queues its
signals, cancellations and terminations for them (`replay._cli._queued`). The command's
queries are written once for both databases: ``?`` placeholders, and `EVENT_COLUMNS`
rather than DuckDB's ``EXCLUDE``.
"""

from __future__ import annotations

import os
import time

from replay._channel._client import ChannelError, connect
from replay._channel._protocol import socket_path
from replay._cli._answers import CliError, Source
from replay._cli._file_source import FileSource
from replay._cli._live_source import LiveSource
from replay._errors import DatabaseLocked, ReplayError
from replay._pg._url import is_postgres_url, require_psycopg

# How long to look for the engine's socket when the file is locked: an engine that is
# starting holds the lock a moment before its socket appears, and one that is closing
# removes its socket a moment before it lets go of the file.
LOCKED_GRACE_SECONDS = 1.0
_POLL_SECONDS = 0.05


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
