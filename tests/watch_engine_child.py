"""Child process for tests/test_cli_watch.py: an engine that holds a file, steered by stdin.

Usage::

    python watch_engine_child.py DB

Runs an engine in real time on DB with workflow ``batch(n)``: ``n`` times a step
``part:I`` (which publishes progress ``{"i": I}``) and a note ``progress:I``
(``{"done": I + 1, "of": n}``), then ``Suspend("approval:v1", status="waiting for a
manager")``; it returns the signal's payload. Prints ``ready``, then reads commands
from standard input, one per line:

* ``start RUN_ID N``: starts ``batch(N)``, waits until it is suspended, prints
  ``started RUN_ID``.
* ``watchers``: once the engine has nothing left to do, prints ``watchers N``: how
  many watchers are registered.
* ``quit`` (or end of input): closes the engine and prints ``closed``.

Nothing sleeps: the test waits for these lines.
"""

from __future__ import annotations

import sys
from typing import Any

import trio
import trio.testing

import replay
from replay import Note, Step, Suspend
from replay._engine._facade import internals


async def part(i: int) -> int:
    replay.current_step().progress({"i": i})
    return i


@replay.workflow(name="batch")
def batch(n: int):  # type: ignore[no-untyped-def]
    for i in range(n):
        yield Step(f"part:{i}", part, i)
        yield Note(f"progress:{i}", {"done": i + 1, "of": n}, text=f"{i + 1} of {n}")
    decision: Any = yield Suspend("approval:v1", status="waiting for a manager")
    return decision


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def watchers(engine: replay.Engine) -> int:
    hub = internals(engine).scheduler.watchers
    return sum(len(found) for found in hub._by_run.values()) + len(hub._everything)


async def main(db: str) -> None:
    async with replay.open_engine(db, workflows=[batch], shutdown_timeout=0) as engine:
        say("ready")
        while True:
            words = (await trio.to_thread.run_sync(sys.stdin.readline)).split()
            if not words or words[0] == "quit":
                break
            if words[0] == "start":
                await (await engine.start(batch, int(words[2]), run_id=words[1])).wait()
                say(f"started {words[1]}")
            elif words[0] == "watchers":
                await trio.testing.wait_all_tasks_blocked()
                say(f"watchers {watchers(engine)}")
    say("closed")


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
