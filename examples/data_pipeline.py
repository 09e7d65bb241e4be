"""Data pipeline: a failed run is resumed after a fix, without redoing finished steps.

    python examples/data_pipeline.py [path.duckdb]   # default: data_pipeline.duckdb

extract → transform → convert → load. The convert step calls a currency-rates
service that is down on the first try. Steps get one attempt by default, so the run
fails. Once the service is back (here: a flag flips), `engine.resume(run_id)` runs
the failed step again; extract and transform replay from the database instead of
running a second time.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import trio

import replay
from replay import Step

EXECUTED: Counter[str] = Counter()  # step function calls in this process, by name
RATES_SERVICE_UP = False  # main() flips it to play "the outage is over"
WAREHOUSE: dict[str, list[dict[str, Any]]] = {}  # stands for a real database

RAW = """\
day,store,currency,amount
2024-06-01,paris,EUR,120.50
2024-06-01,london,GBP,80.00
2024-06-01,berlin,EUR,not-a-number
2024-06-01,zurich,CHF,99.90
"""


def extract(day: str) -> list[dict[str, str]]:
    EXECUTED["extract"] += 1
    header, *lines = RAW.splitlines()
    rows = [dict(zip(header.split(","), line.split(","), strict=True)) for line in lines]
    return [row for row in rows if row["day"] == day]


def transform(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    EXECUTED["transform"] += 1
    clean = []
    for row in rows:
        try:
            clean.append({"store": row["store"], "currency": row["currency"],
                          "amount": float(row["amount"])})
        except ValueError:
            continue  # drop malformed rows
    return clean


def convert(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    EXECUTED["convert"] += 1
    if not RATES_SERVICE_UP:
        raise ConnectionError("rates.example.com: connection refused")
    rates = {"EUR": 1.0, "GBP": 1.18, "CHF": 1.03}
    return [{"store": r["store"], "eur": round(r["amount"] * rates[r["currency"]], 2)}
            for r in rows]


def load(day: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    EXECUTED["load"] += 1
    WAREHOUSE[day] = rows  # overwrite, not append: safe to run again
    return {"day": day, "rows": len(rows), "total_eur": round(sum(r["eur"] for r in rows), 2)}


@replay.workflow(name="daily-sales:v1")
def daily_sales(day: str):
    # No retry= on these steps: the engine default is a single attempt, so a failing
    # step fails the run (an unhandled StepFailed) and waits for `resume`.
    raw = yield Step("extract:v1", extract, day)
    rows = yield Step("transform:v1", transform, raw)
    converted = yield Step("convert:v1", convert, rows)
    return (yield Step("load:v1", load, day, converted))


async def main(db_path: str = "data_pipeline.duckdb") -> dict[str, Any]:
    global RATES_SERVICE_UP
    EXECUTED.clear()
    RATES_SERVICE_UP = False
    failure = None
    async with replay.open_engine(db_path, workflows=[daily_sales]) as engine:
        run = await engine.start(daily_sales, "2024-06-01", run_id="sales-2024-06-01")
        try:
            output = await run.result()  # on a second invocation: the recorded output
        except replay.WorkflowFailed as failed:
            failure = failed.error_type
            print(f"{run.run_id}: {engine.status(run.run_id).state}: {failed.message}")
            print(f"executed before the fix: {dict(EXECUTED)}")
            # Fix the cause (a deploy, a config change, an outage ending) and resume:
            # the step that failed runs again with a fresh retry budget; every other
            # recorded outcome is replayed from the database.
            RATES_SERVICE_UP = True
            run = await engine.resume(run.run_id)
            output = await run.result()
        state = engine.status(run.run_id).state
        print(f"{run.run_id}: {state} -> {output}")
        print(f"executed in all: {dict(EXECUTED)}")

        # engine.history is the same data as the replay_events view, as Event objects.
        print("\nkey           event           attempt  error_type")
        for event in await engine.history(run.run_id):
            what = f"{event.kind}/{event.event}"
            print(f"{event.key or '':<13} {what:<15} {event.attempt or '':>7}  "
                  f"{event.error_type or ''}".rstrip())
    return {"output": output, "state": state, "failure": failure, "executed": dict(EXECUTED)}


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "data_pipeline.duckdb")
