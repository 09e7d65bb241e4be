"""Child process for tests/test_crash.py: many concurrent multi-step runs on one file.

Usage::

    python crash_child.py DB SIDEFILE NRUNS NSTEPS [SYNC_STEP [FIFO]]

Opens an engine on DB (durability "fsync"), starts NRUNS runs ``run-{i}`` (idempotent
by run_id, so every round re-issues the same starts), each a chain of NSTEPS steps
``s{j}:v1`` whose values depend on the previous one. Even ``i + j`` steps are sync
functions (worker threads), odd ones ``async def`` (the engine's trio loop); step
``s{SYNC_STEP}:v1`` (an input of the run) is sync in every run.

Every step execution appends one line ``run_id key attempt`` to SIDEFILE (a single
``O_APPEND`` write, so lines never interleave or tear) and then prints
``step run_id key attempt`` on stdout. With FIFO, step ``s{SYNC_STEP}:v1`` instead
prints ``blocked run_id key attempt`` and blocks for ever opening FIFO for reading (the
parent never opens it for writing): the process is SIGKILLed with those steps in
flight.

Prints ``open`` once the engine is open and, once every run finished and the engine
closed cleanly, ``done {json}`` with every run's output, then exits 0.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Generator
from typing import Any

import trio

import replay
from replay import Step

SIDE_FILE = ""
BLOCK_FIFO = ""
BLOCK_KEY = ""

MODULUS = 1_000_003
RETRY = replay.Retry(attempts=50, initial=0, jitter=0)


def next_value(value: int, j: int) -> int:
    """The value step ``j`` computes from the previous one (the test has its own copy)."""
    return (value * 31 + j * 7 + 1) % MODULUS


def emit(line: str) -> None:
    # One write call on the text layer (it holds a lock), so threads never interleave.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def record_execution() -> str:
    run_id, key, attempt = replay.current_step()
    descriptor = os.open(SIDE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{run_id} {key} {attempt}\n".encode())
    finally:
        os.close(descriptor)
    return f"{run_id} {key} {attempt}"


def sync_step(value: int, j: int) -> int:
    what = record_execution()
    if BLOCK_KEY and what.split()[1] == BLOCK_KEY:
        emit(f"blocked {what}")
        with open(BLOCK_FIFO, "rb") as fifo:  # blocks: nobody opens it for writing
            fifo.read()
    emit(f"step {what}")
    return next_value(value, j)


async def async_step(value: int, j: int) -> int:
    await trio.sleep(0)
    what = record_execution()
    emit(f"step {what}")
    await trio.sleep(0)
    return next_value(value, j)


@replay.workflow(name="crash_chain")
def chain(index: int, nsteps: int, sync_at: int) -> Generator[Step, int, dict[str, Any]]:
    value = index * 1000 + 1
    trail: list[int] = []
    for j in range(nsteps):
        function = sync_step if (index + j) % 2 == 0 or j == sync_at else async_step
        value = yield Step(f"s{j}:v1", function, value, j)
        trail.append(value)
    return {"index": index, "value": value, "trail": trail}


async def main(db: str, nruns: int, nsteps: int, sync_at: int) -> None:
    outputs: dict[str, object] = {}
    async with replay.open_engine(
        db, workflows=[chain], default_retry=RETRY, durability="fsync"
    ) as engine:
        emit("open")

        async def start_and_wait(index: int) -> None:
            run = await engine.start(chain, index, nsteps, sync_at, run_id=f"run-{index}")
            outputs[run.run_id] = await run.result()

        async with trio.open_nursery() as nursery:
            for index in range(nruns):
                nursery.start_soon(start_and_wait, index)
    emit("done " + json.dumps(outputs, sort_keys=True))


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if not 4 <= len(arguments) <= 6:
        sys.exit(__doc__)
    SIDE_FILE = arguments[1]
    sync_at = int(arguments[4]) if len(arguments) > 4 else -1
    if len(arguments) > 5:
        BLOCK_FIFO, BLOCK_KEY = arguments[5], f"s{sync_at}:v1"
    trio.run(main, arguments[0], int(arguments[2]), int(arguments[3]), sync_at)
