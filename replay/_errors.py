"""The exception hierarchy: every error replay raises derives from `ReplayError`.

Public classes report `__module__ == "replay"` (set in `replay/__init__.py`), so a
recorded `error_type` reads `replay.StepTimeout`, not `replay._errors.StepTimeout`.
Messages are lowercase statements of what is wrong, the offending value with `!r` and
its type, and what to do instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ReplayError(Exception):
    """Base class of every error raised by replay."""


class StepFailed(ReplayError):
    """A step ran out of attempts; thrown into the workflow at the step's `yield`.

    Workflow code must branch on `error_type` or `is_a`, never on `__cause__`: the
    cause is attached only when the failure happened in this execution, while the same
    `StepFailed` is re-thrown identically on every replay.

    Attributes:
        run_id: The run the step belongs to.
        key: The step's key.
        error_type: Qualified name of the original exception class, e.g.
            ``"builtins.ValueError"``.
        error_types: Qualified names of the original exception's classes, most
            specific first.
        message: `str()` of the original exception.
        attempts: How many attempts were made.
    """

    def __init__(
        self,
        run_id: str,
        key: str,
        error_type: str,
        message: str,
        attempts: int,
        error_types: Sequence[str] = (),
    ) -> None:
        self.run_id = run_id
        self.key = key
        self.error_type = error_type
        self.message = message
        self.attempts = attempts
        self.error_types: tuple[str, ...] = tuple(error_types) or (error_type,)
        plural = "attempt" if attempts == 1 else "attempts"
        super().__init__(
            f"step {key!r} of run {run_id!r} failed after {attempts} {plural}: "
            f"{error_type}: {message}"
        )

    def is_a(self, cls: type[BaseException]) -> bool:
        """Tell whether the original exception was an instance of `cls`.

        Decided from the recorded `error_types`, so the answer is the same on replay.

        Args:
            cls: An exception class.

        Returns:
            True if `cls`'s qualified name is among the recorded `error_types`.
        """
        wanted = qualified_name(cls)
        return any(same_name(wanted, recorded) for recorded in self.error_types)

    def __reduce__(self) -> tuple[object, ...]:
        return (
            type(self),
            (self.run_id, self.key, self.error_type, self.message, self.attempts,
             self.error_types),
        )


class ChildFailed(StepFailed):
    """A child run failed or was cancelled; thrown into the parent at the `Child`'s `yield`.

    Attributes:
        child_run_id: The child run's id (`run_id` and `key` are the parent's).
    """

    def __init__(self, run_id: str, key: str, error_type: str, message: str,
                 child_run_id: str, error_types: Sequence[str] = ()) -> None:
        super().__init__(run_id, key, error_type, message, 1, error_types)
        self.child_run_id = child_run_id
        self.args = (f"child run {child_run_id!r} (key {key!r} of run {run_id!r}) ended "
                     f"with {error_type}: {message}",)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id, self.key, self.error_type, self.message,
                             self.child_run_id, self.error_types))


class RunFinished(ReplayError):
    """The run is already finished: it cannot be cancelled or terminated.

    Attributes:
        run_id: The run.
        state: Its final state's name.
    """

    def __init__(self, message: str, *, run_id: str, state: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.state = state


class StepTimeout(ReplayError):
    """A step attempt exceeded its `timeout`; recorded as a failed attempt.

    Attributes:
        run_id: The run the step belongs to.
        key: The step's key.
    """

    def __init__(self, message: str, *, run_id: str | None = None, key: str | None = None):
        super().__init__(message)
        self.run_id = run_id
        self.key = key


class StepInterrupted(ReplayError):
    """A step was interrupted by process deaths `max_interruptions` times; it failed.

    Thrown into the workflow as a `StepFailed` whose ``error_type`` is
    ``"replay.StepInterrupted"``. A clean stop never causes it.

    Attributes:
        run_id: The run the step belongs to.
        key: The step's key.
    """

    def __init__(self, message: str, *, run_id: str | None = None, key: str | None = None):
        super().__init__(message)
        self.run_id = run_id
        self.key = key


class SuspendTimeout(ReplayError):
    """A `Suspend` deadline passed before its signal arrived.

    Attributes:
        run_id: The suspended run.
        key: The `Suspend`'s key.
    """

    def __init__(self, run_id: str, key: str) -> None:
        self.run_id = run_id
        self.key = key
        super().__init__(f"no signal for {key!r} of run {run_id!r} before its timeout")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id, self.key))


class Cancelled(ReplayError):
    """The run was cancelled; thrown into the workflow at the command it waits on.

    The workflow may catch it and yield compensation commands, which execute normally;
    if it escapes, the run ends ``cancelled``. On replay it is thrown at the same key.

    Attributes:
        run_id: The cancelled run.
        key: The key of the command it was thrown in at (None: the run was terminated).
        reason: The reason given to `cancel`, if any.
    """

    def __init__(self, run_id: str, key: str | None, reason: Any = None) -> None:
        self.run_id = run_id
        self.key = key
        self.reason = reason
        why = "" if reason is None else f": {reason}"
        super().__init__(f"run {run_id!r} was cancelled{why}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id, self.key, self.reason))


class WorkflowFailed(ReplayError):
    """A run ended with an exception; raised by `Run.result()`.

    Attributes:
        run_id: The failed run.
        error_type: Qualified name of the exception that ended the run.
        message: Its message.
        traceback: The recorded traceback text, if any.
    """

    def __init__(self, run_id: str, error_type: str, message: str, traceback: str = ""):
        self.run_id = run_id
        self.error_type = error_type
        self.message = message
        self.traceback = traceback
        super().__init__(f"run {run_id!r} failed: {error_type}: {message}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id, self.error_type, self.message, self.traceback))


class NondeterminismError(ReplayError):
    """Workflow code no longer matches its recorded history.

    Attributes:
        run_id: The run.
        key: The key whose record does not match.
    """

    def __init__(self, message: str, *, run_id: str | None = None, key: str | None = None):
        self.run_id = run_id
        self.key = key
        super().__init__(message)


class DuplicateKeyError(ReplayError):
    """A key was yielded twice in one execution of a workflow.

    Attributes:
        run_id: The run.
        key: The repeated key.
    """

    def __init__(self, message: str, *, run_id: str | None = None, key: str | None = None):
        self.run_id = run_id
        self.key = key
        super().__init__(message)


class SignalRejected(ReplayError):
    """A signal cannot be taken.

    Its run is finished, its key already has a value (a signal, or a timeout), its key
    was recorded as another kind of command, or the run's mailbox already holds 100
    undelivered signals.

    Attributes:
        run_id: The run signalled.
        key: The key signalled.
    """

    def __init__(self, message: str, *, run_id: str | None = None, key: str | None = None):
        self.run_id = run_id
        self.key = key
        super().__init__(message)


class RunNotFound(ReplayError):
    """No run with this `run_id` exists in the database.

    Attributes:
        run_id: The unknown id.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(
            f"no run with run_id {run_id!r} in this database; "
            "list existing runs with engine.runs()"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id,))


