"""Group rounds: a run's attempts made at once (`All`, `Race`, their members).

The driver hands a run to `Rounds.perform` when the machine decides `Attempts`: each
round's attempts start once its records are durable (each in a cancel scope of its
own, so that fail-fast, a race or the run's cancellation can stop it), their outcomes
come back through a channel, and outcomes ready together are fed to the machine
together, so that their records share a commit and the attempts they start begin
together. A committed signal or cancellation wakes the round to decide again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import trio

from replay._core._decisions import Action, Attempt, Attempts, Outcome
from replay._core._machine import RunMachine
from replay._core._records import Record
from replay._engine._clock import EngineClock
from replay._engine._slots import RunSlot
from replay._engine._steps import StepCaller

# Put in a group's outcome channel when a signal or a cancellation is committed.
_WAKE = object()

# Queues a record for the next group commit; returns an event set once it is durable.
Enqueue = Callable[[RunSlot, Record], trio.Event]


class Commit(Protocol):
    """Makes a run's records durable (with the child runs its machine starts or stops)."""

    def __call__(self, slot: RunSlot, records: Sequence[Record],
                 machine: RunMachine | None = None) -> Awaitable[None]: ...


class EnqueueAll(Protocol):
    """Queues a run's records, in order, for the next group commit (one event)."""

    def __call__(self, slot: RunSlot, records: Sequence[Record],
                 ride: bool = False) -> trio.Event: ...


