"""`Watch`: the async iterator of one watcher (`Run.watch`, `Engine.watch`).

A run's watch yields a snapshot (or, given `after_seq`, the recorded events after it),
then every update as it commits, and stops after the update that finishes the run.
An engine-wide watch yields a snapshot of each unfinished run, then every update of
every run that matches its filter, until it is closed; on a shared store it sees the
runs other engines execute too (`Feed`). A watcher that fell behind gets a snapshot
saying how many updates it missed (an engine-wide one, a ``missed`` update and a
snapshot of each unfinished run), then goes on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Collection
from types import TracebackType

import trio

from replay._engine._feed import Feed
from replay._engine._slots import RunSlot
from replay._engine._watching import (
    Watcher,
    Watchers,
    ends_watch,
    history_after,
    snapshot,
)
from replay._store import EngineStore, SharedStore
from replay._types import FINISHED, RunState, RunUpdate


class Watch:
    """Updates of one run, or of every run, as they commit; see `Run.watch`.

    Use it as ``async for update in watch`` (it stops by itself when a watched run
    finishes), or as ``async with run.watch() as updates:`` to stop watching early.
    """

    def __init__(self, watchers: Watchers, store: EngineStore, *, run_id: str | None,
                 find: Callable[[], Awaitable[RunSlot]] | None = None,
                 unfinished: Callable[[], list[RunSlot]] | None = None,
                 after_seq: int | None = None, buffer: int, workflow: str | None = None,
                 states: Collection[RunState] | None = None,
                 elsewhere: Callable[[], Awaitable[RunSlot | None]] | None = None,
                 poll_interval: float = 1.0, sharing: SharedStore | None = None) -> None:
        self._watchers = watchers
        # On a shared store: the run as the store has it while another engine holds
        # it (None while this one does); its new events are read every poll_interval.
        self._elsewhere = elsewhere
        self._poll_interval = poll_interval
        self._store = store
        self._find = find
        self._slot: RunSlot | None = None
        self._unfinished = unfinished
        self._after_seq = after_seq
        self._watcher = Watcher(buffer, run_id, workflow, states)
        self._pending: deque[RunUpdate] = deque()
        self._started = False
        self._done = False
        self._last = -1  # the newest event's seq yielded: live copies of older ones are skipped
        # An engine-wide watch on a shared store: other engines' runs too.
        self._feed = None if sharing is None or run_id is not None or unfinished is None \
            else Feed(watchers, self._watcher, store, sharing, unfinished, buffer)

    def __aiter__(self) -> Watch:
        return self

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop watching (a watch that ended on its own needs no closing)."""
        self._finish()

    async def __anext__(self) -> RunUpdate:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._feed is not None:
                if not self._started:
                    self._started = True
                    await self._feed.start()
                return await self._feed.next()
            if not self._started:
                await self._start()
            while True:
                update = self._pending.popleft() if self._pending else await self._next_live()
                if update.kind == "event" and update.seq <= self._last:
                    continue  # already yielded from the file
                if update.kind != "progress":
                    self._last = max(self._last, update.seq)
                if (self._watcher.run_id is not None and ends_watch(update)
                        and self._is_last(update)):
                    self._finish()
                return update
        except BaseException:
            self._finish()
            raise

    def _is_last(self, update: RunUpdate) -> bool:
        """Whether a finishing `update` is still the run's newest (no resume followed it).

        A reconnect with `after_seq` replays events from the file: a ``run/failed``
        there may have been followed by a resume, whose events come next.
        """
        return update.kind != "event" or self._slot is None or update.seq >= self._slot.seq

    async def _start(self) -> None:
        """Register first, then read the start: nothing committed in between is lost."""
        self._started = True
        if self._find is not None:
            self._slot = await self._find()  # RunNotFound, before anything is registered
        self._watchers.add(self._watcher)
        if self._slot is None:
            self._pending.extend(self._snapshots())
        elif self._after_seq is None:
            self._pending.append(snapshot(self._slot))
        else:
            self._last = self._after_seq
            self._pending.extend(await history_after(self._store, self._slot, self._after_seq))
            if not self._pending and self._slot.state in FINISHED:
                self._pending.append(snapshot(self._slot))

    async def _next_live(self) -> RunUpdate:
        while self._elsewhere is not None and self._slot is not None:
            with trio.move_on_after(self._poll_interval):
                return await self._take()
            slot = await self._elsewhere()
            if slot is not None:  # another engine's run: its new events, from the store
                self._slot = slot
                updates = await history_after(self._store, slot, self._last)
                if updates:
                    self._pending.extend(updates[1:])
                    return updates[0]
        return await self._take()

    async def _take(self) -> RunUpdate:
        update = await self._watcher.take()
        if update is not None:
            return update
        missed, self._watcher.missed = self._watcher.missed, 0
        if self._slot is not None:
            return snapshot(self._slot, missed)
        self._pending.extend(self._snapshots())
        return RunUpdate("missed", "", None, self._last, missed=missed)

    def _snapshots(self) -> list[RunUpdate]:
        assert self._unfinished is not None
        updates = [snapshot(slot) for slot in self._unfinished() if slot.durable]
        return [update for update in updates
                if update.info is not None and self._watcher.wants(update.info)]

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._watchers.remove(self._watcher)


def checked_buffer(buffer: object) -> int:
    """Return a watcher's buffer size, checked.

    Raises:
        TypeError: It is not an int.
        ValueError: It is below 1.
    """
    if not isinstance(buffer, int) or isinstance(buffer, bool):
        raise TypeError(f"buffer must be an int, got {buffer!r} ({type(buffer).__name__})")
    if buffer < 1:
        raise ValueError(f"buffer must be at least 1, got {buffer}")
    return buffer

