"""The run page's live updates: server-sent events fed by watching the run (issue 17).

The stream is read straight from the ASGI app while the engine executes the run in
the same trio run (virtual time). Each event's id is its seq; a reconnect with
``Last-Event-ID`` (what a browser sends) continues after it with no gap and no
duplicate; the stream ends with an ``end`` event once the run finished, and at once
when the browser goes away or the server stops.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
import trio

import replay
from replay import Step, Suspend
from replay._engine._ui_backend import EngineBackend
from replay._ui import App

pytestmark = pytest.mark.both_stores


def add(a: int, b: int) -> int:
    return a + b


@replay.workflow(name="twice")
def twice() -> Generator[Any, Any, Any]:
    first = yield Suspend("first:v1", status="first approval")
    yield Step("between:v1", add, 1, 1)
    second = yield Suspend("second:v1", status="second approval")
    return [first, second]


@dataclass
class Stream:
    """An SSE response as it arrives: its status, headers and parsed events."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    buffer: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    more: trio.Event = field(default_factory=trio.Event)
    done: bool = False

    def feed(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
            return
        self.buffer += message.get("body", b"").decode()
        while "\n\n" in self.buffer:
            block, self.buffer = self.buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.split("\n")
                          if not line.startswith(":"))
            if fields:
                self.events.append({"id": fields.get("id"), "event": fields["event"],
                                    "data": json.loads(fields["data"])})
        self.done = not message.get("more_body", False)
        self.more.set()
        self.more = trio.Event()

    async def until(self, predicate: Any) -> None:
        with trio.fail_after(600):
            while not predicate(self):
                await self.more.wait()


@asynccontextmanager
async def sse(app: App, run_id: str, after: int | None = None,
              last_event_id: int | None = None) -> AsyncIterator[Stream]:
    """Open ``GET /run/events`` on `app`; leaving the block is the browser going away."""
    stream, gone = Stream(), trio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        stream.feed(message)

    query = {"id": run_id, **({"after": str(after)} if after is not None else {})}
    headers = [(b"host", b"127.0.0.1:8077")]
    if last_event_id is not None:
        headers.append((b"last-event-id", str(last_event_id).encode()))
    scope = {"type": "http", "method": "GET", "path": "/run/events",
             "query_string": urlencode(query).encode(), "headers": headers}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, scope, receive, send)
        yield stream
        gone.set()


def updates(stream: Stream) -> list[dict[str, Any]]:
    return [event["data"] for event in stream.events if event["event"] == "update"]


def ended(stream: Stream) -> bool:
    return any(event["event"] == "end" for event in stream.events)


async def seqs_after(engine: replay.Engine, run_id: str, seq: int) -> list[int]:
    rows = await engine.sql("SELECT seq FROM replay_events WHERE run_id = ? AND seq > ? "
                            "ORDER BY seq", [run_id, seq])
    return [row[0] for row in rows]


@asynccontextmanager
async def engine_and_app(db: str) -> AsyncIterator[tuple[replay.Engine, App]]:
    async with replay.open_engine(db, workflows=[twice], durability="none",
                                  shutdown_timeout=0) as engine:
        yield engine, App(EngineBackend(engine))


async def test_ui_live_events_arrive_as_the_run_executes(db: str) -> None:
    async with engine_and_app(db) as (engine, app):
        await (await engine.start(twice, run_id="t1")).wait()
        start = (await engine.sql("SELECT max(seq) FROM replay_events"))[0][0]
        async with sse(app, "t1", after=start) as stream:
            await stream.until(lambda s: s.status)
            assert stream.status == 200
            assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
            await engine.signal("t1", "first:v1", "yes")
            await stream.until(lambda s: any(
                u["info"] and u["info"]["waiting"] == "second:v1 (a signal, no timeout)"
                for u in updates(s)))
            await engine.signal("t1", "second:v1", "again")
            await stream.until(ended)
        assert stream.done
        got = updates(stream)
        assert [u["seq"] for u in got] == await seqs_after(engine, "t1", start)
        assert [int(e["id"]) for e in stream.events if e["event"] == "update"] == [
            u["seq"] for u in got]
        assert got[0]["event"]["cells"][2:4] == ["signal/signalled", "first:v1"]
        assert got[0]["event"]["cells"][6] == '"yes"'
        assert got[-1]["info"]["state"] == "completed"
        assert got[-1]["event"]["cells"][2] == "run/completed"
        assert stream.events[-1] == {"id": None, "event": "end",
                                     "data": {"reason": "the run finished"}}
        # The page of a finished run opens a stream too: it ends at once.
        async with sse(app, "t1", after=got[-1]["seq"]) as later:
            await later.until(ended)
        assert [(u["kind"], u["info"]["state"]) for u in updates(later)] in (
            [], [("snapshot", "completed")])


async def test_ui_live_reconnect_with_last_event_id_has_no_gap_or_duplicate(db: str) -> None:
    async with engine_and_app(db) as (engine, app):
        await (await engine.start(twice, run_id="t2")).wait()
        start = (await engine.sql("SELECT max(seq) FROM replay_events"))[0][0]
        async with sse(app, "t2", after=start) as first:
            await engine.signal("t2", "first:v1", 1)
            await first.until(lambda s: any(u["info"] and u["info"]["state"] == "suspended"
                                            for u in updates(s)))
        last = int([e for e in first.events if e["event"] == "update"][-1]["id"])
        await engine.signal("t2", "second:v1", 2)  # while the browser is away
        await engine.get_run("t2").result()
        async with sse(app, "t2", after=start, last_event_id=last) as second:
            await second.until(ended)
        seen = [u["seq"] for u in updates(first)] + [u["seq"] for u in updates(second)]
        assert seen == await seqs_after(engine, "t2", start)
        assert len(set(seen)) == len(seen)


async def test_ui_live_without_a_seq_starts_with_the_runs_state(db: str) -> None:
    async with engine_and_app(db) as (engine, app):
        await (await engine.start(twice, run_id="t3")).wait()
        async with sse(app, "t3") as stream:
            await stream.until(lambda s: updates(s))
            snapshot = updates(stream)[0]
            assert snapshot["kind"] == "snapshot" and snapshot["event"] is None
            assert snapshot["info"]["state"] == "suspended"
            assert snapshot["info"]["status_text"] == "first approval"
            newest = (await engine.sql("SELECT max(seq) FROM replay_events"))[0][0]
            assert stream.events[0]["id"] == str(newest) == str(snapshot["seq"])


async def test_ui_live_stream_ends_when_the_server_stops_or_the_browser_leaves(
        db: str) -> None:
    async with engine_and_app(db) as (engine, app):
        await (await engine.start(twice, run_id="t4")).wait()
        async with sse(app, "t4") as stream:
            await stream.until(lambda s: updates(s))
            await trio.sleep(3600)  # an idle hour: comments keep the connection alive
            assert stream.buffer == "" and not stream.done
            app.stopping.set()
            await trio.sleep(0.1)
        assert not ended(stream)  # cut off: the browser would reconnect to the next server
        fresh = App(EngineBackend(engine))
        with trio.move_on_after(1) as timer:
            async with sse(fresh, "t4") as leaving:
                await leaving.until(lambda s: updates(s))
        assert not timer.cancelled_caught


async def test_ui_live_bad_seq_and_unknown_run(db: str) -> None:
    async with engine_and_app(db) as (_, app):
        async with sse(app, "ghost") as stream:
            await stream.until(lambda s: s.done)
        assert stream.status == 404
        async with sse(app, "ghost", last_event_id=-1) as bad:
            await bad.until(lambda s: s.done)
        assert bad.status == 400
