"""Child process for test_kill_step: a step that kills its own process, beside a calm run.

Usage: python kill_step_child.py DB MODE MAX_INTERRUPTIONS
MODE ``plain``: the step kills the process on every attempt (one attempt allowed).
MODE ``backoff``: the step fails once with an ordinary error (a durable retry back-off,
``Retry(attempts=2, initial=0.1)``), then kills the process on every later attempt, so
the first attempt after each open is started by the back-off timer, not by recovery.
MODE ``signal``: the run first waits for a signal (``Suspend("go:v1")``). The first
process leaves it waiting and exits, printing ``parked``; each later one signals it if
it still waits, so the first death follows a signal to a run that was parked at open.
Prints one JSON line with both runs' final states once both are finished.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import trio

import replay
from replay import Retry, Step, Suspend

MARKER = Path(sys.argv[1] + ".failed-once")


def kill_this_process(mode: str) -> None:
    if mode == "backoff" and not MARKER.exists():
        MARKER.touch()
        raise ValueError("an ordinary failure first")
    os.kill(os.getpid(), signal.SIGKILL)


def plus_one(n: int) -> int:
    return n + 1


@replay.workflow(name="boom")
def boom(mode: str):  # type: ignore[no-untyped-def]
    yield Step("prepare:v1", plus_one, 0)
    if mode == "signal":
        yield Suspend("go:v1")
    yield Step("boom:v1", kill_this_process, mode, retry=Retry(attempts=2, initial=0.1))
    return "unreachable"


@replay.workflow(name="calm")
def calm():  # type: ignore[no-untyped-def]
    total = 0
    for i in range(5):
        total = yield Step(f"add:{i}", plus_one, total)
    return total


async def main(db: str, mode: str, max_interruptions: int) -> None:
    async with replay.open_engine(db, workflows=[boom, calm],
                                  max_interruptions=max_interruptions) as engine:
        first = not await engine.runs()
        runs = [await engine.start(boom, mode, run_id="boom"),
                await engine.start(calm, run_id="calm")]
        if mode == "signal":
            info = await runs[0].wait()
            if first:
                print("parked", flush=True)
                return
            if info.state is replay.RunState.SUSPENDED:
                await engine.signal("boom", "go:v1", "now")
        states = {}
        for run in runs:
            info = await run.wait()
            states[run.run_id] = [info.state.value, info.output, info.error_type]
    print(json.dumps(states), flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
