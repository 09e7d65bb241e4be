"""A big file: loading one run's history, and opening the engine, at 1,000,000 events.

The file holds 83,334 runs of 12 events each (1,000,008 events): 90 % completed
orders (``run/started``, 10 ``step/completed``, ``run/completed``), 5 % suspended on a
signal and 5 % sleeping until 2100, after 10 steps each. Rows are interleaved as if
1,000 runs were in flight at a time (the ``run_id`` index matters: one run's 12 rows
are spread over 12,000 rows of the table).

How the file is made (fast, and with exactly the rows replay writes): an engine with
``durability="none"`` records one run of each of the three workflows below into a
scratch file; their 36 rows are the templates. Another engine creates the big file's
schema (so the DDL is replay's own), and one DuckDB ``INSERT ... SELECT`` copies the
templates 83,334 times into ``replay_event_log``, rewriting only ``run_id`` (32 hex
characters, like generated ids), ``seq`` (the interleaved order) and ``recorded_at``
(1 ms apart, ending in 2025). The file is cached under
``/tmp/replay-bench-cache/`` (keyed by size and by the schema a fresh engine creates)
and copied to a scratch file for every measurement, so the cache never changes.

Figures (durability as given; opening reads, it writes nothing here):

- history: ``await engine.history(run_id)`` of a completed 12-event run, median over
  30 runs spread through the file (target: at most 5 ms); the floor is the same
  ``SELECT ... WHERE run_id = ? ORDER BY seq`` on a raw DuckDB connection;
- open: from entering ``open_engine`` to its body running, median of 3 opens
  (target: at most 1 s); the floor is ``duckdb.connect`` of the file.

    python benchmarks/big_file.py [--smoke] [--durability fsync|none] [--repeat N]
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import trio
from _floor import create_replay_file, scratch_dir
from _report import Figure, Target, median, parse_args, percentile, repeats, report

import replay
from replay import Sleep, Step, Suspend

EVENTS = 1_000_000
SMOKE_EVENTS = 2_400
EVENTS_PER_RUN = 12
IN_FLIGHT = 1000
HISTORY_SAMPLES = 30
CACHE = Path("/tmp/replay-bench-cache")
TEMPLATES = ("bench.order", "bench.waiting", "bench.napping")
COLUMNS = (
    "seq, run_id, workflow, key, kind, event, attempt, value, value_json, error_type, "
    "error, recorded_at, duration_ms, wake_at, name, error_types, run_state, status_text, "
    "generation, code_version"
)


def reserve(i: int) -> dict[str, Any]:
    return {"item": i, "sku": f"sku-{i:05d}", "ok": True}


def _steps() -> Any:
    for i in range(10):
        yield Step(f"item:{i}", reserve, i)


@replay.workflow(name="bench.order")
def order(order_id: str) -> Any:
    yield from _steps()
    return {"order": order_id, "state": "done"}


@replay.workflow(name="bench.waiting")
def waiting(order_id: str) -> Any:
    yield from _steps()
    approved = yield Suspend("approval", status="waiting for a manager")
    return {"order": order_id, "approved": approved}


@replay.workflow(name="bench.napping")
def napping(order_id: str) -> Any:
    yield from _steps()
    yield Sleep("nap", until=datetime(2100, 1, 1, tzinfo=UTC))
    return {"order": order_id}


WORKFLOWS = [order, waiting, napping]


def template_rows(directory: Path) -> list[tuple[Any, ...]]:
    """Rows an engine records for one run of each workflow, tagged (template, order)."""
    path = directory / "templates.duckdb"

    async def record() -> None:
        async with replay.open_engine(path, workflows=WORKFLOWS, durability="none") as engine:
            for number, workflow in enumerate(WORKFLOWS):
                run = await engine.start(workflow, "order-1", run_id=f"template-{number}")
                # `wait()` waits a sleep through; the sleeping run is done once parked.
                while engine.status(run.run_id).state == "running":
                    await trio.sleep(0.001)

    trio.run(record)
    con = duckdb.connect(str(path))
    try:
        rows = con.execute(
            f"SELECT CAST(substr(run_id, 10) AS INTEGER) AS template, "
            f"row_number() OVER (PARTITION BY run_id ORDER BY seq) AS ord, {COLUMNS} "
            "FROM replay_event_log ORDER BY run_id, seq"
        ).fetchall()
    finally:
        con.close()
    counts = {t: sum(1 for row in rows if row[0] == t) for t in range(len(WORKFLOWS))}
    assert set(counts.values()) == {EVENTS_PER_RUN}, counts
    return rows


_GENERATE = f"""
INSERT INTO replay_event_log ({COLUMNS})
WITH runs AS (
    SELECT r AS n, md5('bench-run-' || r) AS run_id, r // {IN_FLIGHT} AS block,
           CASE WHEN r % 20 = 7 THEN 1 WHEN r % 20 = 13 THEN 2 ELSE 0 END AS template
    FROM range(?) AS numbers(r)
), laid_out AS (
    SELECT row_number() OVER (ORDER BY runs.block, t.ord, runs.n) AS seq, runs.run_id,
           t.workflow, t.key, t.kind, t.event, t.attempt, t.value, t.value_json,
           t.error_type, t.error, t.duration_ms, t.wake_at, t.name, t.error_types,
           t.run_state, t.status_text, t.generation, t.code_version
    FROM runs JOIN template_rows t USING (template)
)
SELECT seq, run_id, workflow, key, kind, event, attempt, value, value_json, error_type,
       error, TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_milliseconds(seq), duration_ms,
       wake_at, name, error_types, run_state, status_text, generation, code_version
