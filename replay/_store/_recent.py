"""The engine's reads of one run: the table, and the hot log's rows kept in memory.

`RecentRows` keeps the rows committed to the hot log since it was last settled.

The reads of one run (its history, its memo) would otherwise read the hot log through
``replay_event_all``, whose plan (the JSON decoding of hot rows) costs DuckDB about
2.5 ms per query, more than the rest of the read. The rows a commit wrote are at hand
as it returns, so the store keeps those of the hot log by run until settling moves
them into the table (at most a few thousand rows). A run whose start is among them,
with no big batch since (big batches go to the table directly), is *whole* in memory:
its reads need no query at all, as when a run that just failed is resumed.

Safe for readers on other threads: a commit notes its rows (and the newest `seq`) after
it succeeds and before it is acknowledged, commits happen one at a time in `seq` order,
and settling replaces the whole index after the rows are in the table. A reader notes
the newest `seq` first, copies a run's rows from the index, then reads the table (if
the run is not whole), and keeps the rows up to that `seq`: every one of them is in the
copy or in the table (a row that settling moves in between is read twice, and kept
once), so a read is the run's history as it was when the read began, without a gap
that commits made during it could otherwise open.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from operator import itemgetter
from typing import Any

from replay._core._history import OutcomeFields, RunHistory, fold_rows
from replay._core._records import Record
from replay._store._rows import epoch_us, from_epoch_us, utc_or_none
from replay._store._schema import MEMO_COLUMNS, OPEN_COLUMNS

Row = tuple[Any, ...]  # a row of `replay_event_log`, as `record_row` makes it
Read = Callable[[str, list[Any]], list[Row]]  # runs a query on the store's connection

# The table's rows of one run, or of several; sorted in Python, as DuckDB's sort of a
# dozen rows costs more than their read by the index.
_HISTORY = f"SELECT {OPEN_COLUMNS} FROM replay_event_log WHERE run_id = $1"
_MEMO = f"SELECT {MEMO_COLUMNS} FROM replay_event_log WHERE run_id = $1"
# A run's rows for its state: the memo's columns, then its workflow, state and time. A
# resume reads the state, then the memo: one read serves both (see `Store.run_row`).
_STATE = (f"SELECT {MEMO_COLUMNS}, workflow, run_state, epoch_us(recorded_at) "
          "FROM replay_event_log WHERE run_id = $1")
_MEMOS = (f"SELECT run_id, {MEMO_COLUMNS} FROM replay_event_log "
          "WHERE run_id IN (SELECT unnest($1::VARCHAR[]))")
_first = itemgetter(0)
_first_two = itemgetter(0, 1)
# Where a row of `replay_event_log` keeps what `fold_rows` reads of a step's outcome.
_TABLE_OUTCOME: OutcomeFields = (3, 4, 5, 6, 14, 7)


class RecentRows:
    """The hot log's rows by run, and which runs have all their rows there.

    Args:
        last_seq: The newest `seq` in the file (with an empty hot log).
    """

    def __init__(self, last_seq: int) -> None:
        # Replaced, never cleared, at settling: a reader holding the old index keeps
        # a consistent view of it.
        self._index: tuple[dict[str, list[Row]], set[str]] = ({}, set())
        self.last_seq = last_seq  # the newest `seq` committed (to either table)
        self.count = 0  # rows in the hot log (settling is due past a few thousand)

    def committed(self, rows: list[Row], hot: bool) -> None:
        """Note the rows of a batch just committed (to the hot log if `hot`).

        Called under the store's connection lock, before the batch is acknowledged.
        """
        by_run, whole = self._index
        if rows:
            self.last_seq = max(self.last_seq, rows[-1][0])
        if not hot:  # these runs now have rows in the table too
            for row in rows:
                whole.discard(row[1])
            return
        self.count += len(rows)
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
        self.count = 0

    def of(self, run_id: str) -> tuple[list[Row], bool]:
        """Return the run's recent rows, and whether they are all of its rows."""
        by_run, whole = self._index
        rows = by_run.get(run_id)
        return ([] if rows is None else list(rows)), run_id in whole

    def has(self, run_id: str) -> bool:
        """Whether the run has rows in the hot log."""
        return run_id in self._index[0]


def state_row(row: Row) -> Row:
    """Turn a row of `replay_event_log` into a row of `_STATE`."""
    return (*memo_row(row), row[2], row[16], epoch_us(row[11]))


