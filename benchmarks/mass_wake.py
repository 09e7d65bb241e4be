"""Waking many runs after a reopen: open time, and signalled runs completed per second.

A file holds N runs of a 3-step async workflow, each parked on a `Suspend` (written by
a first engine, then closed). A second engine opens the file (the figure "open": the
time `open_engine` takes to load N unfinished runs), then every run is signalled at
once and the time until the last one completes gives runs/s (target: at least 5,000
runs/s; the open: at most 1 s for 100,000 runs). No parked generator survives the
reopen, so each woken run loads its history from the file and replays it: the
histories of runs woken together are loaded with one query per batch.

    python benchmarks/mass_wake.py [--smoke] [--durability fsync|none] [--repeat N]
                                   [--runs N]
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import trio
from _floor import scratch_dir
from _report import Figure, Target, median, parse_args, repeats, report

import replay
from replay import Step, Suspend

RUNS = 100_000
SMOKE_RUNS = 200


async def touch(i: int) -> int:
    return i + 1


@replay.workflow(name="bench.parked")
def parked(i: int) -> Any:
    go = yield Suspend("go")
    a = yield Step("one", touch, i)
    b = yield Step("two", touch, a)
    return (yield Step("three", touch, b + go))


async def write_parked(path: Path, runs: int) -> list[str]:
    """Start `runs` runs that park on their `Suspend`; return their ids, in order.

    No durability (setup only); started a thousand at a time, so that their commits
    are shared, with ids the engine makes (a given id costs a look into the file for
    a finished run of that id).
    """
    ids = [""] * runs
    async with replay.open_engine(path, workflows=[parked], durability="none") as engine:

        async def park(i: int) -> None:
            run = await engine.start(parked, i)
            ids[i] = run.run_id
            await run.wait()

        for first in range(0, runs, 1000):
            async with trio.open_nursery() as nursery:
                for i in range(first, min(first + 1000, runs)):
                    nursery.start_soon(park, i)
    return ids


async def wake_all(path: Path, durability: str, ids: list[str]) -> tuple[float, float]:
    """Reopen the file, signal every run at once; return (open seconds, runs/s)."""
    began = time.perf_counter()
    async with replay.open_engine(path, workflows=[parked], durability=durability) as engine:
        opened = time.perf_counter() - began
        began = time.perf_counter()
        async with trio.open_nursery() as nursery:

            async def one(i: int) -> None:
                run = await engine.signal(ids[i], "go", 1)
                assert await run.result() == i + 4

            for i in range(len(ids)):
                nursery.start_soon(one, i)
        return opened, len(ids) / (time.perf_counter() - began)


def figures(args: Any) -> list[Figure]:
    runs = SMOKE_RUNS if args.smoke else args.runs
    opens: list[float] = []
    rates: list[float] = []
    with scratch_dir() as directory:
        written = directory / "parked.duckdb"
        ids = trio.run(write_parked, written, runs)
        for rep in range(repeats(args, 3)):
            path = directory / f"wake-{rep}.duckdb"
            shutil.copyfile(written, path)  # each repeat opens the same file afresh
            opened, rate = trio.run(wake_all, path, args.durability, ids)
            opens.append(opened)
            rates.append(rate)
    scale = 100_000 / runs
    scaled = "" if runs == 100_000 else " (scaled to 100,000)"
    return [
        Figure("mass_wake", f"{runs:,} parked runs signalled at once after a reopen, completed",
               median(rates), "runs/s", Target("value", ">=", 5000.0, ">= 5,000 runs/s"),
               note=f"3 async steps each; {len(rates)} repeats", detail={"rates": rates}),
        Figure("open", f"open with {runs:,} unfinished runs{scaled}",
               median(opens) * scale, "s", Target("value", "<=", 1.0, "<= 1 s"),
               note=f"measured {median(opens) * 1000:.0f} ms for {runs:,} runs",
               detail={"seconds": opens}),
    ]


def main() -> None:
    runs = RUNS
    if "--runs" in sys.argv:
        at = sys.argv.index("--runs")
        runs = int(sys.argv[at + 1])
        del sys.argv[at:at + 2]
    args = parse_args(__doc__.splitlines()[0])
    args.runs = runs
    report("mass_wake", args, figures(args))


if __name__ == "__main__":
    main()
