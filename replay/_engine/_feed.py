"""`Feed`: what an engine-wide watch adds on a shared store: the other engines' runs.

This engine's records reach its watchers from memory as they commit (`Watchers`). The
records other engines commit are read from the store every `poll_interval`
(`SharedStore.records_after`, which keeps a mark per block of `seq`); the runs a look
touches are read whole, in one query, so that each new event carries the state it
left its run in.

- **In order.** Across engines `seq` is not commit order, but along one run it is: a
  run moves to another engine by a claim, after which that engine numbers from a
  fresh block, above every earlier one. Each look takes along the updates buffered
  from memory and sorts the lot by `seq`. A run this engine has just claimed may have
  records of its former engine that the previous look did not see; the claim took a
  fresh block, so an event of this engine in a block the last look did not know
  waits for one more look.
- **Once.** A record is read from memory or from the store, never both (the look
  skips this engine's blocks). A snapshot covers its run's events up to its `seq`;
  the first look after the snapshots drops those.
- **Bounded.** A look that finds more than the watcher's buffer, or a watcher that
  fell behind, or one that did not look for so long that blocks it never read may
  be gone (`News.complete`), gets a ``"missed"`` update, then fresh snapshots.

A look costs two queries, and a third for the histories of the runs it touched.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import trio

from replay._core._records import Record
from replay._engine._clock import in_thread
from replay._engine._slots import RunSlot
from replay._engine._watching import Watcher, Watchers, events_of, snapshot
from replay._store import SEQ_BLOCK, EngineStore, SharedStore
from replay._store._protocol import Marks
from replay._types import FINISHED, RunState, RunUpdate

# Looks in a row for events of this engine numbered since the last one (a new block:
# one more look, then it is known; more only while this engine keeps claiming).
LOOKS_IN_A_ROW = 3
# Records one look reads at most, per update the watcher's buffer keeps (past that
# the watcher has fallen behind anyway, whatever its filter keeps of them).
RECORDS_PER_UPDATE = 10


class Feed:
    """The updates of an engine-wide watch on a shared store (see the module).

    Args:
        watchers: The engine's watchers, told of its commits.
        watcher: This watch's buffer and filter (not registered yet).
        store: The engine's store.
        sharing: The store's shared side, which reads other engines' records.
        unfinished: Returns the slots of the unfinished runs in memory.
        buffer: The watcher's buffer size.
    """

    def __init__(self, watchers: Watchers, watcher: Watcher, store: EngineStore,
                 sharing: SharedStore, unfinished: Callable[[], list[RunSlot]],
                 buffer: int) -> None:
        self._watchers = watchers
        self._watcher = watcher
        self._store = store
        self._sharing = sharing
        self._unfinished = unfinished
        self._buffer = buffer
        self._limit = RECORDS_PER_UPDATE * buffer
        self._pending: deque[RunUpdate] = deque()
        self._marks = Marks({}, 0, -1, datetime.min.replace(tzinfo=UTC))  # `start` reads them
        self._covered: dict[str, int] = {}  # the snapshots' runs: their `seq`
        self._next_look = 0.0
        self._last = -1  # the newest `seq` yielded

    async def start(self) -> None:
        """Register, mark where other engines' records stand, queue the snapshots.

        Registered first, so that the engine closing meanwhile ends the watch. The
        marks come before the snapshots: another engine's record committed in
        between is in a snapshot or read by the first look.
        """
        self._watchers.add(self._watcher)
        self._marks = await in_thread(self._sharing.watch_marks)
        self._watcher.check_open()
        self._watcher.drain()  # the watch starts at the snapshots, which show all that
        self._reset()
        await self._snapshot()

    async def next(self) -> RunUpdate:
        """Return the next update, looking at the store every `poll_interval`.

        Raises:
            EngineClosed: The engine closed.
        """
        while True:
            if self._pending:
                return self._yielded(self._pending.popleft())
            if trio.current_time() >= self._next_look:
                await self._look([])
                continue
            taken, update = False, None
            with trio.move_on_at(self._next_look):
                update = await self._watcher.take()
                taken = True
            if not taken:
                continue
            if update is None:
                await self._fell_behind(self._reset())
            elif self._unknown_block(update):
                await self._look([update])
            elif self._new(update):
                return self._yielded(update)

    async def _look(self, local: list[RunUpdate]) -> None:
        """Read other engines' new records; queue them with `local` and the buffered."""
        polled: list[RunUpdate] = []
        for _ in range(LOOKS_IN_A_ROW):
            self._watcher.check_open()
            news = await in_thread(self._sharing.records_after, self._marks,
                                   self._watcher.workflow, self._limit + 1)
            self._watcher.check_open()
            self._marks = news.marks
            fits = news.complete and len(news.records) <= self._limit
            if fits:
                polled += await self._updates(news.records)
            local += self._watcher.drain()
            if not fits or self._watcher.missed or len(polled) + len(local) > self._buffer:
                found = max(len(news.records), len(polled))
                await self._fell_behind(found + len(local) + self._reset())
                return
            # An event of this engine in a block numbered since: it may have claimed
            # the run, whose former engine's last records the look may have missed.
            if not any(self._unknown_block(update) for update in local):
                break
        merged = sorted([*local, *polled], key=lambda update: update.seq)
        self._pending.extend(update for update in merged if self._new(update))
        self._covered.clear()  # every record a snapshot covers was committed before now
        self._next_look = trio.current_time() + self._sharing.options.poll_interval

    async def _updates(self, records: list[Record]) -> list[RunUpdate]:
        """Turn other engines' new records into the updates the watcher wants."""
        chosen: dict[str, set[int]] = {}
        for record in records:
            chosen.setdefault(record.run_id, set()).add(record.seq)
        if not chosen:
            return []
        histories = await in_thread(self._sharing.histories, list(chosen))
        updates: list[RunUpdate] = []
        for run_id, seqs in chosen.items():
            history = histories.get(run_id)  # none: purged since
            slot = RunSlot.folded(history, self._store.path, 0) if history else None
            if slot is None or history is None:
                continue
            updates += [update for update in events_of(slot, history, seqs.__contains__)
                        if update.info is not None and self._watcher.wants(update.info)]
        return updates

    async def _fell_behind(self, missed: int) -> None:
        """Queue a ``missed`` update, then fresh snapshots."""
        self._pending.append(RunUpdate("missed", "", None, self._last, missed=missed))
        await self._snapshot()

    async def _snapshot(self) -> None:
        """Queue a snapshot of each unfinished run: this engine's, then the others'."""
        # This engine's runs as they are now, before anything else commits.
        updates = [snapshot(slot) for slot in self._unfinished() if slot.durable]
        self._covered = {update.run_id: update.seq for update in updates}
        rows = await in_thread(self._sharing.unfinished_runs, list(self._covered))
        self._watcher.check_open()
        for row in rows:
            if RunState(row.state) not in FINISHED:
                updates.append(snapshot(RunSlot.restored(row)))
                self._covered[row.run_id] = row.last_seq
        self._pending.extend(update for update in updates
                             if update.info is not None and self._watcher.wants(update.info))
        self._next_look = trio.current_time()  # at once: it drops what they cover

    def _reset(self) -> int:
        """Forget what the watcher dropped; return how much."""
        missed, self._watcher.missed = self._watcher.missed, 0
        return missed

    def _unknown_block(self, update: RunUpdate) -> bool:
        """Whether `update` is an event of this engine numbered after the last look."""
        return update.kind == "event" and update.seq > self._marks.own + SEQ_BLOCK

    def _new(self, update: RunUpdate) -> bool:
        """Whether `update` is not covered by a snapshot already queued."""
        return update.kind != "event" or update.seq > self._covered.get(update.run_id, -1)

    def _yielded(self, update: RunUpdate) -> RunUpdate:
        if update.kind != "progress":
            self._last = max(self._last, update.seq)
        return update
