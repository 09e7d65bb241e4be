"""Finished runs cost no memory: the engine keeps only unfinished runs.

A run that finishes is forgotten once its task lets go; `status()` and `get_run()` of a
finished run read it from the file, and opening a file loads only the unfinished runs.
These figures check that, each measured in a fresh child process:

- heap: the Python heap (`tracemalloc`, after `gc.collect()`) a finished run leaves
  behind. An engine on a temporary file (``durability="none"``) runs a 3-step workflow
  (three async steps returning small dicts) 1,000 times to warm up; then tracing
  starts and 100,000 more runs go through in batches of 1,000 (each batch started at
  once in a trio nursery, every `run.result()` awaited, every `Run` handle dropped).
  The figure is the traced growth over the 100,000 runs (target: at most 200 bytes
  per run; whatever bounded set of recently finished runs the engine keeps counts
  too, spread over the 100,000). The biggest allocation sites by line are listed
  when it is over (``--frames 25`` lists them by traceback too, at 4 times the time).
- rss: the resident set (``/proc/self/statm``, no tracemalloc) after 100,000 finished
  runs over the one after 10,000, same batches, another child (target: at most 1.5).
- open: ``async with replay.open_engine(...)`` on a file of 1,000,000 finished runs
  and 1,000 suspended ones, from the call to the body running, median of 5 opens
  (target: at most 1 s; the floor is ``duckdb.connect`` of the file). Inside, the
  engine must list exactly the 1,000 suspended runs and answer ``completed`` for
  finished ones; `status()` of a finished run (median over 100 different runs; the
  floor is the raw ``SELECT`` of its rows) and `get_run()` of one (100 others) are
  timed too.

How the big file is made (fast, and with exactly the rows replay writes): an engine
records one run of each workflow below into a scratch file, its input an order id
made of placeholder characters; its rows are the templates. Another engine creates the
big file (so the schema and storage settings are the engine's own) and one DuckDB
``INSERT ... SELECT ... FROM range(...)`` copies the templates once per run into
``replay_event_log``, rewriting ``run_id`` (32 hex characters, like generated ids),
``seq`` (as if 1,000 runs were in flight at a time), ``recorded_at`` (1 ms apart,
increasing with ``seq``) and the order id inside every value (msgpack and JSON). Every
1,001st run is the suspended one. A few generated rows are checked against
`replay._codec.encode`. The file is cached under ``/tmp/replay-bench-cache/`` (keyed
by its size, the schema and storage format, the template rows and this script) and
copied to a scratch file for the measurement, so the cache never changes; ``--smoke``
builds a small one afresh.

    python benchmarks/finished_runs.py [--smoke] [--durability fsync|none] [--repeat N]
                                       [--top K] [--frames F]

``--durability`` applies to the opened big file; the heap and RSS engines always run
with ``durability="none"``. Prints a table, the allocation sites when the heap target
is missed, and one JSON line (the last line of output) with the figures and the
problems met (a failed child, a wrong answer); exit status 1 when there are problems.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import duckdb
import trio
from _floor import scratch_dir
from _report import (
    Figure,
    Target,
    allocation_sites,
    fmt,
    json_line,
    median,
    percentile,
    repeats,
    table,
    warn,
)

import replay
from replay import Step, Suspend
from replay._codec import decode, encode, to_json

HEAP_RUNS, SMOKE_HEAP_RUNS = 100_000, 2_000
WARM_UP, SMOKE_WARM_UP = 1_000, 200
RSS_FIRST, SMOKE_RSS_FIRST = 10_000, 200
BATCH = 1_000
FINISHED, SMOKE_FINISHED = 1_000_000, 20_000
UNFINISHED, SMOKE_UNFINISHED = 1_000, 100
SAMPLES, SMOKE_SAMPLES = 100, 10
IN_FLIGHT = 1_000
CHILD_TIMEOUT = 3600.0

HEAP_TARGET = Target("value", "<=", 200.0, "<= 200 B")
RSS_TARGET = Target("value", "<=", 1.5, "<= 1.5x")
OPEN_TARGET = Target("value", "<=", 1.0, "<= 1 s")

CACHE = Path("/tmp/replay-bench-cache")
PLACEHOLDER = "order-#######"  # the template runs' input: 13 characters, like order_id(n)
COLUMNS = (
    "seq, run_id, workflow, key, kind, event, attempt, value, value_json, error_type, "
    "error, recorded_at, duration_ms, wake_at, name, error_types, run_state, status_text"
)
FINISHED_STATES = ("completed", "failed", "cancelled")


async def line(order_id: str, number: int) -> dict[str, Any]:
    return {"order": order_id, "line": number, "ok": True}


@replay.workflow(name="bench.finished")
def finished(order_id: str) -> Any:
    for number in (1, 2, 3):
        yield Step(f"line:{number}", line, order_id, number)
    return {"order": order_id, "lines": 3}


@replay.workflow(name="bench.unfinished")
def unfinished(order_id: str) -> Any:
    yield Step("line:1", line, order_id, 1)
    approved = yield Suspend("approval", status="waiting for a manager")
    return {"order": order_id, "approved": approved}


WORKFLOWS = [finished, unfinished]


def order_id(number: int) -> str:
    return f"order-{number:07d}"


def expected_output(number: int) -> dict[str, Any]:
    return {"order": order_id(number), "lines": 3}


def big_run_id(number: int) -> str:
    """The id of run `number` in the big file (DuckDB's ``md5('bench-finished-' || r)``)."""
    return hashlib.md5(f"bench-finished-{number}".encode()).hexdigest()


def settle() -> None:
    for _ in range(3):
        gc.collect()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def duckdb_bytes(engine: replay.Engine) -> int | None:
    """DuckDB's own accounting of its memory, or None if unavailable (a private peek)."""
    try:
        from replay._engine._facade import internals

        rows = internals(engine).store._read(
            "SELECT sum(memory_usage_bytes) FROM duckdb_memory()", [])
        return int(rows[0][0] or 0)
    except Exception:
        return None


# --- children: finished runs through one engine -------------------------------------------


async def run_batches(engine: replay.Engine, first: int, count: int) -> None:
    """Run `count` runs of `finished`, `BATCH` at a time, each batch started at once."""

    async def one(number: int) -> None:
        run = await engine.start(finished, order_id(number))
        output = await run.result()
        if output != expected_output(number):
            raise AssertionError(f"run {run.run_id} returned {output!r}")

    end = first + count
    for start in range(first, end, BATCH):
        async with trio.open_nursery() as nursery:
            for number in range(start, min(start + BATCH, end)):
                nursery.start_soon(one, number)


async def heap_child(runs: int, warm_up: int, top: int, frames: int) -> dict[str, Any]:
    """Python heap growth over `runs` finished runs, after `warm_up` untraced ones.

    Tracing `frames` frames per allocation: 1 (the allocating line) slows the runs
    about 3.5 times, 25 (whole tracebacks) about 15 times.
    """
    with scratch_dir("replay-finished-") as directory:
        async with replay.open_engine(directory / "heap.duckdb", workflows=WORKFLOWS,
                                      durability="none") as engine:
            await run_batches(engine, 0, warm_up)
            settle()
            tracemalloc.start(frames)
            before = tracemalloc.take_snapshot()
            settle()
            before_bytes = tracemalloc.get_traced_memory()[0]
            began = time.perf_counter()
            await run_batches(engine, warm_up, runs)
            seconds = time.perf_counter() - began
            settle()
            after_bytes, peak_bytes = tracemalloc.get_traced_memory()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            listed = await engine.runs(state="completed", limit=1)
            state = engine.status(listed[0].run_id).state.value if listed else None
    return {
        "runs": runs, "warm_up": warm_up, "frames": frames, "seconds": seconds,
        "bytes": after_bytes - before_bytes, "peak_bytes": peak_bytes - before_bytes,
        "per_run": (after_bytes - before_bytes) / runs, "state_of_one": state,
        "sites": allocation_sites(before, after, runs, top, frames > 1, __file__),
    }


async def rss_child(first: int, last: int) -> dict[str, Any]:
    """The resident set after `first` finished runs, then at every `first` up to `last`."""
    samples: list[dict[str, Any]] = []
    with scratch_dir("replay-finished-") as directory:
        path = directory / "rss.duckdb"
        async with replay.open_engine(path, workflows=WORKFLOWS, durability="none") as engine:
            began, done = time.perf_counter(), 0
            while done < last:
                step = min(first, last - done)
                await run_batches(engine, done, step)
                done += step
                settle()
                samples.append({"runs": done, "rss": rss_bytes(), "duckdb": duckdb_bytes(engine),
                                "file": path.stat().st_size})
            seconds = time.perf_counter() - began
    return {"first": samples[0], "last": samples[-1], "samples": samples, "seconds": seconds}


async def open_child(path: str, durability: str, opens: int, unfinished_runs: int,
                     status_numbers: list[int], get_numbers: list[int]) -> dict[str, Any]:
    """Open times, and the reads of finished runs, on the big file."""
    opened: list[float] = []
    status_seconds: list[float] = []
    get_seconds: list[float] = []
    wrong: list[str] = []
    suspended = -1
    for attempt in range(opens):
        began = time.perf_counter()
        async with replay.open_engine(path, workflows=WORKFLOWS,
                                      durability=durability) as engine:
            opened.append(time.perf_counter() - began)
            if attempt:
                continue
            listed = await engine.runs(state="suspended", limit=2000)
            suspended = len(listed)
            if any(info.workflow != "bench.unfinished" for info in listed):
                wrong.append("a suspended run of another workflow")
            for number in status_numbers:
                run_id = big_run_id(number)
                began = time.perf_counter()
                info = engine.status(run_id)
                status_seconds.append(time.perf_counter() - began)
                if info.state.value != "completed" or info.output != expected_output(number):
                    wrong.append(f"status({run_id}) = {info.state.value}, {info.output!r}")
            for number in get_numbers:
                run_id = big_run_id(number)
                began = time.perf_counter()
                run = engine.get_run(run_id)
                get_seconds.append(time.perf_counter() - began)
                output = await run.result()
                if run.workflow != "bench.finished" or output != expected_output(number):
                    wrong.append(f"get_run({run_id}): {run.workflow}, {output!r}")
    if suspended != unfinished_runs:
        wrong.append(f"{suspended} suspended runs listed, {unfinished_runs} in the file")
    floor_opens: list[float] = []
    floor_queries: list[float] = []
    for _ in range(opens):
        began = time.perf_counter()
        con = duckdb.connect(path)
        floor_opens.append(time.perf_counter() - began)
        con.close()
    con = duckdb.connect(path)
    try:
        for number in status_numbers:
            began = time.perf_counter()
            rows = con.execute(
                f"SELECT {COLUMNS} FROM replay_event_log WHERE run_id = ? ORDER BY seq",
                [big_run_id(number)]).fetchall()
            floor_queries.append(time.perf_counter() - began)
            if not rows:
                wrong.append(f"no rows for run {number} in the raw query")
    finally:
        con.close()
    return {"opened": opened, "status": status_seconds, "get_run": get_seconds,
            "floor_opens": floor_opens, "floor_queries": floor_queries,
            "suspended": suspended, "wrong": wrong[:10]}


# --- the big file --------------------------------------------------------------------------


def template_rows(directory: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The rows an engine records for one run of each workflow, and its file's make.

    The make is the schema, the storage version and the DuckDB version.

    Each row is (template, ord, workflow, ..., status_text) with template 0 for the
    finished run and 1 for the suspended one.
    """
    path = directory / "templates.duckdb"

    async def record() -> None:
        async with replay.open_engine(path, workflows=WORKFLOWS, durability="none") as engine:
            run = await engine.start(finished, PLACEHOLDER, run_id="template-0")
            await run.result()
            run = await engine.start(unfinished, PLACEHOLDER, run_id="template-1")
            info = await run.wait()
            assert info.state.value == "suspended", info

    trio.run(record)
    con = duckdb.connect(str(path))
    try:
        rows = con.execute(
            "SELECT CAST(substr(run_id, 10) AS INTEGER) AS template, "
            "row_number() OVER (PARTITION BY run_id ORDER BY seq) AS ord, "
            "workflow, key, kind, event, attempt, value, CAST(value_json AS VARCHAR), "
            "error_type, error, duration_ms, wake_at, name, error_types, run_state, status_text "
            "FROM replay_event_log ORDER BY run_id, seq"
        ).fetchall()
        schema = con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "ORDER BY table_name, ordinal_position").fetchall()
        schema += con.execute("SELECT name, value FROM replay_meta ORDER BY name").fetchall()
        schema += con.execute("SELECT sql FROM duckdb_indexes() ORDER BY index_name").fetchall()
        # The storage format the engine creates files in, and the DuckDB writing them.
        schema += con.execute("SELECT tags FROM duckdb_databases() WHERE NOT internal").fetchall()
        schema.append((duckdb.__version__,))
    finally:
        con.close()
    for template, final in ((0, "completed"), (1, "suspended")):
        states = [row[15] for row in rows if row[0] == template and row[15] is not None]
        assert states and states[-1] == final, (template, states)
    return rows, schema


def split_values(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Template rows with the msgpack value cut around the placeholder: head, tail, cut."""
    placeholder = PLACEHOLDER.encode()
    split = []
    for row in rows:
        value: bytes | None = row[7]
        parts = [value] if value is None else bytes(value).split(placeholder)
        assert len(parts) <= 2, ("the placeholder is in a value twice", row)
        head, tail = parts[0], (parts[1] if len(parts) == 2 else None)
        split.append((*row[:7], head, tail, len(parts) == 2, *row[8:]))
    return split


_TEMPLATE_TABLE = """
CREATE TEMP TABLE template_rows (
    template INTEGER, ord BIGINT, workflow VARCHAR, key VARCHAR, kind VARCHAR,
    event VARCHAR, attempt INTEGER, value_head BLOB, value_tail BLOB, value_cut BOOLEAN,
    value_json VARCHAR, error_type VARCHAR, error VARCHAR, duration_ms DOUBLE,
    wake_at TIMESTAMPTZ, name VARCHAR, error_types VARCHAR, run_state VARCHAR,
    status_text VARCHAR
)
"""

# Parameters: the stride (every stride-th run is unfinished), the unfinished run's
# remainder, the number of runs, the placeholder.
_GENERATE = f"""
INSERT INTO replay_event_log ({COLUMNS})
WITH runs AS (
    SELECT r, md5('bench-finished-' || r) AS run_id, r // {IN_FLIGHT} AS block,
           CASE WHEN r % $1 = $2 THEN 1 ELSE 0 END AS template,
           'order-' || lpad(CAST(r AS VARCHAR), 7, '0') AS order_id
    FROM range($3) AS numbers(r)
), laid_out AS (
    SELECT row_number() OVER (ORDER BY runs.block, t.ord, runs.r) AS seq, runs.run_id,
           runs.order_id, t.*
    FROM runs JOIN template_rows t USING (template)
)
SELECT seq, run_id, workflow, key, kind, event, attempt,
       CASE WHEN value_cut THEN value_head || encode(order_id) || value_tail
            ELSE value_head END,
       CAST(replace(value_json, $4, order_id) AS JSON), error_type, error,
       TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_milliseconds(seq), duration_ms, wake_at,
       name, error_types, run_state, status_text
FROM laid_out ORDER BY seq
"""


def layout(finished_runs: int, unfinished_runs: int) -> tuple[int, int, int]:
    """(runs in all, stride, remainder): run r is unfinished when r % stride == remainder."""
    assert finished_runs % unfinished_runs == 0, (finished_runs, unfinished_runs)
    stride = finished_runs // unfinished_runs + 1
    total = finished_runs + unfinished_runs
    assert total < 10**7, "order ids have 7 digits"
    return total, stride, stride // 2


def generate(path: Path, finished_runs: int, unfinished_runs: int,
             templates: list[tuple[Any, ...]]) -> None:
    """Write the big file at `path` (see the module docstring)."""

    async def create() -> None:
        async with replay.open_engine(path, workflows=WORKFLOWS, durability="none"):
            pass

    trio.run(create)
    total, stride, remainder = layout(finished_runs, unfinished_runs)
    con = duckdb.connect(str(path))
    try:
        con.execute("SET fsync_mode = 'NONE'")
        con.execute("SET enable_progress_bar = false")
        con.execute(_TEMPLATE_TABLE)
        rows = split_values(templates)
        marks = ", ".join("?" * len(rows[0]))
        con.executemany(f"INSERT INTO template_rows VALUES ({marks})", rows)
        con.execute(_GENERATE, [stride, remainder, total, PLACEHOLDER])
        con.execute("CHECKPOINT")
        check_rows(con, stride, remainder)
    finally:
        con.close()


def check_rows(con: duckdb.DuckDBPyConnection, stride: int, remainder: int) -> None:
    """Check a finished and an unfinished run's rows against the codec."""
    for number in (1, remainder, stride + 5):
        rows = con.execute(
            "SELECT kind, event, value, CAST(value_json AS VARCHAR), run_state "
            "FROM replay_event_log WHERE run_id = ? ORDER BY seq", [big_run_id(number)]
        ).fetchall()
        started = rows[0]
        assert started[:2] == ("run", "started"), rows
        assert bytes(started[2]) == encode((order_id(number),), key="input"), started
        assert started[3] == to_json([order_id(number)]), started
        steps = [row for row in rows if row[0] == "step"]
        for line_number, row in enumerate(steps, 1):
            assert decode(bytes(row[2])) == {"order": order_id(number), "line": line_number,
                                             "ok": True}, row
        state = [row[4] for row in rows if row[4] is not None][-1]
        if number % stride == remainder:
            assert state == "suspended", rows
        else:
            assert state == "completed", rows
            assert decode(bytes(rows[-1][2])) == expected_output(number), rows
            assert rows[-1][3] == to_json(expected_output(number)), rows


def big_file(directory: Path, finished_runs: int, unfinished_runs: int,
             cached: bool) -> tuple[Path, float | None]:
    """A scratch copy of the big file, and the seconds generating it took (None: cached).

    The cached file's name holds the sizes and a hash of the schema and storage format
    a fresh engine creates, the rows it records for the templates (but the columns that differ from
    one recording to the next) and this script, so a change to any makes a new file.
    """
    templates, schema = template_rows(directory)
    work = directory / "finished.duckdb"
    began = time.perf_counter()
    if not cached:
        generate(work, finished_runs, unfinished_runs, templates)
        return work, time.perf_counter() - began
    stable = [row[:11] + row[12:] for row in templates]  # not duration_ms
    key = repr((schema, stable, Path(__file__).read_bytes())).encode()
    stem = f"finished-{finished_runs}-{unfinished_runs}"
    path = CACHE / f"{stem}-{hashlib.sha256(key).hexdigest()[:16]}.duckdb"
    seconds = None
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        for old in CACHE.glob(f"{stem}-*.duckdb"):
            old.unlink(missing_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        generate(partial, finished_runs, unfinished_runs, templates)
        partial.rename(path)
        seconds = time.perf_counter() - began
        print(f"generated {path} in {seconds:.1f} s", flush=True)
    shutil.copyfile(path, work)
    return work, seconds


def sample_numbers(total: int, stride: int, remainder: int, count: int,
                   shift: int) -> list[int]:
    """Numbers of `count` finished runs spread evenly through the file."""
    numbers = []
    for k in range(count):
        number = min(total - 1, (k * total) // count + shift)
        if number % stride == remainder:
            number = number + 1 if number + 1 < total else number - 1
        numbers.append(number)
    return numbers


# --- the parent ----------------------------------------------------------------------------


def run_child(kind: str, params: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Run one measurement in a fresh process; its result, or a problem."""
    command = [sys.executable, __file__, "--child", json.dumps({"kind": kind, **params})]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, f"{kind}: no result within {CHILD_TIMEOUT:g} s"
    if done.returncode != 0:
        return None, f"{kind}: exit status {done.returncode}: {done.stderr.strip()[-2000:]}"
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        return None, f"{kind}: no JSON line in its output: {done.stdout[-500:]!r}"
    return result, None


def child(params: dict[str, Any]) -> None:
    kind = params.pop("kind")
    if kind == "heap":
        result = trio.run(heap_child, params["runs"], params["warm_up"], params["top"],
                          params["frames"])
    elif kind == "rss":
        result = trio.run(rss_child, params["first"], params["last"])
    else:
        result = trio.run(open_child, params["path"], params["durability"], params["opens"],
                          params["unfinished"], params["status"], params["get_run"])
    print(json.dumps(result), flush=True)


def heap_figure(heap: dict[str, Any]) -> Figure:
    return Figure(
        "finished_heap", f"Python heap per finished run ({heap['runs']:,} runs of 3 steps)",
        float(heap["per_run"]), "B/run", HEAP_TARGET,
        note=(f"tracemalloc growth after gc; peak {heap['peak_bytes'] / heap['runs']:.0f} B/run; "
              f"{heap['runs'] / heap['seconds']:,.0f} runs/s traced"),
        detail={k: v for k, v in heap.items() if k != "sites"}
        | {"sites": heap["sites"]["lineno"], "frames": heap["frames"]},
    )


def rss_figure(rss: dict[str, Any]) -> Figure:
    first, last = rss["first"], rss["last"]
    mb = 1024 * 1024

    def duck(sample: dict[str, Any]) -> str:
        return "?" if sample["duckdb"] is None else f"{sample['duckdb'] / mb:.0f}"

    return Figure(
        "finished_rss_ratio",
        f"RSS after {last['runs']:,} finished runs / after {first['runs']:,}",
        last["rss"] / first["rss"], "x", RSS_TARGET,
        note=(f"RSS {first['rss'] / mb:.0f} -> {last['rss'] / mb:.0f} MB "
              f"({(last['rss'] - first['rss']) / (last['runs'] - first['runs']):.0f} B/run); "
              f"of it DuckDB {duck(first)} -> {duck(last)} MB; file "
              f"{last['file'] / mb:.0f} MB"),
        detail=rss,
    )


def open_figures(opened: dict[str, Any], finished_runs: int, unfinished_runs: int,
                 size_mb: float, generated: float | None) -> list[Figure]:
    built = "cached" if generated is None else f"built in {generated:.0f} s"
    return [
        Figure(
            "open_finished",
            f"engine open, {finished_runs:,} finished + {unfinished_runs:,} suspended runs",
            median(opened["opened"]), "s", OPEN_TARGET, floor=median(opened["floor_opens"]),
            note=f"file {size_mb:.0f} MB, {built}; floor = duckdb.connect",
            detail={"seconds": opened["opened"], "floor_seconds": opened["floor_opens"],
                    "file_mb": size_mb, "finished": finished_runs,
                    "unfinished": unfinished_runs, "generated_seconds": generated},
        ),
        Figure(
            "status_finished", "status() of a finished run (read from the file)",
            median(opened["status"]) * 1000, "ms", floor=median(opened["floor_queries"]) * 1000,
            note=(f"{len(opened['status'])} runs; p90 "
                  f"{fmt(percentile(opened['status'], 0.9) * 1000)} ms; "
                  "floor = raw SELECT of its rows"),
            detail={"seconds": opened["status"], "floor_seconds": opened["floor_queries"]},
        ),
        Figure(
            "get_run_finished", "get_run() of a finished run (read from the file)",
            median(opened["get_run"]) * 1000, "ms",
            note=(f"{len(opened['get_run'])} runs; p90 "
                  f"{fmt(percentile(opened['get_run'], 0.9) * 1000)} ms"),
            detail={"seconds": opened["get_run"]},
        ),
    ]


def measure(args: argparse.Namespace
            ) -> tuple[list[Figure], list[str], dict[str, list[dict[str, Any]]]]:
    """Every figure, the problems met, and the heap's allocation sites."""
    smoke = args.smoke
    runs = SMOKE_HEAP_RUNS if smoke else HEAP_RUNS
    figures: list[Figure] = []
    problems: list[str] = []
    sites: dict[str, list[dict[str, Any]]] = {}

    heap, problem = run_child("heap", {"runs": runs, "warm_up": SMOKE_WARM_UP if smoke else WARM_UP,
                                       "top": args.top, "frames": args.frames})
    if heap is not None:
        if heap["state_of_one"] != "completed":
            problems.append(f"heap: a finished run's status is {heap['state_of_one']!r}")
        figures.append(heap_figure(heap))
        sites = heap["sites"]
    problems += [problem] if problem else []

    rss, problem = run_child("rss", {"first": SMOKE_RSS_FIRST if smoke else RSS_FIRST,
                                     "last": runs})
    if rss is not None:
        figures.append(rss_figure(rss))
    problems += [problem] if problem else []

    finished_runs = SMOKE_FINISHED if smoke else FINISHED
    unfinished_runs = SMOKE_UNFINISHED if smoke else UNFINISHED
    total, stride, remainder = layout(finished_runs, unfinished_runs)
    samples = SMOKE_SAMPLES if smoke else SAMPLES
    with scratch_dir("replay-finished-") as directory:
        path, generated = big_file(directory, finished_runs, unfinished_runs, cached=not smoke)
        size_mb = path.stat().st_size / 1e6
        opened, problem = run_child("open", {
            "path": str(path), "durability": args.durability, "opens": repeats(args, 5),
            "unfinished": unfinished_runs,
            "status": sample_numbers(total, stride, remainder, samples, 1),
            "get_run": sample_numbers(total, stride, remainder, samples, 3),
        })
    problems += [problem] if problem else []
    if opened is not None:
        problems += [f"open: {wrong}" for wrong in opened["wrong"]]
        figures += open_figures(opened, finished_runs, unfinished_runs, size_mb, generated)
    return figures, problems, sites


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: checks that the script works, judges nothing")
    parser.add_argument("--durability", choices=("fsync", "none"), default="fsync",
                        help="durability of the engine opening the big file (default: fsync)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="opens of the big file; the median is reported (default 5)")
    parser.add_argument("--top", type=int, default=15, help="allocation sites to list")
    parser.add_argument("--frames", type=int, default=1,
                        help="frames tracemalloc keeps (default 1: sites by line; more also "
                             "lists them by traceback, and is much slower)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0

    figures, problems, sites = measure(args)
    for figure in figures:
        figure.judged = not args.smoke
    print(f"\nfinished_runs (open durability={args.durability}"
          f"{', smoke' if args.smoke else ''})\n")
    print(table(figures))
    heap = next((f for f in figures if f.key == "finished_heap"), None)
    if heap is not None and not HEAP_TARGET.holds(heap.value, None):
        print(f"\nheap per finished run over {HEAP_TARGET.limit:.0f} B: biggest allocation "
              "sites (bytes per run):")
        for key_type, title in (("lineno", "by line"), ("traceback", "by traceback")):
            if key_type in sites:
                print(f"  {title}:")
            for site in sites.get(key_type, []):
                print(f"    {site['bytes_per_run']:8.1f} B  {site['blocks_per_run']:6.3f} "
                      f"blocks  {' <- '.join(site['where'])}")
    for problem in problems:
        warn(f"problem: {problem}")
    result = json.loads(json_line("finished_runs", args, figures))
    print(json.dumps(result | {"problems": problems}), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
