"""`replay.run`: the synchronous one-call convenience for scripts."""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from typing import Any

import trio

from replay._errors import RunSuspended
from replay._lifecycle import open_engine
from replay._model import RunState


def run(
    workflow: Callable[..., Any],
    *args: Any,
    db: str | PathLike[str] = ":memory:",
    run_id: str | None = None,
) -> Any:
    """Run `workflow` to completion in a fresh trio run and return its output.

    An existing `run_id` in `db` continues (or returns the output of) that run.

    Args:
        workflow: A workflow (generator) function.
        *args: Its input.
        db: The database file, or ``":memory:"``.
        run_id: The run's id; generated when omitted.

    Returns:
        The workflow's output.

    Raises:
        WorkflowFailed: The run failed.
        RunSuspended: The run waits for a signal, which `run` cannot deliver.
        EncodingError: An argument cannot be recorded.
    """

    async def main() -> Any:
        async with open_engine(db, workflows=[workflow]) as engine:
            started = await engine.start(workflow, *args, run_id=run_id)
            info = await started.wait()
            if info.state is RunState.SUSPENDED:
                raise RunSuspended(
                    f"run {info.run_id!r} is suspended waiting for a signal for "
                    f"{info.waiting_for!r}; replay.run cannot deliver signals: use "
                    "replay.open_engine and engine.signal",
                    run_id=info.run_id,
                    key=info.waiting_for,
                )
            return await started.result()

    return trio.run(main)