FROM laid_out ORDER BY seq
"""


def fresh_templates() -> list[tuple[Any, ...]]:
    with scratch_dir() as directory:
        return template_rows(directory)


def generate(path: Path, runs: int, templates: list[tuple[Any, ...]]) -> None:
    """Write a file of `runs` runs x 12 events at `path` (see the module docstring)."""
    create_replay_file(path)
    con = duckdb.connect(str(path))
    try:
        con.execute("SET fsync_mode = 'NONE'")
        con.execute(
            "CREATE TEMP TABLE template_rows AS SELECT template, ord, * EXCLUDE (template, ord) "
            "FROM (SELECT 0 AS template, 0 AS ord, * FROM replay_event_log LIMIT 0)"
        )
        marks = ", ".join("?" * len(templates[0]))
        con.executemany(f"INSERT INTO template_rows VALUES ({marks})", templates)
        con.execute(_GENERATE, [runs])
        con.execute("CHECKPOINT")
    finally:
        con.close()


def schema_tag() -> str:
    """A short hash of the schema a fresh engine creates (a changed schema: a new file)."""
    with scratch_dir() as directory:
        path = directory / "schema.duckdb"
        create_replay_file(path)
        con = duckdb.connect(str(path))
        try:
            shape = con.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "ORDER BY table_name, ordinal_position"
            ).fetchall()
            shape += con.execute("SELECT name, value FROM replay_meta ORDER BY name").fetchall()
            shape += con.execute("SELECT sql FROM duckdb_indexes() ORDER BY index_name").fetchall()
        finally:
            con.close()
    return hashlib.sha256(repr(shape).encode()).hexdigest()[:12]


def cached_file(events: int) -> Path:
    """The cached file of at least `events` events, generated if missing.

    The cache key covers the schema a fresh engine creates, the rows it records for
    the templates (all but the columns rewritten per run) and this script, so a change
    to any of them makes a new file; older files of the same size are removed.
    """
    runs = math.ceil(events / EVENTS_PER_RUN)
    templates = fresh_templates()
    # Columns 2, 3, 13 and 14 of a template row (seq, run_id, recorded_at and
    # duration_ms) differ from one recording to the next.
    stable = [row[:2] + row[4:13] + row[15:] for row in templates]
    key = repr((schema_tag(), stable, Path(__file__).read_bytes())).encode()
    name = f"events-{runs * EVENTS_PER_RUN}-{hashlib.sha256(key).hexdigest()[:16]}.duckdb"
    path = CACHE / name
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        for old in CACHE.glob(f"events-{runs * EVENTS_PER_RUN}-*.duckdb"):
            old.unlink(missing_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        began = time.perf_counter()
        generate(partial, runs, templates)
        partial.rename(path)
        print(f"generated {path} in {time.perf_counter() - began:.1f} s", flush=True)
    return path


def sample_ids(runs: int, count: int) -> list[str]:
    """Ids of `count` completed runs spread evenly through the file."""
    numbers = [min(runs - 1, (k * runs) // count + 1) for k in range(count)]
    numbers = [n if n % 20 not in (7, 13) else n + 1 for n in numbers]
    return [hashlib.md5(f"bench-run-{n}".encode()).hexdigest() for n in numbers]


def raw_floor(path: Path, run_ids: list[str]) -> tuple[list[float], list[float]]:
    """Seconds of `duckdb.connect`, and of each raw history query, on the file."""
    opens, queries = [], []
    for _ in range(3):
        began = time.perf_counter()
        con = duckdb.connect(str(path))
        opens.append(time.perf_counter() - began)
        con.close()
    con = duckdb.connect(str(path))
    try:
        for run_id in run_ids:
            began = time.perf_counter()
            rows = con.execute(
                f"SELECT {COLUMNS} FROM replay_event_log WHERE run_id = ? ORDER BY seq",
                [run_id],
            ).fetchall()
            queries.append(time.perf_counter() - began)
            assert len(rows) == EVENTS_PER_RUN, (run_id, len(rows))
    finally:
        con.close()
    return opens, queries


async def engine_times(
    path: Path, durability: str, run_ids: list[str], opens: int
) -> tuple[list[float], list[float], int]:
    """Seconds of each open, of each `history` call, and how many runs the engine has."""
    opened, loaded, count = [], [], 0
    for attempt in range(opens):
        began = time.perf_counter()
        async with replay.open_engine(path, workflows=WORKFLOWS,
                                      durability=durability) as engine:
            opened.append(time.perf_counter() - began)
            if attempt == 0:
                count = len(await engine.runs(limit=10**9))
                for run_id in run_ids:
                    began = time.perf_counter()
                    events = await engine.history(run_id)
                    loaded.append(time.perf_counter() - began)
                    assert len(events) == EVENTS_PER_RUN, (run_id, len(events))
    return opened, loaded, count


def figures(args: Any) -> list[Figure]:
    events = SMOKE_EVENTS if args.smoke else EVENTS
    runs = math.ceil(events / EVENTS_PER_RUN)
    run_ids = sample_ids(runs, 5 if args.smoke else HISTORY_SAMPLES)
    with scratch_dir() as directory:
        work = directory / "big.duckdb"
        if args.smoke:
            generate(work, runs, fresh_templates())
        else:
            shutil.copyfile(cached_file(events), work)
        size_mb = work.stat().st_size / 1e6
        floor_opens, floor_queries = raw_floor(work, run_ids)
        opened, loaded, count = trio.run(engine_times, work, args.durability, run_ids,
                                         repeats(args, 3))
    assert count == runs, (count, runs)
    total = runs * EVENTS_PER_RUN
    return [
        Figure(
            "history_1m", f"history of one run ({EVENTS_PER_RUN} events) in {total:,} events",
            median(loaded) * 1000, "ms", Target("value", "<=", 5.0, "<= 5 ms"),
            floor=median(floor_queries) * 1000,
            note=f"p90 {percentile(loaded, 0.9) * 1000:.2f} ms; floor = raw SELECT",
            detail={"events": total, "seconds": loaded, "floor_seconds": floor_queries},
        ),
        Figure(
            "open_1m", f"engine open, {total:,} events, {runs:,} runs",
            median(opened), "s", Target("value", "<=", 1.0, "<= 1 s"),
            floor=median(floor_opens),
            note=f"file {size_mb:.0f} MB; floor = duckdb.connect",
            detail={"events": total, "runs": runs, "seconds": opened,
                    "floor_seconds": floor_opens, "file_mb": size_mb},
        ),
    ]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    report("big_file", args, figures(args))


if __name__ == "__main__":
    main()
