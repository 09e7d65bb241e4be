"""The `replay` command's access to a PostgreSQL schema: `FileAccess`'s methods, on a URL.

There is no engine socket beside a URL, so the command always reads the database
itself, whether or not an engine runs on it: reads are plain queries, and user queries
go through `PgReadQuery` (read-only, views only, under a statement timeout). The
command never creates or changes replay's tables; it only checks that the schema is a
replay schema of this version.

Writes (a signal, a cancellation, a termination, a purge) are another matter: an
engine holds the state of its runs in memory, and would not see a record appended
behind its back. A writing command therefore tries to take the schema's advisory lock
exclusively for its session, for the length of the command (engines hold it shared).
If it gets it, no engine runs: it appends its records itself, numbered from a block of
`seq` of its own, as an engine's are, and an engine that starts meanwhile waits or is
refused. If engines hold the lock, the command opens all the same, with `engines_run`
set: it appends nothing, and queues its signals, cancellations and terminations in the
schema's inbox (`send`), which the engine that holds the run delivers, as it delivers
what other engines send it. Only another writing command refuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from psycopg import sql as pgsql

from replay._core._records import Record
from replay._errors import DatabaseError, DatabaseLocked, QueryError
from replay._pg import _leases, _purge, _reads
from replay._pg._connect import connect, failed
from replay._pg._leases import seq_block
from replay._pg._queries import PgReadQuery, usable_reader_role
from replay._pg._rows import COPY_COLUMNS, pg_row
from replay._pg._schema import PG_SCHEMA_VERSION, _check_version, _objects
from replay._pg._url import shown_url
from replay._pg._writer import ENGINE_LOCK_KEY, release_lock
from replay._store._readers import CLI_ADVICE, timed_out_message
from replay._store._rows import RunRow
from replay._types import PurgeReport

T = TypeVar("T")
Connection = psycopg.Connection[Any]

# The advisory lock of `PgStore`'s writer session: held by the engine while it runs,
# and by a writing command while it writes.
_TRY_LOCK = f"SELECT pg_try_advisory_lock({ENGINE_LOCK_KEY})"
_UNLOCK = f"SELECT pg_advisory_unlock({ENGINE_LOCK_KEY})"
# Who holds it (a bigint key is stored as classid: high half, objid: low half):
# engines hold it shared, a writing command exclusively, so the exclusive holder first.
_HOLDER = f"""
    SELECT l.pid, l.mode = 'ExclusiveLock' FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND ((l.classid::bigint << 32) | l.objid::bigint) = {ENGINE_LOCK_KEY}
    ORDER BY l.mode = 'ExclusiveLock' DESC LIMIT 1
