"""Latency per call in each hosting mode: the trio engine, replay.sync, replay.aio, replay.connect.

The same two calls are timed one at a time (no concurrency: this is the price of a
call, not throughput) on a fresh database file for each mode:

- ``status()`` of an existing run: the round trip into the engine and back, nothing
  written;
- ``start()`` of a one-step workflow, then ``result()``: three durable commits (the
  start, the step, the end) and the way back to the caller.

Each figure is the median over all calls of ``--repeat`` rounds; a round opens a
fresh engine for each mode in turn, so that a busy moment of the machine falls on
every mode alike. A mode is one function below that opens its engine and times the
two calls; modes whose module is not there (an older replay) are skipped.

    python benchmarks/hosting.py [--smoke] [--durability fsync|none] [--repeat N]
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from _floor import scratch_dir
from _report import Figure, fmt, machine, median, parse_args, percentile, repeats, report

import replay
import replay.sync
from replay import Step

HERE = Path(__file__).resolve().parent


def double(i: int) -> int:
    return 2 * i


@replay.workflow(name="bench.one_step")
def one_step(i: int) -> Any:
    return (yield Step("double", double, i))


@dataclass(frozen=True)
class Sizes:
    status_calls: int
    start_calls: int


@dataclass
class Timings:
    """Seconds per call, one entry per call."""

    status: list[float]
    start_result: list[float]


Mode = Callable[[Path, str, Sizes], Timings]


def clocked(call: Callable[[int], Any], count: int) -> list[float]:
    """Seconds taken by each of ``call(0)``, ``call(1)``, ... ``call(count - 1)``."""
    taken = []
    for i in range(count):
        began = time.perf_counter()
        call(i)
        taken.append(time.perf_counter() - began)
    return taken


# -- the modes --


def trio_mode(path: Path, durability: str, sizes: Sizes) -> Timings:
    """The trio engine itself, called from a trio task (the floor of the others)."""

    async def main() -> Timings:
        async with replay.open_engine(path, workflows=[one_step],
                                      durability=durability) as engine:
            run_id = (await engine.start(one_step, 0)).run_id
            status = []
            for _ in range(sizes.status_calls):
                began = time.perf_counter()
                engine.status(run_id)
                status.append(time.perf_counter() - began)
            started = []
            for i in range(sizes.start_calls):
                began = time.perf_counter()
                await (await engine.start(one_step, i)).result()
                started.append(time.perf_counter() - began)
            return Timings(status, started)

    return trio.run(main)


def sync_mode(path: Path, durability: str, sizes: Sizes) -> Timings:
    """`replay.sync`: the engine on a background thread, called from the main thread."""
    with replay.sync.open_engine(path, workflows=[one_step], durability=durability) as engine:
        run_id = engine.start(one_step, 0).run_id
        return Timings(clocked(lambda _: engine.status(run_id), sizes.status_calls),
                       clocked(lambda i: engine.start(one_step, i).result(),
                               sizes.start_calls))


def aio_mode(path: Path, durability: str, sizes: Sizes) -> Timings:
    """`replay.aio`: the engine as a guest of the asyncio loop, called from a coroutine."""
    import replay.aio

    async def main() -> Timings:
        async with replay.aio.open_engine(path, workflows=[one_step],
                                          durability=durability) as engine:
            run_id = (await engine.start(one_step, 0)).run_id
            status = []
            for _ in range(sizes.status_calls):
                began = time.perf_counter()
                await engine.status(run_id)
                status.append(time.perf_counter() - began)
            started = []
            for i in range(sizes.start_calls):
                began = time.perf_counter()
                await (await engine.start(one_step, i)).result()
                started.append(time.perf_counter() - began)
            return Timings(status, started)

    return asyncio.run(main())


def connect_mode(path: Path, durability: str, sizes: Sizes) -> Timings:
    """`replay.connect`: a client in this process, the engine in another one."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(path), "--durability", durability],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
    try:
        assert server.stdout is not None and server.stdin is not None
        assert server.stdout.readline().strip() == "serving", "the engine process failed"
        with replay.connect(path) as client:
            run_id = client.start(one_step, 0).run_id
            return Timings(clocked(lambda _: client.status(run_id), sizes.status_calls),
                           clocked(lambda i: client.start(one_step, i).result(),
                                   sizes.start_calls))
    finally:
        if server.stdin is not None:
            server.stdin.close()  # the engine process stops cleanly at end of input
        server.wait(timeout=60)


def serve(path: str, durability: str) -> None:
    """The engine process of `connect_mode`: serve `path` until stdin closes."""

    async def main() -> None:
        async with replay.open_engine(path, workflows=[one_step], durability=durability):
            print("serving", flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)

    trio.run(main)


def available_modes() -> dict[str, Mode]:
    """Every mode this replay has, in the order of the table."""
    modes: dict[str, Mode] = {"trio": trio_mode, "sync": sync_mode}
    if importlib.util.find_spec("replay.aio") is not None:
        modes["aio"] = aio_mode
    if hasattr(replay, "connect") and os.name == "posix":
        modes["connect"] = connect_mode
    return modes


LABELS = {
    "trio": "trio engine (`replay.open_engine`)",
    "sync": "`replay.sync` (background thread)",
    "aio": "`replay.aio` (guest of asyncio)",
    "connect": "`replay.connect` (other process)",
}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[4] if len(sys.argv) > 4 else "fsync")
        return
    args = parse_args(__doc__.splitlines()[0])
    sizes = Sizes(5, 3) if args.smoke else Sizes(300, 100)
    modes = available_modes()
    before = machine()
    taken = {name: Timings([], []) for name in modes}
    with scratch_dir() as directory:
        # Round-robin over the modes, so that a busy moment of the machine lands on
        # every mode alike instead of on whichever ran then.
        for rep in range(repeats(args, 3)):
            for name, mode in modes.items():
                timings = mode(directory / f"{name}-{rep}.duckdb", args.durability, sizes)
                taken[name].status += timings.status
                taken[name].start_result += timings.start_result
    figures: list[Figure] = []
    rows = []
    for name, timings in taken.items():
        status, started = timings.status, timings.start_result
        figures.append(Figure(f"status_{name}", f"status(), {LABELS[name]}",
                              median(status) * 1e6, "µs",
                              note=f"{len(status)} calls"))
        figures.append(Figure(f"start_result_{name}",
                              f"start()+result() of a one-step workflow, {LABELS[name]}",
                              median(started) * 1e3, "ms",
                              note=f"p90 {percentile(started, 0.9) * 1e3:.2f} ms, "
                                   f"{len(started)} calls"))
        rows.append(f"| {LABELS[name]} | {fmt(median(status) * 1e6)} µs | "
                    f"{fmt(median(started) * 1e3)} ms |")
    about = machine()
    print(f"latency per call, median (durability={args.durability}"
          f"{', smoke' if args.smoke else ''}); {about['cpus']} CPUs ({about['cpu']}), "
          f"Python {about['python']}, DuckDB {about['duckdb']}, trio {about['trio']}; "
          f"load average {before['loadavg_1m']} before, {about['loadavg_1m']} after\n")
    print("| mode | status() | start() + result(), one step |")
    print("| --- | ---: | ---: |")
    print("\n".join(rows))
    report("hosting", args, figures)


if __name__ == "__main__":
    main()
