"""Code-version stamps (issue 13, part 5): `open_engine(code_version=...)`.

Each run's ``run/started`` carries the engine's code version (``REPLAY_CODE_VERSION``
by default); an execution under another version than the run's last one records one
``run/code_changed`` (the old version in `name`, the new one in `code_version`), and
never blocks the run. ``replay_runs`` shows `code_version` (at start) and
`last_code_version`. Virtual time, real DuckDB files.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
import trio
import trio.testing
from stores import reading

import replay
from replay import Child, Sleep, Step, Suspend
from replay.testing import wait_for_state

pytestmark = pytest.mark.both_stores


def echo(value: Any) -> Any:
    return value


@replay.workflow(name="cv_napper")
def napper() -> Generator[Any, Any, str]:
    yield Step("one:v1", echo, 1)
    yield Sleep("nap:v1", 3600)
    yield Sleep("nap:v2", 3600)
    return "rested"


@replay.workflow(name="cv_waiter")
def waiter() -> Generator[Any, Any, Any]:
    first = yield Suspend("first:v1")
    second = yield Suspend("second:v1")
    return [first, second]


@replay.workflow(name="cv_quick")
def quick() -> Generator[Any, Any, int]:
    return (yield Step("one:v1", echo, 1))


@replay.workflow(name="cv_parent")
def parent() -> Generator[Any, Any, Any]:
    return (yield Child("kid:v1", waiter))


WORKFLOWS = [napper, waiter, quick, parent]


def versions(db: str) -> dict[str, tuple[Any, ...]]:
    with reading(db) as con:
        rows = con.execute("SELECT run_id, state, code_version, last_code_version "
                           "FROM replay_runs").fetchall()
    return {run_id: tuple(rest) for run_id, *rest in rows}


def changes(db: str) -> list[tuple[Any, ...]]:
    with reading(db) as con:
        return con.execute(
            "SELECT run_id, name, code_version FROM replay_event_log "
            "WHERE kind = 'run' AND event = 'code_changed' ORDER BY seq").fetchall()


def started_versions(db: str) -> dict[str, Any]:
    with reading(db) as con:
        return dict(con.execute(
            "SELECT run_id, code_version FROM replay_event_log "
            "WHERE kind = 'run' AND event = 'started'").fetchall())


async def start_all(engine: replay.Engine) -> None:
    await engine.start(napper, run_id="nap")
    await engine.start(waiter, run_id="wait")
    await (await engine.start(quick, run_id="quick")).result()
    await engine.start(parent, run_id="parent")
    await wait_for_state(engine, "nap", "sleeping")
    await wait_for_state(engine, "wait", "suspended")
    while True:  # the child starts once the parent reaches it
        try:
            await wait_for_state(engine, "parent/kid:v1", "suspended")
            break
        except replay.RunNotFound:
            await trio.sleep(1)


async def test_each_start_is_stamped_with_the_engines_version(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, code_version="2026.12.06") as engine:
        await start_all(engine)
    assert started_versions(db) == {run_id: "2026.12.06" for run_id in
                                    ("nap", "wait", "quick", "parent", "parent/kid:v1")}
    assert versions(db)["quick"] == ("completed", "2026.12.06", "2026.12.06")
    assert versions(db)["parent/kid:v1"] == ("suspended", "2026.12.06", "2026.12.06")
    assert changes(db) == []


async def test_a_reopen_under_another_version_records_one_change_per_run_that_runs_again(
        db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, code_version="v1") as engine:
        await start_all(engine)
    async with replay.open_engine(db, workflows=WORKFLOWS, code_version="v2") as engine:
        await engine.signal("wait", "first:v1", 1)  # runs again: one change
        await wait_for_state(engine, "wait", "suspended")
        await engine.signal("wait", "second:v1", 2)  # runs again under v2: no more
        assert await engine.get_run("wait").result() == [1, 2]
        info = await engine.get_run("nap").wait()  # wakes twice under v2: one change
        assert info.state == "completed"
    assert changes(db) == [("wait", "v1", "v2"), ("nap", "v1", "v2")]
    shown = versions(db)
    assert shown["wait"] == ("completed", "v1", "v2")
    assert shown["nap"] == ("completed", "v1", "v2")
    assert shown["quick"] == ("completed", "v1", "v1")  # finished: never ran again
    assert shown["parent/kid:v1"] == ("suspended", "v1", "v1")  # parked: not run yet
    # The same version again: nothing more.
    async with replay.open_engine(db, workflows=WORKFLOWS, code_version="v1") as engine:
        pass
    async with replay.open_engine(db, workflows=WORKFLOWS, code_version="v2") as engine:
        await engine.signal("parent/kid:v1", "first:v1", "a")
        await wait_for_state(engine, "parent/kid:v1", "suspended")
        await engine.signal("parent/kid:v1", "second:v1", "b")
        assert await engine.get_run("parent").result() == ["a", "b"]
    assert changes(db)[2:] == [("parent/kid:v1", "v1", "v2"), ("parent", "v1", "v2")]
    assert versions(db)["parent"] == ("completed", "v1", "v2")


async def test_the_same_version_or_none_records_no_change(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, code_version="v1") as engine:
        await start_all(engine)
    async with replay.open_engine(db, workflows=WORKFLOWS, code_version="v1",
                                  always_replay=True) as engine:
        await engine.signal("wait", "first:v1", 1)
        await wait_for_state(engine, "wait", "suspended")
    # An engine without a version continues runs started with one, silently.
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        await engine.signal("wait", "second:v1", 2)
        assert await engine.get_run("wait").result() == [1, 2]
        assert (await engine.get_run("nap").wait()).state == "completed"
        await engine.start(quick, run_id="unversioned")
    assert changes(db) == []
    shown = versions(db)
    assert shown["wait"] == ("completed", "v1", "v1")
    assert shown["nap"] == ("completed", "v1", "v1")
    assert started_versions(db)["unversioned"] is None
    assert shown["unversioned"][1:] == (None, None)


async def test_a_run_started_without_a_version_records_the_change_to_one(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        await engine.start(waiter, run_id="wait")
        await wait_for_state(engine, "wait", "suspended")
    async with replay.open_engine(db, workflows=WORKFLOWS, code_version="v1") as engine:
        await engine.signal("wait", "first:v1", 1)
        await wait_for_state(engine, "wait", "suspended")
    assert changes(db) == [("wait", None, "v1")]
    assert versions(db)["wait"] == ("suspended", None, "v1")


def test_the_environment_variable_is_the_default(db: str, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    monkeypatch.setenv("REPLAY_CODE_VERSION", "from-env")

    async def main() -> None:
        async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
            await (await engine.start(quick, run_id="env")).result()
        async with replay.open_engine(db, workflows=WORKFLOWS, code_version="explicit"
                                      ) as engine:
            await (await engine.start(quick, run_id="arg")).result()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert started_versions(db) == {"env": "from-env", "arg": "explicit"}
    monkeypatch.setenv("REPLAY_CODE_VERSION", "")  # empty: no version

    async def again() -> None:
        async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
            await (await engine.start(quick, run_id="empty-env")).result()

    trio.run(again, clock=trio.testing.MockClock(autojump_threshold=0))
    assert started_versions(db)["empty-env"] is None


@pytest.mark.parametrize(("value", "error"), [
    ("", ValueError), ("   ", ValueError), ("x" * 201, ValueError), (5, TypeError),
    (b"v1", TypeError)])
def test_bad_code_versions_are_refused(value: Any, error: type[Exception]) -> None:
    async def main() -> None:
        with pytest.raises(error, match="code_version"):
            async with replay.open_engine(":memory:", workflows=WORKFLOWS,
                                          code_version=value):
                pass

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_bad_environment_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLAY_CODE_VERSION", "y" * 300)

    async def main() -> None:
        with pytest.raises(ValueError, match="code_version"):
            async with replay.open_engine(":memory:", workflows=WORKFLOWS):
                pass

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
