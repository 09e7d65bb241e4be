"""Peers side by side: the same workload on the DuckDB floor, DBOS and replay, in one run.

The workload: 100 workflows of 10 steps each, at most C running at a time (C = 1, 8,
100), every step durable before the workflow continues (each system's default
durability), each step returning a small dict; sync steps (plain functions) and async
steps (``async def``). Each repetition measures, one after the other so all see the
same machine load:

- the floor: one autocommit INSERT of a 3-column row per step (the cheapest durable
  commit DuckDB offers for one small record, see `_floor.py`), on a fresh file, from a
  pool of C threads each with its own cursor, 10 INSERTs per "workflow";
- replay: `open_engine` on a fresh file (``durability="fsync"``), 100 runs started in
  trio tasks, at most C at a time, timed from the first `start` to the last `result()`;
- DBOS: its own virtual environment (``~/.cache/replay-bench/dbos-venv``, created
  with ``python3 -m venv`` and ``pip install dbos`` on first use, reused afterwards;
  ``--dbos-venv`` to choose another), running `_peer_dbos.py` twice on fresh SQLite
  system databases: with DBOS's default settings (SQLite's rollback journal), and with
  the file in SQLite's write-ahead-log mode (DBOS's fastest durable SQLite setting).
  DBOS is not one of replay's dependencies.

It prints one Markdown table (steps per second per C, and ms per step at C=1, medians
of the repetitions) with the machine, the load average before and after, and the date,
then one JSON line with every sample. When DBOS cannot be installed (no network, for
example), replay's side and the floor are still measured and the table says why the
peer is missing; the exit status is 0 either way.

    python benchmarks/peers.py [--smoke] [--repeat N] [--no-peer] [--dbos-venv DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import msgpack
import trio
from _floor import NARROW_INSERT, NARROW_TABLE, scratch_dir
from _report import last_json, machine, median, warn

import replay
from replay import Step

HERE = Path(__file__).resolve().parent
DBOS_VENV = Path.home() / ".cache" / "replay-bench" / "dbos-venv"
RUNS, STEPS, CONCURRENCY = 100, 10, (1, 8, 100)
SMOKE_RUNS, SMOKE_STEPS, SMOKE_CONCURRENCY = 4, 2, (1, 2, 4)
KINDS = ("sync", "async")
DBOS_JOURNALS = ("default", "wal")
SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def noop(i: int) -> dict[str, int]:
    return {"i": i}


async def async_noop(i: int) -> dict[str, int]:
    return {"i": i}


@replay.workflow(name="bench.peers")
def peer_steps(count: int, kind: str) -> Any:
    fn = noop if kind == "sync" else async_noop
    for i in range(count):
        yield Step(f"step:{i}", fn, i)
    return count


# -- replay and the floor --

async def replay_batch(path: Path, runs: int, steps: int, concurrency: int, kind: str) -> float:
    """Seconds from the first `start` to the last `result()` of `runs` runs, C at a time."""
    async with replay.open_engine(path, workflows=[peer_steps], durability="fsync") as engine:
        limiter = trio.CapacityLimiter(concurrency)

        async def one() -> None:
            async with limiter:
                run = await engine.start(peer_steps, steps, kind)
                assert await run.result() == steps

        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(runs):
                nursery.start_soon(one)
        return time.perf_counter() - began


def floor_batch(path: Path, runs: int, steps: int, concurrency: int) -> float:
    """Seconds for `runs` x `steps` durable narrow INSERTs from a pool of C threads."""
    con = duckdb.connect(str(path))
    try:
        con.execute("SET fsync_mode = 'STANDARD'")
        con.execute(NARROW_TABLE)
        local = threading.local()
        counter = iter(range(1, runs * steps + 1))
        lock = threading.Lock()

        def workflow(run: int) -> None:
            if not hasattr(local, "cursor"):
                local.cursor = con.cursor()
                local.statement = local.cursor.extract_statements(NARROW_INSERT)[0]
            for i in range(steps):
                with lock:
                    seq = next(counter)
                local.cursor.execute(local.statement, [seq, f"run-{run}", msgpack.packb({"i": i})])

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            began = time.perf_counter()
            list(pool.map(workflow, range(runs)))
            return time.perf_counter() - began
    finally:
        con.close()


# -- DBOS --

def dbos_python(venv: Path, allow_install: bool) -> tuple[Path | None, str]:
    """The python of a venv where `import dbos` works (installing it there if allowed).

    Returns the path, or None and why not.
    """
    python = venv / "bin" / "python"
    if python.exists() and _imports_dbos(python):
        return python, ""
    if not allow_install:
        return None, f"DBOS is not installed in {venv}"
    try:
        if not python.exists():
            warn(f"peers: creating {venv}")
            subprocess.run(["python3", "-m", "venv", str(venv)], check=True,
                           capture_output=True, text=True, timeout=300)
        warn("peers: pip install dbos (first use)")
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "dbos"], check=True,
                       capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        lines = detail.strip().splitlines() or [type(error).__name__]
        return None, f"DBOS could not be installed in {venv}: {lines[-1]}"
    if not _imports_dbos(python):
        return None, f"DBOS could not be imported from {venv}"
    return python, ""


def _imports_dbos(python: Path) -> bool:
    try:
        done = subprocess.run([str(python), "-c", "import dbos"], capture_output=True,
                              timeout=120)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def dbos_batch(python: Path, directory: Path, runs: int, steps: int,
               concurrency: Sequence[int], journal: str) -> tuple[dict[str, Any] | None, str]:
    """One DBOS process on a fresh system database: its JSON, or None and why not."""
    command = [str(python), str(HERE / "_peer_dbos.py"), "--dir", str(directory),
               "--runs", str(runs), "--steps", str(steps),
               "--concurrency", *map(str, concurrency), "--journal-mode", journal]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1200,
                              cwd=directory)
    except subprocess.TimeoutExpired:
        return None, "the DBOS driver took more than 1,200 s"
    found = last_json(done.stdout)
    if done.returncode != 0 or found is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"the DBOS driver failed (exit status {done.returncode}): {tail}"
    return found, ""


# -- the run --

def measure(args: argparse.Namespace) -> dict[str, Any]:
    runs, steps = (SMOKE_RUNS, SMOKE_STEPS) if args.smoke else (RUNS, STEPS)
    concurrency = SMOKE_CONCURRENCY if args.smoke else CONCURRENCY
    repeat = args.repeat or (1 if args.smoke else 3)
    python, missing = (None, "not measured (--no-peer)") if args.no_peer else dbos_python(
        args.dbos_venv, allow_install=True)
    seconds: dict[str, dict[str, list[float]]] = {}
    dbos_info: dict[str, Any] = {}

    def add(system: str, c: int, taken: float) -> None:
        seconds.setdefault(system, {}).setdefault(str(c), []).append(taken)

    for rep in range(repeat):
        with scratch_dir("replay-peers-") as directory:
            for c in concurrency:
                add("floor", c, floor_batch(directory / f"floor-{c}.duckdb", runs, steps, c))
            for kind in KINDS:
                for c in concurrency:
                    path = directory / f"replay-{kind}-{c}.duckdb"
                    add(f"replay_{kind}", c, trio.run(replay_batch, path, runs, steps, c, kind))
            for journal in DBOS_JOURNALS:
                if python is None:
                    break
                found, problem = dbos_batch(python, directory, runs, steps, concurrency,
                                            journal)
                if found is None:
                    python, missing = None, problem
                    break
                dbos_info[journal] = {k: v for k, v in found.items() if k != "seconds"}
                for kind, by_c in found["seconds"].items():
                    for c, taken in by_c.items():
                        add(f"dbos_{journal}_{kind}", int(c), float(taken))
        warn(f"peers: repetition {rep + 1} of {repeat} done")
    return {"runs": runs, "steps": steps, "concurrency": list(concurrency),
            "repeat": repeat, "seconds": seconds, "dbos": dbos_info,
            "dbos_missing": missing if python is None else ""}


def rows(result: dict[str, Any]) -> list[tuple[str, str, dict[int, float]]]:
    """(key, label, steps/s by C) of every system measured, in the table's order."""
    total = result["runs"] * result["steps"]
    labels = {"floor": "floor: DuckDB, one durable INSERT of a 3-column row per step"}
    for journal in DBOS_JOURNALS:
        dbos = result["dbos"].get(journal, {})
        settings = dbos.get("settings", {})
        name = (f"DBOS {dbos.get('version', '')} (SQLite {dbos.get('sqlite', '')}, "
                f"journal_mode={str(settings.get('journal_mode', '?')).upper()}, "
                f"synchronous={SYNCHRONOUS.get(settings.get('synchronous'), '?')})")
        for kind in KINDS:
            labels[f"dbos_{journal}_{kind}"] = f"{name}, {kind} steps"
    for kind in KINDS:
        labels[f"replay_{kind}"] = f"replay {replay.__version__}, {kind} steps"
    found = []
    for key, label in labels.items():
        by_c = result["seconds"].get(key)
        if by_c:
            found.append((key, label, {int(c): total / median(t) for c, t in by_c.items()}))
    return found