"""
# How often to try the lock again when its holder let go between the attempt and the look.
_LOCK_ATTEMPTS = 5
# Whether a message for the run waits in the inbox (`key`: NULL but for a signal).
_PENDING = ("SELECT EXISTS (SELECT 1 FROM replay_inbox WHERE run_id = %s AND action = %s "
            "AND key IS NOT DISTINCT FROM %s)")
COMMAND_APPLICATION = "replay-cli"  # how a writing command's session shows in pg_stat_activity
_INSERT = (f"INSERT INTO replay_event_log ({COPY_COLUMNS}) "
           f"VALUES ({', '.join(['%s'] * len(COPY_COLUMNS.split(',')))})")
_GENERATION = ("SELECT max(coalesce(generation, 0)) FROM replay_event_all "
               "WHERE run_id = %s")
PURGE_BATCH_RUNS = 1000  # as many runs per delete as an engine's purge of a file


class PgAccess:
    """A PostgreSQL replay schema opened by the `replay` command for one command.

    Args:
        url: The database's ``postgresql://`` URL (its search path names the schema).
        write: Take the engine's lock for this session, to store a signal, a
            cancellation or a purge; while engines run, open without it and set
            `engines_run` instead (the command then queues what it sends).

    Attributes:
        engines_run: `write` was asked while engines hold the schema: `append` is not
            allowed, `send` queues messages for them.

    Raises:
        DatabaseLocked: `write` is set and another writing command holds the schema.
        DatabaseError: The server cannot be reached, or the schema is not a replay
            schema of this version.
    """

    def __init__(self, url: str, *, write: bool = False) -> None:
        self.path = shown_url(url)  # every message shows the URL without its password
        self._url = url
        self._next_seq: int | None = None  # of the block appends number from
        self._locked = False
        self.engines_run = False
        self._con: Connection = connect(url)
        try:
            check_replay_schema(self._con, self.path, write)
            self._role = usable_reader_role(self._con)  # the engine creates it
            if write:
                self._lock()
        except psycopg.Error as error:
            self._con.close()
            raise failed(self.path, error) from error
        except BaseException:
            self._con.close()
            raise

    def _lock(self) -> None:
        """Take the schema's lock exclusively, or learn that engines hold it.

        Raises:
            DatabaseLocked: Another writing command holds it.
        """
        self._con.execute(pgsql.SQL("SET application_name = {}").format(
            pgsql.Literal(COMMAND_APPLICATION)))
        for _ in range(_LOCK_ATTEMPTS):
            locked = self._con.execute(_TRY_LOCK).fetchone()
            if locked and locked[0]:
                self._locked = True
                return  # held until the command closes the session
            holder = self._con.execute(_HOLDER).fetchone()
            if holder is None:
                continue  # let go of meanwhile: try again
            pid, exclusive = holder
            if not exclusive:
                self.engines_run = True  # the command queues for them
                return
            raise DatabaseLocked(
                f"another replay command is writing to the PostgreSQL database "
                f"{self.path!r} (server process {pid}); run this one again once it ends",
                pid=pid)
        raise DatabaseLocked(
            f"the PostgreSQL database {self.path!r} is being locked and unlocked faster "
            "than this command can tell who holds it; run the command again")

    def send(self, run_id: str, action: str, key: str | None = None,
             payload: bytes | None = None, payload_json: str | None = None) -> None:
        """Queue a message for the engine that holds `run_id` (or claims it next).

        Only while `engines_run`: the message is committed, and the engines woken, in
        one transaction; the engine delivers it as if called there.

        Raises:
            DatabaseError: The insert failed.
        """
        assert self.engines_run, "the command holds the schema: it appends instead"
        self._read(_leases.send, run_id, action, key, payload, payload_json)

    def pending(self, run_id: str, action: str, key: str | None = None) -> bool:
        """Return whether a message `action` (for `key`) to the run waits in the inbox."""
        found = self._read(lambda con: con.execute(_PENDING, [run_id, action, key]
                                                   ).fetchone())
        return bool(found and found[0])

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None,
              timeout: float | None = None) -> CommandQuery:
        """Start one user query (see `PgReadQuery`), stopped after `timeout` seconds.

        Placeholders are ``?`` (or ``$1``, ``$name``), as on a DuckDB file.

        Raises:
            QueryError: It is not exactly one read-only query on the views, or it failed.
            DatabaseError: The server cannot be reached.
        """
        query = CommandQuery(PgReadQuery(self._url, sql, params, reader_role=self._role,
                                         limit=timeout), timeout)
        try:
            query.start()
        except BaseException:
            query.close()
            raise
        return query

    def last_seq_and_time(self) -> tuple[int, datetime | None]:
        """Return the largest `seq` and `recorded_at` in the schema."""
        return self._read(_reads.last_seq_and_time)

    def run_row(self, run_id: str) -> RunRow | None:
        """Return one run's current state, or None if there is no such run."""
        return self._read(_reads.run_row, run_id, self.path)

    def load_history(self, run_id: str) -> list[Record]:
        """Return every record of one run in `seq` order.

        Raises:
            DatabaseError: The run's rows are damaged.
        """
        return self._read(_reads.load_history, run_id, self.path)

    def append(self, record: Record) -> None:
        """Commit one record (its `seq` and `recorded_at` set by the caller).

        It joins the run's current generation, as the engine's records do. Only a
        command holding the engine's lock (`write`, no engine running) may append. Its `seq`
        is replaced by one of a block of the command's own, taken from the schema's
        sequence as engines take theirs, so it comes after every record there is.

        Raises:
            ValueError: The record holds a NUL character in an identifier.
            DatabaseError: The insert failed.
        """
        assert self._locked, "engines run on the schema: the command queues instead"
        found = self._read(lambda con: con.execute(_GENERATION, [record.run_id]).fetchone())
        record.generation = int(found[0] or 0) if found else 0
        if self._next_seq is None:
            self._next_seq = self._read(seq_block) + 1
        record.seq, self._next_seq = self._next_seq, self._next_seq + 1
        row = pg_row(record)
        self._read(lambda con: con.execute(_INSERT, row))

    def purge(self, cutoff: datetime, states: Sequence[str], workflow: str | None,
              archive_to: str | None, dry_run: bool) -> PurgeReport:
        """Purge the schema as an engine does (see `replay._pg._purge`), in batches.

        Raises:
            ValueError: `archive_to` exists or cannot be written (nothing is deleted).
            OSError: Writing the archive failed (nothing is deleted).
            DatabaseError: The schema cannot be read or written.
        """
        assert dry_run or self._locked, "engines purge a schema they run on themselves"
        if archive_to is not None:
            _purge.check_archive_path(archive_to)
        planned = self._read(_purge.plan, cutoff, states, workflow)
        if dry_run:
            return PurgeReport(planned.runs, planned.events + planned.generation_events,
                               planned.generation_count, None, cutoff)
        if not (planned.trees or planned.generations):
            return PurgeReport(0, 0, 0, None, cutoff)
        if archive_to is not None:
            self._read(_purge.write_archive, archive_to, planned)
        runs = events = 0
        for start in range(0, len(planned.trees), PURGE_BATCH_RUNS):
            deleted, count = self._read(_purge.delete_runs,
                                        planned.trees[start:start + PURGE_BATCH_RUNS],
                                        states, cutoff)
            runs, events = runs + len(deleted), events + count
        generations, count = self._read(_purge.delete_generations, planned.generations,
                                        cutoff)
        return PurgeReport(runs, events + count, generations, archive_to, cutoff)

    def _read(self, function: Callable[..., T], *args: Any) -> T:
        try:
            return function(self._con, *args)
        except psycopg.Error as error:
            raise failed(self.path, error) from error

    def close(self) -> None:
        """Let go of the lock, if the command took it, and disconnect."""
        if self._locked:
            release_lock(self._con, _UNLOCK)
        else:
            self._con.close()


