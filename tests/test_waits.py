"""Durable sleeps, suspension and signals, in virtual time (SPEC §2 rules 8-9, §4.5)."""

from __future__ import annotations

import contextlib
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

import replay
import replay.testing
from replay import RunState, Sleep, Step, Suspend, SuspendTimeout
from replay._engine._facade import internals

pytestmark = pytest.mark.both_stores

counts: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _clear_counts() -> None:
    counts.clear()


def count(name: str, value: Any = None) -> Any:
    counts[name] = counts.get(name, 0) + 1
    return value


def tasks_of(engine: replay.Engine) -> int:
    return internals(engine).scheduler.tasks.alive()


@replay.workflow(name="napper")
def napper(seconds: float):  # type: ignore[no-untyped-def]
    count("top")
    yield Step("before:v1", count, "before")
    slept = yield Sleep("nap:v1", seconds)
    yield Step("after:v1", count, "after")
    return slept


@replay.workflow(name="approval")
def approval(timeout: float | None = None):  # type: ignore[no-untyped-def]
    count("top")
    yield Step("request:v1", count, "request")
    try:
        decision = yield Suspend("approval:v1", status="waiting for a manager", timeout=timeout)
    except SuspendTimeout as timed_out:
        count("timed out")
        return f"escalated after {timed_out.key}"
    count("decided")
    return decision


async def test_a_sleep_parks_the_run_and_wakes_at_its_deadline(db: str) -> None:
    async with replay.open_engine(db, workflows=[napper]) as engine:
        began = engine.now()
        run = await engine.start(napper, 3600, run_id="n1")
        await trio.sleep(60)
        info = engine.status("n1")
        assert (info.state, info.waiting_for) == (RunState.SLEEPING, "nap:v1")
        assert info.wake_at == began + timedelta(hours=1)
        assert tasks_of(engine) == 0
        assert await run.result() is None
        events = {(e.kind, e.event): e for e in await engine.history("n1")}
    assert events["sleep", "fired"].recorded_at == began + timedelta(hours=1)
    assert events["sleep", "scheduled"].wake_at == began + timedelta(hours=1)
    assert counts == {"top": 1, "before": 1, "after": 1}


async def test_a_thirty_day_sleep_takes_no_real_time(db: str) -> None:
    async with replay.open_engine(db, workflows=[napper]) as engine:
        await (await engine.start(napper, 30 * 24 * 3600, run_id="n1")).result()
        (gap,) = await engine.sql(
            "select max(recorded_at) - min(recorded_at) from replay_events where run_id = ?",
            ["n1"])
    assert gap[0] == timedelta(days=30)


async def test_sleep_until_a_past_datetime_fires_at_once(db: str) -> None:
    @replay.workflow(name="until")
    def until(at: datetime):  # type: ignore[no-untyped-def]
        yield Sleep("until:v1", until=at)
        return "woke"

    async with replay.open_engine(db, workflows=[until]) as engine:
        began = engine.now()
        past = datetime(2000, 1, 1, tzinfo=UTC)
        assert await (await engine.start(until, past)).result() == "woke"
        assert engine.now() == began
        future = began + timedelta(days=2)
        assert await (await engine.start(until, future)).result() == "woke"
        assert engine.now() == future


async def test_a_sleeper_wakes_at_its_original_deadline_after_reopening(db: str) -> None:
    async with replay.open_engine(db, workflows=[napper]) as engine:
        began = engine.now()
        await engine.start(napper, 3600, run_id="n1")
        await trio.sleep(600)
    async with replay.open_engine(db, workflows=[napper]) as engine:
        assert engine.status("n1").state is RunState.SLEEPING
        await engine.get_run("n1").result()
        fired = await engine.sql("select recorded_at from replay_events where run_id = 'n1' "
                                 "and event = 'fired'")
    assert fired[0][0] == began + timedelta(hours=1)
    assert counts == {"top": 2, "before": 1, "after": 1}


async def test_a_deadline_that_passed_while_closed_fires_right_after_opening(db: str) -> None:
    async with replay.open_engine(db, workflows=[napper]) as engine:
        await engine.start(napper, 60, run_id="n1")
        await trio.sleep(1)
    await trio.sleep(3600)  # no engine runs meanwhile
    async with replay.open_engine(db, workflows=[napper]) as engine:
        opened = engine.now()
        await engine.get_run("n1").result()
        fired = await engine.sql("select recorded_at from replay_events where event = 'fired'")
    assert fired[0][0] == opened


