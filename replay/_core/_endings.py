"""How one execution of a run ends, or fails before its workflow runs.

The run machine (`_machine`) comes here when the interpreter's result ends the run's
execution: the workflow returned (``run/completed``), returned `ContinueAsNew`
(``run/continued``; the machine then starts the next generation), or raised
(``run/failed``, or ``run/cancelled`` when the run's own cancellation came out). An
output that cannot be encoded fails the run instead. The failures that do not come
from the workflow's generator are made here too: a workflow function that raises when
called or returns no generator (`call_workflow`), a child of a workflow the engine does
not know (`unregistered`), a bug in the engine (`internal_failure`).

Each ending records through the execution's `Recorder` and returns the `Ended`
decision carrying the records. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from replay._core._decisions import Ended
from replay._core._interpreter import Fail, format_failure
from replay._core._recorder import Recorder
from replay._core._records import Encoded
from replay._errors import (
    Cancelled,
    EncodingError,
    ReplayInternalError,
    WorkflowNotRegistered,
    clip,
    message_of,
    qualified_name,
)
from replay._flow import ContinueAsNew
from replay._parallel import Child


def call_workflow(function: Callable[..., Any], arguments: bytes,
                  decode: Callable[[bytes], Any], name: str) -> Any:
    """Call the workflow `function` (registered as `name`) with the decoded `arguments`.

    Returns:
        Its generator, or the `Fail` of a function that raised or returned no generator.
    """
    try:
        generator = function(*decode(arguments))
    except Exception as error:
        return Fail(error, format_failure(error))
    if not hasattr(generator, "send") or not hasattr(generator, "throw"):
        wrong = TypeError(
            f"workflow {name!r} returned {generator!r} ({type(generator).__name__}) "
            "instead of a generator; a workflow is a generator function that yields "
            "commands such as Step")
        return Fail(wrong, f"{qualified_name(TypeError)}: {wrong}\n")
    return generator


def record_completion(rec: Recorder, output: Any) -> Ended:
    """Record the run's completion with `output` (its failure, if unencodable)."""
    try:
        value = rec.encoded(output, "output")
    except EncodingError as error:
        return record_failure(rec, Fail(error, format_failure(error)))
    rec.emit(rec.run.completed(value))
    return Ended(*rec.flush())


def record_continuation(rec: Recorder, output: ContinueAsNew) -> Encoded | Ended:
    """Record the end of this generation; return the next one's arguments.

    Returns:
        The next generation's encoded arguments, or the run's failure (`Ended`) when
        they cannot be encoded.
    """
    try:
        arguments = rec.encoded(output.args, "input")
    except EncodingError as error:
        return record_failure(rec, Fail(error, format_failure(error)))
    rec.emit(rec.run.continued(arguments, rec.history.generation + 1))
    return arguments


def record_failure(rec: Recorder, failure: Fail) -> Ended:
    """Record the run's failure (or its cancellation, when that is what came out)."""
    if isinstance(failure.error, Cancelled) and rec.history.cancel_reason is not None:
        rec.emit(rec.run.cancelled(rec.reason(), clip(failure.traceback)))
        return Ended(*rec.flush())
    message = message_of(failure.error)
    rec.emit(rec.run.failed(qualified_name(type(failure.error)),
                            clip(failure.traceback), rec.encoded(message, "error")))
    return Ended(*rec.flush())


def internal_failure(run_id: str, error: Exception) -> Fail:
    """Return the failure of run `run_id`, on which the engine hit `error` (a bug)."""
    if not isinstance(error, EncodingError):
        internal = ReplayInternalError(
            f"run {run_id!r} hit an internal error: "
            f"{qualified_name(type(error))}: {message_of(error)}; this is a bug in "
            "replay; please report it")
        internal.__cause__ = error
        error = internal
    # An undecodable recorded value is bad data, not a bug: the run fails with it.
    return Fail(error, format_failure(error))


def unregistered(run_id: str, child: Child) -> Fail:
    """Return the failure of run `run_id`, whose `child` is of an unknown workflow."""
    error = WorkflowNotRegistered(
        f"run {run_id!r} starts child {child.key!r} of workflow {child.workflow!r}, which is "
        "not registered with this engine; pass it in open_engine(workflows=[...]) and "
        "resume the run")
    return Fail(error, f"{qualified_name(WorkflowNotRegistered)}: {error}\n")
