"""Executing one `Step`: attempts, timeouts, durable retries and recovery.

A step's attempts are recorded as they end: ``completed`` (with the value),
``retrying`` (with the back-off deadline; the run is ``sleeping`` meanwhile) or
``failed`` (the budget is spent: `StepFailed` is thrown into the workflow). Sync step
functions run in worker threads, bounded by the engine's limiter; async ones run on the
engine's loop. After a crash, the first fresh attempt of each recovered run runs alone
with its start recorded (``started``), so an attempt that kills the process is charged
to its own step, and only to it (SPEC §2 rule 6).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import trio

from replay._clock import EngineClock, busy_thread
from replay._codec import decode, encode, to_json
from replay._commands import Retry, Step
from replay._errors import (
    EncodingError,
    ReplayError,
    StepFailed,
    StepInterrupted,
    StepTimeout,
    error_types_of,
    message_of,
    qualified_name,
)
from replay._history import KeyRecord, Record
from replay._model import RunSlot, RunState
from replay._parking import Park
from replay._workers import WorkerPool

_CURRENT_STEP: ContextVar[tuple[str, str, int] | None] = ContextVar(
    "replay_current_step", default=None
)

ONE_ATTEMPT = Retry(attempts=1)


def current_step() -> tuple[str, str, int]:
    """Return ``(run_id, key, attempt)`` of the step whose function is running.

    Use it inside a step function (sync or async) to build idempotency keys for
    outside systems, e.g. ``f"{run_id}:{key}"``.

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


@dataclass(slots=True)
class _Attempt:
    ok: bool
    value: Any
    duration_ms: float | None


