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
the mailbox with no record of their own (`taken`) and the renamed steps (`renames`).
A yielded value that is not a command is answered with a `TypeError` thrown in at that
`yield`; after `MAX_NON_COMMANDS` of them in a row the run fails, so that a workflow
catching each `TypeError` cannot spin forever on the engine's loop. A recorded value
that cannot be decoded fails the run: it is bad data, not an event for the workflow.
"""

from __future__ import annotations

import contextlib
import inspect
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeAlias, overload

from replay._commands import COMMAND_TYPES, Step, Suspend
from replay._core._group_replay import check_members, recorded_outcome
from replay._core._history import KeyRecord, RunHistory, outcome_failure
from replay._errors import (
    Cancelled,
    DuplicateKeyError,
    EncodingError,
    NondeterminismError,
    ReplayError,
    SuspendTimeout,
    safe_repr,
    same_name,
)
from replay._flow import ContinueAsNew, Note
from replay._parallel import GROUP_TYPES, Child, Member, kind_of, walk

Workflow = Generator[Any, Any, Any]

# Non-commands a workflow may yield in a row (catching each TypeError) before its run
# fails: past this, it is spinning on the engine's loop and stalling every other run.
MAX_NON_COMMANDS = 1000
# What a workflow may yield: commands and groups of them.
YIELDABLE = (*COMMAND_TYPES, *GROUP_TYPES, Child, Note)
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
class Rename:
    """A step replayed under a different name than recorded."""

    key: str
    recorded: str
    current: str
    message: str


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
        kind = kind_of(command)
        if record.kind != kind:
            return NondeterminismError(
                f"run {self.run_id!r} of workflow {self.workflow!r} recorded key {key!r} "
                f"as a {record.kind} but the workflow now yields {safe_repr(command)}; restore the "
                f"code that recorded it, or give the new command a new key (e.g. bump "
                f"':v1' to ':v2') and resume the run",
                run_id=self.run_id,
                key=key,
            )
        if isinstance(command, Step) and record.done:
            # Only a recorded outcome is reused; a step that runs again takes its new name.
            self._check_name(command, record)
        if isinstance(command, GROUP_TYPES):
            return check_members(command, self._history, self._decode, self.run_id,
                                 self.workflow)
        return None

    def _duplicate(self, key: str) -> DuplicateKeyError:
        return DuplicateKeyError(
            f"workflow {self.workflow!r} yielded key {key!r} twice in one execution "
            f"of run {self.run_id!r}; a key may be yielded once per execution: make "
            f"it unique, e.g. f\"{key}:{{i}}\" for the i-th item",
            run_id=self.run_id,
            key=key,
        )

    def _check_name(self, step: Step, record: KeyRecord) -> None:
        recorded = record.name
        if recorded is None or same_name(recorded, step.name) or step.name in record.renamed_to:
            return
        message = (
            f"run {self.run_id!r}: step {step.key!r} was recorded with name {recorded!r} "
            f"but now calls {step.name!r}; the recorded outcome is used. If the function "
            f"was renamed or moved, pass name={recorded!r} to Step; if the step's meaning "
            f"changed, bump its key so that it runs again"
        )
        self.renames.append(Rename(step.key, recorded, step.name, message))

    def _diverged(self, command: Command) -> NondeterminismError:
        return NondeterminismError(
            f"run {self.run_id!r} of workflow {self.workflow!r} took another path on replay: "
            f"it yielded {safe_repr(command)}, which is not recorded, before reaching "
            f"{self._frontier!r}, where its last execution stopped; code outside steps "
            "must be deterministic: read the time, random numbers and globals inside steps",
            run_id=self.run_id,
            key=command.key,
        )

    def _not_a_command(self, yielded: object) -> TypeError:
        shown = f"{safe_repr(yielded)} ({type(yielded).__name__})"
        if isinstance(yielded, ContinueAsNew):
            return TypeError(
                f"workflow {self.workflow!r} yielded {shown}; return it instead: "
                "`return ContinueAsNew(...)` ends this generation and starts the next")
        if inspect.isgenerator(yielded):
            return TypeError(
                f"workflow {self.workflow!r} yielded {shown}; expected a command such as "
                f"Step, Sleep or Suspend; to run a sub-workflow inline, write "
                f"`yield from {yielded.__name__}(...)`"
            )
        items: tuple[object, ...] = tuple(yielded) if isinstance(yielded, list | tuple) else ()
        if items and all(type(item) in YIELDABLE for item in items):
            return TypeError(
                f"workflow {self.workflow!r} yielded {shown}; to run commands at once, "
                f"yield a group with its own key, e.g. All('fetch-all:v1', [...], limit=8)"
            )
        return TypeError(
            f"workflow {self.workflow!r} yielded {shown}; expected a command such as "
            f"Step, Sleep or Suspend"
        )

    def _spinning(self, yielded: object) -> ReplayError:
        return ReplayError(
            f"workflow {self.workflow!r} yielded {MAX_NON_COMMANDS} non-commands in a row "
            f"in run {self.run_id!r}, catching the TypeError each time (the last was "
            f"{safe_repr(yielded)} ({type(yielded).__name__})); the run fails so that it "
            "cannot stall other runs: yield only commands such as Step, Sleep or Suspend"
        )

    def _undecodable(self, key: str, error: EncodingError) -> EncodingError:
        undecodable = EncodingError(
            f"run {self.run_id!r} cannot replay the recorded outcome of {key!r}: {error}",
            key=key,
        )
        undecodable.__cause__ = error
        return undecodable

    def _fail_for_deployment(self, error: Exception) -> Fail:
        # Not thrown into the generator: user `except`/`finally` code must not act on a
        # deployment error. The traceback points at the offending `yield` instead.
        where = "".join(traceback.format_list(yield_stack(self._generator)))
        self.close()
        text = (
            "Traceback (most recent call last):\n"
            f"{where}{type(error).__module__}.{type(error).__qualname__}: {error}\n"
        )
        return Fail(error, text)


def yield_stack(generator: Workflow) -> traceback.StackSummary:
    """Return the frames a suspended generator is paused in, outermost first.

    Follows `yield from` delegation down to the innermost generator, so the last frame
    is the `yield` that produced the current command.
    """
    frames: list[tuple[FrameType, int]] = []
    current: Any = generator
    while current is not None:
        frame = getattr(current, "gi_frame", None)
        if frame is None:
            break
        frames.append((frame, frame.f_lineno))
        current = getattr(current, "gi_yieldfrom", None)
    return traceback.StackSummary.extract(frames)


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