def memo_row(row: Row) -> Row:
    """Turn a row of `replay_event_log` into a row of `MEMO_COLUMNS`."""
    (seq, _run_id, _workflow, key, kind, event, attempt, value, _value_json, error_type,
     error, _recorded_at, _duration_ms, wake_at, name, error_types, _run_state, status_text,
     generation, code_version) = row
    return (seq, key, kind, event, attempt, value, error_type, error, epoch_us(wake_at), name,
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


def by_recency(query: str) -> dict[bool, str]:
    """`query` (over ``replay_event_all``) for a run with recent rows (True), and without."""
    return {True: query, False: query.replace("replay_event_all", "replay_event_log")}


def stamp(value: int | datetime | None) -> datetime | None:
    """Read a timestamp of `history_rows`: from the table (epoch microseconds) or memory."""
    return from_epoch_us(value) if isinstance(value, int) else utc_or_none(value)


def history_rows(recent: RecentRows, read: Read, run_id: str) -> list[Row]:
    """Return the rows of `OPEN_COLUMNS` of one run in `seq` order (see `stamp`).

    Rows from memory stay table rows (`stamp` reads both kinds of timestamp).
    """
    return _run_rows(recent, read, run_id, _HISTORY, _as_is)


def whole_history(recent: RecentRows, run_id: str, most: int) -> RunHistory | None:
    """Return one run's memo from memory, folded, if it is whole there in `most` rows.

    Folded straight from its rows, which are in `seq` order (the order of the commits),
    with no record made for a step's first outcome (`fold_rows`): a replay of a run
    that just failed or parked reads nothing else.
    """
    upto = recent.last_seq  # first: see the module's docstring
    rows, whole = recent.of(run_id)
    if not whole or len(rows) > most:
        return None
    if rows and rows[-1][0] > upto:  # committed since `upto` (rows are in `seq` order)
        rows = [row for row in rows if row[0] <= upto]
    return fold_rows(rows, _TABLE_OUTCOME, _memo_record_of(run_id))


def _memo_record_of(run_id: str) -> Callable[[Row], Record]:
    """How to make a memo record of one of the run's rows of `replay_event_log`."""

    def record(row: Row) -> Record:
        (seq, _, workflow, key, kind, event, attempt, value, _, error_type, error, _, _,
         wake_at, name, error_types, _, status_text, generation, code_version) = row
        # Positional (in `Record`'s field order): one per recorded event.
        return Record(run_id, workflow, kind, event, key, attempt, value, None, error_type,
                      error, tuple(error_types.split(",")) if error_types else (), name, None,
                      None, wake_at, None, status_text, seq, generation or 0, code_version)

    return record


def memo_rows(recent: RecentRows, read: Read, run_id: str) -> list[Row]:
    """Return the rows of `MEMO_COLUMNS` of one run in `seq` order."""
    return _run_rows(recent, read, run_id, _MEMO, memo_row)


def state_rows(recent: RecentRows, read: Read, run_id: str) -> list[Row]:
    """Return the rows of `_STATE` of one run in `seq` order (see `fold_summary`)."""
    return _run_rows(recent, read, run_id, _STATE, state_row)


def _as_is(row: Row) -> Row:
    return row


def _run_rows(recent: RecentRows, read: Read, run_id: str, query: str,
              shaped: Callable[[Row], Row]) -> list[Row]:
    """One run's rows as `query` reads them from the table, `shaped` from memory."""
    upto = recent.last_seq  # first: see the module's docstring
    rows, whole = recent.of(run_id)
    found = [shaped(row) for row in rows if row[0] <= upto]
    if not whole:
        found = merged([row for row in read(query, [run_id]) if row[0] <= upto], found, 0)
    found.sort(key=_first)
    return found


def memos_rows(recent: RecentRows, read: Read, run_ids: list[str]) -> list[Row]:
    """Return ``(run_id, *memo row)`` of several runs, by run and `seq` (one query)."""
    upto = recent.last_seq
    memo: list[Row] = []
    unknown = []  # runs that may have rows in the table
    for run_id in run_ids:
        rows, whole = recent.of(run_id)
        memo += [(run_id, *memo_row(row)) for row in rows if row[0] <= upto]
        if not whole:
            unknown.append(run_id)
    if unknown:
        read_rows = [row for row in read(_MEMOS, [unknown]) if row[1] <= upto]
        memo = merged(read_rows, memo, 1)
    memo.sort(key=_first_two)
    return memo
