"""Expense approval: wait for a person with `Suspend`, escalate on a timeout.

    python examples/approval.py [path.duckdb]   # default: approval.duckdb

An employee files an expense; the workflow records it and suspends until the manager
answers. A suspended run holds no task and no thread, and survives restarts: it only
waits for `engine.signal(run_id, key, answer)`. If the manager says nothing for two
days, the engine throws `replay.SuspendTimeout` into the workflow, which escalates to
the director and suspends again.

The script runs under trio's fake clock (`MockClock`), so "two days" pass in
milliseconds while every timestamp in the database moves on by two days. In a real
deployment the same code runs under the real clock and really waits.
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
from replay import Step, Suspend

EXECUTED: Counter[str] = Counter()  # step function calls in this process, by name
_LOCK = threading.Lock()  # sync steps run in worker threads

MANAGER = "manager-approval:v1"
DIRECTOR = "director-approval:v1"
MANAGER_TIMEOUT = timedelta(days=2)
DIRECTOR_TIMEOUT = timedelta(days=3)


def executed(step: str) -> None:
    with _LOCK:
        EXECUTED[step] += 1


# --- step functions: each stands for a call to another system ---


def record_request(expense_id: str, employee: str, cents: int) -> str:
    executed("record_request")
    return f"ledger-{expense_id}"


def notify_director(expense_id: str, cents: int) -> str:
    executed("notify_director")
    return f"mail to director: please decide on {expense_id} ({cents / 100:.2f} EUR)"


def pay_out(expense_id: str, employee: str, cents: int) -> str:
    executed("pay_out")
    # run_id + key identify this payment in every attempt: an idempotency key.
    run_id, key, _ = replay.current_step()
    return f"pay-{run_id}-{key}"


def notify_rejection(expense_id: str, employee: str, reason: str) -> str:
    executed("notify_rejection")
    return f"mail to {employee}: {expense_id} rejected ({reason})"


# --- the workflow ---


@replay.workflow(name="expense-approval:v1")
def expense_approval(expense_id: str, employee: str, cents: int):
    yield Step("record:v1", record_request, expense_id, employee, cents)
    try:
        # Parks the run until someone signals this key; the payload is what the yield
        # returns. `status` shows up in RunInfo.status_text and replay_runs.
        decision = yield Suspend(MANAGER, status=f"waiting for {employee}'s manager",
                                 timeout=MANAGER_TIMEOUT)
    except replay.SuspendTimeout:
        # Nobody answered in time. The timeout is recorded, so a replay takes this
        # branch again, and a late answer from the manager is rejected.
        yield Step("escalate:v1", notify_director, expense_id, cents)
        try:
            decision = yield Suspend(DIRECTOR, status="escalated to the director",
                                     timeout=DIRECTOR_TIMEOUT)
        except replay.SuspendTimeout:
            decision = {"approved": False, "by": None, "reason": "no decision within 5 days"}
    if decision["approved"]:
        payment = yield Step("pay:v1", pay_out, expense_id, employee, cents)
        return {"expense": expense_id, "state": "paid", "approved_by": decision["by"],
                "payment": payment}
    yield Step("notify-rejected:v1", notify_rejection, expense_id, employee,
               decision["reason"])
    return {"expense": expense_id, "state": "rejected", "rejected_by": decision["by"],
            "reason": decision["reason"]}


# --- running it ---

REQUESTS = [  # run_id, employee, cents
    ("exp-1", "ana", 12_000),   # the manager approves
    ("exp-2", "ben", 250_000),  # the manager is on holiday: escalated, the director approves
    ("exp-3", "cid", 99_900),   # the manager rejects
]


def offset(delta: timedelta) -> str:
    hours, seconds = divmod(int(delta.total_seconds()), 3600)
    return f"+{hours // 24}d {hours % 24:02}:{seconds // 60:02}"


async def main(db_path: str = "approval.duckdb") -> dict[str, Any]:
    EXECUTED.clear()
    rejected_signals: list[str] = []
    async with replay.open_engine(db_path, workflows=[expense_approval]) as engine:
        runs = [await engine.start(expense_approval, run_id, employee, cents, run_id=run_id)
                for run_id, employee, cents in REQUESTS]
        start = engine.status(runs[0].run_id).created_at  # the timeline's +0d 00:00

        def log(message: str) -> None:
            print(f"{offset(engine.now() - start)}  {message}")

        async def answer(run_id: str, key: str, decision: dict[str, Any]) -> None:
            # `signal` returns once the answer is durable. A key takes one value: a
            # second answer, or one after the timeout, raises SignalRejected.
            try:
                await engine.signal(run_id, key, decision)
                log(f"{run_id}: {key} <- {decision}")
            except replay.SignalRejected as rejected:
                rejected_signals.append(run_id)
                log(f"{run_id}: signal rejected: {rejected}")

        for run in runs:
            info = await run.wait()  # returns once the run is suspended (or finished)
            where = f" on {info.waiting_for} ({info.status_text})" if info.waiting_for else ""
            due = f", times out {offset(info.wake_at - start)}" if info.wake_at else ""
            log(f"{run.run_id}: {info.state}{where}{due}")

        # On a second invocation with the same file, the starts above returned the
        # recorded runs, already decided: there is nothing left to answer.
        if engine.status("exp-2").state is replay.RunState.SUSPENDED:
            await trio.sleep(timedelta(hours=3).total_seconds())
            await answer("exp-1", MANAGER, {"approved": True, "by": "maria"})
            await answer("exp-1", MANAGER, {"approved": True, "by": "maria"})  # double click
            await answer("exp-3", MANAGER, {"approved": False, "by": "maria",
                                            "reason": "not a business expense"})

            # Nobody answers exp-2. Just let time pass: when the clock reaches the
            # deadline, the engine wakes the run and throws SuspendTimeout into it.
            await trio.sleep(MANAGER_TIMEOUT.total_seconds())
            info = await runs[1].wait()
            log(f"exp-2: {info.state} on {info.waiting_for} ({info.status_text})")
            await answer("exp-2", MANAGER, {"approved": True, "by": "maria"})  # too late

            await trio.sleep(timedelta(hours=5).total_seconds())
            await answer("exp-2", DIRECTOR, {"approved": True, "by": "dario"})

        outputs, states = {}, {}
        for run in runs:
            outputs[run.run_id] = await run.result()
            info = engine.status(run.run_id)
            states[run.run_id] = info.state
            done = offset(info.updated_at - start)
            print(f"{run.run_id}: {info.state} at {done}: {outputs[run.run_id]}")
        print(f"step functions executed this time: {dict(EXECUTED)}")

        # Waiting, timing out and answering are events like any other.
        events = await engine.sql(
            "SELECT run_id, key, kind || '/' || event, recorded_at - t0, wake_at - t0 "
            "FROM replay_events, (SELECT min(recorded_at) AS t0 FROM replay_events) "
            "WHERE event IN ('suspended', 'timed_out', 'signalled') ORDER BY seq"
        )
        print("\nrun_id  key                   event             at           deadline")
        for run_id, key, event, at, deadline in events:
            due = offset(deadline) if deadline is not None else ""
            print(f"{run_id:<7} {key:<21} {event:<17} {offset(at):<12} {due}".rstrip())
    return {"outputs": outputs, "states": states, "executed": dict(EXECUTED),
            "events": events, "rejected_signals": rejected_signals}


if __name__ == "__main__":
    # Virtual time: the two-day timeout passes at once (see the module docstring).
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "approval.duckdb", clock=clock)
