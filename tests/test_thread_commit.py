"""A lone run's batch committed by the worker thread of its next sync step.

Before a sync step of a run executing alone, the step's worker thread commits the
run's batch, tells the loop, then calls the step function: the function never starts
before what precedes it is durable, and nothing else commits until the loop has
heard. These tests check the order when the engine stops during that commit, that a
failed commit calls no step and acknowledges nothing, and that runs executing together
or engines sharing a store commit the usual way.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Generator, Iterator
from typing import Any

import duckdb
import pytest
import trio
import trio.testing

import replay
from replay import DatabaseError, Step
from replay._store._writer import Writer

pytestmark = pytest.mark.duckdb_only  # engines sharing PostgreSQL never hand batches over

CALLS: Counter[int] = Counter()


def noted(i: int) -> int:
    CALLS[i] += 1
    return i


@replay.workflow(name="thread_commit.four")
def four() -> Generator[Any, Any, int]:
    total = 0
    for i in range(4):
        total += yield Step(f"s{i}", noted, i)
    return total


class WorkerCommits:
    """Counts the commits made on a step's worker thread; can hold or fail the n-th."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.hold_at = self.fail_at = 0
        self.entered, self.release = threading.Event(), threading.Event()
        commit_rows = Writer._commit_rows

        def watched(writer: Writer, rows: list[tuple[Any, ...]], lone: bool) -> None:
            if threading.current_thread().name == "replay-step":
                self.count += 1
                if self.count == self.fail_at:
                    raise duckdb.IOException("No space left on device")
                if self.count == self.hold_at:
                    self.entered.set()
                    self.release.wait(10)
            commit_rows(writer, rows, lone)

        monkeypatch.setattr(Writer, "_commit_rows", watched)


@pytest.fixture
def worker_commits(monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerCommits]:
    CALLS.clear()
    yield WorkerCommits(monkeypatch)


async def step_events(engine: replay.Engine, run_id: str) -> list[tuple[str, str]]:
    return [(record.key or "", record.event) for record in await engine.history(run_id)
            if record.kind == "step"]


async def test_a_lone_run_commits_before_each_sync_step_on_its_thread(
    db: str, worker_commits: WorkerCommits
) -> None:
    async with replay.open_engine(db, workflows=[four]) as engine:
        assert await (await engine.start(four, run_id="lone")).result() == 6
        assert await step_events(engine, "lone") == [(f"s{i}", "completed") for i in range(4)]
    # s0's, s1's and s2's outcomes, each before the next step.
    assert worker_commits.count == 3
    assert CALLS == {0: 1, 1: 1, 2: 1, 3: 1}


async def test_a_stop_during_the_threads_commit_waits_for_it_and_calls_no_step(
    db: str, worker_commits: WorkerCommits
) -> None:
    worker_commits.hold_at = 2  # s1's outcome, before s2

    async def release_once_stuck() -> None:
        await trio.testing.wait_all_tasks_blocked()  # the stop waits for the commit
        worker_commits.release.set()

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as body:
            async with replay.open_engine(db, workflows=[four]) as engine:
                await engine.start(four, run_id="held")
                await trio.to_thread.run_sync(worker_commits.entered.wait, 10)
                nursery.start_soon(release_once_stuck)
                body.cancel()  # the engine stops at once: s2's attempt is abandoned
                await trio.sleep(0)
    assert CALLS == {0: 1, 1: 1}  # s2 was not called: its waiter gave up first
    async with replay.open_engine(db, workflows=[four]) as engine:
        assert await engine.get_run("held").result() == 6
        assert await step_events(engine, "held") == [
            ("s0", "completed"), ("s1", "completed"), ("s2", "abandoned"),
            ("s2", "started"), ("s2", "completed"), ("s3", "completed")]
    assert CALLS == {0: 1, 1: 1, 2: 1, 3: 1}


async def test_a_failed_commit_on_the_thread_stops_the_engine_and_calls_no_step(
    db: str, worker_commits: WorkerCommits
) -> None:
    worker_commits.fail_at = 2  # s1's outcome, before s2
    with pytest.raises(DatabaseError, match=r"^committing 1 records to .* failed: .*No space "
                       r"left on device; nothing in that batch was acknowledged"):
        async with replay.open_engine(db, workflows=[four]) as engine:
            await (await engine.start(four, run_id="full")).result()
    assert CALLS == {0: 1, 1: 1}
    worker_commits.fail_at = 0
    async with replay.open_engine(db, workflows=[four]) as engine:
        assert await engine.get_run("full").result() == 6
        # Nothing of s1 was durable: the reopened engine runs it from its start mark.
        assert await step_events(engine, "full") == [
            ("s0", "completed"), ("s1", "started"), ("s1", "completed"), ("s2", "completed"),
            ("s3", "completed")]
    assert CALLS == {0: 1, 1: 2, 2: 1, 3: 1}  # s1's outcome was never acknowledged


async def test_runs_executing_together_commit_the_usual_way(
    db: str, worker_commits: WorkerCommits
) -> None:
    async with replay.open_engine(db, workflows=[four]) as engine:
        runs = []
        async with trio.open_nursery() as nursery:
            async def one(i: int) -> None:
                runs.append(await engine.start(four, run_id=f"r{i}"))

            for i in range(10):
                nursery.start_soon(one, i)
        assert [await run.result() for run in runs] == [6] * 10
    # Only the last runs left executing alone hand their batches over.
    assert worker_commits.count < 10