class StepRunner:
    """Runs steps for the engine.

    Args:
        commit: Makes records durable and applies them to their run's slot.
        clock: The engine clock.
        default_retry: The engine-wide policy for steps without `retry=`.
        workers: The threads that run sync step functions.
    """

    def __init__(
        self,
        commit: Callable[[RunSlot, Record], Awaitable[None]],
        clock: EngineClock,
        default_retry: Retry | None,
        workers: WorkerPool,
    ) -> None:
        self._commit = commit
        self._clock = clock
        self._default_retry = default_retry or ONE_ATTEMPT
        self._workers = workers
        # Held by a recovered run's first fresh attempt, so that those run one at a time.
        self._recovery_lock = trio.Lock()

    async def run(
        self, slot: RunSlot, step: Step, record: KeyRecord | None, recovering: bool
    ) -> tuple[bool, Any] | Park:
        """Make the step's next attempt, or settle an interrupted one.

        Returns:
            ``(True, value)`` with the value as a replay will see it,
            ``(False, StepFailed)`` to throw into the workflow once the budget is
            spent, or `Park` with the back-off deadline of the next attempt.
        """
        attempt = record.attempts if record else 0
        if record is not None and record.started is not None:
            attempt = record.started
            failure = _Attempt(False, StepInterrupted(
                f"step {step.key!r} attempt {attempt} was running when the process "
                "stopped; it counts as a failed attempt"), None)
        else:
            attempt += 1
            # Only a recovered run's first attempt pays for the recovery lock.
            alone = self._alone(slot, step, attempt) if recovering else nullcontext()
            async with alone:
                failure = await self._attempt(slot, step, attempt)
                if failure.ok:
                    return await self._succeeded(slot, step, attempt, failure)
        budget_start = record.budget_start if record else 0
        return await self._settle(slot, step, attempt - budget_start, attempt, failure)

    async def _settle(
        self, slot: RunSlot, step: Step, used: int, attempt: int, failure: _Attempt
    ) -> tuple[bool, Any] | Park:
        policy = step.retry or self._default_retry
        error: BaseException = failure.value
        if used < policy.attempts and policy.retries(error_types_of(error)):
            delay = policy.delay(slot.run_id, step.key, used)
            wake_at = self._clock.now() + timedelta(seconds=delay)
            await self._commit(slot, self._failure_record(
                slot, step, attempt, failure, "retrying", wake_at=wake_at))
            return Park(wake_at)
        await self._commit(slot, self._failure_record(slot, step, attempt, failure, "failed"))
        return False, self._step_failed(slot, step, attempt, error)

    @asynccontextmanager
    async def _alone(self, slot: RunSlot, step: Step, attempt: int) -> AsyncIterator[None]:
        async with self._recovery_lock:
            await self._commit(slot, Record(
                slot.run_id, slot.workflow, "step", "started", key=step.key,
                attempt=attempt, name=step.name))
            yield

    async def _succeeded(
        self, slot: RunSlot, step: Step, attempt: int, outcome: _Attempt
    ) -> tuple[bool, Any]:
        try:
            data = encode(outcome.value, key=step.key)
        except EncodingError as error:
            # An unencodable value is a bug in the step, not bad luck: not retried.
            failed = _Attempt(False, error, outcome.duration_ms)
            await self._commit(slot, self._failure_record(slot, step, attempt, failed, "failed"))
            return False, self._step_failed(slot, step, attempt, error)
        await self._commit(slot, Record(
            slot.run_id, slot.workflow, "step", "completed", key=step.key, attempt=attempt,
            value=data, value_json=to_json(outcome.value), name=step.name,
            duration_ms=outcome.duration_ms, run_state=_running_unless(slot)))
        return True, decode(data)

    async def _attempt(self, slot: RunSlot, step: Step, attempt: int) -> _Attempt:
        began = trio.current_time()
        token = _CURRENT_STEP.set((slot.run_id, step.key, attempt))
        try:
            value = await self._call(step, attempt)
        except Exception as error:
            return _Attempt(False, error, _elapsed_ms(began))
        finally:
            _CURRENT_STEP.reset(token)
        return _Attempt(True, value, _elapsed_ms(began))

    async def _call(self, step: Step, attempt: int) -> Any:
        if step.timeout is None:
            # No cancel scope on the hot path: entering one costs a few microseconds.
            return await self._invoke(step)
        with trio.CancelScope(deadline=trio.current_time() + step.timeout) as scope:
            value = await self._invoke(step)
        if scope.cancelled_caught:
            raise StepTimeout(
                f"step {step.key!r} attempt {attempt} exceeded its timeout of "
                f"{step.timeout:g}s"
            )
        return value

    async def _invoke(self, step: Step) -> Any:
        if step.is_async:
            return await step.fn(*step.args)
        # A thread cannot be stopped: on timeout it is abandoned, still running.
        with busy_thread():
            return await self._workers.run(step.fn, *step.args)

    @staticmethod
    def _failure_record(
        slot: RunSlot, step: Step, attempt: int, failure: _Attempt, event: str,
        wake_at: Any = None,
    ) -> Record:
        error: BaseException = failure.value
        return Record(
            slot.run_id, slot.workflow, "step", event, key=step.key, attempt=attempt,
            error_type=qualified_name(type(error)), error=message_of(error),
            error_types=error_types_of(error), name=step.name,
            duration_ms=failure.duration_ms, wake_at=wake_at,
            run_state="sleeping" if event == "retrying" else _running_unless(slot),
        )

    @staticmethod
    def _step_failed(slot: RunSlot, step: Step, attempt: int, error: BaseException) -> StepFailed:
        failed = StepFailed(
            slot.run_id, step.key, qualified_name(type(error)), message_of(error), attempt,
            error_types_of(error),
        )
        failed.__cause__ = error
        return failed


def _running_unless(slot: RunSlot) -> str | None:
    """Mark the run ``running`` only when that changes its state.

    Most step records leave a running run running; leaving their state empty keeps the
    state-carrying rows few, which keeps opening a large file fast.
    """
    return None if slot.state is RunState.RUNNING else "running"


def _elapsed_ms(began: float) -> float:
    return (trio.current_time() - began) * 1000.0
