"""PostgreSQL: replay on a PostgreSQL schema against the server's own floor, in one run.

The workload is `peers.py`'s: 100 workflows of 10 steps each, at most C running at a
time (C = 1, 8, 100), every step durable before the workflow continues, each step
returning a small dict; sync steps (plain functions) and async steps (``async def``).
Each repetition measures, one after the other so all see the same machine load, on
the server named by the URL (a superuser's: the script creates a fresh schema for
every measurement, ``replay_bench_<hex>``, and drops it afterwards):

- **the floor**: one autocommit ``INSERT`` of a narrow row ``(seq bigint, run_id text,
  data text)`` (no index) per step, sequential, on one connection: each step is one
  transaction, one round trip and one WAL flush. The statement is prepared
  (``prepare=True``). The alternatives, measured on the project's 2-vCPU machine with
  the server on the same machine (PostgreSQL 15, fsync on, load average 0.4, 500 rows,
  medians of 5), in ms per commit: autocommit ``INSERT`` prepared **0.143**, not
  prepared 0.165; ``INSERT`` then ``commit()`` (BEGIN, INSERT, COMMIT: three round
  trips) 0.216; the same three in one pipeline 0.226. The cheapest is the floor; every
  ratio is computed against it.
- **the wide floor**, for information: replay's own 20-column event row
  (`replay._pg._rows.COPY_COLUMNS`, a completed step as the engine records it) into
  its indexed ``replay_event_log`` (made by opening and closing an engine on the
  schema), one ``COPY ... FROM STDIN`` of one row per transaction, then ``COMMIT``:
  what the store's writer thread does for a batch of one.
- **replay on PostgreSQL**: `open_engine` on a fresh schema, 100 runs started in trio
  tasks, at most C at a time, timed from the first `start` to the last `result()`
  (C=1: ms per step and its ratio to the floor; C=8 and C=100: steps per second).
- **replay on DuckDB**, for comparison: the same workload on a fresh file in a scratch
  directory, in the same repetition.
- **the commit rate**: batches the engine committed per second, counted in this
  process by wrapping the stores' ``submit`` (through which the engine hands a batch to
  its writer thread) and ``commit_now`` (a batch a DuckDB engine commits on its own
  thread, or on a step's worker thread, while one run executes alone); each batch is
  one transaction. Counted between the first `start` and the last `result()`, with the
  records per batch and the time each took (from the call to the commit's end). Shown
  at the largest C, where the engine commits one batch per scheduling round of all the
  runs; every C is in the JSON line.

Both floors and both engines use the same durability (``--durability``, default
``fsync``, the engine's default; with ``none`` the floors' sessions, like the store's,
set ``synchronous_commit = off``). The medians of the repetitions are
printed as one Markdown table with the machine, the server and its commit settings,
the load average before and after and the date, then one JSON line with every sample.
Scaling over 1, 2 and 4 engine processes on one schema is benchmarks/pg_workers.py's.

    python benchmarks/postgres.py [URL] [--smoke] [--repeat N] [--durability fsync|none]

The URL may also come from REPLAY_BENCH_POSTGRES or REPLAY_TEST_POSTGRES (in this
order), e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``;
``scripts/postgres-cluster start DIR`` starts a throwaway server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import msgpack
import trio
from _floor import scratch_dir
from _report import Figure, fmt, machine, median, warn

import replay
from replay import Step

ENV_VARS = ("REPLAY_BENCH_POSTGRES", "REPLAY_TEST_POSTGRES")
RUNS, STEPS, CONCURRENCY = 100, 10, (1, 8, 100)
SMOKE_RUNS, SMOKE_STEPS, SMOKE_CONCURRENCY = 4, 2, (1, 2, 4)
KINDS = ("sync", "async")
STORES = ("postgres", "duckdb")
SCHEMA_PREFIX = "replay_bench_"

NARROW_TABLE = "CREATE TABLE floor_log (seq bigint, run_id text, data text)"
NARROW_INSERT = "INSERT INTO floor_log VALUES (%s, %s, %s)"
NARROW_LABEL = "one autocommit INSERT of a 3-column row (no index) per step, sequential"
WIDE_LABEL = ("replay's 20-column event row into its indexed table, one COPY of one row "
              "per transaction + COMMIT, sequential")
_RUN_ID = "f" * 32


def noop(i: int) -> dict[str, int]:
    return {"i": i}


async def async_noop(i: int) -> dict[str, int]:
    return {"i": i}


@replay.workflow(name="bench.postgres")
def pg_steps(count: int, kind: str) -> Any:
    fn = noop if kind == "sync" else async_noop
    for i in range(count):
        yield Step(f"step:{i}", fn, i)
    return count


# -- the server and its schemas --

class Server:
    """An autocommit connection to the server that creates and drops the schemas."""

    def __init__(self, url: str) -> None:
        import psycopg

        from replay._pg._url import shown_url

        self.url = url
        self.shown = shown_url(url)
        try:
            self.con = psycopg.connect(url, autocommit=True, application_name="replay-bench")
        except psycopg.Error as error:
            problem = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise SystemExit(f"postgres: cannot connect to {self.shown}: "
                             f"{problem.replace(url, self.shown)}") from None
        self.created: list[str] = []
        self._left: set[str] = set()

    def settings(self) -> dict[str, str]:
        names = ("server_version", "fsync", "synchronous_commit", "wal_sync_method",
                 "commit_delay", "shared_buffers")
        shown = ", ".join(f"current_setting('{name}')" for name in names)
        row = self.con.execute(f"SELECT {shown}, (SELECT rolsuper FROM pg_roles "
                               "WHERE rolname = current_user)").fetchone() or ()
        found = {name: str(value) for name, value in zip(names, row, strict=False)}
        found["superuser"] = "yes" if row and row[-1] else "no"
        return found

    @contextlib.contextmanager
    def schema(self) -> Iterator[str]:
        """A fresh, empty schema: the server's URL with it as the search path."""
        from psycopg import sql

        name = f"{SCHEMA_PREFIX}{uuid.uuid4().hex[:16]}"
        self.con.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        self.created.append(name)
        self._left.add(name)
        try:
            yield schema_url(self.url, name)
        finally:
            self.drop(name)

    def drop(self, name: str) -> None:
        from psycopg import sql

        self.con.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
            sql.Identifier(name)))
        self._left.discard(name)

    def close(self) -> None:
        """Drop every schema still there (after a failure), then disconnect."""
        try:
            for name in sorted(self._left):
                self.drop(name)
        finally:
            self.con.close()


