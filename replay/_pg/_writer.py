"""The PostgreSQL store's writer: its session, that session's locks, and its thread.

The writer thread commits each batch of records as one COPY in one transaction, so a
scheduling round costs one round trip and one WAL flush on the server, as it costs
one fsync on DuckDB. The writer's session holds an advisory lock on the engine's
worker name, and a shared lock on the schema that the `replay` command's writing
commands take exclusively; each batch is written only if the leases of its runs'
families are still this engine's (`_leases`).

It lives apart from `PgStore` (`_store`), which opens the session and hands it over,
because from then on the session is the thread's alone: the thread commits batches
and runs jobs on it, and when the server goes away (a restart, a failover) it replaces
the session, takes its locks again and finds out whether the batch that was cut off
was written. The store's reads never touch it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from replay._errors import DatabaseError, DatabaseLocked, LeaseLost
from replay._pg import _leases
from replay._pg._connect import Retry, connect, failed
from replay._pg._sharing import Sharing, lease_lost
from replay._store._protocol import WorkerOptions
from replay._store._writer import WriterJob

Connection = psycopg.Connection[tuple[Any, ...]]

# The advisory lock on the schema: shared by engines, exclusive for a writing command.
ENGINE_LOCK_KEY = "hashtext('replay-engine:' || current_schema())"
# The advisory lock on a worker name (parameter: the name), held by its engine.
_WORKER_KEY = "SELECT hashtext('replay-worker:' || current_schema() || ':' || %s)"


class PgWriter:
    """The writer's session of one `PgStore`, and the thread that commits on it.

    Args:
        con: The session, its locks taken (`lock_schema`), outside any transaction.
        unlock: The statement that lets go of those locks (`lock_schema`'s result).
        url: The database's URL, to reconnect.
        shown: The database as messages show it.
        durability: ``"fsync"`` or ``"none"`` (see `PgStore`).
        options: This engine's worker name, lease and limits.
        sharing: This engine's leases, which fence every batch.

    Raises:
        psycopg.Error: The session cannot be made ready for batches.
    """

    def __init__(self, con: Connection, unlock: str, url: str, shown: str, durability: str,
                 options: WorkerOptions, sharing: Sharing) -> None:
        self.path = shown
        self._con = con
        self._unlock = unlock
        self._url = url
        self._durability = durability
        self._options = options
        self._sharing = sharing
        self._prepare_writer()
        self._queue: queue.SimpleQueue[
            tuple[list[tuple[Any, ...]], Callable[..., None], bool] | WriterJob | None]
        self._queue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

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

    def start(self) -> None:
        """Start the thread that commits what `submit` and `submit_job` hand it."""
        self._thread = threading.Thread(target=self._write_loop, name="replay-pg-writer",
                                        daemon=True)
        self._thread.start()

    def submit(self, rows: list[tuple[Any, ...]],
               done: Callable[[BaseException | None], None], lone: bool) -> None:
        """Queue a batch for the thread (see `PgStore.submit`)."""
        self._queue.put((rows, done, lone))

    def submit_job(self, job: Callable[[Connection], Any],
                   done: Callable[[Any, BaseException | None], None]) -> None:
        """Queue a job for the thread, between two batches (see `PgStore.submit_job`)."""
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
        batch = self._sharing.plan(self._con, rows)
        worker, lease = self._options.worker, self._options.lease
        if not _leases.write_fenced(self._con, batch, rows, worker, lease):
            self._con.rollback()
            raise lease_lost(self._options, self.path)
        self._con.commit()
        self._sharing.committed(batch)

    def _commit_again(self, rows: list[tuple[Any, ...]],
                      error: psycopg.Error) -> BaseException | None:
        """Reconnect, take the schema's lock again, and commit the batch unless it was.

        A connection cut during COMMIT leaves it unknown whether the batch was written;
        `seq` is the event table's primary key, so the rows themselves say.
        """
        retry = Retry()
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
        lock_schema(self._con, self._options, self.path)
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

    def stop(self) -> None:
        """Stop the thread, if it started, once it committed what it was given."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()

    def close(self) -> None:
        """Free this engine's leases and the session's locks, then disconnect."""
        self._sharing.close(self._con)
        release_lock(self._con, self._unlock)


def lock_schema(con: Connection, options: WorkerOptions, shown: str) -> str:
    """Take the worker name's lock and the schema's shared one; return the unlock.

    Raises:
        DatabaseLocked: Either is held.
    """
    worker = options.worker
    found = con.execute(_WORKER_KEY, [worker]).fetchone()
    assert found is not None
    key = int(found[0])
    unlock = (f"SELECT pg_advisory_unlock({key}), "
              f"pg_advisory_unlock_shared({ENGINE_LOCK_KEY})")
    locked = con.execute(
        f"SELECT pg_try_advisory_lock({key}), "
        f"pg_try_advisory_lock_shared({ENGINE_LOCK_KEY})").fetchone()
    if locked is not None and locked[0] and locked[1]:
        return unlock
    release_lock(con, unlock, close=False)
    if locked is not None and locked[1]:
        raise DatabaseLocked(
            f"another engine runs as worker {worker!r} on the PostgreSQL database "
            f"{shown!r} (one engine per worker name at a time); close that engine "
            "first, pass lock_timeout= to wait for it, or give this one another name "
            "(open_engine(..., worker=...)) to share the work with it"
        )
    raise DatabaseLocked(
        f"a `replay` command is writing to the PostgreSQL database {shown!r} "
        "(signal, cancel, purge or resume, which run while no engine does); wait for "
        "it to finish, or pass lock_timeout= to wait for it"
    )


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