async def test_a_suspended_run_waits_for_its_signal(db: str) -> None:
    async with replay.open_engine(db, workflows=[approval]) as engine:
        run = await engine.start(approval, run_id="a1")
        info = await run.wait()
        assert (info.state, info.waiting_for, info.status_text) == (
            RunState.SUSPENDED, "approval:v1", "waiting for a manager")
        assert info.wake_at is None
        assert tasks_of(engine) == 0
        rows = await engine.sql("select state, waiting_for, status_text from replay_runs")
        assert rows == [("suspended", "approval:v1", "waiting for a manager")]
        signalled = await engine.signal("a1", "approval:v1", {"approved": True, "by": "ann"})
        assert signalled.run_id == "a1"
        assert await run.result() == {"approved": True, "by": "ann"}
        kinds = [(e.kind, e.event, e.key) for e in await engine.history("a1")]
    assert kinds[-3:] == [("suspend", "suspended", "approval:v1"),
                          ("signal", "signalled", "approval:v1"), ("run", "completed", None)]
    assert counts == {"top": 1, "request": 1, "decided": 1}


async def test_a_signal_that_arrives_early_waits_in_the_mailbox(db: str) -> None:
    @replay.workflow(name="later")
    def later():  # type: ignore[no-untyped-def]
        yield Sleep("first:v1", 3600)
        return (yield Suspend("approval:v1"))

    async with replay.open_engine(db, workflows=[later]) as engine:
        run = await engine.start(later, run_id="l1")
        await trio.sleep(10)
        await engine.signal("l1", "approval:v1", "yes")
        assert engine.status("l1").state is RunState.SLEEPING
        assert await run.result() == "yes"
        events = [(e.kind, e.event) for e in await engine.history("l1")]
    assert ("suspend", "suspended") not in events


async def test_a_key_takes_one_signal(db: str) -> None:
    async with replay.open_engine(db, workflows=[approval]) as engine:
        run = await engine.start(approval, run_id="a1")
        await run.wait()
        await engine.signal("a1", "approval:v1", "first")
        with pytest.raises(replay.SignalRejected, match=re.escape(
                "key 'approval:v1' of run 'a1' already has a signal; a Suspend takes one "
                "value, so this signal is rejected")):
            await engine.signal("a1", "approval:v1", "second")
        assert await run.result() == "first"
        with pytest.raises(replay.SignalRejected, match=re.escape(
                "run 'a1' is completed; signals to finished runs are rejected")):
            await engine.signal("a1", "other:v1", 1)
        with pytest.raises(replay.RunNotFound):
            await engine.signal("nobody", "approval:v1", 1)


async def test_a_key_takes_one_signal_in_an_engine_that_cannot_run_the_workflow(
        db: str) -> None:
    # Regression: the engine without the workflow took a second signal for the key.
    async with replay.open_engine(db, workflows=[approval]) as engine:
        await (await engine.start(approval, run_id="a1")).wait()
    async with replay.open_engine(db, workflows=[napper]) as engine:
        await engine.signal("a1", "approval:v1", "first")
        assert engine.status("a1").state is RunState.SUSPENDED  # left for its engine
        with pytest.raises(replay.SignalRejected, match="already has a signal"):
            await engine.signal("a1", "approval:v1", "second")
    async with replay.open_engine(db, workflows=[approval]) as engine:
        assert await engine.get_run("a1").result() == "first"


async def test_a_signal_for_a_key_recorded_as_a_step_is_rejected(db: str) -> None:
    async with replay.open_engine(db, workflows=[approval]) as engine:
        run = await engine.start(approval, run_id="a1")
        await run.wait()
        with pytest.raises(replay.SignalRejected, match=re.escape(
                "run 'a1' recorded key 'request:v1' as a step, not a Suspend; a signal can "
                "only answer a Suspend")):
            await engine.signal("a1", "request:v1", 1)


