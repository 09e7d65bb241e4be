"""A clean stop charges nothing: in-flight attempts are recorded as abandoned (issue 10).

Each way the ``async with open_engine(...)`` body can end — it returns (running steps
get `shutdown_timeout`), raises, or is cancelled — while a step runs, twice in a row
(the second time during the attempt that the reopened engine recovered, with its
start recorded), then a clean finish: no interruption, no failure, every completed
step executed once. Process-level stops (Ctrl-C, SIGTERM, `replay.run`) are in
test_stops_process.py.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

import replay
from replay import Retry, RunState, Step, StepFailed, Suspend

pytestmark = pytest.mark.both_stores

EXECUTED: Counter[str] = Counter()


class Blocker:
    """Makes the `block:v1` step block until released, and tells when it is entered."""

    def __init__(self) -> None:
        self.block = True
        self.entered = trio.Event()


BLOCKER = Blocker()


async def quick(n: int) -> int:
    EXECUTED["quick:v1"] += 1
    return n + 1


async def blocking(n: int) -> int:
    EXECUTED["block:v1"] += 1
    if BLOCKER.block:
        BLOCKER.entered.set()
        await trio.sleep_forever()
    return n * 10


@replay.workflow(name="stoppable")
def stoppable():  # type: ignore[no-untyped-def]
    a = yield Step("quick:v1", quick, 1)
    return (yield Step("block:v1", blocking, a))


class Boom(Exception):
    pass


async def stop_while_blocked(db: str, how: str, start: bool) -> None:
    """Open the engine, wait until `block:v1` runs, and end the body `how`."""
    BLOCKER.entered = trio.Event()
    with trio.CancelScope() as scope:
        try:
            async with replay.open_engine(db, workflows=[stoppable],
                                          shutdown_timeout=5) as engine:
                if start:
                    await engine.start(stoppable, run_id="s")
                await BLOCKER.entered.wait()
                if how == "raises":
                    raise Boom("the application failed")
                if how == "cancelled":
                    scope.cancel()
                    await trio.sleep_forever()
        except Boom:
            assert how == "raises"
    assert scope.cancelled_caught == (how == "cancelled")


async def step_rows(engine: replay.Engine, run_id: str) -> list[tuple[Any, ...]]:
    return await engine.sql(
        "select key, event, attempt, error_type from replay_events "
        "where run_id = ? and kind = 'step' order by seq", [run_id])


@pytest.mark.parametrize("how", ["returns", "raises", "cancelled"])
async def test_a_stop_twice_in_a_row_charges_nothing(db: str, how: str) -> None:
    EXECUTED.clear()
    BLOCKER.block = True
    await stop_while_blocked(db, how, start=True)
    await stop_while_blocked(db, how, start=False)  # the recovered attempt
    BLOCKER.block = False
    async with replay.open_engine(db, workflows=[stoppable]) as engine:
        assert await engine.get_run("s").result() == 20
        rows = await step_rows(engine, "s")
    assert rows == [
        ("quick:v1", "completed", 1, None),
        ("block:v1", "abandoned", 1, None),
        ("block:v1", "started", 2, None),
        ("block:v1", "abandoned", 2, None),
        ("block:v1", "started", 3, None),
        ("block:v1", "completed", 3, None),
    ]
    assert dict(EXECUTED) == {"quick:v1": 1, "block:v1": 3}


async def test_a_stop_charges_neither_the_retry_budget_nor_interruptions(db: str) -> None:
    # One attempt allowed and max_interruptions=1: any charge would fail the run.
    calls = []

    async def once() -> str:
        calls.append(1)
        if len(calls) <= 3:
            BLOCKER.entered.set()
            await trio.sleep_forever()
        return "done"

    @replay.workflow(name="strict")
    def strict():  # type: ignore[no-untyped-def]
        return (yield Step("once:v1", once, retry=Retry(attempts=1)))

    for round_number in range(3):
        BLOCKER.entered = trio.Event()
        async with replay.open_engine(db, workflows=[strict], max_interruptions=1,
                                      shutdown_timeout=0) as engine:
            if round_number == 0:
                await engine.start(strict, run_id="strict")
            await BLOCKER.entered.wait()
    async with replay.open_engine(db, workflows=[strict], max_interruptions=1) as engine:
        assert await engine.get_run("strict").result() == "done"


async def test_a_step_completing_as_the_stop_begins_keeps_its_outcome(db: str) -> None:
    # The body raises the moment `fast:v1` returns: its `completed` record may still be
    # queued while the stop records the abandonment of the other run's step. It must
    # be committed, and the step must never run again.
    EXECUTED.clear()
    BLOCKER.block = True
    BLOCKER.entered = trio.Event()
    returned = trio.Event()

    async def fast() -> str:
        EXECUTED["fast:v1"] += 1
        returned.set()
        return "fast value"

    @replay.workflow(name="racer")
    def racer():  # type: ignore[no-untyped-def]
        return (yield Step("fast:v1", fast))

    with pytest.raises(Boom):
        async with replay.open_engine(db, workflows=[stoppable, racer]) as engine:
            await engine.start(stoppable, run_id="s")
            await BLOCKER.entered.wait()
            await engine.start(racer, run_id="r")
            await returned.wait()
            raise Boom("stop now")
    BLOCKER.block = False
    async with replay.open_engine(db, workflows=[stoppable, racer]) as engine:
        assert await engine.get_run("r").result() == "fast value"
        assert await engine.get_run("s").result() == 20
        assert await step_rows(engine, "r") == [("fast:v1", "completed", 1, None)]
    assert EXECUTED["fast:v1"] == 1


async def test_a_sync_step_queued_when_the_engine_stops_never_starts(db: str) -> None:
    started = []
    release = threading.Event()

    def hold() -> str:
        started.append("hold")
        release.wait(5)
        return "held"

    def queued() -> str:
        started.append("queued")
        return "ran"

    @replay.workflow(name="holder")
    def holder():  # type: ignore[no-untyped-def]
        return (yield Step("hold:v1", hold))

    @replay.workflow(name="waiter")
    def waiter():  # type: ignore[no-untyped-def]
        return (yield Step("queued:v1", queued))

    try:
        with pytest.raises(Boom):
            async with replay.open_engine(db, workflows=[holder, waiter],
                                          max_threads=1) as engine:
                await engine.start(holder, run_id="h")
                while not started:
                    await trio.sleep(0)
                await engine.start(waiter, run_id="w")
                # Until the waiter's call is queued behind the only (busy) thread.
                await trio.testing.wait_all_tasks_blocked()
                raise Boom("stop")
    finally:
        release.set()
    assert started == ["hold"]
    async with replay.open_engine(db, workflows=[holder, waiter]) as engine:
        assert await engine.get_run("w").result() == "ran"
        assert ("queued:v1", "abandoned", 1, None) in await step_rows(engine, "w")


def test_a_sync_timeout_counts_from_when_a_thread_starts_the_step() -> None:
    # Issue 18: with one thread, ten 0.1 s steps queue for up to 0.9 s; a 0.5 s
    # timeout must not fire for time spent in the queue (real time: threads).
    ran = []

    def step(n: int) -> int:
        ran.append(n)
        threading.Event().wait(0.1)
        return n

    @replay.workflow(name="queued_timeout")
    def queued_timeout(n: int):  # type: ignore[no-untyped-def]
        return (yield Step("work:v1", step, n, timeout=0.5))

    async def main() -> list[Any]:
        async with replay.open_engine(":memory:", workflows=[queued_timeout],
                                      max_threads=1, durability="none") as engine:
            runs = [await engine.start(queued_timeout, n) for n in range(10)]
            return [await run.result() for run in runs]

    assert trio.run(main) == list(range(10))
    assert sorted(ran) == list(range(10))


async def test_a_stray_cancelled_from_a_step_fails_only_that_step(db: str) -> None:
    # Issue 18: a step that lets a Cancelled escape used to stop the whole engine.
    async def leaks() -> None:
        with trio.CancelScope() as inner:
            inner.cancel()
            try:
                await trio.sleep(1)
            except trio.Cancelled as cancelled:
                leaked = cancelled
        raise leaked

    @replay.workflow(name="leaky")
    def leaky():  # type: ignore[no-untyped-def]
        try:
            yield Step("leak:v1", leaks)
        except StepFailed as failure:
            return failure.error_type, failure.message

    async with replay.open_engine(db, workflows=[leaky, stoppable]) as engine:
        error_type, message = await (await engine.start(leaky, run_id="l")).result()
        BLOCKER.block = False
        assert await (await engine.start(stoppable, run_id="other")).result() == 20
    assert error_type == "builtins.RuntimeError"
    assert message == ("step 'leak:v1' of run 'l': attempt 1 raised trio.Cancelled although "
                       "nothing cancelled it; a step must not let a Cancelled escape the "
                       "cancel scope that caught it")


async def test_a_signal_for_a_key_the_run_does_not_wait_on_is_kept_with_a_warning(
        db: str, caplog: pytest.LogCaptureFixture) -> None:
    @replay.workflow(name="confirm")
    def confirm():  # type: ignore[no-untyped-def]
        first = yield Suspend("email-confirmed:v1")
        return first, (yield Suspend("email-confirmed"))

    async with replay.open_engine(db, workflows=[confirm]) as engine:
        run = await engine.start(confirm, run_id="c")
        await run.wait()
        with caplog.at_level(logging.WARNING, logger="replay"):
            await engine.signal("c", "email-confirmed", "typo")
        assert engine.status("c").state is RunState.SUSPENDED
        assert caplog.messages == [
            "run 'c' waits for a signal for 'email-confirmed:v1', not 'email-confirmed'; "
            "the signal for 'email-confirmed' is kept in its mailbox until the run "
            "suspends on 'email-confirmed'. Did you mean 'email-confirmed:v1'?"]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="replay"):
            await engine.signal("c", "email-confirmed:v1", "right")
        assert await run.result() == ("right", "typo")
        assert caplog.messages == []


@pytest.mark.parametrize(("value", "error", "message"), [
    (0, ValueError, "max_interruptions must be >= 1, got 0"),
    (True, TypeError, "max_interruptions must be an int, got True (bool)"),
    (2.0, TypeError, "max_interruptions must be an int, got 2.0 (float)"),
])
async def test_max_interruptions_is_checked(value: Any, error: type[Exception],
                                            message: str) -> None:
    with pytest.raises(error, match=rf"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
        async with replay.open_engine(workflows=[stoppable], max_interruptions=value):
            pass


def test_step_timeout_and_step_interrupted_carry_run_id_and_key() -> None:
    for cls in (replay.StepTimeout, replay.StepInterrupted):
        error = cls("message", run_id="r", key="k")
        assert (error.run_id, error.key, str(error)) == ("r", "k", "message")
