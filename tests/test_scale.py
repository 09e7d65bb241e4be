"""Scale: 10,000 runs parked on Suspend in one engine, then all signalled: all complete.

Parked runs cost no task and no generator beyond the bounded cache (SPEC §4.5); starts
and signals from many tasks at once are group-committed (§4.2). The engine runs on an
in-memory database with `durability="none"` under the virtual clock, with the default
generator cache (1000), so 9,000 of the runs are evicted and replay when signalled.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
import trio

import replay
from replay import RunState, Suspend

N = 10_000
CACHE_SIZE = 1000  # open_engine's default, passed explicitly to check it is honoured

generators = Counter[str]()  # workflow generators alive now ("live")


@replay.workflow(name="scale.approval")
def approval(n: int):  # type: ignore[no-untyped-def]
    generators["live"] += 1
    try:
        decision = yield Suspend("go:v1", status=f"run {n} waits")
        return {"n": n, "decision": decision}
    finally:
        generators["live"] -= 1


@pytest.mark.slow
async def test_ten_thousand_parked_runs_all_complete_when_signalled() -> None:
    generators.clear()
    timings: dict[str, float] = {}
    began = time.perf_counter()
    async with replay.open_engine(":memory:", workflows=[approval], durability="none",
                                  cache_size=CACHE_SIZE) as engine:
        idle_tasks = trio.lowlevel.current_statistics().tasks_living

        async def start(n: int) -> None:
            run = await engine.start(approval, n, run_id=f"r{n}")
            info = await run.wait()
            assert (info.state, info.waiting_for) == (RunState.SUSPENDED, "go:v1")

        async with trio.open_nursery() as nursery:
            for n in range(N):
                nursery.start_soon(start, n)
        timings["start and park"] = time.perf_counter() - began

        # Parked runs hold no task: only the engine's own services are left.
        assert trio.lowlevel.current_statistics().tasks_living == idle_tasks
        # ... and no generator beyond the cache: the evicted ones were closed.
        assert generators["live"] == CACHE_SIZE
        suspended = await engine.runs(state=RunState.SUSPENDED, limit=N + 1)
        assert len(suspended) == N
        assert {info.status_text for info in suspended[:3]} <= {f"run {n} waits"
                                                                  for n in range(N)}

        async def signal(n: int) -> None:
            await engine.signal(f"r{n}", "go:v1", n % 7)

        mark = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for n in range(N):
                nursery.start_soon(signal, n)
        timings["signal"] = time.perf_counter() - mark

        mark = time.perf_counter()
        outputs: dict[int, object] = {}

        async def result(n: int) -> None:
            outputs[n] = await engine.get_run(f"r{n}").result()

        async with trio.open_nursery() as nursery:
            for n in range(N):
                nursery.start_soon(result, n)
        timings["complete"] = time.perf_counter() - mark

        assert outputs == {n: {"n": n, "decision": n % 7} for n in range(N)}
        assert trio.lowlevel.current_statistics().tasks_living == idle_tasks
        assert generators["live"] == 0
        counts = await engine.sql(
            "select event, count(*) from replay_events group by event order by event")
        assert dict(counts) == {"started": N, "suspended": N, "signalled": N, "completed": N}
        states = await engine.sql("select state, count(*) from replay_runs group by state")
        assert states == [("completed", N)]
    timings["total"] = time.perf_counter() - began
    print(", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))
