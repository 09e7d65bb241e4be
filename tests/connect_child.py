"""A client process for test_connect: threads that start, signal and wait through
`replay.connect`, against the engine of a `replay serve` process.

Usage: python connect_child.py DB NAME THREADS RUNS
Each of THREADS threads starts RUNS `approval` runs (run ids ``NAME-tT-I``), signals
each, and waits for its result; one `echo` run per thread carries tuples and a
registered type. Prints one JSON line: the run ids done and the engine pids seen.
"""

from __future__ import annotations

import json
import sys
import threading
from decimal import Decimal

from connect_flows import Money, approval, echo

import replay

DB, NAME, THREADS, RUNS = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


def work(client: replay.Client, thread: int, done: list[str], pids: set[int]) -> None:
    runs = [client.start(approval, f"{NAME}-t{thread}-{i}", run_id=f"{NAME}-t{thread}-{i}")
            for i in range(RUNS)]
    for run in runs:
        assert run.wait(timeout=60).state == "suspended"
        client.signal(run.run_id, "decision:v1", "accept")
    for run in runs:
        output = run.result(timeout=60)
        assert output["order"] == run.run_id and output["decision"] == "accept"
        pids.add(output["pid"])
        done.append(run.run_id)
    money = Money(Decimal("12.50"), "EUR")
    echoed = client.start(echo, (1, 2), {3}, money, run_id=f"{NAME}-t{thread}-echo")
    assert echoed.result(timeout=60)["values"] == ((1, 2), {3}, money)
    done.append(echoed.run_id)


def main() -> None:
    done: list[str] = []
    pids: set[int] = set()
    errors: list[BaseException] = []

    def guarded(client: replay.Client, thread: int) -> None:
        try:
            work(client, thread, done, pids)
        except BaseException as error:
            errors.append(error)

    with replay.connect(DB) as client:  # one client, shared by the threads
        threads = [threading.Thread(target=guarded, args=(client, t)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    print(json.dumps({"done": sorted(done), "pids": sorted(pids)}), flush=True)


if __name__ == "__main__":
    main()
