"""Pure steps: a pipeline of computations that ride the run's next commit.

A run of 100 pure steps (``Step(..., pure=True)``: deterministic, no outside effect)
ending in one ordinary step, started and awaited one at a time. The figure is steps
per second over the whole run, from `engine.start` to `Run.result()`: the run's start
commit, the 101 steps, and the one commit that makes the pure outcomes, the ordinary
step's and the run's end durable together. The floor is one durable commit of a
narrow row per step (see `_floor.py`); the target is 50 times the floor's steps per
second. The same for 1,000 pure steps, and with async step functions. The note gives
the commits each run waited for, counted at the store (one transaction each, whether the
writer thread or the engine's loop thread made it).

    python benchmarks/pure.py [--smoke] [--durability fsync|none] [--repeat N]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio
from _floor import floors_seconds_per_step, scratch_dir
from _report import Figure, Target, median, parse_args, repeats, report

import replay
from replay import Step
from replay._store import Store

RUNS = 20
SMOKE_RUNS = 2
FLOOR_STEPS = 300
TARGET = Target("ratio", ">=", 50.0, ">= 50x the floor")
_commits = [0]


def _counting_submit() -> None:
    """Count the store's transactions (one per batch of records, on either thread)."""
    submit, commit_now = Store.submit, Store.commit_now

    def counted(self: Store, rows: list[tuple[Any, ...]], done: Any, lone: bool = False) -> None:
        _commits[0] += 1
        submit(self, rows, done, lone)

    def counted_now(self: Store, rows: list[tuple[Any, ...]], wait: bool = False) -> bool:
        committed = commit_now(self, rows, wait)
        _commits[0] += committed
        return committed

    Store.submit = counted  # type: ignore[method-assign]
    Store.commit_now = counted_now  # type: ignore[method-assign]


def double(value: int) -> int:
    return value * 2 % 1_000_003


async def adouble(value: int) -> int:
    return value * 2 % 1_000_003


def effect(value: int) -> int:
    return value + 1


@replay.workflow(name="bench.pure")
def pipeline(value: int, steps: int, use_async: bool) -> Any:
    for i in range(steps):
        value = yield Step(f"p{i}", adouble if use_async else double, value, pure=True)
    return (yield Step("effect", effect, value))


async def run_seconds(path: Path, durability: str, steps: int, use_async: bool,
                      runs: int) -> tuple[list[float], list[int]]:
    """Seconds and commits of each of `runs` pipelines, one at a time."""
    taken, commits = [], []
    async with replay.open_engine(path, workflows=[pipeline], durability=durability) as engine:
        await (await engine.start(pipeline, 1, steps, use_async)).result()  # warm up
        for _ in range(runs):
            before, began = _commits[0], time.perf_counter()
            run = await engine.start(pipeline, 1, steps, use_async)
            await run.result()
            taken.append(time.perf_counter() - began)
            commits.append(_commits[0] - before)
    return taken, commits


def figures(args: Any) -> list[Figure]:
    _counting_submit()
    runs = SMOKE_RUNS if args.smoke else RUNS
    # (key, pure steps per run, async): smoke sizes keep the keys.
    cases = [("pure_100_sync", 100, False), ("pure_100_async", 100, True),
             ("pure_1000_sync", 1000, False)]
    if args.smoke:
        cases = [(key, steps // 10, use_async) for key, steps, use_async in cases]
    floors: list[float] = []
    wides: list[float] = []
    taken: dict[str, list[float]] = {key: [] for key, _, _ in cases}
    commits: dict[str, list[int]] = {key: [] for key, _, _ in cases}
    with scratch_dir() as directory:
        for rep in range(repeats(args, 3)):
            measured = floors_seconds_per_step(20 if args.smoke else FLOOR_STEPS,
                                               args.durability, directory)
            floors.append(measured.narrow)
            wides.append(measured.wide)
            for key, steps, use_async in cases:
                seconds, counted = trio.run(run_seconds, directory / f"{key}-{rep}.duckdb",
                                            args.durability, steps, use_async, runs)
                taken[key] += seconds
                commits[key] += counted
    found = []
    for key, steps, use_async in cases:
        kind = "async" if use_async else "sync"
        per_run = median(taken[key])
        found.append(Figure(
            key, f"pure pipeline: {steps:,} pure + 1 ordinary step per run ({kind})",
            (steps + 1) / per_run, "steps/s", TARGET,
            floor=1 / median(floors), wide_floor=1 / median(wides),
            note=f"{per_run * 1000:.2f} ms/run; commits per run: {max(commits[key])} "
                 "(start included)",
            detail={"steps": steps + 1, "seconds": taken[key], "commits": commits[key]},
        ))
    return found


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    report("pure", args, figures(args))


if __name__ == "__main__":
    main()
