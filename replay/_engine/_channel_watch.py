"""The engine's side of the channel operation ``watch``: a stream of run updates.

A client (``replay watch``, `Client.watch`, `AsyncClient.watch`) asks for one run's
updates (``run_id``, optionally ``after_seq``) or every run's (``workflow``,
``states``). The engine answers with a header, then one ``{"update": ...}`` message per
`RunUpdate` of an ordinary `Watch`, then ``{"end": true}`` once a watched run finished.

The watch's bounded buffer is what keeps a slow client from holding the engine up:
while this task waits for the client to read, the engine goes on committing, and a
watcher that falls behind is told how many updates it missed (the count travels in
the update's ``missed``). A task reads the connection meanwhile: when the client hangs
up, the watch stops and its watcher is removed at once. When the engine stops, the
client gets `EngineClosed` saying so.

Recorded values (an event's value, a run's output and status value, a progress value)
travel as codec bytes, as in ``call``'s answers, so a client decodes exactly what the
engine holds.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import TYPE_CHECKING, Any

import trio

from replay._channel._protocol import to_wire
from replay._codec import encode
from replay._engine._channel_calls import (
    GOODBYE_SECONDS,
    BadRequest,
    info_wire,
    send,
    send_error,
    value,
)
from replay._engine._watch import Watch
from replay._engine._watching import DEFAULT_BUFFER
from replay._errors import EngineClosed, ReplayError
from replay._types import Event, RunUpdate

if TYPE_CHECKING:
    from replay._engine._facade import Engine


async def serve_watch(engine: Engine, stream: trio.SocketStream, request: dict[str, Any],
                      database: str) -> None:
    """Answer one ``watch`` request: stream updates until done, hung up or closed.

    Raises:
        BadRequest: The request is malformed.
        ReplayError: (and TypeError, ValueError) what opening the watch raised, before
            anything is streamed (`RunNotFound`, bad filters).
    """
    watch = _open(engine, request)
    await send(stream, {"ok": True, "pid": os.getpid()})
    gone = ended = False
    failure: Exception | None = None

    async def hang_up(scope: trio.CancelScope) -> None:
        nonlocal gone
        # A client sends nothing after its request: data or the end of it means it left.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.receive_some(1)
        gone = True
        scope.cancel()

    try:
        async with watch, trio.open_nursery() as nursery:
            nursery.start_soon(hang_up, nursery.cancel_scope)
            try:
                async for update in watch:
                    await send(stream, {"update": update_wire(update)})
                await send(stream, {"end": True})
                ended = True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                gone = True
            except (ReplayError, TypeError, ValueError) as error:  # EngineClosed included
                failure = error
            nursery.cancel_scope.cancel()
        if isinstance(failure, EngineClosed):
            await _goodbye(stream, database)
        elif failure is not None and not gone:
            await send_error(stream, failure)  # e.g. a value that cannot be encoded
    finally:
        if not (ended or gone or failure) and trio.current_effective_deadline() == -math.inf:
            await _goodbye(stream, database)  # cancelled: the engine is stopping


def _open(engine: Engine, request: dict[str, Any]) -> Watch:
    """Return the watch a request asks for (one run's, or every run's).

    Raises:
        BadRequest: A field is malformed.
        RunNotFound: No such run.
        TypeError: A filter has the wrong type.
        ValueError: A filter is out of range (``after_seq`` without a run included).
    """
    run_id = value(request, "run_id")
    after_seq = value(request, "after_seq")
    buffer = value(request, "buffer")
    buffer = DEFAULT_BUFFER if buffer is None else buffer
    if run_id is not None:
        if not isinstance(run_id, str):
            raise BadRequest(f"the request's 'run_id' must be a string or null, not "
                             f"{type(run_id).__name__}")
        return engine.get_run(run_id).watch(after_seq, buffer)
    if after_seq is not None:
        raise ValueError("after_seq needs a run_id: it resumes one run's watch after one "
                         "of its events")
    states = value(request, "states")
    return engine.watch(value(request, "workflow"), states, buffer)


async def _goodbye(stream: trio.SocketStream, database: str) -> None:
    """Tell the client the engine stopped (it may be gone already)."""
    with (trio.CancelScope(shield=True), trio.move_on_after(GOODBYE_SECONDS),
          contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError)):
        await send_error(stream, EngineClosed(
            f"the engine serving {database!r} (process {os.getpid()}) stopped while "
            "watching; runs are safe in the file and continue when an engine opens it "
            "again: restart the engine (e.g. `replay serve "
            f"{database} --workflows MODULE`) and watch again with after_seq"))


def update_wire(update: RunUpdate) -> dict[str, Any]:
    """Return a `RunUpdate` as wire values, recorded values as codec bytes."""
    return {
        "kind": update.kind,
        "run_id": update.run_id,
        "info": None if update.info is None else info_wire(update.info),
        "seq": update.seq,
        "event": None if update.event is None else event_wire(update.event),
        "progress": (to_wire(encode(update.progress, key="progress"))
                     if update.kind == "progress" else None),
        "key": update.key,
        "missed": update.missed,
    }


def event_wire(event: Event) -> dict[str, Any]:
    """Return an `Event` as wire values, its value as codec bytes (None: no value)."""
    fields = {name: to_wire(getattr(event, name)) for name in Event.__dataclass_fields__}
    fields["value"] = (None if event.value is None and event.value_json is None
                       else to_wire(encode(event.value, key="value")))
    return fields
