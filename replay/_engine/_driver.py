"""The driver: performs the run machine's decisions, and holds no workflow logic.

`Driver.drive` is the h11-style loop: ask the machine (`replay._core`) for a decision,
commit the records it carries, do what it says (make a step attempt, or park the run),
and report the outcome back. The machine may run the (deterministic) workflow code on
to its next decision before an outcome is durable, but nothing acts on it before: a
decision's records are committed before the next attempt starts, before the run parks
and before it ends. The one exception is what follows a pure step (`Step(pure=True)`),
which a crash recomputes equal: it rides the run's next commit. A group's attempts,
made at once, are `Rounds`' (`_rounds`).

Stops. When the engine stops, no new attempt starts (the run continues at the next
open) and an attempt still running is cancelled and recorded as abandoned (queued,
not awaited: the committer commits it before the file closes).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

import trio

from replay._core._decisions import (
    Action,
    Attempt,
    Attempts,
    Ended,
    Later,
    Outcome,
    WaitForSignal,
    WaitUntil,
)
from replay._core._machine import RunMachine
from replay._core._records import Record
from replay._engine._clock import EngineClock
from replay._engine._committer import ThreadCommit
from replay._engine._family import Family
from replay._engine._rounds import Enqueue, EnqueueAll, Rounds
from replay._engine._slots import RunSlot
from replay._engine._steps import StepCaller

log = logging.getLogger("replay")

# Takes a run's records to the worker thread of its next sync step (None: not now).
HandOver = Callable[[RunSlot, Sequence[Record]], ThreadCommit | None]

# A streak of pure steps waits for nothing, so it would keep the loop from every other
# task (other runs, timers, signals, the flusher) until it ends: it lets them have it
# after this many steps (a few milliseconds of steps for one scheduling round).
PURE_STEPS_PER_YIELD = 32


class _Stretch:
    """Attempts of a run made one after another under one cancel scope.

    The run's cancellation cancels the scope while an attempt is under way, and only
    then: the driver leaves the scope as soon as an attempt returns, before any other
    checkpoint, if it was cancelled meanwhile. A scope entered per attempt cost about a
    sixth of the loop's time per `async def` step with a thousand runs.

    Entered as a context manager (the scope): an attempt under way that anything else
    stops (the engine stopping, or the run being terminated) is recorded abandoned,
    queued, not awaited (the task is being cancelled); the committer commits it before
    the file closes. A clean stop charges nothing.
    """

    __slots__ = ("_enqueue", "_machine", "_slot", "scope", "under_way")

    def __init__(self, slot: RunSlot, machine: RunMachine, enqueue: Enqueue) -> None:
        self._slot = slot
        self._machine = machine
        self._enqueue = enqueue
        self.scope = trio.CancelScope()
        self.under_way: Attempt | None = None  # the attempt being made (the one cancelled)

    def listen(self, record: Record) -> None:
        """A committed record of the run: its cancellation stops the attempt."""
        if record.event == "cancel_requested":
            self.scope.cancel()

    def __enter__(self) -> _Stretch:
        self.scope.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        try:
            caught = self.scope.__exit__(kind, error, traceback)
        except BaseException:
            self._abandon()
            raise
        if error is not None and not caught:
            self._abandon()
        return caught

    def _abandon(self) -> None:
        if self.under_way is not None:
            self._enqueue(self._slot, self._machine.attempt_abandoned(self.under_way))


@dataclass(frozen=True, slots=True)
class _Resume:
    """Go on with `action` under a fresh scope (the last one was cancelled too late)."""

    action: Action
    after_pure: bool


@dataclass(frozen=True, slots=True)
class Parked:
    """The run waits: until `wake_at`, or (None) until a signal arrives."""

    wake_at: datetime | None


class Driver:
    """Drives runs for the scheduler.

    Args:
        enqueue: Queues a record for the next group commit (applied to its slot once
            durable); returns an event set then.
        enqueue_all: The same for a run's records, in order, with one event.
        clock: The engine clock (the machine's `now`).
        steps: Calls step functions.
        stopping: Tells whether the engine is stopping.
        family: Starts and ends child runs with their parents' records.
        hand_over: Gives a lone run's records to the thread of its next sync step.
    """

    def __init__(self, enqueue: Enqueue, enqueue_all: EnqueueAll, clock: EngineClock,
                 steps: StepCaller, stopping: Callable[[], bool], family: Family,
                 hand_over: HandOver) -> None:
        self._enqueue = enqueue
        self._enqueue_all = enqueue_all
        self._hand_over = hand_over
        self._clock = clock
        self._steps = steps
        self._stopping = stopping
        self._family = family
        # Held by each run's first attempt since the engine opened: those run one at a time.
        self._first_attempts = trio.Lock()
        self._rounds = Rounds(enqueue, enqueue_all, self._commit, clock, steps, stopping)

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
            ended = machine.failed_internally(error)
            await self._family.end(slot, ended.records, machine.history,
                                   machine.take_child_stops())
            return None

    async def _perform(self, slot: RunSlot, machine: RunMachine, woken: bool) -> Parked | None:
        action: Action
        if not woken:
            started = machine.start(self._clock.now)
            while isinstance(started, Later):
                # A long history's replay: other runs, timers and signals go on
                # meanwhile. Not shielded: a terminate ends the run's task here, with
                # nothing of this execution recorded yet; so does a close.
                await trio.lowlevel.checkpoint()
                if self._stopping():
                    machine.close()  # the run continues at the next open
                    return None
                started = machine.go_on(self._clock.now)
            action = started
        elif machine.waits_for_signal:
            action = await self._suspend(slot, machine, None)
        else:
            action = machine.wake(self._clock.now)
        after_pure = False  # whether `action` follows a pure attempt
        while True:
            stretch = _Stretch(slot, machine, self._enqueue)
            with stretch:
                ended = await self._stretch(slot, machine, action, after_pure, stretch)
            if stretch.scope.cancelled_caught:
                action, after_pure = machine.cancel(self._clock.now, stretch.under_way), False
            elif isinstance(ended, _Resume):
                action, after_pure = ended.action, ended.after_pure
            else:
                return ended

    async def _stretch(self, slot: RunSlot, machine: RunMachine, action: Action,
                       after_pure: bool, stretch: _Stretch) -> Parked | _Resume | None:
        """Perform decisions under `stretch`'s cancel scope until the run ends or parks.

        Returns `_Resume` (at once, with no checkpoint in between) when the run's
        cancellation cancelled the scope just as an attempt ended by itself: the run
        goes on under a fresh scope, and its next decision takes the cancellation.
        """
        pure_streak = 0
        while True:
            for warning in action.warnings:
                log.warning(warning)
            if isinstance(action, Attempt):
                # After a pure attempt, its records ride the next commit instead.
                handed = None if after_pure else self._handed_over(slot, machine, action)
                if handed is None:
                    await self._before_attempt(slot, machine, action, after_pure)
                if self._stopping():
                    machine.close()  # start no new attempt: the run continues at the next open
                    return None
                after = await self._attempt(slot, machine, action, handed, stretch)
                if after is None:
                    return None  # the run ended with its first attempt: already committed
                attempted, action = action.step, after
                after_pure = attempted.pure
                if not after_pure:
                    pure_streak = 0
                elif attempted.is_async:
                    pure_streak += 1
                else:  # the machine made up to PURE_STEPS_PER_YIELD - 1 more (`_attempt`)
                    pure_streak = PURE_STEPS_PER_YIELD
                if pure_streak == PURE_STEPS_PER_YIELD:
                    pure_streak = 0
                    # Shielded: the run's cancellation is taken just below, at a decision.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                if stretch.scope.cancel_called:
                    return _Resume(action, after_pure)
            elif isinstance(action, Attempts):
                next_action = await self._rounds.perform(slot, machine, action)
                if next_action is None:
                    return None
                action = next_action
            elif isinstance(action, Ended):
                await self._family.end(slot, action.records, machine.history,
                                       machine.take_child_stops())
                return None
            elif isinstance(action, WaitUntil):
                # Parked even if `at` has passed: the timers wake it at once, and the
                # run never executes in a state that says it waits.
                await self._commit(slot, action.records, machine)
                return Parked(action.at)
            else:
                action = await self._suspend(slot, machine, action)
                if isinstance(action, WaitForSignal):
                    return Parked(action.deadline)

    def _handed_over(self, slot: RunSlot, machine: RunMachine,
                     attempt: Attempt) -> ThreadCommit | None:
        """Give `attempt`'s records to its worker thread, which commits them, then calls.

        Only a sync step's plain attempt, of a run executing alone: one hand-off to a
        thread and one back per step, instead of two more for the writer thread. The
        records are durable before the step function starts, as with any commit.
        """
        step = attempt.step
        if (step.is_async or step.pure or attempt.start is not None or not attempt.records
                or machine.involves_children or machine.cancel_pending or self._stopping()):
            return None
        return self._hand_over(slot, attempt.records)

    async def _before_attempt(self, slot: RunSlot, machine: RunMachine, attempt: Attempt,
                              after_pure: bool) -> None:
        """Commit what must be durable before `attempt` starts.

        Every step waits for its own outcome to be durable, except a pure one: the
        records that follow a pure attempt (its outcome, and what the workflow decided
        with it) are recomputed, equal, after a crash, so they ride the run's next
        commit, which every later decision waits for (commits keep their order).
        """
        if after_pure and attempt.start is None and not machine.involves_children:
            if attempt.records:
                self._enqueue_all(slot, attempt.records, ride=True)
            return
        await self._commit(slot, attempt.records, machine)

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
                await self._commit(slot, records, machine)
                action = machine.wake(self._clock.now)
                if not isinstance(action, WaitForSignal) or (action.settled
                                                             and not action.records):
                    return action
                records = action.records

    async def _attempt(self, slot: RunSlot, machine: RunMachine, attempt: Attempt,
                       handed: ThreadCommit | None, stretch: _Stretch) -> Action | None:
        """Make the attempt and return the machine's next decision.

        `handed`: the attempt's records, which its worker thread commits first.
        None: a start-marked attempt ended the run, and the end is committed. The run's
        cancellation raises `trio.Cancelled` out of a plain attempt, for `stretch`'s
        scope to catch.
        """
        if machine.cancel_pending:  # committed while the attempt's records were
            return machine.cancel(self._clock.now, attempt)
        if attempt.start is None:
            step = attempt.step
            if step.pure and not step.is_async:
                # No await: a cancellation committed meanwhile is seen at the next decision.
                # The machine makes the sync pure attempts that follow too, in one go.
                compute = functools.partial(self._steps.compute, slot.run_id)
                return machine.attempt_ended(attempt, compute(step, attempt.number),
                                             self._clock.now, compute, PURE_STEPS_PER_YIELD - 1)
            outcome = await self._call(slot, machine, attempt, stretch, handed=handed)
            return machine.attempt_ended(attempt, outcome, self._clock.now)
        # The run's first attempt since the open runs alone, its start and its end
        # durable, so that a process death is charged to this step only.
        async with self._first_attempts:
            first = await self._first_call(slot, machine, attempt, attempt.start)
            if first is None:
                after = machine.cancel(self._clock.now, attempt)
            else:
                after = machine.attempt_ended(attempt, first, self._clock.now)
            if isinstance(after, Ended):
                await self._family.end(slot, after.records, machine.history,
                                       machine.take_child_stops())
            else:
                await self._commit(slot, after.records, machine)
        slot.needs_start_mark = False
        return None if isinstance(after, Ended) else dataclasses.replace(after, records=())

    async def _first_call(self, slot: RunSlot, machine: RunMachine, attempt: Attempt,
                          start: Record) -> Outcome | None:
        """Commit the attempt's start mark, then make it.

        Under a scope of its own, so that its end is committed under the first-attempt
        lock. None: the run's cancellation stopped it.
        """
        first = _Stretch(slot, machine, self._enqueue)
        with first:
            return await self._call(slot, machine, attempt, first, (start,))
        return None

    async def _call(self, slot: RunSlot, machine: RunMachine, attempt: Attempt,
                    stretch: _Stretch, start: Sequence[Record] = (),
                    handed: ThreadCommit | None = None) -> Outcome:
        """Make the attempt; the run's cancellation cancels `stretch`'s scope meanwhile.

        Except during a pure step's plain attempt: a quick computation, whose run sees
        the cancellation at its next decision.
        """
        if start or not attempt.step.pure:
            slot.listener = stretch.listen
        stretch.under_way = attempt
        try:
            if start:
                await self._commit(slot, start)
            outcome = await self._steps.call(slot.run_id, attempt.step, attempt.number,
                                             prelude=handed)
        finally:
            slot.listener = None
        stretch.under_way = None
        return outcome

    async def _commit(self, slot: RunSlot, records: Sequence[Record],
                      machine: RunMachine | None = None) -> None:
        """Make `records` durable, in order, in the next group commit.

        With `machine`: the child runs its decision starts are committed with them, and
        those it stopped are cancelled once they are durable.
        """
        if machine is not None:
            starts, stops = machine.take_children(), machine.take_child_stops()
            if starts or stops:
                await self._family.commit(slot, records, starts, stops)
                return
        if records:
            await self._enqueue_all(slot, records).wait()
