"""Child process for tests/test_children.py: a parent fanning out to child runs.

Usage::

    python children_crash_child.py DB SIDEFILE

Opens an engine on DB (durability "fsync") and starts run ``crash`` (idempotent by
run_id) of workflow ``kids.crash_parent``: one ``All("items:v1", [Child(f"item:{i}",
item, i) ...], limit=LIMIT)`` of ITEMS child runs of ``kids.crash_item``, each one sync
step ``work:v1``. A step appends ``run_id key attempt`` to SIDEFILE (one ``O_APPEND``
write), works a little (real time) and prints ``end RUN_ID``.

Prints ``open`` once the engine is open and, once the run completed and the engine
closed, ``done {json}`` with the parent's output, then exits 0. The parent test SIGKILLs
it midway, then imports this module to finish the run in a fresh engine (``QUIET``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Generator
from typing import Any

import trio

import replay
from replay import All, Child, Step

ITEMS = 16
LIMIT = 4
PAUSE = 0.01  # seconds each step works (real time)
SIDE_FILE = ""
QUIET = False  # the test's own engine prints nothing


def expected(i: int) -> dict[str, int]:
    """The output of child `i` (the test checks the parent's output against it)."""
    return {"item": i, "square": i * i}


def work(i: int) -> dict[str, int]:
    run_id, key, attempt = replay.current_step()
    descriptor = os.open(SIDE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{run_id} {key} {attempt}\n".encode())
    finally:
        os.close(descriptor)
    time.sleep(PAUSE)
    if not QUIET:
        sys.stdout.write(f"end {run_id}\n")
        sys.stdout.flush()
    return expected(i)


@replay.workflow(name="kids.crash_item")
def item(i: int) -> Generator[Any, Any, Any]:
    return (yield Step("work:v1", work, i))


@replay.workflow(name="kids.crash_parent")
def fan_out() -> Generator[Any, Any, Any]:
    outputs = yield All("items:v1", [Child(f"item:{i}", item, i) for i in range(ITEMS)],
                        limit=LIMIT)
    return list(outputs)


async def main(db: str) -> None:
    async with replay.open_engine(db, workflows=[fan_out, item], durability="fsync") as engine:
        print("open", flush=True)
        output = await (await engine.start(fan_out, run_id="crash")).result()
    print("done " + json.dumps(output), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    SIDE_FILE = sys.argv[2]
    trio.run(main, sys.argv[1])
