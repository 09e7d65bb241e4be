"""Child process for test_continue_as_new: SIGKILLed right after a run continues as new.

Usage: python continue_crash_child.py DB SIDEFILE

Generation 0 of run ``sub`` runs step ``bill:v1`` and returns ``ContinueAsNew("second",
1)``. Generation 1 runs ``bill:v1`` again (its memo is empty), then ``boom:v1``, which
SIGKILLs the process the first time it runs (a marker file next to DB says it did),
right after the ``run/continued`` record and generation 1's first step are durable.
Each step execution appends ``generation key argument`` to SIDEFILE. Prints ``open``
once the engine is open and ``done {json}`` with the run's output once it finished.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import trio

import replay
from replay import ContinueAsNew, Step

SIDE = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("side")
MARKER = Path(sys.argv[1] + ".killed") if len(sys.argv) > 1 else Path("marker")


def side(line: str) -> None:
    descriptor = os.open(SIDE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, (line + "\n").encode())
    finally:
        os.close(descriptor)


def bill(label: str, generation: int) -> str:
    side(f"{generation} bill:v1 {label}")
    return f"bill-{label}"


def boom(label: str) -> str:
    side(f"1 boom:v1 {label}")
    if not MARKER.exists():
        MARKER.touch()
        print("killing", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return f"survived-{label}"


@replay.workflow(name="cas_crash")
def subscription(label: str, generation: int):  # type: ignore[no-untyped-def]
    billed = yield Step("bill:v1", bill, label, generation)
    if generation == 0:
        return ContinueAsNew("second", 1)
    survived = yield Step("boom:v1", boom, label)
    return {"label": label, "billed": billed, "survived": survived}


async def main(db: str) -> None:
    async with replay.open_engine(db, workflows=[subscription], durability="fsync") as engine:
        print("open", flush=True)
        run = await engine.start(subscription, "first", 0, run_id="sub")
        output: Any = await run.result()
    print("done " + json.dumps(output, sort_keys=True), flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
