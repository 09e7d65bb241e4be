"""Runs that continue from their records in the file: at open, and on `resume`.

At open (`recover`) the engine holds every unfinished run in the file (on a shared
store: the runs it claimed; `take` holds those it claims later too), and each goes on
where it stands: a running run, or a parked one with news in its mailbox (a signal, a
child's end, a cancellation), gets its task at once; any other parked run waits for its
timer or a signal, and its history is read when it wakes. `resume` records a resume of
a run and replays it from the top in a task of its own; a failed child whose failure a
parent's resume voids is resumed too.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from replay._codec import CODEC
from replay._core._history import RunHistory, child_run_id
from replay._core._records import Record, Run, started_record
from replay._core._resume import resumed_record
from replay._core._signals import news_for_parked
from replay._core._state import RunStatus
from replay._engine._clock import in_thread
from replay._engine._rounds import Enqueue
from replay._engine._runs import RunTable
from replay._engine._slots import RunSlot
from replay._engine._tasks import RunTasks
from replay._engine._timers import Timers
from replay._engine._tuning import no_collection
from replay._errors import ReplayError
from replay._store import EngineStore, ParkedRow, from_epoch_us
from replay._types import RunState
from replay._workflows import Registry

log = logging.getLogger("replay")


class Recovery:
    """Picks runs up from the file for the scheduler: at open, and on `resume`.

    Args:
        store: The open database.
        registry: The workflows this engine runs.
        runs: The runs held in memory.
        tasks: The runs' tasks.
        deadlines: The runs' own deadlines (`start(..., timeout=)`).
        enqueue: Queues a run's record for the next group commit.
    """

    def __init__(self, store: EngineStore, registry: Registry, runs: RunTable,
                 tasks: RunTasks, deadlines: Timers, enqueue: Enqueue) -> None:
        self._store = store
        self._registry = registry
        self._runs = runs
        self._tasks = tasks
        self._deadlines = deadlines
        self._enqueue = enqueue

    async def recover(self, runs: trio.Nursery) -> None:
        """Load every unfinished run and pick up whatever was pending, in `runs`.

        On a shared store: the runs this engine claimed as it opened.
        """
        self._tasks.spawn_in(runs)
        with no_collection():
            opened = await in_thread(self._store.load_open_runs)
            self.take(opened.records, self._runs.opened_at)
            self.take_parked(opened.parked, self._runs.opened_at)

    def take(self, runs: list[list[Record]], opened_at: int) -> None:
        """Hold unfinished runs read from the store (`runs`: records per run), and go on.

        Each continues where it stands: running ones at once, parked ones when their
        deadline or a signal in their mailbox says. `opened_at` is a `seq` above each
        of their records (a run started at or below it had an earlier process).
        """
        for records in runs:
            folded = RunSlot.folded(records, self._store.path, opened_at)
            if folded is None:
                continue
            slot = self._runs.add(folded)
            if slot.status.finished:
                continue  # damaged: failed with the reason, and left alone
            if not self._registered(slot):
                continue
            history = RunHistory(records)
            started = started_record(records)
            if started is not None and started.wake_at is not None:
                self._deadlines.add(slot.run_id, started.wake_at)
            if slot.state is RunState.RUNNING or news_for_parked(slot.status, history, records):
                self._tasks.claim(slot)
                self._tasks.spawn(slot, self._tasks.machine(slot, history))
            elif slot.status.wake_at is not None:
                self._tasks.timers.add(slot.run_id, slot.status.wake_at)

    def take_parked(self, rows: list[ParkedRow], opened_at: int) -> None:
        """Hold quiet parked runs read from the store (`rows`: their state).

        Nothing they must wake for is recorded, so they wait for their deadline or
        a signal; their histories are read when they wake, as an evicted run's are.
        """
        statuses: dict[tuple[Any, ...], RunStatus] = {}
        add, registered = self._runs.add, self._registry.functions
        for row in rows:  # written tight: an open may hold 100,000 of them
            slot = add(RunSlot.parked(row, opened_at, statuses))
            if slot.workflow not in registered:
                self._registered(slot)  # says why it is left as it is
                continue
            deadline = from_epoch_us(row[15])
            if deadline is not None:
                self._deadlines.add(slot.run_id, deadline)
            if slot.status.wake_at is not None:
                self._tasks.timers.add(slot.run_id, slot.status.wake_at)

    def _registered(self, slot: RunSlot) -> bool:
        if slot.workflow in self._registry.functions:
            return True
        log.warning("run %r of workflow %r is left as it is: the workflow is not "
                    "registered with this engine", slot.run_id, slot.workflow)
        return False

    async def resume(self, slot: RunSlot) -> None:
        """Record a resume of the run and replay it (a completed or busy run: nothing)."""
        await self._tasks.let_go(slot)
        if slot.state is RunState.COMPLETED or slot.active:
            self._runs.forget_if_idle(slot)
            return
        self._runs.keep(slot)  # its task may have let it go to the finished ones meanwhile
        self._tasks.claim(slot)
        self._tasks.parked.drop(slot.run_id)
        try:
            async with slot.lock:  # no signal may commit between the load and the machine
                history = await self._tasks.load(slot)
                resumed = resumed_record(Run(slot.run_id, slot.workflow), slot.status,
                                         history, CODEC)
                # The replay sees it at once and runs while it commits (they share a
                # group commit); it is durable before anything the replay records.
                history.apply(resumed)
                durable = self._enqueue(slot, resumed)
                machine = self._tasks.machine(slot, history)
        except BaseException:
            self._tasks.unclaim(slot)
            self._runs.forget_if_idle(slot)
            raise
        self._tasks.spawn(slot, machine)
        await durable.wait()
        voided = resumed.name
        if voided is not None and history.get(voided) is not None and \
                history.get(voided).kind == "child":  # type: ignore[union-attr]
            await self._resume_child(child_run_id(slot.run_id, voided, history.generation))

    async def _resume_child(self, run_id: str) -> None:
        """Resume the failed child whose failure a parent's `resume` voided."""
        try:
            child = await self._runs.adopt(run_id)
        except ReplayError:
            return
        if child.state is not RunState.COMPLETED:
            await self.resume(child)
