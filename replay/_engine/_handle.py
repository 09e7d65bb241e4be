"""`Run`: a handle to one run of an engine."""

from __future__ import annotations

from typing import Any

from replay._codec import decode
from replay._engine._scheduler import Scheduler
from replay._errors import WorkflowFailed
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

    async def wait(self) -> RunInfo:
        """Wait until the run completes, fails, is cancelled or is suspended.

        Sleeps and retry back-offs are waited through.

        Raises:
            EngineClosed: The engine closed first.
        """
        return await self._scheduler.wait_for(self.run_id, SETTLED)

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
