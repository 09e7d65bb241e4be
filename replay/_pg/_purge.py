"""Retention on PostgreSQL: which records a purge deletes, the deletes, and the archive.

The same rules and the same results as the DuckDB store's `replay._store._purge` (read
its docstring for what goes and what stays), in PostgreSQL's dialect: the newest
state-carrying record of a run is found with DISTINCT ON instead of `arg_max`, and run
ids are ordered with the "C" collation, byte by byte as DuckDB orders them, so both
stores plan the same trees in the same order. Lists that may be long (every run a
purge deletes) are joined with ``unnest(...)``, and exclusions are written as NOT
EXISTS: PostgreSQL turns those into hash joins, where ``= ANY(array)`` may compare
each row with every element and a ``NOT IN`` subquery bigger than ``work_mem`` is
read again for every row.

Every delete checks again, in its own WHERE, that what it deletes is still deletable,
so a plan read earlier on another connection is only a list of candidates. PostgreSQL
cannot write Parquet: the archive's rows are fetched with a server-side cursor and
written by a private in-memory DuckDB database, with the columns and types of the
DuckDB store's archive, so an archive reads the same whichever store wrote it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import pq

from replay._store._purge import (
    FINISHED,
    GenerationRows,
    PurgePlan,
    by_run,
    check_archive_path,
    generation_rows,
    write_parquet,
)

__all__ = ["FINISHED", "GenerationRows", "PurgePlan", "check_archive_path", "delete_generations",
           "delete_runs", "plan", "write_archive"]

Connection = psycopg.Connection[Any]

# Every run: its workflow, parent, state and when it reached that state (its end, once
# finished). A run with no `run/started` is no run.
_RUNS = """
    latest AS (
        SELECT DISTINCT ON (run_id) run_id, run_state AS state, recorded_at AS ended_at
        FROM replay_event_all WHERE run_state IS NOT NULL ORDER BY run_id, seq DESC
    ), runs AS (
        SELECT s.run_id, s.workflow, s.name AS parent, l.state, l.ended_at
        FROM replay_event_all s JOIN latest l USING (run_id)
        WHERE s.kind = 'run' AND s.event = 'started'
    )"""

# Finished runs old enough, each with every run under it. A tree with an unfinished
# run in it is left out whole: a window over each tree says so, as PostgreSQL
# misjudges the size of a recursive query by orders of magnitude and would plan a join
# against it (the DuckDB query's NOT IN) as if it held billions of rows. Run ids sort as
# bytes ("C"), as DuckDB sorts them.
_TREES = f"""
    WITH RECURSIVE {_RUNS}, roots AS (
        SELECT run_id, state, ended_at FROM runs
        WHERE (parent IS NULL
               OR NOT EXISTS (SELECT 1 FROM runs p WHERE p.run_id = runs.parent))
          AND state = ANY(%(states)s::text[]) AND ended_at < %(cutoff)s
          AND (%(workflow)s::text IS NULL OR workflow = %(workflow)s::text)
    ), tree(root, ended_at, run_id, state) AS (
        SELECT run_id, ended_at, run_id, state FROM roots
        UNION
        SELECT t.root, t.ended_at, r.run_id, r.state
        FROM tree t JOIN runs r ON r.parent = t.run_id
    ), judged AS (
        SELECT root, ended_at, run_id,
               bool_and(state IN {FINISHED}) OVER (PARTITION BY root) AS whole
        FROM tree
    )
    SELECT root, run_id FROM judged WHERE whole
    ORDER BY ended_at, root COLLATE "C", run_id <> root, run_id COLLATE "C"
