"""Replaying workflow code against a recorded history, with no engine and no step run.

The sans-IO `Interpreter` is driven over the records of one run: every recorded
outcome is sent back (or thrown back) into a fresh generator, exactly as the engine
would on a replay, and the first decision that needs I/O, or the generator's end, is
compared with what the history says happened next. Steps never execute.

What counts as drift depends on where the recorded run stands:

- **finished** (completed or failed): it never executes again, so the code must reach
  the same end from the recorded outcomes alone: yield no command that is not
  recorded, and return an equal output (or raise the same error type).
- **unfinished** (running, sleeping, suspended): the code may yield commands that are
  not recorded (keys are the identity: a new step simply runs when the run continues)
  but must not raise, which would fail the run at its next wake-up.
- Either way, a recorded key yielded as another kind of command is drift (the
  interpreter's `NondeterminismError`), and so is a duplicate key.

`run_workflow` uses the same replay as a determinism check of the code that just
recorded the history (``same_code``): there an unfinished run must stop at the very key
where it waits, and any difference means the workflow read something outside a step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from typing import Any

from replay._codec import decode, encode
from replay._codec._export import read_history
from replay._core._history import KeyRecord, RunHistory
from replay._core._interpreter import (
    Command,
    Fail,
    Finish,
    Interpreter,
    Paused,
    Pending,
    Result,
    format_failure,
)
from replay._core._records import Record, started_record
from replay._core._state import RunStatus, fold
from replay._errors import (
    DuplicateKeyError,
    EncodingError,
    NondeterminismError,
    message_of,
    qualified_name,
    safe_repr,
)
from replay._types import RunState
from replay._workflows import check_workflow, workflow_name

_FILE_REMEDY = "if the change is intended, export the history again with engine.export_history"
_SAME_CODE_REMEDY = ("code outside steps must be deterministic: read the time, random numbers "
                     "and globals inside steps")


@dataclass(frozen=True, slots=True)
class HistoryReport:
    """What replaying workflow code against a recorded history showed (no drift found).

    Attributes:
        run_id: The recorded run's id.
        workflow: The recorded workflow name.
        recorded_state: The run's state at the end of the history.
        reached_keys: The keys the code yielded, in order.
        unreached_keys: Recorded keys of steps, sleeps and suspends that the code no
            longer reaches, in recorded order.
        next_command: For an unfinished run, the command the code performs next (the
            wait the run is parked on, or a command not recorded yet); else None.
        output: What the code returned, if it returned.
        error: What the code raised, if it raised (a recorded failed run).
        renamed_steps: ``(key, recorded name, current name)`` of each step whose
            function now has another name (its recorded outcome is used).
    """

    run_id: str
    workflow: str
    recorded_state: RunState
    reached_keys: tuple[str, ...]
    unreached_keys: tuple[str, ...]
    next_command: Command | None = None
    output: Any = None
    error: BaseException | None = None
    renamed_steps: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Source:
    """Where a history comes from, for messages.

    Attributes:
        where: Text after the run's state, e.g. `` in history 'x.json'``.
        subject: Who replays it: ``the new code`` or ``its replay``.
        remedy: What to do about drift.
        same_code: The history was just recorded by this code (a determinism check).
    """

    where: str
    subject: str
    remedy: str
    same_code: bool

    @classmethod
    def file(cls, path: str) -> Source:
        """A golden history file checked against new code."""
        return cls(f" in history {path!r}", "the new code", _FILE_REMEDY, False)

    @classmethod
    def just_recorded(cls) -> Source:
        """A history the same code recorded a moment ago."""
        return cls("", "its replay", _SAME_CODE_REMEDY, True)


class _WatchedHistory(RunHistory):
    """A memo that also notes every key the interpreter looks up: the keys reached."""

    __slots__ = ("reached",)

    def __init__(self, records: list[Record]) -> None:
        self.reached: dict[str, None] = {}
        super().__init__(records)

    def get(self, key: str) -> KeyRecord | None:
        self.reached[key] = None
        return super().get(key)


def check_history(workflow: Callable[..., Any], path: str | PathLike[str]) -> HistoryReport:
    """Replay `workflow` against a history file, executing no step.

    The file is one run's history, written by `Engine.export_history` (a golden
    history kept with the tests). Every recorded outcome is sent back into the new
    code as the engine would on a replay; the code must stay compatible with it:

    - a recorded key must be yielded as the same kind of command;
    - a run that finished (completed or failed) must end the same way from the
      recorded outcomes alone: no command that is not recorded, an equal output (or
      an error of the same type);
    - a run that had not finished may meet new commands (they would run when it
      continues) but must not raise.

    Recorded keys the code no longer reaches are reported, not refused: keys are the
    identity, so removing a step is allowed. Assert on ``report.unreached_keys`` to
    forbid it.

    Args:
        workflow: The workflow function as the code is now.
        path: The history file.

    Returns:
        A `HistoryReport`.

    Raises:
        NondeterminismError: The code drifted from the history; the message says how
            (the key, what was recorded, what the code does now).
        DuplicateKeyError: The code yields one key twice in one execution.
        EncodingError: A recorded value cannot be decoded (e.g. a type the code no
            longer registers with `replay.register_type`).
        OSError: The file cannot be read.
        TypeError: `workflow` is not a generator function.
        ValueError: The file is not a replay history of a version this replay reads.
    """
    check_workflow(workflow)
    run_id, name, records = read_history(path)
    current = workflow_name(workflow)
    if current != name:
        raise NondeterminismError(
            f"history {str(path)!r} was recorded by workflow {name!r}, but check_history "
            f"got workflow {current!r}; runs recorded under {name!r} are not picked up by "
            "a workflow with another name: pass the workflow that recorded it, or keep "
            f"its name with @replay.workflow(name={name!r})",
            run_id=run_id,
        )
    return replay_records(workflow, run_id, name, records, Source.file(str(path)))


def replay_records(workflow: Callable[..., Any], run_id: str, name: str,
                   records: list[Record], source: Source) -> HistoryReport:
    """Replay `workflow` over one run's `records` and compare where it ends.

    Raises:
        NondeterminismError: The code drifted from the history (see the module doc).
        DuplicateKeyError: The code yields one key twice in one execution.
    """
    history = _WatchedHistory(records)
    recorded = _recorded(records)
    made = _interpreter(workflow, run_id, name, records, history)
    decision = made if isinstance(made, Fail) else _through(made)
    renames = () if isinstance(made, Fail) else tuple(
        (rename.key, rename.recorded, rename.current) for rename in made.renames)
    if isinstance(made, Interpreter):
        made.close()
    if isinstance(decision, Finish):
        decision = _encodable(decision)
    _judge(decision, recorded, run_id, name, source)
    reached = tuple(history.reached)
    return HistoryReport(
        run_id=run_id, workflow=name, recorded_state=recorded.state, reached_keys=reached,
        unreached_keys=tuple(key for key in history.keys if key not in history.reached),
        next_command=decision.command if isinstance(decision, Pending) else None,
        output=decision.output if isinstance(decision, Finish) else None,
        error=decision.error if isinstance(decision, Fail) else None,
        renamed_steps=renames,
    )


def _through(interpreter: Interpreter) -> Result:
    """Start `interpreter` and go on through every pause of a long history."""
    decision = interpreter.start()
    while isinstance(decision, Paused):
        decision = interpreter.go_on()
    return decision


def _recorded(records: list[Record]) -> RunStatus:
    """How the recorded run stands at the end of its history (the engine's own fold)."""
    return fold(records) or RunStatus(RunState.RUNNING)


def _interpreter(workflow: Callable[..., Any], run_id: str, name: str,
                 records: list[Record], history: RunHistory) -> Interpreter | Fail:
    """Create the generator from the recorded input, as the engine does."""
    started = started_record(records)
    if started is None or started.value is None:
        raise ValueError(
            f"the history of run {run_id!r} has no run/started record with the run's "
            "input; export the whole history with engine.export_history"
        )
    # A run that continued as new replays its current generation, from its arguments.
    args: Any = decode(history.input() or started.value)
    try:
        generator = workflow(*args)  # a generator function: this only binds arguments
    except Exception as error:
        return Fail(error, format_failure(error))
    return Interpreter(run_id, name, generator, history, decode)


def _encodable(finish: Finish) -> Result:
    """An output the engine could not record fails the run: judge it as such."""
    try:
        encode(finish.output, key="output")
    except EncodingError as error:
        return Fail(error, format_failure(error))
    return finish


def _judge(decision: Result, recorded: RunStatus, run_id: str, name: str,
           source: Source) -> None:
    if isinstance(decision, Fail) and isinstance(decision.error, NondeterminismError
                                                 | DuplicateKeyError):
        raise decision.error from yielded_here(decision.traceback)
    problem = _problem(decision, recorded, source)
    if problem is None:
        return
    key = decision.command.key if isinstance(decision, Pending) else None
    head = f"run {run_id!r} of workflow {name!r} {_standing(recorded)}{source.where}"
    drift = NondeterminismError(f"{head}, but {source.subject} {problem}; {source.remedy}",
                                run_id=run_id, key=key)
    if isinstance(decision, Fail):
        raise drift from decision.error
    raise drift


def _problem(decision: Result, recorded: RunStatus, source: Source) -> str | None:
    """Say how `decision` contradicts the recorded end, or return None."""
    finished = recorded.state in (RunState.COMPLETED, RunState.FAILED)
    if isinstance(decision, Pending):
        if finished:
            return (f"yields {safe_repr(decision.command)}, which is not recorded: with the "
                    "same recorded outcomes it takes another path")
        parked = recorded.state in (RunState.SLEEPING, RunState.SUSPENDED)
        if source.same_code and parked and decision.command.key != recorded.waiting_for:
            return f"yields {safe_repr(decision.command)}, which is not recorded, instead"
        return None
    if isinstance(decision, Finish):
        if recorded.state is RunState.COMPLETED:
            old = None if recorded.output is None else decode(recorded.output)
            if _same_value(old, decision.output):
                return None
            return f"returns {safe_repr(decision.output)} instead of {safe_repr(old)}"
        if recorded.state is RunState.FAILED or source.same_code:
            return f"returns {safe_repr(decision.output)}"
        return None
    raised = f"raises {qualified_name(type(decision.error))}: {message_of(decision.error)}"
    if recorded.state is RunState.FAILED:
        return None if qualified_name(type(decision.error)) == recorded.error_type else raised
    if recorded.state is RunState.COMPLETED:
        return raised
    return f"{raised}, so the run would fail when it continues"


def _standing(recorded: RunStatus) -> str:
    if recorded.state is RunState.COMPLETED:
        return "completed"
    if recorded.state is RunState.FAILED:
        return f"failed with {recorded.error_type}"
    where = "" if recorded.waiting_for is None else f" on {recorded.waiting_for!r}"
    return f"is {recorded.state.value}{where}"


def _same_value(old: Any, new: Any) -> bool:
    # Compare what a replay would see: the new output as the codec gives it back.
    try:
        return bool(old == decode(encode(new, key="output")))
    except Exception:
        return False


class YieldedHere(Exception):
    """The cause attached to a rule error: where the workflow yielded the command.

    A chained cause, not a note, so that ``pytest.raises(match=r"^...$")`` still
    matches the error's message alone.
    """


def yielded_here(traceback_text: str) -> YieldedHere | None:
    """Return the frames of a recorded rule-error traceback as a `YieldedHere`."""
    lines = traceback_text.rstrip().splitlines()[1:-1]
    return YieldedHere("\n" + "\n".join(lines)) if lines else None
