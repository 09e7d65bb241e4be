"""Calling a step function: on the loop or in a thread, under its timeout.

`StepCaller.call` makes one attempt and returns its `Outcome`; what the outcome means
(retry, fail, interruptions) is the run machine's business. Sync step functions run in
worker threads (a timed-out thread is abandoned, still running: threads cannot be
stopped), except pure ones (quick computations, called on the loop); async ones run
on the engine's loop. `current_step()` tells a step function which run, key and
attempt it serves.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, NamedTuple

import trio

from replay._codec import encode
from replay._commands import Step
from replay._core._decisions import Outcome
from replay._engine._clock import busy_thread
from replay._engine._workers import Prelude, WorkerPool, WorkerTimeout
from replay._errors import ReplayError, StepTimeout


class StepContext(NamedTuple):
    """The step whose function is running: ``run_id, key, attempt = current_step()``.

    Attributes:
        run_id: The run the step belongs to.
        key: The step's key.
        attempt: The attempt number (1 for the first).
    """

    run_id: str
    key: str
    attempt: int

    def progress(self, value: Any) -> None:
        """Publish how far the step has got, e.g. ``{"rows": 1200, "of": 5000}``.

        Watchers of the run (`Run.watch`, `replay watch`) get it at once as a
        ``"progress"`` update. It is *not* recorded: a replay does not see it, and
        nothing of it survives a restart; record a status with `Note` instead.
        Callable from sync steps (in their worker thread) and async ones.

        Raises:
            EncodingError: `value` is not a value replay can record (remote watchers
                receive it encoded).
            ReplayError: Called after the step's function returned.
        """
        publish = _PUBLISH.get()
        if publish is None or _CURRENT_STEP.get() != self:
            raise ReplayError(
                f"StepContext.progress() of step {self.key!r} was called outside its "
                "step function; call it while the function runs")
        publish(self.run_id, self.key, value)


_CURRENT_STEP: ContextVar[StepContext | None] = ContextVar("replay_current_step", default=None)
_PUBLISH: ContextVar[Callable[[str, str, Any], None] | None] = ContextVar(
    "replay_publish_progress", default=None)


def current_step() -> StepContext:
    """Return the `StepContext` (``run_id, key, attempt``) of the running step function.

    Use it inside a step function (sync or async) to build idempotency keys for
    outside systems, e.g. ``f"{run_id}:{key}"``, or to publish progress
    (``current_step().progress(...)``).

    Raises:
        ReplayError: Called outside a step function.
    """
    current = _CURRENT_STEP.get()
    if current is None:
        raise ReplayError(
            "replay.current_step() was called outside a step function; call it only "
            "from a function that a Step runs"
        )
    return current


class StepCaller:
    """Calls step functions for the engine: async ones on its loop, sync ones in threads.

    Args:
        workers: The threads that run sync step functions.
    """

    def __init__(self, workers: WorkerPool) -> None:
        self._workers = workers
        # Where `StepContext.progress` values go (set by the engine), and the function
        # that hands them over from any thread (made on the loop, on first use).
        self.on_progress: Callable[[str, str, Any], None] | None = None
        self._publish: Callable[[str, str, Any], None] | None = None

    async def call(self, run_id: str, step: Step, attempt: int,
                   late: Callable[[Outcome], None] | None = None,
                   prelude: Prelude | None = None) -> Outcome:
        """Make attempt `attempt` of `step`; return how it ended.

        A `trio.Cancelled` that the engine sent (it is stopping, or the attempt lost a
        race) propagates; one that escaped the step function on its own is the attempt's
        failure. `late` is told the outcome of a sync attempt whose thread was abandoned
        that way, once the thread finishes. `prelude`: what the worker thread of a sync
        (not pure) step does first (the commit the attempt must follow).
        """
        began = trio.current_time()
        # tuple.__new__: no Python-level frame on every step's hot path.
        token = _CURRENT_STEP.set(tuple.__new__(StepContext, (run_id, step.key, attempt)))
        try:
            late_outcome = None if step.is_async else _late(late, began, prelude)
            value = await self._call(run_id, step, attempt, late_outcome, prelude)
        except trio.Cancelled as cancelled:
            if trio.current_effective_deadline() == -math.inf:
                raise  # the engine cancelled this task: it is stopping
            return Outcome(False, _stray(run_id, step, attempt, cancelled),
                           _elapsed_ms(began, prelude))
        except Exception as error:
            return Outcome(False, error, _elapsed_ms(began, prelude))
        finally:
            _CURRENT_STEP.reset(token)
        return Outcome(True, value, _elapsed_ms(began, prelude))

    def has_idle_thread(self) -> bool:
        """Whether a sync step's call would start at once (a worker thread is free)."""
        return self._workers.has_idle_thread()

    @property
    def thread_calls(self) -> int:
        """How many sync step functions were handed to worker threads so far."""
        return self._workers.calls

    def compute(self, run_id: str, step: Step, attempt: int) -> Outcome:
        """Make attempt `attempt` of a sync pure `step` on the loop; return how it ended.

        A pure step is a quick computation: no thread, no cancel scope (nothing could
        stop it midway anyway), and no `await`.
        """
        began = trio.current_time()
        token = _CURRENT_STEP.set(tuple.__new__(StepContext, (run_id, step.key, attempt)))
        try:
            value = step.fn(*step.args)
        except Exception as error:
            return Outcome(False, error, _elapsed_ms(began))
        finally:
            _CURRENT_STEP.reset(token)
        return Outcome(True, value, _elapsed_ms(began))

    def publishing(self) -> None:
        """Let the step functions the current task calls publish progress.

        Set once per run task, not per step (a context variable is inherited by the
        task's group members and copied into the worker threads of its sync steps).
        """
        if self._publish is None:
            self._publish = self._publisher()
        _PUBLISH.set(self._publish)

    def _publisher(self) -> Callable[[str, str, Any], None]:
        """Return the function that hands a progress value to the loop, from any thread."""
        token = trio.lowlevel.current_trio_token()
        loop_thread = threading.get_ident()

        def publish(run_id: str, key: str, value: Any) -> None:
            encode(value, key="progress")  # what remote watchers will need
            target = self.on_progress
            if target is None:
                return
            if threading.get_ident() == loop_thread:
                # An async step, on the loop: at once, so that its watchers see the value
                # before the step's outcome (whose commit may follow without a pause).
                target(run_id, key, value)
                return
            with contextlib.suppress(trio.RunFinishedError):
                # From a worker thread: queued ahead of the call's own hand-back.
                token.run_sync_soon(target, run_id, key, value)

        return publish

    async def _call(self, run_id: str, step: Step, attempt: int,
                    late: Callable[[bool, Any], None] | None, prelude: Prelude | None) -> Any:
        if step.pure and not step.is_async:  # a group's member: see `compute`
            return step.fn(*step.args)
        if not step.is_async:
            # A thread cannot be stopped: on timeout it is abandoned, still running.
            # The timeout counts from when a thread starts the call, not from the queue.
            with busy_thread():
                try:
                    return await self._workers.run(step.fn, *step.args, timeout=step.timeout,
                                                   late=late, prelude=prelude)
                except WorkerTimeout:
                    raise _timeout(run_id, step, attempt) from None
        if step.timeout is None:
            # No cancel scope on the hot path: entering one costs a few microseconds.
            return await step.fn(*step.args)
        with trio.move_on_after(step.timeout) as scope:
            value = await step.fn(*step.args)
        if scope.cancelled_caught:
            raise _timeout(run_id, step, attempt)
        return value


def _timeout(run_id: str, step: Step, attempt: int) -> StepTimeout:
    return StepTimeout(
        f"step {step.key!r} of run {run_id!r}: attempt {attempt} exceeded its "
        f"timeout of {step.timeout:g}s", run_id=run_id, key=step.key)


def _stray(run_id: str, step: Step, attempt: int, cancelled: trio.Cancelled) -> RuntimeError:
    """Turn a `trio.Cancelled` that no engine scope sent into the attempt's failure."""
    error = RuntimeError(
        f"step {step.key!r} of run {run_id!r}: attempt {attempt} raised "
        "trio.Cancelled although nothing cancelled it; a step must not let a "
        "Cancelled escape the cancel scope that caught it")
    error.__cause__ = cancelled
    return error


def _late(late: Callable[[Outcome], None] | None, began: float, prelude: Prelude | None
          ) -> Callable[[bool, Any], None] | None:
    if late is None:
        return None
    return lambda ok, value: late(Outcome(ok, value, _elapsed_ms(began, prelude)))


def _elapsed_ms(began: float, prelude: Prelude | None = None) -> float:
    if prelude is not None and prelude.done_at is not None:
        began = prelude.done_at  # the commit the call followed is not the step's time
    return (trio.current_time() - began) * 1000.0
