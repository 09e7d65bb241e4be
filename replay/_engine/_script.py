"""`replay.run`: the synchronous one-call convenience for scripts."""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from typing import Any

import trio

from replay._engine._facade import Engine
from replay._engine._handle import Run
from replay._engine._lifecycle import open_engine
from replay._errors import RunNotFound, RunSuspended
from replay._types import RunState


def run(
    workflow: Callable[..., Any],
    *args: Any,
    db: str | PathLike[str] = ":memory:",
    run_id: str | None = None,
    resume: bool = False,
) -> Any:
    """Run `workflow` to completion in a fresh trio run and return its output.

    An existing `run_id` in `db` continues (or returns the output of) that run, and
    its recorded input is used (`args` are ignored). With ``resume=True`` an existing
    run is resumed first, as by `Engine.resume`: a failed run runs its unhandled step
    failure again with a fresh retry budget (after a fix), a parked run replays now.
    A `run_id` that does not exist yet is simply started.

    Args:
        workflow: A workflow (generator) function.
        *args: Its input.
        db: The database file, or ``":memory:"``.
        run_id: The run's id; generated when omitted.
        resume: Resume the existing run `run_id` (which must be given).

    Returns:
        The workflow's output.

    Raises:
        ValueError: `resume` is true and `run_id` is not given.
        WorkflowFailed: The run failed.
        RunSuspended: The run waits for a signal, which `run` cannot deliver.
        RunIdConflict: `run_id` belongs to a run of another workflow.
        EncodingError: An argument cannot be recorded.
    """
    if resume and run_id is None:
        raise ValueError(
            "replay.run(workflow, *args, resume=True): resume needs the run_id of the run "
            "to resume; pass run_id=...")

    async def main() -> Any:
        async with open_engine(db, workflows=[workflow]) as engine:
            handle = await _start(engine, workflow, args, run_id, resume)
            info = await handle.wait()
            if info.state is RunState.SUSPENDED:
                raise RunSuspended(
                    f"run {info.run_id!r} is suspended waiting for a signal for "
                    f"{info.waiting_for!r}; replay.run cannot deliver signals: use "
                    "replay.open_engine and engine.signal",
                    run_id=info.run_id,
                    key=info.waiting_for,
                )
            return await handle.result()

    return trio.run(main)


async def _start(engine: Engine, workflow: Callable[..., Any], args: tuple[Any, ...],
                 run_id: str | None, resume: bool) -> Run:
    """Start the run, or take the existing one (resumed if asked).

    Raises:
        RunIdConflict: `run_id` belongs to a run of another workflow.
        EncodingError: An argument of a new run cannot be recorded.
    """
    existed = False
    if resume and run_id is not None:
        try:
            engine.get_run(run_id)
            existed = True
        except RunNotFound:
            pass  # a new run: resume=True just starts it
    handle = await engine.start(workflow, *args, run_id=run_id)  # checks the workflow
    if existed:
        handle = await engine.resume(handle.run_id)
    return handle
