"""Loading runs' memos in batches: one query for every run woken in the same moment.

A run whose machine is not in memory (evicted from the parked cache, found at open,
resumed) is replayed from its records. When many runs wake at once — a reopen with
thousands of signals waiting, a broadcast, a burst of timers — loading each history
with its own query would cost a thread hop and a query per run. `MemoLoader` is a
service task: the requests made while it works on one batch form the next, loaded
with one query (up to `BATCH` runs), and each waiting task gets its own memo. The
store folds the rows into memos where it reads them, in the worker thread, with no
record made for most rows (`fold_rows`): a long history's fold does not hold the loop.
A run whose rows are at hand (in the hot log, or just read for its state) is folded on
the loop with no thread at all, when they are few enough (`FOLDED_ON_LOOP`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from replay._core._history import RunHistory
from replay._engine._clock import in_thread
from replay._errors import EngineClosed
from replay._store import EngineStore

# Runs per query: a batch this large reads about as fast per run as a larger one, and a
# waiting task never waits behind more than one such query.
BATCH = 1000
# The most rows at hand folded on the loop (a few milliseconds at most): a longer
# history is folded in a worker thread, as a run resumed with 100,000 recorded events
# would hold the loop for the ~50 ms of its fold.
FOLDED_ON_LOOP = 8192


@dataclass(slots=True)
class _Request:
    run_id: str
    workflow: str
    done: trio.Event = field(default_factory=trio.Event)
    history: RunHistory | None = None
    error: BaseException | None = None


class MemoLoader:
    """Loads runs' memos, batching the requests that arrive together.

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
        history = self._store.memo_at_hand(run_id, workflow, FOLDED_ON_LOOP)
        if history is not None:  # nothing to read: no thread, no batch
            return history
        if not self._running:  # not started (or stopped): read it alone
            return await in_thread(self._store.fold_memo, run_id, workflow)
        request = _Request(run_id, workflow)
        self._queue.append(request)
        self._wakeup.set()
        await request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.history is not None
        return request.history

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
        # A memo is its machine's to change, so two requests never share one: a second
        # request for a run in the batch goes to the next batch.
        runs: dict[str, str] = {}
        first, again = [], []
        for request in batch:
            if request.run_id in runs:
                again.append(request)
            else:
                runs[request.run_id] = request.workflow
                first.append(request)
        batch, self._queue[:0] = first, again
        try:
            loaded = await in_thread(_fold, self._store, runs)
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
            request.history = loaded[request.run_id]  # every run has one
            request.done.set()


def _fold(store: EngineStore, runs: dict[str, str]) -> dict[str, RunHistory]:
    """Fold the memos of a batch's runs: a lone run with the query of one run."""
    if len(runs) == 1:
        (run_id, workflow), = runs.items()
        return {run_id: store.fold_memo(run_id, workflow)}
    return store.fold_memos(runs)
