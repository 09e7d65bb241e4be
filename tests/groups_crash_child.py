"""Child process for tests/test_groups.py: one run of a 200-member `All` with a limit.

Usage::

    python groups_crash_child.py DB SIDEFILE [killer]

Opens an engine on DB (durability "fsync") and starts run ``crash`` (idempotent by
run_id, so every round re-issues the same start) of workflow ``groups.crash``: one
``All("all:v1", [Step(f"m{i:03}:v1", member, i) ...], limit=LIMIT)`` of MEMBERS sync
steps. Each member appends ``start KEY PID`` to SIDEFILE, sleeps a little (real
time), appends ``end KEY PID`` and prints ``end KEY`` on stdout; each append is one
``O_APPEND`` write, so lines never tear or interleave, and a member's ``end`` is in the
file before the engine can start the member that takes its place.

Prints ``open`` once the engine is open and, once the run completed and the engine
closed, ``done {json}`` with the run's output, then exits 0. The test imports this
module too, to finish the run in a fresh engine with the same workflow.

With ``killer``, it runs ``groups.killer`` instead (run ``killer``, with
``max_interruptions=1``): a `Gather` of a calm step and a step that SIGKILLs its own
process on every attempt, and prints ``done {json}`` if the run ever finishes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Generator
from typing import Any

import trio

import replay
from replay import All, Gather, Step, StepFailed

MEMBERS = 200
LIMIT = 20
PAUSE = 0.004  # seconds each member runs (real time)
SIDE_FILE = ""
QUIET = False  # the test's own engine prints nothing


def expected(i: int) -> int:
    """The value member `i` returns (the test checks the output against it)."""
    return i * i + 7


def emit(line: str) -> None:
    # One write call on the text layer (it holds a lock): lines from threads never mix.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def append(line: str) -> None:
    descriptor = os.open(SIDE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{line}\n".encode())
    finally:
        os.close(descriptor)


def member(i: int) -> int:
    _, key, _ = replay.current_step()
    append(f"start {key} {os.getpid()}")
    time.sleep(PAUSE)
    append(f"end {key} {os.getpid()}")
    if not QUIET:
        emit(f"end {key}")
    return expected(i)


@replay.workflow(name="groups.crash")
def crash_all() -> Generator[Any, Any, list[int]]:
    values = yield All("all:v1", [Step(f"m{i:03}:v1", member, i) for i in range(MEMBERS)],
                       limit=LIMIT)
    return list(values)


async def calm() -> str:
    await trio.sleep(0)
    return "calm"


def kill_this_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@replay.workflow(name="groups.killer")
def killer() -> Generator[Any, Any, list[str]]:
    gathered = yield Gather("g:v1", [Step("calm:v1", calm),
                                     Step("boom:v1", kill_this_process)])
    return [f"failed {item.error_type}" if isinstance(item, StepFailed) else item
            for item in gathered]


async def main_killer(db: str) -> None:
    async with replay.open_engine(db, workflows=[killer], max_interruptions=1) as engine:
        emit("open")
        output = await (await engine.start(killer, run_id="killer")).result()
    emit("done " + json.dumps(output))


async def main(db: str) -> None:
    async with replay.open_engine(db, workflows=[crash_all], durability="fsync") as engine:
        emit("open")
        output = await (await engine.start(crash_all, run_id="crash")).result()
    emit("done " + json.dumps(output))


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    SIDE_FILE = sys.argv[2]
    trio.run(main_killer if sys.argv[3:] == ["killer"] else main, sys.argv[1])