def table(result: dict[str, Any]) -> str:
    concurrency = result["concurrency"]
    head = ["steps/s"] + [f"C={c}" for c in concurrency]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(concurrency)]
    for _, label, per_c in rows(result):
        cells = []
        for c in concurrency:
            rate = per_c.get(c)
            cell = "-" if rate is None else f"{rate:,.0f}"
            if rate and c == 1:
                cell += f" ({1000 / rate:.2f} ms/step)"
            cells.append(cell)
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script")
    parser.add_argument("--repeat", type=int, default=None,
                        help="repetitions; the median is reported (default 3, smoke 1)")
    parser.add_argument("--no-peer", action="store_true",
                        help="measure the floor and replay only (no DBOS, no network)")
    parser.add_argument("--dbos-venv", type=Path, default=DBOS_VENV,
                        help=f"the virtual environment for DBOS (default {DBOS_VENV})")
    args = parser.parse_args()
    before = machine()
    result = measure(args)
    after = machine()
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    print(f"\nPeers: {result['runs']} workflows x {result['steps']} steps, at most C at a "
          f"time, durable steps, median of {result['repeat']}"
          f"{' (smoke: tiny sizes, measures nothing)' if args.smoke else ''}")
    print(f"machine: {os.cpu_count()} CPUs ({after['cpu']}), Python {after['python']}, "
          f"DuckDB {after['duckdb']}; load average (1 min) {before['loadavg_1m']} before, "
          f"{after['loadavg_1m']} after; {date}\n")
    print(table(result))
    if result["dbos_missing"]:
        print(f"\nDBOS: {result['dbos_missing']}")
    print(json.dumps({"benchmark": "peers", "smoke": args.smoke, "date": date,
                      "machine": after, "loadavg_1m_before": before["loadavg_1m"],
                      "steps_per_second": {key: per_c for key, _, per_c in rows(result)},
                      **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
