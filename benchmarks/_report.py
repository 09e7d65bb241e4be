"""Figures, targets, the table and the JSON line every benchmark script prints.

A `Figure` is one measured number with, where it applies, the raw-DuckDB floor it is
compared with, the ratio of the two, and the target of issue 6. Each script prints its
figures as a table for people and as one JSON line (the last line of its output) for
`run.py` and for anyone tracking the numbers over time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
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
    detail: dict[str, Any] = field(default_factory=dict)
    # False in smoke mode: tiny sizes say nothing about the targets.
    judged: bool = True

    @property
    def ratio(self) -> float | None:
        if self.floor is None or self.floor == 0:
            return None
        return self.value / self.floor

    @property
    def passed(self) -> bool | None:
        if self.target is None or not self.judged:
            return None
        return self.target.holds(self.value, self.ratio)

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label, "value": self.value, "unit": self.unit,
            "floor": self.floor, "ratio": self.ratio,
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
    head = ["figure", "replay", "floor", "ratio", "target", "pass", "note"]
    rows = [head, ["---"] * len(head)]
    for figure in figures:
        passed = {None: "-", True: "PASS", False: "FAIL"}[figure.passed]
        rows.append([
            figure.label, f"{fmt(figure.value)} {figure.unit}",
            "-" if figure.floor is None else f"{fmt(figure.floor)} {figure.unit}",
            "-" if figure.ratio is None else f"{figure.ratio:.2f}x",
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
