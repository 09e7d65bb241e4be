"""A lone run's commits on the loop's thread (`Store.commit_now`), and when they are not.

When one run executes alone (no other run, no task waiting for the loop, no sync step
in a worker thread since the last commit), the engine commits its batches on the
loop's thread instead of handing them to the writer thread and back; before a lone
run's sync step, the step's worker thread commits them. These tests count which way
each batch went, check that both ways write the same durable history, that
a failed commit stops the engine either way with nothing acknowledged, and that the
hot log is still settled; and that a lone run's big batch goes to the hot log on either
thread, while runs executing together write big batches to the table.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import trio

import replay
import replay.aio
from replay import DatabaseError, RunState, Step
from replay._store import _writer
from replay._store._writer import Writer
from replay._store._writer_store import Store

pytestmark = pytest.mark.duckdb_only  # PostgreSQL commits on its writer thread only


async def add_one(value: int) -> int:
    return value + 1


def add_one_sync(value: int) -> int:
    return value + 1


@replay.workflow(name="commit_here.count")
def count(steps: int, use_sync: bool) -> Generator[Any, Any, int]:
    value = 0
    for i in range(steps):
        value = yield Step(f"s{i}", add_one_sync if use_sync else add_one, value)
    return value


@pytest.fixture
def ways(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """How many batches went which way: "here", "busy" (fell back), "thread" (the
    writer's) or "worker" (a step's worker thread, before the step)."""
    counted: Counter[str] = Counter()
    commit_now, submit = Store.commit_now, Store.submit

    def counting_now(self: Store, rows: list[tuple[Any, ...]], wait: bool = False) -> bool:
        done = commit_now(self, rows, wait)
        if wait:
            assert threading.current_thread().name == "replay-step"
        counted["worker" if wait else "here" if done else "busy"] += 1
        return done

    def counting_submit(self: Store, rows: list[tuple[Any, ...]], done: Any,
                        lone: bool = False) -> None:
        counted["thread"] += 1
        submit(self, rows, done, lone)

    monkeypatch.setattr(Store, "commit_now", counting_now)
    monkeypatch.setattr(Store, "submit", counting_submit)
    yield counted


async def events_of(path: str, run_id: str) -> list[tuple[str, str]]:
    """The run's events as the closed file holds them (read without resuming anything)."""
    with duckdb.connect(path, read_only=True) as con:
        rows = con.execute("SELECT kind || '/' || event, coalesce(key, '') FROM replay_events "
                           "WHERE run_id = $1 ORDER BY seq", [run_id]).fetchall()
    return [(event, key) for event, key in rows]


async def one_run(db: str, steps: int, use_sync: bool, run_id: str) -> int:
    """Run `count` once, alone in a fresh engine; return its result."""
    async with replay.open_engine(db, workflows=[count]) as engine:
        return int(await (await engine.start(count, steps, use_sync, run_id=run_id)).result())


async def together(db: str, workflow: Any, args: tuple[Any, ...], runs: int) -> list[Any]:
    """Start `runs` runs of `workflow` at once (ids r0, r1, ...); return their results."""
    async with replay.open_engine(db, workflows=[count, pipeline]) as engine:
        started: list[replay.Run] = []
        async with trio.open_nursery() as nursery:
            async def one(i: int) -> None:
                started.append(await engine.start(workflow, *args, run_id=f"r{i}"))

            for i in range(runs):
                nursery.start_soon(one, i)
        return [await run.result() for run in started]


async def test_a_lone_run_of_async_steps_commits_every_batch_on_the_loops_thread(
    db: str, ways: Counter[str]
) -> None:
    assert await one_run(db, 5, False, "alone") == 5
    # The start, then one batch per step (the last one with the run's end); an engine
    # task that happens to be runnable at a commit (a timer) sends that one to the writer.
    assert ways["here"] + ways["thread"] == 6
    assert ways["here"] >= 5
    assert await events_of(db, "alone") == [
        ("run/started", ""), *[("step/completed", f"s{i}") for i in range(5)],
        ("run/completed", "")]


async def test_runs_executing_together_commit_on_the_writer_thread(
    db: str, ways: Counter[str]
) -> None:
    assert await together(db, count, (3, False), 20) == [3] * 20
    assert ways["thread"] > 0
    # 20 runs of 4 commits each went in far fewer batches: group commit still works.
    assert ways["thread"] + ways["here"] < 40
    for i in range(20):
        assert len(await events_of(db, f"r{i}")) == 5


async def test_a_lone_runs_sync_step_commits_the_batch_before_it_on_its_worker_thread(
    db: str, ways: Counter[str]
) -> None:
    assert await one_run(db, 4, True, "sync") == 4
    # The outcomes of s0, s1 and s2, each before the next step, on the thread that then
    # called it; the end (after a sync step) on the writer thread; the start either way.
    assert ways["worker"] == 3
    assert ways["thread"] >= 1
    assert ways["here"] + ways["thread"] + ways["worker"] == 5
    assert await events_of(db, "sync") == [
        ("run/started", ""), *[("step/completed", f"s{i}") for i in range(4)],
        ("run/completed", "")]


async def test_runs_executing_together_never_hand_their_batches_to_a_step_thread(
    db: str, ways: Counter[str]
) -> None:
    assert await together(db, count, (3, True), 10) == [3] * 10
    assert ways["worker"] <= 2  # only when the last run is left alone
    for i in range(10):
        assert len(await events_of(db, f"r{i}")) == 5


@replay.workflow(name="commit_here.pipeline")
def pipeline(steps: int, use_sync: bool) -> Generator[Any, Any, int]:
    value = 0
    for i in range(steps):
        value = yield Step(f"p{i}", add_one, value, pure=True)
    return (yield Step("last", add_one_sync if use_sync else add_one, value))


