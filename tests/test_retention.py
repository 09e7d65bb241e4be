"""Retention: `engine.purge`, `open_engine(retention=...)` and what a purge keeps.

Every test runs a real engine on a DuckDB file under `MockClock(autojump_threshold=0)`:
runs finish, the clock moves on by days (`trio.sleep`), and a purge deletes the runs
that finished before its cutoff. Nothing sleeps in real time. The conftest checks, as
each file closes, that `replay_runs` still agrees with the run-state fold of what is
left of every run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from datetime import timedelta
from typing import Any

import pytest
import trio
import trio.testing

import replay
from replay import Child, Step, Suspend
from replay._engine import _retention
from replay._engine._facade import internals
from replay._engine._retention import PurgeRequest, Retention

Flow = Generator[Any, Any, Any]
DAY = timedelta(days=1)
BROKEN = {"flaky": True}


def ident(value: Any) -> Any:
    return value


def flaky(value: Any) -> Any:
    if BROKEN["flaky"]:
        raise RuntimeError("flaky failed")
    return value


@replay.workflow(name="quick")
def quick(n: int) -> Flow:
    return (yield Step("only:v1", ident, n))


@replay.workflow(name="other")
def other(n: int) -> Flow:
    return (yield Step("only:v1", ident, n))


@replay.workflow(name="fails")
def fails() -> Flow:
    return (yield Step("flaky:v1", flaky, "ok"))


@replay.workflow(name="waits")
def waits() -> Flow:
    return (yield Suspend("go:v1"))


@replay.workflow(name="parent")
def parent(n: int) -> Flow:
    first = yield Child("first", quick, n)
    second = yield Child("second", quick, n + 1)
    return first + second


@replay.workflow(name="leaves")
def leaves() -> Flow:
    """Its child outlives it once it is terminated (the child is abandoned)."""
    return (yield Child("kid", waits, on_parent_close="abandon"))


WORKFLOWS = [quick, other, fails, waits, parent, leaves]


@pytest.fixture(autouse=True)
def _healthy() -> None:
    BROKEN["flaky"] = True


def open_engine(db: str, **options: Any) -> Any:
    return replay.open_engine(db, workflows=WORKFLOWS, durability="none", **options)


def run_ids(db_rows: list[tuple[Any, ...]]) -> list[str]:
    return sorted(row[0] for row in db_rows)


async def listed(engine: replay.Engine) -> list[str]:
    return sorted(row[0] for row in await engine.sql("SELECT run_id FROM replay_runs"))


async def orphans(engine: replay.Engine) -> list[tuple[Any, ...]]:
    """Records whose run has no start: a purge must never leave any."""
    return await engine.sql(
        "SELECT run_id, kind, event FROM replay_event_log WHERE run_id NOT IN "
        "(SELECT run_id FROM replay_event_log WHERE kind = 'run' AND event = 'started')")


async def finish(engine: replay.Engine, workflow: Any, *args: Any, run_id: str) -> None:
    run = await engine.start(workflow, *args, run_id=run_id)
    with contextlib.suppress(replay.WorkflowFailed):
        await run.result()


# -- by age, state and workflow --


async def test_purge_deletes_finished_runs_that_ended_before_the_cutoff(db: str) -> None:
    async with open_engine(db) as engine:
        for n in range(3):
            await finish(engine, quick, n, run_id=f"old{n}")
        await finish(engine, fails, run_id="failed")
        await engine.start(waits, run_id="waiting")
        await trio.sleep(10 * 86400)
        await finish(engine, quick, 9, run_id="new")
        before = engine.now()
        report = await engine.purge(older_than=timedelta(days=7))
        assert report == replay.PurgeReport(
            runs_purged=4, events_deleted=3 * 3 + 3, generations_purged=0, archive=None,
            cutoff=before - timedelta(days=7))
        assert await listed(engine) == ["new", "waiting"]
        for run_id in ("old0", "old2", "failed"):
            with pytest.raises(replay.RunNotFound):
                engine.status(run_id)
            with pytest.raises(replay.RunNotFound):
                await engine.history(run_id)
        assert engine.status("new").output == 9
        assert await orphans(engine) == []
        # Nothing more to delete: a second purge changes nothing.
        again = await engine.purge(older_than=timedelta(days=7))
        assert (again.runs_purged, again.events_deleted) == (0, 0)
    async with open_engine(db) as engine:  # the file opens as it was left
        assert await listed(engine) == ["new", "waiting"]


async def test_purge_by_state_and_workflow(db: str) -> None:
    async with open_engine(db) as engine:
        await finish(engine, quick, 1, run_id="q")
        await finish(engine, other, 1, run_id="o")
        await finish(engine, fails, run_id="f")
        await engine.start(waits, run_id="c")
        await engine.cancel("c", "no longer needed")
        await engine.get_run("c").wait()
        await trio.sleep(2 * 86400)
        report = await engine.purge(older_than=DAY, states=("failed",))
        assert report.runs_purged == 1 and await listed(engine) == ["c", "o", "q"]
        report = await engine.purge(older_than=DAY, workflow=other)
        assert report.runs_purged == 1 and await listed(engine) == ["c", "q"]
        report = await engine.purge(older_than=DAY, states=["cancelled", "completed"],
                                    workflow="quick")
        assert report.runs_purged == 1 and await listed(engine) == ["c"]
        report = await engine.purge(older_than=DAY, states=(replay.RunState.CANCELLED,))
        assert report.runs_purged == 1 and await listed(engine) == []


async def test_unfinished_runs_are_never_purged(db: str) -> None:
    async with open_engine(db) as engine:
        await engine.start(waits, run_id="suspended")
        await trio.sleep(400 * 86400)
        report = await engine.purge(older_than=0)
        assert report.runs_purged == 0
        await engine.signal("suspended", "go:v1", "at last")
        assert await engine.get_run("suspended").result() == "at last"
        # Finished now, and purged only once it has been finished long enough.
        assert (await engine.purge(older_than=DAY)).runs_purged == 0
        await trio.sleep(86400 + 1)
        assert (await engine.purge(older_than=DAY)).runs_purged == 1


async def test_older_than_may_be_seconds_and_zero_takes_every_finished_run(db: str) -> None:
    async with open_engine(db) as engine:
        await finish(engine, quick, 1, run_id="a")
        await trio.sleep(60)
        assert (await engine.purge(older_than=120)).runs_purged == 0
        assert (await engine.purge(older_than=30.5)).runs_purged == 1
        await finish(engine, quick, 2, run_id="b")
        await trio.sleep(0.001)
        assert (await engine.purge(older_than=0)).runs_purged == 1


# -- child runs --


async def test_a_parent_is_purged_with_its_children_and_a_child_never_alone(db: str) -> None:
    async with open_engine(db) as engine:
        assert await (await engine.start(parent, 1, run_id="p")).result() == 3
        await (await engine.start(leaves, run_id="l")).wait()  # parked on its child
        assert (await engine.get_run("l/kid").wait()).state == "suspended"
        await engine.terminate("l")
        assert engine.status("l/kid").state == "suspended"  # it outlives its parent
        await trio.sleep(10 * 86400)
        report = await engine.purge(older_than=DAY)
        # "l" ended long ago, but a run under it has not finished: the tree stays whole.
        assert (report.runs_purged, await listed(engine)) == (3, ["l", "l/kid"])
        await engine.signal("l/kid", "go:v1", "late")
        await engine.get_run("l/kid").result()
        # The child ended just now, but it goes with its parent, which ended long ago.
        assert (await engine.purge(older_than=DAY)).runs_purged == 2
        assert await listed(engine) == [] and await orphans(engine) == []


async def test_a_filter_never_takes_a_child_without_its_parent(db: str) -> None:
    async with open_engine(db) as engine:
        await finish(engine, parent, 1, run_id="p")
        rows = await engine.sql("SELECT run_id FROM replay_runs WHERE parent_run_id = 'p'")
        assert run_ids(rows) == ["p/first", "p/second"]
        await trio.sleep(10 * 86400)
        await finish(engine, quick, 1, run_id="q")
        await trio.sleep(1)
        report = await engine.purge(older_than=0, workflow="quick")
        # Only the root "q" matches: the children of "p" are runs of "quick" too, but
        # they never go without their parent.
        assert report.runs_purged == 1
        assert await listed(engine) == ["p", "p/first", "p/second"]


# -- races: a resume, a signal or a cancel while a purge deletes --


@pytest.fixture
def one_run_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_retention, "BATCH_RUNS", 1)


async def purge_calling(engine: replay.Engine, between: Any, older_than: timedelta = DAY
                        ) -> replay.PurgeReport:
    """Purge, calling `between()` after each batch (one run per batch)."""
    parts = internals(engine)
    batches = 0

    async def progress(report: replay.PurgeReport) -> None:
        nonlocal batches
        batches += 1
        await between(batches)

    return await Retention(parts.scheduler, parts.store).purge(
        PurgeRequest(older_than=older_than), progress=progress)


async def test_a_run_resumed_and_finished_again_after_the_plan_is_not_deleted(
        db: str, one_run_per_batch: None) -> None:
    async with open_engine(db) as engine:
        await finish(engine, quick, 1, run_id="q")
        await trio.sleep(1)
        await finish(engine, fails, run_id="f")  # the second batch
        await trio.sleep(2 * 86400)
        BROKEN["flaky"] = False

        async def between(batch: int) -> None:
            if batch == 1:  # "f" is in the plan, and finished again before its delete
                await engine.resume("f")
                assert await engine.get_run("f").result() == "ok"

        report = await purge_calling(engine, between)
        # Its delete checked it again: it ended after the cutoff this time.
        assert report.runs_purged == 1 and await listed(engine) == ["f"]
        assert engine.status("f").state == "completed"


async def test_a_run_resumed_before_its_batch_is_left_alone(
        db: str, one_run_per_batch: None) -> None:
    async with open_engine(db) as engine:
        await finish(engine, quick, 1, run_id="q")
        await trio.sleep(1)
        await finish(engine, fails, run_id="f")
        await trio.sleep(2 * 86400)
        BROKEN["flaky"] = False

        async def between(batch: int) -> None:
            if batch == 1:
                await engine.resume("f")  # executing while its batch comes

        report = await purge_calling(engine, between)
        assert report.runs_purged == 1
        assert await engine.get_run("f").result() == "ok"
        assert await listed(engine) == ["f"] and await orphans(engine) == []
        events = [(e.kind, e.event) for e in await engine.history("f")]
        assert events[-2:] == [("step", "completed"), ("run", "completed")]


async def test_calls_that_arrive_while_a_run_is_deleted_find_it_gone(
        db: str, one_run_per_batch: None) -> None:
    async with open_engine(db) as engine:
        await finish(engine, quick, 1, run_id="q")
        await trio.sleep(1)
        await finish(engine, fails, run_id="f")
        await trio.sleep(2 * 86400)
        BROKEN["flaky"] = False
        outcomes: dict[str, BaseException] = {}

        async def call(name: str, function: Any, *args: Any) -> None:
            try:
                await function(*args)
            except replay.ReplayError as error:
                outcomes[name] = error

        async with trio.open_nursery() as nursery:
            async def between(batch: int) -> None:
                if batch == 1:  # they start as the purge holds "f" for its delete
                    nursery.start_soon(call, "resume", engine.resume, "f")
                    nursery.start_soon(call, "signal", engine.signal, "f", "go:v1", 1)
                    nursery.start_soon(call, "cancel", engine.cancel, "f")

            report = await purge_calling(engine, between)
        assert report.runs_purged == 2
        assert {name: type(error) for name, error in outcomes.items()} == {
            "resume": replay.RunNotFound, "signal": replay.RunNotFound,
            "cancel": replay.RunNotFound}
        assert await listed(engine) == [] and await orphans(engine) == []


async def test_purges_and_resumes_at_once_leave_every_run_whole_or_gone(db: str) -> None:
    async with open_engine(db) as engine:
        for n in range(40):
            await finish(engine, fails, run_id=f"f{n:02}")
        await trio.sleep(2 * 86400)
        BROKEN["flaky"] = False
        gone: list[str] = []

        async def resume(run_id: str, pause: int) -> None:
            for _ in range(pause):
                await trio.lowlevel.checkpoint()
            try:
                await engine.resume(run_id)
            except replay.RunNotFound:
                gone.append(run_id)

        async with trio.open_nursery() as nursery:
            for n in range(40):
                nursery.start_soon(resume, f"f{n:02}", n % 20)
            nursery.start_soon(engine.purge)
            nursery.start_soon(lambda: engine.purge(older_than=DAY))
        left = await listed(engine)
        assert sorted(gone + left) == [f"f{n:02}" for n in range(40)]
        for run_id in left:
            assert await engine.get_run(run_id).result() == "ok"
        assert not set(gone) & set(left)
        assert await orphans(engine) == []
