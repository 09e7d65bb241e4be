"""Loading runs' memos in batches: one query for every run woken in the same moment.

A run whose machine is not in memory (evicted from the parked cache, found at open,
resumed) is replayed from its records. When many runs wake at once — a reopen with
thousands of signals waiting, a broadcast, a burst of timers — loading each history
with its own query would cost a thread hop and a query per run. `MemoLoader` is a
service task: the requests made while it works on one batch form the next, loaded
with one query (up to `BATCH` runs), and each waiting task gets its own records.
`memo_of` turns a run's records into its memo a slice at a time. A run whose rows are
at hand (in the hot log, or just read for its state) is folded from them directly by
the store, with no record made for most rows (`fold_rows`), when they are few enough
to fold in one piece.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from replay._core._history import RunHistory
from replay._core._records import Record
from replay._engine._clock import in_thread
from replay._errors import EngineClosed
from replay._store import EngineStore

# Runs per query: a batch this large reads about as fast per run as a larger one, and a
# waiting task never waits behind more than one such query.
BATCH = 1000
# Records folded into a memo between two checkpoints (a few milliseconds): a run
# resumed with 100,000 recorded events held the loop for the ~80 ms of its fold.
FOLDED_PER_TURN = 8192


async def memo_of(records: list[Record]) -> RunHistory:
    """Return `records` folded into the run's memo, letting other tasks run between slices."""
    if len(records) <= FOLDED_PER_TURN:
        return RunHistory(records)
    history = RunHistory()
    apply = history.apply
    for start in range(0, len(records), FOLDED_PER_TURN):
        await trio.lowlevel.checkpoint()
        for record in records[start:start + FOLDED_PER_TURN]:
            apply(record)
    return history


@dataclass(slots=True)
class _Request:
    run_id: str
    workflow: str
    done: trio.Event = field(default_factory=trio.Event)
    records: list[Record] | None = None
    error: BaseException | None = None


class MemoLoader:
    """Loads runs' memo records, batching the requests that arrive together.

    Args:
        store: The open database.
    """

    def __init__(self, store: EngineStore) -> None:
        self._store = store
        self._queue: list[_Request] = []
        self._wakeup = trio.Event()
        self._running = False

    async def load(self, run_id: str, workflow: str) -> RunHistory:
        """Return one run's memo, folded from its records.

        Raises:
            DatabaseError: The file could not be read.
            EngineClosed: The engine stopped before the records were read.
        """
        history = self._store.memo_at_hand(run_id, workflow, FOLDED_PER_TURN)
        if history is not None:  # nothing to read: no thread, no batch
            return history
        if not self._running:  # not started (or stopped): read it alone
            return await memo_of(await in_thread(self._store.load_memo, run_id, workflow))
        request = _Request(run_id, workflow)
        self._queue.append(request)
        self._wakeup.set()
        await request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.records is not None
        return await memo_of(request.records)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The service task: load what is asked, a batch at a time, until cancelled."""
        self._running = True
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                # One scheduling round: the runs woken together ask together.
                await trio.lowlevel.checkpoint()
                while self._queue:
                    batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
                    await self._load_batch(batch)
        finally:
            self._running = False
            closed = EngineClosed("the engine stopped while a run's history was being read")
            for request in self._queue:
                request.error = closed
                request.done.set()
            self._queue = []

    async def _load_batch(self, batch: list[_Request]) -> None:
        runs = {request.run_id: request.workflow for request in batch}
        try:
            loaded = await in_thread(self._store.load_memos, runs)
        except trio.Cancelled:
            for request in batch:
                request.error = EngineClosed(
                    "the engine stopped while a run's history was being read")
                request.done.set()
            raise
        except Exception as error:
            for request in batch:
                request.error = error
                request.done.set()
            return
        for request in batch:
            request.records = list(loaded.get(request.run_id, ()))
            request.done.set()
