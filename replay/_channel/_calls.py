"""What `replay.connect`'s clients ask the engine, and how they read its answers.

Shared by the blocking client (`_connect`) and the asyncio one (`_aio`); no I/O here.
A client's request is the channel operation ``call`` with a ``method`` (``start``,
``status``, ``wait``, ``result``, ``runs``, ``signal``, ``resume``, ``cancel``,
``terminate``, ``hello``), the ``query`` operation the `replay` command uses (for
`sql`), or ``purge``. One connection carries one request, as for the command.

Values travel as the engine records them: the client encodes a run's input, a
signal's payload and a cancellation's reason with the project codec (``replay._codec``:
msgpack, tuples, sets, registered types, the same size and depth limits) and sends the
bytes as a ``$bytes`` wire value; outputs come back the same way. So
``client.result(run_id)`` returns what ``await run.result()`` returns inside the engine.
Errors come back as their class name, message and attributes, and are raised again as
the same class (`error_of`).
"""

from __future__ import annotations

import builtins
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import replay._errors as _errors
from replay._channel._protocol import (
    PROTOCOL,
    WireError,
    dump_message,
    from_wire,
    load_message,
    socket_path,
    to_wire,
)
from replay._codec import decode, encode
from replay._errors import EngineClosed, ReplayError
from replay._types import PurgeReport, RunInfo, RunState
from replay._workflows import workflow_name

log = logging.getLogger("replay")

DEFAULT_TIMEOUT = 60.0
# What a purge deletes by default (as `Engine.purge`).
FINISHED_STATES = ("completed", "failed", "cancelled")
# The builtin errors the engine's API raises for bad arguments, raised again as themselves.
_BUILTIN_ERRORS = frozenset({"TypeError", "ValueError", "KeyError", "PermissionError"})


@dataclass
class Call:
    """One request of a client: what to send, what it is for, and what comes back.

    Attributes:
        op: The channel operation (``call``, or ``query`` for `sql`).
        fields: The request's fields (Python values; `line` converts them).
        doing: What the call does, for messages ("waiting for run 'o-17'").
        waits: A long wait (`wait`, `result`): only the caller's timeout applies.
        chunks: The key of the messages that follow the header (``rows``, ``runs``),
            if the answer comes in chunks.
    """

    op: str
    fields: dict[str, Any]
    doing: str
    waits: bool = False
    chunks: str | None = None

    def line(self) -> bytes:
        """Return the request as one line of the protocol.

        Raises:
            EncodingError: A value cannot travel (it nests too deeply for the channel).
        """
        try:
            wire = {name: to_wire(value) for name, value in self.fields.items()}
        except WireError as error:
            raise _errors.EncodingError(f"cannot send this to the engine: {error}") from None
        return dump_message({"protocol": PROTOCOL, "op": self.op, **wire})


def call(method: str, doing: str, *, waits: bool = False, chunks: str | None = None,
         **fields: Any) -> Call:
    """Return a ``call`` request for `method`."""
    return Call("call", {"method": method, **fields}, doing, waits, chunks)


def start(workflow: Callable[..., Any] | str, args: tuple[Any, ...], run_id: str | None,
          timeout: float | timedelta | None = None) -> Call:
    """Return the request that starts a run (its input encoded here, as the engine would).

    `timeout` travels as it is (seconds or a `timedelta`): the engine checks it and
    counts the run's deadline from its own clock.

    Raises:
        TypeError: `workflow` is neither a workflow function nor a name, or `timeout`
            is not a duration.
        EncodingError: An argument cannot be recorded.
    """
    if isinstance(workflow, str):
        name = workflow
    elif callable(workflow):
        name = workflow_name(workflow)
    else:
        raise TypeError(f"start(workflow, *args): workflow must be a workflow function or its "
                        f"registered name, got {workflow!r} ({type(workflow).__name__})")
    if run_id is not None:
        checked("run_id", run_id)
    if timeout is not None and (isinstance(timeout, bool)
                                or not isinstance(timeout, int | float | timedelta)):
        # The engine's words; a value the wire cannot carry as itself must not reach it.
        raise TypeError("engine.start(..., timeout=...): timeout must be a timedelta or a "
                        f"number of seconds, got {timeout!r} ({type(timeout).__name__})")
    return call("start", f"starting a run of {name!r}", workflow=name, run_id=run_id,
                args=encode(args, key="input"), timeout=timeout)


def signal(run_id: str, key: str, payload: Any) -> Call:
    """Return the request that signals a run (the payload encoded here).

    Raises:
        TypeError: `run_id` or `key` is not a str.
        EncodingError: The payload cannot be recorded.
    """
    checked("run_id", run_id)
    checked("key", key)
    return call("signal", f"signalling {key!r} of run {run_id!r}", run_id=run_id, key=key,
                value=encode(payload, key=key))


