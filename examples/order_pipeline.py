"""Order pipeline: durable steps, retries, a compensation and memoisation.

Run it from the repository root, twice:

    python examples/order_pipeline.py            # executes the steps
    python examples/order_pipeline.py            # same results, executes nothing

Every step outcome is recorded in a DuckDB file (default ``order_pipeline.duckdb``;
pass another path as the first argument). A workflow is a generator that yields
`Step` commands; each step's key (``"reserve:v1"`` …) is looked up in that file, and
a recorded outcome is sent straight back instead of calling the function again.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from typing import Any

import trio

import replay
from replay import Retry, Step

# How many times each step function ran in this process: the proof of memoisation.
# (Sync steps run in worker threads, hence the lock.)
EXECUTED: Counter[str] = Counter()
_LOCK = threading.Lock()


def executed(step: str) -> None:
    with _LOCK:
        EXECUTED[step] += 1


class CardDeclined(Exception):
    """The bank said no: retrying will not change its mind."""


class GatewayTimeout(Exception):
    """The payment gateway was too slow: worth another attempt."""


# --- step functions: plain functions run in a worker thread, async ones on the loop ---


def reserve_stock(order_id: str, sku: str) -> dict[str, str]:
    executed("reserve_stock")
    return {"reservation": f"rsv-{order_id}", "sku": sku}


async def charge_card(order_id: str, cents: int) -> str:
    executed("charge_card")
    # Inside a step, current_step() tells which run, key and attempt this is.
    run_id, key, attempt = replay.current_step()
    if cents > 100_000:
        raise CardDeclined(f"card declined for {cents / 100:.2f} EUR")
    if attempt < 3:  # the gateway times out twice, deterministically, then recovers
        raise GatewayTimeout(f"gateway timed out (attempt {attempt})")
    # The same for every attempt of this step, so the bank charges at most once.
    idempotency_key = f"{run_id}:{key}"
    await trio.sleep(0)  # stands for `await bank.charge(cents, idempotency_key)`
    return f"ch-{idempotency_key}"


def ship(order_id: str, reservation: dict[str, str]) -> str:
    executed("ship")
    return f"trk-{order_id}-{reservation['sku']}"


def release_stock(reservation: dict[str, str]) -> bool:
    executed("release_stock")
    return True


# Retried durably: each failed attempt and its back-off deadline are recorded, so a
# crash during the back-off continues with the remaining attempts. Small delays keep
# the demo fast; CardDeclined is final, so it is never retried.
CHARGE_RETRY = Retry(attempts=4, initial=0.05, backoff=2.0, give_up_on=CardDeclined)


# --- the workflow ---


# An explicit name: runs are stored under it, so renaming the function stays safe.
@replay.workflow(name="order:v1")
def order(order_id: str, sku: str, cents: int):
    # Code between yields re-runs on every replay (after a restart, a resume, ...):
    # keep side effects inside steps, whose outcomes are recorded.
    reservation = yield Step("reserve:v1", reserve_stock, order_id, sku)
    try:
        receipt = yield Step("charge:v1", charge_card, order_id, cents, retry=CHARGE_RETRY)
    except replay.StepFailed as failure:
        # A step that ran out of attempts is thrown in here. Branch on the recorded
        # error type (is_a / error_type), which replays identically.
        if not failure.is_a(CardDeclined):
            raise  # unexpected: fail the run, so it can be resumed after a fix
        # Compensation: give the stock back, then *complete* the run with a
        # "cancelled" result. (Re-raising instead would mark the run failed.)
        yield Step("release:v1", release_stock, reservation)
        return {"order": order_id, "state": "cancelled", "reason": failure.message}
    tracking = yield Step("ship:v1", ship, order_id, reservation)
    return {"order": order_id, "state": "shipped", "receipt": receipt, "tracking": tracking}


# --- running it ---


async def main(db_path: str = "order_pipeline.duckdb") -> dict[str, Any]:
    EXECUTED.clear()
    async with replay.open_engine(db_path, workflows=[order]) as engine:
        # Explicit run ids make `start` idempotent: on a second invocation these
        # return the recorded runs instead of starting new ones.
        runs = [
            await engine.start(order, "1001", "book-42", 4_200, run_id="order-1001"),
            await engine.start(order, "1002", "piano-7", 950_000, run_id="order-1002"),
        ]
        outputs = {run.run_id: await run.result() for run in runs}
        states = {run.run_id: engine.status(run.run_id).state for run in runs}
        for run in runs:
            print(f"{run.run_id}: {states[run.run_id]} -> {outputs[run.run_id]}")
        print(f"step functions executed this time: {sum(EXECUTED.values())} {dict(EXECUTED)}")

        # The history is plain SQL over the replay_events view.
        history = await engine.sql(
            "SELECT run_id, coalesce(key, ''), kind || '/' || event, attempt, "
            "round(duration_ms, 1), error_type FROM replay_events ORDER BY run_id, seq"
        )
        print("\nrun_id      key         event           attempt  duration_ms  error_type")
        for row in history:
            cells = ["" if cell is None else cell for cell in row]
            print("{:<11} {:<11} {:<15} {:>7}  {:>11}  {}".format(*cells).rstrip())
    return {"outputs": outputs, "states": states, "executed": dict(EXECUTED),
            "history": history}


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "order_pipeline.duckdb")
