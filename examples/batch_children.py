"""Batch of child runs: fan out with `Gather` and `Child`, collect the failures.

    python examples/batch_children.py [path.duckdb]   # default: batch_children.duckdb

An `invoice-batch:v1` run books a batch of invoices. Each invoice is processed by a
child run of the `process-item:v1` workflow (parse, convert the currency, book), at
most four at a time: `Gather("items:v1", [Child(f"item:{i}", process_item, invoice)
...], limit=4)`. A child is a run of its own, with the id ``f"{parent}/{key}"``: it
has its own history, shows up in `replay_runs` with its `parent_run_id`, and could be
signalled, resumed or cancelled on its own. `Gather` waits for every child, whether
it completes or fails, and returns a `replay.Gathered`: the values, and the failures
(`replay.ChildFailed`, naming the child run). The batch books what it can and reports
the invoices that failed instead of failing as a whole.

The currency conversion waits half a second (an `async def` step); the script runs
under trio's fake clock (`MockClock`), so that takes no real time.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from typing import Any

import trio
import trio.testing

import replay
from replay import Child, Gather, Step

EXECUTED: Counter[str] = Counter()  # step function calls in this process, by name
_LOCK = threading.Lock()  # sync steps run in worker threads
LIMIT = 4  # child runs under way at once

INVOICES = [
    {"id": "INV-101", "currency": "EUR", "amount": 120.00},
    {"id": "INV-102", "currency": "USD", "amount": 80.50},
    {"id": "INV-103", "currency": "GBP", "amount": 42.00},
    {"id": "INV-104", "currency": "EUR"},  # no amount
    {"id": "INV-105", "currency": "CHF", "amount": 310.00},
    {"id": "INV-106", "currency": "USD", "amount": 19.99},
    {"id": "INV-107", "currency": "XXX", "amount": 55.00},  # unknown currency
    {"id": "INV-108", "currency": "EUR", "amount": 999.00},
    {"id": "INV-109", "currency": "GBP", "amount": 7.25},
    {"id": "INV-110", "currency": "CHF", "amount": 64.00},
]
RATES = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17, "CHF": 1.05}


def executed(step: str) -> None:
    with _LOCK:
        EXECUTED[step] += 1


# --- step functions ---


def parse(invoice: dict[str, Any]) -> dict[str, Any]:
    executed("parse")
    if "amount" not in invoice:
        raise ValueError(f"invoice {invoice['id']} has no amount")
    return {"id": invoice["id"], "currency": invoice["currency"],
            "cents": round(invoice["amount"] * 100)}


async def to_euro_cents(currency: str, cents: int) -> int:
    executed("to_euro_cents")
    await trio.sleep(0.5)  # stands for `await rates_service.get(currency)`
    if currency not in RATES:
        raise LookupError(f"no exchange rate for {currency}")
    return round(cents * RATES[currency])


def book(invoice_id: str, euro_cents: int) -> str:
    executed("book")
    return f"ledger-{invoice_id}"


def send_report(batch_id: str, booked: int, failed: list[dict[str, str]]) -> str:
    executed("send_report")
    lines = [f"{batch_id}: {booked} booked, {len(failed)} failed"]
    lines += [f"  {f['invoice']}: {f['error']}" for f in failed]
    return "\n".join(lines)


# --- the workflows: one per invoice, and the batch ---


@replay.workflow(name="process-item:v1")
def process_item(invoice: dict[str, Any]):
    # A step fails after one attempt by default; its failure, not caught here, fails
    # this child run, and the parent sees it as a ChildFailed.
    parsed = yield Step("parse:v1", parse, invoice)
    euro_cents = yield Step("convert:v1", to_euro_cents, parsed["currency"], parsed["cents"])
    entry = yield Step("book:v1", book, parsed["id"], euro_cents)
    return {"invoice": parsed["id"], "euro_cents": euro_cents, "entry": entry}


@replay.workflow(name="invoice-batch:v1")
def invoice_batch(batch_id: str, invoices: list[dict[str, Any]]):
    outcomes = yield Gather(
        "items:v1",
        [Child(f"item:{i}", process_item, invoice) for i, invoice in enumerate(invoices)],
        limit=LIMIT)
    # One outcome per invoice, in order: a value, or the child's failure.
    failed = [{"invoice": invoices[i]["id"], "run_id": failure.child_run_id,
               "error": failure.message}
              for i, failure in outcomes.failures]
    booked = outcomes.values()
    report = yield Step("report:v1", send_report, batch_id, len(booked), failed)
    return {"booked": [b["invoice"] for b in booked],
            "euro_cents": sum(b["euro_cents"] for b in booked),
            "failed": [f["invoice"] for f in failed], "report": report}


# --- running it ---


async def main(db_path: str = "batch_children.duckdb") -> dict[str, Any]:
    EXECUTED.clear()
    async with replay.open_engine(db_path, workflows=[invoice_batch, process_item]) as engine:
        # Child workflows are registered like any other: the engine runs them.
        run = await engine.start(invoice_batch, "batch-2024-06", INVOICES, run_id="batch-2024-06")
        output = await run.result()
        state = engine.status(run.run_id).state
        print(f"{run.run_id}: {state}")
        print(output["report"])
        print(f"step functions executed this time: {dict(EXECUTED)}")

        children = await engine.sql(
            "SELECT run_id, workflow, state, parent_run_id, error_type FROM replay_runs "
            "WHERE parent_run_id = $run ORDER BY created_at, run_id", {"run": run.run_id})
        print("\nrun_id                 workflow         state      parent_run_id  error_type")
        for child_id, workflow, child_state, parent_id, error_type in children:
            print(f"{child_id:<22} {workflow:<16} {child_state:<10} {parent_id:<14} "
                  f"{error_type or ''}".rstrip())

        # The parent's own records of its children: at most LIMIT under way at once.
        [(most, started)] = await engine.sql(
            "SELECT max(under_way), count(*) FILTER (WHERE event = 'started') FROM ("
            "  SELECT event, sum(CASE WHEN event = 'started' THEN 1 ELSE -1 END) "
            "         OVER (ORDER BY seq) AS under_way "
            "  FROM replay_events WHERE run_id = $run AND kind = 'child')",
            {"run": run.run_id})
        print(f"\n{started} child runs, at most {most} under way at once (limit={LIMIT})")
    return {"output": output, "state": state, "executed": dict(EXECUTED),
            "children": children, "most_under_way": most}


if __name__ == "__main__":
    # Virtual time: the conversions' waits pass at once (see the module docstring).
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "batch_children.duckdb", clock=clock)
