"""Memory per parked run: N runs suspended in one engine, measured two ways.

Each run of the workflow makes one async step and then waits on a `Suspend` (the shape
of SPEC §2's checkout). N of them (default 10,000) are started at once and left
parked. The cost per parked run is (memory after parking - memory before) / N:

- ``python``: Python allocations traced by `tracemalloc`, after `gc.collect()`
  (what the engine keeps per run: its slot, memo, cached generator, timers);
- ``rss``: the process's resident set from ``/proc/self/statm``, which also counts
  DuckDB's memory (the run's rows, indexes, buffers) and the allocator's slack.

Both are measured with the default generator cache (1000: the newest 1000 parked
generators are kept, the rest are closed) and with ``cache_size=0`` (every parked
generator is dropped); the difference divided by the cache size is the cost of one
cached generator. Every measurement runs in a fresh child process (so one cannot
inflate the next, and tracemalloc's own overhead stays out of the RSS figure); the
tracemalloc child also lists the biggest allocation sites by line and by traceback.

    python benchmarks/parked_memory.py [-n N] [--cache-sizes 1000,0] [--db file|memory]
                                       [--top K] [--smoke]

Prints a table, the allocation sites, and one JSON line (the last line of output).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import trio
from _report import allocation_sites

import replay
from replay import Step, Suspend
from replay._engine._facade import internals

TARGET_BYTES = 5 * 1024  # a later issue's target: at most 5 KB per parked run
WARM_UP = 200  # runs taken through the whole path first, so lazy allocations are done
TRACE_FRAMES = 25

generators = Counter[str]()


async def reserve(n: int) -> dict[str, Any]:
    return {"order": f"order-{n}", "items": 3}


@replay.workflow(name="bench.parked")
def parked(n: int):  # type: ignore[no-untyped-def]
    generators["live"] += 1
    try:
        reservation = yield Step("reserve:v1", reserve, n)
        approved = yield Suspend("approval:v1", status="waiting for a manager")
        return {"reservation": reservation, "approved": approved}
    finally:
        generators["live"] -= 1


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def python_bytes() -> int:
    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0


def duckdb_bytes(engine: replay.Engine) -> int | None:
    """DuckDB's own accounting of its memory (buffers, indexes), or None if unavailable."""
    try:
        store = internals(engine).store
        rows = store._read("SELECT sum(memory_usage_bytes) FROM duckdb_memory()", [])
        return int(rows[0][0] or 0)
    except Exception:  # a private peek: the store may change
        return None


def settle() -> None:
    for _ in range(3):
        gc.collect()


async def start_all(engine: replay.Engine, first: int, count: int) -> None:
    async def start(n: int) -> None:
        run = await engine.start(parked, n, run_id=f"r{n}")
        await run.wait()

    async with trio.open_nursery() as nursery:
        for n in range(first, first + count):
            nursery.start_soon(start, n)


async def measure(n: int, cache_size: int, db: str, traced: bool, top: int) -> dict[str, Any]:
    """Park `n` runs in one engine and return the memory they added (child process)."""
    result: dict[str, Any] = {"cache_size": cache_size, "n": n, "traced": traced}
    async with replay.open_engine(db, workflows=[parked], durability="none",
                                  cache_size=cache_size) as engine:
        # Warm up: start, park, signal and finish some runs, so that threads, caches and
        # lazily built objects exist before the baseline.
        await start_all(engine, -WARM_UP, WARM_UP)
        async with trio.open_nursery() as nursery:
            for k in range(-WARM_UP, 0):
                nursery.start_soon(engine.signal, f"r{k}", "approval:v1", True)
        for k in range(-WARM_UP, 0):
            await engine.get_run(f"r{k}").result()
        settle()
        before_python, before_rss = python_bytes(), rss_bytes()
        before_duckdb = duckdb_bytes(engine)
        before = tracemalloc.take_snapshot() if traced else None
        if traced:
            tracemalloc.reset_peak()

        began = time.perf_counter()
        await start_all(engine, 0, n)
        result["park_seconds"] = time.perf_counter() - began
        settle()
        after_python, after_rss = python_bytes(), rss_bytes()
        peak_python = tracemalloc.get_traced_memory()[1] if traced else 0
        after_duckdb = duckdb_bytes(engine)
        states = Counter(engine.status(f"r{k}").state.value for k in range(n))
        assert states == {"suspended": n}, states
        result["parked_generators"] = generators["live"]
        result["python_per_run"] = (after_python - before_python) / n
        # While N runs start at once, each has a task and coroutine frames: the peak.
        result["python_peak_per_run"] = (peak_python - before_python) / n
        result["rss_per_run"] = (after_rss - before_rss) / n
        result["rss_after"] = after_rss
        result["duckdb_per_run"] = (None if before_duckdb is None or after_duckdb is None
                                    else (after_duckdb - before_duckdb) / n)
        if before is not None:
            after = tracemalloc.take_snapshot()
            result["sites"] = allocation_sites(before, after, n, top)
    return result


