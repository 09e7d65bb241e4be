"""Child process for tests/test_cancel.py: a SIGKILL right after a cancel request.

Usage::

    python cancel_crash_child.py DB SIDEFILE MODE

Opens an engine on DB (durability "fsync") and starts run ``crash`` of workflow
``cancel.crash``: it suspends on ``wait:v1``; on `replay.Cancelled` it compensates with
step ``release:v1``, then step ``notify:v1``. Every step execution appends
``run_id key attempt`` to SIDEFILE (one ``O_APPEND`` write).

Prints ``open`` once the engine is open, ``parked`` once the run is suspended, and
``cancel-acked`` as soon as ``engine.cancel("crash", "crash test")`` returned (the
request is durable then). In MODE ``block`` the compensation step prints
``compensating`` and blocks for ever; in MODE ``ack`` it does not block (the parent
kills the process right after ``cancel-acked``, wherever the compensation is). The
process never exits on its own: the parent SIGKILLs it. The test imports this module
too, to finish the run in a fresh engine with ``BLOCK = False``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Generator
from typing import Any

import trio

import replay
from replay import Cancelled, Step, Suspend

SIDE_FILE = ""
BLOCK = False  # the compensation step blocks for ever (MODE block)


def record(tag: str) -> str:
    run_id, key, attempt = replay.current_step()
    descriptor = os.open(SIDE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{run_id} {key} {attempt}\n".encode())
    finally:
        os.close(descriptor)
    return tag


def release(tag: str) -> str:
    record(tag)
    if BLOCK:
        print("compensating", flush=True)
        threading.Event().wait()
    return tag


def notify(tag: str) -> str:
    return record(tag)


@replay.workflow(name="cancel.crash")
def compensating() -> Generator[Any, Any, Any]:
    try:
        yield Suspend("wait:v1")
    except Cancelled as error:
        released = yield Step("release:v1", release, "release:v1")
        notified = yield Step("notify:v1", notify, "notify:v1")
        return {"cancelled_at": error.key, "reason": error.reason, "released": released,
                "notified": notified}
    return "approved"


async def main(db: str) -> None:
    async with replay.open_engine(db, workflows=[compensating], durability="fsync") as engine:
        print("open", flush=True)
        run = await engine.start(compensating, run_id="crash")
        await run.wait()
        print("parked", flush=True)
        await engine.cancel("crash", "crash test")
        print("cancel-acked", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    SIDE_FILE = sys.argv[2]
    BLOCK = sys.argv[3] == "block"
    trio.run(main, sys.argv[1])
