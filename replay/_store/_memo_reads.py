"""Reading runs' memos for replay: from rows at hand, else one query, folded where read.

A run replays from its memo (`RunHistory`). Its rows are often at hand: whole in the
hot log's rows kept in memory (`RecentRows`), or just read by `Store.run_row` for the
run's state, with nothing committed since (a resume reads the state, then the memo).
Otherwise they are read with one query, of one run or of a batch of runs woken
together. Either way they are folded straight into the memo (`fold_rows`), with no
`Record` made for a step's first outcome (most rows of a replayed run), on the thread
that read them: the engine reads in a worker thread, so a long history is folded there
and not on the engine's loop.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from itertools import groupby
from operator import itemgetter

from replay._core._history import OutcomeFields, RunHistory, fold_rows
from replay._core._records import Record
from replay._store._recent import (
    Read,
    RecentRows,
    Row,
    memo_rows,
    memos_rows,
    whole_history,
)
from replay._store._rows import MEMO_OUTCOME, memo_record

_run_id_of = itemgetter(0)
# Where a row of `memos_rows` (the run id, then `MEMO_COLUMNS`) keeps a step's outcome.
_MEMOS_OUTCOME: OutcomeFields = (2, 3, 4, 5, 10, 6)  # `MEMO_OUTCOME`, one place on


class MemoReads:
    """Reads and folds runs' memos for one store.

    Args:
        recent: The hot log's rows kept in memory.
        read: Runs a query on the store's connection (on the calling thread).
    """

    def __init__(self, recent: RecentRows, read: Read) -> None:
        self._recent = recent
        self._read = read
        # The rows `Store.run_row` read last: (run id, newest seq then, rows).
        self._ahead: tuple[str, int, list[Row]] | None = None

    def keep_ahead(self, run_id: str, upto: int, rows: list[Row]) -> None:
        """Keep the rows of `run_id` just read (up to `upto`) for its memo, next."""
        self._ahead = (run_id, upto, rows)

    def forget_ahead(self) -> None:
        """Keep no rows read ahead (the last read found no run)."""
        self._ahead = None

    def at_hand(self, run_id: str, workflow: str, most: int) -> RunHistory | None:
        """Return one run's memo if its rows need no read and are at most `most`, else None."""
        rows = self._rows_ahead(run_id)
        if rows is None:
            return whole_history(self._recent, run_id, most)
        if len(rows) > most:
            return None
        self._ahead = None
        return fold_rows(rows, MEMO_OUTCOME, lambda row: memo_record(run_id, workflow, row[:14]))

    def fold(self, run_id: str, workflow: str) -> RunHistory:
        """Return one run's memo, folded from its rows (one query unless they are at hand)."""
        history = self.at_hand(run_id, workflow, sys.maxsize)
        if history is not None:
            return history
        return fold_rows(memo_rows(self._recent, self._read, run_id), MEMO_OUTCOME,
                         lambda row: memo_record(run_id, workflow, row))

    def fold_many(self, runs: dict[str, str]) -> dict[str, RunHistory]:
        """Return several runs' memos (`runs`: run id to workflow), with one query.

        A run with no row gets an empty memo.
        """
        folded: dict[str, RunHistory] = {}
        unknown = []  # runs not at hand
        for run_id, workflow in runs.items():
            history = self.at_hand(run_id, workflow, sys.maxsize)
            if history is None:
                unknown.append(run_id)
            else:
                folded[run_id] = history
        if unknown:
            for run_id, rows in groupby(memos_rows(self._recent, self._read, unknown),
                                        _run_id_of):
                folded[run_id] = fold_rows(rows, _MEMOS_OUTCOME, _memos_record(runs[run_id]))
        for run_id in unknown:
            folded.setdefault(run_id, RunHistory())
        return folded

    def _rows_ahead(self, run_id: str) -> list[Row] | None:
        """The rows `Store.run_row` just read of `run_id`, if nothing was committed since."""
        ahead = self._ahead
        if ahead is not None and ahead[0] == run_id and ahead[1] == self._recent.last_seq:
            return ahead[2]
        return None


def _memos_record(workflow: str) -> Callable[[Row], Record]:
    """How to make a memo record of a row of `memos_rows` of a run of `workflow`."""

    def record(row: Row) -> Record:
        return memo_record(row[0], workflow, row[1:])

    return record