class Rounds:
    """Makes a run's group attempts at once, round after round.

    Args:
        enqueue: Queues a record for the next group commit; returns an event set once
            it is durable.
        enqueue_all: The same for a run's records, in order, with one event.
        commit: Makes a decision's records durable (see `Driver`).
        clock: The engine clock (the machine's `now`).
        steps: Calls step functions.
        stopping: Tells whether the engine is stopping.
    """

    def __init__(self, enqueue: Enqueue, enqueue_all: EnqueueAll, commit: Commit,
                 clock: EngineClock, steps: StepCaller, stopping: Callable[[], bool]) -> None:
        self._enqueue = enqueue
        self._enqueue_all = enqueue_all
        self._commit = commit
        self._clock = clock
        self._steps = steps
        self._stopping = stopping

    async def perform(self, slot: RunSlot, machine: RunMachine,
                      action: Attempts) -> Action | None:
        """Make a group's attempts at once until the machine decides something else.

        Returns:
            The machine's next decision, or None if the engine is stopping.
        """
        send, receive = trio.open_memory_channel[Any](math.inf)
        slot.listener = lambda record: send.send_nowait(_WAKE)
        scopes: dict[int, trio.CancelScope] = {}
        try:
            async with trio.open_nursery() as nursery:
                try:
                    return await self._group_rounds(slot, machine, action, nursery, scopes,
                                                    receive, send)
                finally:
                    for scope in scopes.values():
                        scope.cancel()
        finally:
            slot.listener = None

    async def _group_rounds(self, slot: RunSlot, machine: RunMachine, action: Action,
                            nursery: trio.Nursery, scopes: dict[int, trio.CancelScope],
                            receive: trio.MemoryReceiveChannel[Any],
                            send: trio.MemorySendChannel[Any]) -> Action | None:
        """Perform a group's decisions round after round.

        A round's attempts start once its records are durable, but the driver does not
        wait for that commit to take the next outcomes: deciding them overlaps the
        commit, and their records follow in the next batch.
        """
        while isinstance(action, Attempts):
            stopped = self._stop(machine, scopes)
            if self._stopping():
                machine.close()
                return None
            starts = [a for a in action.start if id(a) not in stopped]
            for attempt in starts:
                scopes[id(attempt)] = trio.CancelScope()
            if machine.involves_children or not action.records:
                # Child runs start (or stop) with these records: the family commits them.
                await self._commit(slot, action.records, machine)
                self._start(slot, machine, starts, scopes, nursery, send)
            else:
                durable = self._enqueue_all(slot, action.records)
                nursery.start_soon(self._start_when_durable, durable, slot, machine, starts,
                                   scopes, nursery, send)
            action = await self._next_round(slot, machine, action.wake_at, scopes, receive)
        self._stop(machine, scopes)
        return action

    async def _start_when_durable(self, durable: trio.Event, slot: RunSlot,
                                  machine: RunMachine, starts: list[Attempt],
                                  scopes: dict[int, trio.CancelScope], nursery: trio.Nursery,
                                  send: trio.MemorySendChannel[Any]) -> None:
        await durable.wait()
        if not self._stopping():
            self._start(slot, machine, starts, scopes, nursery, send)

    def _start(self, slot: RunSlot, machine: RunMachine, starts: list[Attempt],
               scopes: dict[int, trio.CancelScope], nursery: trio.Nursery,
               send: trio.MemorySendChannel[Any]) -> None:
        """Start the attempts of a round whose records are durable (not those stopped)."""
        for attempt in starts:
            scope = scopes.get(id(attempt))
            if scope is not None and not scope.cancel_called:
                nursery.start_soon(self._member, slot, machine, attempt, scope, send)

    async def _next_round(self, slot: RunSlot, machine: RunMachine, wake_at: datetime | None,
                          scopes: dict[int, trio.CancelScope],
                          receive: trio.MemoryReceiveChannel[Any]) -> Action:
        """Wait for an outcome, a deadline or a wake-up; feed the machine everything ready.

        Outcomes that are ready together are fed together, so their records share a
        commit and the attempts they start begin together.
        """
        deadline = math.inf if wake_at is None else self._clock.trio_deadline(wake_at)
        items: list[Any] = [_WAKE]
        with trio.move_on_at(deadline):
            items = [await receive.receive()]
        while True:
            try:
                items.append(receive.receive_nowait())
            except trio.WouldBlock:
                break
        decisions: list[Action] = []
        woken = False
        for item in items:
            if item is _WAKE:
                woken = True
            elif scopes.pop(id(item[0]), None) is not None:  # else: it was stopped
                attempt, outcome = item
                decisions.append(machine.attempt_ended(attempt, outcome, self._clock.now))
                if not isinstance(decisions[-1], Attempts):
                    break  # the group is decided: later outcomes are for stopped attempts
        if not decisions or (woken and isinstance(decisions[-1], Attempts)):
            async with slot.lock:  # a suspend is decided only under the run's lock
                decisions.append(machine.wake(self._clock.now))
        return _merged(decisions)

    def _stop(self, machine: RunMachine, scopes: dict[int, trio.CancelScope]) -> set[int]:
        """Cancel the attempts the machine cancelled; return their ids."""
        stopped = {id(attempt) for attempt in machine.take_stopped()}
        for attempt_id in stopped:
            scope = scopes.pop(attempt_id, None)
            if scope is not None:
                scope.cancel()
        return stopped

    async def _member(self, slot: RunSlot, machine: RunMachine, attempt: Attempt,
                      scope: trio.CancelScope, send: trio.MemorySendChannel[Any]) -> None:
        """One group member's attempt; a stopped one reports nothing."""
        def late(outcome: Outcome) -> None:
            # A sync attempt that lost: its thread finished after all. Recorded, not used
            # (unless its run was purged meanwhile: a row of no run).
            if scope.cancel_called and not self._stopping() and not slot.purged:
                self._enqueue(slot, machine.late_record(attempt, outcome))

        try:
            with scope:
                outcome = await self._steps.call(slot.run_id, attempt.step, attempt.number,
                                                 late)
                send.send_nowait((attempt, outcome))
        except BaseException:
            self._enqueue(slot, machine.attempt_abandoned(attempt))  # the engine is stopping
            raise


def _merged(decisions: list[Action]) -> Action:
    """One decision that commits every decision's records in order, then acts as the last."""
    last = decisions[-1]
    if len(decisions) == 1:
        return last
    records = tuple(r for decision in decisions for r in decision.records)
    warnings = tuple(w for decision in decisions for w in decision.warnings)
    if isinstance(last, Attempts):
        starts = tuple(a for d in decisions if isinstance(d, Attempts) for a in d.start)
        return Attempts(records, warnings, start=starts, wake_at=last.wake_at)
    return dataclasses.replace(last, records=records, warnings=warnings)