def check_replay_schema(con: Connection, shown: str, write: bool = False) -> None:
    """Check, reading only, that the connection's schema is a replay schema of this version.

    Raises:
        DatabaseError: No schema on the search path exists, the schema has no replay
            tables, or it has another version or is damaged.
    """
    row = con.execute("SELECT current_schema(), current_setting('search_path')").fetchone()
    schema = row[0] if row else None
    objects = _objects(con) if schema is not None else {}
    if "replay_meta" not in objects:
        where = (f"its schema {schema!r} has no replay tables" if schema is not None else
                 f"none of the schemas on its search_path ({row[1] if row else ''}) exists")
        raise DatabaseError(
            f"{shown!r} is a PostgreSQL database but not a replay database ({where}); "
            "pass the URL your application gives replay.open_engine(), with "
            "options=-csearch_path%3D<schema> naming the schema its engine uses")
    version = _check_version(con, shown, objects)
    if version != str(PG_SCHEMA_VERSION) and write:
        raise DatabaseError(
            f"{shown!r} is a replay database of schema version {version}, which the replay "
            "command reads but does not write; open an engine on it once (it upgrades "
            "the schema as it opens), then run this command again")


class CommandQuery:
    """A started `PgReadQuery` as the command reads it: DuckDB's type names, UTC times.

    The command's printing and its exports work with DuckDB's type names (``BIGINT``,
    ``VARCHAR``, ``TIMESTAMP WITH TIME ZONE``, ...); PostgreSQL's are translated, and
    values of types DuckDB has no counterpart for are passed on as text.
    """

    def __init__(self, query: PgReadQuery, timeout: float | None) -> None:
        self._query = query
        self._timeout = timeout
        self.columns: tuple[str, ...] = ()
        self.types: tuple[str, ...] = ()
        self._convert: list[tuple[int, Callable[[Any], Any]]] = []

    def start(self) -> None:
        """Run the query.

        Raises:
            QueryError: It was refused, failed, or ran out of time.
        """
        self._call(self._query.start)
        self.columns = self._query.columns
        mapped = [duckdb_type(name) for name in self._query.types]
        self.types = tuple(name for name, _ in mapped)
        self._convert = [(index, convert) for index, (_, convert) in enumerate(mapped)
                         if convert is not None]

    def fetch(self, size: int) -> list[tuple[Any, ...]]:
        """Return up to `size` more rows (an empty list at the end).

        Raises:
            QueryError: The query failed.
        """
        rows = self._call(lambda: self._query.fetch(size))
        if not self._convert:
            return rows
        converted = []
        for row in rows:
            values = list(row)
            for index, convert in self._convert:
                if values[index] is not None:
                    values[index] = convert(values[index])
            converted.append(tuple(values))
        return converted

    def _call(self, function: Callable[[], T]) -> T:
        try:
            return function()
        except QueryError as error:
            if self._timeout is not None and isinstance(error.__cause__,
                                                        psycopg.errors.QueryCanceled):
                raise QueryError(timed_out_message(self._timeout, CLI_ADVICE)) from None
            raise

    def close(self) -> None:
        """Let go of the query's connection."""
        self._query.close()


