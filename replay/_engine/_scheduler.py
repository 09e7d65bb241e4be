"""The scheduler: the one owner of every run's ownership and state.

Each run has a `RunSlot`. The scheduler alone claims a run for a task (`active`),
spawns its task, parks it (its machine kept in a bounded cache, its deadline with the
timers), wakes it (a timer, a signal, `resume`) and lets it go when the task ends:
one run executes in one place at a time. A run's state changes only as its records
commit (`RunSlot.apply`), in the order of the file.

A parked run holds no task: at most its paused machine in `ParkedCache`. Waking a
cached machine continues the same generator; an evicted one is loaded from the file
and replayed from the top, which gives the same result because every recorded outcome
is sent back again.

Two helpers act through it: `Deliveries` (`_deliveries`) brings what comes from outside
a run (signals, cancellations, terminations, deadlines), and `Family` (`_family`)
starts child runs with their parents' records and ends them with their parents'
records of the end.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import trio

from replay._codec import CODEC, decode
from replay._core._decisions import Policy
from replay._core._history import RunHistory, child_run_id
from replay._core._machine import RunMachine
from replay._core._records import Encoded, Record, Run, started_record
from replay._core._resume import resumed_record
from replay._core._signals import news_for_parked
from replay._core._state import RunStatus
from replay._engine._clock import EngineClock, in_thread
from replay._engine._committer import Committer, ThreadCommit, trio_is_guest
from replay._engine._deliveries import Deliveries
from replay._engine._driver import Driver, Parked
from replay._engine._family import Family
from replay._engine._loading import MemoLoader
from replay._engine._parking import ParkedCache
from replay._engine._runs import RunTable
from replay._engine._slots import RunSlot
from replay._engine._steps import StepCaller
from replay._engine._timers import Timers
from replay._engine._tuning import no_collection
from replay._engine._watching import Watchers
from replay._errors import EngineClosed, ReplayError
from replay._store import EngineStore, ParkedRow, from_epoch_us
from replay._types import RunInfo, RunState
from replay._workflows import Registry

log = logging.getLogger("replay")


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
        self._strict_replay = strict_replay
        self.watchers = Watchers()
        self.runs = RunTable(store, opened_at, self.watchers)
        self.parked = ParkedCache(cache_size, self._evicted)
        self._timers = Timers(clock, self._on_timer)
        self.family = Family(self)
        self._deliveries = Deliveries(self)
        self._deadlines = Timers(clock, self._deliveries.on_deadline)  # runs' own deadlines
        self._steps = steps
        self._loader = MemoLoader(store)
        self._driver = Driver(self.enqueue, self.enqueue_all, clock, steps,
                              lambda: self.closing, self.family, self.hand_over)
        self._nursery: trio.Nursery | None = None
        self.executing = 0  # runs' tasks alive (read by a shared store's thread too)
        self.closing = False
        self.closed = False
        # A store of its own can commit on any thread: a lone run's worker threads too.
        self._hands_over = store.sharing is None
        if store.sharing is None and not trio_is_guest():
            committer.alone = self._alone
            committer.thread_calls = lambda: steps.thread_calls

    def _alone(self) -> bool:
        """Whether one run executes, with no task waiting for the loop."""
        return (self.executing <= 1
                and trio.lowlevel.current_statistics().tasks_runnable == 0)

    def slot(self, run_id: str) -> RunSlot:
        """Return the run's slot (see `RunTable.slot`).

        Raises:
            RunNotFound: No such run.
            EngineClosed: The run must be read from the file, which is closed.
        """
        return self.runs.slot(run_id, self.closed)

    def tasks(self) -> int:
        """Count the runs' tasks alive right now (executing runs)."""
        return 0 if self._nursery is None else len(self._nursery.child_tasks)

    # -- the engine's life --

    async def start_services(self, services: trio.Nursery) -> None:
        """Start the group-commit flusher and the timers in `services`."""
        await services.start(self._committer.run)
        await services.start(self._loader.run)
        await services.start(self._timers.run)
        await services.start(self._deadlines.run)

    async def recover(self, runs: trio.Nursery) -> None:
        """Load every unfinished run and pick up whatever was pending, in `runs`.

        On a shared store: the runs this engine claimed as it opened.
        """
        self._nursery = runs
        with no_collection():
            opened = await in_thread(self._store.load_open_runs)
            self.take(opened.records, self.runs.opened_at)
            self.take_parked(opened.parked, self.runs.opened_at)

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
            slot = self.runs.add(folded)
            if slot.status.finished:
                continue  # damaged: failed with the reason, and left alone
            if not self._registered(slot):
                continue
            history = RunHistory(records)
            started = started_record(records)
            if started is not None and started.wake_at is not None:
                self._deadlines.add(slot.run_id, started.wake_at)
            if slot.state is RunState.RUNNING or news_for_parked(slot.status, history, records):
                self._claim(slot)
                self._spawn(slot, self._machine(slot, history))
            elif slot.status.wake_at is not None:
                self._timers.add(slot.run_id, slot.status.wake_at)

    def take_parked(self, rows: list[ParkedRow], opened_at: int) -> None:
        """Hold quiet parked runs read from the store (`rows`: their state).

        Nothing they must wake for is recorded, so they wait for their deadline or
        a signal; their histories are read when they wake, as an evicted run's are.
        """
        statuses: dict[tuple[Any, ...], RunStatus] = {}
        add, registered = self.runs.add, self._registry.functions
        for row in rows:  # written tight: an open may hold 100,000 of them
            slot = add(RunSlot.parked(row, opened_at, statuses))
            if slot.workflow not in registered:
                self._registered(slot)  # says why it is left as it is
                continue
            deadline = from_epoch_us(row[15])
            if deadline is not None:
                self._deadlines.add(slot.run_id, deadline)
            if slot.status.wake_at is not None:
                self._timers.add(slot.run_id, slot.status.wake_at)

    def _registered(self, slot: RunSlot) -> bool:
        if slot.workflow in self._registry.functions:
            return True
        log.warning("run %r of workflow %r is left as it is: the workflow is not "
                    "registered with this engine", slot.run_id, slot.workflow)
        return False

    def begin_shutdown(self) -> None:
        """Start no new command (parked runs hold no task and simply stay parked)."""
        self.closing = True

    def runs_ended(self) -> None:
        """Every run's task has ended: the committer may commit what is left and stop."""
        self._committer.runs_ended()

    def mark_closed(self) -> None:
        """The engine is closed: drop parked machines and wake every waiter."""
        self.closed = True
        self.parked.clear()
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
        free = sharing is not None and not sharing.has_room(self.executing)
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
                self._unclaim(slot)
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
        self._claim(slot)
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
        self._spawn(slot, self._machine(slot, history, arguments))

    async def resume(self, slot: RunSlot) -> None:
        """Record a resume of the run and replay it (a completed or busy run: nothing)."""
        await self.let_go(slot)
        if slot.state is RunState.COMPLETED or slot.active:
            self.runs.forget_if_idle(slot)
            return
        self.runs.keep(slot)  # its task may have let it go to the finished ones meanwhile
        self._claim(slot)
        self.parked.drop(slot.run_id)
        try:
            async with slot.lock:  # no signal may commit between the load and the machine
                history = await self._load(slot)
                resumed = resumed_record(Run(slot.run_id, slot.workflow), slot.status,
                                         history, CODEC)
                # The replay sees it at once and runs while it commits (they share a
                # group commit); it is durable before anything the replay records.
                history.apply(resumed)
                durable = self.enqueue(slot, resumed)
                machine = self._machine(slot, history)
        except BaseException:
            self._unclaim(slot)
            self.runs.forget_if_idle(slot)
            raise
        self._spawn(slot, machine)
        await durable.wait()
        voided = resumed.name
        if voided is not None and history.get(voided) is not None and \
                history.get(voided).kind == "child":  # type: ignore[union-attr]
            await self._resume_child(child_run_id(slot.run_id, voided, history.generation))

    async def _resume_child(self, run_id: str) -> None:
        """Resume the failed child whose failure a parent's `resume` voided."""
        try:
            child = await self.runs.adopt(run_id)
        except ReplayError:
            return
        if child.state is not RunState.COMPLETED:
            await self.resume(child)

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
        return await self._load(slot)

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

    async def let_go(self, slot: RunSlot) -> None:
        """Wait while the run's task has recorded a park or an end but not let go yet.

        In that window the run's state says it waits (or is finished) while its task
        still owns it; a call that decided from the state then (`resume`: "executing,
        nothing to do"; `signal`: "busy, keep it in the mailbox") would be lost. A run
        that is really executing (woken by a deadline, or replaying after `resume`)
        is not waited for.
        """
        while slot.letting_go:
            await slot.wait_changed()

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
        if not self._hands_over or self.executing > 1 or not self._steps.has_idle_thread():
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
            self._claim(other)
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
                self._unclaim(other)
            raise
        if wakes or (recheck and self.parked_here(other)):
            self._wake(other)

    def in_background(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `function(*args)` in a task of its own (cancelled when the engine stops)."""
        assert self._nursery is not None
        self._nursery.start_soon(function, *args)

    # -- ownership: the only writers of `active` --

    def _claim(self, slot: RunSlot) -> None:
        slot.active = True

    def _unclaim(self, slot: RunSlot) -> None:
        slot.active = False

    # Signals, cancellations and terminations (`_deliveries`) claim through these.
    claim, unclaim = _claim, _unclaim

    def _spawn(self, slot: RunSlot, machine: RunMachine | None, woken: bool = False) -> None:
        assert self._nursery is not None and slot.active
        self.executing += 1
        self._nursery.start_soon(self._execute, slot, machine, woken,
                                 name=f"replay run {slot.run_id}")

    def _wake(self, slot: RunSlot) -> None:
        """Continue a parked run in a new task (its cached machine, if any)."""
        self._claim(slot)
        self._spawn(slot, self.parked.take(slot.run_id), woken=True)

    async def _execute(self, slot: RunSlot, machine: RunMachine | None, woken: bool) -> None:
        """A run's task: drive its machine, then let the run go (parked or ended)."""
        parked: Parked | None = None
        self._steps.publishing()
        try:
            with trio.CancelScope() as slot.task_scope:  # `terminate` cancels it
                if machine is None:
                    machine = await self._loaded(slot, replaying=woken)
                    woken = False  # a loaded machine replays from the top
                parked = await self._driver.drive(slot, machine, woken)
        finally:
            self.executing -= 1
            slot.task_scope = None
            self._release(slot, machine, parked)

    def _release(self, slot: RunSlot, machine: RunMachine | None, parked: Parked | None) -> None:
        slot.active = slot.settling = False
        if parked is not None and machine is not None:
            self.parked.put(slot.run_id, machine)
            if machine.cancel_pending and not self.closing:
                self._wake(slot)  # a cancellation came as it parked: take it now
            elif parked.wake_at is not None:
                self._timers.add(slot.run_id, parked.wake_at)
            slot.drop_idle_lock()
        else:
            if machine is not None:
                machine.close()
            slot.machine = None
            self.runs.forget_if_idle(slot)
        slot.notify()  # a `resume` or a signal may wait for this task to end

    def _on_timer(self, run_id: str) -> None:
        slot = self.runs.live.get(run_id)
        if slot is None or slot.active or self.closing or not slot.status.waiting:
            return
        wake_at = slot.status.wake_at
        if wake_at is None or wake_at > self.clock.now():
            return  # an old entry: the run has moved on since
        self._wake(slot)

    def _evicted(self, run_id: str) -> None:
        """The cache dropped (and closed) a parked run's machine."""
        slot = self.runs.live.get(run_id)
        if slot is not None:
            slot.machine = None

    # -- machines --

    async def _loaded(self, slot: RunSlot, replaying: bool) -> RunMachine:
        """Load the run's records and make its machine (replayed from the top)."""
        # Under the run's lock, so that no signal commits between the load and the
        # machine taking its place.
        async with slot.lock:
            history = await self._load(slot)
            frontier = history.last_key() if replaying and self._strict_replay else None
            return self._machine(slot, history, frontier=frontier)

    def _machine(self, slot: RunSlot, history: RunHistory, arguments: bytes | None = None,
                 frontier: str | None = None) -> RunMachine:
        """Make the run's machine; `arguments`: its input (else the history's)."""
        if arguments is None:
            arguments = history.input()
        if arguments is None:  # a run/started record without arguments (never written)
            arguments = CODEC.encode((), key="input")
        machine = RunMachine(
            Run(slot.run_id, slot.workflow), self._registry.functions[slot.workflow],
            arguments, history, CODEC, self._policy, state=slot.state,
            mark_first_attempt=slot.needs_start_mark, frontier=frontier)
        slot.machine = machine
        return machine

    async def _load(self, slot: RunSlot) -> RunHistory:
        """Load a run's memo (its records, folded).

        Runs that load at the same moment share one query (`MemoLoader`).
        """
        return await self._loader.load(slot.run_id, slot.workflow)
