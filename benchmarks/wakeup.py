"""Wake-up latency: how long after its deadline a sleeping run continues, in real time.

Runs are started together; run i sleeps ``0.05 + 0.03 * i`` seconds (deadlines 30 ms
apart, so each wake-up is measured alone), then runs an `async` step that reads the
engine clock. The latency is that reading minus the ``wake_at`` recorded by the
``sleep/scheduled`` event: the timer firing, the durable ``sleep/fired`` record, and
getting back into the workflow (target: at most 5 ms after the deadline). The
figure is the median; the note gives the 90th percentile and the worst sample.

    python benchmarks/wakeup.py [--smoke] [--durability fsync|none] [--repeat N]
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import trio
from _floor import scratch_dir
from _report import Figure, Target, median, parse_args, percentile, repeats, report

import replay
from replay import Sleep, Step

SAMPLES = 20
SMOKE_SAMPLES = 3
FIRST = 0.05
SPACING = 0.03

# The engine clock reading taken by each run's first step after its sleep.
WOKE: dict[str, datetime] = {}
ENGINE: list[replay.Engine] = []


async def stamp(run_id: str) -> None:
    WOKE[run_id] = ENGINE[0].now()


@replay.workflow(name="bench.sleeper")
def sleeper(run_id: str, seconds: float) -> Any:
    yield Sleep("nap", timedelta(seconds=seconds))
    yield Step("stamp", stamp, run_id)


async def latencies(path: Path, durability: str, samples: int) -> list[float]:
    """Seconds between each run's recorded deadline and its first step after it."""
    WOKE.clear()
    async with replay.open_engine(path, workflows=[sleeper], durability=durability) as engine:
        ENGINE[:] = [engine]
        runs = []
        async with trio.open_nursery() as nursery:

            async def one(i: int) -> None:
                run_id = f"sleeper-{i}"
                run = await engine.start(sleeper, run_id, FIRST + SPACING * i, run_id=run_id)
                runs.append(run)
                await run.result()

            for i in range(samples):
                nursery.start_soon(one, i)
        found = []
        for run in runs:
            history = await engine.history(run.run_id)
            deadline = next(e.wake_at for e in history if e.event == "scheduled")
            assert deadline is not None
            found.append((WOKE[run.run_id] - deadline).total_seconds())
        return found


def figures(args: Any) -> list[Figure]:
    samples = SMOKE_SAMPLES if args.smoke else SAMPLES
    taken: list[float] = []
    with scratch_dir() as directory:
        for rep in range(repeats(args, 3)):
            taken += trio.run(latencies, directory / f"wake-{rep}.duckdb",
                              args.durability, samples)
    return [Figure(
        "wakeup", "wake-up: sleeping run continues after its deadline",
        median(taken) * 1000, "ms", Target("value", "<=", 5.0, "<= 5 ms"),
        note=f"p90 {percentile(taken, 0.9) * 1000:.2f} ms, max {max(taken) * 1000:.2f} ms, "
             f"{len(taken)} samples",
        detail={"seconds": taken},
    )]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    report("wakeup", args, figures(args))


if __name__ == "__main__":
    main()
