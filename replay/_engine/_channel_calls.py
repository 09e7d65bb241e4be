"""The engine's answers to `replay.connect` clients: the channel operation ``call``.

A client in another process asks for one of the engine's API methods (``start``,
``status``, ``wait``, ``result``, ``runs``, ``signal``, ``resume``, ``cancel``,
``terminate``, or ``hello``), and
the engine runs it with its public API. Recorded values travel as codec bytes
(``replay._codec``: a run's input, a signal's payload, a cancellation's reason, an
output), so a client gets
exactly what in-process code gets; everything else travels as wire values
(`replay._channel._protocol`). An error answer carries the error's class name, message
and attributes, which the client raises again as the same class.

``wait`` and ``result`` wait here, in the engine, as long as the run takes; a task
reads the connection meanwhile, and when the client goes away (it closed the
connection, its process died) the wait stops. When the engine stops while a client
waits, the client gets `EngineClosed` saying so before the connection closes.

Also the channel's small helpers (reading a request's fields, sending answers), shared
with the server in `_channel_server`.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from replay._channel._protocol import WireError, dump_message, from_wire, to_wire
from replay._codec import decode, encode
from replay._core._signals import misdirected_signal
from replay._errors import EngineClosed, ReplayError, WorkflowNotRegistered
from replay._types import RunInfo
from replay._version import __version__

if TYPE_CHECKING:
    from replay._engine._facade import Engine

# `runs` answers in messages of about this many bytes (a run's output may be 4 MiB).
RUNS_CHUNK_BYTES = 1 << 20
# How long an engine that stops may take to tell a waiting client so.
GOODBYE_SECONDS = 1.0
# The attributes of replay's errors that travel with them (see `error_attrs`).
_ATTR_TYPES = (str, int, float, tuple, type(None))


class BadRequest(Exception):
    """A request the engine cannot parse: answered with a ``ProtocolError``."""


# -- the operation --


async def serve_call(engine: Engine, stream: trio.SocketStream, request: dict[str, Any],
                     database: str) -> None:
    """Answer one ``call`` request of a client.

    Raises:
        BadRequest: The request is malformed or names no method.
        ReplayError: (and TypeError, ValueError) what the engine's method raised.
    """
    method = request.get("method")
    serve = _METHODS.get(method) if isinstance(method, str) else None
    if serve is None:
        raise BadRequest(f"unknown call method {method!r}; this engine (replay {__version__}) "
                         "knows " + ", ".join(sorted(_METHODS)))
    await serve(_Call(engine, stream, request, database))


class _Call:
    """One client call: the engine, the connection, the request."""

    def __init__(self, engine: Engine, stream: trio.SocketStream, request: dict[str, Any],
                 database: str) -> None:
        self.engine = engine
        self.stream = stream
        self.request = request
        self.database = database

    @property
    def run_id(self) -> str:
        return text(self.request, "run_id")

    async def answer(self, **fields: Any) -> None:
        """Send the answer's header: `fields` are wire values already."""
        await send(self.stream, {"ok": True, "pid": os.getpid(), **fields})


async def _hello(call: _Call) -> None:
    await call.answer(version=__version__, command=engine_command())


async def _start(call: _Call) -> None:
    args = recorded(call.request, "args")
    if not isinstance(args, tuple):
        raise BadRequest("the request's 'args' must be a recorded tuple")
    name = text(call.request, "workflow")
    try:
        run = await call.engine.start(name, *args, run_id=value(call.request, "run_id"),
                                      timeout=value(call.request, "timeout"))
    except WorkflowNotRegistered as error:
        raise WorkflowNotRegistered(
            f"{error}; asked of the engine serving {call.database!r}, process "
            f"{os.getpid()} ({engine_command()}): register the workflow there (for replay "
            "serve: pass the module that defines it with --workflows) and restart it"
            ) from None
    await call.answer(run_id=run.run_id, workflow=run.workflow)


async def _status(call: _Call) -> None:
    await call.answer(info=info_wire(call.engine.status(call.run_id)))


async def _wait(call: _Call) -> None:
    run = call.engine.get_run(call.run_id)
    await _long(call, run.wait, lambda info: {"info": info_wire(info)})


async def _result(call: _Call) -> None:
    run = call.engine.get_run(call.run_id)
    await _long(call, run.result, lambda output: {"output": to_wire(encode(output, key="output"))})


async def _runs(call: _Call) -> None:
    request = call.request
    found = await call.engine.runs(value(request, "state"), value(request, "workflow"),
                                   value(request, "limit"))
    await call.answer()
    batch: list[dict[str, Any]] = []
    size = 0
    for info in found:
        batch.append(info_wire(info))
        size += len(batch[-1]["output"]["$bytes"]) + 500
        if size >= RUNS_CHUNK_BYTES:
            await send(call.stream, {"runs": batch})
            batch, size = [], 0
    if batch:
        await send(call.stream, {"runs": batch})
    await send(call.stream, {"end": True, "runs": len(found)})


async def _signal(call: _Call) -> None:
    key = text(call.request, "key")
    run = await call.engine.signal(call.run_id, key, recorded(call.request, "value"))
    info = call.engine.status(run.run_id)
    await call.answer(run_id=run.run_id, workflow=run.workflow, state=info.state.value,
                      warning=misdirected_signal(info, key))


