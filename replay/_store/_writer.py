"""The store's writer: it commits batches of records, and the hot log's settling.

Group commit on a thread of its own (`submit`: batches queue up while one commits), or
on the caller's thread when that thread is idle (`commit_now`: a lone run's batch with
no hop to the thread and back); writing jobs (a purge's deletes) between two batches;
the hot log and its settling. One lock, the connection's, is held by whichever thread
writes; the store's reads run on cursors of their own and never take it.

DuckDB's cost is per statement and per column written (measured, see
docs/performance.md), so the hot path writes each batch of records as one Appender
flush, which in autocommit mode is one transaction and one fsync of the WAL: a small
batch as narrow rows of the hot log (`_hot`), settled into the event table between
batches, a big one straight into the event table. Every commit notes its rows in the
store's `RecentRows` before it is acknowledged, and every settling tells it after (see
`_recent` for why readers on other threads may rely on that).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeAlias

import duckdb

from replay._store._connect import private_wal
from replay._store._hot import hot_from_row, settle
from replay._store._recent import RecentRows

# A batch handed to the writer thread: its rows, who to tell, and whether a lone run's.
_Batch: TypeAlias = tuple[list[tuple[Any, ...]], Callable[..., None], bool]

# A batch of at most this many records is written to the hot log (see `_hot`).
HOT_BATCH_ROWS = 32
# The same for a lone run's batch. Bigger ones go to the table: settling a thousand
# hot rows later costs more than their narrow commit saves (measured).
LONE_HOT_BATCH_ROWS = 256
# When the writer settles the hot log: after this many rows, or when it has been idle
# this long (a lone sequential run, which never idles, settles every 2,000 steps).
SETTLE_ROWS = 2000
SETTLE_IDLE_SECONDS = 0.5


class Writer:
    """The writing side of one open database file: its commits, jobs and settling.

    Args:
        con: The store's connection, on which every write is made.
        path: The database file, or ``":memory:"``.
        recent: The store's rows of the hot log, noted at each commit and settling.

    Raises:
        duckdb.Error: The file's tables cannot be written to.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, path: str, recent: RecentRows) -> None:
        self.path = path
        self._con = con
        self._appender = con.appender("replay_event_log")
        self._hot_appender = con.appender("replay_event_hot")
        # A lone record (a sequential run's step) commits cheapest as an INSERT
        # parsed once: about 0.15 ms less per commit than an Appender's flush.
        self._hot_insert = con.extract_statements(
            "INSERT INTO replay_event_hot VALUES ($1, $2, $3)")[0]
        self._queue: queue.SimpleQueue[
            _Batch | WriterJob | None]
        self._queue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Held by whichever thread uses the writing connection: the writer thread, or
        # the engine's thread committing a batch itself (`commit_now`).
        self._con_lock = threading.Lock()
        self._recent = recent
        self._last_commit = 0.0  # time.monotonic() of the last commit
        self._settle_asked = False  # `commit_now` queued a job to settle the hot log

    def start(self) -> None:
        """Start the thread that commits batches handed to `submit`."""
        self._thread = threading.Thread(target=self._write_loop, name="replay-writer",
                                        daemon=True)
        self._thread.start()

    def submit(
        self, rows: list[tuple[Any, ...]], done: Callable[[BaseException | None], None],
        lone: bool = False,
    ) -> None:
        """Commit `rows` in one transaction on the writer thread, then call `done`.

        `done` runs on the writer thread with None, or with the error that made the
        commit fail (in which case nothing of the batch was written). `lone`: the
        batch is a lone run's, so the loop has nothing else to do and the batch goes to
        the hot log whatever its size (see `_commit_rows`).
        """
        self._queue.put((rows, done, lone))

    def submit_job(self, job: Callable[[duckdb.DuckDBPyConnection], Any],
                   done: Callable[[Any, BaseException | None], None]) -> None:
        """Run `job` on the writer thread between two batches, then call `done`.

        For work that writes other than appending records (a purge's deletes): `job`
        gets a cursor of its own and makes its own transaction. `done` runs on the
        writer thread with the job's result and None, or None and the error it raised;
        a failed job does not stop the writer.
        """
        self._queue.put(WriterJob(job, done))

    def commit_now(self, rows: list[tuple[Any, ...]], wait: bool = False) -> bool:
        """Commit `rows` in one transaction on the calling thread, if the writer is idle.

        Returns False, having done nothing, when the writer thread is busy (a batch, a
        job, settling): hand the rows to `submit` then. `wait`: wait for the writer
        instead (from a thread that may block, not the loop's); then it returns True.

        Raises:
            duckdb.Error: The commit failed (nothing of it was written).
        """
        if not self._con_lock.acquire(blocking=wait):
            return False
        try:
            self._commit_rows(rows, True)
        finally:
            self._con_lock.release()
        if self._recent.count >= SETTLE_ROWS and not self._settle_asked:
            # A job settles first (see `_run_job`): on the writer thread, as it takes a while.
            self._settle_asked = True
            self._queue.put(WriterJob(_nothing, _ignore))
        return True

    def _write_loop(self) -> None:
        while (item := self._next_item()) is not None:
            if isinstance(item, WriterJob):
                with self._con_lock:
                    self._run_job(item)
                continue
            rows, done, lone = item
            with self._con_lock:
                try:
                    self._commit_rows(rows, lone)
                except BaseException as error:  # reported to the engine, which stops
                    failure: BaseException | None = error
                else:
                    failure = None
            # The lock is free before the engine hears: its next batch may be committed
            # on its own thread at once (`commit_now`).
            done(failure)
            if self._recent.count >= SETTLE_ROWS:
                with self._con_lock:
                    self._settle()

    def _commit_rows(self, rows: list[tuple[Any, ...]], lone: bool) -> None:
        """Commit `rows` in one transaction (the caller holds the connection's lock).

        A small batch goes to the hot log, and so does a lone run's batch of up to
        `LONE_HOT_BATCH_ROWS`: narrow rows commit faster (102 records: about 2.4 against
        3.7 ms), and their JSON costs the loop nothing when no other run waits for it.
        """
        hot = len(rows) <= (LONE_HOT_BATCH_ROWS if lone else HOT_BATCH_ROWS)
        appender = self._hot_appender if hot else self._appender
        try:
            private_wal(self.path)  # a checkpoint may have deleted it
            if len(rows) == 1:
                self._con.execute(self._hot_insert, hot_from_row(rows[0]))
            else:
                appender.append_rows([hot_from_row(row) for row in rows] if hot else rows)
                appender.flush()
        except BaseException:
            appender.clear()
            raise
        self._recent.committed(rows, hot)
        self._last_commit = time.monotonic()

    def _next_item(self) -> _Batch | WriterJob | None:
        """Return the next batch or job; settle the hot log when idle a moment.

        The writer wakes every `SETTLE_IDLE_SECONDS` when idle, since rows committed
        on the engine's thread (`commit_now`) reach the hot log without passing here.
        """
        while True:
            try:
                return self._queue.get(timeout=SETTLE_IDLE_SECONDS)
            except queue.Empty:
                idle = time.monotonic() - self._last_commit >= SETTLE_IDLE_SECONDS
                if self._recent.count and idle:
                    with self._con_lock:
                        self._settle()

    def _settle(self) -> None:
        """Settle the hot log; a failure leaves the rows there (still read, still safe)."""
        try:
            private_wal(self.path)
            cursor = self._con.cursor()
            try:
                settle(cursor)
            finally:
                cursor.close()
        except duckdb.Error:
            return  # tried again after the next batch; readers see the hot rows meanwhile
        self._recent.settled()

    def _run_job(self, job: WriterJob) -> None:
        self._settle_asked = False
        try:
            self._settle()  # jobs (purges) work on the table alone
            private_wal(self.path)
            cursor = self._con.cursor()
            try:
                result = job.run(cursor)
            finally:
                cursor.close()
        except BaseException as error:  # the job's caller decides
            job.done(None, error)
        else:
            job.done(result, None)

    def close(self) -> None:
        """Stop the writer thread (after what it was given), then settle the hot log.

        The connection stays open: it is the store's to close. A failed settling leaves
        the hot rows in the file, where the next open settles them.
        """
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        with contextlib.suppress(duckdb.Error):  # else the next open settles them
            private_wal(self.path)
            settle(self._con)


def _nothing(con: duckdb.DuckDBPyConnection) -> None:
    """A writer job that does nothing (it settles the hot log, as every job does first)."""


def _ignore(result: Any, error: BaseException | None) -> None:
    """Where the outcome of a writer job nobody waits for goes."""


class WriterJob:
    """Work for a writer thread other than a batch of records (see `Store.submit_job`)."""

    __slots__ = ("done", "run")

    def __init__(self, run: Callable[[Any], Any],
                 done: Callable[[Any, BaseException | None], None]) -> None:
        self.run = run
        self.done = done