async def test_a_signal_payload_that_cannot_be_recorded_records_nothing(db: str) -> None:
    async with replay.open_engine(db, workflows=[approval]) as engine:
        run = await engine.start(approval, run_id="a1")
        await run.wait()
        with pytest.raises(replay.EncodingError, match="approval:v1"):
            await engine.signal("a1", "approval:v1", object())
        assert engine.status("a1").state is RunState.SUSPENDED
        await engine.signal("a1", "approval:v1", "fine")
        assert await run.result() == "fine"


async def test_a_suspend_timeout_is_thrown_in_and_replays_identically(db: str) -> None:
    async with replay.open_engine(db, workflows=[approval], always_replay=True) as engine:
        began = engine.now()
        run = await engine.start(approval, 7200, run_id="a1")
        info = await run.wait()
        assert info.wake_at == began + timedelta(hours=2)
        assert await run.result() == "escalated after approval:v1"
        assert engine.now() == began + timedelta(hours=2)
        with pytest.raises(replay.SignalRejected, match=re.escape(
                "run 'a1' is completed; signals to finished runs are rejected")):
            await engine.signal("a1", "approval:v1", True)
        timed_out = [e for e in await engine.history("a1") if e.event == "timed_out"]
    (event,) = timed_out
    assert event.error_type == "replay.SuspendTimeout"
    assert counts["timed out"] == 1


async def test_a_signal_after_a_timeout_of_a_running_run_is_rejected(db: str) -> None:
    @replay.workflow(name="timeout_then_wait")
    def timeout_then_wait():  # type: ignore[no-untyped-def]
        with contextlib.suppress(SuspendTimeout):
            yield Suspend("quick:v1", timeout=10)
        return (yield Suspend("slow:v1"))

    async with replay.open_engine(db, workflows=[timeout_then_wait]) as engine:
        run = await engine.start(timeout_then_wait, run_id="t1")
        await trio.sleep(20)
        assert (await run.wait()).waiting_for == "slow:v1"
        with pytest.raises(replay.SignalRejected, match=re.escape(
                "key 'quick:v1' of run 't1' timed out; a Suspend takes one value")):
            await engine.signal("t1", "quick:v1", 1)
        await engine.signal("t1", "slow:v1", 2)
        assert await run.result() == 2


async def test_the_mailbox_holds_at_most_100_undelivered_signals(db: str) -> None:
    async with replay.open_engine(db, workflows=[approval], durability="none") as engine:
        run = await engine.start(approval, run_id="a1")
        await run.wait()
        for i in range(100):
            await engine.signal("a1", f"later:{i}", i)
        with pytest.raises(replay.SignalRejected, match=re.escape(
                "run 'a1' already holds 100 undelivered signals; no more are taken until it "
                "reaches their keys")):
            await engine.signal("a1", "later:100", 100)
        await engine.signal("a1", "approval:v1", "parked key still delivered")
        assert await run.result() == "parked key still delivered"


async def test_always_replay_recreates_the_generator_on_every_wake_up(db: str) -> None:
    async with replay.open_engine(db, workflows=[napper], always_replay=True) as engine:
        await (await engine.start(napper, 10)).result()
    assert counts == {"top": 2, "before": 1, "after": 1}


async def test_a_cached_generator_continues_without_replaying(db: str) -> None:
    async with replay.open_engine(db, workflows=[napper]) as engine:
        await (await engine.start(napper, 10)).result()
    assert counts == {"top": 1, "before": 1, "after": 1}


async def test_evicted_generators_are_closed_and_replayed(db: str) -> None:
    closed: list[str] = []

    @replay.workflow(name="with_finally")
    def with_finally(name: str, seconds: int):  # type: ignore[no-untyped-def]
        count(f"top {name}")
        try:
            yield Sleep("nap:v1", seconds)
            return name
        finally:
            closed.append(name)

    async with replay.open_engine(db, workflows=[with_finally], cache_size=1) as engine:
        # "a" parks first, then "b" parks and takes the one cache place.
        first = await engine.start(with_finally, "a", 10, run_id="a")
        await replay.testing.wait_for_state(engine, "a", RunState.SLEEPING)
        runs = [first, await engine.start(with_finally, "b", 20, run_id="b")]
        await replay.testing.wait_for_state(engine, "b", RunState.SLEEPING)
        await trio.sleep(5)
        assert closed == ["a"]  # evicted when b parked: its finally ran on the loop
        assert len(internals(engine).scheduler.tasks.parked) == 1
        assert [await r.result() for r in runs] == ["a", "b"]
    assert counts == {"top a": 2, "top b": 1}


