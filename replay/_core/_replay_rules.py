"""The rules of replay a workflow can break, and the errors that tell it which one.

The interpreter (`_interpreter`) meets each yielded value and checks it; what it finds
wrong is worded here, in one place, so that its loop stays short and every message
keeps the same shape (the run, the key, what was recorded, what was yielded, the fix):

- a value that is not a command (`not_a_command`, thrown in at that `yield`), and a
  workflow that keeps yielding them (`spinning`, after `MAX_NON_COMMANDS` in a row);
- a key yielded twice in one execution (`duplicate_key`);
- a key recorded as another kind of command (`kind_changed`);
- an unrecorded command before the point where the last execution stopped
  (`diverged`, strict replay);
- a recorded value that cannot be decoded (`undecodable`);
- a step replayed under another name than recorded (`renamed`): not an error, a
  `Rename` for the machine to record and log.

An error of these fails the run with a traceback that points at the offending `yield`
(`traceback_at_yield`), since the error is never raised in the workflow's code.

Pure: no I/O.
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Generator
from dataclasses import dataclass
from types import FrameType
from typing import Any

from replay._commands import COMMAND_TYPES, Step
from replay._errors import (
    DuplicateKeyError,
    EncodingError,
    NondeterminismError,
    ReplayError,
    safe_repr,
)
from replay._flow import ContinueAsNew, Note
from replay._parallel import GROUP_TYPES, Child, Member

# Non-commands a workflow may yield in a row (catching each TypeError) before its run
# fails: past this, it is spinning on the engine's loop and stalling every other run.
MAX_NON_COMMANDS = 1000
# What a workflow may yield: commands and groups of them.
YIELDABLE = (*COMMAND_TYPES, *GROUP_TYPES, Child, Note)


@dataclass(frozen=True, slots=True)
class Rename:
    """A step replayed under a different name than recorded."""

    key: str
    recorded: str
    current: str
    message: str


def renamed(run_id: str, step: Step, recorded: str) -> Rename:
    """Return the rename of `step`, recorded under the name `recorded`, and its warning."""
    message = (
        f"run {run_id!r}: step {step.key!r} was recorded with name {recorded!r} "
        f"but now calls {step.name!r}; the recorded outcome is used. If the function "
        f"was renamed or moved, pass name={recorded!r} to Step; if the step's meaning "
        f"changed, bump its key so that it runs again"
    )
    return Rename(step.key, recorded, step.name, message)


def duplicate_key(run_id: str, workflow: str, key: str) -> DuplicateKeyError:
    """Return the error of `key` yielded a second time in one execution."""
    return DuplicateKeyError(
        f"workflow {workflow!r} yielded key {key!r} twice in one execution "
        f"of run {run_id!r}; a key may be yielded once per execution: make "
        f"it unique, e.g. f\"{key}:{{i}}\" for the i-th item",
        run_id=run_id,
        key=key,
    )


def kind_changed(run_id: str, workflow: str, command: Member | Note,
                 recorded: str) -> NondeterminismError:
    """Return the error of `command`'s key, recorded as a command of kind `recorded`."""
    key = command.key
    return NondeterminismError(
        f"run {run_id!r} of workflow {workflow!r} recorded key {key!r} "
        f"as a {recorded} but the workflow now yields {safe_repr(command)}; restore the "
        f"code that recorded it, or give the new command a new key (e.g. bump "
        f"':v1' to ':v2') and resume the run",
        run_id=run_id,
        key=key,
    )


def diverged(run_id: str, workflow: str, command: Member | Note,
             frontier: str | None) -> NondeterminismError:
    """Return the error of an unrecorded `command` met before `frontier` (strict replay)."""
    return NondeterminismError(
        f"run {run_id!r} of workflow {workflow!r} took another path on replay: "
        f"it yielded {safe_repr(command)}, which is not recorded, before reaching "
        f"{frontier!r}, where its last execution stopped; code outside steps "
        "must be deterministic: read the time, random numbers and globals inside steps",
        run_id=run_id,
        key=command.key,
    )


def not_a_command(workflow: str, yielded: object) -> TypeError:
    """Return the error to throw in at a `yield` of something other than a command."""
    shown = f"{safe_repr(yielded)} ({type(yielded).__name__})"
    if isinstance(yielded, ContinueAsNew):
        return TypeError(
            f"workflow {workflow!r} yielded {shown}; return it instead: "
            "`return ContinueAsNew(...)` ends this generation and starts the next")
    if inspect.isgenerator(yielded):
        return TypeError(
            f"workflow {workflow!r} yielded {shown}; expected a command such as "
            f"Step, Sleep or Suspend; to run a sub-workflow inline, write "
            f"`yield from {yielded.__name__}(...)`"
        )
    items: tuple[object, ...] = tuple(yielded) if isinstance(yielded, list | tuple) else ()
    if items and all(type(item) in YIELDABLE for item in items):
        return TypeError(
            f"workflow {workflow!r} yielded {shown}; to run commands at once, "
            f"yield a group with its own key, e.g. All('fetch-all:v1', [...], limit=8)"
        )
    return TypeError(
        f"workflow {workflow!r} yielded {shown}; expected a command such as "
        f"Step, Sleep or Suspend"
    )


def spinning(run_id: str, workflow: str, yielded: object) -> ReplayError:
    """Return the error that fails a run after `MAX_NON_COMMANDS` non-commands in a row."""
    return ReplayError(
        f"workflow {workflow!r} yielded {MAX_NON_COMMANDS} non-commands in a row "
        f"in run {run_id!r}, catching the TypeError each time (the last was "
        f"{safe_repr(yielded)} ({type(yielded).__name__})); the run fails so that it "
        "cannot stall other runs: yield only commands such as Step, Sleep or Suspend"
    )


def undecodable(run_id: str, key: str, error: EncodingError) -> EncodingError:
    """Return the error of `key`'s recorded value that the codec could not decode."""
    failure = EncodingError(
        f"run {run_id!r} cannot replay the recorded outcome of {key!r}: {error}",
        key=key,
    )
    failure.__cause__ = error
    return failure


def traceback_at_yield(generator: Generator[Any, Any, Any], error: Exception) -> str:
    """Return the traceback text to record for `error`: the `yield` it is about."""
    where = "".join(traceback.format_list(yield_stack(generator)))
    return (
        "Traceback (most recent call last):\n"
        f"{where}{type(error).__module__}.{type(error).__qualname__}: {error}\n"
    )


def yield_stack(generator: Generator[Any, Any, Any]) -> traceback.StackSummary:
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
