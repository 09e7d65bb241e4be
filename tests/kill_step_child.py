"""Child process for test_kill_step: a step that kills its own process, beside a calm run.

Usage: python kill_step_child.py DB
Prints one JSON line with both runs' final states once both are finished.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import trio

import replay
from replay import Step


def kill_this_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def plus_one(n: int) -> int:
    return n + 1


@replay.workflow(name="boom")
def boom():  # type: ignore[no-untyped-def]
    yield Step("prepare:v1", plus_one, 0)
    yield Step("boom:v1", kill_this_process)
    return "unreachable"


@replay.workflow(name="calm")
def calm():  # type: ignore[no-untyped-def]
    total = 0
    for i in range(5):
        total = yield Step(f"add:{i}", plus_one, total)
    return total


async def main(db: str) -> None:
    async with replay.open_engine(db, workflows=[boom, calm]) as engine:
        runs = [await engine.start(boom, run_id="boom"), await engine.start(calm, run_id="calm")]
        states = {}
        for run in runs:
            info = await run.wait()
            states[run.run_id] = [info.state.value, info.output, info.error_type]
    print(json.dumps(states), flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
