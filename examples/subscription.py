"""A subscription that renews every month, forever, with `ContinueAsNew`.

    python examples/subscription.py [path.duckdb]   # default: subscription.duckdb

Each month the `subscription:v1` workflow bills the customer, notes the renewal as the
run's status, and waits for whichever comes first: thirty days (`Sleep`) or a
``cancel`` signal (`Suspend`), raced with `Race`. When the month is up it returns
``replay.ContinueAsNew(customer, month + 1)``: the run starts afresh with the new
arguments and an empty memo, under the same run id. So the keys (``charge:v1``,
``month:v1``) are the same every month, and the history the engine replays stays one
month long however long the subscription lives. Earlier months stay in
``replay_events``, each under its `generation` number, until a purge removes them.
The mailbox is kept across the switch: a ``cancel`` sent at any time is taken.

The script runs under trio's fake clock (`MockClock`), anchored at 2026-01-01: a year
of renewals takes a fraction of a second of wall time. Then the customer cancels and
the run completes. Run it again on the same file: the run is finished, nothing runs.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import trio
import trio.testing

import replay
from replay import ContinueAsNew, Note, Race, Sleep, Step, Suspend
from replay.testing import set_virtual_start

RUN_ID = "sub-ada"
START = datetime(2026, 1, 1, tzinfo=UTC)
MONTH = timedelta(days=30)

EXECUTED: Counter[str] = Counter()  # step function calls in this process, by name


# --- step functions ---


def bill(customer: str, month: int) -> str:
    EXECUTED["bill"] += 1
    return f"inv-{customer}-{month:02d}"  # stands for a call to the payment provider


def say_goodbye(customer: str, reason: str) -> str:
    EXECUTED["say_goodbye"] += 1
    return f"mail to {customer}: sorry to see you go ({reason})"


# --- the workflow: one month per generation ---


@replay.workflow(name="subscription:v1")
def subscription(customer: str, month: int):
    invoice = yield Step("charge:v1", bill, customer, month)
    yield Note("renewed:v1", {"month": month, "invoice": invoice},
               text=f"month {month} paid ({invoice})")
    winner, value = yield Race("this-month:v1", {
        "renew": Sleep("month:v1", MONTH),
        "cancel": Suspend("cancel"),
    })
    if winner == "cancel":
        yield Step("goodbye:v1", say_goodbye, customer, value)
        return {"customer": customer, "months": month, "reason": value}
    # Same run id, same mailbox; the next generation gets these arguments, a fresh memo.
    return ContinueAsNew(customer, month + 1)


# --- running it ---

RENEWALS = """
SELECT generation, recorded_at, value_json ->> '$.invoice' AS invoice
FROM replay_events
WHERE run_id = ? AND kind = 'note'
ORDER BY seq
"""
PER_GENERATION = """
SELECT generation, count(*) FROM replay_events WHERE run_id = ? GROUP BY 1 ORDER BY 1
"""


async def main(db_path: str = "subscription.duckdb") -> dict[str, Any]:
    EXECUTED.clear()
    set_virtual_start(START)  # the fake clock's "now"; the file's newest time wins if later
    wall_start = time.perf_counter()
    async with replay.open_engine(db_path, workflows=[subscription]) as engine:
        run = await engine.start(subscription, "ada", 1, run_id=RUN_ID)
        if engine.status(RUN_ID).state not in ("completed", "failed", "cancelled"):
            await trio.sleep(timedelta(days=365).total_seconds())  # instant under MockClock
            info = engine.status(RUN_ID)
            print(f"{engine.now():%Y-%m-%d}: {RUN_ID} is {info.state} in generation "
                  f"{info.generation}, status {info.status_text!r}")
            await engine.signal(RUN_ID, "cancel", "moving abroad")
        output = await run.result()
        info = engine.status(RUN_ID)
        print(f"{RUN_ID}: {info.state} after {info.generation + 1} generations -> {output}")

        renewals = await engine.sql(RENEWALS, [RUN_ID])
        print("\ngeneration  billed on   invoice")
        for generation, recorded_at, invoice in renewals:
            print(f"{generation:>10}  {recorded_at:%Y-%m-%d}  {invoice}")
        per_generation = await engine.sql(PER_GENERATION, [RUN_ID])
        print("\ngeneration  events")
        for generation, count in per_generation:
            print(f"{generation:>10}  {count:>6}")
    wall = time.perf_counter() - wall_start
    print(f"\na year of renewals in {wall * 1000:.0f} ms of wall time; "
          f"step functions executed this time: {dict(EXECUTED)}")
    return {"output": output, "info": info, "renewals": renewals,
            "per_generation": per_generation, "executed": dict(EXECUTED),
            "wall_seconds": wall}


if __name__ == "__main__":
    # Virtual time: a year passes at once (see the module docstring).
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "subscription.duckdb", clock=clock)
