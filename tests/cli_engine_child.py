"""Child process for tests/test_cli_live.py: an application whose engine holds a file.

Usage::

    python cli_engine_child.py DB [--no-serve]

Runs an engine in real time on DB (with ``serve_cli=False`` when ``--no-serve`` is
given) and starts these runs, each with its run_id:

* ``a1``, ``a2``: workflow ``approval``: step ``fetch:v1``, then
  ``Suspend("approval:v1", status="waiting for a manager")``, then step ``after:v1``;
  returns ``{"n": n, "approved": payload}``.
* ``f1``: workflow ``flaky``: step ``charge:v1`` fails on its first call in this
  process and succeeds afterwards (so ``resume`` completes the run); no retries.
* ``n1``: workflow ``napper``: step ``one:v1``, then ``Sleep("nap:v1", 1 day)``.
* ``c1``: workflow ``approval`` signalled at once: completed.

Prints ``ready`` once every run is where the tests expect it (suspended, failed,
sleeping, completed), then reads commands from standard input, one per line:

* ``wait RUN_ID``: waits until the run finishes, prints ``done RUN_ID STATE``.
* ``quit`` (or end of input): closes the engine and prints ``closed``.
"""

from __future__ import annotations

import contextlib
import sys
from datetime import timedelta
from typing import Any

import trio

import replay
from replay import Sleep, Step, Suspend

CALLS = {"charge": 0}


def fetch(n: int) -> dict[str, int]:
    return {"n": n, "cents": 100 * n}


def after(n: int, decision: Any) -> str:
    return f"after {n}: {decision!r}"


def charge() -> str:
    CALLS["charge"] += 1
    if CALLS["charge"] == 1:
        raise ConnectionError("card service unreachable")
    return "charged"


@replay.workflow(name="approval")
def approval(n: int):  # type: ignore[no-untyped-def]
    yield Step("fetch:v1", fetch, n)
    decision = yield Suspend("approval:v1", status="waiting for a manager")
    yield Step("after:v1", after, n, decision)
    return {"n": n, "approved": decision}


@replay.workflow(name="flaky")
def flaky():  # type: ignore[no-untyped-def]
    receipt = yield Step("charge:v1", charge)
    return receipt


@replay.workflow(name="napper")
def napper():  # type: ignore[no-untyped-def]
    yield Step("one:v1", fetch, 1)
    yield Sleep("nap:v1", timedelta(days=1))
    return "rested"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def settle(engine: replay.Engine, pause: float = 0) -> None:
    """Start the runs, `pause` seconds apart (tests pass a pause in virtual time)."""
    for run_id, n in (("a1", 1), ("a2", 2), ("c1", 3)):
        await (await engine.start(approval, n, run_id=run_id)).wait()
        await trio.sleep(pause)
    await engine.signal("c1", "approval:v1", "yes")
    await engine.get_run("c1").result()
    await trio.sleep(pause)
    await (await engine.start(flaky, run_id="f1")).wait()
    await trio.sleep(pause)
    await engine.start(napper, run_id="n1")
    while engine.status("n1").state is not replay.RunState.SLEEPING:
        await trio.sleep(0.001)  # a sleeping run does not settle for Run.wait()


async def serve_commands(engine: replay.Engine) -> None:
    async with trio.open_nursery() as nursery:
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            words = line.split()
            if not words or words[0] == "quit":
                nursery.cancel_scope.cancel()
                return
            if words[0] == "wait":
                nursery.start_soon(wait_for, engine, words[1])


async def wait_for(engine: replay.Engine, run_id: str) -> None:
    with contextlib.suppress(replay.WorkflowFailed):
        await engine.get_run(run_id).result()
    say(f"done {run_id} {engine.status(run_id).state}")


async def main(db: str, serve: bool) -> None:
    async with replay.open_engine(db, workflows=[approval, flaky, napper],
                                  serve_cli=serve, shutdown_timeout=0) as engine:
        await settle(engine)
        say("ready")
        await serve_commands(engine)
    say("closed")


if __name__ == "__main__":
    trio.run(main, sys.argv[1], "--no-serve" not in sys.argv[2:])