class RunIdConflict(ReplayError):
    """A `run_id` is already taken by a run of another workflow.

    Attributes:
        run_id: The contested id.
    """

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(message)


class RunSuspended(ReplayError):
    """`replay.run` cannot finish: the run waits for a signal it cannot deliver.

    Attributes:
        run_id: The suspended run.
        key: The key it waits on.
    """

    def __init__(self, message: str, *, run_id: str | None = None, key: str | None = None):
        self.run_id = run_id
        self.key = key
        super().__init__(message)


class WorkflowNotRegistered(ReplayError):
    """A workflow name is not registered with this engine."""


class EncodingError(ReplayError, TypeError):
    """A value cannot be recorded (unsupported type, or larger than 4 MiB encoded).

    Attributes:
        key: The key or role of the value (``"input"``, ``"output"``, a step key),
            when known.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(message)


class DatabaseError(ReplayError):
    """The database file cannot be used (corrupted, not a replay database, newer schema)."""


class DatabaseLocked(DatabaseError):
    """Another engine holds the database file.

    Attributes:
        pid: The holding process's id, when known.
    """

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        self.pid = pid
        super().__init__(message)


class LeaseLost(DatabaseError):
    """This engine lost a run's lease to another engine, and stopped.

    On PostgreSQL, engines sharing a schema hold a lease on each run they execute and
    renew it every third of its length. An engine that could not renew in time
    (paused, cut off from the server) may find another engine took its runs over:
    its next commit is refused whole, so it records nothing for those runs, and the
    engine stops with this error. Restart it: it claims work again like any engine.
    """


class QueryError(ReplayError, ValueError):
    """`engine.sql` refused a query (not exactly one read-only query) or it failed."""


class EngineClosed(ReplayError):
    """The engine was used after it closed (or while it shuts down)."""


class ReplayInternalError(ReplayError):
    """An invariant of replay broke: this is a bug in replay; please report it."""


def qualified_name(cls: type) -> str:
    """Return ``f"{cls.__module__}.{cls.__qualname__}"``, the recorded form of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


MAX_MESSAGE_CHARS = 64 * 1024


def message_of(error: BaseException) -> str:
    """Return `str(error)`, never raising and at most `MAX_MESSAGE_CHARS` long.

    Errors come from user code: a broken `__str__` or a huge message must fail only
    the step or run it belongs to, never the engine.
    """
    try:
        text = str(error)
    except Exception:
        text = f"<{type(error).__qualname__}: str() failed>"
    return clip(text)


def clip(text: str) -> str:
    """Shorten `text` to at most `MAX_MESSAGE_CHARS`, saying so."""
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return text[: MAX_MESSAGE_CHARS - 40] + f"... ({len(text)} characters, truncated)"


def safe_repr(value: object, limit: int = 200) -> str:
    """Return a short `repr` of a user value, never raising."""
    try:
        text = repr(value)
    except Exception:
        text = object.__repr__(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def same_name(a: str, b: str) -> bool:
    """Tell whether two recorded qualified names denote the same class or function.

    Code run as a script lives in module ``__main__``; the same code imported later
    (by a worker, a test, ``python -m``) lives in its real module. A name recorded
    under ``__main__`` therefore matches the same qualified name in any module.
    """
    if a == b:
        return True
    module_a, _, rest_a = a.partition(".")
    module_b, _, rest_b = b.partition(".")
    if "__main__" not in (module_a, module_b):
        return False
    return a.endswith("." + rest_b) if module_b == "__main__" else b.endswith("." + rest_a)


def error_types_of(exc: BaseException) -> tuple[str, ...]:
    """Return the qualified names of `exc`'s classes, most specific first."""
    return tuple(
        qualified_name(cls)
        for cls in type(exc).__mro__
        if issubclass(cls, BaseException)
    )
