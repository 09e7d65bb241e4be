"""What comes to a run from outside: signals, cancellations, terminations, deadlines.

`signal` commits a payload into the run's mailbox under the run's lock, from its check
to its commit: a run parked on the key (or in a group with a member suspended on it)
is claimed and woken by the commit, a busy one finds it in its mailbox. `cancel`
records a request (``run/cancel_requested``) under the run's lock, as a signal
is recorded: a parked run is claimed and woken by the commit, a run that is executing
finds the request in its mailbox (the driver stops its step attempt under way), and
its machine throws `Cancelled` in at the command it waits on. `terminate` stops the
run's task, if it has one, and records ``run/cancelled`` itself. A run's deadline
(`start(..., timeout=)`) is a timer that cancels it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from replay._codec import CODEC
from replay._core._history import RunHistory
from replay._core._records import Encoded, Run
from replay._core._signals import check_signal
from replay._engine._slots import RunSlot
from replay._errors import ReplayError, RunFinished
from replay._types import FINISHED, RunState

if TYPE_CHECKING:
    from replay._engine._scheduler import Scheduler

_TERMINATED = "terminated: the run was ended without running its workflow code"


class Deliveries:
    """Signals, cancels and terminates runs for the scheduler.

    Args:
        scheduler: The scheduler that owns every run.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    async def signal(self, slot: RunSlot, key: str, payload: Encoded) -> None:
        """Commit a signal into the run's mailbox, waking the run if it waits for it.

        Raises:
            SignalRejected: The run may not take it.
        """
        while not await self._signal_now(slot, key, payload):
            pass  # the run began to park again meanwhile: wait for it, then decide

    async def _signal_now(self, slot: RunSlot, key: str, payload: Encoded) -> bool:
        scheduler = self._scheduler
        await scheduler.tasks.let_go(slot)
        async with slot.lock:
            if slot.letting_go:
                return False
            # It wakes the run if the run is parked on this key (or in a group with a
            # member suspended on it) and this engine can run it; a run whose workflow
            # is not registered here is left as it is, and the signal waits in its
            # mailbox for an engine that can run it.
            on_key = scheduler.parkable(slot) and slot.status.waiting_for == key
            # A run parked on this very key has nothing recorded for it yet and its
            # mailbox limit does not apply: its history need not be loaded.
            history = RunHistory() if on_key and slot.machine is None else (
                await scheduler.mailbox(slot))
            switching = history.generation > slot.generation
            if not switching:
                wakes = on_key or scheduler.parked_on(slot, key, history)
                check_signal(slot.run_id, slot.status.state, history, key, wakes)
                record = Run(slot.run_id, slot.workflow).signalled(
                    key, payload, RunState.RUNNING if wakes else None)
                await scheduler.commit_together(slot, (), slot, record, wakes)
                return True
        # The run's machine has continued as new, but its ``run/continued`` is not
        # durable yet: a signal checked against the new generation's memo and committed
        # now would land before that record in the file, in the ending generation (a
        # reload would then drop it from the mailbox if that generation used its key).
        if history.generation > slot.generation:
            await slot.wait_changed()
        return False

    async def cancel(self, slot: RunSlot, reason: Encoded) -> bool:
        """Record the run's cancellation, waking it if it is parked.

        Returns:
            False if its cancellation was requested before (nothing is recorded).

        Raises:
            RunFinished: The run is finished.
        """
        scheduler = self._scheduler
        while True:
            await scheduler.tasks.let_go(slot)
            async with slot.lock:
                if slot.letting_go:
                    continue  # it began to park again meanwhile: wait for it, then decide
                _check_unfinished(slot, "cancelled")
                history = await scheduler.mailbox(slot)
                if history.cancel_reason is not None:
                    return False
                wakes = scheduler.parked_here(slot)
                record = Run(slot.run_id, slot.workflow).cancel_requested(
                    reason, RunState.RUNNING if wakes else None)
                # A run that parks on a sleep or a back-off decides so without its lock:
                # if it parked while the request was committed, it is woken now.
                await scheduler.commit_together(slot, (), slot, record, wakes, recheck=True)
                return True

    async def terminate(self, slot: RunSlot, reason: Encoded) -> None:
        """End the run ``cancelled`` at once; no more of its workflow code runs.

        Raises:
            RunFinished: The run is finished.
        """
        scheduler = self._scheduler
        _check_unfinished(slot, "terminated")
        while slot.active:
            if slot.task_scope is not None:
                slot.task_scope.cancel()
            await slot.wait_changed()
        async with slot.lock:
            _check_unfinished(slot, "terminated")
            scheduler.tasks.claim(slot)  # no timer, signal or resume may start it meanwhile
            scheduler.tasks.parked.drop(slot.run_id)
            history = await scheduler.mailbox(slot)
            record = Run(slot.run_id, slot.workflow).cancelled(reason, _TERMINATED)
            try:
                await scheduler.family.end(slot, (record,), history)
            finally:
                scheduler.tasks.unclaim(slot)
                slot.machine = None
                scheduler.runs.forget_if_idle(slot)
                slot.notify()

    def on_deadline(self, run_id: str) -> None:
        """A run's deadline passed: cancel it (in a task of its own)."""
        scheduler = self._scheduler
        slot = scheduler.runs.live.get(run_id)
        if slot is None or slot.status.finished or scheduler.closing:
            return
        scheduler.tasks.in_background(self._cancel_at_deadline, slot)

    async def _cancel_at_deadline(self, slot: RunSlot) -> None:
        why = "the run's deadline passed"
        with contextlib.suppress(ReplayError):  # it finished meanwhile, or the engine closes
            await self.cancel(slot, Encoded(CODEC.encode(why, key="reason"), CODEC.to_json(why)))


def _check_unfinished(slot: RunSlot, what: str) -> None:
    if slot.state in FINISHED:
        raise RunFinished(
            f"run {slot.run_id!r} is {slot.state.value}; a finished run cannot be {what}",
            run_id=slot.run_id, state=slot.state.value)
