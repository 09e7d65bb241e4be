"""Executing one `Step`: attempts, timeouts, durable retries, stops and interruptions.

A step's attempts are recorded as they end: ``completed`` (with the value),
``retrying`` (with the back-off deadline; the run is ``sleeping`` meanwhile) or
``failed`` (the budget is spent: `StepFailed` is thrown into the workflow). Sync step
functions run in worker threads; async ones run on the engine's loop.

Stops and crashes are told apart (SPEC §2 rule 6). An attempt still running when the
engine stops is recorded as ``abandoned`` (without waiting: the committer commits it
before the file closes) and costs nothing. The first attempt of each run after the
engine opened, whatever starts it, runs alone with its start recorded (``started``):
a ``started`` found at the next open with no end was interrupted by the process dying,
is recorded as ``interrupted`` and counted against `max_interruptions`, never against
the step's `Retry` budget. Other runs' attempts running beside it are not charged.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import trio

from replay._codec import decode, encode, to_json
from replay._commands import Step
from replay._core._history import KeyRecord, Record
from replay._engine._clock import EngineClock, busy_thread
from replay._engine._parking import Park
from replay._engine._slots import RunSlot
from replay._engine._workers import WorkerPool, WorkerTimeout
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
from replay._retry import Retry
from replay._types import RunState

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
        commit: Makes a record durable and applies it to its run's slot.
        enqueue: Queues a record for the next commit without waiting for it.
        clock: The engine clock.
        default_retry: The engine-wide policy for steps without `retry=`.
        workers: The threads that run sync step functions.
        max_interruptions: How many process deaths one step may cause before it fails.
    """

    def __init__(
        self,
        commit: Callable[[RunSlot, Record], Awaitable[None]],
        enqueue: Callable[[RunSlot, Record], object],
        clock: EngineClock,
        default_retry: Retry | None,
        workers: WorkerPool,
        max_interruptions: int = 3,
    ) -> None:
        self._commit = commit
        self._enqueue = enqueue
        self._clock = clock
        self._default_retry = default_retry or ONE_ATTEMPT
        self._workers = workers
        self._max_interruptions = max_interruptions
        # Held by each run's first attempt since the engine opened: those run one at a time.
        self._first_attempts = trio.Lock()

    async def run(
        self, slot: RunSlot, step: Step, record: KeyRecord | None
    ) -> tuple[bool, Any] | Park:
        """Settle an interrupted attempt if there is one, then make the next attempt.

        Returns:
            ``(True, value)`` with the value as a replay will see it,
            ``(False, StepFailed)`` to throw into the workflow once the budget is
            spent, or `Park` with the back-off deadline of the next attempt.
        """
        if record is not None and record.started is not None:
            failed = await self._interrupted(slot, step, record, record.started)
            if failed is not None:
                return False, failed
        attempt = (record.attempts if record else 0) + 1
        charged = record.charged if record else 0
        if not slot.needs_start_mark:
            return await self._make(slot, step, attempt, charged, mark=False)
        async with self._first_attempts:
            result = await self._make(slot, step, attempt, charged, mark=True)
        slot.needs_start_mark = False
        return result

    async def _interrupted(
        self, slot: RunSlot, step: Step, record: KeyRecord, attempt: int
    ) -> StepFailed | None:
        """Record that `attempt` died with the process; fail the step at the limit."""
        count, limit = record.interruptions + 1, self._max_interruptions
        if count < limit:
            await self._commit(slot, Record(
                slot.run_id, slot.workflow, "step", "interrupted", key=step.key,
                attempt=attempt, name=step.name, error_type=qualified_name(StepInterrupted),
                error=f"the process died while attempt {attempt} ran "
                      f"(interruption {count} of at most {limit})"))
            return None
        error = StepInterrupted(
            f"step {step.key!r} of run {slot.run_id!r} was running when the process died "
            f"{count} times (max_interruptions={limit}); find what kills the process "
            "(a crash, the OOM killer), fix it and resume the run",
            run_id=slot.run_id, key=step.key)
        failed = _Attempt(False, error, None)
        await self._commit(slot, self._failure_record(slot, step, attempt, failed, "failed"))
        return self._step_failed(slot, step, attempt, error)

    async def _make(
        self, slot: RunSlot, step: Step, attempt: int, charged: int, mark: bool
    ) -> tuple[bool, Any] | Park:
        """Make one attempt (its start recorded first when `mark`) and record its end."""
        try:
            if mark:
                await self._commit(slot, Record(
                    slot.run_id, slot.workflow, "step", "started", key=step.key,
                    attempt=attempt, name=step.name, run_state=_running_unless(slot)))
            outcome = await self._attempt(slot, step, attempt)
        except BaseException:
            # The engine is stopping: a clean stop charges nothing. Queued, not awaited
            # (this task is being cancelled); the committer commits it before closing.
            self._enqueue(slot, Record(
                slot.run_id, slot.workflow, "step", "abandoned", key=step.key,
                attempt=attempt, name=step.name))
            raise
        if outcome.ok:
            return await self._succeeded(slot, step, attempt, outcome)
        return await self._settle(slot, step, charged + 1, attempt, outcome)

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
            value = await self._call(slot, step, attempt)
        except trio.Cancelled as cancelled:
            if trio.current_effective_deadline() == -math.inf:
                raise  # the engine cancelled this task: it is stopping
            return _Attempt(False, _stray(slot, step, attempt, cancelled), _elapsed_ms(began))
        except Exception as error:
            return _Attempt(False, error, _elapsed_ms(began))
        finally:
            _CURRENT_STEP.reset(token)
        return _Attempt(True, value, _elapsed_ms(began))

    async def _call(self, slot: RunSlot, step: Step, attempt: int) -> Any:
        if not step.is_async:
            # A thread cannot be stopped: on timeout it is abandoned, still running.
            # The timeout counts from when a thread starts the call, not from the queue.
            with busy_thread():
                try:
                    return await self._workers.run(step.fn, *step.args, timeout=step.timeout)
                except WorkerTimeout:
                    raise _timeout(slot, step, attempt) from None
        if step.timeout is None:
            # No cancel scope on the hot path: entering one costs a few microseconds.
            return await step.fn(*step.args)
        with trio.move_on_after(step.timeout) as scope:
            value = await step.fn(*step.args)
        if scope.cancelled_caught:
            raise _timeout(slot, step, attempt)
        return value

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


def _timeout(slot: RunSlot, step: Step, attempt: int) -> StepTimeout:
    return StepTimeout(
        f"step {step.key!r} of run {slot.run_id!r}: attempt {attempt} exceeded its "
        f"timeout of {step.timeout:g}s", run_id=slot.run_id, key=step.key)


def _stray(slot: RunSlot, step: Step, attempt: int, cancelled: trio.Cancelled) -> RuntimeError:
    """Turn a `trio.Cancelled` that no engine scope sent into the attempt's failure."""
    error = RuntimeError(
        f"step {step.key!r} of run {slot.run_id!r}: attempt {attempt} raised "
        "trio.Cancelled although nothing cancelled it; a step must not let a "
        "Cancelled escape the cancel scope that caught it")
    error.__cause__ = cancelled
    return error


def _running_unless(slot: RunSlot) -> str | None:
    """Mark the run ``running`` only when that changes its state.

    Most step records leave a running run running; leaving their state empty keeps the
    state-carrying rows few, which keeps opening a large file fast.
    """
    return None if slot.state is RunState.RUNNING else "running"


def _elapsed_ms(began: float) -> float:
    return (trio.current_time() - began) * 1000.0
