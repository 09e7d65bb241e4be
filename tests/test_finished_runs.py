"""Finished runs leave memory: they are read from the file when asked about.

Only unfinished runs and the last few runs to finish stay in the engine's memory (the
window is shrunk to 2 here); every call about an older finished run reads it from the
file and answers as before.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

import replay
from replay import Step, Suspend
from replay._engine import _runs
from replay._engine._facade import internals

pytestmark = pytest.mark.both_stores

calls: list[str] = []


@pytest.fixture(autouse=True)
def _small_window(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_runs, "RECENTLY_FINISHED", 2)
    calls.clear()
    yield


def note(name: str, fail: bool = False) -> str:
    calls.append(name)
    if fail:
        raise RuntimeError(f"{name} failed")
    return name


@replay.workflow(name="finishes")
def finishes(n: int):  # type: ignore[no-untyped-def]
    value = yield Step("only:v1", note, f"step-{n}")
    return {"n": n, "value": value}


BROKEN = {"flaky": True}


def flaky_note(name: str) -> str:
    return note(name, fail=BROKEN["flaky"])


@replay.workflow(name="fails")
def fails():  # type: ignore[no-untyped-def]
    return (yield Step("flaky:v1", flaky_note, "flaky"))


@replay.workflow(name="waits")
def waits():  # type: ignore[no-untyped-def]
    return (yield Suspend("go:v1"))


def in_memory(engine: replay.Engine, run_id: str) -> bool:
    return internals(engine).scheduler.runs.find(run_id) is not None


async def finish_several(engine: replay.Engine, count: int = 4) -> None:
    for n in range(count):
        await (await engine.start(finishes, n, run_id=f"f{n}")).result()


async def test_a_finished_run_leaves_memory_and_is_read_from_the_file(db: str) -> None:
    async with replay.open_engine(db, workflows=[finishes]) as engine:
        await finish_several(engine)
        assert not in_memory(engine, "f0") and in_memory(engine, "f3")
        info = engine.status("f0")
        assert (info.state, info.output) == ("completed", {"n": 0, "value": "step-0"})
        assert info.created_at <= info.updated_at
        run = engine.get_run("f0")
        assert (run.workflow, await run.result()) == ("finishes", {"n": 0, "value": "step-0"})
        assert (await run.wait()).state == "completed"
        assert [e.event for e in await engine.history("f0")][-1] == "completed"
        listed = [info.run_id for info in await engine.runs(state="completed")]
        assert listed == ["f3", "f2", "f1", "f0"]
        assert not in_memory(engine, "f0")  # asking did not take it back into memory
        with pytest.raises(replay.RunNotFound):
            engine.status("nope")


async def test_starting_a_forgotten_run_again_returns_it(db: str) -> None:
    async with replay.open_engine(db, workflows=[finishes, waits]) as engine:
        await finish_several(engine)
        again = await engine.start(finishes, 99, run_id="f0")
        assert await again.result() == {"n": 0, "value": "step-0"}
        assert calls.count("step-0") == 1
        with pytest.raises(replay.RunIdConflict, match="already used by a run of workflow"):
            await engine.start(waits, run_id="f0")


async def test_a_forgotten_failed_run_resumes_once_even_when_asked_twice_at_once(
        db: str) -> None:
    async with replay.open_engine(db, workflows=[fails, finishes]) as engine:
        BROKEN["flaky"] = True
        with pytest.raises(replay.WorkflowFailed):
            await (await engine.start(fails, run_id="x")).result()
        await finish_several(engine)
        assert not in_memory(engine, "x")
        BROKEN["flaky"] = False
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(engine.resume, "x")
        assert await engine.get_run("x").result() == "flaky"
        events = [(e.kind, e.event) for e in await engine.history("x")]
        assert events.count(("run", "resumed")) == 1
        assert calls.count("flaky") == 2


async def test_a_signal_to_a_forgotten_finished_run_is_rejected(db: str) -> None:
    async with replay.open_engine(db, workflows=[finishes]) as engine:
        await finish_several(engine)
        with pytest.raises(replay.SignalRejected, match="is completed"):
            await engine.signal("f0", "go:v1", 1)
        assert not in_memory(engine, "f0")


async def test_opening_a_file_loads_only_its_unfinished_runs(db: str) -> None:
    async with replay.open_engine(db, workflows=[finishes, waits]) as engine:
        await finish_several(engine, 2)
        await (await engine.start(waits, run_id="w")).wait()
    async with replay.open_engine(db, workflows=[finishes, waits]) as engine:
        assert not in_memory(engine, "f0") and in_memory(engine, "w")
        assert engine.status("f1").output == {"n": 1, "value": "step-1"}
        await engine.signal("w", "go:v1", "went")
        assert await engine.get_run("w").result() == "went"


async def test_after_close_an_old_finished_run_cannot_be_read(db: str) -> None:
    async with replay.open_engine(db, workflows=[finishes]) as engine:
        await finish_several(engine)
    assert engine.status("f3").state == "completed"  # still in memory
    with pytest.raises(replay.EngineClosed, match="open the engine again"):
        engine.status("f0")
    assert [info.run_id for info in await engine.runs()] == ["f3", "f2"]