async def test_resuming_a_suspended_run_replays_it_with_the_current_code(db: str) -> None:
    def old():  # type: ignore[no-untyped-def]
        yield Step("request:v1", count, "request")
        return (yield Suspend("approval:v1"))

    def new():  # type: ignore[no-untyped-def]
        yield Step("request:v1", count, "request")
        return "approved by policy"

    old.__name__ = new.__name__ = "deployed"
    async with replay.open_engine(db, workflows=[old]) as engine:
        await (await engine.start(old, run_id="d1")).wait()
    async with replay.open_engine(db, workflows=[new]) as engine:
        assert engine.status("d1").state is RunState.SUSPENDED
        assert await (await engine.resume("d1")).result() == "approved by policy"
    assert counts == {"request": 1}


async def test_resuming_a_sleeping_run_parks_it_again_at_the_same_deadline(db: str) -> None:
    async with replay.open_engine(db, workflows=[napper]) as engine:
        began = engine.now()
        run = await engine.start(napper, 3600, run_id="n1")
        await trio.sleep(10)
        await engine.resume("n1")
        await trio.sleep(10)
        info = engine.status("n1")
        assert (info.state, info.wake_at) == (RunState.SLEEPING, began + timedelta(hours=1))
        await run.result()
        assert engine.now() == began + timedelta(hours=1)
    assert counts == {"top": 2, "before": 1, "after": 1}


async def test_a_retry_back_off_parks_the_run(db: str) -> None:
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 2:
            raise ConnectionError("down")
        return "up"

    @replay.workflow(name="backs_off")
    def backs_off():  # type: ignore[no-untyped-def]
        return (yield Step("flaky:v1", flaky, retry=replay.Retry(attempts=2, initial=30)))

    async with replay.open_engine(db, workflows=[backs_off]) as engine:
        run = await engine.start(backs_off, run_id="b1")
        await trio.sleep(1)
        info = engine.status("b1")
        assert (info.state, info.waiting_for) == (RunState.SLEEPING, "flaky:v1")
        assert tasks_of(engine) == 0
        assert await run.result() == "up"


async def test_a_slow_sync_step_keeps_virtual_time_still(db: str) -> None:
    def slow_step() -> str:
        threading.Event().wait(0.05)  # 50 ms of real time in a worker thread
        count("step done")
        return "done"

    @replay.workflow(name="slow_sync")
    def slow_sync():  # type: ignore[no-untyped-def]
        return (yield Step("slow:v1", slow_step, timeout=5))

    @replay.workflow(name="sleeper")
    def sleeper():  # type: ignore[no-untyped-def]
        yield Sleep("ten:v1", 10)
        return counts.get("step done", 0)

    async with replay.open_engine(db, workflows=[slow_sync, sleeper]) as engine:
        began = engine.now()
        sleeping = await engine.start(sleeper)
        stepping = await engine.start(slow_sync)
        assert await stepping.result() == "done"
        assert engine.now() - began < timedelta(seconds=5)
        assert await sleeping.result() == 1


def test_replay_run_raises_run_suspended() -> None:
    with pytest.raises(replay.RunSuspended, match=re.escape(
            "is suspended waiting for a signal for 'approval:v1'; replay.run cannot deliver "
            "signals: use replay.open_engine and engine.signal")):
        replay.run(approval)


async def test_a_recorded_sleep_yielded_as_a_step_is_nondeterminism(db: str) -> None:
    def v1():  # type: ignore[no-untyped-def]
        yield Sleep("wait:v1", 60)
        return (yield Suspend("approval:v1"))

    def v2():  # type: ignore[no-untyped-def]
        yield Step("wait:v1", count, "step")
        return "v2"

    v1.__name__ = v2.__name__ = "changes"
    async with replay.open_engine(db, workflows=[v1]) as engine:
        await (await engine.start(v1, run_id="c1")).wait()
    async with replay.open_engine(db, workflows=[v2]) as engine:
        with pytest.raises(replay.WorkflowFailed) as failed:
            await (await engine.resume("c1")).result()
        assert failed.value.error_type == "replay.NondeterminismError"
        assert "recorded key 'wait:v1' as a sleep" in failed.value.message
    assert counts == {}


