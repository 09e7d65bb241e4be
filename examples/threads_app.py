"""Purchase approvals from plain threads, through `replay.sync`.

    python examples/threads_app.py [path.duckdb]   # default: threads_app.duckdb

A synchronous application (think of a Flask or Django app, whose request handlers
run in threads) keeps one engine open for its whole life with
`replay.sync.open_engine`. The engine runs on a background thread of its own; its
calls block until the engine has answered, and any thread may make them.

Sixteen "request" threads each file a purchase request at once: `engine.start`
returns once the run is recorded, and `run.wait()` once it is suspended, waiting
for a manager's answer. Then sixteen "manager" threads answer at once with
`engine.signal` and wait for the outcome with `run.result(timeout=...)`.

Run it twice on the same file: the second time, every `start` returns the recorded
run, already decided, and no step function runs again.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import replay
import replay.sync
from replay import Step, Suspend

EXECUTED: Counter[str] = Counter()  # step function calls in this process, by name
_LOCK = threading.Lock()  # steps run in the engine's worker threads

APPROVAL = "manager-approval:v1"
LIMIT_CENTS = 50_000  # the managers approve anything below 500.00 EUR
THREADS = 16


def executed(step: str) -> None:
    with _LOCK:
        EXECUTED[step] += 1


# --- step functions: each stands for a call to another system ---


def record_request(request_id: str, cents: int) -> str:
    executed("record_request")
    return f"ledger-{request_id}"


def place_order(request_id: str, cents: int) -> str:
    executed("place_order")
    run_id, key, _ = replay.current_step()
    return f"po-{run_id}-{key}"  # run_id + key: an idempotency key for the supplier


# --- the workflow ---


@replay.workflow(name="purchase-approval:v1")
def purchase_approval(request_id: str, cents: int):  # type: ignore[no-untyped-def]
    yield Step("record:v1", record_request, request_id, cents)
    decision = yield Suspend(APPROVAL, status="waiting for a manager",
                             timeout=timedelta(days=7))
    if not decision["approved"]:
        return {"request": request_id, "state": "rejected", "by": decision["by"]}
    order = yield Step("order:v1", place_order, request_id, cents)
    return {"request": request_id, "state": "ordered", "by": decision["by"], "order": order}


# --- the application: plain threads ---


def amount(i: int) -> int:
    return 10_000 * (i + 1)  # 100.00 EUR, 200.00 EUR, ... 1,600.00 EUR


def in_threads(work: Any, count: int) -> list[Any]:
    """Run ``work(i)`` in `count` threads at once; return the results in order."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            results[i] = work(i)
        except BaseException as error:  # reported by the main thread below
            errors.append(error)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def main(db_path: str = "threads_app.duckdb") -> dict[str, Any]:
    EXECUTED.clear()
    with replay.sync.open_engine(db_path, workflows=[purchase_approval]) as engine:

        def file_request(i: int) -> str:
            request_id = f"req-{i + 1:02}"
            # Idempotent by run_id: the same request filed twice is one run.
            run = engine.start(purchase_approval, request_id, amount(i), run_id=request_id)
            info = run.wait(timeout=30)  # returns once it is suspended (or finished)
            return f"{request_id}: {info.state}"

        def answer(i: int) -> dict[str, Any]:
            request_id = f"req-{i + 1:02}"
            run = engine.get_run(request_id)
            if run.status().state is replay.RunState.SUSPENDED:
                approved = amount(i) < LIMIT_CENTS
                engine.signal(request_id, APPROVAL, {"approved": approved, "by": "maria"})
            output: dict[str, Any] = run.result(timeout=30)
            return output

        filed = in_threads(file_request, THREADS)
        print(f"{THREADS} threads filed {len(filed)} requests: "
              f"{dict(Counter(line.split(': ')[1] for line in filed))}")
        outputs = in_threads(answer, THREADS)
        states = {info.run_id: str(info.state) for info in engine.runs()}
        for output in outputs:
            print(f"{output['request']}: {states[output['request']]} -> {output['state']}")
        print(f"step functions executed this time: {dict(EXECUTED)}")
        ordered = engine.sql("SELECT count(*) FROM replay_runs WHERE output_json LIKE "
                             "'%\"ordered\"%'")[0][0]
        print(f"ordered: {ordered} of {len(states)}")
    return {"outputs": {o["request"]: o for o in outputs}, "states": states,
            "executed": dict(EXECUTED)}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "threads_app.duckdb")
