"""The engine's store: one connection, its writer, history loading.

Reads run on their own cursors in worker threads: a DuckDB connection is
single-threaded. Writes go through the store's `Writer` (`_writer`): batches of records
committed on its thread or, when it is idle, on the caller's, and the hot log's
settling. User queries are `ReadQuery` objects, which `close` stops before it closes
the file, so that no query can hold a shutdown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import duckdb

from replay._core._history import RunHistory
from replay._core._records import Record
from replay._store._connect import connect, damaged, private_wal, unusable
from replay._store._hot import settle
from replay._store._memo_reads import MemoReads
from replay._store._protocol import OpenRuns
from replay._store._purge import PurgePlan, delete_generations, delete_runs, plan, write_archive
from replay._store._queries import OpenQueries, ReadQuery
from replay._store._recent import (
    RecentRows,
    by_recency,
    history_rows,
    stamp,
    state_rows,
)
from replay._store._rows import (
    RunRow,
    fold_summary,
    history_records,
    open_record,
    record_row,
    run_row,
    utc_or_none,
)
from replay._store._schema import (
    OPEN_RUN_ROWS,
    OPEN_STATES,
    RUN_SUMMARY,
    RUN_WORKFLOW,
    check_schema,
)
from replay._store._writer import Writer

T = TypeVar("T")


_RUN_WORKFLOW = by_recency(RUN_WORKFLOW)


class Store:
    """One open database file: a writer connection and reader cursors.

    Args:
        path: The database file, or ``":memory:"``.
        durability: ``"fsync"`` (commit fsyncs the WAL) or ``"none"``.

    Raises:
        DatabaseLocked: Another process holds the file.
        DatabaseError: The file is not a usable replay database.
    """

    row = staticmethod(record_row)
    delete_runs = staticmethod(delete_runs)
    delete_generations = staticmethod(delete_generations)
    sharing = None  # one process writes a DuckDB file: nothing to share

    def __init__(self, path: str, durability: str) -> None:
        self.path = path
        self._con = connect(path)
        try:
            fsync_mode = "NONE" if durability == "none" else "STANDARD"
            self._con.execute(f"SET fsync_mode = '{fsync_mode}'")
            private_wal(path)
            check_schema(self._con, path)
            settle(self._con)  # what a crash left in the hot log
            newest = self._con.execute("SELECT max(seq) FROM replay_event_log").fetchall()
            # The rows committed to the hot log since it was last settled, by run.
            self._recent = RecentRows(newest[0][0] or 0)
            self._writer = Writer(self._con, path, self._recent)
        except duckdb.Error as error:
            self._con.close()
            raise unusable(path, error) from error
        except BaseException:
            self._con.close()
            raise
        self._queries = OpenQueries()
        self._memos = MemoReads(self._recent, self._read)

    # -- reads (each on its own cursor: a DuckDB connection is single-threaded) --

    def load_open_runs(self) -> OpenRuns:
        """Return every unfinished run: the records of most, the state of quiet ones.

        The state of every unfinished run first (see `OPEN_STATES`); then the records
        of those that are not quiet, if any: usually a fraction of them, as a quiet
        run's state is a fraction of its records. Rows are not checked: a run damaged
        by hand has its records read, and is the caller's to fail.
        """
        states = self._read(OPEN_STATES, [])
        parked = [row for row in states if row[-1]]
        active = [row[0] for row in states if not row[-1]]
        runs: dict[str, list[Record]] = {}
        if active:
            for row in self._read(OPEN_RUN_ROWS, [active]):
                runs.setdefault(row[1], []).append(open_record(row))
        return OpenRuns(list(runs.values()), parked)

    def run_row(self, run_id: str) -> RunRow | None:
        """Return one run's state (one read of its rows), or None if there is no such run.

        Its rows are kept for the run's memo right after, with nothing
        committed in between (a resume): that load then reads nothing.
        """
        upto = self._recent.last_seq
        rows = state_rows(self._recent, self._read, run_id)
        summary = fold_summary(run_id, rows)
        if summary is None:
            self._memos.forget_ahead()
            return None
        self._memos.keep_ahead(run_id, upto, rows)
        return run_row(summary, self.path)

    def last_seq_and_time(self) -> tuple[int, datetime | None]:
        """Return the largest `seq` and `recorded_at` in the file."""
        seq, at = self._read("SELECT max(seq), max(recorded_at) FROM replay_event_all", [])[0]
        return int(seq or 0), utc_or_none(at)

    def generations(self) -> dict[str, int]:
        """Return the current generation of every run that has continued as new."""
        rows = self._read("SELECT run_id, max(generation) FROM replay_event_all "
                          "WHERE generation > 0 GROUP BY run_id", [])
        return {run_id: int(generation) for run_id, generation in rows}

    def workflow_of(self, run_id: str) -> str | None:
        """Return the workflow of run `run_id`, or None if there is no such run."""
        rows = self._read(_RUN_WORKFLOW[self._recent.has(run_id)], [run_id])
        return rows[0][0] if rows else None

    def existing(self, run_ids: Sequence[str]) -> set[str]:
        """Return which of `run_ids` have a run in the file (one read, by the index)."""
        if not run_ids:
            return set()
        rows = self._read("SELECT DISTINCT run_id FROM replay_event_all "
                          "WHERE run_id IN (SELECT unnest($1::VARCHAR[])) "
                          "AND kind = 'run' AND event = 'started'", [list(run_ids)])
        return {row[0] for row in rows}

    def list_runs(self, state: str | None, workflow: str | None, limit: int) -> list[RunRow]:
        """Return runs newest first (by creation), filtered by state and workflow."""
        rows = self._read(
            f"SELECT * FROM ({RUN_SUMMARY}) WHERE ($1 IS NULL OR run_state = $1) "
            "AND ($2 IS NULL OR workflow = $2) ORDER BY recorded_at DESC, seq DESC "
            "LIMIT $3",
            [state, workflow, limit])
        return [run_row(row, self.path) for row in rows]

    def load_history(self, run_id: str) -> list[Record]:
        """Return every record of one run in `seq` order (one query).

        Raises:
            DatabaseError: The run's rows are damaged.
        """
        return history_records(history_rows(self._recent, self._read, run_id), self.path,
                               stamp)

    def memo_at_hand(self, run_id: str, workflow: str, most: int) -> RunHistory | None:
        """Return one run's memo if its rows need no read and are at most `most`, else None.

        They need none when the run is whole in the hot log's rows (see `RecentRows`),
        or when `run_row` just read its rows and nothing was committed since.
        """
        return self._memos.at_hand(run_id, workflow, most)

    def fold_memo(self, run_id: str, workflow: str) -> RunHistory:
        """Return one run's memo, folded from its rows where they are read (one query)."""
        return self._memos.fold(run_id, workflow)

    def fold_memos(self, runs: dict[str, str]) -> dict[str, RunHistory]:
        """Return several runs' memos (`runs`: run id to workflow), one query."""
        return self._memos.fold_many(runs)

    def purge_plan(self, cutoff: datetime, states: Sequence[str],
                   workflow: str | None) -> PurgePlan:
        """Return what a purge would delete now (see `replay._store._purge`).

        Raises:
            DatabaseError: The file cannot be read.
        """
        return self._on_cursor(plan, cutoff, states, workflow)

    def write_archive(self, path: str, planned: PurgePlan) -> int:
        """Write the records `planned` deletes to a new Parquet file; return how many.

        Raises:
            OSError: The file cannot be written.
        """
        return self._on_cursor(write_archive, path, planned)

    def _on_cursor(self, function: Callable[..., T], *args: Any) -> T:
        cursor = self._con.cursor()
        try:
            return function(cursor, *args)
        except duckdb.Error as error:
            raise damaged(self.path, error) from error
        finally:
            cursor.close()

    def read_query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None,
                   limit: float | None = None) -> ReadQuery:
        """Return one user query on its own cursor, not started yet (see `ReadQuery`).

        `limit` is not used: the engine stops a DuckDB query by interrupting it.

        Raises:
            EngineClosed: The store is closing.
        """
        return ReadQuery(self._con, sql, params, opened=self._queries)

    def _read(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        try:
            cursor = self._con.cursor()
            try:
                return cursor.execute(sql, params).fetchall()
            finally:
                cursor.close()
        except duckdb.Error as error:
            raise damaged(self.path, error) from error

    # -- writing (see `Writer`: this store's commits, jobs and settling) --

    def start_writer(self) -> None:
        """Start the thread that commits batches handed to `submit`."""
        self._writer.start()

    def submit(
        self, rows: list[tuple[Any, ...]], done: Callable[[BaseException | None], None],
        lone: bool = False,
    ) -> None:
        """Commit `rows` in one transaction on the writer thread, then call `done`.

        `done` runs on the writer thread with None, or with the error that made the
        commit fail (in which case nothing of the batch was written). `lone`: the
        batch is a lone run's, so the loop has nothing else to do and the batch goes to
        the hot log whatever its size (see `Writer._commit_rows`).
        """
        self._writer.submit(rows, done, lone)

    def submit_job(self, job: Callable[[duckdb.DuckDBPyConnection], Any],
                   done: Callable[[Any, BaseException | None], None]) -> None:
        """Run `job` on the writer thread between two batches, then call `done`.

        For work that writes other than appending records (a purge's deletes): `job`
        gets a cursor of its own and makes its own transaction. `done` runs on the
        writer thread with the job's result and None, or None and the error it raised;
        a failed job does not stop the writer.
        """
        self._writer.submit_job(job, done)

    def commit_now(self, rows: list[tuple[Any, ...]], wait: bool = False) -> bool:
        """Commit `rows` in one transaction on the calling thread, if the writer is idle.

        Returns False, having done nothing, when the writer thread is busy (a batch, a
        job, settling): hand the rows to `submit` then. `wait`: wait for the writer
        instead (from a thread that may block, not the loop's); then it returns True.

        Raises:
            duckdb.Error: The commit failed (nothing of it was written).
        """
        return self._writer.commit_now(rows, wait)

    def close(self) -> None:
        """Stop user queries and the writer (after what it was given), close the file."""
        self._queries.close_all()
        self._writer.close()
        self._con.close()

