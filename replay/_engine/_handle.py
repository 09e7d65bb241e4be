"""`Run`: a handle to one run of an engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from replay._checks import checked_condition
from replay._codec import decode
from replay._engine._scheduler import Scheduler
from replay._engine._watch import Watch, checked_buffer
from replay._engine._watching import DEFAULT_BUFFER
from replay._errors import RunFinished, WorkflowFailed
from replay._types import FINISHED, SETTLED, RunInfo, RunState


class Run:
    """A handle to one run of an engine.

    Attributes:
        run_id: The run's id.
        workflow: The run's workflow name.
    """

    __slots__ = ("_scheduler", "run_id", "workflow")

    def __init__(self, scheduler: Scheduler, run_id: str, workflow: str) -> None:
        self._scheduler = scheduler
        self.run_id = run_id
        self.workflow = workflow

    def __repr__(self) -> str:
        return f"Run(run_id={self.run_id!r}, workflow={self.workflow!r})"

    async def wait(self, until: Callable[[RunInfo], bool] | RunState | str | None = None
                   ) -> RunInfo:
        """Wait until the run completes, fails, is cancelled or is suspended.

        Sleeps and retry back-offs are waited through. With `until`, wait instead for
        the first state, present or coming, that satisfies it: every change is
        checked, so a state the run passes through is not missed. For example,
        ``await run.wait(until=lambda r: r.waiting_for == "second-approval:v1")``.

        Args:
            until: A condition on the run's `RunInfo`, or a state (``"sleeping"``).

        Returns:
            The run's `RunInfo` at that moment.

        Raises:
            RunFinished: With `until`, the run finished without the condition holding.
            TypeError: `until` is neither callable nor a state.
            ValueError: `until` is a string that is not a state's name.
            EngineClosed: The engine closed first.
        """
        if until is None:
            return await self._scheduler.wait_for(self.run_id, SETTLED)
        condition = checked_condition(until)
        last = None
        async with self.watch() as updates:
            async for update in updates:
                if update.info is None:
                    continue
                last = update.info
                if condition(update.info):
                    return update.info
        assert last is not None
        raise RunFinished(
            f"run {self.run_id!r} {last.state.value} without reaching the state waited "
            "for; check the condition, or wait for the run's result instead",
            run_id=self.run_id, state=last.state.value)

    def watch(self, after_seq: int | None = None, buffer: int = DEFAULT_BUFFER) -> Watch:
        """Watch the run: its state now, then every change, until it finishes.

        ``async for update in run.watch():`` yields a ``"snapshot"`` `RunUpdate`
        first, then one per recorded event (its state after it, the key it waits on,
        its status note), and ``"progress"`` updates its steps publish, in order; it
        stops after the event that finishes the run. Use
        ``async with run.watch() as updates:`` to stop early.

        Args:
            after_seq: Instead of the snapshot, start with the recorded events after
                this `seq` (an update's `seq`: how a client reconnects).
            buffer: How many unread updates to keep; a watcher that falls behind gets
                a snapshot saying how many it missed, then goes on.

        Returns:
            An async iterator of `RunUpdate`.

        Raises:
            RunNotFound: No such run (raised by the first step of the iteration).
            TypeError: An argument has the wrong type.
            ValueError: `after_seq` < 0, or `buffer` < 1.
            EngineClosed: The engine is closed, or closes while watching.
        """
        self._scheduler.check_open(allow_closing=True)
        if after_seq is not None and (not isinstance(after_seq, int)
                                      or isinstance(after_seq, bool)):
            raise TypeError(f"after_seq must be an int or None, got {after_seq!r} "
                            f"({type(after_seq).__name__})")
        if after_seq is not None and after_seq < 0:
            raise ValueError(f"after_seq must be >= 0, got {after_seq}")
        scheduler = self._scheduler
        sharing = scheduler.store.sharing
        return Watch(scheduler.watchers, scheduler.store, run_id=self.run_id,
                     find=lambda: scheduler.runs.adopt(self.run_id), after_seq=after_seq,
                     buffer=checked_buffer(buffer),
                     elsewhere=None if sharing is None else (
                         lambda: scheduler.runs.elsewhere(self.run_id)),
                     poll_interval=1.0 if sharing is None else sharing.options.poll_interval)

    async def result(self) -> Any:
        """Wait for the run to finish and return its output.

        A suspended run is waited through too: the result comes once a signal lets it
        finish.

        Raises:
            WorkflowFailed: The run failed, or was cancelled (its `error_type` is then
                ``"replay.Cancelled"`` and its message is the reason).
            EngineClosed: The engine closed first.
        """
        info = await self._scheduler.wait_for(self.run_id, FINISHED)
        if info.state is RunState.COMPLETED:
            return info.output
        encoded = self._scheduler.slot(self.run_id).status.message
        detail = None if encoded is None else decode(encoded)
        if info.state is RunState.CANCELLED and detail is None:
            message = "the run was cancelled (no reason given)"
        else:
            message = "" if detail is None else str(detail)
        raise WorkflowFailed(
            self.run_id, info.error_type or "builtins.Exception", message, info.error or ""
        )