def ending(method: str, run_id: str, reason: Any) -> Call:
    """Return the request that cancels or terminates a run (the reason encoded here).

    Raises:
        TypeError: `run_id` is not a str.
        EncodingError: The reason cannot be recorded.
    """
    checked("run_id", run_id)
    doing = "cancelling" if method == "cancel" else "terminating"
    return call(method, f"{doing} run {run_id!r}", run_id=run_id,
                value=encode(reason, key="reason"))


def on_run(method: str, doing: str, run_id: str, *, waits: bool = False) -> Call:
    """Return a request about one run (`status`, `wait`, `result`, `resume`).

    Raises:
        TypeError: `run_id` is not a str.
    """
    return call(method, f"{doing} run {checked('run_id', run_id)!r}", waits=waits,
                run_id=run_id)


def purge(older_than: Any, states: Any, workflow: Any, archive_to: Any) -> Call:
    """Return the request of a purge (the engine checks the arguments).

    A workflow function travels as its name, and an archive path as an absolute one:
    the engine's process may have another working directory.
    """
    if callable(workflow):
        workflow = workflow_name(workflow)
    if isinstance(archive_to, str | os.PathLike):
        archive_to = os.path.abspath(os.fspath(archive_to))
    if isinstance(states, set | frozenset | Iterator):
        states = list(states)
    return Call("purge", {"older_than": older_than, "states": states, "workflow": workflow,
                          "archive_to": archive_to}, "purging", chunks="progress")


def report_of(items: list[Any], path: str) -> PurgeReport:
    """Return the `PurgeReport` of a purge's answer (its last ``progress`` message).

    Raises:
        ReplayError: It is malformed.
    """
    try:
        data = items[-1]
        fields = {name: value(data, name, path) for name in PurgeReport.__dataclass_fields__}
        return PurgeReport(**fields)
    except (IndexError, TypeError, AttributeError) as error:
        raise ReplayError(f"malformed answer from the engine serving {path!r}: {error}"
                          ) from None


def checked(name: str, text: object) -> str:
    """Return `text` if it is a str (run ids and keys are).

    Raises:
        TypeError: It is not.
    """
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {text!r} ({type(text).__name__})")
    return text


def query(sql: str, params: Any, timeout: float | None) -> Call:
    """Return the request of one read-only query (the `replay sql` operation)."""
    return Call("query", {"sql": sql, "params": params, "timeout": timeout},
                "running a query", chunks="rows")


def checked_timeout(timeout: object) -> float:
    """Return `timeout` if it is a number of seconds above 0.

    Raises:
        TypeError: It is not a number.
        ValueError: It is not above 0, or not finite.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, got {timeout!r} "
                        f"({type(timeout).__name__})")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a number of seconds above 0, got {timeout!r}")
    return float(timeout)


# -- answers --


def warn(header: dict[str, Any]) -> None:
    """Log a signal's warning here too (the engine logs it in its own process)."""
    warning = header.get("warning")
    if isinstance(warning, str):
        log.warning(warning)


def parse(line: bytes, path: str) -> dict[str, Any]:
    """Read one answer line: the message, its values still in wire form.

    Raises:
        ReplayError: The line is not a message (the engine's answer is malformed).
        ReplayError: (or a subclass, or a builtin error) the engine answered with an
            error: raised as its class (`error_of`).
    """
    try:
        message = load_message(line)
    except ValueError as error:
        raise ReplayError(f"malformed answer from the engine serving {path!r}: {error}"
                          ) from None
    if message.get("ok") is False:
        raise error_of(message.get("error"))
    return message


def value(message: dict[str, Any], name: str, path: str) -> Any:
    """Return one field of an answer as a Python value.

    Raises:
        ReplayError: The field is malformed.
    """
    try:
        return from_wire(message.get(name))
    except WireError as error:
        raise ReplayError(f"malformed answer from the engine serving {path!r}: {error}"
                          ) from None


def recorded(message: dict[str, Any], name: str, path: str) -> Any:
    """Return a field that carries a recorded value (codec bytes), decoded.

    Raises:
        EncodingError: The value cannot be decoded here (e.g. a type registered in the
            engine's process but not in this one).
    """
    data = value(message, name, path)
    if not isinstance(data, bytes):
        raise ReplayError(f"malformed answer from the engine serving {path!r}: {name} is "
                          "not a recorded value")
    return decode(data)


# The `RunInfo` fields that travel as codec bytes (any value a workflow records).
_RECORDED = ("output", "status_value")


