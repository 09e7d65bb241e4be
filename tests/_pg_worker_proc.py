"""Child process for tests/test_pg_workers.py: one engine process on a shared schema.

Usage::

    python _pg_worker_proc.py WORKER SIDE_FILE STOP_FILE LEASE POLL_INTERVAL MAX_RUNS
                              DURABILITY [PAUSE_TRIGGER]

or::

    python _pg_worker_proc.py --opens WORKER GO ROUNDS

The PostgreSQL URL comes from the environment (``REPLAY_WORKER_URL``), not the command
line: it may hold a password. Opens an engine on it with ``worker=WORKER``, ``lease``,
``poll_interval`` and ``max_runs`` (``none`` for no limit), prints ``open PID`` and
executes whatever runs it claims until STOP_FILE exists; then it closes the engine
cleanly, prints ``closed`` and exits 0. An engine that lost its lease raises
`replay.LeaseLost` out of ``async with open_engine(...)``: the traceback goes to stderr
and the process exits 1 (as for any other error). With PAUSE_TRIGGER, the process
stops itself (SIGSTOP) inside the first commit after that file appears (see
`pause_in_commit`). With ``--opens`` it only opens and
closes an engine, ROUNDS times, each time as soon as the file ``GO.<round>`` exists (see
`opens`): engines opening one schema at the same moment.

Every step execution appends one line ``run_id key pid`` to SIDE_FILE (one ``O_APPEND``
write, so lines never interleave or tear) and returns this process's pid, so each
recorded step value names the process that executed it. The test process imports this
module for the workflows (it starts runs but never executes them: ``max_runs=0``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Generator
from typing import Any

import trio

import replay
from replay import Step, Suspend

URL_ENV = "REPLAY_WORKER_URL"
SIDE_FILE = ""
SLOW_SECONDS = 1.0  # the sync step `slow` sleeps this long in its worker thread


def record_execution() -> int:
    run_id, key, _attempt = replay.current_step()
    pid = os.getpid()
    descriptor = os.open(SIDE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{run_id} {key} {pid}\n".encode())
    finally:
        os.close(descriptor)
    return pid


async def mark() -> int:
    """A quick step: record the execution, return the pid."""
    return record_execution()


def slow() -> int:
    """A long sync step (a worker thread): record the execution, sleep, return the pid."""
    pid = record_execution()
    time.sleep(SLOW_SECONDS)
    return pid


@replay.workflow(name="pgw.chain")
def chain(steps: int) -> Generator[Any, Any, list[int]]:
    pids = []
    for j in range(steps):
        pids.append((yield Step(f"s{j}", mark)))
    return pids


@replay.workflow(name="pgw.slow")
def slow_chain() -> Generator[Any, Any, list[int]]:
    first = yield Step("s0", mark)
    middle = yield Step("slow", slow)
    last = yield Step("s2", mark)
    return [first, middle, last]


@replay.workflow(name="pgw.parked")
def parked(tag: str) -> Generator[Any, Any, dict[str, Any]]:
    before = yield Step("s0", mark)
    value = yield Suspend("approval:v1", status="waiting for a signal")
    after = yield Step("s1", mark)
    return {"tag": tag, "signalled": value, "pids": [before, after]}


WORKFLOWS = [chain, slow_chain, parked]


async def serve(url: str, worker: str, stop_file: str, lease: float, poll: float,
                max_runs: int | None, durability: str) -> None:
    options: dict[str, Any] = {"worker": worker, "lease": lease, "poll_interval": poll,
                               "max_runs": max_runs}
    async with replay.open_engine(url, workflows=WORKFLOWS, durability=durability,
                                  serve_cli=False, **options):
        print(f"open {os.getpid()}", flush=True)
        while not os.path.exists(stop_file):
            await trio.sleep(0.05)
    print("closed", flush=True)


def pause_in_commit(trigger: str) -> None:
    """Once `trigger` exists, stop this process (SIGSTOP) inside its next commit.

    Right after the batch's fenced INSERT, before COMMIT: the transaction stays open on
    the server, holding its locks (those on the batch's leases among them). Prints
    ``paused`` first.
    """
    import signal
    import threading

    from replay._pg import _leases

    write_fenced = _leases.write_fenced

    def pausing(con: Any, *args: Any) -> bool:
        written = write_fenced(con, *args)
        if written and os.path.exists(trigger):
            os.unlink(trigger)
            print("paused", flush=True)
            # At this thread: a stop sent to the process may let it run on a moment
            # (far enough to commit); the sleep is a system call it cannot pass.
            signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
            time.sleep(0.01)
        return written

    _leases.write_fenced = pausing


async def open_and_close(url: str, worker: str) -> None:
    async with replay.open_engine(url, workflows=WORKFLOWS, worker=worker,
                                  durability="none", serve_cli=False):
        pass


def opens(worker: str, go: str, rounds: int) -> None:
    """Open and close an engine `rounds` times, each once the file ``GO.<round>`` exists.

    Prints ``ready N`` before waiting for round N, then ``opened N``, or ``failed N``
    and the error.
    """
    url = os.environ[URL_ENV]
    for n in range(rounds):
        print(f"ready {n}", flush=True)
        while not os.path.exists(f"{go}.{n}"):
            time.sleep(0.001)
        try:
            trio.run(open_and_close, url, worker)
        except replay.ReplayError as error:
            print(f"failed {n} {type(error).__name__}: {error}", flush=True)
        else:
            print(f"opened {n}", flush=True)


def main() -> None:
    global SIDE_FILE
    if sys.argv[1] == "--opens":
        opens(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    worker, SIDE_FILE, stop_file, lease, poll, max_runs, durability = sys.argv[1:8]
    if len(sys.argv) > 8:
        pause_in_commit(sys.argv[8])
    trio.run(serve, os.environ[URL_ENV], worker, stop_file, float(lease), float(poll),
             None if max_runs == "none" else int(max_runs), durability)


if __name__ == "__main__":
    main()
