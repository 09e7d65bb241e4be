"""What one execution of a run records, in the order it decides it.

The run machine decides; the `Recorder` keeps what its decisions record until the engine
takes them: each record is applied to the run's memo at once (so the next decision sees
it), and handed over with the decision (`flush`). It also collects what the engine must
do with the commit beyond writing it: child runs to start, child runs to cancel and
step attempts to stop. Groups (`_groups`) record through it too.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from replay._commands import Step
from replay._core._decisions import Attempt, ChildStart, Codec, Outcome
from replay._core._history import Failure, KeyRecord, RunHistory, child_run_id, step_failed
from replay._core._records import Encoded, ErrorText, Record, Run
from replay._errors import (
    EncodingError,
    StepFailed,
    StepInterrupted,
    error_types_of,
    message_of,
    qualified_name,
)
from replay._parallel import GROUP_TYPES, Child, Member, kind_of
from replay._types import RunState

CANCELLED = "the run was cancelled"


class Recorder:
    """The records of one execution, and what the engine must do with their commit.

    Args:
        run: Makes the run's records.
        history: The run's memo; every record is applied to it as it is made.
        codec: Encodes values for records.
        state: The run's current state.
        max_interruptions: How many process deaths an attempt may cause before its step
            fails.
        mark: Whether the next attempt is the run's first since the engine opened.
    """

    __slots__ = ("_codec", "_max_interruptions", "_out", "_warnings", "child_stops",
                 "children", "history", "mark", "run", "state", "stopped")

    def __init__(self, run: Run, history: RunHistory, codec: Codec, state: RunState,
                 max_interruptions: int, mark: bool) -> None:
        self.run = run
        self._max_interruptions = max_interruptions
        # Whether the next attempt is the run's first since the engine opened: its start
        # is recorded first, so that a process death is charged to it.
        self.mark = mark
        self.history = history
        self._codec = codec
        self.state = state
        self._out: list[Record] = []  # records decided since the last decision
        self._warnings: list[str] = []
        self.children: list[ChildStart] = []  # child runs to start with the next commit
        self.child_stops: list[str] = []  # child runs to cancel once it is durable
        self.stopped: list[Attempt] = []  # attempts under way to stop

    def emit(self, record: Record) -> None:
        """Record `record`: applied to the memo now, committed with the decision."""
        self.apply(record)
        self._out.append(record)

    def apply(self, record: Record) -> None:
        """Apply a record that the engine commits on its own (an attempt's start mark)."""
        self.history.apply(record)
        if record.run_state is not None:
            self.state = RunState(record.run_state)

    def warn(self, warning: str) -> None:
        """Log `warning` with the decision."""
        self._warnings.append(warning)

    def flush(self) -> tuple[tuple[Record, ...], tuple[str, ...]]:
        """Hand over the records and warnings decided since the last decision."""
        records, warnings = tuple(self._out), tuple(self._warnings)
        self._out.clear()
        self._warnings.clear()
        return records, warnings

    def put_back(self, records: tuple[Record, ...], warnings: tuple[str, ...]) -> None:
        """Take back a decision's records and warnings: they go with the next one."""
        self._out.extend(records)
        self._warnings.extend(warnings)

    def encoded(self, value: Any, key: str) -> Encoded:
        """Encode `value` (the value of `key`) for a record.

        Raises:
            EncodingError: It cannot be encoded.
        """
        return Encoded(self._codec.encode(value, key=key), self._codec.to_json(value))

    def running_unless(self) -> RunState | None:
        """Mark the run ``running`` only when that changes its state.

        Most step records leave a running run running; leaving their state empty keeps
        the state-carrying rows few, which keeps opening a large file fast.
        """
        return None if self.state is RunState.RUNNING else RunState.RUNNING

    # -- step failures --

    def step_failure(self, step: Step, attempt: int, error: BaseException,
                     duration_ms: float | None) -> StepFailed:
        """Record the step's final failure; return the `StepFailed` to throw in."""
        text = error_text(error)
        self.emit(self.run.step_failed(step.key, attempt, step.name, text, duration_ms,
                                       self.running_unless()))
        failed = step_failed(self.run.run_id, step.key, Failure(
            text.error_type, text.error_types, text.message, attempt))
        failed.__cause__ = error
        return failed

    def interrupted(self, step: Step, record: KeyRecord, attempt: int) -> StepFailed | None:
        """Record that `attempt` died with the process; fail the step at the limit.

        Returns:
            The `StepFailed` to throw in at the limit, else None (the step runs again).
        """
        count, limit = record.interruptions + 1, self._max_interruptions
        if count < limit:
            self.emit(self.run.step_interrupted(step.key, attempt, step.name, count, limit,
                                                qualified_name(StepInterrupted)))
            return None
        error = StepInterrupted(
            f"step {step.key!r} of run {self.run.run_id!r} was running when the process "
            f"died {count} times (max_interruptions={limit}); find what kills the process "
            "(a crash, the OOM killer), fix it and resume the run",
            run_id=self.run.run_id, key=step.key)
        return self.step_failure(step, attempt, error, None)

    def late(self, attempt: Attempt, outcome: Outcome) -> Record:
        """Return the record of a cancelled attempt's outcome that came after all.

        It is for the history only (not emitted): the attempt's group was decided
        without it, and replay ignores it.
        """
        step = attempt.step
        value, error = None, None
        if outcome.ok:
            try:
                value = self.encoded(outcome.value, step.key)
            except EncodingError as unencodable:
                error = error_text(unencodable)
        else:
            error = error_text(outcome.value)
        return self.run.step_late(step.key, attempt.number, step.name, value, error,
                                  outcome.duration_ms)

    # -- child runs --

    def start_child(self, child: Child, state: RunState | None) -> None:
        """Record a child's start; the engine starts the run in the same commit."""
        run_id = child_run_id(self.run.run_id, child.key, self.history.generation)
        detail = {"run_id": run_id, "workflow": child.workflow,
                  "on_parent_close": child.on_parent_close}
        self.emit(self.run.child_started(child.key, child.workflow,
                                         self.encoded(detail, child.key), state))
        arguments = Encoded(self._codec.encode(child.args, key="input"),
                            self._codec.to_json(list(child.args)))
        self.children.append(ChildStart(run_id, child.workflow, arguments, child.key))

    def stop_child(self, child: Child) -> None:
        """Cancel the child's run once the decision's records are durable."""
        self.child_stops.append(child_run_id(self.run.run_id, child.key,
                                             self.history.generation))

    # -- cancellation --

    def reason(self) -> Encoded:
        """The reason of the run's cancellation, as recorded."""
        data = self.history.cancel_reason
        assert data is not None, "no cancellation was requested"
        return Encoded(data, self._codec.to_json(self._codec.decode(data)))

    def cancelled_at(self, command: Member, record: KeyRecord | None) -> None:
        """Record that the run's cancellation is thrown in at `command`."""
        key, reason = command.key, self.reason()
        if isinstance(command, Step):
            number = (record.attempts if record else 0) + 1
            self.emit(self.run.step_cancelled(key, number, command.name, CANCELLED, reason))
        elif isinstance(command, GROUP_TYPES):
            self.emit(self.run.group_cancelled(key, CANCELLED, reason))
        else:
            self.emit(self.run.waiting_cancelled(kind_of(command), key, CANCELLED, reason))
            if isinstance(command, Child) and command.on_parent_close == "cancel":
                self.stop_child(command)


def error_text(error: BaseException) -> ErrorText:
    """Return how `error` is recorded: its class, its classes for `Retry.on`, its text."""
    return ErrorText(qualified_name(type(error)), error_types_of(error), message_of(error))
