"""Reminder campaign: durable sleeps of days, across an engine restart.

    python examples/reminders.py [path.duckdb]   # default: reminders.duckdb

Each new user gets a welcome email, a reminder three days later (unless they have
been active meanwhile) and a last nudge a week after that. `Sleep` is a durable
timer: its deadline is recorded, a sleeping run holds no task, and the run wakes at
the deadline even if the engine was closed and reopened in between.

The script runs under trio's fake clock (`MockClock`): the ten days pass in
milliseconds of wall time, while the timestamps recorded in the database are days
apart. Halfway through, the engine is closed and opened again on the same file, as
a deploy would do; the campaign continues and sends nothing twice.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import trio
import trio.testing

import replay
from replay import Sleep, Step

USERS = ["ada", "bea", "cyd"]
ACTIVE_USERS = {"bea"}  # logged in after the welcome email: no reminder for her

EXECUTED: Counter[str] = Counter()  # step function calls in this process, by name
OUTBOX: list[tuple[str, str]] = []  # every email "sent": (user, template)
_LOCK = threading.Lock()  # sync steps run in worker threads


# --- step functions ---


def send_email(user: str, template: str) -> str:
    with _LOCK:
        EXECUTED[f"send {template}"] += 1
        OUTBOX.append((user, template))
    return f"msg-{user}-{template}"


async def is_active(user: str) -> bool:
    EXECUTED["is_active"] += 1
    await trio.sleep(0)  # stands for a query to the product's database
    return user in ACTIVE_USERS


# --- the workflow ---


@replay.workflow(name="reminders:v1")
def reminder_campaign(user: str):
    sent = [(yield Step("welcome:v1", send_email, user, "welcome"))]
    # Durable: the deadline (now + 3 days) is recorded the first time this is reached;
    # after a restart the run wakes at that same deadline, not 3 days after the restart.
    yield Sleep("wait-1:v1", timedelta(days=3))
    # The check is a step too: its answer is recorded, so a replay takes the same
    # branch even if the user's activity has changed since.
    if not (yield Step("active:v1", is_active, user)):
        sent.append((yield Step("reminder:v1", send_email, user, "reminder")))
    yield Sleep("wait-2:v1", timedelta(days=7))
    sent.append((yield Step("nudge:v1", send_email, user, "last-nudge")))
    return sent


# --- running it ---

SENDS = """
SELECT run_id, key, recorded_at,
       recorded_at - min(recorded_at) OVER (PARTITION BY run_id) AS since_welcome
FROM replay_events
WHERE kind = 'step' AND event = 'completed'
  AND key IN ('welcome:v1', 'reminder:v1', 'nudge:v1')
ORDER BY run_id, seq
"""


async def main(db_path: str = "reminders.duckdb") -> dict[str, Any]:
    EXECUTED.clear()
    OUTBOX.clear()
    wall_start = time.perf_counter()
    run_ids = [f"campaign-{user}" for user in USERS]

    # First engine: start the campaign and let five days pass.
    async with replay.open_engine(db_path, workflows=[reminder_campaign]) as engine:
        for user, run_id in zip(USERS, run_ids, strict=True):
            await engine.start(reminder_campaign, user, run_id=run_id)
        await trio.sleep(timedelta(days=5).total_seconds())  # instant under MockClock
        before_restart = {run_id: engine.status(run_id) for run_id in run_ids}
        closed_at = engine.now()
        for info in before_restart.values():
            until = f" on {info.waiting_for} until {info.wake_at:%c}" if info.wake_at else ""
            print(f"{info.run_id}: {info.state}{until}")
    executed_before = dict(EXECUTED)
    EXECUTED.clear()
    print(f"engine closed on {closed_at:%c}; executed so far: {executed_before}\n")

    # Second engine, same file, same trio run: the clock carries on. Opening it
    # schedules every recorded deadline; nothing that was recorded runs again.
    async with replay.open_engine(db_path, workflows=[reminder_campaign]) as engine:
        print(f"engine reopened on {engine.now():%c}")
        outputs, states = {}, {}
        for run_id in run_ids:
            outputs[run_id] = await engine.get_run(run_id).result()  # a handle after a restart
            states[run_id] = engine.status(run_id).state
            print(f"{run_id}: {states[run_id]} -> {outputs[run_id]}")
        executed_after = dict(EXECUTED)
        print(f"executed after the restart: {executed_after}")

        # The recorded timestamps are days apart; the wall clock says milliseconds.
        sends = await engine.sql(SENDS)
        print("\nrun_id        key          recorded_at (virtual)      since welcome")
        for run_id, key, recorded_at, since_welcome in sends:
            print(f"{run_id:<13} {key:<12} {recorded_at:%Y-%m-%d %H:%M:%S %Z}    {since_welcome}")
    wall = time.perf_counter() - wall_start
    span = max(row[2] for row in sends) - min(row[2] for row in sends)
    print(f"\n{span} of campaign in {wall * 1000:.0f} ms of wall time; "
          f"emails sent by this process: {len(OUTBOX)}")
    return {"outputs": outputs, "states": states, "before_restart": before_restart,
            "executed_before": executed_before, "executed_after": executed_after,
            "outbox": list(OUTBOX), "sends": sends, "wall_seconds": wall}


if __name__ == "__main__":
    # Virtual time: ten days pass at once (see the module docstring).
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "reminders.duckdb", clock=clock)
