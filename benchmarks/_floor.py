"""The raw-DuckDB floor: one autocommit INSERT per step on a fresh file.

This is what a program that records each step durably with DuckDB and nothing else
pays: one parameterised `INSERT` of one event row, in autocommit mode, so each step is
one transaction and (with fsync) one `fdatasync` of the WAL. The table is replay's own
(`replay_event_log` with its `run_id` index), created by opening and closing an engine
on the fresh file, so the floor writes the same row shape into the same schema; the row
is what replay records for a completed step. Durability matches the engine's:
``fsync_mode = 'STANDARD'`` for ``durability="fsync"``, ``'NONE'`` for ``"none"``.

Benchmarks measure the floor in the same process and the same minutes as replay, and
report ratios, which are far less sensitive to the machine and its load than the
absolute numbers.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import msgpack
import trio

import replay

_INSERT = (
    "INSERT INTO replay_event_log (seq, run_id, workflow, key, kind, event, attempt, value, "
    "value_json, recorded_at, duration_ms, name, run_state) "
    "VALUES (?, ?, ?, ?, 'step', 'completed', 1, ?, ?, ?, ?, ?, 'running')"
)


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


def floor_run(steps: int, durability: str) -> tuple[float, list[float]]:
    """Record `steps` steps with one autocommit INSERT each on a fresh file.

    Returns:
        The loop's wall time in seconds, and the seconds each INSERT took.
    """
    with scratch_dir() as directory:
        path = directory / "floor.duckdb"
        create_replay_file(path)
        con = duckdb.connect(str(path))
        try:
            con.execute(f"SET fsync_mode = '{'NONE' if durability == 'none' else 'STANDARD'}'")
            run_id = "f" * 32
            latencies = []
            start = time.perf_counter()
            for i in range(steps):
                value = {"i": i}
                params = [i + 1, run_id, "bench.steps", f"step:{i}", msgpack.packb(value),
                          f'{{"i": {i}}}', datetime.now(UTC), 0.01, "bench.noop"]
                began = time.perf_counter()
                con.execute(_INSERT, params)
                latencies.append(time.perf_counter() - began)
            return time.perf_counter() - start, latencies
        finally:
            con.close()


def floor_seconds_per_step(steps: int, durability: str) -> float:
    """Seconds per step of the floor: the loop's wall time over `steps`."""
    return floor_run(steps, durability)[0] / steps
