"""A shop whose big orders wait for a manager: find them, and approve them, in `replay ui`.

    python examples/stuck_orders.py [path.duckdb]              # default: stuck_orders.duckdb
    replay ui stuck_orders.duckdb                              # then open the printed URL
    python examples/stuck_orders.py shop.duckdb --ui [PORT]    # the page served by the engine

A morning of 40 orders. Each `order:v1` run reserves the stock, checks the customer
(a fraud score and the address, side by side in an `All` group), has a `payment:v1`
child run put a hold on the card, and ships. An order of 500 EUR or more also waits
for a manager on ``Suspend("approval:v1", timeout=2 days)`` before the hold is
captured; five of them are still waiting when the script ends. One customer's
address has no postcode, so that order fails; two card holds time out once and are
retried.

Then look at the file in the browser: ``replay ui`` lists the runs with their states,
and a waiting order's page shows why it waits (its status note and deadline) on its
timeline. With ``--ui`` the script keeps its engine open on the real clock and serves
the same page itself (``open_engine(ui=("127.0.0.1", PORT))``, port 8077 by default,
0 for any free port) until Ctrl-C: approve a waiting order on its page (key
``approval:v1``, payload ``{"approved": true, "by": "maria"}``) and watch it capture
the payment and ship, or cancel one and watch it release the hold on the card.

The orders are placed under trio's fake clock (`MockClock`), so the retry back-offs
take no real time. Run it again on the same file: every order is recorded, nothing
executes.
"""

from __future__ import annotations

import sys
from collections import Counter
from datetime import timedelta
from typing import Any

import trio
import trio.testing

import replay
from replay import All, Child, Retry, Step, Suspend

EXECUTED: Counter[str] = Counter()  # step function calls in this process, by name
TIMED_OUT: set[str] = set()  # the holds whose first attempt timed out in this process

APPROVAL_CENTS = 50_000  # orders of 500 EUR or more wait for a manager
APPROVAL_TIMEOUT = timedelta(days=2)
CUSTOMERS = ["ana", "ben", "cid", "dee", "eli", "fay", "gus", "hal"]
NO_POSTCODE = "order-1024"  # this order's address has no postcode: its check fails
FLAKY_HOLDS = {"order-1007", "order-1038"}  # the card gateway times out once for these
BIG = {"order-1012": 64_000, "order-1019": 52_500, "order-1026": 120_000,  # cents
       "order-1033": 75_000, "order-1038": 89_900}


def orders() -> list[tuple[str, str, int]]:
    """The morning's orders: (order id, customer, cents), oldest first."""
    placed = []
    for i in range(40):
        order_id = f"order-{1001 + i}"
        customer = CUSTOMERS[i % len(CUSTOMERS)]
        placed.append((order_id, customer, BIG.get(order_id, 1_500 + 977 * i % 30_000)))
    return placed


class GatewayTimeout(Exception):
    """The card gateway did not answer in time."""


# --- step functions: each stands for a call to another system, and takes a while ---


async def call(step: str, seconds: float) -> None:
    EXECUTED[step] += 1
    await trio.sleep(seconds)  # the other system's latency (virtual time, but for --ui)


async def reserve_stock(order_id: str) -> str:
    await call("reserve_stock", 0.3)
    return f"rsv-{order_id}"


async def fraud_score(customer: str, cents: int) -> float:
    await call("fraud_score", 0.8)
    return round(min(0.9, cents / 250_000), 2)


async def check_address(order_id: str, customer: str) -> str:
    await call("check_address", 0.5)
    if order_id == NO_POSTCODE:
        raise ValueError(f"the delivery address of {order_id} has no postcode")
    return f"{customer}, 12 Market Street, 75001"


async def hold_card(order_id: str, cents: int) -> str:
    await call("hold_card", 1.2)
    if order_id in FLAKY_HOLDS and order_id not in TIMED_OUT:
        TIMED_OUT.add(order_id)
        raise GatewayTimeout(f"no answer from the card gateway for {order_id}")
    return f"hold-{order_id}-{cents}"


async def capture(hold: str) -> str:
    await call("capture", 0.4)
    return hold.replace("hold-", "paid-", 1)


async def release(hold: str) -> str:
    await call("release", 0.4)
    return hold.replace("hold-", "released-", 1)


