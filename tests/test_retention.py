"""Retention: `engine.purge`, `open_engine(retention=...)` and what a purge keeps.

Every test runs a real engine on a DuckDB file under `MockClock(autojump_threshold=0)`:
runs finish, the clock moves on by days (`trio.sleep`), and a purge deletes the runs
that finished before its cutoff. Nothing sleeps in real time. The conftest checks, as
each file closes, that `replay_runs` still agrees with the run-state fold of what is
left of every run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import trio
import trio.testing

import replay
from replay import Child, ContinueAsNew, Note, Sleep, Step, Suspend
from replay._codec import encode, to_json
from replay._core._records import Encoded, Run
from replay._engine import _retention
from replay._engine._facade import internals
from replay._engine._retention import PurgeRequest, Retention
from replay._store import Store, record_row
from replay._store._schema import TABLE_COLUMNS

pytestmark = pytest.mark.both_stores

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
        "SELECT run_id, kind, event FROM replay_events WHERE run_id NOT IN "
        "(SELECT run_id FROM replay_events WHERE kind = 'run' AND event = 'started')")


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


# -- continue-as-new: earlier generations --

CHARGES: list[int] = []


def charge(month: int) -> str:
    CHARGES.append(month)
    return f"charged {month}"


@replay.workflow(name="renew")
def renew(month: int) -> Flow:
    yield Note(f"month:{month}", {"month": month})
    yield Step(f"charge:{month}", charge, month)
    if month == 0:
        yield Suspend("approve")  # its early signal is taken in generation 0
    if month < 3:
        yield Sleep(f"wait:{month}", 30 * DAY)
        return ContinueAsNew(month + 1)
    yield Sleep("grace", 30 * DAY)
    return (yield Suspend("stop"))  # answered by a signal sent in generation 0


async def test_earlier_generations_go_but_what_the_run_needs_stays(db: str) -> None:
    CHARGES.clear()
    async with replay.open_engine(db, workflows=[renew], durability="none",
                                  always_replay=True) as engine:  # reloads from the file
        await engine.start(renew, 0, run_id="sub")
        await engine.signal("sub", "approve", "yes")
        await engine.signal("sub", "stop", "please")  # waits in the mailbox for month 3
        await trio.sleep(100 * 86400)  # month 3 began on day 90 and sleeps until day 120
        assert engine.status("sub").generation == 3
        before = await engine.sql("SELECT count(*) FROM replay_events WHERE run_id = 'sub'")
        report = await engine.purge(older_than=5 * DAY)
        assert (report.runs_purged, report.generations_purged) == (0, 3)
        kept = await engine.sql("SELECT generation, kind, event, key FROM replay_events "
                                "WHERE run_id = 'sub' ORDER BY seq")
        assert kept == [
            (0, "run", "started", None),
            (0, "signal", "signalled", "stop"),  # still in the mailbox
            (3, "run", "continued", None),
            (3, "note", "recorded", "month:3"),
            (3, "step", "completed", "charge:3"),
            (3, "sleep", "scheduled", "grace")]
        assert report.events_deleted == before[0][0] - len(kept)
        info = engine.status("sub")
        assert (info.state, info.generation, info.status_value) == ("sleeping", 3, {"month": 3})
        # The run wakes on day 120, replays month 3 from what is left, and takes the
        # signal sent in month 0; nothing runs twice.
        assert await engine.get_run("sub").result() == "please"
        assert CHARGES == [0, 1, 2, 3]
        # Generation 3 is not replaced: a later purge deletes the whole run only.
        assert (await engine.purge(older_than=0)).generations_purged == 0


async def test_signals_sent_during_a_purge_of_generations_arrive(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_retention, "BATCH_RECORDS", 1)  # a batch per run
    async with replay.open_engine(db, workflows=[renew], durability="none") as engine:
        for n in range(3):
            await engine.start(renew, 0, run_id=f"sub{n}")
            await engine.signal(f"sub{n}", "approve", "yes")
        await trio.sleep(100 * 86400)

        async def between(batch: int) -> None:
            await engine.signal(f"sub{batch - 1}", "stop", f"stop {batch - 1}")

        report = await purge_calling(engine, between, older_than=5 * DAY)
        assert report.generations_purged == 9
        for n in range(3):
            assert await engine.get_run(f"sub{n}").result() == f"stop {n}"


# -- at scale: 100,000 finished runs go while 100 others run --

PURGING = {"on": True, "steps": 0}


def tick(i: int) -> bool:
    """A step: whether to go on (as long as the purge runs, and ten steps at least)."""
    PURGING["steps"] += 1
    return PURGING["on"] or i < 10


@replay.workflow(name="busy")
def busy(n: int) -> Flow:
    i = 0
    while (yield Step(f"tick:{i}", tick, i)):
        i += 1
    return n


def write_finished_runs(db: str, count: int, ended: Any) -> None:
    """Write `count` completed runs of `quick` ending at `ended`, in one statement.

    The records of one run are made and turned into rows as the engine makes them;
    the statement copies them for every run, with its own run id and `seq`.
    """
    Store(db, "none").close()  # the schema, as an engine creates it
    run = Run("template", "quick")
    output = Encoded(encode(7, key="output"), to_json(7))
    records = [run.started(Encoded(encode((7,), key="input"), to_json([7]))),
               run.step_completed("only:v1", 1, "ident", output, 0.1, None),
               run.completed(output)]
    for n, record in enumerate(records):
        record.seq, record.recorded_at = n + 1, ended
    columns = [name.strip() for name in TABLE_COLUMNS.split(",")]
    copied = ", ".join({"seq": f"t.seq + {len(records)} * i",
                        "run_id": "'old' || lpad(i::VARCHAR, 6, '0')"}.get(name, f"t.{name}")
                       for name in columns)
    with duckdb.connect(db) as con:
        con.execute("CREATE TEMP TABLE template AS FROM replay_event_log LIMIT 0")
        with con.appender("template") as appender:
            appender.append_rows([record_row(record) for record in records])
        con.execute(f"INSERT INTO replay_event_log ({TABLE_COLUMNS}) SELECT {copied} "
                    f"FROM template t, range({count}) r(i) ORDER BY i, t.seq")


@pytest.mark.duckdb_only
@pytest.mark.slow
async def test_100000_finished_runs_are_purged_while_100_runs_execute(db: str) -> None:
    write_finished_runs(db, 100_000, datetime.now(UTC) - 60 * DAY)
    PURGING.update(on=True, steps=0)
    async with replay.open_engine(db, workflows=[quick, busy], durability="none") as engine:
        runs = [await engine.start(busy, n, run_id=f"busy{n:03}") for n in range(100)]
        steps_seen: list[int] = []

        async def between(batch: int) -> None:
            steps_seen.append(PURGING["steps"])

        parts = internals(engine)
        report = await Retention(parts.scheduler, parts.store).purge(
            PurgeRequest(older_than=30 * DAY), progress=between)
        PURGING["on"] = False
        assert (report.runs_purged, report.events_deleted) == (100_000, 300_000)
        assert [await run.result() for run in runs] == list(range(100))
        assert len(steps_seen) == 100  # a batch of 1,000 runs at a time
        # The runs kept executing while the batches were deleted.
        assert steps_seen[0] < steps_seen[len(steps_seen) // 2] < steps_seen[-1]
        assert await listed(engine) == [f"busy{n:03}" for n in range(100)]
        assert await orphans(engine) == []


# -- the archive --


async def test_the_archive_holds_every_deleted_event(db: str, tmp_path: Path) -> None:
    async with replay.open_engine(db, workflows=[*WORKFLOWS, renew],
                                  durability="none") as engine:
        await finish(engine, parent, 1, run_id="p")
        await finish(engine, fails, run_id="f")
        await engine.start(renew, 0, run_id="sub")
        await engine.signal("sub", "approve", "yes")
        await trio.sleep(100 * 86400)
        await finish(engine, quick, 5, run_id="recent")
        columns = "seq, run_id, workflow, key, kind, event, attempt, value, value_json, " \
                  "error_type, error, recorded_at, duration_ms, wake_at, generation"
        everything = await engine.sql(f"SELECT {columns} FROM replay_events ORDER BY seq")
        archive = tmp_path / "archive" / "2026-12.parquet"
        archive.parent.mkdir()
        report = await engine.purge(older_than=5 * DAY, archive_to=archive)
        assert report.archive == str(archive)
        assert (report.runs_purged, report.generations_purged) == (4, 3)
        left = {row[0] for row in await engine.sql("SELECT seq FROM replay_events")}
    with duckdb.connect() as con:
        archived = con.execute(f"SELECT {columns} FROM read_parquet(?) ORDER BY seq",
                               [str(archive)]).fetchall()
        types = dict(con.execute("SELECT column_name, column_type FROM "
                                 "(DESCRIBE SELECT * FROM read_parquet(?))",
                                 [str(archive)]).fetchall())
    assert archived == [row for row in everything if row[0] not in left]
    assert len(archived) == report.events_deleted
    assert {row[1] for row in archived} == {"p", "p/first", "p/second", "f", "sub"}
    assert types["generation"] == "INTEGER" and types["value"] == "BLOB"
    assert oct(archive.stat().st_mode & 0o777) == "0o600"  # it holds every value


async def test_an_archive_is_never_overwritten_and_nothing_is_deleted_then(
        db: str, tmp_path: Path) -> None:
    async with open_engine(db) as engine:
        await finish(engine, quick, 1, run_id="q")
        await trio.sleep(2 * 86400)
        taken = tmp_path / "taken.parquet"
        taken.write_text("mine")
        with pytest.raises(ValueError, match=r"^archive_to '.*taken.parquet' already exists; "
                           r"purge never overwrites a file: pass a new path \(or move the "
                           r"old archive away\)$"):
            await engine.purge(older_than=DAY, archive_to=str(taken))
        assert taken.read_text() == "mine"
        with pytest.raises(ValueError, match=r"^archive_to '.*' cannot be written: .*No such "
                           r"file or directory.*; pass a path in an existing directory you "
                           r"can write to$"):
            await engine.purge(older_than=DAY, archive_to=tmp_path / "none" / "a.parquet")
        assert await listed(engine) == ["q"]
        # Nothing to delete: no file is written.
        report = await engine.purge(older_than=10 * DAY, archive_to=tmp_path / "empty.parquet")
        assert report.archive is None and not (tmp_path / "empty.parquet").exists()


# -- bad input changes nothing --


@pytest.mark.parametrize(("arguments", "error", "message"), [
    ({"older_than": -1}, ValueError,
     r"^engine.purge\(older_than=...\): older_than must be >= 0, got -1 \(int\)$"),
    ({"older_than": timedelta(days=-1)}, ValueError, r"older_than must be >= 0"),
    ({"older_than": "30d"}, TypeError,
     r"^engine.purge\(older_than=...\): older_than must be a timedelta or a number of "
     r"seconds, got '30d' \(str\)$"),
    ({"older_than": float("nan")}, ValueError, r"must be a finite number of seconds"),
    ({"states": ("completed", "running")}, ValueError,
     r"^engine.purge\(states=...\): 'running' is not a finished state, and purge never "
     r"deletes a run that has not finished; pass any of completed, failed, cancelled$"),
    ({"states": ("done",)}, ValueError,
     r"^engine.purge\(states=...\): unknown run state 'done'; purge deletes finished runs: "
     r"pass any of completed, failed, cancelled$"),
    ({"states": ()}, ValueError, r"states is empty; pass at least one of"),
    ({"states": "completed"}, TypeError,
     r"^engine.purge\(states=...\): states must be a tuple of state names such as "
     r"\('completed', 'failed'\), got 'completed' \(str\); pass \('completed',\)$"),
    ({"states": (1,)}, TypeError, r"each state must be a state name \(str\), got 1 \(int\)"),
    ({"states": None}, TypeError, r"states must be a tuple of state names"),
    ({"workflow": 3}, TypeError, r"workflow must be a workflow function, its name or None"),
    ({"workflow": ""}, ValueError, r"workflow must be a non-empty name or None"),
    ({"archive_to": 5}, TypeError,
     r"^engine.purge\(archive_to=...\): archive_to must be a path \(str or pathlib.Path\) "
     r"or None, got 5 \(int\)$"),
])
async def test_bad_arguments_are_refused_and_change_nothing(
        db: str, arguments: dict[str, Any], error: type[Exception], message: str) -> None:
    async with open_engine(db) as engine:
        await finish(engine, quick, 1, run_id="q")
        await trio.sleep(2 * 86400)
        with pytest.raises(error, match=message):
            await engine.purge(**{"older_than": 0, **arguments})
        assert await listed(engine) == ["q"]


async def test_purge_is_keyword_only_and_refused_on_a_closed_engine(db: str) -> None:
    async with open_engine(db) as engine:
        with pytest.raises(TypeError):
            await engine.purge(DAY)  # type: ignore[misc]
    with pytest.raises(replay.EngineClosed):
        await engine.purge()


@pytest.mark.parametrize(("retention", "error"), [
    (-5, ValueError), ("30d", TypeError), (timedelta(days=-1), ValueError)])
async def test_a_bad_retention_option_is_refused(db: str, retention: Any,
                                                 error: type[Exception]) -> None:
    with pytest.raises(error, match=r"^open_engine\(retention=...\): retention must"):
        async with open_engine(db, retention=retention):
            pass


# -- open_engine(retention=...) --


async def test_retention_purges_every_hour_of_the_engine_clock(
        db: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="replay")
    async with open_engine(db, retention=timedelta(days=2)) as engine:
        await finish(engine, quick, 1, run_id="day0")
        await engine.start(waits, run_id="waiting")
        await trio.sleep(DAY.total_seconds())
        await finish(engine, quick, 2, run_id="day1")
        await trio.sleep(DAY.total_seconds() - 30 * 60)
        assert await listed(engine) == ["day0", "day1", "waiting"]  # not 2 days yet
        await trio.sleep(3600)  # the hourly purge at 2 days and a minute
        assert await listed(engine) == ["day1", "waiting"]
        await trio.sleep(DAY.total_seconds())
        assert await listed(engine) == ["waiting"]
    purged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("purged")]
    assert len(purged) == 2
    assert purged[0].startswith("purged 1 finished run (3 events) from before ")


async def test_a_failed_periodic_purge_is_logged_and_tried_again(
        db: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Retention.purge
    failures = [replay.DatabaseError("the disk is full")]

    async def failing(self: Retention, request: PurgeRequest, **options: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real(self, request, **options)

    monkeypatch.setattr(Retention, "purge", failing)
    async with open_engine(db, retention=DAY) as engine:
        await finish(engine, quick, 1, run_id="q")
        await trio.sleep(DAY.total_seconds())  # the purge at +1 minute failed...
        assert await listed(engine) == ["q"]
        await trio.sleep(3600)  # ...the next one deletes
        assert await listed(engine) == []
        assert engine.status  # the engine goes on
        await finish(engine, quick, 2, run_id="after")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["the periodic purge (retention=1 day, 0:00:00) failed: the disk is "
                        "full; it runs again in 3600 s"]


@replay.workflow(name="twice")
def twice(i: int) -> Flow:
    yield Step(f"step:{i}", ident, i)
    return ContinueAsNew(i + 1) if i < 2 else i


async def test_a_new_run_with_the_id_of_a_purged_one_starts_at_generation_0(db: str) -> None:
    async with replay.open_engine(db, workflows=[twice], durability="none") as engine:
        assert await (await engine.start(twice, 0, run_id="t")).result() == 2
        await trio.sleep(1)
        assert (await engine.purge(older_than=0)).runs_purged == 1
        assert await (await engine.start(twice, 2, run_id="t")).result() == 2
        assert await engine.sql("SELECT DISTINCT generation FROM replay_events") == [(0,)]