def schema_url(server: str, schema: str) -> str:
    """`server` with `schema` as the search path (as tests/conftest.py's `pg_url`)."""
    joiner = "&" if urllib.parse.urlsplit(server).query else "?"
    if server.endswith(("?", "&")):
        joiner = ""
    return f"{server}{joiner}options=-csearch_path%3D{schema}"


# -- the floors --

def _connect(url: str, durability: str) -> Any:
    import psycopg

    con = psycopg.connect(url, autocommit=True, application_name="replay-bench")
    if durability == "none":
        con.execute("SET synchronous_commit = off")
    return con


def narrow_floor(url: str, steps: int, durability: str) -> float:
    """Seconds per step of `steps` autocommit INSERTs of a narrow row, one connection."""
    con = _connect(url, durability)
    try:
        con.execute(NARROW_TABLE)
        began = time.perf_counter()
        for i in range(steps):
            con.execute(NARROW_INSERT, (i + 1, _RUN_ID, json.dumps({"i": i})), prepare=True)
        return (time.perf_counter() - began) / steps
    finally:
        con.close()


def wide_row(seq: int, i: int) -> tuple[Any, ...]:
    """A completed step as the PostgreSQL store writes it, in `COPY_COLUMNS` order."""
    return (seq, _RUN_ID, "bench.postgres", f"step:{i}", "step", "completed", 1,
            b"\x01" + msgpack.packb({"i": i}), json.dumps({"i": i}), None, None,
            datetime.now(UTC), 0.01, None, "bench.noop", None, None, None, 0, None)


