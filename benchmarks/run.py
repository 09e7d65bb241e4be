"""Run every benchmark and print one table of figures, floors, ratios and targets.

Each benchmark script runs in its own process (so one's memory and threads do not
disturb the next) and ends its output with a JSON line; this script collects them,
prints one Markdown table (figure, replay, floor, ratio, wide floor, target, pass) and
one JSON line with every figure.

The floor is the cheapest durable commit DuckDB offers for one small record: one
autocommit INSERT of a 3-column row per step into a fresh file in the same scratch
directory, with the same durability, measured by each script in the same process and
minutes as replay (see `_floor.py`). Every ratio and target is computed against it.
The wide floor, the same loop writing replay's own 13-column event row into its
indexed table, is shown beside it for information. The JSON line carries both, per
figure and (as ms per commit) for the whole run. Usage:

    python benchmarks/run.py                 # the full suite, a few minutes
    python benchmarks/run.py --smoke         # tiny sizes: checks the scripts work
    python benchmarks/run.py --only groups   # some scripts only
    python benchmarks/run.py --strict        # exit 1 when a target is missed

Exit status: 0 when every script ran and reported its figures (targets missed or
not, unless ``--strict``), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _floor import NARROW_LABEL, WIDE_LABEL
from _report import Figure, Target, fmt, last_json, machine, table, warn

HERE = Path(__file__).resolve().parent

# Script -> the figures it must report.
SCRIPTS: dict[str, tuple[str, ...]] = {
    "throughput": tuple(
        [f"sequential_{kind}" for kind in ("sync", "async")]
        + [f"sequential_runs_{kind}" for kind in ("sync", "async")]
        + [f"concurrent_{n}_{kind}" for kind in ("sync", "async") for n in (10, 100, 1000)]
    ),
    "replay_cost": ("replay_step", "resume", "replay_step_settled", "resume_settled"),
    "wakeup": ("wakeup",),
    "parked_memory": ("parked_memory", "parked_memory_rss"),
    "big_file": ("history_1m", "open_1m"),
    "groups": ("group_all_1000", "children_1000"),
    "pure": ("pure_100_sync", "pure_100_async", "pure_1000_sync"),
    "busy_thread": ("busy_thread_async", "busy_thread_sync"),
}
PARKED_TARGET = Target("value", "<=", 5.0, "<= 5 KB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; measures nothing")
    parser.add_argument("--durability", choices=("fsync", "none"), default="fsync")
    parser.add_argument("--repeat", type=int, default=None,
                        help="passed on to every script")
    parser.add_argument("--only", action="append", choices=sorted(SCRIPTS),
                        help="run only this script (may be repeated)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--verbose", action="store_true", help="also print each script's table")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds each script may take")
    args = parser.parse_args()

    before = machine()
    figures: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for script in args.only or list(SCRIPTS):
        found, problem = run_script(script, args)
        figures.update(found)
        if problem:
            problems.append(problem)
        missing = [key for key in SCRIPTS[script] if key not in found]
        if missing and not problem:
            problems.append(f"{script}: no figure {', '.join(missing)}")

    shown = [as_figure(key, data) for key, data in figures.items()]
    floors = floors_of(figures)
    after = machine()
    print(f"\nreplay benchmarks (durability={args.durability}"
          f"{', smoke: tiny sizes, targets not judged' if args.smoke else ''})")
    print(f"machine: {after['cpus']} CPUs ({after['cpu']}), Python {after['python']}, "
          f"DuckDB {after['duckdb']}, trio {after['trio']}, replay {after['replay']}; "
          f"load average (1 min) {before['loadavg_1m']} before, {after['loadavg_1m']} after")
    if floors:
        print(f"floor: {fmt(floors['narrow_ms_per_commit'])} ms per durable commit "
              f"({NARROW_LABEL}); wide floor, for information: "
              f"{fmt(floors['wide_ms_per_commit'])} ms ({WIDE_LABEL}); "
              f"from {floors['from']}")
    print()
    print(table(shown))
    judged = [f for f in shown if f.passed is not None]
    missed = [f.key for f in judged if not f.passed]
    print(f"\n{len(judged) - len(missed)} of {len(judged)} targets met"
          + (f"; missed: {', '.join(missed)}" if missed else ""))
    for problem in problems:
        warn(f"problem: {problem}")
    print(json.dumps({
        "suite": "replay", "smoke": args.smoke, "durability": args.durability,
        "machine": after, "loadavg_1m_before": before["loadavg_1m"],
        "floors": floors, "figures": figures, "problems": problems,
        "targets_met": len(judged) - len(missed), "targets_judged": len(judged),
    }), flush=True)
    if problems:
        return 1
    return 1 if args.strict and missed else 0


def run_script(script: str, args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """Run one script; return its figures by key, and a problem if it failed."""
    path = HERE / f"{script}.py"
    if not path.exists():
        return {}, f"{script}: {path} does not exist"
    command = [sys.executable, str(path)]
    if script != "parked_memory":  # its engine always runs with durability="none"
        command += ["--durability", args.durability]
        if args.repeat is not None:
            command += ["--repeat", str(args.repeat)]
    if args.smoke:
        command.append("--smoke")
        if script == "parked_memory":
            command += ["--cache-sizes", "1000"]  # one traced child instead of two
    began = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout,
                              cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return {}, f"{script}: no result within {args.timeout:g} s"
    warn(f"{script}: {time.perf_counter() - began:.1f} s")
    if args.verbose or done.returncode != 0:
        print(done.stdout, end="")
    if done.stderr.strip():
        warn(done.stderr.rstrip())
    if done.returncode != 0:
        return {}, f"{script}: exit status {done.returncode}"
    result = last_json(done.stdout)
    if result is None:
        return {}, f"{script}: no JSON line in its output"
    if script == "parked_memory":
        return parked_figures(result, args.smoke)
    return dict(result.get("figures", {})), None


def parked_figures(result: dict[str, Any], smoke: bool) -> tuple[dict[str, Any], str | None]:
    """The figures of `parked_memory.py` (another script, with its own JSON shape).

    It measures with the default generator cache (1000) and without one. The judged
    figure is the default cache's Python allocations per parked run (tracemalloc, after
    a garbage collection: what the engine keeps), the same verdict as the script's own.
    The resident set per run is shown beside it without a target: it also counts
    DuckDB's share and, mostly, the allocator keeping the peak of starting 10,000 runs
    at once.
    """
    figures = result.get("figures")
    if isinstance(figures, dict) and "parked_memory" in figures:
        return dict(figures), None
    results = [r for r in result.get("results", []) if isinstance(r, dict)]
    if not results:
        return {}, "parked_memory: no results in its JSON line"
    chosen = next((r for r in results if r.get("cache_size") == 1000), results[0])
    python, rss = chosen.get("python_bytes_per_run"), chosen.get("rss_bytes_per_run")
    if not isinstance(python, int | float) or not isinstance(rss, int | float):
        return {}, "parked_memory: no python_bytes_per_run or rss_bytes_per_run in its JSON"
    runs, cache = chosen.get("n"), chosen.get("cache_size")
    others = "; ".join(
        f"cache_size={r.get('cache_size')}: {_kb(r.get('python_bytes_per_run'))} Python"
        for r in results if r is not chosen)
    peak, duckdb = chosen.get("python_peak_bytes_per_run"), chosen.get("duckdb_bytes_per_run")
    rss_note = "; ".join(part for part in (
        f"Python peak while starting {_kb(peak)}" if peak is not None else "",
        f"DuckDB {_kb(duckdb)}" if duckdb is not None else "") if part)
    found = {
        "parked_memory": Figure(
            "parked_memory", f"parked run memory, Python heap ({runs:,} suspended, cache {cache})",
            python / 1024, "KB/run", PARKED_TARGET, note=others, detail=chosen,
            judged=not smoke),
        "parked_memory_rss": Figure(
            "parked_memory_rss", f"parked run memory, process RSS ({runs:,} suspended)",
            rss / 1024, "KB/run", note=rss_note, detail=chosen, judged=not smoke),
    }
    return {key: figure.as_json() for key, figure in found.items()}, None


def _kb(value: Any) -> str:
    return f"{value / 1024:.2f} KB" if isinstance(value, int | float) else "?"


def floors_of(figures: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Both floors in ms per durable commit, from the first figure that carries them.

    The sequential throughput figure comes first (its floor is measured with the most
    commits); figures in steps per second are converted.
    """
    keys = sorted(figures, key=lambda key: key != "sequential_sync")
    for key in keys:
        data = figures[key]
        narrow, wide, unit = data.get("floor"), data.get("wide_floor"), data.get("unit")
        if not narrow or not wide:
            continue
        if unit == "steps/s":
            narrow, wide = 1000 / narrow, 1000 / wide
        elif unit not in ("ms/step", "ms"):
            continue
        return {"narrow_ms_per_commit": narrow, "wide_ms_per_commit": wide, "from": key}
    return None


def as_figure(key: str, data: dict[str, Any]) -> Figure:
    target = data.get("target")
    figure = Figure(key, data.get("label", key), float(data["value"]), data.get("unit", ""),
                    Target(**target) if target else None, floor=data.get("floor"),
                    note=data.get("note", ""), wide_floor=data.get("wide_floor"))
    figure.judged = data.get("pass") is not None
    return figure


if __name__ == "__main__":
    sys.exit(main())
