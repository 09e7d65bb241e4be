"""Runs woken together load their histories together: one query per batch, not per run.

After a reopen no parked generator survives, so each run that wakes loads its records
from the file and replays them. 300 parked runs signalled at once must all complete
with their own records, and the file must be read with a handful of queries (the
store's `load_memos` is wrapped to count its calls; it still does the reading).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import replay
from replay import Suspend
from replay._store import Store
from replay.testing import wait_for_state

RUNS = 300


@replay.workflow(name="loading.parked")
def parked(i: int) -> Generator[Any, Any, Any]:
    go = yield Suspend("go")
    return {"i": i, "go": go}


async def test_runs_woken_together_share_their_history_queries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "parked.duckdb"
    async with replay.open_engine(path, workflows=[parked], durability="none") as engine:
        for i in range(RUNS):
            await engine.start(parked, i, run_id=f"p{i}")
        for i in range(RUNS):
            await engine.get_run(f"p{i}").wait()
    batches: list[int] = []
    load_memos = Store.load_memos

    def counted(store: Store, runs: dict[str, str]) -> Any:
        batches.append(len(runs))
        return load_memos(store, runs)

    monkeypatch.setattr(Store, "load_memos", counted)
    async with (replay.open_engine(path, workflows=[parked], durability="none") as engine,
                trio.open_nursery() as nursery):

        async def wake(i: int) -> None:
            run = await engine.signal(f"p{i}", "go", i * 2)
            assert await run.result() == {"i": i, "go": i * 2}

        for i in range(RUNS):
            nursery.start_soon(wake, i)
    assert sum(batches) >= RUNS
    assert len(batches) <= 10, batches


async def test_a_lone_wake_up_reads_its_own_history(tmp_path: Path) -> None:
    path = tmp_path / "one.duckdb"
    async with replay.open_engine(path, workflows=[parked], durability="none") as engine:
        await (await engine.start(parked, 7, run_id="p7")).wait()
    async with replay.open_engine(path, workflows=[parked], durability="none") as engine:
        run = await engine.signal("p7", "go", "now")
        assert await run.result() == {"i": 7, "go": "now"}


@replay.workflow(name="loading.napper")
def napper(seconds: float) -> Generator[Any, Any, Any]:
    yield replay.Sleep("nap", seconds)
    return "rested"


@replay.workflow(name="loading.parent")
def parent() -> Generator[Any, Any, Any]:
    return (yield replay.Child("kid", "loading.parked", 5))


async def test_quiet_parked_runs_open_from_their_state_and_wake_as_ever(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    # Parked runs with nothing to wake for are read at open as one state row each
    # (their histories are read when they wake); the others with their records.
    path = tmp_path / "quiet.duckdb"
    flows = [parked, napper, parent]
    clock.autojump_threshold = math.inf  # no deadline passes while the runs are made
    async with replay.open_engine(path, workflows=flows, durability="none") as engine:
        for run_id, flow, args, timeout in (("q-suspended", parked, (1,), None),
                                            ("q-deadline", parked, (2,), 30.0),
                                            ("q-napper", napper, (60.0,), None),
                                            ("noisy-signalled", parked, (3,), None),
                                            ("noisy-parent", parent, (), None)):
            await engine.start(flow, *args, run_id=run_id, timeout=timeout)
        for run_id, state in (("q-suspended", "suspended"), ("q-deadline", "suspended"),
                              ("q-napper", "sleeping"), ("noisy-signalled", "suspended"),
                              ("noisy-parent", "suspended"), ("noisy-parent/kid", "suspended")):
            await wait_for_state(engine, run_id, state)
        await engine.signal("noisy-signalled", "early", "kept in the mailbox")
    clock.autojump_threshold = 0
    store = Store(str(path), "none")
    try:
        opened = store.load_open_runs()
    finally:
        store.close()
    quiet = {row[0] for row in opened.parked}
    assert quiet == {"q-suspended", "q-deadline", "q-napper", "noisy-parent/kid"}
    assert {records[0].run_id for records in opened.records} == {
        "noisy-signalled", "noisy-parent"}

    async with replay.open_engine(path, workflows=flows, durability="none") as engine:
        assert (await engine.get_run("q-suspended").wait()).waiting_for == "go"
        run = await engine.signal("q-suspended", "go", "now")
        assert await run.result() == {"i": 1, "go": "now"}
        child = await engine.signal("noisy-parent/kid", "go", "kid")
        assert await child.result() == {"i": 5, "go": "kid"}
        assert await engine.get_run("noisy-parent").result() == {"i": 5, "go": "kid"}
        assert await engine.get_run("q-napper").result() == "rested"
        deadline = await engine.get_run("q-deadline").wait()
        assert deadline.state == "cancelled", deadline  # its own deadline passed
