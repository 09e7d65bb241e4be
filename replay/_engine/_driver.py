"""The driver: performs the run machine's decisions, and holds no workflow logic.

`Driver.drive` is the h11-style loop: ask the machine (`replay._core`) for a decision,
commit the records it carries, do what it says (make a step attempt, or park the run),
and report the outcome back. The machine may run the (deterministic) workflow code on
to its next decision before an outcome is durable, but nothing acts on it before: a
decision's records are committed before the next attempt starts, before the run parks
and before it ends.

Stops. When the engine stops, no new attempt starts (the run continues at the next
open) and an attempt still running is cancelled and recorded as abandoned (queued,
not awaited: the committer commits it before the file closes).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import trio

from replay._core._decisions import Action, Attempt, Ended, Outcome, WaitForSignal, WaitUntil
from replay._core._machine import RunMachine
from replay._core._records import Record
from replay._engine._clock import EngineClock
from replay._engine._slots import RunSlot
from replay._engine._steps import StepCaller

log = logging.getLogger("replay")

Enqueue = Callable[[RunSlot, Record], trio.Event]


@dataclass(frozen=True, slots=True)
class Parked:
    """The run waits: until `wake_at`, or (None) until a signal arrives."""

    wake_at: datetime | None


class Driver:
    """Drives runs for the scheduler.

    Args:
        enqueue: Queues a record for the next group commit (applied to its slot once
            durable); returns an event set then.
        clock: The engine clock (the machine's `now`).
        steps: Calls step functions.
        stopping: Tells whether the engine is stopping.
    """

    def __init__(self, enqueue: Enqueue, clock: EngineClock, steps: StepCaller,
                 stopping: Callable[[], bool]) -> None:
        self._enqueue = enqueue
        self._clock = clock
        self._steps = steps
        self._stopping = stopping
        # Held by each run's first attempt since the engine opened: those run one at a time.
        self._first_attempts = trio.Lock()

    async def drive(self, slot: RunSlot, machine: RunMachine, woken: bool) -> Parked | None:
        """Perform `machine`'s decisions until the run ends or parks.

        A new machine starts its workflow (replaying what is recorded); a `woken` one
        (a parked machine whose deadline passed or whose signal came) decides again.

        Returns:
            `Parked` when the run waits, None when it ended or the engine is stopping.
        """
        try:
            return await self._perform(slot, machine, woken)
        except Exception as error:
            # A bug in replay must fail only this run, never the engine.
            await self._commit(slot, machine.failed_internally(error).records)
            return None

    async def _perform(self, slot: RunSlot, machine: RunMachine, woken: bool) -> Parked | None:
        action: Action
        if not woken:
            action = machine.start(self._clock.now)
        elif machine.waits_for_signal:
            action = await self._suspend(slot, machine, None)
        else:
            action = machine.wake(self._clock.now)
        while True:
            for warning in action.warnings:
                log.warning(warning)
            if isinstance(action, Attempt):
                await self._commit(slot, action.records)
                if self._stopping():
                    machine.close()  # start no new attempt: the run continues at the next open
                    return None
                action = await self._attempt(slot, machine, action)
            elif isinstance(action, Ended):
                await self._commit(slot, action.records)
                return None
            elif isinstance(action, WaitUntil):
                # Parked even if `at` has passed: the timers wake it at once, and the
                # run never executes in a state that says it waits.
                await self._commit(slot, action.records)
                return Parked(action.at)
            else:
                action = await self._suspend(slot, machine, action)
                if isinstance(action, WaitForSignal):
                    return Parked(action.deadline)

    async def _suspend(self, slot: RunSlot, machine: RunMachine,
                       wait: WaitForSignal | None) -> Action:
        """Let the machine decide a suspend under the run's lock; settled, it parks.

        A signal holds the lock from its check to its commit: any signal is in the
        mailbox when the machine decides, or arrives once the run is parked (or
        settling) and wakes it. None is lost in between, and none races a timeout.
        """
        records = () if wait is None else wait.records
        async with slot.lock:
            while True:
                await self._commit(slot, records)
                action = machine.wake(self._clock.now)
                if not isinstance(action, WaitForSignal) or (action.settled
                                                             and not action.records):
                    return action
                records = action.records

    async def _attempt(self, slot: RunSlot, machine: RunMachine, attempt: Attempt) -> Action:
        """Make the attempt and return the machine's next decision."""
        if attempt.start is None:
            outcome = await self._call(slot, machine, attempt, ())
            return machine.attempt_ended(attempt, outcome, self._clock.now)
        # The run's first attempt since the open runs alone, its start and its end
        # durable, so that a process death is charged to this step only.
        async with self._first_attempts:
            outcome = await self._call(slot, machine, attempt, (attempt.start,))
            after = machine.attempt_ended(attempt, outcome, self._clock.now)
            await self._commit(slot, after.records)
        slot.needs_start_mark = False
        return dataclasses.replace(after, records=())

    async def _call(self, slot: RunSlot, machine: RunMachine, attempt: Attempt,
                    start: Sequence[Record]) -> Outcome:
        try:
            if start:
                await self._commit(slot, start)
            return await self._steps.call(slot.run_id, attempt.step, attempt.number)
        except BaseException:
            # The engine is stopping: a clean stop charges nothing. Queued, not awaited
            # (this task is being cancelled); the committer commits it before closing.
            self._enqueue(slot, machine.attempt_abandoned(attempt))
            raise

    async def _commit(self, slot: RunSlot, records: Sequence[Record]) -> None:
        """Make `records` durable, in order, in the next group commit."""
        if not records:
            return
        for record in records:
            durable = self._enqueue(slot, record)
        await durable.wait()  # batches commit in order: the last one durable means all are