"""

# Deletes the runs of a batch whose tree is still deletable: every member still
# finished, the root still in one of the states and ended before the cutoff, and no
# child run started since the plan.
_DELETE_RUNS = f"""
    DELETE FROM replay_event_log WHERE run_id IN (
        WITH batch AS (
            SELECT * FROM unnest(%(roots)s::text[], %(members)s::text[]) AS b(root, run_id)
        ), latest AS (
            SELECT DISTINCT ON (run_id) run_id, run_state AS state, recorded_at AS ended_at
            FROM replay_event_all
            WHERE run_state IS NOT NULL AND run_id IN (SELECT run_id FROM batch)
            ORDER BY run_id, seq DESC
        ), spoiled AS (
            SELECT b.root FROM batch b LEFT JOIN latest l USING (run_id)
            WHERE l.state IS NULL OR l.state NOT IN {FINISHED}
               OR (b.run_id = b.root AND (l.ended_at >= %(cutoff)s
                   OR l.state <> ALL(%(states)s::text[])))
            UNION ALL
            SELECT b.root FROM replay_event_all c JOIN batch b ON c.name = b.run_id
            WHERE c.kind = 'run' AND c.event = 'started'
              AND c.run_id NOT IN (SELECT run_id FROM batch)
        )
        SELECT run_id FROM batch WHERE root NOT IN (SELECT root FROM spoiled)
    ) RETURNING run_id
"""


# The cutoff's placeholder in the query of earlier generations' deletable records,
# which the DuckDB store's module writes for both (`generation_rows`).
CUTOFF = "%(cutoff)s"

# The records of the planned runs (each run once in the list, so a join counts right).
_PLANNED_EVENTS = ("SELECT count(*) FROM replay_event_all "
                   "JOIN unnest(%s::text[]) AS planned(run_id) USING (run_id)")
_GENERATION_ROWS = generation_rows("TRUE", CUTOFF) + ' ORDER BY r.run_id COLLATE "C", r.seq'
_DELETE_GENERATION_ROWS = f"""
    DELETE FROM replay_event_log
    WHERE seq IN (SELECT unnest(%(seqs)s::bigint[])) AND seq IN (SELECT seq FROM (
        {generation_rows("run_id IN (SELECT unnest(%(run_ids)s::text[]))", CUTOFF)}) deletable)
    RETURNING run_id, coalesce(generation, 0)
"""

# The archive's columns: those of the DuckDB store's `replay_events` view, with its
# DuckDB types, so that archives from both stores have one schema.
_ARCHIVE_COLUMNS = (
    ("seq", "BIGINT", "seq"), ("run_id", "VARCHAR", "run_id"),
    ("workflow", "VARCHAR", "workflow"), ("key", "VARCHAR", "key"),
    ("kind", "VARCHAR", "kind"), ("event", "VARCHAR", "event"),
    ("attempt", "INTEGER", "attempt"), ("value", "BLOB", "value"),
    ("value_json", "JSON", "value_json::text"),  # the text as written, never parsed
    ("error_type", "VARCHAR", "error_type"), ("error", "VARCHAR", "error"),
    ("recorded_at", "TIMESTAMP WITH TIME ZONE", "recorded_at"),
    ("duration_ms", "DOUBLE", "duration_ms"),
    ("wake_at", "TIMESTAMP WITH TIME ZONE", "wake_at"),
    ("generation", "INTEGER", "coalesce(generation, 0)"),
)
# Two joins rather than one OR of two lists (which PostgreSQL cannot join); they never
# meet, as a plan has no generation rows of the runs it deletes whole.
_ARCHIVE_SOURCE = ", ".join(source for _, _, source in _ARCHIVE_COLUMNS)
_ARCHIVE_ROWS = f"""
    SELECT {_ARCHIVE_SOURCE}
    FROM replay_event_all JOIN unnest(%(run_ids)s::text[]) AS planned(run_id) USING (run_id)
    UNION ALL
    SELECT {_ARCHIVE_SOURCE}
    FROM replay_event_all JOIN unnest(%(seqs)s::bigint[]) AS planned(seq) USING (seq)
    ORDER BY seq
