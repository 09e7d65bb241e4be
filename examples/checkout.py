"""The checkout workflow of the specification, run in full against a DuckDB file.

A reservation, a cool-off sleep, a manager's approval (a signal), a retried charge with
a compensation when it fails for good. The manager is played by a task of this script
that signals the approval once the run is suspended.

    python examples/checkout.py [DB] [--cool-off SECONDS] [--virtual]

By default the cool-off is two seconds of real time, so the demo finishes quickly;
`--cool-off 1800` gives the specification's 30 minutes, and `--virtual` runs the whole
thing under trio's fake clock, where 30 minutes pass in milliseconds.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from typing import Any

import trio
import trio.testing

import replay
from replay import Sleep, Step, Suspend

ledger: list[str] = []  # what the outside world saw, in order


def reserve_stock(order_id: str) -> dict[str, Any]:
    ledger.append(f"reserved {order_id}")
    return {"order": order_id, "sku": "tea-1kg", "quantity": 1}


async def charge_card(order_id: str, cents: int) -> str:
    run_id, _key, attempt = replay.current_step()  # an idempotency key for the bank
    ledger.append(f"charged {cents} for {order_id} (attempt {attempt})")
    return f"receipt-{run_id}-{attempt}"


def release_stock(reservation: dict[str, Any]) -> None:
    ledger.append(f"released {reservation['order']}")


@replay.workflow(name="checkout")
def checkout(order_id: str, cents: int, cool_off_seconds: float = 1800):  # type: ignore[no-untyped-def]
    reservation = yield Step("reserve:v1", reserve_stock, order_id)
    yield Sleep("cool-off:v1", timedelta(seconds=cool_off_seconds))
    approved = yield Suspend("approval:v1", status="waiting for a manager")
    if not approved:
        return {"order": order_id, "state": "rejected"}
    try:
        receipt = yield Step("charge:v1", charge_card, order_id, cents,
                             retry=replay.Retry(attempts=5, initial=1.0, backoff=2.0),
                             timeout=30)
    except replay.StepFailed:
        yield Step("release:v1", release_stock, reservation)  # compensation
        raise
    return {"order": order_id, "receipt": receipt}


async def manager(engine: replay.Engine, run_id: str, approve: bool) -> None:
    """Approve (or reject) the order as soon as it waits for a decision."""
    info = await engine.get_run(run_id).wait()
    if info.state is replay.RunState.SUSPENDED:
        await engine.signal(run_id, "approval:v1", approve)


async def main(db_path: str, cool_off_seconds: float = 2.0) -> dict[str, Any]:
    ledger.clear()
    async with replay.open_engine(db_path, workflows=[checkout]) as engine:
        began = engine.now()
        runs = {
            "order-17": await engine.start(checkout, "order-17", 4200, cool_off_seconds,
                                           run_id="order-17"),
            "order-18": await engine.start(checkout, "order-18", 990, cool_off_seconds,
                                           run_id="order-18"),
        }
        async with trio.open_nursery() as nursery:
            nursery.start_soon(manager, engine, "order-17", True)
            nursery.start_soon(manager, engine, "order-18", False)
        outputs = {run_id: await run.result() for run_id, run in runs.items()}
        elapsed = engine.now() - began
        events = await engine.sql(
            "select run_id, key, kind || '/' || event, recorded_at from replay_events "
            "order by seq")
    return {"outputs": outputs, "ledger": list(ledger), "elapsed": elapsed, "events": events}


def run_demo(db_path: str, cool_off: float, virtual: bool) -> None:
    wall = time.monotonic()
    clock = trio.testing.MockClock(autojump_threshold=0) if virtual else None
    result = trio.run(main, db_path, cool_off, clock=clock)
    for run_id, output in result["outputs"].items():
        print(f"{run_id}: {output}")
    print("the outside world saw:", result["ledger"] or "nothing new (all recorded)")
    for run_id, key, event, at in result["events"]:
        print(f"  {at:%H:%M:%S.%f}  {run_id}  {event:<17} {key or ''}")
    print(f"engine time elapsed: {result['elapsed']}, "
          f"wall time: {time.monotonic() - wall:.3f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", nargs="?", default="checkout.duckdb")
    parser.add_argument("--cool-off", type=float, default=2.0, help="seconds (default 2)")
    parser.add_argument("--virtual", action="store_true", help="run under trio's fake clock")
    options = parser.parse_args()
    run_demo(options.db, options.cool_off, options.virtual)
