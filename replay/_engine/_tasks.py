"""Runs' tasks: each executing run in one task that owns it, from its claim to its release.

One run executes in one place at a time. A run is claimed (`RunSlot.active`) before its
task is spawned, or before the record that wakes it commits, so that no timer, signal
or `resume` starts it meanwhile; its task lets it go when it parks or ends. `RunTasks`
is the only writer of `active`. The scheduler and its helpers decide when a run gets a
task (its start, an open, a `resume`, a signal, a child's end); here the task drives
the run's machine (`Driver`) and then lets the run go: parked (its machine cached, its
wake-up with the timers) or ended.

A parked run holds no task: at most its paused machine in `ParkedCache`. Waking a
cached machine continues the same generator; an evicted one is loaded from the file
and replayed from the top, which gives the same result because every recorded outcome
is sent back again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from replay._codec import CODEC
from replay._core._decisions import Policy
from replay._core._history import RunHistory
from replay._core._machine import RunMachine
from replay._core._records import Run
from replay._engine._clock import EngineClock
from replay._engine._driver import Driver, Parked
from replay._engine._loading import MemoLoader
from replay._engine._parking import ParkedCache
from replay._engine._runs import RunTable
from replay._engine._slots import RunSlot
from replay._engine._steps import StepCaller
from replay._engine._timers import Timers
from replay._store import EngineStore
from replay._workflows import Registry


class RunTasks:
    """Spawns, drives and lets go the runs' tasks of one engine.

    Args:
        store: The open database (runs' memos are loaded from it).
        registry: The workflows this engine runs.
        clock: The engine clock.
        runs: The runs held in memory.
        driver: Drives a run's machine.
        steps: Calls step functions.
        policy: The engine-wide retry and interruption rules.
        cache_size: How many parked machines to keep.
        strict_replay: Check on every wake-up that a replay reaches where it stopped.
        stopping: Tells whether the engine is stopping.

    Attributes:
        parked: The parked runs' machines.
        timers: The parked runs' wake-ups (a sleep, a back-off, a suspend timeout).
        loader: Loads the memos of runs that load at the same moment together.
        executing: How many runs' tasks are alive.
    """

    def __init__(self, store: EngineStore, registry: Registry, clock: EngineClock,
                 runs: RunTable, driver: Driver, steps: StepCaller, policy: Policy,
                 cache_size: int, strict_replay: bool, stopping: Callable[[], bool]) -> None:
        self._registry = registry
        self._clock = clock
        self._runs = runs
        self._driver = driver
        self._steps = steps
        self._policy = policy
        self._strict_replay = strict_replay
        self._stopping = stopping
        self.parked = ParkedCache(cache_size, self._evicted)
        self.timers = Timers(clock, self._on_timer)
        self.loader = MemoLoader(store)
        self._nursery: trio.Nursery | None = None
        self.executing = 0  # runs' tasks alive (read by a shared store's thread too)

    def spawn_in(self, nursery: trio.Nursery) -> None:
        """Spawn the runs' tasks (and those `in_background`) in `nursery` from now on."""
        self._nursery = nursery

    def alive(self) -> int:
        """Count the runs' tasks alive right now (executing runs)."""
        return 0 if self._nursery is None else len(self._nursery.child_tasks)

    def in_background(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `function(*args)` in a task of its own (cancelled when the engine stops)."""
        assert self._nursery is not None
        self._nursery.start_soon(function, *args)

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

    # -- ownership: the only writers of `active` --

    def claim(self, slot: RunSlot) -> None:
        """Mark the run owned: no timer, signal or `resume` may start it meanwhile."""
        slot.active = True

    def unclaim(self, slot: RunSlot) -> None:
        """Mark the run not owned: what claimed it is done with it, or failed."""
        slot.active = False

    def spawn(self, slot: RunSlot, machine: RunMachine | None, woken: bool = False) -> None:
        """Spawn the claimed run's task (`machine`: None, load it; `woken`: it was parked)."""
        assert self._nursery is not None and slot.active
        self.executing += 1
        self._nursery.start_soon(self._execute, slot, machine, woken,
                                 name=f"replay run {slot.run_id}")

    def wake(self, slot: RunSlot) -> None:
        """Continue a parked run in a new task (its cached machine, if any)."""
        self.claim(slot)
        self.spawn(slot, self.parked.take(slot.run_id), woken=True)

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
            if machine.cancel_pending and not self._stopping():
                self.wake(slot)  # a cancellation came as it parked: take it now
            elif parked.wake_at is not None:
                self.timers.add(slot.run_id, parked.wake_at)
            slot.drop_idle_lock()
        else:
            if machine is not None:
                machine.close()
            slot.machine = None
            self._runs.forget_if_idle(slot)
        slot.notify()  # a `resume` or a signal may wait for this task to end

    def _on_timer(self, run_id: str) -> None:
        slot = self._runs.live.get(run_id)
        if slot is None or slot.active or self._stopping() or not slot.status.waiting:
            return
        wake_at = slot.status.wake_at
        if wake_at is None or wake_at > self._clock.now():
            return  # an old entry: the run has moved on since
        self.wake(slot)

    def _evicted(self, run_id: str) -> None:
        """The cache dropped (and closed) a parked run's machine."""
        slot = self._runs.live.get(run_id)
        if slot is not None:
            slot.machine = None

    # -- machines --

    async def _loaded(self, slot: RunSlot, replaying: bool) -> RunMachine:
        """Load the run's records and make its machine (replayed from the top)."""
        # Under the run's lock, so that no signal commits between the load and the
        # machine taking its place.
        async with slot.lock:
            history = await self.load(slot)
            frontier = history.last_key() if replaying and self._strict_replay else None
            return self.machine(slot, history, frontier=frontier)

    def machine(self, slot: RunSlot, history: RunHistory, arguments: bytes | None = None,
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

    async def load(self, slot: RunSlot) -> RunHistory:
        """Load a run's memo (its records, folded).

        Runs that load at the same moment share one query (`MemoLoader`).
        """
        return await self.loader.load(slot.run_id, slot.workflow)