def child(args: argparse.Namespace) -> None:
    if args.traced:
        tracemalloc.start(TRACE_FRAMES)
    with tempfile.TemporaryDirectory(prefix="replay-parked-") as scratch:
        db = ":memory:" if args.db == "memory" else str(Path(scratch) / "parked.duckdb")
        result = trio.run(measure, args.n, args.cache_size, db, args.traced, args.top)
    print(json.dumps(result), flush=True)


def run_child(args: argparse.Namespace, cache_size: int, traced: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", "-n", str(args.n), "--db", args.db,
               "--cache-size", str(cache_size), "--top", str(args.top)]
    if traced:
        command.append("--traced")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"measurement failed (cache_size={cache_size}, traced={traced}):\n"
                 f"{done.stderr}")
    parsed: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return parsed


def kb(value: float) -> str:
    return f"{value / 1024:.2f} KB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000, help="parked runs (default 10,000)")
    parser.add_argument("--cache-sizes", default="1000,0",
                        help="comma-separated cache sizes to measure (default 1000,0)")
    parser.add_argument("--db", choices=("file", "memory"), default="file",
                        help="a temporary database file (default) or ':memory:'")
    parser.add_argument("--top", type=int, default=10, help="allocation sites to list")
    parser.add_argument("--smoke", action="store_true", help="tiny N: checks the script")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-size", type=int, default=1000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.smoke:
        args.n = 300
    results = []
    for cache_size in (int(size) for size in args.cache_sizes.split(",")):
        rss = run_child(args, cache_size, traced=False)
        traced = run_child(args, cache_size, traced=True)
        results.append({
            "cache_size": cache_size, "n": args.n,
            "python_bytes_per_run": traced["python_per_run"],
            "python_peak_bytes_per_run": traced["python_peak_per_run"],
            "rss_bytes_per_run": rss["rss_per_run"],
            "duckdb_bytes_per_run": rss["duckdb_per_run"],
            "parked_generators": rss["parked_generators"],
            "park_seconds": rss["park_seconds"],
            "within_target": traced["python_per_run"] <= TARGET_BYTES,
            "sites": traced["sites"],
        })
    by_size = {r["cache_size"]: r for r in results}
    per_generator = None
    if 0 in by_size and any(size > 0 for size in by_size):
        size = max(by_size)
        per_generator = ((by_size[size]["python_bytes_per_run"]
                          - by_size[0]["python_bytes_per_run"]) * args.n
                         / min(size, args.n))
    print(f"\nparked memory: {args.n:,} runs suspended in one engine "
          f"(db={args.db}, durability=none)\n")
    print("| cache_size | parked generators | Python (tracemalloc) / run | RSS / run "
          "| of it DuckDB / run | Python peak while starting / run | target 5 KB (Python) "
          "| park time |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in results:
        verdict = "PASS" if r["within_target"] else "FAIL"
        duck = "-" if r["duckdb_bytes_per_run"] is None else kb(r["duckdb_bytes_per_run"])
        print(f"| {r['cache_size']} | {r['parked_generators']:,} | "
              f"{kb(r['python_bytes_per_run'])} | {kb(r['rss_bytes_per_run'])} | {duck} | "
              f"{kb(r['python_peak_bytes_per_run'])} | {verdict} | {r['park_seconds']:.1f} s |")
    if per_generator is not None:
        print(f"\none cached generator (with its memo): about {kb(per_generator)}")
    for r in results:
        print(f"\nbiggest allocation sites, cache_size={r['cache_size']} (bytes per run):")
        for key_type, title in (("lineno", "by line"), ("traceback", "by traceback")):
            print(f"  {title}:")
            for site in r["sites"][key_type]:
                where = " <- ".join(site["where"])
                print(f"    {site['bytes_per_run']:8.0f} B  {site['blocks_per_run']:6.2f} "
                      f"blocks  {where}")
    print(json.dumps({
        "benchmark": "parked_memory", "smoke": args.smoke, "n": args.n, "db": args.db,
        "target_bytes_per_run": TARGET_BYTES,
        "per_cached_generator_bytes": per_generator,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "replay": replay.__version__, "loadavg_1m": os.getloadavg()[0]},
        "results": [{k: v for k, v in r.items() if k != "sites"} for r in results],
        "top_sites": {r["cache_size"]: r["sites"]["lineno"][:5] for r in results},
    }), flush=True)


if __name__ == "__main__":
    main()
