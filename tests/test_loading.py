"""Runs woken together load their histories together: one query per batch, not per run.

After a reopen no parked generator survives, so each run that wakes loads its records
from the file and replays them. 300 parked runs signalled at once must all complete
with their own records, and the file must be read with a handful of queries (the
store's `load_memos` is wrapped to count its calls; it still does the reading).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import trio

import replay
from replay import Suspend
from replay._store import Store

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
