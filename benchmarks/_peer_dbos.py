"""The DBOS side of `peers.py`: run by the python of a virtual environment with `dbos`.

It does not import replay (it runs in DBOS's own environment). It opens DBOS once on a
fresh SQLite system database (DBOS's default settings, or with ``--journal-mode wal``
the file put in SQLite's write-ahead-log mode before DBOS opens it: DBOS sets no journal
mode of its own, and keeps SQLite's ``synchronous=FULL``, so every commit is still
fsynced), then for each kind of step and each concurrency C runs `--runs` workflows
of `--steps` steps each, at most C at a time, and prints one JSON line with the seconds
each batch took:

- sync: ``@DBOS.workflow() def`` calling ``@DBOS.step() def``, the workflows called
  from a pool of C threads;
- async: ``@DBOS.workflow() async def`` awaiting ``@DBOS.step() async def``, the
  workflows awaited by asyncio tasks, at most C at a time (a semaphore).

    <venv>/bin/python benchmarks/_peer_dbos.py --dir DIR [--runs 100] [--steps 10]
        [--concurrency 1 8 100] [--kinds sync async] [--journal-mode default|wal]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dbos import DBOS


@DBOS.step()
def noop(i: int) -> dict[str, int]:
    return {"i": i}


@DBOS.workflow()
def steps_sync(count: int) -> int:
    for i in range(count):
        noop(i)
    return count


@DBOS.step()
async def async_noop(i: int) -> dict[str, int]:
    return {"i": i}


@DBOS.workflow()
async def steps_async(count: int) -> int:
    for i in range(count):
        await async_noop(i)
    return count


def run_sync(runs: int, steps: int, concurrency: int) -> float:
    """Seconds to run `runs` sync workflows, at most `concurrency` at a time."""
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        began = time.perf_counter()
        done = list(pool.map(lambda _: steps_sync(steps), range(runs)))
        taken = time.perf_counter() - began
    assert done == [steps] * runs, done
    return taken


async def run_async(runs: int, steps: int, concurrency: int) -> float:
    """Seconds to run `runs` async workflows, at most `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> int:
        async with gate:
            return await steps_async(steps)

    began = time.perf_counter()
    done = await asyncio.gather(*(one() for _ in range(runs)))
    taken = time.perf_counter() - began
    assert done == [steps] * runs, done
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 100])
    parser.add_argument("--kinds", nargs="+", choices=("sync", "async"),
                        default=["sync", "async"])
    parser.add_argument("--journal-mode", choices=("default", "wal"), default="default")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # DBOS logs every launch at INFO
    path = args.dir / f"dbos-{args.journal_mode}.sqlite"
    if args.journal_mode == "wal":
        # The journal mode is a property of the database file: set on the empty file,
        # it holds for every connection DBOS makes afterwards.
        with sqlite3.connect(path) as con:
            con.execute("PRAGMA journal_mode=WAL")
    DBOS(config={"name": "replay-peer-bench", "system_database_url": f"sqlite:///{path}"})
    DBOS.launch()
    seconds: dict[str, dict[str, float]] = {}
    try:
        for kind in args.kinds:
            for concurrency in args.concurrency:
                if kind == "sync":
                    taken = run_sync(args.runs, args.steps, concurrency)
                else:
                    taken = asyncio.run(run_async(args.runs, args.steps, concurrency))
                seconds.setdefault(kind, {})[str(concurrency)] = taken
    finally:
        DBOS.destroy()
    with sqlite3.connect(path) as con:
        settings: dict[str, Any] = {
            "journal_mode": con.execute("PRAGMA journal_mode").fetchone()[0],
            "synchronous": con.execute("PRAGMA synchronous").fetchone()[0],
        }
    print(json.dumps({
        "peer": "dbos", "version": importlib.metadata.version("dbos"),
        "sqlite": sqlite3.sqlite_version, "settings": settings,
        "runs": args.runs, "steps": args.steps, "seconds": seconds,
    }), flush=True)


if __name__ == "__main__":
    main()