def info_of(data: Any, path: str) -> RunInfo:
    """Return the `RunInfo` an answer carries.

    Raises:
        ReplayError: It is malformed.
        EncodingError: Its output cannot be decoded here.
    """
    if not isinstance(data, dict):
        raise ReplayError(f"malformed answer from the engine serving {path!r}: no run info")
    fields = {name: value(data, name, path) for name in RunInfo.__dataclass_fields__
              if name not in _RECORDED}
    try:
        fields["state"] = RunState(fields["state"])
        return RunInfo(**fields, **{name: recorded(data, name, path) for name in _RECORDED})
    except (TypeError, ValueError) as error:
        raise ReplayError(f"malformed answer from the engine serving {path!r}: {error}"
                          ) from None


def error_of(failure: Any) -> BaseException:
    """Return the exception an error answer describes, as its own class where known.

    Replay's errors come back as the same class, with the engine's message and
    attributes (``run_id``, ``key``, ``error_type``, ...); the builtin errors of bad
    arguments as themselves; anything else (a refused request) as `ReplayError`.
    """
    if not isinstance(failure, dict):
        return ReplayError("the engine answered with a malformed error")
    kind, message = str(failure.get("type")), str(failure.get("message"))
    cls = getattr(_errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, ReplayError):
        # Not cls(...): the constructors differ; the message and attributes are the engine's.
        error = cls.__new__(cls)
        Exception.__init__(error, message)
        attrs = failure.get("attrs")
        if isinstance(attrs, dict):
            for name, wired in attrs.items():
                try:
                    attr = from_wire(wired)
                except WireError:
                    continue
                setattr(error, str(name), tuple(attr) if isinstance(attr, list) else attr)
        return error
    if kind in _BUILTIN_ERRORS:
        builtin: type[Exception] = getattr(builtins, kind)
        return builtin(message)
    return ReplayError(message)


def infos(items: list[Any], path: str) -> list[RunInfo]:
    """Return the runs of a `runs` answer."""
    return [info_of(item, path) for item in items]


def rows(items: list[Any], path: str) -> list[tuple[Any, ...]]:
    """Return the rows of a query's answer as tuples (as `engine.sql` returns them).

    Raises:
        ReplayError: A row is malformed.
    """
    try:
        return [tuple(from_wire(row)) for row in items]
    except (WireError, TypeError) as error:
        raise ReplayError(f"malformed answer from the engine serving {path!r}: {error}"
                          ) from None


# -- what went wrong with the channel --


def no_engine(database: str, stale: bool) -> EngineClosed:
    """The error of a client that finds no engine serving `database`."""
    sock = socket_path(database)
    why = (f"its socket {sock!r} refuses connections (left by an engine that stopped or "
           "died)" if stale else f"there is no socket {sock!r}")
    return EngineClosed(
        f"no engine serves {database!r}: {why}; start one with `replay serve {database} "
        "--workflows MODULE` (or open_engine(...) in an application), then call again")


def lost(database: str, pid: int | None, doing: str, why: str = "") -> EngineClosed:
    """The error of a client whose engine went away in the middle of a call."""
    process = f" (process {pid})" if pid is not None else ""
    return EngineClosed(
        f"the engine serving {database!r}{process} went away while {doing}{why}: it stopped "
        "or crashed; runs are safe in the file and continue when an engine opens it again: "
        f"restart it (e.g. `replay serve {database} --workflows MODULE`) and call again"
        + (" (a start with the same run_id is safe to repeat: it starts the run at most once)"
           if doing.startswith("starting") else ""))


def busy(path: str, tries: int) -> ReplayError:
    """The error of a channel whose listen backlog stayed full."""
    return ReplayError(
        f"the engine's channel {path!r} stayed busy: {tries} tries to connect found its "
        "backlog full; the engine is overloaded or blocked: call again")


def denied(path: str) -> PermissionError:
    """The error of a socket this user may not open."""
    return PermissionError(
        f"cannot use the engine's channel {path!r}: permission denied; it serves only the "
        "user that runs the engine: connect as that user")


def refused(path: str, owner: int | None, me: int) -> PermissionError:
    """The error of a channel served by another user than this process's."""
    return PermissionError(
        f"{path!r} is served by uid {owner}, not by you (uid {me}); refusing to talk to "
        "it: connect as the user that runs the engine")


def no_answer(database: str, doing: str, seconds: float) -> TimeoutError:
    """The error of a call whose answer did not come within its time limit."""
    if doing.startswith("waiting"):
        return TimeoutError(f"{doing} took longer than {seconds:g} s; the run goes on in the "
                            "engine: call again to keep waiting")
    return TimeoutError(
        f"the engine serving {database!r} did not answer within {seconds:g} s while {doing}: "
        "it may be blocked or out of file descriptors (its log says which); call again")