async def test_wait_after_a_signal_reports_a_later_state(db: str) -> None:
    @replay.workflow(name="two_approvals")
    def two_approvals():  # type: ignore[no-untyped-def]
        first = yield Suspend("first:v1")
        second = yield Suspend("second:v1")
        return [first, second]

    async with replay.open_engine(db, workflows=[two_approvals]) as engine:
        run = await engine.start(two_approvals, run_id="w1")
        assert (await run.wait()).waiting_for == "first:v1"
        after = await engine.signal("w1", "first:v1", 1)
        assert (await after.wait()).waiting_for == "second:v1"
        await engine.signal("w1", "second:v1", 2)
        assert await run.result() == [1, 2]


flips = iter([True, False, True, False])


@replay.workflow(name="coin")
def coin():  # type: ignore[no-untyped-def]
    heads = next(flips)  # not deterministic: read outside a step
    if heads:
        yield Sleep("heads:v1", 10)
    else:
        yield Sleep("tails:v1", 10)
    return "done"


async def test_always_replay_catches_a_workflow_that_takes_another_path(db: str) -> None:
    async with replay.open_engine(db, workflows=[coin], always_replay=True) as engine:
        with pytest.raises(replay.WorkflowFailed) as failed:
            await (await engine.start(coin, run_id="c1")).result()
    assert failed.value.error_type == "replay.NondeterminismError"
    assert failed.value.message == (
        "run 'c1' of workflow 'coin' took another path on replay: it yielded "
        "Sleep('tails:v1', datetime.timedelta(seconds=10)), which is not recorded, before "
        "reaching 'heads:v1', where its last execution stopped; code outside steps must be "
        "deterministic: read the time, random numbers and globals inside steps")
    assert "heads = next(flips)" not in failed.value.traceback
    assert "yield Sleep(\"tails:v1\", 10)" in failed.value.traceback


async def test_the_clock_never_goes_back_between_engines_of_one_trio_run(db: str) -> None:
    # Regression: the floor (newest recorded_at) once moved only one engine's clock.
    async with replay.open_engine(db, workflows=[napper]) as engine:
        await (await engine.start(napper, 10 * 24 * 3600)).result()
        ahead = engine.now()
    replay.testing.set_virtual_start(ahead - timedelta(days=10))  # as if a new process
    async with replay.open_engine(db, workflows=[napper]) as engine:
        assert engine.now() == ahead
        await trio.sleep(5 * 24 * 3600)
        closed_at = engine.now()
    async with replay.open_engine(db, workflows=[napper]) as engine:
        assert engine.now() >= closed_at


async def test_signals_taken_from_the_mailbox_no_longer_count_as_undelivered(db: str) -> None:
    @replay.workflow(name="many")
    def many():  # type: ignore[no-untyped-def]
        yield Sleep("first:v1", 60)
        values = []
        for i in range(100):
            values.append((yield Suspend(f"early:{i}")))
        return sum(values) + (yield Suspend("last:v1"))

    async with replay.open_engine(db, workflows=[many], durability="none") as engine:
        run = await engine.start(many, run_id="m1")
        for i in range(100):
            await engine.signal("m1", f"early:{i}", i)
        assert (await run.wait()).waiting_for == "last:v1"
        await engine.signal("m1", "late:v1", "accepted: the mailbox is empty again")
        await engine.signal("m1", "last:v1", 0)
        assert await run.result() == sum(range(100))
        taken = await engine.sql("select count(*) from replay_events where kind = 'suspend' "
                                 "and event = 'signalled'")
    assert taken == [(100,)]


async def test_a_signal_to_a_run_of_an_unregistered_workflow_waits_for_its_engine(
    db: str,
) -> None:
    async with replay.open_engine(db, workflows=[approval]) as engine:
        await (await engine.start(approval, run_id="a1")).wait()
    async with replay.open_engine(db, workflows=[napper]) as engine:
        await engine.signal("a1", "approval:v1", "later")
        await trio.sleep(1)
        assert engine.status("a1").state is RunState.SUSPENDED
    async with replay.open_engine(db, workflows=[approval]) as engine:
        assert await engine.get_run("a1").result() == "later"
