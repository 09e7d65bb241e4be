"""Watching runs from another process (`replay.connect`, `connect_async`) and from the
`replay.aio` and `replay.sync` façades.

The engine runs in this process under the virtual clock; the blocking client runs in a
worker thread (`trio.to_thread`), talking to the engine over its real socket. Nothing
sleeps to wait for the engine: tests wait on runs and on the client's thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import replay
import replay.aio
import replay.sync
from replay import Note, Step, Suspend
from replay._engine import _watch
from replay._engine._facade import internals


async def part(i: int) -> int:
    replay.current_step().progress({"i": i})
    return i


@replay.workflow(name="batch")
def batch(n: int):  # type: ignore[no-untyped-def]
    for i in range(n):
        yield Step(f"part:{i}", part, i)
        yield Note(f"progress:{i}", {"done": i + 1, "of": n})
    decision: Any = yield Suspend("approval:v1", status="waiting for a manager")
    return decision


def watcher_count(engine: replay.Engine) -> int:
    hub = internals(engine).scheduler.watchers
    return sum(len(found) for found in hub._by_run.values()) + len(hub._everything)


async def test_a_remote_watch_sees_every_event_in_order_and_ends_at_the_finish(db: str) -> None:
    async with replay.open_engine(db, workflows=[batch], durability="none") as engine:
        run = await engine.start(batch, 3, run_id="b")
        client = replay.Client(db)
        got: list[replay.RunUpdate] = []

        def collect() -> None:
            got.extend(client.get_run("b").watch(after_seq=0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, collect)
            await run.wait()
            await engine.signal("b", "approval:v1", {"ok": True})
        history = await engine.history("b")
        events = [update for update in got if update.kind == "event"]
        assert [u.seq for u in events] == [e.seq for e in history]
        assert [u.event.value for u in events] == [e.value for e in history]  # type: ignore[union-attr]
        assert got[-1].info is not None and got[-1].info.state is replay.RunState.COMPLETED
        assert got[-1].info.output == {"ok": True}
        notes = [u.info.status_value for u in events if u.event.kind == "note"]  # type: ignore[union-attr]
        assert notes[-1] == {"done": 3, "of": 3}
        # after_seq resumes exactly after the given event, and the watch ends at the finish.
        after = await trio.to_thread.run_sync(
            lambda: list(client.get_run("b").watch(after_seq=history[3].seq)))
        assert [u.seq for u in after] == [e.seq for e in history[4:]]
        assert watcher_count(engine) == 0


async def test_a_client_that_hangs_up_leaves_no_watcher(db: str) -> None:
    async with replay.open_engine(db, workflows=[batch], durability="none") as engine:
        await (await engine.start(batch, 1, run_id="b")).wait()
        client = replay.Client(db)

        def first_then_hang_up() -> replay.RunUpdate:
            with client.watch("b") as updates:
                return next(updates)

        first = await trio.to_thread.run_sync(first_then_hang_up)
        assert first.kind == "snapshot" and first.info is not None
        assert first.info.waiting_for == "approval:v1"
        for _ in range(10):  # the engine notices the closed socket on its next poll
            await trio.testing.wait_all_tasks_blocked()
            if watcher_count(engine) == 0:
                break
        assert watcher_count(engine) == 0
        with pytest.raises(replay.RunNotFound):
            await trio.to_thread.run_sync(lambda: next(client.watch("nope")))


async def test_a_lagging_remote_watcher_is_told_what_it_missed(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The watch is held up after it read the run's history (registered already), and
    # the run ends meanwhile: its updates overflow the watcher's buffer of one.
    reading, caught_up = trio.Event(), trio.Event()
    read_history = _watch.history_after

    async def held_up(*args: Any) -> list[replay.RunUpdate]:
        history = await read_history(*args)
        reading.set()
        await caught_up.wait()
        return history

    monkeypatch.setattr(_watch, "history_after", held_up)
    async with replay.open_engine(db, workflows=[batch], durability="none") as engine:
        run = await engine.start(batch, 3, run_id="b")
        await run.wait()
        client = replay.Client(db)
        got: list[replay.RunUpdate] = []

        def collect() -> None:
            got.extend(client.watch("b", after_seq=0, buffer=1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, collect)
            await reading.wait()
            await engine.signal("b", "approval:v1", "yes")
            await run.result()
            caught_up.set()
    assert any(u.kind == "snapshot" and u.missed > 0 for u in got)
    assert got[-1].info is not None and got[-1].info.state is replay.RunState.COMPLETED


async def test_a_remote_watcher_is_told_when_the_engine_closes(db: str) -> None:
    failures: list[BaseException] = []
    seen = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def watch() -> None:
        updates = replay.Client(db).watch("b")
        next(updates)
        trio.from_thread.run_sync(seen.set, trio_token=token)
        try:
            next(updates)
        except replay.EngineClosed as error:
            failures.append(error)

    async with (trio.open_nursery() as nursery,
                replay.open_engine(db, workflows=[batch], durability="none") as engine):
        await (await engine.start(batch, 1, run_id="b")).wait()
        nursery.start_soon(trio.to_thread.run_sync, watch)
        await seen.wait()
    assert "stopped while watching" in str(failures[0])


async def test_remote_wait_until_a_state(db: str) -> None:
    async with replay.open_engine(db, workflows=[batch], durability="none") as engine:
        await engine.start(batch, 2, run_id="b")
        client = replay.Client(db)
        info = await trio.to_thread.run_sync(
            lambda: client.get_run("b").wait(until=lambda r: r.waiting_for == "approval:v1"))
        assert info.state is replay.RunState.SUSPENDED
        await engine.signal("b", "approval:v1", "yes")
        with pytest.raises(replay.RunFinished):
            await trio.to_thread.run_sync(lambda: client.get_run("b").wait(until="sleeping"))


def test_the_asyncio_client_watches_and_waits(tmp_path: Path) -> None:
    db = str(tmp_path / "aio.duckdb")

    async def main() -> None:
        async with replay.aio.open_engine(db, workflows=[batch]) as engine:
            await engine.start(batch, 2, run_id="b")
            async with replay.connect_async(db) as client:
                remote = await client.get_run("b")
                info = await remote.wait(until="suspended")
                assert info.waiting_for == "approval:v1"
                async with remote.watch() as updates:
                    first = await updates.__anext__()
                assert first.kind == "snapshot" and first.info == info
                await engine.signal("b", "approval:v1", "yes")
                kinds = [u.event.event async for u in remote.watch(after_seq=0)  # type: ignore[union-attr]
                         if u.kind == "event" and u.event.kind == "run"]  # type: ignore[union-attr]
                assert kinds == ["started", "completed"]

    asyncio.run(main())


def test_aio_watch_and_wait_until(tmp_path: Path) -> None:
    async def main() -> None:
        async with replay.aio.open_engine(tmp_path / "a.duckdb", workflows=[batch]) as engine:
            run = await engine.start(batch, 2, run_id="b")
            info = await run.wait(until=lambda r: r.waiting_for == "approval:v1")
            assert info.status_text == "waiting for a manager"
            await engine.signal("b", "approval:v1", "yes")
            updates = [u async for u in run.watch(after_seq=0)]
            assert updates[-1].info is not None and updates[-1].info.output == "yes"
            assert [u.seq for u in updates] == [e.seq for e in await engine.history("b")]

    asyncio.run(main())


def test_sync_watch_and_wait_until(tmp_path: Path) -> None:
    with replay.sync.open_engine(tmp_path / "s.duckdb", workflows=[batch]) as engine:
        run = engine.start(batch, 2, run_id="b")
        assert run.wait(until="suspended", timeout=60).waiting_for == "approval:v1"
        with run.watch() as updates:
            assert next(updates).kind == "snapshot"
        engine.signal("b", "approval:v1", "yes")
        updates = list(run.watch(after_seq=0))
        assert [u.seq for u in updates] == [e.seq for e in engine.history("b")]
        assert updates[-1].info is not None and updates[-1].info.output == "yes"
        with pytest.raises(replay.RunFinished):
            run.wait(until="sleeping")
