"""Replaying a workflow: run its generator forward through every recorded outcome.

The interpreter drives one execution of one run's generator against the run's
history. Between two results it runs the generator forward *synchronously* through
every command whose outcome is recorded, sending each recorded value (or throwing each
recorded `StepFailed` or `SuspendTimeout`) straight back: replay costs no I/O and no
trio checkpoint. A `Suspend`'s outcome is the signal for its key in the run's mailbox,
whenever that signal arrived. It stops at:

- `Pending(command, record)`: a command whose outcome is not recorded yet; the run
  machine (`_machine`) decides what to do about it;
- `Finish(output)`: the generator returned;
- `Fail(error, traceback)`: the generator raised, or broke a rule of replay
  (`DuplicateKeyError`, `NondeterminismError`); for the latter the generator has
  already been closed and nothing it yielded while closing was acted on;
- `Paused()`: only from `start` and `go_on`, after `REPLAYED_PER_TURN` recorded
  outcomes in a row: the engine does other work, then calls `go_on` (a long history
  would otherwise hold the engine's loop for the whole replay).

It checks each command (key used twice, key recorded as another kind, the step's
function renamed) and notes, for the machine to record, the suspends it answered from
the mailbox with no record of their own (`taken`) and the renamed steps (`renames`);
`_replay_rules` words what it finds wrong.
A yielded value that is not a command is answered with a `TypeError` thrown in at that
`yield`; after `MAX_NON_COMMANDS` of them in a row the run fails, so that a workflow
catching each `TypeError` cannot spin forever on the engine's loop. A recorded value
that cannot be decoded fails the run: it is bad data, not an event for the workflow.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeAlias, overload

from replay._commands import Step, Suspend
from replay._core._group_replay import check_members, recorded_outcome
from replay._core._history import KeyRecord, RunHistory, outcome_failure
from replay._core._replay_rules import (
    MAX_NON_COMMANDS,
    YIELDABLE,
    Rename,
    diverged,
    duplicate_key,
    kind_changed,
    not_a_command,
    renamed,
    spinning,
    traceback_at_yield,
    undecodable,
)
from replay._errors import (
    Cancelled,
    DuplicateKeyError,
    EncodingError,
    NondeterminismError,
    ReplayError,
    SuspendTimeout,
    same_name,
)
from replay._flow import Note
from replay._parallel import GROUP_TYPES, Member, kind_of, walk

Workflow = Generator[Any, Any, Any]

# Recorded outcomes `start` and `go_on` send back before pausing: about a millisecond
# of replay, a pause costs a few microseconds (well under 1 %).
REPLAYED_PER_TURN = 256
Command: TypeAlias = "Member | Note"


@dataclass(frozen=True, slots=True)
class Pending:
    """The workflow yielded `command`, whose outcome is not recorded; `record` is what is."""

    command: Command
    record: KeyRecord | None


@dataclass(frozen=True, slots=True)
class Finish:
    """The workflow returned `output`."""

    output: Any


@dataclass(frozen=True, slots=True)
class Fail:
    """The run fails with `error`; `traceback` is the text to record."""

    error: BaseException
    traceback: str


@dataclass(frozen=True, slots=True)
class Paused:
    """The replay paused between two recorded outcomes: call `Interpreter.go_on`."""


Result = Pending | Finish | Fail


class Interpreter:
    """Drives one execution of one run's generator.

    Args:
        run_id: The run's id (for messages and `StepFailed`).
        workflow: The workflow's registered name (for messages).
        generator: A fresh generator, not started yet.
        history: The run's memo; the engine applies new records to it.
        decode: Turns a recorded value's bytes into a fresh Python object.
        frontier: In strict replay, the key where the last execution stopped: reaching
            an unrecorded command before it means the workflow took another path with
            the same code (it read the time, a random number or a global outside a
            step), which is a `NondeterminismError`.
    """

    __slots__ = (
        "_decode", "_frontier", "_generator", "_history", "_paused", "_seen", "renames",
        "run_id", "taken", "workflow",
    )

    def __init__(
        self,
        run_id: str,
        workflow: str,
        generator: Workflow,
        history: RunHistory,
        decode: Callable[[bytes], Any],
        frontier: str | None = None,
    ) -> None:
        self.run_id = run_id
        self._frontier = frontier
        self.workflow = workflow
        self._generator = generator
        self._history = history
        self._decode = decode
        self._seen: set[str] = set()
        # Renamed steps met since the engine last drained this list.
        self.renames: list[Rename] = []
        # Suspends answered from the mailbox with no record of their own yet: the
        # engine records them, so their keys are known and no longer undelivered.
        self.taken: list[Suspend] = []
        # Where a paused replay goes on: how to resume the generator, and with what.
        self._paused: tuple[Callable[[Any], Any], Any] | None = None

    def start(self) -> Result | Paused:
        """Run the generator up to its first command that needs I/O (or `Paused`)."""
        return self._advance(self._generator.send, None, REPLAYED_PER_TURN)

    def go_on(self) -> Result | Paused:
        """Go on with a replay that returned `Paused` (and may pause again)."""
        assert self._paused is not None, "go_on() of a replay that did not pause"
        (resume, argument), self._paused = self._paused, None
        return self._advance(resume, argument, REPLAYED_PER_TURN)

    def send(self, value: Any) -> Result:
        """Send a fresh command's outcome in and run up to the next decision."""
        return self._advance(self._generator.send, value)

    def throw(self, error: BaseException) -> Result:
        """Throw a fresh command's failure in and run up to the next decision."""
        return self._advance(self._generator.throw, error)

    def reconsider(self, pending: Pending) -> Result:
        """Answer `pending` from the history if it has an outcome now, else return it anew.

        A run waiting on a command asks again when it wakes: a signal may be in the
        mailbox now. The returned `Pending` carries the key's current record.
        """
        command = pending.command
        record = self._history.get(command.key)
        try:
            outcome = self._recorded_outcome(command, record)
        except EncodingError as error:
            return self._fail_for_deployment(self._undecodable(command.key, error))
        if outcome is None:
            return Pending(command, record)
        return self._advance(*outcome)

    def close(self) -> None:
        """Close the generator; whatever it yields while closing is ignored."""
        close_quietly(self._generator)

    @overload
    def _advance(self, resume: Callable[[Any], Any], argument: Any) -> Result: ...

    @overload
    def _advance(self, resume: Callable[[Any], Any], argument: Any,
                 turn: int) -> Result | Paused: ...

    def _advance(self, resume: Callable[[Any], Any], argument: Any,
                 turn: int = 0) -> Result | Paused:
        """Run the generator on from `resume(argument)` to the next result.

        `turn`: recorded outcomes to send back before `Paused` (0: no pause).
        """
        strays = 0  # non-commands yielded in a row
        replayed = 0  # recorded outcomes sent back in this turn
        send, seen, lookup, decode = (self._generator.send, self._seen, self._history.get,
                                      self._decode)
        while True:
            try:
                yielded = resume(argument)
            except StopIteration as stop:
                return Finish(stop.value)
            except Exception as error:
                return Fail(error, format_failure(error))
            if type(yielded) is Step:
                # A replay's usual command, a step with a recorded value, is answered
                # here in a few lines; everything else takes the general way below,
                # which decides the same for this one (checks, frontier, outcome).
                key = yielded.key
                record = lookup(key)
                if (record is not None and record.done and record.kind == "step"
                        and record.failure is None and record.thrown is None
                        and key not in seen):
                    seen.add(key)
                    if record.name is not None and record.name != yielded.name:
                        self._check_name(yielded, record)
                    if key == self._frontier:
                        self._frontier = None
                    value = record.value
                    try:
                        argument = None if value is None else decode(value)
                    except EncodingError as error:
                        return self._fail_for_deployment(self._undecodable(key, error))
                    resume, strays = send, 0
                    replayed += 1
                    if replayed == turn:
                        self._paused = (resume, argument)
                        return Paused()
                    continue
            elif type(yielded) in YIELDABLE:
                record = lookup(yielded.key)
            else:
                strays += 1
                if strays >= MAX_NON_COMMANDS:
                    return self._fail_for_deployment(self._spinning(yielded))
                resume, argument = self._generator.throw, self._not_a_command(yielded)
                continue
            strays = 0
            command: Command = yielded
            problem = self._check(command, record)
            if problem is not None:
                return self._fail_for_deployment(problem)
            if self._frontier is not None and self._reaches_frontier(command):
                self._frontier = None
            try:
                outcome = self._recorded_outcome(command, record)
            except EncodingError as error:
                return self._fail_for_deployment(self._undecodable(command.key, error))
            if outcome is None:
                if self._frontier is not None:
                    return self._fail_for_deployment(self._diverged(command))
                return Pending(command, record)
            resume, argument = outcome
            replayed += 1
            if replayed == turn:
                self._paused = (resume, argument)
                return Paused()

    def _reaches_frontier(self, command: Command) -> bool:
        """Whether `command` is (or, for a group, contains) where the last execution stopped."""
        if command.key == self._frontier:
            return True
        return isinstance(command, GROUP_TYPES) and any(
            member.key == self._frontier for member in walk(command.members))

    def _recorded_outcome(
        self, command: Command, record: KeyRecord | None
    ) -> tuple[Callable[[Any], Any], Any] | None:
        """Return how to answer `command` from the history, or None if it needs I/O."""
        if record is not None and record.thrown is not None:
            # The run's cancellation was thrown in here: it is, again, on replay.
            reason = self._value(record.thrown)
            return self._generator.throw, Cancelled(self.run_id, command.key, reason)
        if isinstance(command, GROUP_TYPES):
            outcome = recorded_outcome(command, self._history, self._decode, self.run_id)
            if outcome is None:
                return None
            ok, value = outcome
            return (self._generator.send if ok else self._generator.throw), value
        if type(command) is Suspend:
            if record is not None and record.timed_out:
                return self._generator.throw, SuspendTimeout(self.run_id, command.key)
            if command.key in self._history.signals:
                payload = self._value(self._history.signals[command.key])
                if record is None:
                    self.taken.append(command)
                return self._generator.send, payload
            return None
        if record is None or not record.done:
            return None
        if type(command) is Note:
            return self._generator.send, None  # recorded: replayed silently
        if record.failure is not None:
            return self._generator.throw, outcome_failure(self.run_id, command.key, record,
                                                          self._history.generation)
        return self._generator.send, self._value(record.value)

    def _value(self, data: bytes | None) -> Any:
        return None if data is None else self._decode(data)

    def _check(self, command: Command, record: KeyRecord | None) -> Exception | None:
        key = command.key
        if key in self._seen:
            return self._duplicate(key)
        self._seen.add(key)
        if isinstance(command, GROUP_TYPES):
            for member in walk(command.members):
                if member.key in self._seen:
                    return self._duplicate(member.key)
                self._seen.add(member.key)
        if record is None:
            return None
        if record.kind != kind_of(command):
            return kind_changed(self.run_id, self.workflow, command, record.kind)
        if isinstance(command, Step) and record.done:
            # Only a recorded outcome is reused; a step that runs again takes its new name.
            self._check_name(command, record)
        if isinstance(command, GROUP_TYPES):
            return check_members(command, self._history, self._decode, self.run_id,
                                 self.workflow)
        return None

    # What went wrong, for this run: `_advance` names it, `_replay_rules` words it.

    def _duplicate(self, key: str) -> DuplicateKeyError:
        return duplicate_key(self.run_id, self.workflow, key)

    def _check_name(self, step: Step, record: KeyRecord) -> None:
        recorded = record.name
        if recorded is None or same_name(recorded, step.name) or step.name in record.renamed_to:
            return
        self.renames.append(renamed(self.run_id, step, recorded))

    def _diverged(self, command: Command) -> NondeterminismError:
        return diverged(self.run_id, self.workflow, command, self._frontier)

    def _not_a_command(self, yielded: object) -> TypeError:
        return not_a_command(self.workflow, yielded)

    def _spinning(self, yielded: object) -> ReplayError:
        return spinning(self.run_id, self.workflow, yielded)

    def _undecodable(self, key: str, error: EncodingError) -> EncodingError:
        return undecodable(self.run_id, key, error)

    def _fail_for_deployment(self, error: Exception) -> Fail:
        # Not thrown into the generator: user `except`/`finally` code must not act on a
        # deployment error. The traceback points at the offending `yield` instead.
        text = traceback_at_yield(self._generator, error)
        self.close()
        return Fail(error, text)


def format_failure(error: BaseException) -> str:
    """Format `error`'s traceback without the interpreter's own frame."""
    tb = error.__traceback__
    if tb is not None and tb.tb_frame.f_code is Interpreter._advance.__code__:
        error = error.with_traceback(tb.tb_next)
    return "".join(traceback.format_exception(error))


def close_quietly(generator: Workflow) -> None:
    """Close a generator, ignoring anything it yields or raises while closing."""
    # A yield or raise in the workflow's `finally` must not stop the engine.
    with contextlib.suppress(Exception):
        generator.close()
