"""`replay.sync.Run`: a run handle whose `wait` and `result` block, with a timeout."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

import replay
from replay.sync._watch import Watch

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

    def wait(self, timeout: float | None = None, *,
             until: Callable[[replay.RunInfo], bool] | replay.RunState | str | None = None
             ) -> replay.RunInfo:
        """Block until the run completes, fails, is cancelled or is suspended.

        Sleeps and retry back-offs are waited through, as by `replay.Run.wait`. With
        `until`, wait instead for the first state that satisfies it (the condition is
        called in the engine's thread).

        Args:
            timeout: Seconds to wait at most; None: as long as it takes.
            until: A condition on the run's `RunInfo`, or a state (``"sleeping"``).

        Returns:
            The run's state at that moment.

        Raises:
            RunFinished: With `until`, the run finished without the condition holding.
            TimeoutError: `timeout` passed first; the run is unchanged and goes on.
            TypeError: `timeout` is not a number or None, or `until` is neither
                callable nor a state.
            ValueError: `timeout` is negative or NaN, or `until` is not a state's name.
            EngineClosed: The engine is closed, or closed while waiting.
        """
        limit = checked_timeout(timeout)
        info: replay.RunInfo = self._engine._host_call(_wait, self.run_id, limit, False, until)
        return info

    def watch(self, after_seq: int | None = None, buffer: int = 1000) -> Watch:
        """Watch the run until it finishes, as `replay.Run.watch`: a blocking iterator.

        ``for update in run.watch():`` yields `replay.RunUpdate`: a snapshot (or the
        recorded events after `after_seq`), then every change.

        Raises:
            RunNotFound: No such run (raised by the first ``next``).
            TypeError: An argument has the wrong type (raised by the first ``next``).
            ValueError: `after_seq` < 0 or `buffer` < 1 (raised by the first ``next``).
            EngineClosed: The engine is closed, or closes while watching.
        """
        run_id = self.run_id
        return Watch(self._engine,
                     lambda engine: engine.get_run(run_id).watch(after_seq, buffer))

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


async def _wait(engine: AsyncEngine, run_id: str, timeout: float, finished: bool,
                until: Any = None) -> Any:
    """`Run.wait(until)` (or `result()` when `finished`) of the run, within `timeout`.

    The limit is kept inside the engine's trio run: only this wait is cancelled when
    it passes, never the run itself.
    """
    run = engine.get_run(run_id)
    with trio.move_on_after(timeout):
        return await (run.result() if finished else run.wait(until))
    state = engine.status(run_id).state
    goal = "finish" if finished else "finish or suspend"
    raise TimeoutError(
        f"run {run_id!r} did not {goal} within {timeout:g} s (it is {state}); it goes on "
        "unchanged: wait for it again, or look at engine.status(run_id) later")
