"""The engine's reads of a PostgreSQL schema: one query each, DuckDB's results.

Each function mirrors the `replay._store.Store` method of the same name and returns
what it returns for the same records: the queries of `_sql` have the row shapes of
DuckDB's, so `replay._store._rows` converts them unchanged. They take an open
connection (autocommit, so each read sees everything committed before it) and let
`psycopg.Error` through: the store says which database failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from replay._core._records import Record
from replay._pg._sql import (
    COLUMNS,
    MEMO_COLUMNS,
    ONE_RUN,
    OPEN_RUN_ROWS,
    RUN_WORKFLOW,
    run_list,
)
from replay._store import _rows
from replay._store._rows import RunRow, history_records, memo_record, row_record, utc_or_none

Connection = psycopg.Connection[Any]

_HISTORY = f"SELECT {COLUMNS} FROM replay_event_all WHERE run_id = %s ORDER BY seq"
_MEMO = f"SELECT {MEMO_COLUMNS} FROM replay_event_all WHERE run_id = %s ORDER BY seq"
_MEMOS = (f"SELECT run_id, {MEMO_COLUMNS} FROM replay_event_all "
          "WHERE run_id = ANY(%s::text[]) ORDER BY run_id, seq")
_EXISTING = ("SELECT DISTINCT run_id FROM replay_event_all WHERE run_id = ANY(%s::text[]) "
             "AND kind = 'run' AND event = 'started'")
_GENERATIONS = ("SELECT run_id, max(generation) FROM replay_event_all "
                "WHERE generation > 0 GROUP BY run_id")
_LAST = "SELECT max(seq), max(recorded_at) FROM replay_event_all"


def load_open_runs(con: Connection) -> list[list[Record]]:
    """Return the records of every unfinished run, a list per run (one query).

    Rows are not checked: a run damaged by hand is the caller's to fail.
    """
    runs: dict[str, list[Record]] = {}
    for row in con.execute(OPEN_RUN_ROWS).fetchall():
        runs.setdefault(row[1], []).append(row_record(row))
    return list(runs.values())


def run_row(con: Connection, run_id: str, shown: str) -> RunRow | None:
    """Return one run's state (by the run index), or None if there is no such run.

    `shown` names the database in the message of a run loaded as damaged.
    """
    rows = con.execute(ONE_RUN, [run_id]).fetchall()
    return _rows.run_row(rows[0], shown) if rows else None


def last_seq_and_time(con: Connection) -> tuple[int, datetime | None]:
    """Return the largest `seq` and `recorded_at` in the schema."""
    row = con.execute(_LAST).fetchone()
    seq, at = row if row is not None else (None, None)
    return int(seq or 0), utc_or_none(at)


def generations(con: Connection) -> dict[str, int]:
    """Return the current generation of every run that has continued as new."""
    return {run_id: int(generation)
            for run_id, generation in con.execute(_GENERATIONS).fetchall()}


def workflow_of(con: Connection, run_id: str) -> str | None:
    """Return the workflow of run `run_id`, or None if there is no such run."""
    row = con.execute(RUN_WORKFLOW, [run_id]).fetchone()
    return None if row is None else str(row[0])


def existing(con: Connection, run_ids: Sequence[str]) -> set[str]:
    """Return which of `run_ids` have a run in the schema (one read, by the index)."""
    if not run_ids:
        return set()
    return {row[0] for row in con.execute(_EXISTING, [list(run_ids)]).fetchall()}


def list_runs(con: Connection, state: str | None, workflow: str | None, limit: int,
              shown: str) -> list[RunRow]:
    """Return runs newest first (by creation), filtered by state and workflow.

    `shown` names the database in the message of a run loaded as damaged.
    """
    # Only the filters given: a `%s IS NULL` test would need a typed parameter, and
    # leaving it out lets the planner use the condition.
    conditions: list[str] = ["true"]
    params: list[Any] = []
    if state is not None:
        conditions.append("l.run_state = %s")
        params.append(state)
    if workflow is not None:
        conditions.append("s.workflow = %s")
        params.append(workflow)
    rows = con.execute(run_list(" AND ".join(conditions)), [*params, limit]).fetchall()
    return [_rows.run_row(row, shown) for row in rows]


def load_history(con: Connection, run_id: str, shown: str) -> list[Record]:
    """Return every record of one run in `seq` order (one query).

    Raises:
        DatabaseError: The run's rows are damaged (`shown` names the database).
    """
    return history_records(con.execute(_HISTORY, [run_id]).fetchall(), shown)


def load_memo(con: Connection, run_id: str, workflow: str) -> list[Record]:
    """Return one run's records as the memo needs them (one query, no timestamps)."""
    return [memo_record(run_id, workflow, row)
            for row in con.execute(_MEMO, [run_id]).fetchall()]


def load_memos(con: Connection, runs: dict[str, str]) -> dict[str, list[Record]]:
    """Return several runs' memo records (`runs`: run id to workflow), one query."""
    if len(runs) == 1:
        (run_id, workflow), = runs.items()
        return {run_id: load_memo(con, run_id, workflow)}
    loaded: dict[str, list[Record]] = {}
    for row in con.execute(_MEMOS, [list(runs)]).fetchall():
        run_id = row[0]
        loaded.setdefault(run_id, []).append(memo_record(run_id, runs[run_id], row[1:]))
    return loaded
