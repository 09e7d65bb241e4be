"""Driving one run: the I/O loop around the sans-IO interpreter.

`Runner.drive` is the ten-line driver of the h11 pattern grown to what a durable
engine needs: it builds the memo (from memory, or with one query), creates the
generator, and turns each `Decision` into I/O, recording every outcome durably before
sending it back. A run is driven by at most one task at a time (`RunSlot.active`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from replay._codec import decode, encode, to_json
from replay._commands import Step
from replay._errors import (
    EncodingError,
    ReplayInternalError,
    clip,
    message_of,
    qualified_name,
)
from replay._history import Record, RunHistory
from replay._interpreter import Execute, Fail, Finish, Interpreter, format_failure
from replay._model import FINISHED, RunSlot
from replay._steps import StepRunner, Stopping

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
        stopping: Callable[[], bool],
    ) -> None:
        self._workflows = workflows
        self._load = load
        self._commit = commit
        self._steps = steps
        self._stopping = stopping

    async def drive(self, slot: RunSlot, input_data: bytes | None, recovering: bool) -> None:
        """Execute `slot`'s run until it finishes, parks, or the engine stops.

        The caller sets ``slot.active`` before starting the task; it is cleared here.
        """
        try:
            if input_data is None or slot.history is None:
                records = await self._load(slot.run_id)
                slot.history = RunHistory(records)
                input_data = _input_of(records)
            try:
                await self._execute(slot, input_data, slot.history, recovering)
            except Exception as error:
                # A bug in replay must fail only this run, never the engine.
                await self._fail(slot, _internal_error(slot, error))
        finally:
            slot.active = False
            if slot.state in FINISHED:
                slot.history = None

    async def _execute(
        self, slot: RunSlot, input_data: bytes, history: RunHistory, recovering: bool
    ) -> None:
        interpreter = self._interpreter(slot, input_data, history)
        if isinstance(interpreter, Fail):
            await self._fail(slot, interpreter)
            return
        decision = interpreter.start()
        while True:
            await self._record_renames(slot, interpreter)
            if isinstance(decision, Finish):
                await self._complete(slot, decision.output)
                return
            if isinstance(decision, Fail):
                await self._fail(slot, decision)
                return
            if self._stopping():
                # Start no new command: the run continues at the next open.
                interpreter.close()
                return
            try:
                decision = await self._perform(slot, interpreter, decision, recovering)
            except Stopping:
                interpreter.close()
                return
            recovering = False

    async def _perform(
        self, slot: RunSlot, interpreter: Interpreter, decision: Execute, recovering: bool
    ) -> Execute | Finish | Fail:
        command = decision.command
        if isinstance(command, Step):
            ok, outcome = await self._steps.run(slot, command, decision.record, recovering)
            return interpreter.send(outcome) if ok else interpreter.throw(outcome)
        interpreter.close()
        error = NotImplementedError(
            f"workflow {slot.workflow!r} yielded {command!r}; {type(command).__name__} is "
            "not supported by this version of replay yet"
        )
        return Fail(error, f"{qualified_name(type(error))}: {error}\n")

    def _interpreter(
        self, slot: RunSlot, input_data: bytes, history: RunHistory
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
        return Interpreter(slot.run_id, slot.workflow, generator, history, decode)

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

    async def _record_renames(self, slot: RunSlot, interpreter: Interpreter) -> None:
        while interpreter.renames:
            rename = interpreter.renames.pop(0)
            log.warning(rename.message)
            names = {"recorded": rename.recorded, "current": rename.current}
            await self._commit(slot, Record(
                slot.run_id, slot.workflow, "step", "renamed", key=rename.key,
                value=encode(names, key=rename.key), value_json=to_json(names),
                error=rename.message, name=rename.current))


def _internal_error(slot: RunSlot, error: Exception) -> Fail:
    internal = ReplayInternalError(
        f"run {slot.run_id!r} hit an internal error: {qualified_name(type(error))}: "
        f"{message_of(error)}; this is a bug in replay; please report it"
    )
    internal.__cause__ = error
    return Fail(internal, format_failure(internal))


def _input_of(records: list[Record]) -> bytes:
    for record in records:
        if record.kind == "run" and record.event == "started" and record.value is not None:
            return record.value
    return encode((), key="input")
