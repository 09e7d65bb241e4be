"""The scheduler: the one owner of every run's ownership and state.

Each run has a `RunSlot`. The scheduler alone claims a run for a task (`active`),
spawns its task, parks it (its machine kept in a bounded cache, its deadline with the
timers), wakes it (a timer, a signal, `resume`) and lets it go when the task ends:
one run executes in one place at a time. A run's state changes only as its records
commit (`RunSlot.apply`), in the order of the file. The scheduler's `RunTasks`
(`_tasks`) claim, spawn, wake and let go, and hold the parked runs' machines and
wake-ups; the scheduler itself starts runs, commits for a run's neighbours and waits
for runs to settle.

Three helpers act through it: `Recovery` (`_recovery`) picks runs up from the file (at
open, and on `resume`), `Deliveries` (`_deliveries`) brings what comes from outside a
run (signals, cancellations, terminations, deadlines), and `Family` (`_family`) starts
child runs with their parents' records and ends them with their parents' records of
the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import trio

from replay._codec import decode
from replay._core._decisions import Policy
from replay._core._history import RunHistory
from replay._core._records import Encoded, Record, Run
from replay._core._state import RunStatus
from replay._engine._clock import EngineClock
from replay._engine._committer import Committer, ThreadCommit, trio_is_guest
from replay._engine._deliveries import Deliveries
from replay._engine._driver import Driver
from replay._engine._family import Family
from replay._engine._recovery import Recovery
from replay._engine._runs import RunTable
from replay._engine._slots import RunSlot
from replay._engine._steps import StepCaller
from replay._engine._tasks import RunTasks
from replay._engine._timers import Timers
from replay._engine._watching import Watchers
from replay._errors import EngineClosed
from replay._store import EngineStore
from replay._types import RunInfo, RunState
from replay._workflows import Registry


class Scheduler:
    """Owns the runs of one engine.

    Args:
        store: The open database.
        registry: The workflows this engine runs.
        clock: The engine clock.
        committer: The group-commit flusher.
        steps: Calls step functions.
        policy: The engine-wide retry and interruption rules.
        cache_size: How many parked machines to keep.
        strict_replay: Check on every wake-up that a replay reaches where it stopped.
        opened_at: The newest `seq` in the file when the engine opened it.
    """

    def __init__(self, store: EngineStore, registry: Registry, clock: EngineClock,
                 committer: Committer, steps: StepCaller, policy: Policy, cache_size: int,
                 strict_replay: bool, opened_at: int) -> None:
        self.clock = clock
        self._store = store
        self._registry = registry
        self._committer = committer
        self._policy = policy
        self.watchers = Watchers()
        self.runs = RunTable(store, opened_at, self.watchers)
        self.family = Family(self)
        self._deliveries = Deliveries(self)
        self._deadlines = Timers(clock, self._deliveries.on_deadline)  # runs' own deadlines
        self._steps = steps
        driver = Driver(self.enqueue, self.enqueue_all, clock, steps,
                        lambda: self.closing, self.family, self.hand_over)
        self.tasks = RunTasks(store, registry, clock, self.runs, driver, steps, policy,
                              cache_size, strict_replay, lambda: self.closing)
        self.recovery = Recovery(store, registry, self.runs, self.tasks, self._deadlines,
                                 self.enqueue)
        self.closing = False
        self.closed = False
        # A store of its own can commit on any thread: a lone run's worker threads too.
        self._hands_over = store.sharing is None
        if store.sharing is None and not trio_is_guest():
            committer.alone = self._alone
            committer.thread_calls = lambda: steps.thread_calls

    def _alone(self) -> bool:
        """Whether one run executes, with no task waiting for the loop."""
        return (self.tasks.executing <= 1
                and trio.lowlevel.current_statistics().tasks_runnable == 0)

    def slot(self, run_id: str) -> RunSlot:
        """Return the run's slot (see `RunTable.slot`).

        Raises:
            RunNotFound: No such run.
            EngineClosed: The run must be read from the file, which is closed.
        """
        return self.runs.slot(run_id, self.closed)

    # -- the engine's life --

    async def start_services(self, services: trio.Nursery) -> None:
        """Start the group-commit flusher and the timers in `services`."""
        await services.start(self._committer.run)
        await services.start(self.tasks.loader.run)
        await services.start(self.tasks.timers.run)
        await services.start(self._deadlines.run)

    def begin_shutdown(self) -> None:
        """Start no new command (parked runs hold no task and simply stay parked)."""
        self.closing = True

    def runs_ended(self) -> None:
        """Every run's task has ended: the committer may commit what is left and stop."""
        self._committer.runs_ended()

    def mark_closed(self) -> None:
        """The engine is closed: drop parked machines and wake every waiter."""
        self.closed = True
        self.tasks.parked.clear()
        self.watchers.close()
        for slot in self.runs.live.values():
            slot.notify()

    def check_open(self, allow_closing: bool = False) -> None:
        """Raise `EngineClosed` if the engine is closed (or closing, unless allowed).

        Raises:
            EngineClosed: It is.
        """
        if self.closed or (self.closing and not allow_closing):
            raise EngineClosed("the engine is closed; open a new one with replay.open_engine()")

    # -- what the engine's API asks --

    async def start(self, run_id: str, workflow: str, arguments: Encoded,
                    deadline: datetime | None = None) -> None:
        """Record a new run's start and spawn its task.

        Raises:
            Exception: Whatever the commit raised; nothing is kept of the run then.
        """
        slot = self.new_slot(run_id, workflow)
        record = Run(run_id, workflow).started(arguments, deadline=deadline,
                                               code_version=self.code_version)
        sharing = self._store.sharing
        free = sharing is not None and not sharing.has_room(self.tasks.executing)
        if free:
            sharing.leave_free(run_id)  # type: ignore[union-attr]
        try:
            await self._committer.commit(record, slot.apply)
        except BaseException:
            self.runs.live.pop(run_id, None)
            raise
        finally:
            if free:  # another engine (or this one, when it has room) claims it
                self.runs.live.pop(run_id, None)
                self.tasks.unclaim(slot)
        if free:
            return
        slot.created_at = record.recorded_at or slot.created_at
        slot.mark_durable()
        if deadline is not None:
            self._deadlines.add(run_id, deadline)
        self.spawn_new(slot, arguments.data)

    def new_slot(self, run_id: str, workflow: str) -> RunSlot:
        """Add a new run's slot, claimed (its start is about to be committed)."""
        slot = RunSlot(run_id, workflow, RunStatus(RunState.RUNNING), self.clock.now())
        self.tasks.claim(slot)
        slot.needs_start_mark = False  # no earlier process ran it
        return self.runs.add(slot)

    @property
    def code_version(self) -> str | None:
        """The version of the code this engine runs (stamped on each run's start)."""
        return self._policy.code_version

    def spawn_new(self, slot: RunSlot, arguments: bytes) -> None:
        """Spawn the task of a run whose start is durable."""
        history = RunHistory()
        history.code_version = self.code_version  # as its run/started record says
        self.tasks.spawn(slot, self.tasks.machine(slot, history, arguments))

    async def signal(self, slot: RunSlot, key: str, payload: Encoded) -> None:
        """Commit a signal into the run's mailbox, waking the run if it waits for it.

        Raises:
            SignalRejected: The run may not take it.
        """
        await self._deliveries.signal(slot, key, payload)

    def parked_on(self, slot: RunSlot, key: str, history: RunHistory) -> bool:
        """Whether the run is parked waiting for `key`'s outcome (a signal, a child's end)."""
        return self.parkable(slot) and history.awaits(key)

    def parkable(self, slot: RunSlot) -> bool:
        """Whether the run is parked for something from outside and this engine runs it."""
        return (slot.state is RunState.SUSPENDED and not slot.active
                and slot.workflow in self._registry.functions)

    async def mailbox(self, slot: RunSlot) -> RunHistory:
        """The run's memo, for deciding about an outcome from outside (under its lock)."""
        if slot.machine is not None:
            return slot.machine.history
        return await self.tasks.load(slot)

    async def cancel(self, slot: RunSlot, reason: Encoded) -> bool:
        """Record the run's cancellation, waking it if it is parked (see `Deliveries`).

        Returns:
            False if its cancellation was requested before (nothing is recorded).

        Raises:
            RunFinished: The run is finished.
        """
        return await self._deliveries.cancel(slot, reason)

    async def terminate(self, slot: RunSlot, reason: Encoded) -> None:
        """End the run ``cancelled`` at once (see `Deliveries`).

        Raises:
            RunFinished: The run is finished.
        """
        await self._deliveries.terminate(slot, reason)

    def parked_here(self, slot: RunSlot) -> bool:
        """Whether the run is parked, no task owns it, and this engine can run it."""
        return (slot.status.waiting and not slot.active and not self.closing
                and slot.workflow in self._registry.functions)

    async def wait_for(self, run_id: str, states: frozenset[RunState]) -> RunInfo:
        """Wait until the run is in one of `states` and settled there.

        Raises:
            RunNotFound: No such run.
            EngineClosed: The engine closed first.
        """
        slot = self.runs.slot(run_id, self.closed)
        # A suspended run that is executing (replaying after `resume`) has not settled.
        while slot.state not in states or (slot.active and slot.state is RunState.SUSPENDED):
            if self.closed:
                raise EngineClosed(
                    f"the engine closed while waiting for run {run_id!r}; it continues "
                    "when an engine opens the database again")
            sharing = self._store.sharing
            if sharing is not None and self.runs.find(run_id) is not slot:
                # Another engine executes it: look at the store again a while later.
                await trio.sleep(sharing.options.poll_interval)
                slot = (self.runs.find(run_id) or await self.runs.elsewhere(run_id)
                        or slot)
                continue
            await slot.wait_changed()
        return slot.info(decode)

    async def wait_idle(self, run_id: str) -> RunInfo:
        """Wait until the run's task has let go (it ended or parked).

        Raises:
            RunNotFound: No such run.
        """
        slot = self.runs.slot(run_id, self.closed)
        while slot.active and not self.closed:
            await slot.wait_changed()
        return slot.info(decode)

    def publish_progress(self, run_id: str, key: str, value: Any) -> None:
        """Tell the run's watchers of a value its running step published (not recorded)."""
        slot = self.runs.find(run_id)
        if slot is not None and self.watchers.active:
            self.watchers.progress(slot, key, value)

    @property
    def store(self) -> EngineStore:
        """The open database."""
        return self._store

    def trio_deadline(self, moment: datetime) -> float:
        """Return the trio clock reading at which the engine clock reads `moment`."""
        return self.clock.trio_deadline(moment)

    # -- committing for the run's neighbours (children and parents) --

    def enqueue(self, slot: RunSlot, record: Record) -> trio.Event:
        """Queue `record` for the next group commit (applied to `slot` once durable)."""
        return self._committer.enqueue(record, slot.apply)

    def enqueue_all(self, slot: RunSlot, records: Sequence[Record],
                    ride: bool = False) -> trio.Event:
        """Queue `records` of `slot`'s run, in order, for the next group commit.

        `ride`: for the next commit someone waits for (see `Committer.enqueue_all`).
        """
        return self._committer.enqueue_all(records, slot.apply, ride)

    def hand_over(self, slot: RunSlot, records: Sequence[Record]) -> ThreadCommit | None:
        """Give `records` of `slot`'s run to the worker thread of its next sync step.

        None: not now (see `Committer.hand_over`); commit them the usual way. Only for
        a run executing alone (runs executing together share the writer's batches),
        and only if a thread is free: every commit waits for a handed batch, so it must
        not wait for a thread (abandoned attempts may hold all of them).
        """
        if not self._hands_over or self.tasks.executing > 1 or not self._steps.has_idle_thread():
            return None
        return self._committer.hand_over(records, slot.apply)

    @property
    def committer(self) -> Committer:
        """The group-commit flusher."""
        return self._committer

    async def commit(self, slot: RunSlot, records: Sequence[Record]) -> None:
        """Make `records` of `slot`'s run durable, in order."""
        durable = None
        for record in records:
            durable = self.enqueue(slot, record)
        if durable is not None:
            await durable.wait()

    async def commit_together(self, slot: RunSlot, records: Sequence[Record], other: RunSlot,
                              record: Record, wakes: bool, *, recheck: bool = False) -> None:
        """Commit `records` and `other`'s `record` in one batch; then wake `other` if `wakes`.

        Under `other`'s lock: claimed before the commit, so no timer or resume starts it
        meanwhile. `recheck`: see `durable_together`.
        """
        durable = self.enqueue_together(slot, records, other, record, wakes)
        await self.durable_together(durable, other, wakes, recheck=recheck)

    def enqueue_together(self, slot: RunSlot, records: Sequence[Record], other: RunSlot,
                         record: Record, wakes: bool) -> trio.Event:
        """Queue `records` and `other`'s `record` for one batch (claiming `other` if `wakes`).

        Called under `other`'s lock; `durable_together` waits for the batch.
        """
        if wakes:
            self.tasks.claim(other)
        for mine in records:
            self.enqueue(slot, mine)
        return self.enqueue(other, record)

    async def durable_together(self, durable: trio.Event, other: RunSlot, wakes: bool, *,
                               recheck: bool = False) -> None:
        """Wait for a batch from `enqueue_together`; then wake `other` if it was claimed.

        With `recheck`, `other` is also woken if it parked while the batch was in flight
        (a decision made without its lock): its record then said nothing about the run's
        state, and the parked run holds it in its mailbox.
        """
        try:
            await durable.wait()
        except BaseException:
            if wakes:
                self.tasks.unclaim(other)
            raise
        if wakes or (recheck and self.parked_here(other)):
            self.tasks.wake(other)


