"""Re-execution: the cost of a replayed step, and the latency of `resume`.

- replay: a run records 1,000 steps and parks on a `Suspend`; the engine keeps no
  parked generator (``cache_size=0``), so `engine.resume(run_id)` re-executes the
  workflow from the top: it loads the run's history and sends every recorded outcome
  back, then parks again on the same `Suspend`. The figure is the time of
  `resume` + `Run.wait()` for the 1,000-step run minus the same for a 0-step run,
  divided by 1,000: what each recorded step adds to a re-execution, its share of
  loading the history included (target: at most 5 us).
- resume: a run records 100 steps, then its workflow code fails (a bug); the bug is
  fixed and `engine.resume(run_id)` is called. The figure is the time from calling
  `resume` to `Run.result()` returning: loading the history, recording
  ``run/resumed``, replaying the 100 steps and recording ``run/completed``
  (target: at most 5 ms). The floor column is one durable commit of a narrow row,
  for scale, with replay's own wide row beside it (see `_floor.py`).

Each is measured twice: right after the run recorded its steps (its rows are still in
the hot log, which the engine also keeps in memory until it settles them into the
table, so the history is read with no query), and after the engine was closed and
opened again (every row settled: the history is read from the table).

    python benchmarks/replay_cost.py [--smoke] [--durability fsync|none] [--repeat N]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio
from _floor import floors_seconds_per_step, scratch_dir
from _report import Figure, Target, median, parse_args, percentile, repeats, report

import replay
from replay import Step, Suspend

REPLAYED_STEPS = 1000
RESUMED_STEPS = 100
RESUMED_RUNS = 10
SMOKE_REPLAYED_STEPS = 20
SMOKE_RESUMED_STEPS = 5
SMOKE_RESUMED_RUNS = 2
FLOOR_STEPS = 300

# Flipped by the benchmark to "deploy the fix" before resuming.
BUG = {"present": True}


def noop(i: int) -> dict[str, int]:
    return {"i": i}


@replay.workflow(name="bench.replayed")
def replayed(count: int) -> Any:
    for i in range(count):
        yield Step(f"step:{i}", noop, i)
    yield Suspend("never")
    return count


@replay.workflow(name="bench.resumed")
def resumed(count: int) -> Any:
    total = 0
    for i in range(count):
        total += (yield Step(f"step:{i}", noop, i))["i"]
    if BUG["present"]:
        raise RuntimeError("a bug, fixed before resume")
    return total


async def replay_seconds(path: Path, durability: str, count: int, times: int,
                         settled: bool) -> list[float]:
    """Seconds of each of `times` re-executions of a run of `count` recorded steps.

    `settled`: the engine is reopened first, so the run's rows are read from the table.
    """
    async with replay.open_engine(path, workflows=[replayed], durability=durability,
                                  cache_size=0) as engine:
        run = await engine.start(replayed, count)
        await run.wait()
    async with replay.open_engine(path, workflows=[replayed], durability=durability,
                                  cache_size=0) as engine:
        if not settled:  # the same run again, its rows recent
            run = await engine.start(replayed, count)
            await run.wait()
        taken = []
        for _ in range(times):
            began = time.perf_counter()
            again = await engine.resume(run.run_id)
            info = await again.wait()
            taken.append(time.perf_counter() - began)
            assert info.waiting_for == "never", info
        return taken


async def resume_seconds(path: Path, durability: str, count: int, runs: int,
                         settled: bool) -> list[float]:
    """Seconds from `resume` to `result()` of each of `runs` failed runs of `count` steps.

    `settled`: the engine is reopened before the resumes (the runs' rows settled).
    """
    BUG["present"] = True
    started: list[str] = []
    if settled:
        await _failed_runs(path, durability, count, runs, started)
    async with replay.open_engine(path, workflows=[resumed], durability=durability) as engine:
        if not settled:
            await _failed_runs(path, durability, count, runs, started, engine)
        BUG["present"] = False
        taken = []
        for run_id in started:
            began = time.perf_counter()
            run = await engine.resume(run_id)
            output = await run.result()
            taken.append(time.perf_counter() - began)
            assert output == count * (count - 1) // 2
        return taken


async def _failed_runs(path: Path, durability: str, count: int, runs: int, started: list[str],
                       engine: replay.Engine | None = None) -> None:
    """Start `runs` runs of `resumed` that fail after `count` steps; note their ids."""
    if engine is None:
        async with replay.open_engine(path, workflows=[resumed],
                                      durability=durability) as own:
            await _failed_runs(path, durability, count, runs, started, own)
        return
    async with trio.open_nursery() as nursery:

        async def one() -> None:
            run = await engine.start(resumed, count)
            info = await run.wait()
            assert info.state == "failed", info
            started.append(run.run_id)

        for _ in range(runs):
            nursery.start_soon(one)


def figures(args: Any) -> list[Figure]:
    replayed_steps = SMOKE_REPLAYED_STEPS if args.smoke else REPLAYED_STEPS
    resumed_steps = SMOKE_RESUMED_STEPS if args.smoke else RESUMED_STEPS
    resumed_runs = SMOKE_RESUMED_RUNS if args.smoke else RESUMED_RUNS
    times = repeats(args, 7)
    floors: list[float] = []
    wides: list[float] = []
    full: dict[bool, list[float]] = {False: [], True: []}
    empty: dict[bool, list[float]] = {False: [], True: []}
    resumes: dict[bool, list[float]] = {False: [], True: []}
    with scratch_dir() as directory:
        for rep in range(repeats(args, 3)):
            measured = floors_seconds_per_step(20 if args.smoke else FLOOR_STEPS,
                                               args.durability, directory)
            floors.append(measured.narrow)
            wides.append(measured.wide)
            for settled, name in ((False, "recent"), (True, "settled")):
                full[settled] += trio.run(replay_seconds, directory / f"{name}-{rep}.duckdb",
                                          args.durability, replayed_steps, times, settled)
                empty[settled] += trio.run(
                    replay_seconds, directory / f"{name}-empty-{rep}.duckdb",
                    args.durability, 0, times, settled)
                resumes[settled] += trio.run(
                    resume_seconds, directory / f"{name}-resume-{rep}.duckdb",
                    args.durability, resumed_steps, resumed_runs, settled)
    shown = []
    for settled, when, suffix in ((False, "rows recent", ""),
                                  (True, "rows settled, after a reopen", "_settled")):
        per_step = (median(full[settled]) - median(empty[settled])) / replayed_steps
        shown += [
            Figure(
                f"replay_step{suffix}",
                f"replay: a recorded step re-executed ({replayed_steps:,}-step run, {when})",
                per_step * 1e6, "us/step", Target("value", "<=", 5.0, "<= 5 us"),
                note=f"re-execution {median(full[settled]) * 1000:.1f} ms, of which fixed "
                     f"{median(empty[settled]) * 1000:.1f} ms",
                detail={"steps": replayed_steps, "seconds_full": full[settled],
                        "seconds_empty": empty[settled]},
            ),
            Figure(
                f"resume{suffix}",
                f"resume: run with {resumed_steps} recorded steps, resume to result ({when})",
                median(resumes[settled]) * 1000, "ms", Target("value", "<=", 5.0, "<= 5 ms"),
                floor=median(floors) * 1000, wide_floor=median(wides) * 1000,
                note=f"p90 {percentile(resumes[settled], 0.9) * 1000:.2f} ms; "
                     "floor = 1 durable INSERT",
                detail={"steps": resumed_steps, "seconds": resumes[settled]},
            ),
        ]
    return shown


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    report("replay_cost", args, figures(args))


if __name__ == "__main__":
    main()
