"""What an engine-wide watch reads of the records other engines commit to a shared schema.

Engines number their records from blocks of `seq` (`_leases.seq_block`), and each
block handed out is recorded in `replay_block` with its worker before any record is
numbered from it. Within a block the numbers follow commit order (an engine's batches
commit one after another); across blocks they do not. So a watch keeps, per block, the
newest `seq` it has read (`Marks`), and each look reads the records above that mark in
every block that may still get records:

- a *live* block: its worker's newest, or one its worker moved on from less than
  `block_horizon` ago (a batch numbered before a claim may still be committing);
- a block taken since the previous look (above `Marks.newest`), whatever its age;
- a block the watch has read before and that is no longer live: once more, then never.

A look is two statements: the blocks (a scan of `replay_block`, which keeps a few rows
per worker, and one probe of the event table's primary key per block), then the
records above the marks (primary-key ranges). This engine's own blocks are not read:
its watchers get its records from memory as they commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg

from replay._core._records import Record
from replay._pg._schema import block_horizon, block_kept
from replay._pg._sql import COLUMNS, run_summary
from replay._store._protocol import SEQ_BLOCK, Marks, News, WorkerOptions
from replay._store._rows import RunRow, row_record, run_row

Connection = psycopg.Connection[Any]

# Above every block a sequence of bigint hands out: "no block is new" at the first look.
_NO_NEW = 2**62
# How many runs' histories one query reads.
_RUNS_PER_READ = 500

# The blocks to read (parameters: the horizon in seconds, the newest block of the last
# look, the blocks read before): live ones, new ones and marked ones, each with its
# newest `seq`. The outer join returns the time even when no block is chosen.
_BLOCKS = f"""
    WITH settled AS (
        SELECT worker, max(block) AS block FROM replay_block
        WHERE taken_at < now() - %s * interval '1 second' GROUP BY worker
    ), known AS (
        SELECT b.block, b.worker, b.block >= coalesce(s.block, b.block) AS live
        FROM replay_block b LEFT JOIN settled s USING (worker)
    ), chosen AS (
        SELECT block, worker, live FROM known WHERE live OR block > %s
        UNION
        SELECT m.block, k.worker, coalesce(k.live, false)
        FROM unnest(%s::bigint[]) AS m(block) LEFT JOIN known k USING (block)
    )
    SELECT t.at, c.block, c.worker, c.live, (
        SELECT max(e.seq) FROM replay_event_log e
        WHERE e.seq > c.block AND e.seq <= c.block + {SEQ_BLOCK})
    FROM (SELECT now() AS at) t LEFT JOIN chosen c ON true
"""
# The records in ranges of `seq` (parameters: their starts and ends, exclusive and
# inclusive, and the limit twice), in `seq` order.
_RECORDS = f"""
    SELECT r.* FROM unnest(%s::bigint[], %s::bigint[]) AS b(after, upto)
    CROSS JOIN LATERAL (
        SELECT {COLUMNS} FROM replay_event_log e
        WHERE e.seq > b.after AND e.seq <= b.upto {{workflow}}
        ORDER BY e.seq LIMIT %s
    ) r
    ORDER BY 1 LIMIT %s
"""
_HISTORIES = (f"SELECT {COLUMNS} FROM replay_event_all WHERE run_id = ANY(%s::text[]) "
              "ORDER BY run_id, seq")
# Every unfinished run (the members of families) but some (parameter: their ids), by the
# run index, one run at a time (see `_sql.OPEN_RUN_ROWS`).
_UNFINISHED = run_summary("open_rows", """open_rows AS MATERIALIZED (
        SELECT e.* FROM replay_member m CROSS JOIN LATERAL (
            SELECT * FROM replay_event_all e WHERE e.run_id = m.run_id
        ) e WHERE NOT (m.run_id = ANY(%s::text[]))
    ),""")


def watch_marks(con: Connection, options: WorkerOptions) -> Marks:
    """Return marks at the newest record of every live block of other engines."""
    return _look(con, Marks({}, _NO_NEW, -1, datetime.min), options, None, 0).marks


def records_after(con: Connection, marks: Marks, options: WorkerOptions,
                  workflow: str | None, limit: int) -> News:
    """Return other engines' records after `marks` (of `workflow` only), in `seq` order.

    At most `limit` records; the marks returned are past all of them, and past any
    beyond the limit too (the caller counts those as missed).
    """
    return _look(con, marks, options, workflow, limit)


def histories(con: Connection, run_ids: Sequence[str]) -> dict[str, list[Record]]:
    """Return every record of each of `run_ids` that exists, in `seq` order."""
    found: dict[str, list[Record]] = {}
    for start in range(0, len(run_ids), _RUNS_PER_READ):
        chunk = list(run_ids[start:start + _RUNS_PER_READ])
        for row in con.execute(_HISTORIES, [chunk]).fetchall():
            found.setdefault(row[1], []).append(row_record(row))
    return found


def unfinished_runs(con: Connection, skip: Sequence[str], shown: str) -> list[RunRow]:
    """Return every unfinished run of the schema but `skip` (one query)."""
    rows = con.execute(_UNFINISHED, [list(skip)]).fetchall()
    return [run_row(row, shown) for row in rows]


def _look(con: Connection, marks: Marks, options: WorkerOptions, workflow: str | None,
          limit: int) -> News:
    """Read the blocks, then (with a `limit`) the records above `marks` in them."""
    first = marks.newest == _NO_NEW
    rows = con.execute(_BLOCKS, [block_horizon(options.lease), marks.newest,
                                 list(marks.read)]).fetchall()
    at: datetime = rows[0][0]
    read: dict[int, int] = {}
    ranges: list[tuple[int, int]] = []
    newest, own = (-1 if first else marks.newest), marks.own
    for _, block, worker, live, last in rows:
        if block is None:
            continue
        newest = max(newest, block)
        if worker == options.worker:
            own = max(own, block)
            continue
        after = marks.read.get(block, block)
        upto = after if last is None or first else max(last, after)
        if upto > after:
            ranges.append((after, upto))
        if live:
            read[block] = last if first and last is not None else upto
    records: list[Record] = []
    if ranges and limit > 0:
        query = _RECORDS.format(workflow="" if workflow is None else "AND e.workflow = %s")
        params: list[Any] = [[r[0] for r in ranges], [r[1] for r in ranges]]
        params += ([] if workflow is None else [workflow]) + [limit, limit]
        records = [row_record(row) for row in con.execute(query, params).fetchall()]
    complete = first or at - marks.at <= timedelta(seconds=block_kept(options.lease)) or \
        _none_forgotten(con, marks.newest, {row[1] for row in rows if row[1] is not None})
    return News(records, Marks(read, newest, own, at), complete)


def _none_forgotten(con: Connection, newest: int, found: set[int]) -> bool:
    """Whether every block handed out after `newest` is among `found` (none was pruned).

    The sequence hands out `newest + SEQ_BLOCK`, `newest + 2 * SEQ_BLOCK`, ... in turn.
    """
    row = con.execute("SELECT last_value, is_called FROM replay_seq_block").fetchone()
    handed = 0 if row is None or not row[1] else max(0, (row[0] - newest) // SEQ_BLOCK)
    return len({block for block in found if block > newest}) >= handed
