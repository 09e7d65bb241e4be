"""Driving one run: the I/O loop around the sans-IO interpreter.

`Runner.drive` is the ten-line driver of the h11 pattern grown to what a durable
engine needs: it builds the memo (from memory, or with one query), creates the
generator, and turns each `Decision` into I/O, recording every outcome durably before
sending it back. A run is driven by at most one task at a time (`RunSlot.active`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from replay._codec import decode, encode, to_json
from replay._commands import Sleep, Step, Suspend
from replay._core._history import KeyRecord, Record, RunHistory
from replay._core._interpreter import Execute, Fail, Finish, Interpreter, format_failure
from replay._engine._clock import EngineClock
from replay._engine._parking import Park, Parked
from replay._engine._slots import RunSlot
from replay._engine._steps import StepRunner
from replay._errors import (
    EncodingError,
    ReplayInternalError,
    SuspendTimeout,
    clip,
    message_of,
    qualified_name,
)
from replay._types import FINISHED

log = logging.getLogger("replay")

Commit = Callable[[RunSlot, Record], Awaitable[None]]


class Runner:
    """Executes runs for the engine.

    Args:
        workflows: Registered workflow functions by name.
        load: Loads a run's records (one query, off the loop).
        commit: Makes a record durable and applies it to its slot.
        steps: Executes steps.
        stopping: Tells whether the engine is shutting down.
    """

    def __init__(
        self,
        workflows: dict[str, Callable[..., Any]],
        load: Callable[[str], Awaitable[list[Record]]],
        commit: Commit,
        steps: StepRunner,
        clock: EngineClock,
        park: Callable[[RunSlot, Parked, datetime | None], None],
        stopping: Callable[[], bool],
        strict_replay: bool = False,
    ) -> None:
        self._workflows = workflows
        self._load = load
        self._commit = commit
        self._steps = steps
        self._clock = clock
        self._park = park
        self._stopping = stopping
        self._strict_replay = strict_replay

    async def drive(
        self, slot: RunSlot, input_data: bytes | None, parked: Parked | None = None,
        replaying: bool = False,
    ) -> None:
        """Execute `slot`'s run until it finishes, parks, or the engine stops.

        The caller sets ``slot.active`` before starting the task; it is cleared here,
        in the same step as parking, so no wake-up can slip in between. `replaying`
        says the same code re-executes a run it parked (a wake-up, not a resume): with
        `always_replay`, it must then reach the key where it stopped without executing
        anything new on the way.
        """
        parking: tuple[Parked, datetime | None] | None = None
        try:
            if parked is None and (input_data is None or slot.history is None):
                # Under the run's lock, so that no signal commits between the load
                # and the memo taking its place.
                async with slot.lock:
                    records = await self._load(slot.run_id)
                    slot.history = RunHistory(records)
                input_data = input_of(records)
            try:
                frontier = None
                if replaying and self._strict_replay and slot.history is not None:
                    frontier = slot.history.last_key()
                parking = await self._execute(slot, input_data, parked, frontier)
            except Exception as error:
                # A bug in replay must fail only this run, never the engine.
                await self._fail(slot, _internal_error(slot, error))
        finally:
            slot.active = slot.settling = False
            if parking is not None:
                self._park(slot, *parking)
            else:
                if slot.state in FINISHED:
                    slot.history = None
                slot.notify()  # a `resume` or a signal may wait for this task to end

    async def _execute(
        self, slot: RunSlot, input_data: bytes | None, parked: Parked | None,
        frontier: str | None,
    ) -> tuple[Parked, datetime | None] | None:
        decision: Execute | Finish | Fail
        if parked is not None:
            interpreter, decision = parked.interpreter, parked.decision
        else:
            assert slot.history is not None and input_data is not None
            made = self._interpreter(slot, input_data, slot.history, frontier)
            if isinstance(made, Fail):
                await self._fail(slot, made)
                return None
            interpreter, decision = made, made.start()
        while True:
            await self._record_notes(slot, interpreter)
            if isinstance(decision, Finish):
                await self._complete(slot, decision.output)
                return None
            if isinstance(decision, Fail):
                await self._fail(slot, decision)
                return None
            if self._stopping():
                # Start no new command: the run continues at the next open.
                interpreter.close()
                return None
            result = await self._perform(slot, interpreter, decision)
            if isinstance(result, Park):
                return Parked(interpreter, decision), result.wake_at
            decision = result

    async def _perform(
        self, slot: RunSlot, interpreter: Interpreter, decision: Execute
    ) -> Execute | Finish | Fail | Park:
        command = decision.command
        assert slot.history is not None
        # The decision may come from a parked execution: read the key's current record.
        record = slot.history.get(command.key)
        if isinstance(command, Step):
            if record and record.started is None and _pending(record.wake_at, self._clock):
                return Park(record.wake_at)
            result = await self._steps.run(slot, command, record)
        elif isinstance(command, Sleep):
            result = await self._sleep(slot, command, record)
        else:
            result = await self._suspend(slot, command, record)
        if isinstance(result, Park):
            return result
        ok, outcome = result
        return interpreter.send(outcome) if ok else interpreter.throw(outcome)

    async def _sleep(
        self, slot: RunSlot, sleep: Sleep, record: KeyRecord | None
    ) -> tuple[bool, Any] | Park:
        if record is None or record.wake_at is None:
            wake_at = sleep.until or self._clock.now() + (sleep.duration or timedelta(0))
            await self._commit(slot, Record(
                slot.run_id, slot.workflow, "sleep", "scheduled", key=sleep.key,
                wake_at=wake_at, run_state="sleeping"))
        else:
            wake_at = record.wake_at
        if _pending(wake_at, self._clock):
            return Park(wake_at)
        await self._commit(slot, Record(
            slot.run_id, slot.workflow, "sleep", "fired", key=sleep.key, wake_at=wake_at,
            run_state="running"))
        return True, None

    async def _suspend(
        self, slot: RunSlot, suspend: Suspend, record: KeyRecord | None
    ) -> tuple[bool, Any] | Park:
        # Under the run's lock: a signal either is in the mailbox now, or arrives after
        # the run is parked and wakes it. No wake-up is lost in between.
        async with slot.lock:
            history = slot.history
            assert history is not None
            if suspend.key in history.signals:
                if record is None:
                    await self._record_taken(slot, suspend)
                data = history.signals[suspend.key]
                return True, None if data is None else decode(data)
            if record is None:
                now = self._clock.now()
                wake_at = None if suspend.timeout is None else now + suspend.timeout
                await self._commit(slot, Record(
                    slot.run_id, slot.workflow, "suspend", "suspended", key=suspend.key,
                    wake_at=wake_at, status_text=suspend.status, run_state="suspended"))
                return Park(wake_at)
            if record.wake_at is None or _pending(record.wake_at, self._clock):
                return Park(record.wake_at)
            timeout = SuspendTimeout(slot.run_id, suspend.key)
            await self._commit(slot, Record(
                slot.run_id, slot.workflow, "suspend", "timed_out", key=suspend.key,
                error_type=qualified_name(SuspendTimeout), error=str(timeout),
                wake_at=record.wake_at, run_state="running"))
            return False, timeout

    def _interpreter(
        self, slot: RunSlot, input_data: bytes, history: RunHistory, frontier: str | None
    ) -> Interpreter | Fail:
        function = self._workflows[slot.workflow]
        try:
            generator = function(*decode(input_data))  # type: ignore[misc]
        except Exception as error:
            return Fail(error, format_failure(error))
        if not hasattr(generator, "send") or not hasattr(generator, "throw"):
            wrong = TypeError(
                f"workflow {slot.workflow!r} returned {generator!r} "
                f"({type(generator).__name__}) instead of a generator; a workflow is a "
                "generator function that yields commands such as Step"
            )
            return Fail(wrong, f"{qualified_name(TypeError)}: {wrong}\n")
        return Interpreter(slot.run_id, slot.workflow, generator, history, decode, frontier)

    async def _complete(self, slot: RunSlot, output: Any) -> None:
        try:
            data = encode(output, key="output")
        except EncodingError as error:
            await self._fail(slot, Fail(error, format_failure(error)))
            return
        await self._commit(slot, Record(
            slot.run_id, slot.workflow, "run", "completed", value=data,
            value_json=to_json(output), run_state="completed"))

    async def _fail(self, slot: RunSlot, failure: Fail) -> None:
        message = message_of(failure.error)
        await self._commit(slot, Record(
            slot.run_id, slot.workflow, "run", "failed",
            error_type=qualified_name(type(failure.error)), error=clip(failure.traceback),
            value=encode(message, key="error"), value_json=to_json(message),
            run_state="failed"))

    async def _record_taken(self, slot: RunSlot, suspend: Suspend) -> None:
        # The signal came early: record that this Suspend took it, so the key is known
        # as a Suspend and no longer counts as undelivered.
        await self._commit(slot, Record(
            slot.run_id, slot.workflow, "suspend", "signalled", key=suspend.key,
            status_text=suspend.status))

    async def _record_notes(self, slot: RunSlot, interpreter: Interpreter) -> None:
        while interpreter.taken:
            await self._record_taken(slot, interpreter.taken.pop(0))
        while interpreter.renames:
            rename = interpreter.renames.pop(0)
            log.warning(rename.message)
            names = {"recorded": rename.recorded, "current": rename.current}
            await self._commit(slot, Record(
                slot.run_id, slot.workflow, "step", "renamed", key=rename.key,
                value=encode(names, key=rename.key), value_json=to_json(names),
                error=rename.message, name=rename.current))


def _internal_error(slot: RunSlot, error: Exception) -> Fail:
    if isinstance(error, EncodingError):
        # A recorded value that cannot be decoded (an unregistered tag, damaged data) is
        # bad data, not a bug in replay: the run fails with it.
        return Fail(error, format_failure(error))
    internal = ReplayInternalError(
        f"run {slot.run_id!r} hit an internal error: {qualified_name(type(error))}: "
        f"{message_of(error)}; this is a bug in replay; please report it"
    )
    internal.__cause__ = error
    return Fail(internal, format_failure(internal))


def _pending(wake_at: datetime | None, clock: EngineClock) -> bool:
    """Tell whether a deadline is still ahead on the engine clock."""
    return wake_at is not None and wake_at > clock.now()


def input_of(records: list[Record]) -> bytes:
    """Return the encoded input of a run, from its ``run/started`` record."""
    for record in records:
        if record.kind == "run" and record.event == "started" and record.value is not None:
            return record.value
    return encode((), key="input")
