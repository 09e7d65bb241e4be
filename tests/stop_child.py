"""Child process for test_stops_process: a run blocked in a step, stopped from outside.

Usage: python stop_child.py DB MODE BLOCK
MODE ``body``: ``async with open_engine(...)`` waiting for the run's result (Ctrl-C
raises KeyboardInterrupt out of the body); ``run``: ``replay.run``; ``serve``: an
engine serving until SIGTERM with ``engine.serve_forever()``.
BLOCK ``block``: the second step blocks for ever (printing ``blocked ATTEMPT``);
``pass``: it returns.
Every step execution is appended to DB.executions as "key attempt".
"""

from __future__ import annotations

import signal
import sys

import trio

import replay
from replay import Step

DB, MODE, BLOCK = sys.argv[1], sys.argv[2], sys.argv[3] == "block"


def executed(key: str) -> int:
    attempt = replay.current_step()[2]
    with open(DB + ".executions", "a") as side:
        side.write(f"{key} {attempt}\n")
    return attempt


async def quick(n: int) -> int:
    executed("quick:v1")
    return n + 1


async def blocking(n: int) -> int:
    attempt = executed("block:v1")
    if BLOCK:
        print(f"blocked {attempt}", flush=True)
        await trio.sleep_forever()
    return n * 10


@replay.workflow(name="stopped")
def stopped():  # type: ignore[no-untyped-def]
    a = yield Step("quick:v1", quick, 1)
    return (yield Step("block:v1", blocking, a))


async def body() -> None:
    async with replay.open_engine(DB, workflows=[stopped]) as engine:
        run = await engine.start(stopped, run_id="s")
        print(f"output {await run.result()}", flush=True)


async def serve() -> None:
    async with replay.open_engine(DB, workflows=[stopped], shutdown_timeout=0.2) as engine:
        run = await engine.start(stopped, run_id="s")

        async def report() -> None:
            print(f"output {await run.result()}", flush=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(report)
            number = await engine.serve_forever()
            print(f"stopping on {signal.Signals(number).name}", flush=True)
            nursery.cancel_scope.cancel()


def main() -> None:
    try:
        if MODE == "run":
            print(f"output {replay.run(stopped, db=DB, run_id='s')}", flush=True)
        else:
            trio.run(body if MODE == "body" else serve)
    except KeyboardInterrupt:
        print("stopped by KeyboardInterrupt", flush=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