def wide_floor(url: str, steps: int, durability: str) -> float:
    """Seconds per step of `steps` one-row COPY transactions into replay's own table."""
    from replay._pg._rows import COPY_COLUMNS

    trio.run(_create_replay_schema, url)
    copy_sql = f"COPY replay_event_log ({COPY_COLUMNS}) FROM STDIN"
    con = _connect(url, durability)
    try:
        con.autocommit = False  # as the store's writer: each batch is one transaction
        began = time.perf_counter()
        for i in range(steps):
            with con.cursor() as cursor, cursor.copy(copy_sql) as copy:
                copy.write_row(wide_row(i + 1, i))
            con.commit()
        return (time.perf_counter() - began) / steps
    finally:
        con.close()


async def _create_replay_schema(url: str) -> None:
    async with replay.open_engine(url, workflows=[], durability="none"):
        pass


# -- replay, with its commits counted --

class Commits:
    """Batches the engines of this process committed, their records, and their time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches = 0
        self.rows = 0
        self.seconds = 0.0  # from `submit` to the writer's answer, summed

    def now(self) -> tuple[int, int, float]:
        with self._lock:
            return self.batches, self.rows, self.seconds

    def count(self, store_class: type) -> None:
        """Wrap `store_class.submit` and `commit_now` so that every batch is counted."""
        submit, commit_now = store_class.submit, store_class.commit_now

        def counted_submit(store: Any, rows: list[tuple[Any, ...]],
                           done: Callable[[BaseException | None], None],
                           lone: bool = False) -> None:
            began = time.perf_counter()

            def counted(error: BaseException | None) -> None:
                if error is None:  # before the engine hears of it: counted in time
                    self._add(len(rows), began)
                done(error)

            submit(store, rows, counted, lone)

        def counted_commit_now(store: Any, rows: list[tuple[Any, ...]],
                               wait: bool = False) -> bool:
            began = time.perf_counter()
            committed = bool(commit_now(store, rows, wait))
            if committed:
                self._add(len(rows), began)
            return committed

        store_class.submit = counted_submit
        store_class.commit_now = counted_commit_now

    def _add(self, rows: int, began: float) -> None:
        with self._lock:
            self.batches += 1
            self.rows += rows
            self.seconds += time.perf_counter() - began


COMMITS = Commits()


async def replay_batch(location: str, durability: str, runs: int, steps: int,
                       concurrency: int, kind: str) -> dict[str, float]:
    """`runs` runs, C at a time: seconds from the first `start` to the last `result()`,
    and the batches committed meanwhile, their records and the seconds they took."""
    async with replay.open_engine(location, workflows=[pg_steps],
                                  durability=durability) as engine:
        limiter = trio.CapacityLimiter(concurrency)

        async def one() -> None:
            async with limiter:
                run = await engine.start(pg_steps, steps, kind)
                assert await run.result() == steps

        batches, rows, committing = COMMITS.now()
        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(runs):
                nursery.start_soon(one)
        seconds = time.perf_counter() - began
        after_batches, after_rows, after_committing = COMMITS.now()
    return {"seconds": seconds, "commits": after_batches - batches,
            "records": after_rows - rows, "commit_seconds": after_committing - committing}


# -- the run --

def measure(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    runs, steps = (SMOKE_RUNS, SMOKE_STEPS) if args.smoke else (RUNS, STEPS)
    concurrency = SMOKE_CONCURRENCY if args.smoke else CONCURRENCY
    repeat = args.repeat or (1 if args.smoke else 3)
    floor_steps = runs * steps  # as many commits as replay's sequential steps
    samples: dict[str, Any] = {"floor": [], "wide_floor": []}

    def add(store: str, kind: str, c: int, found: dict[str, float]) -> None:
        samples.setdefault(f"{store}_{kind}", {}).setdefault(str(c), []).append(found)

    for rep in range(repeat):
        with scratch_dir("replay-bench-pg-") as directory:
            # The floors and replay alternate, so all see the same machine load.
            with server.schema() as url:
                samples["floor"].append(narrow_floor(url, floor_steps, args.durability))
            with server.schema() as url:
                samples["wide_floor"].append(wide_floor(url, floor_steps, args.durability))
            for kind in KINDS:
                for c in concurrency:
                    with server.schema() as url:
                        add("postgres", kind, c, trio.run(
                            replay_batch, url, args.durability, runs, steps, c, kind))
                    path = str(directory / f"replay-{kind}-{c}.duckdb")
                    add("duckdb", kind, c, trio.run(
                        replay_batch, path, args.durability, runs, steps, c, kind))
        warn(f"postgres: repetition {rep + 1} of {repeat} done")
    return {"runs": runs, "steps": steps, "concurrency": list(concurrency),
            "repeat": repeat, "floor_steps": floor_steps, "samples": samples}


def figures(result: dict[str, Any]) -> list[Figure]:
    """Every median as a `Figure` (the shape `_report` gives every other benchmark)."""
    samples = result["samples"]
    total = result["runs"] * result["steps"]
    floor, wide = median(samples["floor"]), median(samples["wide_floor"])
    found = [
        Figure("floor", f"floor: PostgreSQL, {NARROW_LABEL}", floor * 1000, "ms/commit",
               detail={"seconds_per_commit": samples["floor"]}),
        Figure("wide_floor", f"wide floor: PostgreSQL, {WIDE_LABEL}", wide * 1000,
               "ms/commit", detail={"seconds_per_commit": samples["wide_floor"]}),
    ]
    for store in STORES:
        for kind in KINDS:
            for c, taken in samples[f"{store}_{kind}"].items():
                seconds = median([t["seconds"] for t in taken])
                commits = median([t["commits"] / t["seconds"] for t in taken])
                records = median([t["records"] / t["commits"] for t in taken if t["commits"]]
                                 or [0.0])
                commit_ms = median([t["commit_seconds"] / t["commits"] * 1000
                                    for t in taken if t["commits"]] or [0.0])
                on = "PostgreSQL" if store == "postgres" else "DuckDB file"
                label = (f"replay on {on}: {result['runs']} runs x {result['steps']} steps, "
                         f"C={c} ({kind} step)")
                floors = {} if store != "postgres" else (
                    {"floor": floor * 1000, "wide_floor": wide * 1000} if c == "1"
                    else {"floor": 1 / floor, "wide_floor": 1 / wide})
                value, unit = ((seconds / total * 1000, "ms/step") if c == "1"
                               else (total / seconds, "steps/s"))
                found.append(Figure(
                    f"{store}_c{c}_{kind}", label, value, unit, **floors,
                    note=(f"{commits:,.0f} commits/s, {records:.1f} records and "
                          f"{commit_ms:.2f} ms each"),
                    detail={"concurrency": int(c), "commits_per_second": commits,
                            "records_per_commit": records, "ms_per_commit": commit_ms,
                            "samples": taken}))
    for figure in found:
        figure.judged = False  # no targets for PostgreSQL yet
    return found


def table(result: dict[str, Any], found: dict[str, Figure]) -> str:
    concurrency = result["concurrency"]
    top = max(concurrency)
    head = [f"{result['runs']} workflows x {result['steps']} steps"] + [
        f"C={c}" for c in concurrency] + [f"commits/s at C={top} (records, ms each)"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for key, label in (("floor", f"floor: PostgreSQL, {NARROW_LABEL}"),
                       ("wide_floor", f"wide floor, for information: PostgreSQL, "
                                      f"{WIDE_LABEL}")):
        ms = found[key].value
        cells = [f"{fmt(ms)} ms/commit ({1000 / ms:,.0f} commits/s)"]
        cells += ["-"] * (len(concurrency) - 1) + [
            f"{1000 / ms:,.0f} (1, {fmt(ms)} ms; sequential)"]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    for store in STORES:
        for kind in KINDS:
            on = ("PostgreSQL" if store == "postgres"
                  else "a DuckDB file, for comparison")
            cells = []
            for c in concurrency:
                figure = found[f"{store}_c{c}_{kind}"]
                if c == 1:
                    cell = f"{fmt(figure.value)} ms/step"
                    if figure.ratio is not None and figure.wide_ratio is not None:
                        cell += (f", {figure.ratio:.2f}x floor, "
                                 f"{figure.wide_ratio:.2f}x wide")
                    cell += f" ({1000 / figure.value:,.0f} steps/s)"
                else:
                    cell = f"{figure.value:,.0f} steps/s"
                    if figure.ratio is not None:
                        cell += f" ({figure.ratio:.2f}x floor's commits/s)"
                cells.append(cell)
            detail = found[f"{store}_c{top}_{kind}"].detail
            cells.append(f"{detail['commits_per_second']:,.0f} "
                         f"({detail['records_per_commit']:.1f}, "
                         f"{fmt(detail['ms_per_commit'])} ms)")
            label = f"replay {replay.__version__} on {on}, {kind} steps"
            lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def server_url(given: str | None) -> str | None:
    if given:
        return given
    return next((os.environ[name] for name in ENV_VARS if os.environ.get(name)), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help=f"a superuser's postgresql:// URL "
                                               f"(default: ${' or $'.join(ENV_VARS)})")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script")
    parser.add_argument("--repeat", type=int, default=None,
                        help="repetitions; the median is reported (default 3, smoke 1)")
    parser.add_argument("--durability", choices=("fsync", "none"), default="fsync",
                        help="of the engines and the floors (default: fsync)")
    args = parser.parse_args()
    url = usable_server(parser, args.url)
    from replay._pg._store import PgStore
    from replay._store import Store

    COMMITS.count(PgStore)
    COMMITS.count(Store)
    server = Server(url)
    try:
        settings = server.settings()
        before = machine()
        result = measure(args, server)
        after = machine()
    finally:
        server.close()
    found = {figure.key: figure for figure in figures(result)}
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    import psycopg

    print(f"\nreplay on PostgreSQL: {result['runs']} workflows x {result['steps']} steps, "
          f"at most C at a time, durable steps (durability={args.durability}), median of "
          f"{result['repeat']}{' (smoke: tiny sizes, measures nothing)' if args.smoke else ''}")
    print(f"machine: {after['cpus']} CPUs ({after['cpu']}), Python {after['python']}, "
          f"DuckDB {after['duckdb']}, psycopg {psycopg.__version__}, trio {after['trio']}, "
          f"replay {after['replay']}; load average (1 min) {before['loadavg_1m']} before, "
          f"{after['loadavg_1m']} after; {date}")
    print(f"server: PostgreSQL {settings['server_version']} at {server.shown} "
          f"(fsync={settings['fsync']}, synchronous_commit={settings['synchronous_commit']}, "
          f"wal_sync_method={settings['wal_sync_method']}, commit_delay="
          f"{settings['commit_delay']}); a fresh schema per measurement, dropped after")
    print(f"floor: {fmt(found['floor'].value)} ms per commit ({NARROW_LABEL}); wide floor, "
          f"for information: {fmt(found['wide_floor'].value)} ms ({WIDE_LABEL}); "
          f"{result['floor_steps']:,} commits each\n")
    print(table(result, found))
    print("\nengine processes: one here; benchmarks/pg_workers.py measures 1, 2 and 4 "
          "sharing one schema.")
    print("targets: none set yet for PostgreSQL; the ratios are for information.")
    print_json({"benchmark": "postgres", "smoke": args.smoke}, args.durability, date,
               (before, after), server, settings, found, result)
    return 0


def usable_server(parser: argparse.ArgumentParser, given: str | None) -> str:
    """Return the server's URL, or stop with a usage error: no server, or no psycopg."""
    url = server_url(given)
    if not url:
        parser.error(f"no server: pass a postgresql:// URL or set {' or '.join(ENV_VARS)} "
                     "(scripts/postgres-cluster start DIR starts a throwaway one)")
    try:
        import psycopg  # noqa: F401
    except ModuleNotFoundError:
        parser.error('psycopg is missing: pip install -e ".[postgres]"')
    return url


def print_json(name: dict[str, Any], durability: str, date: str,
               machines: tuple[dict[str, Any], dict[str, Any]], server: Server,
               settings: dict[str, Any], found: dict[str, Any],
               result: dict[str, Any]) -> None:
    """Print a PostgreSQL benchmark's last line: one JSON object with every figure."""
    import psycopg

    before, after = machines
    print(json.dumps({
        **name, "durability": durability,
        "date": date, "machine": after, "loadavg_1m_before": before["loadavg_1m"],
        "server": {"url": server.shown, **settings, "psycopg": psycopg.__version__},
        "schemas": server.created,
        "figures": {key: figure.as_json() for key, figure in found.items()},
        **result,
    }), flush=True)


if __name__ == "__main__":
    sys.exit(main())
