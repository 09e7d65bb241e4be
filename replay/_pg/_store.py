"""The engine's store on PostgreSQL: a writer connection with its thread, and readers.

The writer thread commits each batch of records as one COPY in one transaction, so a
scheduling round costs one round trip and one WAL flush on the server, as it costs
one fsync on DuckDB. Reads run on a small pool of autocommit connections in the
engine's worker threads. Several engines may share a schema, each under a worker name
of its own: the writer's session holds an advisory lock on that name, and a shared
lock on the schema that the `replay` command's writing commands take exclusively.
Which engine executes which runs is `_sharing`'s business; each batch is written only
if the leases of its runs' families are still this engine's (`_leases`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg

from replay._core._history import RunHistory
from replay._core._records import Record
from replay._errors import DatabaseError, DatabaseLocked, LeaseLost
from replay._pg import _leases, _purge, _reads
from replay._pg._connect import connect, failed
from replay._pg._queries import PgReadQuery, prepare_reader_role
from replay._pg._rows import pg_row
from replay._pg._schema import current_schema, prepare_schema
from replay._pg._sharing import Sharing, lease_lost
from replay._pg._url import shown_url
from replay._store._protocol import OpenRuns, WorkerOptions
from replay._store._purge import PurgePlan
from replay._store._queries import OpenQueries
from replay._store._rows import RunRow
from replay._store._writer import WriterJob
from replay._store._writer_store import closed_error

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]

# Reader connections kept open between reads (more are opened under load, then closed).
IDLE_READERS = 4
# How long the engine keeps trying to reach a server that went away (a restart, a
# failover) before it stops: a commit or read waits that long, then fails.
RECONNECT_SECONDS = 60.0
# The advisory lock on the schema: shared by engines, exclusive for a writing command.
ENGINE_LOCK_KEY = "hashtext('replay-engine:' || current_schema())"
# The advisory lock on a worker name (parameter: the name), held by its engine.
_WORKER_KEY = "SELECT hashtext('replay-worker:' || current_schema() || ':' || %s)"


class PgStore:
    """One PostgreSQL schema opened by one engine.

    Args:
        url: The database's ``postgresql://`` URL; replay's tables live in the
            connection's current schema (``options=-csearch_path%3D...`` picks one).
        durability: ``"fsync"`` (a commit returns once the server flushed its WAL) or
            ``"none"`` (``synchronous_commit = off``).
        options: This engine's worker name, lease and limits.

    Raises:
        DatabaseLocked: Another engine runs under the same worker name, or a writing
            `replay` command holds the schema.
        DatabaseError: The server cannot be reached, or the schema is not a usable
            replay database.
    """

    row = staticmethod(pg_row)
    delete_runs = staticmethod(_purge.delete_runs)
    delete_generations = staticmethod(_purge.delete_generations)

    def __init__(self, url: str, durability: str,
                 options: WorkerOptions | None = None) -> None:
        self.path = shown_url(url)
        self._url = url
        self._durability = durability
        self._options = options or WorkerOptions()
        self._con: Connection = connect(url)
        try:
            schema = current_schema(self._con, self.path)  # the lock needs one
            self._unlock = self._lock_schema()
            prepare_schema(self._con, self.path)
            self._reader_role = prepare_reader_role(self._con, schema)
            self._idle: list[Connection] = []
            self._idle_lock = threading.Lock()
            self._keep_idle = True  # False once closed: a read ending later disconnects
            self.sharing = Sharing(url, schema, self._options, self._con, self._read,
                                   self.path)
            self._prepare_writer()
        except psycopg.Error as error:
            self._con.close()
            raise failed(self.path, error) from error
        except BaseException:
            self._con.close()
            raise
        self._queries = OpenQueries()
        self._queue: queue.SimpleQueue[
            tuple[list[tuple[Any, ...]], Callable[..., None], bool] | WriterJob | None]
        self._queue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    def _lock_schema(self) -> str:
        """Take the worker name's lock and the schema's shared one; return the unlock.

        Raises:
            DatabaseLocked: Either is held.
        """
        worker = self._options.worker
        found = self._con.execute(_WORKER_KEY, [worker]).fetchone()
        assert found is not None
        key = int(found[0])
        unlock = (f"SELECT pg_advisory_unlock({key}), "
                  f"pg_advisory_unlock_shared({ENGINE_LOCK_KEY})")
        locked = self._con.execute(
            f"SELECT pg_try_advisory_lock({key}), "
            f"pg_try_advisory_lock_shared({ENGINE_LOCK_KEY})").fetchone()
        if locked is not None and locked[0] and locked[1]:
            return unlock
        release_lock(self._con, unlock, close=False)
        if locked is not None and locked[1]:
            raise DatabaseLocked(
                f"another engine runs as worker {worker!r} on the PostgreSQL database "
                f"{self.path!r} (one engine per worker name at a time); close that engine "
                "first, pass lock_timeout= to wait for it, or give this one another name "
                "(open_engine(..., worker=...)) to share the work with it"
            )
        raise DatabaseLocked(
            f"a `replay` command is writing to the PostgreSQL database {self.path!r} "
            "(signal, cancel, purge or resume, which run while no engine does); wait for "
            "it to finish, or pass lock_timeout= to wait for it"
        )

    def _prepare_writer(self) -> None:
        """Make the writer's session ready for batches (after opening or reconnecting).

        A batch's transaction holds its leases' rows locked, which claims skip: a
        writer paused inside one (a frozen process) would keep its runs from every
        other engine for as long as its session lives. The server ends such a session
        after half a lease, so the runs are claimable once their leases expire, and the
        paused writer finds on waking that it lost them.
        """
        if self._durability == "none":
            self._con.execute("SET synchronous_commit = off")
        idle = max(1, int(self._options.lease * 500))
        self._con.execute(f"SET idle_in_transaction_session_timeout = {idle}")
        self._con.autocommit = False  # each batch is one transaction

    # -- reads, each on a connection of the pool --

    def _read(self, function: Callable[..., T], *args: Any) -> T:
        """Run `function(connection, *args)` on a reader; through a server restart, again.

        Raises:
            DatabaseError: The server refused the query, or stayed away for
                `RECONNECT_SECONDS`.
        """
        retry = _Retry()
        while True:
            with self._idle_lock:
                con = self._idle.pop() if self._idle else None
            try:
                con = con or connect(self._url)
            except DatabaseError as error:  # not reachable (yet)
                retry.wait_or_raise(error)
                continue
            try:
                result = function(con, *args)
            except psycopg.OperationalError as error:
                con.close()
                retry.wait_or_raise(failed(self.path, error))
                continue
            except psycopg.Error as error:
                con.close()  # an aborted session is not reused
                raise failed(self.path, error) from error
            except BaseException:
                con.close()
                raise
            self._give_back(con)
            return result

    def _give_back(self, con: Connection) -> None:
        with self._idle_lock:
            if self._keep_idle and len(self._idle) < IDLE_READERS:
                self._idle.append(con)
                return
        con.close()

    def load_open_runs(self) -> OpenRuns:
        """Return the records of the runs claimed at open, a list per run.

        They are this worker's own unfinished runs (its previous process held them)
        and free or expired families, as many as the engine has room for. Every run
        comes with its records: the claim has read them already.
        """
        opening, self.sharing.opening = self.sharing.opening, None
        return OpenRuns([] if opening is None else opening.records, [])

    def run_row(self, run_id: str) -> RunRow | None:
        """Return one run's state, or None if there is no such run."""
        return self._read(_reads.run_row, run_id, self.path)

    def last_seq_and_time(self) -> tuple[int, datetime | None]:
        """Return the `seq` this engine's first block starts after, and the newest time.

        Every record of a run claimed at open is at or below it.
        """
        return self.sharing.first_block, self._read(_reads.last_seq_and_time)[1]

    def generations(self) -> dict[str, int]:
        """Return the current generation of every run that has continued as new."""
        return self._read(_reads.generations)

    def workflow_of(self, run_id: str) -> str | None:
        """Return the workflow of run `run_id`, or None if there is no such run."""
        return self._read(_reads.workflow_of, run_id)

    def existing(self, run_ids: Sequence[str]) -> set[str]:
        """Return which of `run_ids` have a run."""
        return self._read(_reads.existing, run_ids) if run_ids else set()

    def list_runs(self, state: str | None, workflow: str | None, limit: int) -> list[RunRow]:
        """Return runs newest first (by creation), filtered by state and workflow."""
        return self._read(_reads.list_runs, state, workflow, limit, self.path)

    def load_history(self, run_id: str) -> list[Record]:
        """Return every record of one run in `seq` order.

        Raises:
            DatabaseError: The run's rows are damaged.
        """
        return self._read(_reads.load_history, run_id, self.path)

    def memo_at_hand(self, run_id: str, workflow: str, most: int) -> RunHistory | None:
        """Return None: this store keeps no rows in memory, so every memo is read."""
        return None

    def fold_memo(self, run_id: str, workflow: str) -> RunHistory:
        """Return one run's memo, folded from its records (one query)."""
        return RunHistory(self.load_memo(run_id, workflow))

    def fold_memos(self, runs: dict[str, str]) -> dict[str, RunHistory]:
        """Return several runs' memos (`runs`: run id to workflow), one query."""
        loaded = self.load_memos(runs)
        return {run_id: RunHistory(loaded.get(run_id, [])) for run_id in runs}

    def load_memo(self, run_id: str, workflow: str) -> list[Record]:
        """Return one run's records as the memo needs them."""
        return self._read(_reads.load_memo, run_id, workflow)

    def load_memos(self, runs: dict[str, str]) -> dict[str, list[Record]]:
        """Return several runs' memo records (`runs`: run id to workflow), one query."""
        if len(runs) == 1:
            (run_id, workflow), = runs.items()
            return {run_id: self.load_memo(run_id, workflow)}
        return self._read(_reads.load_memos, runs)

    def purge_plan(self, cutoff: datetime, states: Sequence[str],
                   workflow: str | None) -> PurgePlan:
        """Return what a purge would delete now (see `replay._pg._purge`)."""
        return self._read(_purge.plan, cutoff, states, workflow)

    def write_archive(self, path: str, planned: PurgePlan) -> int:
        """Write the records `planned` deletes to a new Parquet file; return how many.

        Raises:
            OSError: The file cannot be written.
        """
        return self._read(_purge.write_archive, path, planned)

    def read_query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None,
                   limit: float | None = None) -> PgReadQuery:
        """Return one user query on a connection of its own, not started yet.

        Raises:
            EngineClosed: The store is closing.
        """
        return PgReadQuery(self._url, sql, params, reader_role=self._reader_role,
                           limit=limit, opened=self._queries)

    # -- the writer thread --

    def start_writer(self) -> None:
        """Start the thread that commits batches handed to `submit`."""
        self._writer = threading.Thread(target=self._write_loop, name="replay-pg-writer",
                                        daemon=True)
        self._writer.start()

    def commit_now(self, rows: list[tuple[Any, ...]], wait: bool = False) -> bool:
        """Return False: engines sharing a database commit on the writer thread only."""
        return False

    def submit(self, rows: list[tuple[Any, ...]],
               done: Callable[[BaseException | None], None], lone: bool = False) -> None:
        """Commit `rows` in one transaction on the writer thread, then call `done`.

        `done` runs on the writer thread with None, or with the error that made the
        commit fail (in which case nothing of the batch was written). `lone` changes
        nothing here: every batch is one `COPY`.
        """
        self._queue.put((rows, done, lone))

    def submit_job(self, job: Callable[[Connection], Any],
                   done: Callable[[Any, BaseException | None], None]) -> None:
        """Run `job(connection)` on the writer thread between two batches.

        `job` gets the writer's connection, outside any transaction, and makes its own.
        """
        self._queue.put(WriterJob(job, done))

    def _write_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, WriterJob):
                self._run_job(item)
                continue
            rows, done, _lone = item
            done(self._commit(rows))

    def _commit(self, rows: list[tuple[Any, ...]]) -> BaseException | None:
        """Commit `rows` in one transaction; return None, or why nothing was written."""
        try:
            self._copy(rows)
            return None
        except psycopg.Error as error:
            if isinstance(error, psycopg.OperationalError) or self._con.broken:
                # The server went away, or ended the session (a writer paused in a
                # transaction past `idle_in_transaction_session_timeout`).
                return self._commit_again(rows, error)
            with contextlib.suppress(psycopg.Error):
                self._con.rollback()
            return failed(self.path, error)
        except BaseException as error:  # reported to the engine, which stops
            with contextlib.suppress(psycopg.Error):
                self._con.rollback()
            return failed(self.path, error) if isinstance(error, psycopg.Error) else error

    def _copy(self, rows: list[tuple[Any, ...]]) -> None:
        """Commit `rows` if this engine still holds their families' leases.

        Raises:
            LeaseLost: Another engine took one of them over; nothing was written.
        """
        batch = self.sharing.plan(self._con, rows)
        worker, lease = self._options.worker, self._options.lease
        if not _leases.write_fenced(self._con, batch, rows, worker, lease):
            self._con.rollback()
            raise lease_lost(self._options, self.path)
        self._con.commit()
        self.sharing.committed(batch)

    def _commit_again(self, rows: list[tuple[Any, ...]],
                      error: psycopg.Error) -> BaseException | None:
        """Reconnect, take the schema's lock again, and commit the batch unless it was.

        A connection cut during COMMIT leaves it unknown whether the batch was written;
        `seq` is the event table's primary key, so the rows themselves say.
        """
        retry = _Retry()
        seqs = [row[0] for row in rows]
        while True:
            try:
                self._reconnect()
                found = self._con.execute("SELECT count(*) FROM replay_event_log "
                                          "WHERE seq = ANY(%s)", [seqs]).fetchone()
                self._con.rollback()
                if found and found[0] == len(rows):
                    return None  # it was committed before the cut
                self._copy(rows)
                return None
            except (DatabaseLocked, LeaseLost) as lost:  # another engine took over meanwhile
                return lost
            except (psycopg.OperationalError, DatabaseError) as again:
                try:
                    retry.wait_or_raise(again)
                except BaseException:
                    return failed(self.path, error)
            except psycopg.Error as refused:
                with contextlib.suppress(psycopg.Error):
                    self._con.rollback()
                return failed(self.path, refused)

    def _reconnect(self) -> None:
        """Replace the writer's connection, holding the schema's lock again.

        Raises:
            DatabaseLocked: Another engine holds the schema now.
            DatabaseError: The server cannot be reached.
        """
        with contextlib.suppress(psycopg.Error):
            self._con.close()
        self._con = connect(self._url)
        self._lock_schema()
        self._prepare_writer()

    def _run_job(self, job: WriterJob) -> None:
        try:
            if self._con.broken or self._con.closed:
                self._reconnect()
            result = job.run(self._con)
        except BaseException as error:  # the job's caller decides
            with contextlib.suppress(psycopg.Error):
                self._con.rollback()
            job.done(None, failed(self.path, error) if isinstance(error, psycopg.Error)
                     else error)
        else:
            job.done(result, None)

    def close(self) -> None:
        """Stop user queries and the writer (after what it was given), disconnect."""
        self._queries.close_all(closed_error)
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
        with self._idle_lock:
            idle, self._idle, self._keep_idle = self._idle, [], False
        for con in idle:
            con.close()
        self.sharing.close(self._con)
        release_lock(self._con, self._unlock)


def release_lock(con: Connection, unlock: str, close: bool = True) -> None:
    """Let go of a session's advisory locks, then disconnect (unless not to `close`).

    Unlocked explicitly: the server ends a closed session a moment after the client
    has moved on, and an engine opening the schema at once would find it still held.
    """
    with contextlib.suppress(psycopg.Error):
        con.rollback()  # a failed transaction would refuse the unlock
        con.autocommit = True
        con.execute(unlock)
    if close:
        con.close()


class _Retry:
    """Waits between attempts to reach a server that went away, up to a deadline."""

    def __init__(self) -> None:
        self._deadline = time.monotonic() + RECONNECT_SECONDS
        self._delay = 0.05

    def wait_or_raise(self, error: BaseException) -> None:
        """Sleep before the next attempt, or raise `error` once the deadline passed."""
        if time.monotonic() + self._delay > self._deadline:
            raise error
        time.sleep(self._delay)
        self._delay = min(self._delay * 2, 1.0)
