"""Durable steps: one run of 1,000 steps, 100 runs of 10 one at a time, and 10, 100 and
1,000 concurrent runs of 10.

Every step is durable before the workflow continues (SPEC §4.1). Each figure is
measured on a fresh file against the raw-DuckDB floor (the cheapest durable commit of
one small record: one autocommit INSERT of a 3-column row per step, same durability,
same scratch directory; see `_floor.py`) measured in the same repetition, with the
wide floor (replay's own 13-column row and index, same loop) beside it for information:

- sequential: wall time from `start` to `result()` of one run, per step, against the
  floor's time per INSERT (target: at most 1.3x the floor); and the same for 100 runs
  of 10 steps started one after another (each run's start and end included);
- concurrent: steps per second of N runs started together (each `start` in its own
  task, from the first `start` to the last `result()`), against the floor's INSERTs
  per second (targets: 100 runs at least 20x, 1,000 runs at least 30x the floor).

Both kinds of step function are measured: a plain function (the engine runs it in a
worker thread) and an `async def` (run on the engine's loop). The step returns a small
dict, like the floor's row.

    python benchmarks/throughput.py [--smoke] [--durability fsync|none] [--repeat N]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
from _floor import floors_seconds_per_step, scratch_dir
from _report import Figure, Target, median, parse_args, repeats, report

import replay
from replay import Step

SEQUENTIAL_STEPS = 1000
SEQUENTIAL_RUNS = 100  # of STEPS_PER_RUN steps, one at a time
SMOKE_SEQUENTIAL_RUNS = 3
CONCURRENT = (10, 100, 1000)
STEPS_PER_RUN = 10
SMOKE_SEQUENTIAL = 20
SMOKE_CONCURRENT = (2, 3, 4)
SMOKE_STEPS_PER_RUN = 2
KINDS = ("sync", "async")

TARGETS = {
    "sequential": Target("ratio", "<=", 1.3, "<= 1.3x floor"),
    100: Target("ratio", ">=", 20.0, ">= 20x floor"),
    1000: Target("ratio", ">=", 30.0, ">= 30x floor"),
}


def noop(i: int) -> dict[str, int]:
    return {"i": i}


async def async_noop(i: int) -> dict[str, int]:
    return {"i": i}


@replay.workflow(name="bench.steps")
def steps(count: int, kind: str) -> Any:
    fn = noop if kind == "sync" else async_noop
    for i in range(count):
        yield Step(f"step:{i}", fn, i)
    return count


async def timed_runs(path: Path, durability: str, runs: int, count: int, kind: str) -> float:
    """Seconds from the first `start` to the last `result()` of `runs` runs."""
    async with replay.open_engine(path, workflows=[steps], durability=durability) as engine:

        async def one() -> None:
            run = await engine.start(steps, count, kind)
            assert await run.result() == count

        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(runs):
                nursery.start_soon(one)
        return time.perf_counter() - began


async def timed_one_at_a_time(path: Path, durability: str, runs: int, count: int,
                              kind: str) -> float:
    """Seconds for `runs` runs started one after another, each awaited before the next."""
    async with replay.open_engine(path, workflows=[steps], durability=durability) as engine:
        began = time.perf_counter()
        for _ in range(runs):
            run = await engine.start(steps, count, kind)
            assert await run.result() == count
        return time.perf_counter() - began


def measure(directory: Path, durability: str, runs: int, count: int, kind: str) -> float:
    path = directory / f"{kind}-{runs}x{count}.duckdb"
    return trio.run(timed_runs, path, durability, runs, count, kind)


def figures(args: Any) -> list[Figure]:
    sequential = SMOKE_SEQUENTIAL if args.smoke else SEQUENTIAL_STEPS
    concurrent = SMOKE_CONCURRENT if args.smoke else CONCURRENT
    per_run = SMOKE_STEPS_PER_RUN if args.smoke else STEPS_PER_RUN
    one_by_one = SMOKE_SEQUENTIAL_RUNS if args.smoke else SEQUENTIAL_RUNS
    floors: list[float] = []
    wides: list[float] = []
    seconds: dict[tuple[str, int, str], list[float]] = {}
    for _ in range(repeats(args, 3)):
        with scratch_dir() as directory:
            # The floors and replay alternate, so all see the same machine load.
            measured = floors_seconds_per_step(sequential, args.durability, directory)
            floors.append(measured.narrow)
            wides.append(measured.wide)
            for kind in KINDS:
                seconds.setdefault(("seq", 1, kind), []).append(
                    measure(directory, args.durability, 1, sequential, kind))
                seconds.setdefault(("seq", one_by_one, kind), []).append(trio.run(
                    timed_one_at_a_time, directory / f"{kind}-one-by-one.duckdb",
                    args.durability, one_by_one, per_run, kind))
                for runs in concurrent:
                    seconds.setdefault(("conc", runs, kind), []).append(
                        measure(directory, args.durability, runs, per_run, kind))
    floor, wide = median(floors), median(wides)
    found: list[Figure] = []
    for kind in KINDS:
        taken = seconds[("seq", 1, kind)]
        found.append(Figure(
            f"sequential_{kind}", f"sequential: 1 run x {sequential:,} steps ({kind} step)",
            median(taken) / sequential * 1000, "ms/step", TARGETS["sequential"],
            floor=floor * 1000, wide_floor=wide * 1000,
            note=_spread(taken, sequential, per="ms/step"),
            detail={"steps": sequential, "seconds": taken, "floor_seconds_per_step": floors,
                    "wide_floor_seconds_per_step": wides},
        ))
    for kind in KINDS:
        taken = seconds[("seq", one_by_one, kind)]
        total = one_by_one * per_run
        found.append(Figure(
            f"sequential_runs_{kind}",
            f"sequential: {one_by_one} runs x {per_run} steps, one at a time ({kind} step)",
            median(taken) / total * 1000, "ms/step", TARGETS["sequential"],
            floor=floor * 1000, wide_floor=wide * 1000,
            note=_spread(taken, total, per="ms/step"),
            detail={"runs": one_by_one, "steps_per_run": per_run, "seconds": taken},
        ))
    for kind in KINDS:
        for size, runs in zip(CONCURRENT, concurrent, strict=True):
            taken = seconds[("conc", runs, kind)]
            total = runs * per_run
            found.append(Figure(
                f"concurrent_{size}_{kind}",
                f"concurrent: {runs:,} runs x {per_run} steps ({kind} step)",
                total / median(taken), "steps/s", TARGETS.get(size), floor=1 / floor,
                wide_floor=1 / wide,
                note=_spread(taken, total, per="steps/s"),
                detail={"runs": runs, "steps_per_run": per_run, "seconds": taken},
            ))
    return found


def _spread(taken: Sequence[float], steps: int, per: str) -> str:
    if len(taken) < 2:
        return ""
    if per == "steps/s":
        values = sorted(steps / t for t in taken)
        return f"range {values[0]:,.0f}-{values[-1]:,.0f}"
    values = sorted(t / steps * 1000 for t in taken)
    return f"range {values[0]:.2f}-{values[-1]:.2f}"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    report("throughput", args, figures(args))


if __name__ == "__main__":
    main()
