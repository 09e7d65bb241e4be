"""Groups and child runs: one run fanning out to 1,000 steps, and 1,000 child runs.

Each figure is steps per second against the raw-DuckDB floor (one autocommit INSERT
of a 3-column row per step, same durability; see `_floor.py`) measured in the same
repetition, on a fresh file, with the wide floor (replay's own row) beside it:

- group: one run yields `All("fan-out:v1", [Step(...) x 1,000], limit=100)` of
  `async def` steps; wall time from `start` to `result()` (the run's start, the
  group's records and the run's end included), 1,000 steps counted, five runs per
  repetition, each on a fresh file (target: at least 20x the floor's steps per
  second);
- children: one parent run yields `All("children:v1", [Child(...) x 1,000])` of a
  registered workflow of 3 `async def` steps; wall time from the parent's `start` to
  its `result()` (every child's start and end, and the parent's records of them,
  included), 3,000 steps counted (target: at least 10x the floor).

    python benchmarks/groups.py [--smoke] [--durability fsync|none] [--repeat N]
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
from replay import All, Child, Step

FLOOR_STEPS = 1000
GROUP_STEPS, GROUP_LIMIT = 1000, 100
CHILDREN, CHILD_STEPS = 1000, 3
SMOKE_FLOOR_STEPS = 20
SMOKE_GROUP_STEPS, SMOKE_GROUP_LIMIT = 20, 4
SMOKE_CHILDREN = 5
# A 1,000-step group takes a tenth of a second: measure it a few times per repetition.
GROUP_SAMPLES = 5

TARGETS = {
    "group": Target("ratio", ">=", 20.0, ">= 20x floor"),
    "children": Target("ratio", ">=", 10.0, ">= 10x floor"),
}


async def async_noop(i: int) -> dict[str, int]:
    return {"i": i}


@replay.workflow(name="bench.fan-out")
def fan_out(count: int, limit: int | None) -> Any:
    values = yield All("fan-out:v1", [Step(f"step:{i}", async_noop, i) for i in range(count)],
                       limit=limit)
    return len(values)


@replay.workflow(name="bench.child")
def child(i: int) -> Any:
    for step in range(CHILD_STEPS):
        yield Step(f"step:{step}", async_noop, i)
    return i


@replay.workflow(name="bench.parent")
def parent(count: int) -> Any:
    outputs = yield All("children:v1", [Child(f"child:{i}", child, i) for i in range(count)])
    return len(outputs)


WORKFLOWS = [fan_out, child, parent]


async def timed_run(path: Path, durability: str, workflow: Any, *args: Any) -> float:
    """Seconds from `start` to `result()` of one run of `workflow(*args)`."""
    async with replay.open_engine(path, workflows=WORKFLOWS, durability=durability) as engine:
        began = time.perf_counter()
        run = await engine.start(workflow, *args)
        assert await run.result() == args[0]
        return time.perf_counter() - began


def measure(directory: Path, name: str, durability: str, workflow: Any, *args: Any) -> float:
    return trio.run(timed_run, directory / f"{name}.duckdb", durability, workflow, *args)


def figures(args: Any) -> list[Figure]:
    floor_steps = SMOKE_FLOOR_STEPS if args.smoke else FLOOR_STEPS
    steps, limit = (SMOKE_GROUP_STEPS, SMOKE_GROUP_LIMIT) if args.smoke else (GROUP_STEPS,
                                                                              GROUP_LIMIT)
    children = SMOKE_CHILDREN if args.smoke else CHILDREN
    floors: list[float] = []
    wides: list[float] = []
    group_seconds: list[float] = []
    children_seconds: list[float] = []
    for _ in range(repeats(args, 3)):
        with scratch_dir() as directory:
            # The floors and replay alternate, so all see the same machine load.
            measured = floors_seconds_per_step(floor_steps, args.durability, directory)
            floors.append(measured.narrow)
            wides.append(measured.wide)
            for sample in range(1 if args.smoke else GROUP_SAMPLES):
                group_seconds.append(measure(directory, f"group-{sample}", args.durability,
                                             fan_out, steps, limit))
            children_seconds.append(measure(directory, "children", args.durability, parent,
                                            children))
    floor, wide = median(floors), median(wides)
    child_steps = children * CHILD_STEPS
    return [
        Figure(
            "group_all_1000", f"group: 1 run, All of {steps:,} async steps (limit={limit})",
            steps / median(group_seconds), "steps/s", TARGETS["group"], floor=1 / floor,
            wide_floor=1 / wide, note=_spread(group_seconds, steps),
            detail={"steps": steps, "limit": limit, "seconds": group_seconds,
                    "floor_seconds_per_step": floors, "wide_floor_seconds_per_step": wides},
        ),
        Figure(
            "children_1000",
            f"children: All of {children:,} child runs x {CHILD_STEPS} async steps",
            child_steps / median(children_seconds), "steps/s", TARGETS["children"],
            floor=1 / floor, wide_floor=1 / wide, note=_spread(children_seconds, child_steps),
            detail={"children": children, "steps_per_child": CHILD_STEPS,
                    "seconds": children_seconds, "floor_seconds_per_step": floors,
                    "wide_floor_seconds_per_step": wides},
        ),
    ]


def _spread(taken: Sequence[float], steps: int) -> str:
    if len(taken) < 2:
        return ""
    values = sorted(steps / t for t in taken)
    return f"range {values[0]:,.0f}-{values[-1]:,.0f}"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    report("groups", args, figures(args))


if __name__ == "__main__":
    main()