async def ship(order_id: str) -> str:
    await call("ship", 0.6)
    return f"trk-{order_id}"


# --- the workflows ---


@replay.workflow(name="payment:v1")
def payment(order_id: str, cents: int):
    # A child run of its own (id "order-1012/payment:v1"), with its own history.
    return (yield Step("hold:v1", hold_card, order_id, cents,
                       retry=Retry(attempts=3, initial=2.0, retry_on=GatewayTimeout)))


@replay.workflow(name="order:v1")
def order(order_id: str, customer: str, cents: int):
    yield Step("reserve:v1", reserve_stock, order_id)
    yield All("checks:v1", [Step("fraud:v1", fraud_score, customer, cents),
                            Step("address:v1", check_address, order_id, customer)])
    hold = yield Child("payment:v1", payment, order_id, cents)
    if cents >= APPROVAL_CENTS:
        try:
            decision = yield Suspend(
                "approval:v1", timeout=APPROVAL_TIMEOUT,
                status=f"waiting for a manager: {cents / 100:.2f} EUR is over the limit")
        except replay.SuspendTimeout:
            decision = {"approved": False, "by": None, "reason": "no answer within 2 days"}
        except replay.Cancelled:  # the order is cancelled while it waits: free the card
            yield Step("release:v1", release, hold)
            raise
        if not decision.get("approved"):
            yield Step("release:v1", release, hold)
            return {"order": order_id, "state": "refused", "by": decision.get("by")}
    paid = yield Step("capture:v1", capture, hold)
    tracking = yield Step("ship:v1", ship, order_id)
    return {"order": order_id, "state": "shipped", "payment": paid, "tracking": tracking}


WORKFLOWS = [order, payment]


# --- running it ---


def settled(info: replay.RunInfo) -> bool:
    return info.waiting_for == "approval:v1" or info.state in (
        replay.RunState.COMPLETED, replay.RunState.FAILED, replay.RunState.CANCELLED)


async def main(db_path: str = "stuck_orders.duckdb") -> dict[str, Any]:
    EXECUTED.clear()
    TIMED_OUT.clear()
    async with replay.open_engine(db_path, workflows=WORKFLOWS) as engine:
        runs = []
        for order_id, customer, cents in orders():  # one every three seconds
            runs.append(await engine.start(order, order_id, customer, cents, run_id=order_id))
            await trio.sleep(3)
        # Until each order waits for a manager or has finished (not while it waits for
        # its payment child, which a plain `wait()` would also return at).
        infos = [await run.wait(until=settled) for run in runs]
        states = Counter(str(info.state) for info in infos)
        print(f"{len(infos)} orders: {dict(sorted(states.items()))}")
        waiting = []
        for info in infos:
            if info.state is replay.RunState.SUSPENDED:
                waiting.append((info.run_id, info.waiting_for, info.status_text))
                print(f"{info.run_id}: suspended on {info.waiting_for} ({info.status_text}), "
                      f"until {info.wake_at:%Y-%m-%d %H:%M} UTC")
            elif info.state is replay.RunState.FAILED:
                print(f"{info.run_id}: failed: {info.error.splitlines()[-1]}")
        print(f"step functions executed this time: {dict(sorted(EXECUTED.items()))}")
        print(f"see them in the browser: replay ui {db_path}")
        children = await engine.sql("SELECT count(*) FROM replay_runs "
                                    "WHERE parent_run_id IS NOT NULL")
    return {"states": {info.run_id: str(info.state) for info in infos}, "waiting": waiting,
            "executed": dict(EXECUTED), "children": children[0][0]}


async def serve(db_path: str, port: int) -> None:
    """Keep the engine open on the real clock, serving the web view, until Ctrl-C."""
    async with replay.open_engine(db_path, workflows=WORKFLOWS,
                                  ui=("127.0.0.1", port)) as engine:
        print(f"web view: {engine.ui_url} (stop with Ctrl-C)", flush=True)
        await engine.serve_forever()
    print("stopped", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    path = args[0] if args and not args[0].startswith("--") else "stuck_orders.duckdb"
    # Virtual time: the retry back-offs take no real time (see the module docstring).
    trio.run(main, path, clock=trio.testing.MockClock(autojump_threshold=0))
    if "--ui" in args:
        rest = args[args.index("--ui") + 1:]
        trio.run(serve, path, int(rest[0]) if rest else 8077)
