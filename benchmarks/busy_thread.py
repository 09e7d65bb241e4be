"""Steps beside a busy thread: a run's steps while another run's step computes in Python.

One run's plain step function computes in pure Python in its worker thread (holding
the GIL but for forced switches) while another run, started once it computes, makes
sequential steps. The figure is that run's time per step, with the interpreter's
switch interval the engine sets while it is open (see docs/operations.md); the note
gives the same with CPython's default interval (5 ms, set by this script while the
engine is open, which the engine leaves alone) and with no busy thread. The floor is
one durable commit of a narrow row, measured with no busy thread (see `_floor.py`).
Informational: no target.

    python benchmarks/busy_thread.py [--smoke] [--durability fsync|none] [--repeat N]
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import trio
from _floor import floors_seconds_per_step, scratch_dir
from _report import Figure, median, parse_args, repeats, report

import replay
from replay import Step

STEPS = 100
SMOKE_STEPS = 5
CPYTHON_DEFAULT = 0.005  # seconds: CPython's switch interval
BUSY_AT_MOST = 60.0  # seconds
DONE = threading.Event()  # set once the measured run has ended: the busy step returns


def burn(seconds: float) -> int:
    """Compute in Python until `DONE` or for `seconds` (a plain step: a worker thread)."""
    end, spins = time.perf_counter() + seconds, 0
    while time.perf_counter() < end and not DONE.is_set():
        for _ in range(1000):
            spins += 1
    return spins


def noop(i: int) -> int:
    return i


async def async_noop(i: int) -> int:
    return i


@replay.workflow(name="bench.busy")
def busy(seconds: float) -> Any:
    return (yield Step("burn", burn, seconds))


@replay.workflow(name="bench.beside")
def beside(count: int, use_async: bool) -> Any:
    for i in range(count):
        yield Step(f"s{i}", async_noop if use_async else noop, i)
    return count


async def seconds_per_step(path: Path, durability: str, steps: int, use_async: bool,
                           interval: float | None, with_busy: bool) -> float:
    """Seconds per step of a `steps`-step run, beside a busy run if `with_busy`.

    `interval`: the switch interval to set once the engine is open (None: the engine's).
    """
    DONE.clear()
    async with replay.open_engine(path, workflows=[busy, beside], durability=durability) as engine:
        await (await engine.start(beside, 3, use_async)).result()  # warm up
        if interval is not None:
            sys.setswitchinterval(interval)
        computing = None
        if with_busy:
            computing = await engine.start(busy, BUSY_AT_MOST)
            await trio.sleep(0.05)  # its worker thread computes by now
        began = time.perf_counter()
        await (await engine.start(beside, steps, use_async)).result()
        taken = (time.perf_counter() - began) / steps
        DONE.set()
        if computing is not None:
            await computing.result()
        return taken


def figures(args: Any) -> list[Figure]:
    steps = SMOKE_STEPS if args.smoke else STEPS
    found = []
    with scratch_dir() as directory:
        floors: list[float] = []
        taken: dict[tuple[bool, str], list[float]] = {}
        for rep in range(repeats(args, 3)):
            floors.append(floors_seconds_per_step(20 if args.smoke else 300,
                                                  args.durability, directory).narrow)
            for use_async in (True, False):
                for case, interval, with_busy in (("tuned", None, True),
                                                  ("default", CPYTHON_DEFAULT, True),
                                                  ("alone", None, False)):
                    path = directory / f"{case}-{use_async}-{rep}.duckdb"
                    taken.setdefault((use_async, case), []).append(trio.run(
                        seconds_per_step, path, args.durability, steps, use_async, interval,
                        with_busy))
        floor = 1 / median(floors)
        for use_async in (True, False):
            kind = "async" if use_async else "sync"
            ms = {case: median(taken[(use_async, case)]) * 1000
                  for case in ("tuned", "default", "alone")}
            found.append(Figure(
                f"busy_thread_{kind}",
                f"sequential {kind} steps beside a step computing in a worker thread",
                1000 / ms["tuned"], "steps/s", None, floor=floor,
                note=f"{ms['tuned']:.2f} ms/step; with CPython's 5 ms switch interval "
                     f"{ms['default']:.2f} ms/step; with no busy thread {ms['alone']:.2f}",
                detail={"ms_per_step": ms},
            ))
    return found


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    report("busy_thread", args, figures(args))


if __name__ == "__main__":
    main()