"""
_FETCH_ROWS = 10_000


@contextmanager
def _transaction(con: Connection, *, snapshot: bool = False) -> Iterator[None]:
    """One transaction on `con`, committed at the end or rolled back on an error.

    Works whether `con` is in autocommit or not, as long as no transaction is open.
    With `snapshot`, every statement in it reads the same snapshot (repeatable read,
    read only), as a DuckDB transaction does.

    Raises:
        RuntimeError: `con` is inside a transaction already (one left open would
            make this one a savepoint, committed by no one).
    """
    if con.info.transaction_status != pq.TransactionStatus.IDLE:
        raise RuntimeError(
            "the PostgreSQL connection given to the purge is inside a transaction "
            f"({con.info.transaction_status.name}); commit or roll it back first")
    with con.transaction():
        if snapshot:
            con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def plan(con: Connection, cutoff: datetime, states: Sequence[str],
         workflow: str | None) -> PurgePlan:
    """Read what a purge with these arguments would delete (one snapshot).

    `workflow` filters whole runs only: earlier generations of every run are deleted.

    Raises:
        psycopg.Error: A query failed.
        RuntimeError: `con` is inside a transaction already.
    """
    params = {"states": list(states), "cutoff": cutoff, "workflow": workflow}
    with _transaction(con, snapshot=True):
        pairs = con.execute(_TREES, params).fetchall()
        run_ids = [run_id for _, run_id in pairs]
        events = con.execute(_PLANNED_EVENTS, [run_ids]).fetchone() if run_ids else None
        rows = con.execute(_GENERATION_ROWS, {"cutoff": cutoff}).fetchall()
    trees: list[tuple[str, ...]] = []
    for root, run_id in pairs:
        if run_id == root:
            trees.append((root,))
        else:
            trees[-1] += (run_id,)
    gone = set(run_ids)  # a run deleted whole needs no generation delete
    return PurgePlan(trees, int(events[0]) if events else 0, by_run(rows, gone))


def delete_runs(con: Connection, trees: Sequence[tuple[str, ...]], states: Sequence[str],
                cutoff: datetime) -> tuple[set[str], int]:
    """Delete the runs of `trees` that are still deletable, in one transaction.

    Returns:
        The run ids deleted, and how many records.

    Raises:
        psycopg.Error: The delete failed (and was rolled back).
        RuntimeError: `con` is inside a transaction already.
    """
    params = {"roots": [tree[0] for tree in trees for _ in tree],
              "members": [run_id for tree in trees for run_id in tree],
              "states": list(states), "cutoff": cutoff}
    with _transaction(con):
        rows = con.execute(_DELETE_RUNS, params).fetchall()
    return {str(row[0]) for row in rows}, len(rows)


def delete_generations(con: Connection, batch: Sequence[GenerationRows],
                       cutoff: datetime) -> tuple[int, int]:
    """Delete the planned records of earlier generations still deletable (one transaction).

    Returns:
        How many generations lost records, and how many records were deleted.

    Raises:
        psycopg.Error: The delete failed (and was rolled back).
        RuntimeError: `con` is inside a transaction already.
    """
    params = {"cutoff": cutoff, "seqs": [seq for rows in batch for seq in rows.seqs],
              "run_ids": [rows.run_id for rows in batch]}
    with _transaction(con):
        rows = con.execute(_DELETE_GENERATION_ROWS, params).fetchall()
    return len(set(rows)), len(rows)


def write_archive(con: Connection, path: str, planned: PurgePlan) -> int:
    """Write every record the plan deletes to one new Parquet file, owner-only.

    The columns and types are those of the DuckDB store's archive (its
    ``replay_events`` view). The rows stream from a server-side cursor into a private
    in-memory DuckDB database, which writes the file into a fresh private directory;
    it is then linked into place, which fails rather than replace a file that
    appeared meanwhile.

    Returns:
        How many records were written.

    Raises:
        OSError: The file cannot be written (nothing was deleted).
        psycopg.Error: Reading the records failed.
        RuntimeError: `con` is inside a transaction already.
    """
    params = {"run_ids": [run_id for tree in planned.trees for run_id in tree],
              "seqs": [seq for rows in planned.generations for seq in rows.seqs]}
    columns = ", ".join(f'"{name}" {kind}' for name, kind, _ in _ARCHIVE_COLUMNS)
    # A server-side cursor lives in a transaction; it keeps memory to one batch.
    with _transaction(con), con.cursor(name="replay_archive") as cursor:
        cursor.execute(_ARCHIVE_ROWS, params)
        return write_parquet(path, columns, iter(lambda: cursor.fetchmany(_FETCH_ROWS), []))
