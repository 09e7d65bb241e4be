"""Child process for tests/test_hostile_values.py: reopen a file holding a hostile value.

Usage::

    python hostile_child.py DB

Opens an engine on DB under a fake clock. The runs ``victim`` and ``bystander`` of
`holds` sleep for a year: when the engine opens it schedules their wake-up, the fake
clock jumps there, and both replay from the top, decoding their recorded step values.
Prints one line of JSON: how ``victim`` failed (or its output) and what ``bystander``
and a fresh run returned, then exits 0. A crash while decoding (it was a SIGSEGV before
the decoder bounded nesting) shows as a negative exit status and no line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Generator
from datetime import timedelta
from typing import Any

import trio
import trio.testing

import replay
from replay import Sleep, Step


async def make_value(label: str) -> dict[str, str]:
    return {"label": label}


@replay.workflow(name="holds")
def holds(label: str) -> Generator[Any, Any, Any]:
    value = yield Step("value:v1", make_value, label)
    yield Sleep("nap:v1", timedelta(days=365))
    return value


async def reopen(db: str) -> None:
    report: dict[str, Any] = {}
    async with replay.open_engine(db, workflows=[holds], durability="none") as engine:
        try:
            report["victim"] = await engine.get_run("victim").result()
        except replay.WorkflowFailed as failed:
            report["victim"] = {"error_type": failed.error_type, "message": failed.message}
        report["bystander"] = await engine.get_run("bystander").result()
        fresh = await engine.start(holds, "fresh", run_id="fresh")
        report["fresh"] = await fresh.result()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    trio.run(reopen, sys.argv[1], clock=trio.testing.MockClock(autojump_threshold=0))
