"""The engine's store on PostgreSQL: a writer connection with its thread, and readers.

Reads run on a small pool of autocommit connections in the engine's worker threads.
The writer's session, opened here, and the thread that commits each batch on it as one
COPY are `PgWriter`'s (`_writer`). Several engines may share a schema, each under a
worker name of its own: the writer's session holds an advisory lock on that name, and a
shared lock on the schema that the `replay` command's writing commands take
exclusively. Which engine executes which runs is `_sharing`'s business; each batch is
written only if the leases of its runs' families are still this engine's (`_leases`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg

from replay._core._history import RunHistory
from replay._core._records import Record
from replay._errors import DatabaseError
from replay._pg import _purge, _reads
from replay._pg._connect import Retry, connect, failed
from replay._pg._queries import PgReadQuery, prepare_reader_role
from replay._pg._rows import pg_row
from replay._pg._schema import current_schema, prepare_schema
from replay._pg._sharing import Sharing
from replay._pg._url import shown_url
from replay._pg._writer import PgWriter, lock_schema
from replay._store._protocol import OpenRuns, WorkerOptions
from replay._store._purge import PurgePlan
from replay._store._queries import OpenQueries
from replay._store._rows import RunRow

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]

# Reader connections kept open between reads (more are opened under load, then closed).
IDLE_READERS = 4


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
        self._options = options or WorkerOptions()
        con: Connection = connect(url)
        try:
            schema = current_schema(con, self.path)  # the lock needs one
            unlock = lock_schema(con, self._options, self.path)
            prepare_schema(con, self.path)
            self._reader_role = prepare_reader_role(con, schema)
            self._idle: list[Connection] = []
            self._idle_lock = threading.Lock()
            self._keep_idle = True  # False once closed: a read ending later disconnects
            self.sharing = Sharing(url, schema, self._options, con, self._read, self.path)
            self._writer = PgWriter(con, unlock, url, self.path, durability, self._options,
                                    self.sharing)
        except psycopg.Error as error:
            con.close()
            raise failed(self.path, error) from error
        except BaseException:
            con.close()
            raise
        self._queries = OpenQueries()

    # -- reads, each on a connection of the pool --

    def _read(self, function: Callable[..., T], *args: Any) -> T:
        """Run `function(connection, *args)` on a reader; through a server restart, again.

        Raises:
            DatabaseError: The server refused the query, or stayed away for
                `RECONNECT_SECONDS`.
        """
        retry = Retry()
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
        return RunHistory(self._read(_reads.load_memo, run_id, workflow))

    def fold_memos(self, runs: dict[str, str]) -> dict[str, RunHistory]:
        """Return several runs' memos (`runs`: run id to workflow), one query.

        Every run of `runs` has one: a run with no record gets an empty memo.
        """
        loaded = self._read(_reads.load_memos, runs)
        return {run_id: RunHistory(loaded.get(run_id, [])) for run_id in runs}

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
        self._writer.submit(rows, done, lone)

    def submit_job(self, job: Callable[[Connection], Any],
                   done: Callable[[Any, BaseException | None], None]) -> None:
        """Run `job(connection)` on the writer thread between two batches.

        `job` gets the writer's connection, outside any transaction, and makes its own.
        """
        self._writer.submit_job(job, done)

    def close(self) -> None:
        """Stop user queries and the writer (after what it was given), disconnect."""
        self._queries.close_all()
        self._writer.stop()
        with self._idle_lock:
            idle, self._idle, self._keep_idle = self._idle, [], False
        for con in idle:
            con.close()
        self._writer.close()
