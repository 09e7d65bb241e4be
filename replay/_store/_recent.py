"""`RecentRows`: the rows committed to the hot log since it was last settled, in memory.

The reads of one run (its history, its memo) would otherwise read the hot log through
``replay_event_all``, whose plan (the JSON decoding of hot rows) costs DuckDB about
2.5 ms per query, more than the rest of the read. The rows a commit wrote are at hand
as it returns, so the store keeps those of the hot log by run until settling moves
them into the table (at most a few thousand rows). A run whose start is among them,
with no big batch since (big batches go to the table directly), is *whole* in memory:
its reads need no query at all, as when a run that just failed is resumed.

Safe for readers on other threads: a commit notes its rows after it succeeds and before
it is acknowledged, and settling replaces the whole index after the rows are in the
table. A reader takes the index once, copies a run's rows from it, then reads the
table (if the run is not whole): a row that settling moves in between is read twice
(the caller keeps one), and a read misses only rows committed after it began.
"""

from __future__ import annotations

from typing import Any

Row = tuple[Any, ...]  # a row of `replay_event_log`, as `record_row` makes it


class RecentRows:
    """The hot log's rows by run, and which runs have all their rows there."""

    def __init__(self) -> None:
        # Replaced, never cleared, at settling: a reader holding the old index keeps
        # a consistent view of it.
        self._index: tuple[dict[str, list[Row]], set[str]] = ({}, set())

    def committed(self, rows: list[Row], hot: bool) -> None:
        """Note the rows of a batch just committed (to the hot log if `hot`).

        Called under the store's connection lock, before the batch is acknowledged.
        """
        by_run, whole = self._index
        if not hot:  # these runs now have rows in the table too
            for row in rows:
                whole.discard(row[1])
            return
        for row in rows:
            run_rows = by_run.get(row[1])
            if run_rows is None:
                run_rows = by_run[row[1]] = []
            run_rows.append(row)
            if row[4] == "run" and row[5] == "started":
                whole.add(row[1])

    def settled(self) -> None:
        """Forget every row: settling moved them into the table."""
        self._index = ({}, set())

    def of(self, run_id: str) -> tuple[list[Row], bool]:
        """Return the run's recent rows, and whether they are all of its rows."""
        by_run, whole = self._index
        rows = by_run.get(run_id)
        return ([] if rows is None else list(rows)), run_id in whole

    def has(self, run_id: str) -> bool:
        """Whether the run has rows in the hot log."""
        return run_id in self._index[0]


def memo_row(row: Row) -> Row:
    """Turn a row of `replay_event_log` into a row of `MEMO_COLUMNS`."""
    (seq, _run_id, _workflow, key, kind, event, attempt, value, _value_json, error_type,
     error, _recorded_at, _duration_ms, wake_at, name, error_types, _run_state, status_text,
     generation, code_version) = row
    wake_us = None if wake_at is None else round(wake_at.timestamp() * 1_000_000)
    return (seq, key, kind, event, attempt, value, error_type, error, wake_us, name,
            error_types, status_text, generation or None, code_version)


def merged(rows: list[Row], recent: list[Row], seq_at: int) -> list[Row]:
    """`rows` read from the table and `recent` rows, one of each `seq` (column `seq_at`)."""
    if not recent:
        return rows
    if not rows:
        return recent
    by_seq = {row[seq_at]: row for row in recent}
    by_seq.update((row[seq_at], row) for row in rows)
    return list(by_seq.values())
