"""Child process for tests/test_crash_waits.py: sleeping and suspended runs on one file.

Usage::

    python crash_waits_child.py CONFIG_JSON

CONFIG_JSON holds ``mode``, ``db``, ``side`` (the side file), ``start`` (an ISO aware
datetime: this process's virtual start, see `replay.testing.set_virtual_start`),
``plan`` (``{run_id: [workflow, spec]}``), ``signals`` (run ids to signal) and
``round`` (a label put in signal payloads). The engine runs under
``trio.testing.MockClock(autojump_threshold=0)``: virtual time.

Workflows: ``sleeper`` (step ``before:v1``, ``Sleep("nap:v1", ...)`` for ``seconds`` or
``until`` of its spec, step ``after:v1``) and ``waiter`` (step ``before:v1``,
``Suspend("approval:v1", timeout=spec["timeout"])``, then step ``after:v1`` with the
payload, or on `replay.SuspendTimeout` step ``timeout:v1``). Every step execution
appends ``run_id key attempt`` to the side file (one ``O_APPEND`` write) and prints
``step run_id key attempt``. Even ``index + position`` steps are sync (worker
threads), odd ones ``async def``.

Modes (each prints ``open ISO_NOW`` once the engine is open):

* ``start``: virtual time is frozen (nothing can fire); starts every planned run
  (idempotent by run_id, printing ``started RUN_ID``), polls ``engine.runs()`` until
  every run is parked on its sleep or suspend, prints ``parked`` and blocks until the
  parent SIGKILLs it.
* ``signal``: virtual time is frozen; signals each run of ``signals`` in order,
  printing ``acked RUN_ID`` as soon as ``engine.signal`` returns, then ``all-acked``,
  and blocks until it is SIGKILLed.
* ``finish``: virtual time runs; signals ``signals`` at once (each ``accepted`` or
  ``rejected``), waits for every planned run to finish, signals every waiter again
  (all must be rejected now), closes the engine and prints ``done {json}``, exit 0.
* ``race``: virtual time runs; the one run of ``signals`` (a ``nap_then_wait`` run,
  ``Sleep("nap:v1")`` then ``Suspend("approval:v1")``, whose nap is due at the open)
  is signalled while its timer wake-up reads its history (the read is held back until
  the signal is durable, or waits for the read); prints ``done {json}`` with what
  ``Run.wait()`` reported.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Generator
from contextlib import ExitStack
from datetime import datetime, timedelta
from typing import Any

import trio
import trio.testing

import replay
from replay import Sleep, Step, Suspend
from replay._engine._clock import busy_thread, set_virtual_start
from replay._engine._facade import internals

SIDE_FILE = ""
RETRY = replay.Retry(attempts=50, initial=0, jitter=0)
KEY = "approval:v1"


def emit(line: str) -> None:
    # One write call on the text layer (it holds a lock), so threads never interleave.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def record_execution() -> str:
    run_id, key, attempt = replay.current_step()
    descriptor = os.open(SIDE_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{run_id} {key} {attempt}\n".encode())
    finally:
        os.close(descriptor)
    return f"{run_id} {key} {attempt}"


def sync_step(*parts: str) -> str:
    emit(f"step {record_execution()}")
    return ":".join(parts)


async def async_step(*parts: str) -> str:
    await trio.sleep(0)
    emit(f"step {record_execution()}")
    await trio.sleep(0)
    return ":".join(parts)


def step(run_id: str, position: int, key: str, *extra: str) -> Step:
    """The run's step `key`: its value is ``key:run_id[:extra...]``."""
    index = int(run_id.rsplit("-", 1)[1])
    function = sync_step if (index + position) % 2 == 0 else async_step
    return Step(key, function, key, run_id, *extra)


@replay.workflow(name="sleeper")
def sleeper(run_id: str, spec: dict[str, Any]) -> Generator[Any, Any, dict[str, Any]]:
    before = yield step(run_id, 0, "before:v1")
    if "until" in spec:
        yield Sleep("nap:v1", until=datetime.fromisoformat(spec["until"]))
    else:
        yield Sleep("nap:v1", timedelta(seconds=spec["seconds"]))
    after = yield step(run_id, 1, "after:v1")
    return {"run": run_id, "before": before, "after": after}


@replay.workflow(name="waiter")
def waiter(run_id: str, spec: dict[str, Any]) -> Generator[Any, Any, dict[str, Any]]:
    before = yield step(run_id, 0, "before:v1")
    try:
        payload = yield Suspend(KEY, status=f"approve {run_id}", timeout=spec["timeout"])
    except replay.SuspendTimeout as timeout:
        handled = yield step(run_id, 1, "timeout:v1")
        return {"run": run_id, "before": before, "timed_out": timeout.key, "handled": handled}
    after = yield step(run_id, 1, "after:v1", payload["by"])
    return {"run": run_id, "before": before, "payload": payload, "after": after}


