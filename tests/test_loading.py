"""Runs woken together load their histories together: one query per batch, not per run.

After a reopen no parked generator survives, so each run that wakes loads its records
from the file and replays them. 300 parked runs signalled at once must all complete
with their own records, and the file must be read with a handful of queries (the
store's `fold_memos` and `fold_memo` are wrapped to count their calls; they still do
the reading). A long run's rows are read by a scan of the table, a short one's through
the run_id index.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import replay
from replay import Suspend
from replay._core._history import RunHistory
from replay._engine._loading import MemoLoader
from replay._engine._lookups import RunLookups
from replay._store import Store
from replay._store._recent import _MEMO
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
    fold_memo, fold_memos = Store.fold_memo, Store.fold_memos

    def counted(store: Store, runs: dict[str, str]) -> Any:
        batches.append(len(runs))
        return fold_memos(store, runs)

    def counted_lone(store: Store, run_id: str, workflow: str) -> Any:
        batches.append(1)  # a batch of one run is read with the query of one run
        return fold_memo(store, run_id, workflow)

    monkeypatch.setattr(Store, "fold_memos", counted)
    monkeypatch.setattr(Store, "fold_memo", counted_lone)
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


async def test_two_loads_of_one_run_at_once_get_memos_of_their_own(tmp_path: Path) -> None:
    # A memo is changed by the machine it is given to: two requests for the same run
    # in one batch (a wake-up and a signal's check, say) must not share one.
    path = tmp_path / "twice.duckdb"
    async with replay.open_engine(path, workflows=[parked], durability="none") as engine:
        await (await engine.start(parked, 3, run_id="p3")).wait()
    store = Store(str(path), "none")
    try:
        loader = MemoLoader(store)
        loaded: list[RunHistory] = []

        async def load() -> None:
            loaded.append(await loader.load("p3", "loading.parked"))

        async with trio.open_nursery() as nursery:
            await nursery.start(loader.run)
            async with trio.open_nursery() as loads:
                loads.start_soon(load)
                loads.start_soon(load)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    first, second = loaded
    assert first is not second
    assert first.input() == second.input() is not None
    assert first.keys == second.keys and first.keys["go"] is not second.keys["go"]


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


async def test_starts_with_their_own_ids_share_their_look_into_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A start with a given id asks the file whether a finished run has that id; the
    # starts made together ask together.
    path = tmp_path / "ids.duckdb"
    async with replay.open_engine(path, workflows=[parked], durability="none") as engine:
        await (await engine.start(parked, 0, run_id="old")).wait()
        await engine.signal("old", "go", "done")
    looks: list[int] = []
    existing = Store.existing

    def counted(store: Store, run_ids: Any) -> set[str]:
        looks.append(len(run_ids))
        return existing(store, run_ids)

    monkeypatch.setattr(Store, "existing", counted)
    async with (replay.open_engine(path, workflows=[parked], durability="none") as engine,
                trio.open_nursery() as nursery):

        async def start(i: int) -> None:
            run = await engine.start(parked, i, run_id=f"order-{i}")
            assert (await run.wait()).waiting_for == "go"

        for i in range(RUNS):
            nursery.start_soon(start, i)
    assert sum(looks) >= RUNS and len(looks) <= 10, looks
    async with replay.open_engine(path, workflows=[parked], durability="none") as engine:
        again = await engine.start(parked, 0, run_id="old")  # the finished run, from the file
        assert await again.result() == {"i": 0, "go": "done"}


async def test_a_cancelled_look_leaves_the_others_theirs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The task that reads for a batch is cancelled while it reads: it still reads for
    # the others of the batch, then takes its cancellation.
    path = tmp_path / "looks.duckdb"
    async with replay.open_engine(path, workflows=[parked], durability="none") as engine:
        await (await engine.start(parked, 1, run_id="there")).wait()
    reads: list[list[str]] = []
    reading, release = threading.Event(), threading.Event()
    existing = Store.existing

    def held(store: Store, run_ids: Any) -> set[str]:
        reads.append(list(run_ids))
        reading.set()
        release.wait(10)
        return existing(store, run_ids)

    monkeypatch.setattr(Store, "existing", held)
    store = Store(str(path), "none")
    lookups = RunLookups(store)
    scopes = {run_id: trio.CancelScope() for run_id in ("there", "nowhere", "gone")}
    answers: dict[str, bool] = {}
    try:
        async with trio.open_nursery() as nursery:

            async def look(run_id: str) -> None:
                with scopes[run_id]:
                    answers[run_id] = await lookups.in_file(run_id)

            for run_id in scopes:
                nursery.start_soon(look, run_id)
            await trio.to_thread.run_sync(reading.wait, 10)
            assert len(reads) == 1 and sorted(reads[0]) == sorted(scopes)  # one batch
            reader = reads[0][0]
            scopes[reader].cancel()
            release.set()
    finally:
        store.close()
    assert scopes[reader].cancelled_caught
    expected = {"there": True, "nowhere": False, "gone": False}
    assert answers == {run_id: expected[run_id] for run_id in scopes if run_id != reader}
    assert len(reads) == 1


@replay.workflow(name="loading.long")
def long_run(steps: int) -> Generator[Any, Any, Any]:
    for i in range(steps):
        yield replay.Step(f"s{i}", str, i)
    return (yield Suspend("go"))


def _scan_type(store: Store, run_id: str) -> str:
    """How DuckDB reads one run's memo rows: "Index Scan" or "Sequential Scan"."""
    cursor = store._con.cursor()
    try:
        plan = cursor.execute(f"EXPLAIN ANALYZE {_MEMO}", [run_id]).fetchall()[0][1]
    finally:
        cursor.close()
    found = re.search(r"Type: (\w+ Scan)", plan)
    assert found is not None, plan
    return found.group(1)


async def test_a_long_run_is_read_by_a_scan_and_a_short_one_by_the_index(
        tmp_path: Path) -> None:
    # Fetching rows one by one through the run_id index costs far more per row than a
    # scan of a small table: past a few dozen rows (or 0.1 % of the table) replay scans.
    path = tmp_path / "scans.duckdb"
    async with replay.open_engine(path, workflows=[long_run], durability="none") as engine:
        for run_id, steps in (("long", 300), ("short", 5)):
            await (await engine.start(long_run, steps, run_id=run_id)).wait()
    store = Store(str(path), "none")
    try:
        assert _scan_type(store, "long") == "Sequential Scan"
        assert _scan_type(store, "short") == "Index Scan"
        # All its 302 records: the start, then a key for each of the 300 steps and the
        # suspension.
        memo = store.fold_memo("long", "loading.long")
        assert memo.started_with is not None and len(memo.keys) == 301
        assert sum(entry.done for entry in memo.keys.values()) == 300
    finally:
        store.close()
    async with replay.open_engine(path, workflows=[long_run], durability="none") as engine:
        run = await engine.signal("long", "go", "now")
        assert await run.result() == "now"