async def _resume(call: _Call) -> None:
    before = call.engine.status(call.run_id).state.value
    run = await call.engine.resume(call.run_id)
    await call.answer(run_id=run.run_id, workflow=run.workflow, before=before,
                      state=call.engine.status(run.run_id).state.value)


async def _cancel(call: _Call) -> None:
    run = await call.engine.cancel(call.run_id, recorded(call.request, "value"))
    await call.answer(run_id=run.run_id, workflow=run.workflow,
                      state=call.engine.status(run.run_id).state.value)


async def _terminate(call: _Call) -> None:
    run = await call.engine.terminate(call.run_id, recorded(call.request, "value"))
    await call.answer(run_id=run.run_id, workflow=run.workflow,
                      state=call.engine.status(run.run_id).state.value)


_METHODS: dict[str, Callable[[_Call], Awaitable[None]]] = {
    "hello": _hello, "start": _start, "status": _status, "wait": _wait, "result": _result,
    "runs": _runs, "signal": _signal, "resume": _resume, "cancel": _cancel,
    "terminate": _terminate,
}


async def _long(call: _Call, waiting: Callable[[], Awaitable[Any]],
                fields: Callable[[Any], dict[str, Any]]) -> None:
    """Wait in the engine and answer; stop waiting if the client goes away.

    Raises:
        ReplayError: (and TypeError, ValueError) what the wait raised.
    """
    gone = answered = False
    outcome: Any = None
    failure: Exception | None = None

    async def watch(scope: trio.CancelScope) -> None:
        nonlocal gone
        # A client sends nothing after its request: data or the end of it means it left.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await call.stream.receive_some(1)
        gone = True
        scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            try:
                outcome = await waiting()
            except (ReplayError, TypeError, ValueError) as error:
                failure = error
            nursery.cancel_scope.cancel()
        if gone:
            return
        if failure is not None:
            raise failure
        await call.answer(**fields(outcome))
        answered = True
    finally:
        if not (answered or gone) and trio.current_effective_deadline() == -math.inf:
            # Cancelled: the engine is stopping. Say so, rather than just hang up.
            with (trio.CancelScope(shield=True), trio.move_on_after(GOODBYE_SECONDS),
                  contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError)):
                await send_error(call.stream, EngineClosed(
                    f"the engine serving {call.database!r} (process {os.getpid()}) stopped "
                    "while waiting; the run is safe in the file and continues when an "
                    "engine opens it again: restart the engine (e.g. `replay serve "
                    f"{call.database} --workflows MODULE`) and wait again"))


# -- values and answers --


def engine_command() -> str:
    """Return this process's command line, for messages (at most 300 characters)."""
    command = shlex.join(sys.orig_argv)
    return command if len(command) <= 300 else command[:297] + "..."


def info_wire(info: RunInfo) -> dict[str, Any]:
    """Return a `RunInfo` as wire values, its output as codec bytes."""
    fields = {name: to_wire(getattr(info, name)) for name in RunInfo.__dataclass_fields__}
    fields["output"] = to_wire(encode(info.output, key="output"))
    fields["status_value"] = to_wire(encode(info.status_value, key="status_value"))
    return fields


def text(request: dict[str, Any], name: str) -> str:
    """Return a request's text field.

    Raises:
        BadRequest: It is not text.
    """
    field = request.get(name)
    if not isinstance(field, str):
        raise BadRequest(f"the request's {name!r} must be a string, not "
                         f"{type(field).__name__}")
    return field


def value(request: dict[str, Any], name: str) -> Any:
    """Return a request's field as a Python value (None if missing).

    Raises:
        BadRequest: It is malformed, of an unknown tag, or nested too deeply.
    """
    try:
        return from_wire(request.get(name))
    except WireError as error:
        raise BadRequest(f"bad {name} in the request: {error}") from None


def recorded(request: dict[str, Any], name: str) -> Any:
    """Return a request's field that carries a value encoded by the codec, decoded.

    Raises:
        BadRequest: It is not bytes.
        EncodingError: The bytes are not a value the codec can decode (e.g. a type
            registered in the client's process but not in this one).
    """
    data = value(request, name)
    if not isinstance(data, bytes):
        raise BadRequest(f"the request's {name!r} must be a recorded value ($bytes)")
    return decode(data)


def error_attrs(error: BaseException) -> dict[str, Any]:
    """Return the attributes of one of replay's errors (``run_id``, ``key``, ...)."""
    return {name: to_wire(item) for name, item in vars(error).items()
            if not name.startswith("_") and isinstance(item, _ATTR_TYPES)}


async def send(stream: trio.SocketStream, message: dict[str, Any]) -> None:
    """Send one message (its values already wire values)."""
    await stream.send_all(dump_message(message))


async def send_error(stream: trio.SocketStream, error: BaseException | str,
                     message: str | None = None) -> None:
    """Send an error answer: an exception (with its attributes), or a type and a message."""
    if isinstance(error, BaseException):
        failure: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
        attrs = error_attrs(error) if isinstance(error, ReplayError) else {}
        if attrs:
            failure["attrs"] = attrs
    else:
        failure = {"type": error, "message": message}
    await send(stream, {"ok": False, "error": failure})
