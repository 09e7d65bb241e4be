"""PostgreSQL with several engine processes on one schema: steps/s over 1, 2 and 4 workers.

Each repetition measures, on the server named by the URL (a superuser's: a fresh schema
``replay_bench_<hex>`` per measurement, dropped afterwards, as in `postgres.py`):

- **the floor**: `postgres.py`'s, one autocommit prepared ``INSERT`` of a narrow row per
  step, sequential, on one connection (one transaction, one round trip and one WAL
  flush per step), as many as the sequential run has steps.
- **sequential**: one run of S steps in one engine (``worker="seq"``), timed from
  `start` to `result()`: ms per step, and its ratio to the floor.
- **N engine processes** (N = 1, 2, 4): R runs of K steps each (``async def`` steps
  returning a small dict) are started first by a pure client engine in this process
  (``worker="submitter", max_runs=0``: it executes none of them). Then N worker
  processes (this script with ``--worker``, each ``worker="w<i>"``, ``max_runs``
  ``--max-runs``) are started; once each has imported everything it waits for a "go"
  line on stdin. The window runs from "go" (every worker then opens its engine and
  claims runs) to the newest ``run/completed`` record's ``recorded_at`` (the engines'
  clock: this machine's), found by polling ``replay_event_log`` every 20 ms. The
  figures: steps/s (R x K over the window), steps/s per process, the scaling
  efficiency ``steps/s(N) / (N x steps/s(1))``, the steps each worker executed, and
  the commit rate the server sustained: the ``xact_commit`` delta of
  ``pg_stat_database`` for the database, read before "go" and after the workers
  exited (exiting backends flush their counters), less this script's own polls, over
  the window. That delta counts every transaction of the database, read-only ones too
  (the engines' lease renewals and polls included): run it on a server nothing else
  uses.

All engines and the floor use the same durability (``--durability``, default
``fsync``). The medians of the repetitions are printed as one Markdown table with the
machine, the server and the date, then one JSON line with every sample.

    python benchmarks/pg_workers.py [URL] [--quick] [--repeat N] [--durability fsync|none]
                                    [--max-runs M]

The URL may also come from REPLAY_BENCH_POSTGRES or REPLAY_TEST_POSTGRES (in this
order); ``scripts/postgres-cluster start DIR`` starts a throwaway server.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from _report import Figure, fmt, machine, median, warn
from postgres import ENV_VARS, Server, narrow_floor, print_json, usable_server

import replay
from replay import Step

PROCESSES = (1, 2, 4)
RUNS, STEPS, SEQUENTIAL_STEPS = 1000, 10, 500
QUICK_RUNS, QUICK_STEPS, QUICK_SEQUENTIAL_STEPS = 20, 3, 20
MAX_RUNS = 100
WORKER_URL = "REPLAY_BENCH_WORKER_URL"  # the URL for a worker process (not its argv)
POLL_SECONDS = 0.02
DEADLINE_SECONDS = 900.0  # one measurement; then the workers are killed and it fails

EXECUTED = [0]  # steps this process executed (a worker reports it as it exits)


async def noop(i: int) -> dict[str, int]:
    EXECUTED[0] += 1
    return {"i": i}


@replay.workflow(name="bench.pg_workers")
def steps(count: int) -> Generator[Any, Any, int]:
    for i in range(count):
        yield Step(f"step:{i}", noop, i)
    return count


# -- a worker process: `pg_workers.py --worker NAME ...` --

async def serve(url: str, name: str, max_runs: int | None, durability: str) -> None:
    async with replay.open_engine(url, workflows=[steps], durability=durability,
                                  serve_cli=False, worker=name, max_runs=max_runs):
        print("open", flush=True)
        # Until "stop" (or stdin closes): the engine executes what it claims meanwhile.
        await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    print(f"closed {EXECUTED[0]}", flush=True)


def worker_main(args: argparse.Namespace) -> int:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    max_runs = None if args.max_runs <= 0 else args.max_runs
    trio.run(serve, os.environ[WORKER_URL], args.worker, max_runs, args.durability)
    return 0


class Workers:
    """N worker processes on one schema, started and stopped together."""

    def __init__(self, url: str, count: int, args: argparse.Namespace) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), "--durability",
                   args.durability, "--max-runs", str(args.max_runs), "--worker"]
        self.procs: list[subprocess.Popen[str]] = []
        for n in range(count):
            self.procs.append(subprocess.Popen(
                [*command, f"w{n}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True, env={**os.environ, WORKER_URL: url}))

    def ready(self) -> None:
        """Wait until each has imported everything (and waits for "go")."""
        for proc in self.procs:
            self.expect(proc, "ready")

    def expect(self, proc: subprocess.Popen[str], word: str) -> str:
        """The next line that is not "open" (printed once its engine opened)."""
        assert proc.stdout is not None
        line = "open"
        while line == "open":
            line = proc.stdout.readline().strip()
        if not line.startswith(word):
            raise SystemExit(f"pg_workers: worker {proc.pid} printed {line!r}, not {word!r} "
                             f"(exit status {proc.poll()})")
        return line

    def send(self, word: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(word + "\n")
            proc.stdin.flush()

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.procs)

    def stop(self) -> list[int]:
        """Stop them cleanly: the steps each executed."""
        self.send("stop")
        executed = []
        for proc in self.procs:
            line = self.expect(proc, "closed")
            if proc.wait(timeout=60) != 0:
                raise SystemExit(f"pg_workers: worker {proc.pid} exited {proc.returncode}")
            executed.append(int(line.split()[1]))
        return executed

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


# -- the measurements --

async def submit(url: str, runs: int, count: int, durability: str) -> float:
    """Start `runs` runs through a pure client engine: seconds it took."""
    async with replay.open_engine(url, workflows=[steps], durability=durability,
                                  serve_cli=False, worker="submitter",
                                  max_runs=0) as engine:
        limiter = trio.CapacityLimiter(100)
        began = time.perf_counter()

        async def one(n: int) -> None:
            async with limiter:
                await engine.start(steps, count, run_id=f"run-{n:06d}")

        async with trio.open_nursery() as nursery:
            for n in range(runs):
                nursery.start_soon(one, n)
        return time.perf_counter() - began


def xact_commit(con: Any) -> int:
    row = con.execute("SELECT xact_commit FROM pg_stat_database "
                      "WHERE datname = current_database()").fetchone()
    return int(row[0])


def processes(url: str, count: int, runs: int, steps_per_run: int,
              args: argparse.Namespace) -> dict[str, Any]:
    """`runs` pre-started runs executed by `count` worker processes."""
    import psycopg

    submitted = trio.run(submit, url, runs, steps_per_run, args.durability)
    workers = Workers(url, count, args)
    try:
        workers.ready()
        with psycopg.connect(url, autocommit=True, application_name="replay-bench") as con:
            before = xact_commit(con)
            polls = 0
            began = time.time()
            workers.send("go")
            deadline = time.monotonic() + DEADLINE_SECONDS
            while True:
                row = con.execute("SELECT count(*), max(recorded_at) FROM replay_event_log "
                                  "WHERE kind = 'run' AND event = 'completed'").fetchone()
                polls += 1
                if row[0] >= runs:
                    ended = row[1].timestamp()
                    break
                if not workers.alive() or time.monotonic() > deadline:
                    raise SystemExit(f"pg_workers: {row[0]} of {runs} runs completed; "
                                     f"a worker died or {DEADLINE_SECONDS:g}s passed")
                time.sleep(POLL_SECONDS)
            executed = workers.stop()
            con.execute("SELECT pg_stat_clear_snapshot()")
            after = xact_commit(con)
    finally:
        workers.kill()
    seconds = ended - began
    commits = after - before - polls - 1  # less this script's own transactions
    return {"processes": count, "seconds": seconds, "steps_per_second":
            runs * steps_per_run / seconds, "commits": commits,
            "commits_per_second": commits / seconds, "executed": executed,
            "submit_seconds": submitted}


async def sequential(url: str, count: int, durability: str) -> float:
    """Seconds per step of one run of `count` steps in one engine."""
    async with replay.open_engine(url, workflows=[steps], durability=durability,
                                  serve_cli=False, worker="seq") as engine:
        began = time.perf_counter()
        run = await engine.start(steps, count)
        assert await run.result() == count
        return (time.perf_counter() - began) / count


def measure(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    runs, per_run, sequential_steps = ((QUICK_RUNS, QUICK_STEPS, QUICK_SEQUENTIAL_STEPS)
                                       if args.quick else (RUNS, STEPS, SEQUENTIAL_STEPS))
    repeat = args.repeat or (1 if args.quick else 3)
    samples: dict[str, Any] = {"floor": [], "sequential": [],
                               **{str(n): [] for n in PROCESSES}}
    for rep in range(repeat):
        with server.schema() as url:
            samples["floor"].append(narrow_floor(url, sequential_steps, args.durability))
        with server.schema() as url:
            samples["sequential"].append(
                trio.run(sequential, url, sequential_steps, args.durability))
        for count in PROCESSES:
            with server.schema() as url:
                samples[str(count)].append(processes(url, count, runs, per_run, args))
        warn(f"pg_workers: repetition {rep + 1} of {repeat} done")
    return {"runs": runs, "steps": per_run, "sequential_steps": sequential_steps,
            "processes": list(PROCESSES), "repeat": repeat, "max_runs": args.max_runs,
            "samples": samples}


def figures(result: dict[str, Any]) -> dict[str, Figure]:
    samples = result["samples"]
    floor = median(samples["floor"]) * 1000
    found = [
        Figure("floor", "floor: PostgreSQL, one autocommit INSERT of a 3-column row per "
                        "step, sequential", floor, "ms/commit",
               detail={"seconds_per_commit": samples["floor"]}),
        Figure("sequential", f"replay, one run of {result['sequential_steps']} steps in one "
                             f"engine (worker='seq')", median(samples["sequential"]) * 1000,
               "ms/step", floor=floor, detail={"seconds_per_step": samples["sequential"]}),
    ]
    one = median([s["steps_per_second"] for s in samples["1"]])
    for count in result["processes"]:
        taken = samples[str(count)]
        rate = median([s["steps_per_second"] for s in taken])
        commits = median([s["commits_per_second"] for s in taken])
        efficiency = rate / (count * one)
        found.append(Figure(
            f"processes_{count}", f"replay, {result['runs']} runs x {result['steps']} steps, "
                                  f"{count} engine process{'es' if count > 1 else ''}",
            rate, "steps/s",
            note=f"{rate / count:,.0f} steps/s per process, scaling efficiency "
                 f"{efficiency:.2f}, {commits:,.0f} server commits/s",
            detail={"processes": count, "steps_per_second_per_process": rate / count,
                    "efficiency": efficiency, "commits_per_second": commits,
                    "samples": taken}))
    for figure in found:
        figure.judged = False  # no targets
    return {figure.key: figure for figure in found}


def table(result: dict[str, Any], found: dict[str, Figure]) -> str:
    head = ["engine processes", "steps/s", "per process", "scaling efficiency",
            "server commits/s", "steps per worker (last repetition)"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for count in result["processes"]:
        figure = found[f"processes_{count}"]
        detail = figure.detail
        executed = detail["samples"][-1]["executed"]
        lines.append("| " + " | ".join([
            str(count), f"{figure.value:,.0f}", f"{detail['steps_per_second_per_process']:,.0f}",
            f"{detail['efficiency']:.2f}", f"{detail['commits_per_second']:,.0f}",
            ", ".join(f"{n:,}" for n in executed)]) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help=f"a superuser's postgresql:// URL "
                                               f"(default: ${' or $'.join(ENV_VARS)})")
    parser.add_argument("--quick", "--smoke", action="store_true",
                        help="tiny sizes: checks the script, measures nothing")
    parser.add_argument("--repeat", type=int, default=None,
                        help="repetitions; the median is reported (default 3, quick 1)")
    parser.add_argument("--durability", choices=("fsync", "none"), default="fsync",
                        help="of the engines and the floor (default: fsync)")
    parser.add_argument("--max-runs", type=int, default=MAX_RUNS,
                        help=f"each worker's max_runs; 0: no limit (default {MAX_RUNS})")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a worker process's name
    args = parser.parse_args()
    if args.worker:
        return worker_main(args)
    url = usable_server(parser, args.url)
    import psycopg
    server = Server(url)
    try:
        settings = server.settings()
        before = machine()
        result = measure(args, server)
        after = machine()
    finally:
        server.close()
    found = figures(result)
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    sequential_figure = found["sequential"]
    print(f"\nreplay on PostgreSQL, several engine processes on one schema: "
          f"{result['runs']} runs x {result['steps']} steps (async steps), max_runs="
          f"{result['max_runs'] or 'none'} per worker, durability={args.durability}, median "
          f"of {result['repeat']}{' (quick: tiny sizes, measures nothing)' if args.quick else ''}")
    print(f"machine: {after['cpus']} CPUs ({after['cpu']}), Python {after['python']}, "
          f"psycopg {psycopg.__version__}, trio {after['trio']}, replay {after['replay']}; "
          f"load average (1 min) {before['loadavg_1m']} before, {after['loadavg_1m']} "
          f"after; {date}")
    print(f"server: PostgreSQL {settings['server_version']} at {server.shown} "
          f"(fsync={settings['fsync']}, synchronous_commit={settings['synchronous_commit']}, "
          f"commit_delay={settings['commit_delay']}); the engine processes, the server and "
          f"this script share the machine\n")
    print(f"sequential: {fmt(sequential_figure.value)} ms/step, one run of "
          f"{result['sequential_steps']} steps; floor {fmt(found['floor'].value)} ms/commit "
          f"(one autocommit INSERT per step); {sequential_figure.ratio:.2f}x the floor\n")
    print(table(result, found))
    print("\nscaling efficiency: steps/s(N) / (N x steps/s(1)); server commits/s: the "
          "database's xact_commit delta over the window (every transaction, read-only ones "
          "too). No targets: the figures are for information.")
    print_json({"benchmark": "pg_workers", "quick": args.quick}, args.durability, date,
               (before, after), server, settings, found, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
