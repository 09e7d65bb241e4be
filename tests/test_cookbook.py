"""Every query of docs/cookbook.md, run against a database with known content.

The database is built in virtual time from a fixed start, so every timestamp and
duration is exact: nine orders of workflow ``order:v1`` (steps ``reserve:v1``,
``charge:v1`` retried up to three attempts, ``ship:v1``; orders of 10000 cents or more
wait for ``approval:v1``, and release their stock with ``release:v1`` if cancelled
meanwhile), one a minute from 2026-03-02 09:00 UTC, then two more two days later. In
between: ``o-10`` cancelled on the first day; on the second day three ``quote:v1``
races, a ``basket:v1`` that places ``o-13`` and ``o-14`` as child runs, ``o-11``
cancelled by its customer, ``o-12`` cancelled by its deadline, and a ``restock:v1``
whose ``All`` fails fast. On the third day two ``sync:v1`` runs note their progress and
continue as new each round; the engine is reopened under a new code version while
``s-1`` sleeps, and ``s-2`` still sleeps at the end. The same history is built on a
DuckDB file and, when the tests have a PostgreSQL server, in a PostgreSQL schema. Each
query, in the dialect of its store (a recipe's "On PostgreSQL" block, else its one
query), runs through ``replay sql DB QUERY --json`` and must give the same answer on
both; to show that no replay code is needed to read the history, each also runs through
a plain DuckDB connection, or a plain psycopg one.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pytest
import trio
import trio.testing

import replay
from replay import All, Child, ContinueAsNew, Gather, Note, Race, Retry, Sleep, Step, Suspend
from replay._cli import main
from replay._engine._clock import set_virtual_start

if TYPE_CHECKING:
    from conftest import _PgAdmin

COOKBOOK = Path(__file__).resolve().parent.parent / "docs" / "cookbook.md"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
# order_id: (cents, milliseconds reserve:v1 takes, failed charge:v1 attempts)
FIRST = {"o-1": (1200, 20, 0), "o-2": (800, 40, 1), "o-3": (4500, 60, 2),
         "o-4": (990, 80, 0), "o-5": (2300, 100, 3), "o-6": (15000, 120, 0),
         "o-7": (25000, 140, 0)}
LATER = {"o-8": (1500, 160, 3), "o-9": (700, 180, 0)}
CANCELLED = {"o-10": (20000, 200, 0), "o-11": (12000, 220, 0), "o-12": (30000, 240, 0)}
CHILDREN = {"o-13": (900, 260, 0), "o-14": (1800, 280, 3)}
PLAN = FIRST | LATER | CANCELLED | CHILDREN
# carrier: seconds its quote takes, per quote run (the race gives up after 2 s)
QUOTES = {"q-1": {"dhl": 0.3, "ups": 0.5}, "q-2": {"dhl": 0.9, "ups": 0.4},
          "q-3": {"dhl": 5.0, "ups": 5.0}}
# warehouse: seconds its reservation takes; south has no stock
WAREHOUSES = {"north": 0.2, "south": 0.05, "east": 0.1}
failures: dict[str, int] = {}


async def reserve(order_id: str, ms: int) -> dict[str, str]:
    await trio.sleep(ms / 1000)
    return {"order": order_id, "sku": "B-2" if order_id in ("o-2", "o-7") else "A-1"}


async def charge(order_id: str, cents: int) -> str:
    await trio.sleep(0.030)
    if failures[order_id] > 0:
        failures[order_id] -= 1
        raise ConnectionError("bank timeout")
    return f"ch-{order_id}"


async def ship(order_id: str) -> str:
    await trio.sleep(0.5)
    return f"trk-{order_id}"


async def release(order_id: str) -> str:
    await trio.sleep(0.05)
    return f"released {order_id}"


async def quote_from(carrier: str, quote_id: str) -> dict[str, Any]:
    await trio.sleep(QUOTES[quote_id][carrier])
    return {"carrier": carrier, "cents": 490 if carrier == "dhl" else 520}


async def reserve_at(warehouse: str, sku: str) -> str:
    await trio.sleep(WAREHOUSES[warehouse])
    if warehouse == "south":
        raise LookupError(f"no {sku} in stock at {warehouse}")
    return f"{warehouse}:{sku}"


@replay.workflow(name="order:v1")
def order(order_id: str, cents: int):  # type: ignore[no-untyped-def]
    yield Step("reserve:v1", reserve, order_id, PLAN[order_id][1])
    approved_by = None
    if cents >= 10000:
        try:
            approved_by = yield Suspend("approval:v1", status="waiting for a manager")
        except replay.Cancelled:
            yield Step("release:v1", release, order_id)
            raise
    receipt = yield Step("charge:v1", charge, order_id, cents,
                         retry=Retry(attempts=3, initial=1.0, backoff=2.0, jitter=0))
    tracking = yield Step("ship:v1", ship, order_id)
    return {"order": order_id, "receipt": receipt, "tracking": tracking,
            "approved_by": approved_by}


@replay.workflow(name="quote:v1")
def quote(quote_id: str):  # type: ignore[no-untyped-def]
    winner, offer = yield Race("carrier:v1", {
        "dhl": Step("dhl:v1", quote_from, "dhl", quote_id),
        "ups": Step("ups:v1", quote_from, "ups", quote_id),
        "none": Sleep("give-up:v1", timedelta(seconds=2))})
    return {"quote": quote_id, "carrier": winner, "offer": offer}


@replay.workflow(name="basket:v1")
def basket(basket_id: str, orders: list[list[Any]]):  # type: ignore[no-untyped-def]
    placed = yield Gather("orders:v1", [Child(f"order:{order_id}", order, order_id, cents)
                                        for order_id, cents in orders])
    return {"basket": basket_id, "placed": len(placed.values()),
            "failed": len(placed.failures)}


@replay.workflow(name="restock:v1")
def restock(sku: str):  # type: ignore[no-untyped-def]
    reserved = yield All("warehouses:v1", [Step(f"reserve:{w}", reserve_at, w, sku)
                                           for w in WAREHOUSES], limit=2)
    return reserved


@replay.workflow(name="sync:v1")
def sync(feed: str, round_: int, pause: float):  # type: ignore[no-untyped-def]
    yield Note(f"progress:{round_}", {"feed": feed, "round": round_},
               text=f"{feed}: round {round_} of 3")
    yield Sleep("pause:v1", pause)
    if round_ < 3:
        return ContinueAsNew(feed, round_ + 1, pause)
    return {"feed": feed, "rounds": round_}


WORKFLOWS = [order, quote, basket, restock, sync]


async def build(db: str) -> None:
    set_virtual_start(START)
    zero = trio.current_time()
    failures.update({order_id: plan[2] for order_id, plan in PLAN.items()})

    async def place(engine: replay.Engine, orders: dict[str, tuple[int, int, int]],
                    at: float) -> None:
        for i, (order_id, (cents, _, _)) in enumerate(orders.items()):
            await trio.sleep_until(zero + at + 60 * i)
            await (await engine.start(order, order_id, cents, run_id=order_id)).wait()

    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none",
                                  serve_cli=False, code_version="2026.03.02") as engine:

        async def cancelled(order_id: str, at: float, reason: str | None = None,
                            deadline: float | None = None) -> None:
            await trio.sleep_until(zero + at)
            run = await engine.start(order, order_id, PLAN[order_id][0], run_id=order_id,
                                     timeout=deadline)
            await run.wait()
            if reason is not None:
                await trio.sleep(1800)
                await engine.cancel(order_id, reason)
            with pytest.raises(replay.WorkflowFailed):
                await run.result()

        await place(engine, FIRST, 0)
        await trio.sleep_until(zero + 2 * 3600)
        await engine.signal("o-6", "approval:v1", "maria")
        await engine.get_run("o-6").result()
        await cancelled("o-10", 3 * 3600, reason="duplicate of o-7")
        day2 = 86400
        for i, quote_id in enumerate(QUOTES):
            await trio.sleep_until(zero + day2 + 6 * 3600 + 60 * i)
            await (await engine.start(quote, quote_id, run_id=quote_id)).result()
        await trio.sleep_until(zero + day2 + 7 * 3600)
        await (await engine.start(basket, "b-1", [[o, PLAN[o][0]] for o in CHILDREN],
                                  run_id="b-1")).result()
        await cancelled("o-11", day2 + 8 * 3600, reason="customer changed their mind")
        await cancelled("o-12", day2 + 9 * 3600, deadline=4 * 3600)
        await trio.sleep_until(zero + day2 + 14 * 3600)
        with pytest.raises(replay.WorkflowFailed):
            await (await engine.start(restock, "A-1", run_id="r-1")).result()
        # Two feeds sync in rounds (continue-as-new); the engine is redeployed while
        # s-1 sleeps in its second round, which then wakes under the new version.
        await trio.sleep_until(zero + 2 * 86400 + 3600)
        await engine.start(sync, "prices", 1, 0.5, run_id="s-1")
        await engine.start(sync, "stock", 1, 86400.0, run_id="s-2")
        await trio.sleep(0.7)
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none",
                                  serve_cli=False, code_version="2026.03.04") as engine:
        await engine.get_run("s-1").result()
        await place(engine, LATER, 2 * 86400 + 2 * 3600)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> str:
    db = str(tmp_path_factory.mktemp("cookbook") / "shop.duckdb")
    trio.run(build, db, clock=trio.testing.MockClock(autojump_threshold=0))
    return db


@pytest.fixture(scope="module")
def pg_shop(_pg_admin: _PgAdmin) -> Iterator[str]:
    """The same shop in a schema of its own on the test server, for the whole module."""
    from psycopg import sql

    schema = f"t_{uuid.uuid4().hex}"
    _pg_admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    joiner = "&" if "?" in _pg_admin.server else "?"
    url = f"{_pg_admin.server}{joiner}options=-csearch_path%3D{schema}"
    try:
        trio.run(build, url, clock=trio.testing.MockClock(autojump_threshold=0))
        yield url
    finally:
        _pg_admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def recipes(dialect: str = "duckdb") -> dict[str, str]:
    """Return the cookbook's queries for `dialect` (duckdb, postgres) by section title.

    A section holds one ```sql block, for both stores, or two: DuckDB's, then
    PostgreSQL's after a line that starts with "On PostgreSQL".
    """
    found: dict[str, str] = {}
    title = ""
    for block in re.split(r"^(#{2,3} .+)$", COOKBOOK.read_text(), flags=re.MULTILINE):
        if block.startswith("#"):
            title = block.lstrip("#").strip()
            continue
        queries: dict[str, str] = {}
        end = 0
        for match in re.finditer(r"```sql\n(.*?)```", block, flags=re.DOTALL):
            before = block[end:match.start()]
            end = match.end()
            which = "postgres" if re.search(r"^On PostgreSQL", before, re.MULTILINE) else "duckdb"
            assert which not in queries, f"two {which} queries under {title!r}"
            assert which == "duckdb" or queries, f"a PostgreSQL query alone under {title!r}"
            queries[which] = match.group(1)
        if queries:
            assert title not in found, f"two sections titled {title!r}"
            found[title] = queries.get(dialect, queries["duckdb"])
    return found


def run_sql(capsys: pytest.CaptureFixture[str], db: str, sql: str) -> list[dict[str, Any]]:
    code = main(["sql", db, sql, "--json"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


EXPECTED: dict[str, list[dict[str, Any]]] = {
    "p95 duration per step key": [  # cancelled attempts have no duration
        {"key": "ship:v1", "attempts": 7, "p95_ms": 500.0},
        {"key": "ups:v1", "attempts": 1, "p95_ms": 400.0},
        {"key": "dhl:v1", "attempts": 1, "p95_ms": 300.0},
        {"key": "reserve:v1", "attempts": 14, "p95_ms": 267.0},  # 20, 40, ... 280 ms
        {"key": "release:v1", "attempts": 3, "p95_ms": 50.0},
        {"key": "reserve:south", "attempts": 1, "p95_ms": 50.0},
        {"key": "charge:v1", "attempts": 19, "p95_ms": 30.0},
    ],
    "Runs failed in the last hour, with their error": [  # o-5 failed two days earlier
        {"run_id": "o-8", "error_type": "replay.StepFailed",
         "message": "step 'charge:v1' of run 'o-8' failed after 3 attempts: "
                    "builtins.ConnectionError: bank timeout"},
    ],
    "Runs waiting on `approval:v1` for more than a day": [
        {"run_id": "o-7", "status_text": "waiting for a manager",
         "waiting_since": START + timedelta(minutes=6, milliseconds=140)},
    ],
    "Retry count per key": [{"key": "charge:v1", "retries": 9, "gave_up": 3}],
    "Everything that happened to one run, in order": [
        {"what": "run/started", "key": None, "attempt": None, "ms": None,
         "value_json": ["o-3", 4500], "error_type": None},
        {"what": "step/completed", "key": "reserve:v1", "attempt": 1, "ms": 60.0,
         "value_json": {"order": "o-3", "sku": "A-1"}, "error_type": None},
        {"what": "step/retrying", "key": "charge:v1", "attempt": 1, "ms": 30.0,
         "value_json": None, "error_type": "builtins.ConnectionError"},
        {"what": "step/retrying", "key": "charge:v1", "attempt": 2, "ms": 30.0,
         "value_json": None, "error_type": "builtins.ConnectionError"},
        {"what": "step/completed", "key": "charge:v1", "attempt": 3, "ms": 30.0,
         "value_json": "ch-o-3", "error_type": None},
        {"what": "step/completed", "key": "ship:v1", "attempt": 1, "ms": 500.0,
         "value_json": "trk-o-3", "error_type": None},
        {"what": "run/completed", "key": None, "attempt": None, "ms": None,
         "value_json": {"order": "o-3", "receipt": "ch-o-3", "tracking": "trk-o-3",
                        "approved_by": None}, "error_type": None},
    ],
    "Step latency percentiles": [
        {"key": "charge:v1", "n": 7, "p50_ms": 30.0, "p90_ms": 30.0, "p99_ms": 30.0,
         "max_ms": 30.0},
        {"key": "dhl:v1", "n": 1, "p50_ms": 300.0, "p90_ms": 300.0, "p99_ms": 300.0,
         "max_ms": 300.0},
        {"key": "release:v1", "n": 3, "p50_ms": 50.0, "p90_ms": 50.0, "p99_ms": 50.0,
         "max_ms": 50.0},
        {"key": "reserve:v1", "n": 14, "p50_ms": 150.0, "p90_ms": 254.0, "p99_ms": 277.4,
         "max_ms": 280.0},
        {"key": "ship:v1", "n": 7, "p50_ms": 500.0, "p90_ms": 500.0, "p99_ms": 500.0,
         "max_ms": 500.0},
        {"key": "ups:v1", "n": 1, "p50_ms": 400.0, "p90_ms": 400.0, "p99_ms": 400.0,
         "max_ms": 400.0},
    ],
    "Retry histogram": [
        {"key": "charge:v1", "attempts_needed": 1, "steps": 5},
        {"key": "charge:v1", "attempts_needed": 2, "steps": 1},
        {"key": "charge:v1", "attempts_needed": 3, "steps": 1},
        {"key": "dhl:v1", "attempts_needed": 1, "steps": 1},
        {"key": "release:v1", "attempts_needed": 1, "steps": 3},
        {"key": "reserve:v1", "attempts_needed": 1, "steps": 14},
        {"key": "ship:v1", "attempts_needed": 1, "steps": 7},
        {"key": "ups:v1", "attempts_needed": 1, "steps": 1},
    ],
    "Failure rate per step key": [  # a race's losers are cancelled, not failed
        {"key": "reserve:south", "attempts": 1, "failed_attempts": 1, "failure_pct": 100.0},
        {"key": "charge:v1", "attempts": 19, "failed_attempts": 12, "failure_pct": 63.2},
        {"key": "dhl:v1", "attempts": 1, "failed_attempts": 0, "failure_pct": 0.0},
        {"key": "release:v1", "attempts": 3, "failed_attempts": 0, "failure_pct": 0.0},
        {"key": "reserve:v1", "attempts": 14, "failed_attempts": 0, "failure_pct": 0.0},
        {"key": "ship:v1", "attempts": 7, "failed_attempts": 0, "failure_pct": 0.0},
        {"key": "ups:v1", "attempts": 1, "failed_attempts": 0, "failure_pct": 0.0},
    ],
    "Errors by type": [
        {"error_type": "builtins.ConnectionError", "attempts": 12, "runs": 5,
         "example": "bank timeout"},
        {"error_type": "builtins.LookupError", "attempts": 1, "runs": 1,
         "example": "no A-1 in stock at south"},
    ],
    "Slowest runs": [  # o-6 waited for its approval from 09:05 to 11:00
        {"run_id": "o-6", "state": "completed", "seconds": 6900.53},
        {"run_id": "o-3", "state": "completed", "seconds": 3.65},  # back-offs of 1 s, 2 s
        # the basket lasts as long as its slower child: o-14's 3 attempts, 1 s + 2 s apart
        {"run_id": "b-1", "state": "completed", "seconds": 3.37},
        {"run_id": "b-1/order:o-14", "state": "failed", "seconds": 3.37},
        {"run_id": "o-8", "state": "failed", "seconds": 3.25},
    ],
    "Runs stuck waiting": [
        {"run_id": "o-7", "state": "suspended", "waiting_for": "approval:v1",
         "status_text": "waiting for a manager", "idle_hours": 49.9},
        {"run_id": "s-2", "state": "sleeping", "waiting_for": "pause:v1",
         "status_text": "stock: round 1 of 3", "idle_hours": 1.0},
    ],
    "Runs per workflow and state": [
        {"workflow": "basket:v1", "runs": 1, "completed": 1, "failed": 0, "cancelled": 0,
         "in_flight": 0},
        {"workflow": "order:v1", "runs": 14, "completed": 7, "failed": 3, "cancelled": 3,
         "in_flight": 1},
        {"workflow": "quote:v1", "runs": 3, "completed": 3, "failed": 0, "cancelled": 0,
         "in_flight": 0},
        {"workflow": "restock:v1", "runs": 1, "completed": 0, "failed": 1, "cancelled": 0,
         "in_flight": 0},
        {"workflow": "sync:v1", "runs": 2, "completed": 1, "failed": 0, "cancelled": 0,
         "in_flight": 1},
    ],
    "Runs started per day": [
        {"day": "2026-03-02", "started": 8, "completed": 5},
        {"day": "2026-03-03", "started": 9, "completed": 5},  # child runs count too
        {"day": "2026-03-04", "started": 4, "completed": 2},  # o-8, o-9, s-1, s-2
    ],
    "Fields of inputs and outputs": [
        {"run_id": run_id, "order_id": run_id.split(":")[-1], "cents": cents,
         "tracking": f"trk-{run_id.split(':')[-1]}",
         "approved_by": "maria" if run_id == "o-6" else None}
        for run_id, cents in (("o-6", 15000), ("o-3", 4500), ("o-1", 1200), ("o-4", 990),
                              ("b-1/order:o-13", 900), ("o-2", 800), ("o-9", 700))
    ],
    "Signals and how long runs waited for them": [
        {"run_id": "o-6", "key": "approval:v1", "payload": "maria", "waited_minutes": 115.0},
    ],
    "Step results of one kind across runs": [
        {"sku": "A-1", "reservations": 12}, {"sku": "B-2", "reservations": 2},
    ],
    "Children of run `b-1` and their states": [
        {"run_id": "b-1/order:o-13", "workflow": "order:v1", "state": "completed",
         "waiting_for": None, "error_type": None, "seconds": 0.79},  # 280 + 30 + 500 ms
        {"run_id": "b-1/order:o-14", "workflow": "order:v1", "state": "failed",
         "waiting_for": None, "error_type": "replay.StepFailed", "seconds": 3.37},
    ],
    "Groups whose fail-fast tripped, and why": [  # limit=2: east was still held back
        {"run_id": "r-1", "group_key": "warehouses:v1", "failed_member": "reserve:south",
         "error_type": "builtins.LookupError", "error": "no A-1 in stock at south",
         "cancelled": "reserve:north", "never_started": "reserve:east"},
    ],
    "Races and their winners": [
        {"run_id": "q-1", "race": "carrier:v1", "winner": "dhl", "winner_key": "dhl:v1",
         "outcome": "completed", "decided_after_s": 0.3},
        {"run_id": "q-2", "race": "carrier:v1", "winner": "ups", "winner_key": "ups:v1",
         "outcome": "completed", "decided_after_s": 0.4},
        {"run_id": "q-3", "race": "carrier:v1", "winner": "none",  # both quotes took 5 s
         "winner_key": "give-up:v1", "outcome": "completed", "decided_after_s": 2.0},
    ],
    "Runs cancelled in the last day, with their reason": [  # o-10's was two days earlier
        {"run_id": "o-12", "workflow": "order:v1", "reason": "the run's deadline passed",
         "thrown_in_at": "approval:v1",
         "cancelled_at": START + timedelta(days=1, hours=13, milliseconds=50)},
        {"run_id": "o-11", "workflow": "order:v1", "reason": "customer changed their mind",
         "thrown_in_at": "approval:v1",
         "cancelled_at": START + timedelta(days=1, hours=8, minutes=30, milliseconds=270)},
    ],
    "Latest progress of running runs": [  # s-1 finished; o-7 noted nothing
        {"run_id": "s-2", "workflow": "sync:v1", "state": "sleeping", "generation": 0,
         "status_text": "stock: round 1 of 3", "status_json": {"feed": "stock", "round": 1},
         "noted_at": START + timedelta(days=2, hours=1)},
    ],
    "Runs whose code version changed": [  # s-2 slept through the redeploy: not executed
        {"run_id": "s-1", "workflow": "sync:v1", "state": "completed",
         "started_under": "2026.03.02", "last_ran_under": "2026.03.04", "changes": 1,
         "changed_at": START + timedelta(days=2, hours=1, seconds=1)},
    ],
    "Events per generation of run `s-1`": [  # the version change is in generation 1
        {"generation": 0, "events": 4, "began": START + timedelta(days=2, hours=1),
         "input": ["prices", 1, 0.5]},
        {"generation": 1, "events": 5,
         "began": START + timedelta(days=2, hours=1, milliseconds=500),
         "input": ["prices", 2, 0.5]},
        {"generation": 2, "events": 5, "began": START + timedelta(days=2, hours=1, seconds=1),
         "input": ["prices", 3, 0.5]},
    ],
}


def test_every_query_of_the_cookbook_is_tested() -> None:
    assert list(recipes()) == list(EXPECTED)


def test_every_recipe_has_its_postgres_version_where_duckdb_differs() -> None:
    duckdb_only = re.compile(r"quantile_cont|QUALIFY|->> '\$|-> '\$|epoch\(|any_value|"
                             r"GROUP BY ALL|VARCHAR\[\]|list_position|INTERVAL \d")
    postgres = recipes("postgres")
    assert list(postgres) == list(recipes())
    for title, sql in postgres.items():
        assert not duckdb_only.search(sql), title


@pytest.mark.parametrize("store", ["duckdb", "postgres"])
@pytest.mark.parametrize("title", list(EXPECTED))
def test_cookbook_query_answers_its_question(capsys: pytest.CaptureFixture[str],
                                            request: pytest.FixtureRequest, store: str,
                                            title: str) -> None:
    db = request.getfixturevalue("shop" if store == "duckdb" else "pg_shop")
    rows = run_sql(capsys, db, recipes(store)[title])
    for row in rows:
        row.pop("seq", None)  # global order: its values are not the point
        for column in ("waiting_since", "cancelled_at", "noted_at", "changed_at", "began"):
            if column in row:
                row[column] = when(row[column])
    assert rows == EXPECTED[title]


def test_any_duckdb_client_can_run_the_cookbook(shop: str) -> None:
    con = duckdb.connect(shop, read_only=True)
    try:
        for title, sql in recipes().items():
            assert len(con.execute(sql).fetchall()) == len(EXPECTED[title]), title
        # JSON columns are DuckDB JSON: their fields read with ->> in any client.
        assert con.execute("SELECT value_json ->> '$.sku' FROM replay_events "
                           "WHERE run_id = 'o-1' AND key = 'reserve:v1'").fetchall() == [
            ("A-1",)]
        assert dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_name = 'replay_runs' AND column_name LIKE '%json'"
                                ).fetchall()) == {"input_json": "JSON", "output_json": "JSON",
                                                  "status_json": "JSON"}
    finally:
        con.close()


def test_any_postgres_client_can_run_the_cookbook(pg_shop: str) -> None:
    import psycopg

    with psycopg.connect(pg_shop) as con:
        for title, sql in recipes("postgres").items():
            assert len(con.execute(sql).fetchall()) == len(EXPECTED[title]), title
        # JSON columns are PostgreSQL json: their fields read with ->> in any client.
        assert con.execute("SELECT value_json ->> 'sku' FROM replay_events "
                           "WHERE run_id = 'o-1' AND key = 'reserve:v1'").fetchall() == [
            ("A-1",)]
        assert dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_name = 'replay_runs' AND column_name LIKE '%json' "
                                "AND table_schema = current_schema()").fetchall()) == {
            "input_json": "json", "output_json": "json", "status_json": "json"}