# PostgreSQL's type names (as psycopg shows them, upper case) to DuckDB's.
_TYPES = {
    "TEXT": "VARCHAR", "VARCHAR": "VARCHAR", "BPCHAR": "VARCHAR", "NAME": "VARCHAR",
    "INT2": "SMALLINT", "INT4": "INTEGER", "INT8": "BIGINT", "FLOAT4": "FLOAT",
    "FLOAT8": "DOUBLE", "BOOL": "BOOLEAN", "BYTEA": "BLOB", "JSON": "JSON", "JSONB": "JSON",
    "TIMESTAMP": "TIMESTAMP", "DATE": "DATE", "TIME": "TIME", "INTERVAL": "INTERVAL",
    "UUID": "UUID",
}
_DECIMAL_DIGITS = 38  # DuckDB's widest DECIMAL


def duckdb_type(name: str) -> tuple[str, Callable[[Any], Any] | None]:
    """Return DuckDB's name for a PostgreSQL type, and how to convert its values (or None).

    Timestamps with a time zone come back in UTC, whatever the session's TimeZone; a
    NUMERIC wider than DuckDB's DECIMAL (or of no declared precision, as ``avg`` and
    ``sum`` return) becomes a number; other types DuckDB lacks become text.
    """
    base, array = (name[:-2], True) if name.endswith("[]") else (name, False)
    kind, _, modifier = base.partition("(")
    if kind == "TIMESTAMPTZ":
        return ("TIMESTAMP WITH TIME ZONE[]", None) if array else (
            "TIMESTAMP WITH TIME ZONE", _utc)
    if kind == "NUMERIC" and not array:
        digits = modifier.rstrip(")").split(",")
        if digits[0].isdigit() and int(digits[0]) <= _DECIMAL_DIGITS:
            return f"DECIMAL({modifier}", None
        return "DOUBLE", _number
    if kind in _TYPES:
        return _TYPES[kind] + ("[]" if array else ""), None
    return "VARCHAR", _text


def _utc(value: Any) -> Any:
    return value.astimezone(UTC) if isinstance(value, datetime) else value


def _number(value: Any) -> Any:
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    return float(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)
