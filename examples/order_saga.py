"""Order saga: cancel a run half-way and undo what it did, in reverse order.

    python examples/order_saga.py [path.duckdb]   # default: order_saga.duckdb

An `order-saga:v1` run reserves stock, charges the card, then suspends until the
warehouse approves the shipment. Each step that changed another system adds the step
that undoes it to a list. `engine.cancel(run_id, reason)` throws `replay.Cancelled`
into the workflow at the command it waits on (here the `Suspend`); the workflow
catches it, runs the compensations newest first (refund the card, release the stock)
and re-raises, so the run ends `cancelled`. The compensations are ordinary steps:
recorded, retried, and never run twice.

Two orders: the warehouse approves the first one, which ships; the customer cancels
the second one an hour in, and the warehouse's late approval of it is refused. The
script runs under trio's fake clock (`MockClock`), so the hours pass at once.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import trio
import trio.testing

import replay
from replay import Retry, Step, Suspend

EXECUTED: Counter[str] = Counter()  # step function calls in this process, by name
_LOCK = threading.Lock()  # sync steps run in worker threads

APPROVAL = "shipping-approval:v1"


def executed(step: str) -> None:
    with _LOCK:
        EXECUTED[step] += 1


# --- step functions: each stands for a call to another system ---


def reserve_stock(order_id: str, sku: str) -> str:
    executed("reserve_stock")
    return f"rsv-{order_id}-{sku}"


async def charge_card(order_id: str, cents: int) -> str:
    executed("charge_card")
    run_id, key, _ = replay.current_step()
    return f"ch-{run_id}-{key}"  # the same in every attempt: an idempotency key


def ship(order_id: str, reservation: str, approved_by: str) -> str:
    executed("ship")
    return f"trk-{order_id}"


async def refund(charge: str, cents: int) -> str:
    executed("refund")
    return f"rf-{charge}"


def release_stock(reservation: str) -> bool:
    executed("release_stock")
    return True


# A compensation must not give up: it gets more attempts than the step it undoes.
UNDO_RETRY = Retry(attempts=10, initial=1.0, backoff=2.0, max_delay=60.0)


# --- the workflow ---


@replay.workflow(name="order-saga:v1")
def order_saga(order_id: str, sku: str, cents: int):
    # Built the same way on every replay, so after a restart the list is the same.
    compensations: list[Step] = []
    try:
        reservation = yield Step("reserve:v1", reserve_stock, order_id, sku)
        compensations.append(Step("release:v1", release_stock, reservation, retry=UNDO_RETRY))
        charge = yield Step("charge:v1", charge_card, order_id, cents)
        compensations.append(Step("refund:v1", refund, charge, cents, retry=UNDO_RETRY))
        approval = yield Suspend(APPROVAL, status="waiting for the warehouse")
        tracking = yield Step("ship:v1", ship, order_id, reservation, approval["by"])
    except replay.Cancelled:
        # Thrown in at the command the run waited on. Undo, newest first, then let the
        # cancellation end the run (catching it without re-raising would carry on).
        # (A loop, not `yield from`: the engine sends each step's result back in.)
        for undo in reversed(compensations):  # noqa: UP028
            yield undo
        raise
    return {"order": order_id, "state": "shipped", "charge": charge, "tracking": tracking}


# --- running it ---

ORDERS = [  # run_id, order id, sku, cents
    ("order-2001", "2001", "lamp-3", 4_900),    # the warehouse approves it
    ("order-2002", "2002", "chair-9", 12_500),  # the customer cancels it
]


def offset(delta: timedelta) -> str:
    minutes = int(delta.total_seconds()) // 60
    return f"+{minutes // 60}h{minutes % 60:02}"


async def main(db_path: str = "order_saga.duckdb") -> dict[str, Any]:
    EXECUTED.clear()
    rejected: list[str] = []
    async with replay.open_engine(db_path, workflows=[order_saga]) as engine:
        runs = [await engine.start(order_saga, order_id, sku, cents, run_id=run_id)
                for run_id, order_id, sku, cents in ORDERS]
        start = engine.status(runs[0].run_id).created_at

        def log(message: str) -> None:
            print(f"{offset(engine.now() - start)}  {message}")

        for run in runs:
            info = await run.wait()  # suspended (or, on a second invocation, finished)
            log(f"{run.run_id}: {info.state}"
                + (f" ({info.status_text})" if info.status_text else ""))

        # On a second invocation with the same file, both runs have finished already.
        if engine.status("order-2002").state is replay.RunState.SUSPENDED:
            await trio.sleep(timedelta(hours=1).total_seconds())
            # Durable when `cancel` returns; the parked run wakes to take it.
            await engine.cancel("order-2002", "the customer changed their mind")
            log("order-2002: cancel requested")
            info = await runs[1].wait()
            log(f"order-2002: {info.state}")

            await trio.sleep(timedelta(hours=3).total_seconds())
            await engine.signal("order-2001", APPROVAL, {"by": "warehouse-east"})
            log(f"order-2001: {APPROVAL} <- warehouse-east")
            try:  # too late: the run has ended
                await engine.signal("order-2002", APPROVAL, {"by": "warehouse-east"})
            except replay.SignalRejected as refused:
                rejected.append("order-2002")
                log(f"order-2002: signal rejected: {refused}")

        outcomes: dict[str, Any] = {}
        states: dict[str, str] = {}
        for run in runs:
            try:
                outcomes[run.run_id] = await run.result()
            except replay.WorkflowFailed as ended:  # a cancelled run has no output
                outcomes[run.run_id] = ended.error_type
            states[run.run_id] = engine.status(run.run_id).state
            print(f"{run.run_id}: {states[run.run_id]} -> {outcomes[run.run_id]}")
        print(f"step functions executed this time: {dict(EXECUTED)}")

        # The cancelled run's history: the cancellation, then the compensations.
        history = await engine.history("order-2002")
        print("\nkey                   event                 at     value or error")
        for event in history:
            shown = event.error_type if event.value is None else event.value
            print(f"{event.key or '':<21} {event.kind + '/' + event.event:<21} "
                  f"{offset(event.recorded_at - start):<6} {'' if shown is None else shown}"
                  .rstrip())
    return {"outcomes": outcomes, "states": states, "executed": dict(EXECUTED),
            "rejected": rejected,
            "history": [(e.key, f"{e.kind}/{e.event}", e.recorded_at - start, e.value)
                        for e in history]}


if __name__ == "__main__":
    # Virtual time: the hours of waiting pass at once (see the module docstring).
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "order_saga.duckdb", clock=clock)
