"""Every query of docs/cookbook.md, run against a database with known content (issue 7).

The database is built in virtual time from a fixed start, so every timestamp and
duration is exact: nine orders of workflow ``order:v1`` (steps ``reserve:v1``,
``charge:v1`` retried up to three attempts, ``ship:v1``; orders of 10000 cents or more
wait for ``approval:v1``), one a minute from 2026-03-02 09:00 UTC, then two more two
days later. Each query runs through ``replay sql DB QUERY --json`` and, to show that no
replay code is needed to read the file, through a plain DuckDB connection.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import trio
import trio.testing

import replay
from replay import Retry, Step, Suspend
from replay._cli import main
from replay._engine._clock import set_virtual_start

COOKBOOK = Path(__file__).resolve().parent.parent / "docs" / "cookbook.md"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
# order_id: (cents, milliseconds reserve:v1 takes, failed charge:v1 attempts)
FIRST = {"o-1": (1200, 20, 0), "o-2": (800, 40, 1), "o-3": (4500, 60, 2),
         "o-4": (990, 80, 0), "o-5": (2300, 100, 3), "o-6": (15000, 120, 0),
         "o-7": (25000, 140, 0)}
LATER = {"o-8": (1500, 160, 3), "o-9": (700, 180, 0)}
PLAN = FIRST | LATER
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


@replay.workflow(name="order:v1")
def order(order_id: str, cents: int):  # type: ignore[no-untyped-def]
    yield Step("reserve:v1", reserve, order_id, PLAN[order_id][1])
    approved_by = None
    if cents >= 10000:
        approved_by = yield Suspend("approval:v1", status="waiting for a manager")
    receipt = yield Step("charge:v1", charge, order_id, cents,
                         retry=Retry(attempts=3, initial=1.0, backoff=2.0, jitter=0))
    tracking = yield Step("ship:v1", ship, order_id)
    return {"order": order_id, "receipt": receipt, "tracking": tracking,
            "approved_by": approved_by}


async def build(db: str) -> None:
    set_virtual_start(START)
    zero = trio.current_time()
    failures.update({order_id: plan[2] for order_id, plan in PLAN.items()})
    async with replay.open_engine(db, workflows=[order], durability="none",
                                  serve_cli=False) as engine:
        async def place(orders: dict[str, tuple[int, int, int]], at: float) -> None:
            for i, (order_id, (cents, _, _)) in enumerate(orders.items()):
                await trio.sleep_until(zero + at + 60 * i)
                await (await engine.start(order, order_id, cents, run_id=order_id)).wait()

        await place(FIRST, 0)
        await trio.sleep_until(zero + 2 * 3600)
        await engine.signal("o-6", "approval:v1", "maria")
        await engine.get_run("o-6").result()
        await place(LATER, 2 * 86400 + 2 * 3600)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> str:
    db = str(tmp_path_factory.mktemp("cookbook") / "shop.duckdb")
    trio.run(build, db, clock=trio.testing.MockClock(autojump_threshold=0))
    return db


def recipes() -> dict[str, str]:
    """Return the cookbook's ```sql blocks by the title of their section."""
    found: dict[str, str] = {}
    title = ""
    for block in re.split(r"^(#{2,3} .+)$", COOKBOOK.read_text(), flags=re.MULTILINE):
        if block.startswith("#"):
            title = block.lstrip("#").strip()
            continue
        for sql in re.findall(r"```sql\n(.*?)```", block, flags=re.DOTALL):
            assert title not in found, f"two queries under {title!r}"
            found[title] = sql
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
    "p95 duration per step key": [
        {"key": "ship:v1", "attempts": 6, "p95_ms": 500.0},
        {"key": "reserve:v1", "attempts": 9, "p95_ms": 172.0},  # 20, 40, ... 180 ms
        {"key": "charge:v1", "attempts": 15, "p95_ms": 30.0},
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
    "Retry count per key": [{"key": "charge:v1", "retries": 7, "gave_up": 2}],
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
        {"key": "charge:v1", "n": 6, "p50_ms": 30.0, "p90_ms": 30.0, "p99_ms": 30.0,
         "max_ms": 30.0},
        {"key": "reserve:v1", "n": 9, "p50_ms": 100.0, "p90_ms": 164.0, "p99_ms": 178.4,
         "max_ms": 180.0},
        {"key": "ship:v1", "n": 6, "p50_ms": 500.0, "p90_ms": 500.0, "p99_ms": 500.0,
         "max_ms": 500.0},
    ],
    "Retry histogram": [
        {"key": "charge:v1", "attempts_needed": 1, "steps": 4},
        {"key": "charge:v1", "attempts_needed": 2, "steps": 1},
        {"key": "charge:v1", "attempts_needed": 3, "steps": 1},
        {"key": "reserve:v1", "attempts_needed": 1, "steps": 9},
        {"key": "ship:v1", "attempts_needed": 1, "steps": 6},
    ],
    "Failure rate per step key": [
        {"key": "charge:v1", "attempts": 15, "failed_attempts": 9, "failure_pct": 60.0},
        {"key": "reserve:v1", "attempts": 9, "failed_attempts": 0, "failure_pct": 0.0},
        {"key": "ship:v1", "attempts": 6, "failed_attempts": 0, "failure_pct": 0.0},
    ],
    "Errors by type": [
        {"error_type": "builtins.ConnectionError", "attempts": 9, "runs": 4,
         "example": "bank timeout"},
    ],
    "Slowest runs": [  # o-6 waited for its approval from 09:05 to 11:00
        {"run_id": "o-6", "state": "completed", "seconds": 6900.53},
        {"run_id": "o-3", "state": "completed", "seconds": 3.65},  # back-offs of 1 s, 2 s
        {"run_id": "o-8", "state": "failed", "seconds": 3.25},
        {"run_id": "o-5", "state": "failed", "seconds": 3.19},
        {"run_id": "o-2", "state": "completed", "seconds": 1.6},
    ],
    "Runs stuck waiting": [
        {"run_id": "o-7", "state": "suspended", "waiting_for": "approval:v1",
         "status_text": "waiting for a manager", "idle_hours": 49.9},
    ],
    "Runs per workflow and state": [
        {"workflow": "order:v1", "runs": 9, "completed": 6, "failed": 2, "in_flight": 1},
    ],
    "Runs started per day": [
        {"day": "2026-03-02", "started": 7, "completed": 5},
        {"day": "2026-03-04", "started": 2, "completed": 1},
    ],
    "Fields of inputs and outputs": [
        {"run_id": f"o-{n}", "order_id": f"o-{n}", "cents": cents, "tracking": f"trk-o-{n}",
         "approved_by": "maria" if n == 6 else None}
        for n, cents in ((6, 15000), (3, 4500), (1, 1200), (4, 990), (2, 800), (9, 700))
    ],
    "Signals and how long runs waited for them": [
        {"run_id": "o-6", "key": "approval:v1", "payload": "maria", "waited_minutes": 115.0},
    ],
    "Step results of one kind across runs": [
        {"sku": "A-1", "reservations": 7}, {"sku": "B-2", "reservations": 2},
    ],
}


def test_every_query_of_the_cookbook_is_tested() -> None:
    assert list(recipes()) == list(EXPECTED)


@pytest.mark.parametrize("title", list(EXPECTED))
def test_cookbook_query_answers_its_question(capsys: pytest.CaptureFixture[str], shop: str,
                                            title: str) -> None:
    rows = run_sql(capsys, shop, recipes()[title])
    for row in rows:
        row.pop("seq", None)  # global order: its values are not the point
        for column in ("waiting_since",):
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
                                ).fetchall()) == {"input_json": "JSON", "output_json": "JSON"}
    finally:
        con.close()