@replay.workflow(name="nap_then_wait")
def nap_then_wait(run_id: str, spec: dict[str, Any]) -> Generator[Any, Any, Any]:
    yield Sleep("nap:v1", timedelta(seconds=spec["seconds"]))
    return (yield Suspend(KEY, status=f"approve {run_id}"))


def payload(run_id: str, label: str) -> dict[str, str]:
    return {"by": f"manager-{label}", "run": run_id}


def is_parked(info: replay.RunInfo) -> bool:
    return (info.state, info.waiting_for) in (("sleeping", "nap:v1"), ("suspended", KEY))


async def start_all(engine: replay.Engine, plan: dict[str, list[Any]]) -> None:
    for run_id, (workflow, spec) in plan.items():
        await engine.start(workflow, run_id, spec, run_id=run_id)
        emit(f"started {run_id}")
    while not all(is_parked(info) for info in await engine.runs()):
        # Real time, in a thread: virtual time is frozen, so trio.sleep would never end.
        await trio.to_thread.run_sync(time.sleep, 0.001)
    emit("parked")


async def signal_in_order(engine: replay.Engine, run_ids: list[str], label: str) -> None:
    for run_id in run_ids:
        await engine.signal(run_id, KEY, payload(run_id, label))
        emit(f"acked {run_id}")
    emit("all-acked")


async def try_signal(engine: replay.Engine, run_id: str, label: str) -> str:
    try:
        await engine.signal(run_id, KEY, payload(run_id, label))
    except replay.SignalRejected:
        return "rejected"
    return "accepted"


async def finish(engine: replay.Engine, config: dict[str, Any]) -> dict[str, Any]:
    plan, label = config["plan"], config["round"]
    signals = {run_id: await try_signal(engine, run_id, label) for run_id in config["signals"]}
    outputs: dict[str, Any] = {}

    async def wait(run_id: str) -> None:
        outputs[run_id] = await engine.get_run(run_id).result()

    async with trio.open_nursery() as nursery:
        for run_id in plan:
            nursery.start_soon(wait, run_id)
    late = {run_id: await try_signal(engine, run_id, f"{label}-late")
            for run_id, (workflow, _) in plan.items() if workflow == "waiter"}
    return {"signals": signals, "outputs": outputs, "late": late,
            "end": engine.now().isoformat()}


async def race(engine: replay.Engine, config: dict[str, Any]) -> dict[str, Any]:
    """Signal a run while its timer wake-up reads its history (a slow read)."""
    store, reading, release = internals(engine).store, trio.Event(), threading.Event()
    original, armed = store.fold_memo, [True]

    def slow_load(run_id: str, workflow: str) -> Any:
        history = original(run_id, workflow)  # the read happens now ...
        if armed:
            armed.clear()
            trio.from_thread.run_sync(reading.set)
            release.wait()  # ... and returns once the signal is durable, or waits
        return history

    # Patched before the body's first checkpoint: the due timer has not fired yet.
    store.fold_memo = slow_load  # type: ignore[method-assign]
    # Rows in memory would be folded on the loop: the loader is told they are not.
    store.memo_at_hand = lambda run_id, workflow, most: None  # type: ignore[method-assign]
    [run_id] = config["signals"]
    lock = internals(engine).scheduler.runs.find(run_id).lock
    outcome: dict[str, str] = {}

    async def send() -> None:
        outcome["signal"] = await try_signal(engine, run_id, config["round"])

    await reading.wait()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        # Hold the read back until the signal is durable, or blocked on the run's lock
        # (an engine that loads under the lock). Real time: virtual time stands still
        # while the read's thread is busy.
        while "signal" not in outcome and not lock.statistics().tasks_waiting:
            await trio.to_thread.run_sync(time.sleep, 0.001)
        release.set()
    info = await engine.get_run(run_id).wait()
    again = await try_signal(engine, run_id, "again")
    return {**outcome, "state": info.state, "output": info.output, "again": again}


async def main(config: dict[str, Any]) -> None:
    set_virtual_start(datetime.fromisoformat(config["start"]))
    mode = config["mode"]
    with ExitStack() as stack:
        if mode != "finish":
            # Freeze virtual time (as while a worker thread runs): no deadline can come
            # before the parent's SIGKILL.
            stack.enter_context(busy_thread())
        async with replay.open_engine(
            config["db"], workflows=[sleeper, waiter, nap_then_wait], default_retry=RETRY,
            durability="fsync",
        ) as engine:
            emit(f"open {engine.now().isoformat()}")
            if mode == "start":
                await start_all(engine, config["plan"])
                await trio.sleep_forever()
            elif mode == "signal":
                await signal_in_order(engine, config["signals"], config["round"])
                await trio.sleep_forever()
            if mode == "race":
                summary = await race(engine, config)
            else:
                summary = await finish(engine, config)
    emit("done " + json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    settings = json.loads(sys.argv[1])
    SIDE_FILE = settings["side"]
    trio.run(main, settings, clock=trio.testing.MockClock(autojump_threshold=0))