@pytest.fixture
def tables(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, str, bool]]]:
    """Each batch's size, the table it went to ("hot" or "log"), and whether it was a
    lone run's (one run executing)."""
    went: list[tuple[int, str, bool]] = []
    commit_rows = Writer._commit_rows

    def recording(self: Writer, rows: list[tuple[Any, ...]], lone: bool) -> None:
        hot = self._recent.count
        commit_rows(self, rows, lone)
        went.append((len(rows), "hot" if self._recent.count > hot else "log", lone))

    monkeypatch.setattr(Writer, "_commit_rows", recording)
    yield went


@pytest.mark.parametrize("use_sync", [False, True], ids=["async-last", "sync-last"])
async def test_a_lone_runs_big_batch_goes_to_the_hot_log_on_either_thread(
    db: str, tables: list[tuple[int, str, bool]], use_sync: bool
) -> None:
    # 100 pure outcomes ride the last step's commit: a batch of 102 records, written as
    # narrow rows (with nothing else to do, the loop can spare their JSON), whichever
    # thread commits it.
    async with replay.open_engine(db, workflows=[pipeline]) as engine:
        assert await (await engine.start(pipeline, 100, use_sync, run_id="p")).result() == 101
        history = await engine.history("p")
    assert tables[-1] == (102, "hot", True)
    assert [record.key for record in history if record.kind == "step"] == [
        *[f"p{i}" for i in range(100)], "last"]


async def test_runs_executing_together_write_big_batches_to_the_table(
    db: str, tables: list[tuple[int, str, bool]]
) -> None:
    assert await together(db, pipeline, (40, False), 10) == [41] * 10
    big = [(table, lone) for size, table, lone in tables if size > _writer.HOT_BATCH_ROWS]
    # The last run to finish may be alone by then: its batch is a lone run's.
    assert {table for table, lone in big if not lone} == {"log"}
    assert {table for table, lone in big if lone} <= {"hot"}


async def test_a_busy_writer_takes_the_batch_instead(db: str, ways: Counter[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    held = threading.Lock()  # stands for the writer's connection lock while it settles
    commit_now = Store.commit_now  # the counting one

    fell_back = [0]

    def while_busy(self: Store, rows: list[tuple[Any, ...]]) -> bool:
        if held.acquire(blocking=False):  # the first batch finds the writer busy
            fell_back[0] += 1
            return False
        return commit_now(self, rows)

    monkeypatch.setattr(Store, "commit_now", while_busy)
    assert await one_run(db, 2, False, "busy") == 2
    assert fell_back == [1]  # the start's batch, which the writer thread then took
    assert ways["thread"] + ways["here"] == 3
    assert ways["here"] >= 1
    assert [event for event, _ in await events_of(db, "busy")] == [
        "run/started", "step/completed", "step/completed", "run/completed"]


@pytest.mark.parametrize("use_sync", [False, True], ids=["on-the-loop", "on-a-step-thread"])
async def test_a_failed_commit_stops_the_engine_and_acknowledges_nothing(
    db: str, ways: Counter[str], monkeypatch: pytest.MonkeyPatch, use_sync: bool
) -> None:
    commit_rows = Writer._commit_rows
    commits = [0]

    def failing_third(self: Writer, rows: list[tuple[Any, ...]], lone: bool) -> None:
        commits[0] += 1
        if commits[0] == 3:
            raise duckdb.IOException("No space left on device")
        commit_rows(self, rows, lone)

    monkeypatch.setattr(Writer, "_commit_rows", failing_third)
    with pytest.raises(DatabaseError, match=r"^committing 1 records to .* failed: .*No space "
                       r"left on device; nothing in that batch was acknowledged"):
        async with replay.open_engine(db, workflows=[count]) as engine:
            run = await engine.start(count, 4, use_sync, run_id="full")
            await run.result()
    assert ways["worker" if use_sync else "here"] >= 1
    monkeypatch.setattr(Writer, "_commit_rows", commit_rows)
    # The first step's outcome is durable, the second's (the failed batch) is not.
    assert await events_of(db, "full") == [("run/started", ""), ("step/completed", "s0")]
    async with replay.open_engine(db, workflows=[count]) as engine:
        assert await engine.get_run("full").result() == 4
        assert engine.status("full").state is RunState.COMPLETED


async def test_rows_committed_on_the_loops_thread_are_settled_by_the_writer(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settled_by: list[str] = []
    ran = threading.Event()
    settle = _writer.settle

    def noting(con: duckdb.DuckDBPyConnection) -> int:
        settled_by.append(threading.current_thread().name)
        ran.set()
        return settle(con)

    monkeypatch.setattr(_writer, "settle", noting)
    monkeypatch.setattr(_writer, "SETTLE_ROWS", 5)
    async with replay.open_engine(db, workflows=[count]) as engine:
        assert await (await engine.start(count, 8, False)).result() == 8
        # Past 5 hot rows the loop asks the writer thread to settle them.
        assert await trio.to_thread.run_sync(ran.wait, 10)
        assert "replay-writer" in settled_by


def test_an_engine_hosted_by_asyncio_never_commits_on_the_loops_thread(
    tmp_path: Path, ways: Counter[str]
) -> None:
    # Under replay.aio the loop's thread also runs the asyncio program, whose work trio
    # cannot see: a commit must never hold it.
    async def main() -> int:
        path = str(tmp_path / "hosted.duckdb")
        async with replay.aio.open_engine(path, workflows=[count]) as engine:
            run = await engine.start(count, 3, False, run_id="hosted")
            return int(await run.result())

    assert asyncio.run(main()) == 3
    assert ways == {"thread": 4}
