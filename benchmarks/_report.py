"""Figures, targets, the table and the JSON line every benchmark script prints.

A `Figure` is one measured number with, where it applies, the raw-DuckDB floor it is
compared with (the cheapest durable commit of a narrow row, see `_floor.py`), the ratio
of the two, the wide floor beside it for information (replay's own row shape, same
loop), and its target. Each script prints its figures as a table for people and as one
JSON line (the last line of its output) for `run.py` and for anyone tracking the
numbers over time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tracemalloc
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import trio

import replay


@dataclass(frozen=True)
class Target:
    """A target: `on` ("value" or "ratio") must be `op` ("<=" or ">=") `limit`."""

    on: str
    op: str
    limit: float
    text: str

    def holds(self, value: float, ratio: float | None) -> bool | None:
        checked = value if self.on == "value" else ratio
        if checked is None:
            return None
        return checked <= self.limit if self.op == "<=" else checked >= self.limit


@dataclass
class Figure:
    """One measured number, its floor and ratio where they apply, and its target."""

    key: str
    label: str
    value: float
    unit: str
    target: Target | None = None
    floor: float | None = None
    note: str = ""
    # For information: the same floor writing replay's wide event row (never judged).
    wide_floor: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    # False in smoke mode: tiny sizes say nothing about the targets.
    judged: bool = True

    @property
    def ratio(self) -> float | None:
        if self.floor is None or self.floor == 0:
            return None
        return self.value / self.floor

    @property
    def wide_ratio(self) -> float | None:
        if self.wide_floor is None or self.wide_floor == 0:
            return None
        return self.value / self.wide_floor

    @property
    def passed(self) -> bool | None:
        if self.target is None or not self.judged:
            return None
        return self.target.holds(self.value, self.ratio)

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label, "value": self.value, "unit": self.unit,
            "floor": self.floor, "ratio": self.ratio,
            "wide_floor": self.wide_floor, "wide_ratio": self.wide_ratio,
            "target": None if self.target is None else asdict(self.target),
            "pass": self.passed, "note": self.note, "detail": self.detail,
        }


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options every benchmark script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: checks that the script works, measures nothing")
    parser.add_argument("--durability", choices=("fsync", "none"), default="fsync",
                        help="durability of the engine and of the floor (default: fsync)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="measurements per figure; the median is reported")
    return parser.parse_args(argv)


def repeats(args: argparse.Namespace, full: int) -> int:
    """How many times to measure: `--repeat`, else 1 in smoke mode, else `full`."""
    if args.repeat is not None:
        return max(1, args.repeat)
    return 1 if args.smoke else full


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` in 0..1) of `values`."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return float(ordered[rank])


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info
                          if line.startswith("model name")), "")
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(),
        "duckdb": duckdb.__version__, "trio": trio.__version__,
        "replay": replay.__version__, "loadavg_1m": round(load[0], 2),
    }


def fmt(number: float | None) -> str:
    """A number with about three significant digits."""
    if number is None:
        return "-"
    size = abs(number)
    if size >= 1000:
        return f"{number:,.0f}"
    if size >= 100:
        return f"{number:.0f}"
    if size >= 10:
        return f"{number:.1f}"
    return f"{number:.2f}" if size >= 1 else f"{number:.3f}"


def table(figures: Sequence[Figure]) -> str:
    """The figures as a Markdown table."""
    head = ["figure", "replay", "floor", "ratio", "wide floor", "target", "pass", "note"]
    rows = [head, ["---"] * len(head)]
    for figure in figures:
        passed = {None: "-", True: "PASS", False: "FAIL"}[figure.passed]
        rows.append([
            figure.label, f"{fmt(figure.value)} {figure.unit}",
            "-" if figure.floor is None else f"{fmt(figure.floor)} {figure.unit}",
            "-" if figure.ratio is None else f"{figure.ratio:.2f}x",
            "-" if figure.wide_floor is None
            else f"{fmt(figure.wide_floor)} {figure.unit} ({figure.wide_ratio:.2f}x)",
            "-" if figure.target is None else figure.target.text, passed, figure.note,
        ])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def report(benchmark: str, args: argparse.Namespace, figures: Sequence[Figure]) -> None:
    """Print the table, then the JSON line (always the last line of the output)."""
    for figure in figures:
        figure.judged = not args.smoke
    print(f"\n{benchmark} (durability={args.durability}{', smoke' if args.smoke else ''})\n")
    print(table(figures))
    print(json_line(benchmark, args, figures), flush=True)


def json_line(benchmark: str, args: argparse.Namespace, figures: Sequence[Figure]) -> str:
    return json.dumps({
        "benchmark": benchmark, "smoke": args.smoke, "durability": args.durability,
        "machine": machine(), "figures": {f.key: f.as_json() for f in figures},
    })


def last_json(text: str) -> dict[str, Any] | None:
    """The last line of `text` that is a JSON object, parsed."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                found = json.loads(line)
            except ValueError:
                continue
            if isinstance(found, dict):
                return found
    return None


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def allocation_sites(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, runs: int,
                     top: int, by_traceback: bool = True, script: str = ""
                     ) -> dict[str, list[dict[str, Any]]]:
    """The biggest growths between two tracemalloc snapshots, per run.

    By allocating line, and by traceback when `by_traceback` (the snapshots must then
    hold more than one frame); a traceback keeps replay's frames and those of `script`.
    """
    noise = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(noise), after.filter_traces(noise)
    sites: dict[str, list[dict[str, Any]]] = {}
    for key_type in ("lineno", "traceback") if by_traceback else ("lineno",):
        stats = after.compare_to(before, key_type)
        stats.sort(key=lambda stat: stat.size_diff, reverse=True)
        sites[key_type] = [
            {"bytes_per_run": stat.size_diff / runs, "blocks_per_run": stat.count_diff / runs,
             "where": _describe(stat.traceback, key_type, script)}
            for stat in stats[:top]
        ]
    return sites


def _describe(traceback: tracemalloc.Traceback, key_type: str, script: str) -> list[str]:
    """The allocating line, or the frames of a traceback that are replay's or the script's."""
    frames = list(traceback)[::-1]  # most recent call first: the allocating line
    if key_type == "lineno":
        frames = frames[:1]
    else:
        here = [f for f in frames[1:] if "/replay/" in f.filename or f.filename == script]
        frames = frames[:1] + here[:4]
    return [f"{_short(frame.filename)}:{frame.lineno}" for frame in frames]


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/replay/", "/lib/python", "/benchmarks/"):
        if marker in filename:
            return filename[filename.index(marker) + 1:]
    return Path(filename).name
