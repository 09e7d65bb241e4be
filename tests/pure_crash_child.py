"""Child process for test_pure_steps: SIGKILLed inside a pure step.

Usage: python pure_crash_child.py DB SIDEFILE

Run ``pipe`` executes ordinary step ``a``, pure step ``p0``, ordinary step ``b``, pure
steps ``p1`` to ``p5`` and pure step ``boom``, which SIGKILLs the process the first time
it runs (a marker file next to DB says it did), then ordinary step ``z``. Pure sync
steps run on the engine's loop with no await in between, so nothing commits between
``b``'s outcome and the kill: ``p1``-``p5`` die uncommitted, while ``a``, ``p0`` and ``b``
are durable (``b`` waited for its own commit). Each step execution appends ``key`` to
SIDEFILE (a side effect a real pure step must not have: here it only counts calls).
Prints ``done {json}`` with the run's output once it finished.
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
from replay import Step

SIDE = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("side")
MARKER = Path(sys.argv[1] + ".killed") if len(sys.argv) > 1 else Path("marker")


def side(key: str) -> None:
    descriptor = os.open(SIDE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, (key + "\n").encode())
    finally:
        os.close(descriptor)


def ordinary(key: str, value: int) -> int:
    side(key)
    return value + 1


def pure(key: str, value: int) -> int:
    side(key)
    return value * 2


def boom(value: int) -> int:
    side("boom")
    if not MARKER.exists():
        MARKER.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return value


@replay.workflow(name="pure_crash")
def pipe(value: int):  # type: ignore[no-untyped-def]
    value = yield Step("a", ordinary, "a", value)
    value = yield Step("p0", pure, "p0", value, pure=True)
    value = yield Step("b", ordinary, "b", value)
    for i in range(1, 6):
        value = yield Step(f"p{i}", pure, f"p{i}", value, pure=True)
    value = yield Step("boom", boom, value, pure=True)
    value = yield Step("z", ordinary, "z", value)
    return value


async def main(db: str) -> None:
    async with replay.open_engine(db, workflows=[pipe], durability="fsync") as engine:
        if not await engine.runs():
            await engine.start(pipe, 1, run_id="pipe")
        output: Any = await engine.get_run("pipe").result()
    print("done " + json.dumps(output), flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
