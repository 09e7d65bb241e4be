"""The raw-DuckDB floors: the cheapest durable commit of one small record, and replay's row.

**The floor** is the cheapest durable commit DuckDB offers for one small record: a
narrow row ``(seq BIGINT, run_id VARCHAR, value BLOB)`` (the value is the step's
msgpack-encoded result) in a table without an index, one autocommit statement per
step, so each step is one transaction and (with fsync) one ``fdatasync`` of the WAL.
It runs on a fresh file in the caller's scratch directory (same file system), in the
same process and the same minutes as replay's measurement, with the engine's
durability: ``fsync_mode = 'STANDARD'`` for ``durability="fsync"``, ``'NONE'`` for
``"none"``. Every ratio and target is computed against it.

The statement is an ``INSERT`` parsed once (``con.extract_statements(sql)[0]``) and
executed with each step's parameters. The alternatives, measured with
``python benchmarks/_floor.py --steps 300 --rounds 5`` on the project's 2-vCPU machine
(DuckDB 2.0.1, load average 1.7-2.0, medians of 5 interleaved samples), in ms per
durable commit:

| way to commit one narrow row | fsync | no fsync |
| --- | ---: | ---: |
| ``INSERT`` parsed once, executed with parameters | **0.92** | **0.53** |
| Appender, ``append_row`` + ``flush()`` per row | 1.08 | 0.60 |
| ``con.execute("INSERT ... VALUES (?, ?, ?)", params)`` | 1.10 | 0.77 |
| ``PREPARE`` once, ``EXECUTE put(...)`` with literals | 1.23 | 0.69 |
| ``executemany`` of one row | 1.45 | 0.97 |
| for information: replay's wide row (below) | 2.17 | 1.43 |

All make exactly one ``fdatasync`` per row (strace: 200 rows, 205 calls), so the
differences are DuckDB's CPU per statement. The pre-parsed ``INSERT`` was the cheapest
in every comparison made (by 0.05-0.2 ms: the parse it skips; earlier runs of 500-1,000
commits put it and the Appender within this machine's +-20 % noise with fsync, and the
``INSERT`` ahead by 0.1 ms without), so it is the floor.

**The wide floor**, for information, is the same loop writing the row replay records
for a completed step (13 columns: JSON rendering, timestamps, duration, name) into
replay's own ``replay_event_log`` with its ``run_id`` index, created by opening and
closing an engine on the fresh file. The difference between the two is the price of
replay's row shape, not of the commit.

Run ``python benchmarks/_floor.py`` to measure the alternatives again.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import msgpack
import trio

import replay

NARROW_TABLE = "CREATE TABLE floor_log (seq BIGINT, run_id VARCHAR, value BLOB)"
NARROW_INSERT = "INSERT INTO floor_log VALUES (?, ?, ?)"
NARROW_LABEL = "one autocommit INSERT of a 3-column row (no index) per step"
WIDE_LABEL = "replay's 13-column event row into its indexed table per step"

_WIDE_INSERT = (
    "INSERT INTO replay_event_log (seq, run_id, workflow, key, kind, event, attempt, value, "
    "value_json, recorded_at, duration_ms, name, run_state) "
    "VALUES (?, ?, ?, ?, 'step', 'completed', 1, ?, ?, ?, ?, ?, 'running')"
)
_RUN_ID = "f" * 32


@dataclass(frozen=True)
class Floors:
    """Seconds per durable commit of the floor (narrow row) and of the wide floor."""

    narrow: float
    wide: float


@contextlib.contextmanager
def scratch_dir(prefix: str = "replay-bench-") -> Iterator[Path]:
    """A fresh directory under the temp dir, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def create_replay_file(path: Path, durability: str = "none") -> None:
    """Create an empty replay database at `path` (the engine writes its own schema)."""

    async def main() -> None:
        async with replay.open_engine(path, workflows=[], durability=durability):
            pass

    trio.run(main)


def _fsync_mode(durability: str) -> str:
    return "NONE" if durability == "none" else "STANDARD"


@contextlib.contextmanager
def _fresh(directory: Path | None, name: str, durability: str, wide: bool
           ) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to a fresh file named `name` in `directory` (or a scratch dir)."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = stack.enter_context(scratch_dir())
        path = directory / name
        for leftover in (path, path.with_name(path.name + ".wal")):
            leftover.unlink(missing_ok=True)
        if wide:
            create_replay_file(path)
        con = duckdb.connect(str(path))
        stack.callback(con.close)
        con.execute(f"SET fsync_mode = '{_fsync_mode(durability)}'")
        if not wide:
            con.execute(NARROW_TABLE)
        yield con


