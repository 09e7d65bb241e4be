"""Watching runs: every committed change, in order, to whoever asked.

`Watchers` is told of each record as it commits (`RunSlot.apply`, in `seq` order) and
of each progress value a running step publishes; it hands an update to every watcher
of that run and to every engine-wide watcher whose filter matches. A watcher keeps a
bounded buffer: one that falls behind loses what it has not read, is told how many
updates it missed, and gets a fresh snapshot, so it never silently misses a change.
With no watcher, publishing costs one attribute check per record.

`Watch` is the async iterator the user holds (`Run.watch`, `Engine.watch`). A run's
watch starts with a snapshot (or, given `after_seq`, with the recorded events after
that one, read from the file) and ends after the event that finishes the run.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

import trio

from replay._codec import decode
from replay._codec._export import event_of
from replay._core._records import Record
from replay._core._state import RunStatus
from replay._engine._clock import in_thread
from replay._engine._slots import RunSlot
from replay._errors import EngineClosed
from replay._store import EngineStore
from replay._types import FINISHED, RunInfo, RunState, RunUpdate

DEFAULT_BUFFER = 1000


class Watcher:
    """One watcher's buffer of updates not read yet.

    Args:
        buffer: How many unread updates it keeps before it falls behind.
        run_id: The run it watches, or None for every run.
        workflow: Only runs of this workflow (engine-wide watchers).
        states: Only updates that leave a run in one of these states.
    """

    def __init__(self, buffer: int, run_id: str | None = None, workflow: str | None = None,
                 states: Collection[RunState] | None = None) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.states = None if states is None else frozenset(states)
        self._buffer = buffer
        self._updates: deque[RunUpdate] = deque()
        self.missed = 0  # updates dropped since the watcher fell behind
        self._ready = trio.Event()
        self.closed = False

    def wants(self, info: RunInfo) -> bool:
        """Whether an update leaving the run as `info` matches this watcher's filter."""
        return ((self.workflow is None or info.workflow == self.workflow)
                and (self.states is None or info.state in self.states))

    def offer(self, update: RunUpdate) -> None:
        """Buffer `update`; past the buffer, drop everything unread and count it."""
        if self.missed or len(self._updates) >= self._buffer:
            self.missed += len(self._updates) + 1
            self._updates.clear()
        else:
            self._updates.append(update)
        self._ready.set()

    def close(self) -> None:
        """The engine closed: wake the reader, who gets `EngineClosed`."""
        self.closed = True
        self._ready.set()

    def check_open(self) -> None:
        """Raise `EngineClosed` if the engine closed.

        Raises:
            EngineClosed: It did.
        """
        if self.closed:
            raise EngineClosed("the engine closed while a watcher waited for updates; "
                               "watch again once an engine opens the database")

    def drain(self) -> list[RunUpdate]:
        """Return every buffered update at once (none if it fell behind: see `missed`)."""
        if self.missed:
            return []
        updates = list(self._updates)
        self._updates.clear()
        return updates

    async def take(self) -> RunUpdate | None:
        """Return the next update, or None if the watcher fell behind (see `missed`).

        Raises:
            EngineClosed: The engine closed.
        """
        while not self._updates and not self.missed:
            self.check_open()
            self._ready = trio.Event()
            await self._ready.wait()
        if self.missed:
            return None
        return self._updates.popleft()


class Watchers:
    """Every watcher of one engine, told of each committed record and progress value."""

    def __init__(self) -> None:
        self._by_run: dict[str, weakref.WeakSet[Watcher]] = {}
        self._everything: weakref.WeakSet[Watcher] = weakref.WeakSet()
        self.active = False  # whether anyone watches: checked on every commit

    def add(self, watcher: Watcher) -> Watcher:
        """Start telling `watcher` of updates."""
        if watcher.run_id is None:
            self._everything.add(watcher)
        else:
            self._by_run.setdefault(watcher.run_id, weakref.WeakSet()).add(watcher)
        self.active = True
        return watcher

    def remove(self, watcher: Watcher) -> None:
        """Stop telling `watcher` of updates."""
        if watcher.run_id is None:
            self._everything.discard(watcher)
        else:
            watchers = self._by_run.get(watcher.run_id)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._by_run[watcher.run_id]
        self.active = bool(self._by_run or self._everything)

    def close(self) -> None:
        """The engine closed: every watcher's reader gets `EngineClosed`."""
        for watchers in [*self._by_run.values(), self._everything]:
            for watcher in list(watchers):
                watcher.close()

    def published(self, slot: RunSlot, record: Record) -> None:
        """Tell the watchers of `slot`'s run (and everyone's) of its committed `record`."""
        targets = self._targets(slot.run_id)
        if not targets:
            return
        info = slot.info(decode)
        event = event_of(record) if record.value is None else _event_or_raw(record)
        update = RunUpdate("event", slot.run_id, info, record.seq, event=event)
        for watcher in targets:
            if watcher.run_id is not None or watcher.wants(info):
                watcher.offer(update)

    def progress(self, slot: RunSlot, key: str, value: Any) -> None:
        """Tell the watchers of `slot`'s run of a value a running step published."""
        targets = self._targets(slot.run_id)
        if not targets:
            return
        info = slot.info(decode)
        update = RunUpdate("progress", slot.run_id, info, slot.seq, progress=value, key=key)
        for watcher in targets:
            if watcher.run_id is not None or watcher.wants(info):
                watcher.offer(update)

    def _targets(self, run_id: str) -> list[Watcher]:
        watchers = self._by_run.get(run_id)
        found = [] if watchers is None else list(watchers)
        found.extend(self._everything)
        return found


def _event_or_raw(record: Record) -> Any:
    """The public event of `record`; a value this process cannot decode stays None."""
    try:
        return event_of(record)
    except Exception:  # a hostile or unregistered value: the event still counts
        return event_of(dataclasses.replace(record, value=None))


def snapshot(slot: RunSlot, missed: int = 0) -> RunUpdate:
    """Return the run as it is now, as an update."""
    return RunUpdate("snapshot", slot.run_id, slot.info(decode), slot.seq, missed=missed)


async def history_after(store: EngineStore, slot: RunSlot, after_seq: int) -> list[RunUpdate]:
    """Return the run's recorded events after `after_seq`, each with the state it left.

    Read from the file (records commit before they are published, so nothing after
    this read is missed by a watcher that was added before it).
    """
    records = await in_thread(store.load_history, slot.run_id)
    return events_of(slot, records, lambda seq: seq > after_seq)


def events_of(slot: RunSlot, records: list[Record],
              chosen: Callable[[int], bool]) -> list[RunUpdate]:
    """Return the events of a run's `records` whose `seq` is `chosen`, in order.

    `records` are all the run's records, in `seq` order: each event carries the
    state the run was in once it was recorded.
    """
    status = RunStatus(RunState.RUNNING)
    updates = []
    for record in records:
        status = status.after(record)
        if chosen(record.seq):
            info = slot.info(decode, status, record.recorded_at)
            updates.append(RunUpdate("event", slot.run_id, info, record.seq,
                                     event=_event_or_raw(record)))
    return updates


def ends_watch(update: RunUpdate) -> bool:
    """Whether `update` is the last a run's watcher gets (the run finished)."""
    return update.info is not None and update.info.state in FINISHED and update.kind != "progress"


Condition = Callable[[RunInfo], bool]
