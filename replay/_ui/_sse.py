"""``GET /run/events``: a run's updates as server-sent events, fed by watching it.

Each update is one ``update`` event whose ``id:`` is the `seq` of the newest event it
reflects. A browser that loses the stream reconnects by itself and sends the last id
it saw as ``Last-Event-ID``; the watch then starts after that seq, so nothing is
missed and nothing comes twice. The page's first request passes ``after=`` (the
newest event it was rendered with) for the same reason. When the run finishes (or
the engine stops) an ``end`` event says so and the stream closes; the page's script
then stops listening. A comment every `KEEPALIVE_SECONDS` keeps idle connections
open through proxies and lets the server notice a browser that went away.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from replay._errors import ReplayError
from replay._ui._backend import Backend, Update
from replay._ui._html import stamp
from replay._ui._pages import event_cells, waiting_text

KEEPALIVE_SECONDS = 15.0
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
           (b"cache-control", b"no-store"), (b"x-accel-buffering", b"no")]


def message(update: Update) -> bytes:
    """Return one update as an SSE ``update`` event (its id: the update's seq)."""
    data: dict[str, Any] = {"kind": update["kind"], "seq": update["seq"], "info": None,
                            "event": None}
    info = update.get("info")
    if info is not None:
        data["info"] = {"state": str(info["state"]), "waiting": waiting_text(info),
                        "status_text": info.get("status_text"),
                        "updated_at": stamp(info.get("updated_at"))}
    event = update.get("event")
    if event is not None:
        data["event"] = {"seq": event["seq"], "cells": event_cells(event)}
    text = json.dumps(data, ensure_ascii=False, default=str)
    return f"id: {update['seq']}\nevent: update\ndata: {text}\n\n".encode()


def end(reason: str) -> bytes:
    """Return the ``end`` event: the run finished, or nothing more will come."""
    return f"event: end\ndata: {json.dumps({'reason': reason})}\n\n".encode()


async def stream(backend: Backend, run_id: str, after_seq: int | None, send: Send,
                 receive: Receive, stopping: trio.Event) -> None:
    """Send the run's updates until it finishes, the browser leaves or the server stops.

    The caller checked that the run exists; this sends the response's headers.
    """
    lock = trio.Lock()

    async def put(body: bytes) -> None:
        async with lock:  # the keep-alive task and the watch share one response
            await send({"type": "http.response.body", "body": body, "more_body": True})

    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    with trio.CancelScope() as whole:
        await _watch(backend, run_id, after_seq, put, receive, stopping, whole)
    if not whole.cancelled_caught:  # else the browser went away, or the server stops
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _watch(backend: Backend, run_id: str, after_seq: int | None,
                 put: Callable[[bytes], Awaitable[None]], receive: Receive,
                 stopping: trio.Event, whole: trio.CancelScope) -> None:
    reason = "the run finished"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_gone, receive, stopping, whole)
        nursery.start_soon(_keepalive, put)
        try:
            async with backend.watch(run_id, after_seq) as updates:
                # Only now: a change made after the client reads this line is seen.
                await put(b": watching\n\n")
                async for update in updates:
                    if update["kind"] in ("snapshot", "event"):
                        await put(message(update))
        except ReplayError as error:  # the engine stopped, or refused the watch
            reason = str(error)
        await put(end(reason))
        nursery.cancel_scope.cancel()


async def _until_gone(receive: Receive, stopping: trio.Event, scope: trio.CancelScope) -> None:
    """Cancel the stream when the browser disconnects or the server stops."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_with, stopping.wait, nursery.cancel_scope)
        while (await receive())["type"] != "http.disconnect":
            pass
        nursery.cancel_scope.cancel()
    scope.cancel()


async def _stop_with(wait: Callable[[], Awaitable[object]], scope: trio.CancelScope) -> None:
    await wait()
    scope.cancel()


async def _keepalive(put: Callable[[bytes], Awaitable[None]]) -> None:
    while True:
        await trio.sleep(KEEPALIVE_SECONDS)
        await put(b": keep-alive\n\n")
