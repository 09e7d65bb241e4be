"""`replay.sync.Run`: a run handle whose `wait` and `result` block, with a timeout."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

import replay

if TYPE_CHECKING:
    from replay import Engine as AsyncEngine
    from replay.sync._engine import Engine


class Run:
    """A handle to one run of a `replay.sync.Engine`; its calls block.

    Any thread may use it, and several at once. Get one from `Engine.start`,
    `Engine.signal`, `Engine.resume`, `Engine.cancel`, `Engine.terminate` or
    `Engine.get_run`.

    Attributes:
        run_id: The run's id.
        workflow: The run's workflow name.
    """

    __slots__ = ("_engine", "run_id", "workflow")

    def __init__(self, engine: Engine, run_id: str, workflow: str) -> None:
        self._engine = engine
        self.run_id = run_id
        self.workflow = workflow

    def __repr__(self) -> str:
        return f"replay.sync.Run(run_id={self.run_id!r}, workflow={self.workflow!r})"

    def wait(self, timeout: float | None = None) -> replay.RunInfo:
        """Block until the run completes, fails, is cancelled or is suspended.

        Sleeps and retry back-offs are waited through, as by `replay.Run.wait`.

        Args:
            timeout: Seconds to wait at most; None: as long as it takes.

        Returns:
            The run's state at that moment.

        Raises:
            TimeoutError: `timeout` passed first; the run is unchanged and goes on.
            TypeError: `timeout` is not a number or None.
            ValueError: `timeout` is negative or NaN.
            EngineClosed: The engine is closed, or closed while waiting.
        """
        limit = checked_timeout(timeout)
        info: replay.RunInfo = self._engine._host_call(_wait, self.run_id, limit, False)
        return info

    def result(self, timeout: float | None = None) -> Any:
        """Block until the run finishes and return its output.

        A suspended run is waited through too, as by `replay.Run.result`: the result
        comes once a signal (from another thread) lets it finish.

        Args:
            timeout: Seconds to wait at most; None: as long as it takes.

        Returns:
            The workflow's return value.

        Raises:
            WorkflowFailed: The run failed, or was cancelled (its `error_type` is then
                ``"replay.Cancelled"`` and its message is the reason).
            TimeoutError: `timeout` passed first; the run is unchanged and goes on.
            TypeError: `timeout` is not a number or None.
            ValueError: `timeout` is negative or NaN.
            EngineClosed: The engine is closed, or closed while waiting.
        """
        limit = checked_timeout(timeout)
        return self._engine._host_call(_wait, self.run_id, limit, True)

    def status(self) -> replay.RunInfo:
        """Return the run's current durable state (`Engine.status` of this run).

        Raises:
            RunNotFound: No such run.
            EngineClosed: The engine is closed.
        """
        return self._engine.status(self.run_id)


def checked_timeout(timeout: object) -> float:
    """Return `timeout` as seconds (``inf`` for None).

    Raises:
        TypeError: It is not a number or None.
        ValueError: It is negative or NaN.
    """
    if timeout is None:
        return math.inf
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"timeout must be a number of seconds or None, got {timeout!r} "
            f"({type(timeout).__name__})")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    return float(timeout)


async def _wait(engine: AsyncEngine, run_id: str, timeout: float, finished: bool) -> Any:
    """`Run.wait()` (or `result()` when `finished`) of the run, within `timeout`.

    The limit is kept inside the engine's trio run: only this wait is cancelled when
    it passes, never the run itself.
    """
    run = engine.get_run(run_id)
    with trio.move_on_after(timeout):
        return await (run.result() if finished else run.wait())
    state = engine.status(run_id).state
    goal = "finish" if finished else "finish or suspend"
    raise TimeoutError(
        f"run {run_id!r} did not {goal} within {timeout:g} s (it is {state}); it goes on "
        "unchanged: wait for it again, or look at engine.status(run_id) later")