def narrow_run(steps: int, durability: str, directory: Path | None = None
               ) -> tuple[float, list[float]]:
    """Record `steps` steps as narrow rows, one durable commit each, on a fresh file.

    Returns:
        The loop's wall time in seconds, and the seconds each commit took.
    """
    with _fresh(directory, "floor.duckdb", durability, wide=False) as con:
        statement = con.extract_statements(NARROW_INSERT)[0]
        latencies = []
        start = time.perf_counter()
        for i in range(steps):
            params = [i + 1, _RUN_ID, msgpack.packb({"i": i})]
            began = time.perf_counter()
            con.execute(statement, params)
            latencies.append(time.perf_counter() - began)
        return time.perf_counter() - start, latencies


def wide_run(steps: int, durability: str, directory: Path | None = None
             ) -> tuple[float, list[float]]:
    """Record `steps` steps as replay's own event rows, one durable commit each."""
    with _fresh(directory, "wide-floor.duckdb", durability, wide=True) as con:
        latencies = []
        start = time.perf_counter()
        for i in range(steps):
            params = [i + 1, _RUN_ID, "bench.steps", f"step:{i}", msgpack.packb({"i": i}),
                      f'{{"i": {i}}}', datetime.now(UTC), 0.01, "bench.noop"]
            began = time.perf_counter()
            con.execute(_WIDE_INSERT, params)
            latencies.append(time.perf_counter() - began)
        return time.perf_counter() - start, latencies


def floor_seconds_per_step(steps: int, durability: str, directory: Path | None = None) -> float:
    """Seconds per step of the floor (narrow row): the loop's wall time over `steps`."""
    return narrow_run(steps, durability, directory)[0] / steps


def floors_seconds_per_step(steps: int, durability: str, directory: Path | None = None
                            ) -> Floors:
    """Seconds per step of the floor and of the wide floor, measured one after the other."""
    narrow = narrow_run(steps, durability, directory)[0] / steps
    wide = wide_run(steps, durability, directory)[0] / steps
    return Floors(narrow, wide)


# -- the alternatives, measured by `python benchmarks/_floor.py` --

def _alternatives() -> dict[str, Callable[[duckdb.DuckDBPyConnection, int], None]]:
    def parsed_once(con: duckdb.DuckDBPyConnection, steps: int) -> None:
        statement = con.extract_statements(NARROW_INSERT)[0]
        for i in range(steps):
            con.execute(statement, [i, _RUN_ID, msgpack.packb({"i": i})])

    def execute(con: duckdb.DuckDBPyConnection, steps: int) -> None:
        for i in range(steps):
            con.execute(NARROW_INSERT, [i, _RUN_ID, msgpack.packb({"i": i})])

    def appender(con: duckdb.DuckDBPyConnection, steps: int) -> None:
        rows: Any = con.appender("floor_log")
        for i in range(steps):
            rows.append_row(i, _RUN_ID, msgpack.packb({"i": i}))
            rows.flush()

    def prepared(con: duckdb.DuckDBPyConnection, steps: int) -> None:
        con.execute("PREPARE put AS INSERT INTO floor_log VALUES ($1, $2, $3)")
        for i in range(steps):
            con.execute(f"EXECUTE put({i}, '{_RUN_ID}', '\\x81\\xa1i\\x01'::BLOB)")

    def executemany(con: duckdb.DuckDBPyConnection, steps: int) -> None:
        for i in range(steps):
            con.executemany(NARROW_INSERT, [[i, _RUN_ID, msgpack.packb({"i": i})]])

    return {"INSERT parsed once": parsed_once, "execute(INSERT, params)": execute,
            "Appender append_row + flush": appender, "PREPARE / EXECUTE": prepared,
            "executemany of 1 row": executemany}


def compare(steps: int, rounds: int, durability: str) -> dict[str, float]:
    """Median ms per durable commit of each way to commit one narrow row, interleaved."""
    samples: dict[str, list[float]] = {}
    with scratch_dir() as directory:
        for _ in range(rounds):
            for name, loop in _alternatives().items():
                with _fresh(directory, "alt.duckdb", durability, wide=False) as con:
                    began = time.perf_counter()
                    loop(con, steps)
                    samples.setdefault(name, []).append((time.perf_counter() - began) / steps)
            samples.setdefault("wide row (for information)", []).append(
                wide_run(steps, durability, directory)[0] / steps)
    return {name: statistics.median(values) * 1000 for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure the ways to commit one small row.")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--durability", choices=("fsync", "none"), default="fsync")
    args = parser.parse_args()
    for name, ms in sorted(compare(args.steps, args.rounds, args.durability).items(),
                           key=lambda item: item[1]):
        print(f"{name:28s} {ms:.3f} ms per durable commit")


if __name__ == "__main__":
    main()
