"""Parallel groups: `All`, `Gather` and `Race`, on real engines and files, in virtual time.

Every test runs a real engine on a DuckDB file in `tmp_path`, under trio's
`MockClock(autojump_threshold=0)`: sleeps, back-offs, step timeouts and deadlines take
no real time. Step functions report to a `Tracker` (what started, in which order and at
which virtual time, how many ran at once, which were cancelled), so the tests see
concurrency, limits and re-executions from the inside. The SIGKILL test runs a
200-member `All` in a child process (`groups_crash_child.py`) and finishes it here.

Not covered here: `Child` members and `engine.cancel` (being wired up elsewhere).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Generator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import groups_crash_child as crash
import pytest
import trio
import trio.testing
from childproc import ChildProcess
from stores import reading

import replay
import replay.testing
from replay import (
    All,
    DuplicateKeyError,
    Gather,
    Gathered,
    Race,
    Retry,
    RunState,
    SignalRejected,
    Sleep,
    Step,
    StepFailed,
    Suspend,
    SuspendTimeout,
)
from replay._engine._facade import internals

pytestmark = pytest.mark.both_stores

Flow = Generator[Any, Any, Any]
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


# -- instruments --


class Tracker:
    """What the step functions saw: starts, ends, cancellations, concurrency."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.starts: list[str] = []  # tags, in the order their functions began
        self.ends: list[str] = []  # tags whose functions returned or raised
        self.cancelled: list[str] = []  # async steps that saw their cancellation
        self.started_at: dict[str, float] = {}  # virtual time of an async step's start
        self.calls: Counter[str] = Counter()
        self.barriers: dict[str, threading.Barrier] = {}
        self.gates: dict[str, threading.Event] = {}
        self.failures_left: Counter[str] = Counter()  # `flaky` fails this many more times

    def enter(self, tag: str) -> None:
        with self.lock:
            self.calls[tag] += 1
            self.starts.append(tag)
            self.running += 1
            self.max_running = max(self.max_running, self.running)

    def leave(self, tag: str) -> None:
        with self.lock:
            self.running -= 1
            self.ends.append(tag)


TRACK = Tracker()


@pytest.fixture(autouse=True)
def _fresh_tracker() -> Iterator[None]:
    global TRACK
    TRACK = Tracker()
    yield
    for gate in TRACK.gates.values():  # never leave a worker thread blocked
        gate.set()


async def work(tag: str, seconds: float = 1.0, fail: bool = False) -> str:
    """An async step: runs `seconds` of virtual time, then returns `tag` (or raises)."""
    TRACK.enter(tag)
    TRACK.started_at[tag] = trio.current_time()
    try:
        await trio.sleep(seconds)
        if fail:
            raise ValueError(f"{tag} broke")
        return tag
    except trio.Cancelled:
        TRACK.cancelled.append(tag)
        raise
    finally:
        TRACK.leave(tag)


def chore(tag: str, seconds: float = 0.0, fail: bool = False) -> str:
    """A sync step (a worker thread): `seconds` of real time, then `tag` (or raises)."""
    TRACK.enter(tag)
    try:
        if seconds:
            time.sleep(seconds)
        if fail:
            raise ValueError(f"{tag} broke")
        return tag.upper()
    finally:
        TRACK.leave(tag)


def meet(tag: str, barrier: str) -> str:
    """A sync step that waits at a barrier: proves that its parties run at once."""
    TRACK.enter(tag)
    try:
        TRACK.barriers[barrier].wait(timeout=20)
        return tag
    finally:
        TRACK.leave(tag)


def gated(tag: str) -> str:
    """A sync step that blocks until the test opens its gate."""
    TRACK.enter(tag)
    try:
        assert TRACK.gates[tag].wait(timeout=20), f"gate {tag!r} never opened"
        return tag
    finally:
        TRACK.leave(tag)


async def flaky(tag: str) -> str:
    """An async step that fails while `TRACK.failures_left[tag]` says so."""
    TRACK.enter(tag)
    try:
        await trio.sleep(0)
        if TRACK.failures_left[tag] > 0:
            TRACK.failures_left[tag] -= 1
            raise ConnectionError(f"{tag} is flaky")
        return tag
    finally:
        TRACK.leave(tag)


async def fail_once_started(tag: str, other: str) -> str:
    """An async step that fails as soon as the sync step `other` is running."""
    TRACK.enter(tag)
    try:
        await trio.to_thread.run_sync(wait_for_start, other)
        raise ValueError(f"{tag} broke")
    finally:
        TRACK.leave(tag)


def wait_for_start(tag: str) -> None:
    for _ in range(4000):
        with TRACK.lock:
            if tag in TRACK.starts:
                return
        time.sleep(0.005)
    raise AssertionError(f"step {tag!r} never started")


def wait_for_end(tag: str) -> None:
    for _ in range(4000):
        with TRACK.lock:
            if tag in TRACK.ends:
                return
        time.sleep(0.005)
    raise AssertionError(f"step {tag!r} never ended")


def tasks_of(engine: replay.Engine) -> int:
    return internals(engine).scheduler.tasks.alive()


async def events_of(engine: replay.Engine, run_id: str) -> list[tuple[str, str, str | None]]:
    return [(e.kind, e.event, e.key) for e in await engine.history(run_id)]


async def group_rows(engine: replay.Engine, run_id: str) -> list[tuple[Any, ...]]:
    return await engine.sql(
        "SELECT key, event, value_json, error_type FROM replay_events "
        "WHERE run_id = ? AND kind = 'group' ORDER BY seq", [run_id])


def log_rows(path: str, run_id: str) -> list[tuple[Any, ...]]:
    """Read a closed file's raw log: (kind, event, key, run_state) in order."""
    with reading(path) as con:
        return list(con.execute(
            "SELECT kind, event, key, run_state FROM replay_event_log WHERE run_id = ? "
            "ORDER BY seq", [run_id]).fetchall())


async def parked_on(engine: replay.Engine, run_id: str, key: str,
                    patience: float = 30 * 86400) -> replay.RunInfo:
    """Wait (virtual time) until the run is parked on `key`; fail after `patience`."""
    with trio.fail_after(patience):
        while True:
            info = engine.status(run_id)
            if info.waiting_for == key and tasks_of(engine) == 0:
                return info
            await trio.sleep(1)


async def settle(seconds: float = 1.0) -> None:
    """Let the engine run for `seconds` of virtual time."""
    await trio.sleep(seconds)


# == 1. every kind, sync and async members, order, limits ==


async def test_all_returns_values_in_member_order_while_members_run_at_once(db: str) -> None:
    durations = [5, 4, 3, 2, 1]  # the last member finishes first

    @replay.workflow(name="groups.all_async")
    def flow() -> Flow:
        return (yield All("all:v1", [Step(f"m{i}:v1", work, f"m{i}", d)
                                     for i, d in enumerate(durations)]))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        assert await (await engine.start(flow, run_id="r")).result() == [
            "m0", "m1", "m2", "m3", "m4"]
        assert trio.current_time() - began == pytest.approx(5)  # at once, not 15 s
        assert TRACK.max_running == 5
        assert TRACK.ends == ["m4", "m3", "m2", "m1", "m0"]
        rows = await group_rows(engine, "r")
    assert [(key, event) for key, event, *_ in rows] == [
        ("all:v1", "started"), ("all:v1", "completed")]
    assert json.loads(rows[0][2]) == {
        "group": "all", "members": ["m0:v1", "m1:v1", "m2:v1", "m3:v1", "m4:v1"]}


async def test_all_of_sync_members_runs_them_in_threads_at_once(db: str) -> None:
    TRACK.barriers["five"] = threading.Barrier(5)

    @replay.workflow(name="groups.all_sync")
    def flow() -> Flow:
        return (yield All("all:v1", [Step(f"m{i}:v1", meet, f"m{i}", "five")
                                     for i in range(5)]))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == [
            "m0", "m1", "m2", "m3", "m4"]
    assert TRACK.max_running == 5
    assert sorted(TRACK.calls.values()) == [1] * 5


async def test_all_mixes_sync_and_async_members(db: str) -> None:
    @replay.workflow(name="groups.all_mixed")
    def flow() -> Flow:
        values = yield All("all:v1", [
            Step("a:v1", work, "a", 3), Step("b:v1", chore, "b"),
            Step("c:v1", work, "c", 1), Step("d:v1", chore, "d", 0.01)])
        return values

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == ["a", "B", "c", "D"]


async def test_gather_returns_a_gathered_list_of_values(db: str) -> None:
    @replay.workflow(name="groups.gather_ok")
    def flow() -> Flow:
        gathered = yield Gather("g:v1", [
            Step("a:v1", work, "a", 2), Step("b:v1", chore, "b"), Sleep("nap:v1", 7),
            Step("c:v1", work, "c", 1)])
        assert isinstance(gathered, Gathered)
        return {"items": list(gathered), "ok": gathered.ok, "failures": gathered.failures,
                "values": gathered.values()}

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        assert await (await engine.start(flow, run_id="r")).result() == {
            "items": ["a", "B", None, "c"], "ok": True, "failures": [],
            "values": ["a", "B", None, "c"]}
        assert trio.current_time() - began == pytest.approx(7)
        rows = await group_rows(engine, "r")
    assert json.loads(rows[0][2]) == {"group": "gather",
                                      "members": ["a:v1", "b:v1", "nap:v1", "c:v1"]}
    assert rows[-1][:2] == ("g:v1", "completed")


@pytest.mark.parametrize("fast", ["async", "sync"])
async def test_race_returns_the_first_member_and_cancels_the_rest(db: str, fast: str) -> None:
    quick = (Step("quick:v1", work, "quick", 1) if fast == "async"
             else Step("quick:v1", chore, "quick"))

    @replay.workflow(name="groups.race_steps")
    def flow() -> Flow:
        return (yield Race("race:v1", {"slow": Step("slow:v1", work, "slow", 50),
                                       "quick": quick,
                                       "nap": Sleep("nap:v1", 100)}))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        winner = await (await engine.start(flow, run_id="r")).result()
        assert trio.current_time() - began < 50
        events = await events_of(engine, "r")
        rows = await group_rows(engine, "r")
    assert winner == ("quick", "quick" if fast == "async" else "QUICK")
    assert TRACK.cancelled == ["slow"]
    assert ("step", "cancelled", "slow:v1") in events
    assert ("sleep", "cancelled", "nap:v1") in events
    assert ("step", "completed", "slow:v1") not in events
    assert json.loads(rows[0][2]) == {"group": "race",
                                      "members": ["slow:v1", "quick:v1", "nap:v1"],
                                      "names": ["slow", "quick", "nap"]}
    assert rows[-1][:3] == ("race:v1", "completed", '{"winner":"quick"}')


async def test_a_race_yield_returns_a_name_value_tuple(db: str) -> None:
    @replay.workflow(name="groups.race_tuple")
    def flow() -> Flow:
        won = yield Race("race:v1", {"a": Step("a:v1", work, "a", 2),
                                     "b": Step("b:v1", work, "b", 1)})
        assert isinstance(won, tuple), won
        name, value = won
        return f"{name}={value}"

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == "b=b"


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 10])
async def test_limit_bounds_async_members_and_they_start_in_list_order(
        db: str, limit: int) -> None:
    n = 7

    @replay.workflow(name="groups.limited_async")
    def flow(limit: int) -> Flow:
        return (yield All("all:v1", [Step(f"m{i}:v1", work, f"m{i}", 1) for i in range(n)],
                          limit=limit))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        assert await (await engine.start(flow, limit, run_id="r")).result() == [
            f"m{i}" for i in range(n)]
        elapsed = trio.current_time() - began
    assert TRACK.max_running == min(limit, n)
    assert elapsed == pytest.approx(math.ceil(n / limit))  # the limit is also used fully
    offsets = [TRACK.started_at[f"m{i}"] - began for i in range(n)]
    assert offsets == sorted(offsets), offsets  # a later member never starts earlier
    assert offsets == pytest.approx([i // limit for i in range(n)])
    if limit == 1:
        assert TRACK.starts == [f"m{i}" for i in range(n)]


async def test_limit_bounds_sync_members(db: str) -> None:
    TRACK.barriers["three"] = threading.Barrier(3)  # three at once, and never a fourth

    @replay.workflow(name="groups.limited_sync")
    def flow() -> Flow:
        return list((yield Gather("g:v1", [Step(f"m{i}:v1", meet, f"m{i}", "three")
                                           for i in range(12)], limit=3)))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == [
            f"m{i}" for i in range(12)]
    assert TRACK.max_running == 3


async def test_sync_members_with_limit_one_start_in_list_order(db: str) -> None:
    @replay.workflow(name="groups.serial_sync")
    def flow() -> Flow:
        return (yield All("all:v1", [Step(f"m{i}:v1", chore, f"m{i}") for i in range(8)],
                          limit=1))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == [
            f"M{i}" for i in range(8)]
    assert TRACK.starts == [f"m{i}" for i in range(8)]
    assert TRACK.max_running == 1


async def test_a_limit_counts_waiting_members_too(db: str) -> None:
    # A sleep counts against the limit from its start to its outcome.
    @replay.workflow(name="groups.limit_sleeps")
    def flow() -> Flow:
        return (yield All("all:v1", [Sleep("nap:v1", 10), Step("a:v1", work, "a", 1),
                                     Step("b:v1", work, "b", 1)], limit=2))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        assert await (await engine.start(flow, run_id="r")).result() == [None, "a", "b"]
        assert trio.current_time() - began == pytest.approx(10)
    assert TRACK.started_at["a"] - began == pytest.approx(0)
    assert TRACK.started_at["b"] - began == pytest.approx(1)  # after a, not before
    assert TRACK.max_running == 1


async def test_a_stop_mid_group_abandons_members_under_way_and_they_run_again(
        db: str) -> None:
    @replay.workflow(name="groups.stopped")
    def flow() -> Flow:
        return (yield All("all:v1", [Step("a:v1", work, "a", 1), Step("b:v1", work, "b", 100),
                                     Step("c:v1", work, "c", 100), Step("d:v1", work, "d", 1)],
                          limit=3))

    async with replay.open_engine(db, workflows=[flow], shutdown_timeout=1) as engine:
        await engine.start(flow, run_id="r")
        await settle(5)  # a and d done, b and c under way
    assert sorted(TRACK.cancelled) == ["b", "c"]
    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await engine.get_run("r").result() == ["a", "b", "c", "d"]
        events = await events_of(engine, "r")
    assert TRACK.calls == Counter({"a": 1, "b": 2, "c": 2, "d": 1})
    assert sorted(e for e in events if e[1] == "abandoned") == [
        ("step", "abandoned", "b:v1"), ("step", "abandoned", "c:v1")]
    assert [e for e in events if e[0] == "group" and e[1] == "started"] == [
        ("group", "started", "all:v1")]


# == 2. failures ==


def described(error: BaseException) -> dict[str, Any]:
    if isinstance(error, SuspendTimeout):
        return {"type": "SuspendTimeout", "key": error.key}
    assert isinstance(error, StepFailed), error
    return {"type": "StepFailed", "key": error.key, "error_type": error.error_type,
            "message": error.message, "attempts": error.attempts}


async def test_all_fails_fast_with_the_first_failure(db: str) -> None:
    @replay.workflow(name="groups.fail_fast")
    def flow() -> Flow:
        members = [Step("m0:v1", work, "m0", 1), Step("m1:v1", work, "m1", 2, True),
                   Step("m2:v1", work, "m2", 10), Step("m3:v1", work, "m3", 10),
                   Step("m4:v1", work, "m4", 1), Step("m5:v1", chore, "m5")]
        try:
            yield All("all:v1", members, limit=3)
        except StepFailed as failed:
            after = yield Step("after:v1", work, "after", 0)
            return {**described(failed), "after": after}
        return "not reached"

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        assert await (await engine.start(flow, run_id="r")).result() == {
            "type": "StepFailed", "key": "m1:v1", "error_type": "builtins.ValueError",
            "message": "m1 broke", "attempts": 1, "after": "after"}
        assert TRACK.started_at["after"] - began == pytest.approx(2)  # not after m2, m3
        events = await events_of(engine, "r")
        rows = await group_rows(engine, "r")
    # m3 took m0's place at t=1; m4 and m5 never started, and never will.
    assert sorted(TRACK.calls) == ["after", "m0", "m1", "m2", "m3"]
    assert sorted(TRACK.cancelled) == ["m2", "m3"]
    member_events = [e for e in events if e[2] and e[2].startswith("m")]
    assert sorted(member_events) == sorted([
        ("step", "completed", "m0:v1"), ("step", "failed", "m1:v1"),
        ("step", "cancelled", "m2:v1"), ("step", "cancelled", "m3:v1")])
    assert [(key, event) for key, event, *_ in rows] == [
        ("all:v1", "started"), ("all:v1", "failed")]
    assert json.loads(rows[-1][2]) == {"member": "m1:v1"}
    assert rows[-1][3] == "builtins.ValueError"


async def test_an_unhandled_fail_fast_fails_the_run_with_the_members_step_failed(
        db: str) -> None:
    @replay.workflow(name="groups.fail_fast_unhandled")
    def flow() -> Flow:
        yield All("all:v1", [Step("ok:v1", chore, "ok"), Step("bad:v1", chore, "bad", 0, True),
                             Step("slow:v1", work, "slow", 100)])
        yield Step("never:v1", chore, "never")

    async with replay.open_engine(db, workflows=[flow]) as engine:
        run = await engine.start(flow, run_id="r")
        with pytest.raises(replay.WorkflowFailed) as failed:
            await run.result()
        info = engine.status("r")
    assert failed.value.error_type == "replay.StepFailed"
    assert info.state is RunState.FAILED and info.waiting_for is None
    assert "'bad:v1'" in (info.error or "") and "bad broke" in (info.error or "")
    assert TRACK.cancelled == ["slow"]
    assert "never" not in TRACK.calls


async def test_fail_fast_abandons_a_running_sync_member_and_records_its_late_result(
        db: str) -> None:
    TRACK.gates["stuck"] = threading.Event()

    @replay.workflow(name="groups.fail_fast_sync")
    def flow() -> Flow:
        try:
            # A busy worker thread holds the virtual clock still: "bad" fails at once.
            yield All("all:v1", [Step("stuck:v1", gated, "stuck"),
                                 Step("bad:v1", fail_once_started, "bad", "stuck")])
        except StepFailed as failed:
            return failed.key
        return "not reached"

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == "bad:v1"
        TRACK.gates["stuck"].set()  # the abandoned thread returns now: nobody listens
        await trio.to_thread.run_sync(wait_for_end, "stuck")
        await settle()
        events = await events_of(engine, "r")
        late = await engine.sql("SELECT attempt, value_json FROM replay_events "
                                "WHERE run_id = 'r' AND event = 'late'")
        assert engine.status("r").output == "bad:v1"  # the late value changed nothing
    assert ("step", "cancelled", "stuck:v1") in events
    assert ("step", "completed", "stuck:v1") not in events
    # What the thread returned is recorded for the history, after the run's end.
    assert events[-2:] == [("run", "completed", None), ("step", "late", "stuck:v1")]
    assert late == [(1, '"stuck"')]


async def test_gather_collects_every_failure_and_runs_every_member(db: str) -> None:
    @replay.workflow(name="groups.gather_failures")
    def flow() -> Flow:
        gathered = yield Gather("g:v1", [
            Step("a:v1", work, "a", 3), Step("b:v1", work, "b", 1, True),
            Step("c:v1", chore, "c"), Step("d:v1", chore, "d", 0, True)], limit=2)
        assert isinstance(gathered, Gathered)
        try:
            gathered.raise_first()
        except StepFailed as first:
            raised = first.key
        return {"failures": [(i, described(f)) for i, f in gathered.failures],
                "ok": gathered.ok, "values": gathered.values(), "raised": raised,
                "types": [type(item).__name__ for item in gathered]}

    async with replay.open_engine(db, workflows=[flow]) as engine:
        result = await (await engine.start(flow, run_id="r")).result()
        rows = await group_rows(engine, "r")
    assert result == {
        "failures": [
            (1, {"type": "StepFailed", "key": "b:v1", "error_type": "builtins.ValueError",
                 "message": "b broke", "attempts": 1}),
            (3, {"type": "StepFailed", "key": "d:v1", "error_type": "builtins.ValueError",
                 "message": "d broke", "attempts": 1})],
        "ok": False, "values": ["a", "C"], "raised": "b:v1",
        "types": ["str", "StepFailed", "str", "StepFailed"]}
    assert sorted(TRACK.calls) == ["a", "b", "c", "d"]
    assert TRACK.cancelled == []
    assert TRACK.max_running == 2
    assert [(key, event) for key, event, *_ in rows] == [("g:v1", "started"),
                                                         ("g:v1", "completed")]


async def test_a_gathered_without_failures_raises_nothing(db: str) -> None:
    @replay.workflow(name="groups.gather_raise_first")
    def flow() -> Flow:
        gathered = yield Gather("g:v1", [Step("a:v1", chore, "a")])
        gathered.raise_first()
        return [gathered.ok, gathered.failures, gathered.values()]

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == [True, [], ["A"]]


async def test_a_race_whose_winner_fails_throws_its_failure(db: str) -> None:
    @replay.workflow(name="groups.race_failure")
    def flow() -> Flow:
        try:
            yield Race("race:v1", {"slow": Step("slow:v1", work, "slow", 5),
                                   "bad": Step("bad:v1", work, "bad", 1, True),
                                   "nap": Sleep("nap:v1", 60)})
        except StepFailed as failed:
            return described(failed)
        return "not reached"

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == {
            "type": "StepFailed", "key": "bad:v1", "error_type": "builtins.ValueError",
            "message": "bad broke", "attempts": 1}
        events = await events_of(engine, "r")
        rows = await group_rows(engine, "r")
    assert TRACK.cancelled == ["slow"]
    assert ("step", "cancelled", "slow:v1") in events
    assert ("sleep", "cancelled", "nap:v1") in events
    assert rows[-1][:2] == ("race:v1", "failed")
    assert json.loads(rows[-1][2]) == {"winner": "bad"}
    assert rows[-1][3] == "builtins.ValueError"


# == 3. retries, step timeouts and suspend timeouts inside groups ==


async def test_a_member_retries_after_its_back_off_while_others_run(db: str) -> None:
    TRACK.failures_left["flaky"] = 2
    retry = Retry(attempts=3, initial=10, backoff=1, jitter=0)

    @replay.workflow(name="groups.member_retry_busy")
    def flow() -> Flow:
        return list((yield Gather("g:v1", [Step("flaky:v1", flaky, "flaky", retry=retry),
                                           Step("steady:v1", work, "steady", 30)])))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        run = await engine.start(flow, run_id="r")
        await settle(15)  # flaky's back-offs end while steady runs: no park
        assert engine.status("r").state is RunState.RUNNING
        assert await run.result() == ["flaky", "steady"]
        assert trio.current_time() - began == pytest.approx(30)
    assert TRACK.calls == Counter({"flaky": 3, "steady": 1})
    assert TRACK.started_at["steady"] - began == pytest.approx(0)
    assert [row[1] for row in log_rows(db, "r") if row[0] == "group"] == [
        "started", "completed"]


async def test_a_member_retries_after_its_back_off_while_the_group_parks(db: str) -> None:
    TRACK.failures_left["flaky"] = 2
    retry = Retry(attempts=3, initial=10, backoff=1, jitter=0)

    @replay.workflow(name="groups.member_retry")
    def flow() -> Flow:
        return (yield All("all:v1", [Step("flaky:v1", flaky, "flaky", retry=retry),
                                     Step("steady:v1", work, "steady", 5)]))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = engine.now()
        run = await engine.start(flow, run_id="r")
        await settle(7)  # steady finished at 5 s; flaky backs off until 10 s
        info = engine.status("r")
        assert (info.state, info.waiting_for, info.wake_at) == (
            RunState.SLEEPING, "all:v1", began + timedelta(seconds=10))
        assert tasks_of(engine) == 0
        await settle(5)  # the second attempt failed at 10 s: backs off until 20 s
        assert engine.status("r").wake_at == began + timedelta(seconds=20)
        assert await run.result() == ["flaky", "steady"]
        assert engine.now() - began == timedelta(seconds=20)
        retrying = await engine.sql(
            "SELECT attempt, error_type, wake_at FROM replay_events WHERE run_id = 'r' "
            "AND event = 'retrying' ORDER BY seq")
    assert [(a, t) for a, t, _ in retrying] == [(1, "builtins.ConnectionError"),
                                               (2, "builtins.ConnectionError")]
    events = log_rows(db, "r")
    # Parked twice while flaky backed off; running again for each new attempt.
    assert [row for row in events if row[0] == "group" and row[1] in ("waiting", "running")
            ] == [("group", "waiting", "all:v1", "sleeping"),
                  ("group", "running", "all:v1", "running")] * 2
    assert TRACK.calls == Counter({"flaky": 3, "steady": 1})


async def test_a_member_out_of_retries_is_a_failure_in_a_gather(db: str) -> None:
    TRACK.failures_left["flaky"] = 5
    retry = Retry(attempts=2, initial=1, jitter=0)

    @replay.workflow(name="groups.member_out_of_retries")
    def flow() -> Flow:
        gathered = yield Gather("g:v1", [Step("flaky:v1", flaky, "flaky", retry=retry),
                                         Step("ok:v1", chore, "ok")])
        return [described(f) for _, f in gathered.failures] + gathered.values()

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == [
            {"type": "StepFailed", "key": "flaky:v1", "error_type": "builtins.ConnectionError",
             "message": "flaky is flaky", "attempts": 2}, "OK"]
    assert TRACK.calls["flaky"] == 2


async def test_a_step_timeout_in_a_gather_is_that_members_failure(db: str) -> None:
    @replay.workflow(name="groups.gather_step_timeout")
    def flow() -> Flow:
        gathered = yield Gather("g:v1", [Step("slow:v1", work, "slow", 100, timeout=5),
                                         Step("ok:v1", work, "ok", 8)])
        return [described(f) for _, f in gathered.failures] + gathered.values()

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        result = await (await engine.start(flow, run_id="r")).result()
        assert trio.current_time() - began == pytest.approx(8)
    assert result[1:] == ["ok"]
    assert (result[0]["key"], result[0]["error_type"]) == ("slow:v1", "replay.StepTimeout")
    assert TRACK.cancelled == ["slow"]  # the timeout cancelled the async function


async def test_a_step_timeout_in_an_all_fails_it_fast(db: str) -> None:
    @replay.workflow(name="groups.all_step_timeout")
    def flow() -> Flow:
        try:
            yield All("all:v1", [Step("slow:v1", work, "slow", 100, timeout=5),
                                 Step("long:v1", work, "long", 50)])
        except StepFailed as failed:
            return described(failed)["error_type"]
        return "not reached"

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        assert await (await engine.start(flow, run_id="r")).result() == "replay.StepTimeout"
        assert trio.current_time() - began == pytest.approx(5)
        rows = await group_rows(engine, "r")
    assert sorted(TRACK.cancelled) == ["long", "slow"]
    assert rows[-1][1:] == ("failed", '{"member":"slow:v1"}', "replay.StepTimeout")


async def test_a_suspend_timeout_in_a_gather_is_a_suspend_timeout_item(db: str) -> None:
    @replay.workflow(name="groups.gather_suspend_timeout")
    def flow() -> Flow:
        gathered = yield Gather("g:v1", [Suspend("approve:v1", timeout=60),
                                         Step("ok:v1", work, "ok", 1)])
        return [described(f) for _, f in gathered.failures] + gathered.values()

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        run = await engine.start(flow, run_id="r")
        assert await run.result() == [{"type": "SuspendTimeout", "key": "approve:v1"}, "ok"]
        assert trio.current_time() - began == pytest.approx(60)
        with pytest.raises(SignalRejected):
            await engine.signal("r", "approve:v1", "too late")
        events = await events_of(engine, "r")
    assert ("suspend", "timed_out", "approve:v1") in events


async def test_a_suspend_timeout_in_an_all_fails_it_and_cancels_the_rest(db: str) -> None:
    @replay.workflow(name="groups.all_suspend_timeout")
    def flow() -> Flow:
        try:
            yield All("all:v1", [Step("long:v1", work, "long", 600),
                                 Suspend("approve:v1", timeout=60),
                                 Sleep("nap:v1", DAY)])
        except SuspendTimeout as timed_out:
            return described(timed_out)
        return "not reached"

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        assert await (await engine.start(flow, run_id="r")).result() == {
            "type": "SuspendTimeout", "key": "approve:v1"}
        assert trio.current_time() - began == pytest.approx(60)
        events = await events_of(engine, "r")
        rows = await group_rows(engine, "r")
    assert TRACK.cancelled == ["long"]
    assert {("step", "cancelled", "long:v1"), ("sleep", "cancelled", "nap:v1")} <= set(events)
    assert rows[-1][1:3] == ("failed", '{"member":"approve:v1"}')
    assert rows[-1][3].endswith("SuspendTimeout")  # see the test below for its exact name


async def test_a_suspend_timeout_in_a_group_records_the_public_error_type(db: str) -> None:
    @replay.workflow(name="groups.timeout_error_type")
    def flow() -> Flow:
        with_group = yield Gather("g:v1", [Suspend("inside:v1", timeout=5)])
        with contextlib.suppress(SuspendTimeout):
            yield Suspend("outside:v1", timeout=5)
        with contextlib.suppress(SuspendTimeout):
            yield All("all:v1", [Suspend("failing:v1", timeout=5)])
        return len(with_group.failures)

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == 1
        rows = await engine.sql(
            "SELECT kind, key, error_type FROM replay_events WHERE run_id = 'r' "
            "AND error_type IS NOT NULL ORDER BY seq")
    assert rows == [("suspend", "inside:v1", "replay.SuspendTimeout"),
                    ("suspend", "outside:v1", "replay.SuspendTimeout"),
                    ("suspend", "failing:v1", "replay.SuspendTimeout"),
                    ("group", "all:v1", "replay.SuspendTimeout")]


async def test_an_all_failed_by_a_suspend_timeout_replays_it_as_a_suspend_timeout(
        db: str) -> None:
    @replay.workflow(name="groups.timeout_replayed")
    def flow() -> Flow:
        TRACK.calls["top"] += 1
        try:
            yield All("all:v1", [Suspend("approve:v1", timeout=60), Step("a:v1", work, "a")])
        except SuspendTimeout as timed_out:
            caught = described(timed_out)
        more = yield Suspend("more:v1")
        return [caught, more]

    async with replay.open_engine(db, workflows=[flow]) as engine:
        await engine.start(flow, run_id="r")
        await parked_on(engine, "r", "more:v1")
    async with replay.open_engine(db, workflows=[flow]) as engine:
        await engine.signal("r", "more:v1", "go")  # replays the group from its records
        assert await engine.get_run("r").result() == [
            {"type": "SuspendTimeout", "key": "approve:v1"}, "go"]
    assert TRACK.calls == Counter({"top": 2, "a": 1})


async def test_a_race_won_by_a_suspend_timeout_throws_it(db: str) -> None:
    @replay.workflow(name="groups.race_suspend_timeout")
    def flow() -> Flow:
        try:
            yield Race("race:v1", {"answer": Suspend("answer:v1", timeout=10),
                                   "nap": Sleep("nap:v1", 100)})
        except SuspendTimeout as timed_out:
            return timed_out.key
        return "not reached"

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == "answer:v1"
        rows = await group_rows(engine, "r")
        events = await events_of(engine, "r")
    assert json.loads(rows[-1][2]) == {"winner": "answer"}
    assert ("sleep", "cancelled", "nap:v1") in events


async def test_a_member_in_its_back_off_that_loses_a_race_is_cancelled(db: str) -> None:
    TRACK.failures_left["flaky"] = 1
    retry = Retry(attempts=5, initial=100, jitter=0)

    @replay.workflow(name="groups.race_back_off")
    def flow() -> Flow:
        won = yield Race("r:v1", {"flaky": Step("flaky:v1", flaky, "flaky", retry=retry),
                                  "nap": Sleep("nap:v1", 10)})
        yield Suspend("more:v1")
        return won

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = engine.now()
        run = await engine.start(flow, run_id="r")
        await settle(300)  # past the back-off's end: nothing retries
        info = engine.status("r")
        assert (info.state, info.waiting_for, info.updated_at) == (
            RunState.SUSPENDED, "more:v1", began + timedelta(seconds=10))
        await engine.signal("r", "more:v1")
        assert await run.result() == ("nap", None)
        events = await engine.sql(
            "SELECT event FROM replay_events WHERE key = 'flaky:v1' ORDER BY seq")
    assert events == [("retrying",), ("cancelled",)]
    assert TRACK.calls["flaky"] == 1


async def test_resuming_a_run_failed_fast_runs_the_failed_and_cancelled_members_again(
        db: str) -> None:
    @replay.workflow(name="groups.resumed")
    def flow() -> Flow:
        return (yield All("all:v1", [
            Step("ok:v1", work, "ok", 1), Step("bad:v1", work, "bad", 2, not FLAGS.get("fixed")),
            Step("slow:v1", work, "slow", 10), Step("later:v1", work, "later", 5)], limit=3))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        run = await engine.start(flow, run_id="r")
        with pytest.raises(replay.WorkflowFailed):
            await run.result()
        assert TRACK.calls == Counter({"ok": 1, "bad": 1, "slow": 1, "later": 1})
        assert sorted(TRACK.cancelled) == ["later", "slow"]
        FLAGS["fixed"] = True
        await engine.resume("r")
        assert await engine.get_run("r").result() == ["ok", "bad", "slow", "later"]
    assert TRACK.calls == Counter({"ok": 1, "bad": 2, "slow": 2, "later": 2})


@pytest.mark.parametrize("change", ["race names", "all to race"])
async def test_a_decided_group_replayed_as_another_shape_is_nondeterminism(
        db: str, change: str) -> None:
    @replay.workflow(name="groups.reshaped")
    def flow() -> Flow:
        members = [Step("a:v1", work, "a", 1), Step("b:v1", work, "b", 2)]
        group: All | Race
        if change == "race names":
            names = ("first", "second") if FLAGS.get("changed") else ("x", "y")
            group = Race("g:v1", dict(zip(names, members, strict=True)))
        elif FLAGS.get("changed"):
            group = Race("g:v1", {"x": members[0], "y": members[1]})
        else:
            group = All("g:v1", members)
        yield group
        yield Suspend("more:v1")

    async with replay.open_engine(db, workflows=[flow]) as engine:
        await engine.start(flow, run_id="r")
        await parked_on(engine, "r", "more:v1")
    FLAGS["changed"] = True
    async with replay.open_engine(db, workflows=[flow]) as engine:
        await engine.signal("r", "more:v1")
        with pytest.raises(replay.WorkflowFailed):
            await engine.get_run("r").result()
        info = engine.status("r")
    assert info.error_type == "replay.NondeterminismError", info.error


# == 4. nesting ==


def shown_items(items: list[Any]) -> list[Any]:
    """Values as they are, failures as their keys (for comparing results)."""
    return [f"failed {item.key}" if isinstance(item, StepFailed | SuspendTimeout)
            else item for item in items]


async def test_an_all_of_gathers_returns_a_gathered_per_member(db: str) -> None:
    @replay.workflow(name="groups.all_of_gathers")
    def flow() -> Flow:
        outer = yield All("outer:v1", [
            Gather("g1:v1", [Step("a:v1", work, "a", 1), Step("b:v1", work, "b", 2, True)]),
            Gather("g2:v1", [Step("c:v1", chore, "c"), Sleep("z:v1", 3)]),
            Step("d:v1", work, "d", 1)])
        assert [type(item) for item in outer] == [Gathered, Gathered, str]
        return [shown_items(outer[0]), shown_items(outer[1]), outer[2]]

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        assert await (await engine.start(flow, run_id="r")).result() == [
            ["a", "failed b:v1"], ["C", None], "d"]
        assert trio.current_time() - began == pytest.approx(3)
        rows = await group_rows(engine, "r")
    assert [(key, event) for key, event, *_ in rows if event != "waiting"
            and event != "running"] == [
        ("outer:v1", "started"), ("g1:v1", "started"), ("g2:v1", "started"),
        ("g1:v1", "completed"), ("g2:v1", "completed"), ("outer:v1", "completed")]
    assert json.loads(rows[0][2])["members"] == ["g1:v1", "g2:v1", "d:v1"]


async def test_a_race_won_by_a_nested_all(db: str) -> None:
    @replay.workflow(name="groups.race_all_wins")
    def flow() -> Flow:
        return (yield Race("race:v1", {
            "both": All("both:v1", [Step("x:v1", work, "x", 2), Step("y:v1", work, "y", 3)]),
            "one": Step("one:v1", work, "one", 10)}))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        assert await (await engine.start(flow, run_id="r")).result() == ("both", ["x", "y"])
        assert trio.current_time() - began == pytest.approx(3)
        events = await events_of(engine, "r")
    assert TRACK.cancelled == ["one"]
    assert ("step", "cancelled", "one:v1") in events
    assert ("group", "completed", "both:v1") in events


async def test_a_race_lost_by_a_nested_all_cancels_it_and_its_members(db: str) -> None:
    @replay.workflow(name="groups.race_all_loses")
    def flow() -> Flow:
        won = yield Race("race:v1", {
            "both": All("both:v1", [Step("x:v1", work, "x", 1), Step("y:v1", work, "y", 20),
                                    Sleep("z:v1", DAY), Suspend("s:v1")]),
            "one": Step("one:v1", work, "one", 5)})
        yield Suspend("more:v1")  # the run lives on, parked elsewhere
        return won

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        run = await engine.start(flow, run_id="r")
        assert (await run.wait()).waiting_for == "more:v1"
        assert trio.current_time() - began == pytest.approx(5)
        with pytest.raises(SignalRejected, match="was cancelled"):
            await engine.signal("r", "s:v1", "late")
        await engine.signal("r", "more:v1")
        assert await run.result() == ("one", "one")
        events = await events_of(engine, "r")
    assert TRACK.cancelled == ["y"]
    assert {("step", "completed", "x:v1"), ("step", "cancelled", "y:v1"),
            ("sleep", "cancelled", "z:v1"), ("suspend", "cancelled", "s:v1"),
            ("group", "cancelled", "both:v1"),
            ("group", "completed", "race:v1")} <= set(events)
    assert ("group", "completed", "both:v1") not in events


async def test_limits_apply_at_every_level(db: str) -> None:
    @replay.workflow(name="groups.nested_limits")
    def flow() -> Flow:
        first, second = yield All("outer:v1", [
            All("i1:v1", [Step("a:v1", work, "a", 1), Step("b:v1", work, "b", 1)]),
            Gather("i2:v1", [Step("c:v1", work, "c", 1), Step("d:v1", work, "d", 1),
                             Step("e:v1", work, "e", 1)], limit=1)], limit=1)
        return [first, list(second)]

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        result = await (await engine.start(flow, run_id="r")).result()
        assert trio.current_time() - began == pytest.approx(4)
    assert result == [["a", "b"], ["c", "d", "e"]] and isinstance(result[1], list)
    offsets = {tag: at - began for tag, at in TRACK.started_at.items()}
    assert offsets == pytest.approx({"a": 0, "b": 0, "c": 1, "d": 2, "e": 3})
    assert TRACK.max_running == 2


async def test_a_failure_deep_inside_fails_every_all_around_it(db: str) -> None:
    @replay.workflow(name="groups.nested_fail_fast")
    def flow() -> Flow:
        try:
            yield All("outer:v1", [
                All("inner:v1", [Step("bad:v1", work, "bad", 1, True),
                                 Step("slow:v1", work, "slow", 10)]),
                Step("long:v1", work, "long", 10)])
        except StepFailed as failed:
            return described(failed)
        return "not reached"

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == {
            "type": "StepFailed", "key": "bad:v1", "error_type": "builtins.ValueError",
            "message": "bad broke", "attempts": 1}
        rows = await group_rows(engine, "r")
    assert sorted(TRACK.cancelled) == ["long", "slow"]
    failed = [(key, json.loads(detail), error_type) for key, event, detail, error_type in rows
              if event == "failed"]
    assert failed == [("inner:v1", {"member": "bad:v1"}, "builtins.ValueError"),
                      ("outer:v1", {"member": "bad:v1"}, "builtins.ValueError")]


async def test_a_gather_keeps_a_failed_nested_all_as_one_item(db: str) -> None:
    @replay.workflow(name="groups.gather_of_failing_all")
    def flow() -> Flow:
        gathered = yield Gather("outer:v1", [
            All("inner:v1", [Step("bad:v1", work, "bad", 1, True),
                             Step("slow:v1", work, "slow", 10)]),
            Step("ok:v1", work, "ok", 3)])
        return shown_items(gathered)

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == [
            "failed bad:v1", "ok"]
    assert TRACK.cancelled == ["slow"]


async def test_three_levels_race_in_gather_in_all(db: str) -> None:
    @replay.workflow(name="groups.three_levels")
    def flow() -> Flow:
        mid, top = yield All("top:v1", [
            Gather("mid:v1", [
                Race("low:v1", {"fast": Step("f:v1", work, "f", 1),
                                "slow": Step("s:v1", work, "s", 9)}),
                Step("m:v1", chore, "m")]),
            Step("t:v1", work, "t", 2)])
        return [list(mid), top]

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == [
            [("fast", "f"), "M"], "t"]
    assert TRACK.cancelled == ["s"]


# == 5. races of signals, timers and steps ==

@replay.workflow(name="groups.pay_or_expire")
def pay_or_expire() -> Flow:
    won = yield Race("r:v1", {"paid": Suspend("paid:v1", status="waiting for payment"),
                              "late": Sleep("deadline:v1", timedelta(days=3))})
    yield Suspend("more:v1")  # lives on, so that later signals meet a live run
    return won


async def test_a_signal_before_the_deadline_wins_the_race_at_once(db: str) -> None:
    async with replay.open_engine(db, workflows=[pay_or_expire]) as engine:
        began = engine.now()
        run = await engine.start(pay_or_expire, run_id="r")
        await settle(3600)
        await engine.signal("r", "paid:v1", {"amount": 12})
        info = await parked_on(engine, "r", "more:v1", patience=60)  # woken at once
        assert info.state is RunState.SUSPENDED
        assert engine.now() - began < timedelta(hours=2)
        await engine.signal("r", "more:v1")
        assert await run.result() == ("paid", {"amount": 12})
        events = await events_of(engine, "r")
        rows = await group_rows(engine, "r")
    assert ("sleep", "cancelled", "deadline:v1") in events
    assert ("sleep", "fired", "deadline:v1") not in events
    assert json.loads(next(r for r in rows if r[1] == "completed")[2]) == {"winner": "paid"}


async def test_a_signal_in_the_mailbox_before_the_race_wins_it(db: str) -> None:
    @replay.workflow(name="groups.early_signal")
    def flow() -> Flow:
        yield Sleep("first:v1", 3600)
        return (yield Race("r:v1", {"paid": Suspend("paid:v1"),
                                    "late": Sleep("deadline:v1", timedelta(days=3))}))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = engine.now()
        run = await engine.start(flow, run_id="r")
        await settle(60)
        await engine.signal("r", "paid:v1", "early")
        assert await run.result() == ("paid", "early")
        assert engine.now() - began == HOUR
        events = await events_of(engine, "r")
    assert [e for e in events if e[0] != "run" and e[2] != "first:v1"] == [
        ("signal", "signalled", "paid:v1"), ("group", "started", "r:v1"),
        ("suspend", "signalled", "paid:v1"), ("group", "completed", "r:v1")]  # no timer


async def test_of_two_early_signals_the_first_recorded_wins(db: str) -> None:
    @replay.workflow(name="groups.two_early_signals")
    def flow() -> Flow:
        yield Sleep("first:v1", 3600)
        return (yield Race("r:v1", {"a": Suspend("a:v1"), "b": Suspend("b:v1")}))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        run = await engine.start(flow, run_id="r")
        await settle(60)
        await engine.signal("r", "b:v1", "bee")
        await engine.signal("r", "a:v1", "ay")
        assert await run.result() == ("b", "bee")
        events = await events_of(engine, "r")
    # a's signal stays unused in the mailbox: the race was decided before it looked.
    assert events[-4:] == [("group", "started", "r:v1"), ("suspend", "signalled", "b:v1"),
                           ("group", "completed", "r:v1"), ("run", "completed", None)]


async def test_the_deadline_wins_and_a_later_signal_is_rejected(db: str) -> None:
    async with replay.open_engine(db, workflows=[pay_or_expire]) as engine:
        began = engine.now()
        run = await engine.start(pay_or_expire, run_id="r")
        await settle(60)
        info = engine.status("r")
        assert (info.state, info.waiting_for, info.wake_at, info.status_text) == (
            RunState.SUSPENDED, "r:v1", began + timedelta(days=3), "waiting for payment")
        await settle(3 * DAY.total_seconds())
        info = engine.status("r")
        assert (info.state, info.waiting_for) == (RunState.SUSPENDED, "more:v1")
        (decided,) = await engine.sql("SELECT recorded_at FROM replay_events WHERE "
                                      "kind = 'group' AND event = 'completed'")
        assert decided[0] == began + timedelta(days=3)
        with pytest.raises(SignalRejected, match=re.escape(
                "key 'paid:v1' of run 'r' was cancelled (it lost a race")):
            await engine.signal("r", "paid:v1", {"amount": 12})
        await engine.signal("r", "more:v1")
        assert await run.result() == ("late", None)
        events = await events_of(engine, "r")
    assert ("suspend", "cancelled", "paid:v1") in events
    assert ("sleep", "fired", "deadline:v1") in events
    assert ("signal", "signalled", "paid:v1") not in events


async def test_a_step_beats_a_long_sleep(db: str) -> None:
    @replay.workflow(name="groups.step_vs_sleep")
    def flow() -> Flow:
        return (yield Race("r:v1", {"work": Step("work:v1", work, "work", 5),
                                    "timeout": Sleep("timeout:v1", 60)}))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        assert await (await engine.start(flow, run_id="r")).result() == ("work", "work")
        assert trio.current_time() - began == pytest.approx(5)
        await settle(120)  # the dropped timer wakes nothing
        events = await events_of(engine, "r")
    assert ("sleep", "cancelled", "timeout:v1") in events
    assert events[-1] == ("run", "completed", None)


async def test_a_short_sleep_beats_a_long_step_and_cancels_it(db: str) -> None:
    @replay.workflow(name="groups.sleep_vs_step")
    def flow() -> Flow:
        return (yield Race("r:v1", {"work": Step("work:v1", work, "work", 100),
                                    "timeout": Sleep("timeout:v1", 10)}))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = trio.current_time()
        assert await (await engine.start(flow, run_id="r")).result() == ("timeout", None)
        assert trio.current_time() - began == pytest.approx(10)
        events = await events_of(engine, "r")
    assert TRACK.cancelled == ["work"]
    assert ("step", "cancelled", "work:v1") in events
    assert ("step", "completed", "work:v1") not in events


async def test_a_signal_beats_a_step_under_way(db: str) -> None:
    # The run is executing (a member step is under way): the signal reaches it at once.
    @replay.workflow(name="groups.signal_vs_step")
    def flow() -> Flow:
        return (yield Race("r:v1", {"approve": Suspend("approve:v1"),
                                    "auto": Step("auto:v1", work, "auto", 3600)}))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = engine.now()
        run = await engine.start(flow, run_id="r")
        await settle(60)
        assert engine.status("r").state is RunState.RUNNING
        await engine.signal("r", "approve:v1", "yes")
        assert await run.result() == ("approve", "yes")
        assert engine.now() - began == timedelta(seconds=60)
    assert TRACK.cancelled == ["auto"]


# == 6. fail-fast while other members are parked ==


async def test_fail_fast_cancels_parked_members_and_the_run_goes_on(db: str) -> None:
    TRACK.failures_left["flaky"] = 5
    retry = Retry(attempts=2, initial=60, jitter=0)

    @replay.workflow(name="groups.fail_fast_parked")
    def flow() -> Flow:
        try:
            yield All("all:v1", [Suspend("a:v1"), Sleep("b:v1", DAY),
                                 Step("flaky:v1", flaky, "flaky", retry=retry)])
        except StepFailed as failed:
            yield Sleep("after:v1", HOUR)
            return failed.key
        return "not reached"

    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = engine.now()
        run = await engine.start(flow, run_id="r")
        await settle(30)  # every member waits: a signal, a day, a back-off
        info = engine.status("r")
        assert (info.state, info.waiting_for, info.wake_at) == (
            RunState.SUSPENDED, "all:v1", began + timedelta(seconds=60))
        assert tasks_of(engine) == 0
        await settle(60)  # the second attempt failed: the group failed
        info = engine.status("r")
        assert (info.state, info.waiting_for, info.wake_at) == (
            RunState.SLEEPING, "after:v1", began + timedelta(seconds=60) + HOUR)
        with pytest.raises(SignalRejected, match="was cancelled"):
            await engine.signal("r", "a:v1", "too late")
        assert await run.result() == "flaky:v1"
        assert engine.now() - began == timedelta(seconds=60) + HOUR  # not a day
        await settle(2 * DAY.total_seconds())  # nothing of the group wakes the run
        events = await events_of(engine, "r")
    assert {("suspend", "cancelled", "a:v1"), ("sleep", "cancelled", "b:v1"),
            ("group", "failed", "all:v1")} <= set(events)
    assert ("sleep", "fired", "b:v1") not in events
    assert events[-1] == ("run", "completed", None)


async def test_fail_fast_with_parked_members_fails_an_unhandling_run(db: str) -> None:
    @replay.workflow(name="groups.fail_fast_parked_unhandled")
    def flow() -> Flow:
        yield All("all:v1", [Suspend("a:v1"), Sleep("b:v1", DAY),
                             Step("bad:v1", work, "bad", 10, True)])

    async with replay.open_engine(db, workflows=[flow]) as engine:
        run = await engine.start(flow, run_id="r")
        await settle(5)
        assert engine.status("r").state is RunState.RUNNING  # a member step is under way
        with pytest.raises(replay.WorkflowFailed):
            await run.result()
        info = engine.status("r")
        await settle(2 * DAY.total_seconds())
        events = await events_of(engine, "r")
    assert (info.state, info.waiting_for, info.wake_at) == (RunState.FAILED, None, None)
    assert {("suspend", "cancelled", "a:v1"), ("sleep", "cancelled", "b:v1")} <= set(events)
    assert events[-1] == ("run", "failed", None)


# == 7. exact replay ==

# Flipped between engine opens: what a re-execution (which must not happen) would see.
FLAGS: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _fresh_flags() -> Iterator[None]:
    FLAGS.clear()
    yield
    FLAGS.clear()


def replayed_body() -> Flow:
    TRACK.calls["top"] += 1  # outside any step: counts the workflow's executions
    values = yield All("all:v1", [Step("a:v1", work, "a", 2), Step("b:v1", chore, "b"),
                                  Sleep("nap:v1", 5)], limit=2)
    gathered = yield Gather("g:v1", [Step("c:v1", work, "c", 1, True),
                                     Step("d:v1", chore, "d"), Suspend("q:v1", timeout=2)])
    assert isinstance(gathered, Gathered)  # on a replay too
    fast, slow = (3, 1) if FLAGS.get("flipped") else (1, 3)
    won = yield Race("race:v1", {"x": Step("x:v1", work, "x", fast),
                                 "y": Step("y:v1", work, "y", slow)})
    nested = yield Race("nested:v1", {
        "pair": All("pair:v1", [Step("p:v1", work, "p", 1), Sleep("pz:v1", 2)]),
        "solo": Step("solo:v1", work, "solo", 10)})
    return {"all": values, "gather": shown_items(gathered), "race": won, "nested": nested}


EXPECTED = {"all": ["a", "B", None], "gather": ["failed c:v1", "D", "failed q:v1"],
            "race": ("x", "x"), "nested": ("pair", ["p", None])}
EXECUTED = {"top": 1, "a": 1, "b": 1, "c": 1, "d": 1, "x": 1, "y": 1, "p": 1, "solo": 1}


@replay.workflow(name="groups.replayed")
def replayed() -> Flow:
    return (yield from replayed_body())


@replay.workflow(name="groups.replayed_then_waits")
def replayed_then_waits() -> Flow:
    result = yield from replayed_body()
    result["more"] = yield Suspend("more:v1")
    return result


async def test_finished_groups_replay_from_their_records_alone(
        db: str, tmp_path: Path) -> None:
    async with replay.open_engine(db, workflows=[replayed]) as engine:
        assert await (await engine.start(replayed, run_id="r")).result() == EXPECTED
        await engine.export_history("r", tmp_path / "r.json")
    assert dict(TRACK.calls) == EXECUTED
    FLAGS["flipped"] = True  # y would win a re-executed race now
    report = replay.testing.check_history(replayed, tmp_path / "r.json")
    assert report.output == EXPECTED
    assert report.unreached_keys == ()
    assert dict(TRACK.calls) == {**EXECUTED, "top": 2}  # replayed, nothing executed


@pytest.mark.parametrize("options", [{}, {"cache_size": 0}, {"always_replay": True}],
                         ids=["cached", "cache_size=0", "always_replay"])
async def test_a_run_parked_after_groups_replays_them_after_reopening(
        db: str, options: dict[str, Any]) -> None:
    async with replay.open_engine(db, workflows=[replayed_then_waits]) as engine:
        await engine.start(replayed_then_waits, run_id="r")
        await parked_on(engine, "r", "more:v1")
    assert dict(TRACK.calls) == EXECUTED
    FLAGS["flipped"] = True
    async with replay.open_engine(db, workflows=[replayed_then_waits], **options) as engine:
        await engine.signal("r", "more:v1", "go")
        assert await engine.get_run("r").result() == {**EXPECTED, "more": "go"}
        events = await events_of(engine, "r")
    assert dict(TRACK.calls) == {**EXECUTED, "top": 2}  # replayed once, nothing re-executed
    decided = [e for e in events if e[0] == "group" and e[1] in ("started", "completed")]
    assert sorted(Counter(decided).values()) == [1] * 10  # five groups, each once
    # The replay recorded nothing of the groups: the signal, then the end.
    assert events[-2:] == [("signal", "signalled", "more:v1"), ("run", "completed", None)]


@replay.workflow(name="groups.parked_inside")
def parked_inside() -> Flow:
    TRACK.calls["top"] += 1
    gathered = yield Gather("g:v1", [Step("a:v1", work, "a", 1), Sleep("nap:v1", HOUR),
                                     Sleep("nap2:v1", 2 * HOUR)])
    return list(gathered)


@pytest.mark.parametrize("options", [{}, {"cache_size": 0}, {"always_replay": True}],
                         ids=["cached", "cache_size=0", "always_replay"])
async def test_a_run_parked_inside_a_group_replays_after_reopening(
        db: str, options: dict[str, Any]) -> None:
    async with replay.open_engine(db, workflows=[parked_inside]) as engine:
        began = engine.now()
        await engine.start(parked_inside, run_id="r")
        await settle(600)
        assert engine.status("r").waiting_for == "g:v1"
    async with replay.open_engine(db, workflows=[parked_inside], **options) as engine:
        info = engine.status("r")
        assert (info.state, info.waiting_for, info.wake_at) == (
            RunState.SLEEPING, "g:v1", began + HOUR)
        assert tasks_of(engine) == 0
        await settle(HOUR.total_seconds())  # woken at 1 h: replays, parks until 2 h
        info = engine.status("r")
        assert (info.state, info.waiting_for, info.wake_at) == (
            RunState.SLEEPING, "g:v1", began + 2 * HOUR)
        assert await engine.get_run("r").result() == ["a", None, None]
        assert engine.now() - began == 2 * HOUR
    assert TRACK.calls["a"] == 1
    assert TRACK.calls["top"] == (2 if options == {} else 3)


async def test_always_replay_wakes_a_run_parked_in_a_group(db: str) -> None:
    @replay.workflow(name="groups.strict_group")
    def flow() -> Flow:
        return (yield All("g:v1", [Step("a:v1", work, "a", 1), Sleep("nap:v1", 10)]))

    async with replay.open_engine(db, workflows=[flow], always_replay=True) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == ["a", None]


@replay.workflow(name="groups.changing")
def changing() -> Flow:
    keys = ["a:v1", "b:v1", "nap:v1"] if FLAGS.get("changed") else ["a:v1", "nap:v1"]
    members = [Sleep(key, HOUR) if key.startswith("nap") else Step(key, work, key, 1)
               for key in keys]
    values = yield All("all:v1", members)
    yield Suspend("more:v1")
    return values


@pytest.mark.parametrize("where", ["parked in the group", "parked after it"])
async def test_a_group_yielded_with_other_members_after_a_restart_fails_the_run(
        db: str, where: str) -> None:
    async with replay.open_engine(db, workflows=[changing]) as engine:
        await engine.start(changing, run_id="r")
        await settle(600 if where == "parked in the group" else 2 * HOUR.total_seconds())
        assert engine.status("r").waiting_for == (
            "all:v1" if where == "parked in the group" else "more:v1")
    FLAGS["changed"] = True
    async with replay.open_engine(db, workflows=[changing]) as engine:
        if where == "parked after it":
            await engine.signal("r", "more:v1")
        with pytest.raises(replay.WorkflowFailed) as failed:
            await engine.get_run("r").result()
        info = engine.status("r")
    assert failed.value.error_type == "replay.NondeterminismError"
    assert info.error is not None
    assert ("recorded group 'all:v1' as all of members ['a:v1', 'nap:v1'] but the workflow "
            "now yields it as all of members ['a:v1', 'b:v1', 'nap:v1']") in info.error
    assert "b:v1" not in TRACK.calls  # nothing of the new code ran
    assert TRACK.calls["a:v1"] == 1


async def test_a_member_recorded_as_another_kind_fails_the_run(db: str) -> None:
    @replay.workflow(name="groups.kind_change")
    def flow() -> Flow:
        member = (Step("m:v1", work, "m", 1) if FLAGS.get("changed")
                  else Sleep("m:v1", HOUR))
        yield All("all:v1", [member, Step("a:v1", work, "a", 1)])

    async with replay.open_engine(db, workflows=[flow]) as engine:
        await engine.start(flow, run_id="r")
        await settle(600)
    FLAGS["changed"] = True
    async with replay.open_engine(db, workflows=[flow]) as engine:
        with pytest.raises(replay.WorkflowFailed):
            await engine.get_run("r").result()
        info = engine.status("r")
    assert info.error_type == "replay.NondeterminismError"
    assert "recorded key 'm:v1' as a sleep but group 'all:v1' now has it as a step" in (
        info.error or "")


# == 8. a run parked inside a group: no task; signals to member keys wake it ==

@replay.workflow(name="groups.two_approvals")
def two_approvals() -> Flow:
    gathered = yield Gather("both:v1", [Suspend("a:v1", status="waiting for ann"),
                                        Suspend("b:v1", status="waiting for bob"),
                                        Sleep("nap:v1", DAY)])
    return list(gathered)


async def test_a_run_parked_in_a_group_holds_no_task(db: str) -> None:
    async with replay.open_engine(db, workflows=[two_approvals]) as engine:
        began = engine.now()
        run = await engine.start(two_approvals, run_id="r")
        info = await run.wait()
        assert (info.state, info.waiting_for, info.wake_at, info.status_text) == (
            RunState.SUSPENDED, "both:v1", began + DAY, "waiting for ann")
        await settle(60)
        assert tasks_of(engine) == 0
        assert engine.status("r").updated_at == began  # nothing happened meanwhile
        # Whatever wakes it, the signals are its members' values.
        await engine.signal("r", "a:v1", "ann says yes")
        await engine.signal("r", "b:v1", "bob says yes")
        assert await run.result() == ["ann says yes", "bob says yes", None]


async def test_signals_to_member_keys_wake_a_run_parked_in_a_group(db: str) -> None:
    async with replay.open_engine(db, workflows=[two_approvals]) as engine:
        began = engine.now()
        await engine.start(two_approvals, run_id="r")
        await settle(60)
        await engine.signal("r", "a:v1", "ann says yes")
        await settle(60)
        info = engine.status("r")  # woken at once, a taken; parked again on b and the nap
        assert (info.state, info.waiting_for, info.status_text, info.wake_at) == (
            RunState.SUSPENDED, "both:v1", "waiting for bob", began + DAY)
        assert info.updated_at == began + timedelta(seconds=60)
        assert tasks_of(engine) == 0
        await engine.signal("r", "b:v1", "bob says yes")
        await settle(60)
        info = engine.status("r")  # only the nap is left: the run sleeps
        assert (info.state, info.waiting_for, info.status_text, info.wake_at) == (
            RunState.SLEEPING, "both:v1", None, began + DAY)
        assert await engine.get_run("r").result() == ["ann says yes", "bob says yes", None]


async def test_a_group_of_suspends_alone_finishes_on_its_signals(db: str) -> None:
    @replay.workflow(name="groups.only_suspends")
    def flow() -> Flow:
        return (yield All("all:v1", [Suspend("a:v1"), Suspend("b:v1")]))

    async with replay.open_engine(db, workflows=[flow]) as engine:
        run = await engine.start(flow, run_id="r")
        await settle(60)
        await engine.signal("r", "a:v1", 1)
        await engine.signal("r", "b:v1", 2)
        result = None
        with trio.move_on_after(DAY.total_seconds()):  # virtual; without a wake: never
            result = await run.result()
        assert result == [1, 2]


async def test_a_signal_after_reopening_wakes_a_run_parked_in_a_group(db: str) -> None:
    async with replay.open_engine(db, workflows=[two_approvals]) as engine:
        began = engine.now()
        await engine.start(two_approvals, run_id="r")
        await settle(60)
    async with replay.open_engine(db, workflows=[two_approvals]) as engine:
        assert engine.status("r").waiting_for == "both:v1"
        assert tasks_of(engine) == 0
        await engine.signal("r", "a:v1", "yes")
        await settle(60)
        info = engine.status("r")  # woken at once (replayed from the top), a taken
        assert (info.state, info.status_text) == (RunState.SUSPENDED, "waiting for bob")
        assert [e for e in await events_of(engine, "r") if e[0] == "group"][-1] == (
            "group", "waiting", "both:v1")
        with pytest.raises(SignalRejected, match="already has a signal"):
            await engine.signal("r", "a:v1", "again")
        await engine.signal("r", "b:v1", "also yes")
        await settle(60)
        info = engine.status("r")
        assert (info.state, info.wake_at) == (RunState.SLEEPING, began + DAY)
        assert await engine.get_run("r").result() == ["yes", "also yes", None]


@pytest.mark.parametrize("how", ["engine without the workflow", "replay command"])
async def test_a_signal_stored_while_closed_wakes_the_group_at_open(db: str, how: str) -> None:
    @replay.workflow(name="groups.other")
    def other() -> Flow:
        yield Sleep("x:v1", 1)

    @replay.workflow(name="groups.one_approval")
    def one_approval() -> Flow:
        return list((yield Gather("g:v1", [Suspend("a:v1"), Sleep("nap:v1", DAY)])))

    async with replay.open_engine(db, workflows=[one_approval]) as engine:
        began = engine.now()
        await engine.start(one_approval, run_id="r")
        await settle(60)
    if how == "replay command":
        from replay._cli import main
        assert main(["signal", db, "r", "a:v1", '"yes"']) == 0
    else:
        async with replay.open_engine(db, workflows=[other]) as engine:
            await engine.signal("r", "a:v1", "yes")
    async with replay.open_engine(db, workflows=[one_approval]) as engine:
        await settle(60)
        events = await events_of(engine, "r")
        # Woken at open: a taken, parked again on the nap alone (now a sleep).
        assert engine.status("r").state is RunState.SLEEPING, events
        assert await engine.get_run("r").result() == ["yes", None]
        assert engine.now() - began == DAY


# == 10. bad input ==


@pytest.mark.parametrize("kind", [All, Gather])
async def test_an_empty_all_or_gather_returns_an_empty_list(db: str, kind: type) -> None:
    @replay.workflow(name="groups.empty")
    def flow() -> Flow:
        values = yield kind("empty:v1", [])
        after = yield Step("after:v1", chore, "after")
        return [values, type(values).__name__, after]

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == [
            [], "Gathered" if kind is Gather else "list", "AFTER"]


def f() -> None:
    """A step function for commands that are only built."""


def test_an_empty_race_is_refused_when_built() -> None:
    with pytest.raises(ValueError, match=re.escape(
            "Race(key, {name: command}): race 'r:v1' has no members; a race needs at least "
            "one command to wait for")):
        Race("r:v1", {})


@pytest.mark.parametrize("build", [
    pytest.param(lambda: All("g", [Step("a", f), Step("a", f)]), id="all"),
    pytest.param(lambda: Gather("g", [Sleep("a", 1), Suspend("a")]), id="gather"),
    pytest.param(lambda: Race("g", {"x": Step("a", f), "y": Sleep("a", 1)}), id="race"),
    pytest.param(lambda: All("g", [Gather("h", [Step("a", f)]), Step("a", f)]),
                 id="nested-and-outer"),
    pytest.param(lambda: All("g", [Gather("h", [Step("a", f)]),
                                   Race("i", {"x": Step("a", f)})]), id="two-nested"),
    pytest.param(lambda: All("g", [Step("g", f)]), id="the-group-key"),
    pytest.param(lambda: All("g", [Gather("g", [Step("a", f)])]), id="nested-group-key"),
    pytest.param(lambda: All("g", [Gather("h", [Step("g", f)])]), id="deep-group-key"),
    pytest.param(lambda: All("g", [Gather("h", [Step("h", f)])]), id="inner-group-key"),
    pytest.param(lambda: Race("g", {"x": Step("g", f)}), id="race-key"),
])
def test_duplicate_member_keys_are_refused_when_built(build: Any) -> None:
    with pytest.raises(DuplicateKeyError, match="every member needs its own key"):
        build()


async def test_a_member_key_yielded_earlier_fails_the_run(db: str) -> None:
    @replay.workflow(name="groups.reused_key")
    def flow() -> Flow:
        yield Step("a:v1", chore, "a")
        yield All("all:v1", [Step("b:v1", chore, "b"), Step("a:v1", chore, "again")])

    async with replay.open_engine(db, workflows=[flow]) as engine:
        with pytest.raises(replay.WorkflowFailed) as failed:
            await (await engine.start(flow, run_id="r")).result()
        events = await events_of(engine, "r")
    assert failed.value.error_type == "replay.DuplicateKeyError"
    assert "yielded key 'a:v1' twice" in str(failed.value)
    assert TRACK.calls == Counter({"a": 1})  # the group never started
    assert not [e for e in events if e[0] == "group"]


async def test_a_group_key_yielded_earlier_fails_the_run(db: str) -> None:
    @replay.workflow(name="groups.reused_group_key")
    def flow() -> Flow:
        yield All("g:v1", [Step("a:v1", chore, "a")])
        yield Gather("g:v1", [Step("b:v1", chore, "b")])

    async with replay.open_engine(db, workflows=[flow]) as engine:
        with pytest.raises(replay.WorkflowFailed) as failed:
            await (await engine.start(flow, run_id="r")).result()
    assert failed.value.error_type == "replay.DuplicateKeyError"
    assert "yielded key 'g:v1' twice" in str(failed.value)
    assert "b" not in TRACK.calls


async def test_a_later_key_equal_to_a_member_key_fails_the_run(db: str) -> None:
    @replay.workflow(name="groups.member_key_reused_later")
    def flow() -> Flow:
        yield Race("r:v1", {"a": Step("a:v1", chore, "a"), "b": Sleep("b:v1", 60)})
        yield Sleep("b:v1", 1)  # the race's losing member had this key

    async with replay.open_engine(db, workflows=[flow]) as engine:
        with pytest.raises(replay.WorkflowFailed) as failed:
            await (await engine.start(flow, run_id="r")).result()
    assert failed.value.error_type == "replay.DuplicateKeyError"
    assert "yielded key 'b:v1' twice" in str(failed.value)


# The constructors, untyped: what a caller without a type checker may pass.
ALL: Any = All
GATHER: Any = Gather
RACE: Any = Race


@pytest.mark.parametrize(("build", "message"), [
    (lambda: ALL("g", [Step("a", f), "oops"]),
     "All(key, members): member 1 of group 'g' is 'oops' (str); members must be commands"),
    (lambda: GATHER("g", [lambda: None]), "member 0 of group 'g' is"),
    (lambda: ALL("g", [[Step("a", f)]]), "member 0 of group 'g' is [Step("),
    (lambda: RACE("g", {"x": 42}), "member 0 of group 'g' is 42 (int)"),
    (lambda: ALL("g", Step("a", f)), "All(key, members): members must be a list of commands"),
    (lambda: GATHER("g", "ab"), "Gather(key, members): members must be a list of commands"),
    (lambda: ALL("g", {"x": Step("a", f)}), "members must be a list of commands"),
    (lambda: RACE("g", [Step("a", f)]), "members must be a dict of names to commands"),
    (lambda: RACE("g", {1: Step("a", f)}), "member names must be strings"),
    (lambda: ALL(1, [Step("a", f)]), "All(key, members)"),
])
def test_members_that_are_not_commands_are_refused_when_built(build: Any, message: str) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        build()


@pytest.mark.parametrize("limit", [0, -1])
@pytest.mark.parametrize("kind", [All, Gather])
def test_a_limit_below_one_is_refused(kind: type, limit: int) -> None:
    with pytest.raises(ValueError, match=re.escape(f"limit must be at least 1, got {limit}")):
        kind("g", [Step("a", f)], limit=limit)


@pytest.mark.parametrize("limit", [1.5, "2", True, [1]])
@pytest.mark.parametrize("kind", [All, Gather])
def test_a_limit_of_the_wrong_type_is_refused(kind: Any, limit: Any) -> None:
    with pytest.raises(TypeError, match="limit must be an int or None"):
        kind("g", [Step("a", f)], limit=limit)


def test_an_empty_group_key_is_refused() -> None:
    with pytest.raises(ValueError):
        All("", [Step("a", f)])


async def test_a_bad_group_built_in_a_workflow_fails_the_run_at_that_line(db: str) -> None:
    @replay.workflow(name="groups.bad_limit")
    def flow() -> Flow:
        yield Step("a:v1", chore, "a")
        yield All("g:v1", [Step("b:v1", chore, "b")], limit=0)

    async with replay.open_engine(db, workflows=[flow]) as engine:
        with pytest.raises(replay.WorkflowFailed) as failed:
            await (await engine.start(flow, run_id="r")).result()
        info = engine.status("r")
    assert failed.value.error_type == "builtins.ValueError"
    assert 'limit=0)' in (info.error or "")  # the traceback shows the line
    assert "b" not in TRACK.calls


@pytest.mark.parametrize("shape", [list, tuple])
async def test_yielding_a_list_of_commands_points_to_all(db: str, shape: type) -> None:
    @replay.workflow(name="groups.yielded_list")
    def flow() -> Flow:
        try:
            yield shape([Step("a:v1", chore, "a"), Step("b:v1", chore, "b")])
        except TypeError as error:
            message = str(error)
        values = yield All("ab:v1", [Step("a:v1", chore, "a"), Step("b:v1", chore, "b")])
        return [message, values]

    async with replay.open_engine(db, workflows=[flow]) as engine:
        message, values = await (await engine.start(flow, run_id="r")).result()
    assert "to run commands at once, yield a group with its own key" in message
    assert "All('fetch-all:v1', [...], limit=8)" in message
    assert values == ["A", "B"]
    assert TRACK.calls == Counter({"a": 1, "b": 1})


# == 11. SQL ==


async def test_replay_runs_shows_the_group_a_run_is_parked_in(db: str) -> None:
    @replay.workflow(name="groups.sql_parked")
    def flow() -> Flow:
        gathered = yield Gather("g:v1", [Sleep("long:v1", 2 * HOUR), Sleep("short:v1", 1800),
                                         Step("quick:v1", work, "quick", 10),
                                         Suspend("s:v1", status="waiting for s")])
        sleeps = yield All("sleeps:v1", [Sleep("z1:v1", 60), Sleep("z2:v1", 120)])
        return [list(gathered), sleeps]

    query = ("SELECT state, waiting_for, wake_at, status_text FROM replay_runs "
             "WHERE run_id = 'r'")
    async with replay.open_engine(db, workflows=[flow]) as engine:
        began = engine.now()
        run = await engine.start(flow, run_id="r")
        await settle(5)  # quick is under way: the run executes
        assert await engine.sql(query) == [("running", None, None, None)]
        await settle(55)
        assert await engine.sql(query) == [("suspended", "g:v1", began + timedelta(seconds=1800),
                                            "waiting for s")]
        await settle(1800)  # short fired: the earliest deadline is long's
        assert await engine.sql(query) == [("suspended", "g:v1", began + 2 * HOUR,
                                            "waiting for s")]
        await engine.signal("r", "s:v1", "s")
        await settle((began + 2 * HOUR - engine.now()).total_seconds() + 1)
        # long fired at 2 h: the run is on to the sleeps
        assert await engine.sql(query) == [("sleeping", "sleeps:v1",
                                            began + 2 * HOUR + timedelta(seconds=60), None)]
        assert await run.result() == [[None, None, "quick", "s"], [None, None]]
        groups = await engine.sql(
            "SELECT key, event, value_json, wake_at FROM replay_events "
            "WHERE run_id = 'r' AND kind = 'group' ORDER BY seq")
    assert groups[0] == ("g:v1", "started", json.dumps(
        {"group": "gather", "members": ["long:v1", "short:v1", "quick:v1", "s:v1"]},
        separators=(",", ":")), None)
    waiting = [(key, wake_at - began) for key, event, _, wake_at in groups
               if event == "waiting"]
    assert waiting[0] == ("g:v1", timedelta(seconds=1800))
    assert ("g:v1", 2 * HOUR) in waiting
    assert waiting[-2:] == [("sleeps:v1", 2 * HOUR + timedelta(seconds=60)),
                            ("sleeps:v1", 2 * HOUR + timedelta(seconds=120))]
    assert [(key, event) for key, event, *_ in groups if event in ("started", "completed")] == [
        ("g:v1", "started"), ("g:v1", "completed"),
        ("sleeps:v1", "started"), ("sleeps:v1", "completed")]


async def test_a_failed_group_is_visible_in_sql(db: str) -> None:
    @replay.workflow(name="groups.sql_failed")
    def flow() -> Flow:
        try:
            yield All("all:v1", [Step("ok:v1", chore, "ok"),
                                 Step("bad:v1", chore, "bad", 0, True)], limit=1)
        except StepFailed:
            return "handled"
        return "not reached"

    async with replay.open_engine(db, workflows=[flow]) as engine:
        assert await (await engine.start(flow, run_id="r")).result() == "handled"
        rows = await engine.sql(
            "SELECT key, event, attempt, value_json, error_type, error FROM replay_events "
            "WHERE run_id = 'r' AND kind = 'group' ORDER BY seq")
    assert rows == [
        ("all:v1", "started", None, '{"group":"all","members":["ok:v1","bad:v1"]}', None,
         None),
        ("all:v1", "failed", 1, '{"member":"bad:v1"}', "builtins.ValueError", "bad broke")]


async def test_members_record_no_run_state_of_their_own(db: str) -> None:
    @replay.workflow(name="groups.member_states")
    def flow() -> Flow:
        yield Sleep("first:v1", 30)
        gathered = yield Gather("g:v1", [Step("a:v1", work, "a", 10), Suspend("s:v1"),
                                         Suspend("t:v1", timeout=20), Suspend("early:v1"),
                                         Step("b:v1", chore, "b", 0, True),
                                         Sleep("late:v1", 100)])
        won = yield Race("r:v1", {"x": Step("x:v1", work, "x", 1), "y": Sleep("y:v1", 60)})
        return [shown_items(gathered), won]

    async with replay.open_engine(db, workflows=[flow]) as engine:
        run = await engine.start(flow, run_id="r")
        await settle(10)
        await engine.signal("r", "early:v1", "early")  # taken from the mailbox
        await settle(60)
        await engine.signal("r", "s:v1", "yes")  # seen when late fires
        with trio.fail_after(DAY.total_seconds()):
            assert await run.result() == [
                ["a", "yes", "failed t:v1", "early", "failed b:v1", None], ("x", "x")]
    rows = log_rows(db, "r")
    members = [row for row in rows
               if row[0] not in ("run", "group", "signal") and row[2] != "first:v1"]
    assert len(members) > 10
    # No member parks the run (only group/waiting does); a member deadline that wakes
    # a parked group (sleep/fired, suspend/timed_out) marks the run running again.
    assert [row for row in members if row[3] not in (None, "running")] == []
    assert {row[:3] for row in members if row[3] == "running"} <= {
        ("suspend", "timed_out", "t:v1"), ("sleep", "fired", "late:v1")}
    assert {row[3] for row in rows if row[0] == "group" and row[3] is not None} <= {
        "suspended", "sleeping", "running"}


# == 9. SIGKILL in the middle of a 200-member All with limit=20 ==

CRASH_CHILD = Path(__file__).with_name("groups_crash_child.py")


def completed_keys(path: Path) -> set[str]:
    """Members whose outcome is durable in the file (read while no process holds it)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute("SELECT key FROM replay_events WHERE run_id = 'crash' AND "
                           "kind = 'step' AND event = 'completed'").fetchall()
    finally:
        con.close()
    return {key for (key,) in rows}


def side_lines(side: Path) -> list[tuple[str, str, str]]:
    if not side.exists():
        return []
    lines = [tuple(line.split()) for line in side.read_text().splitlines()]
    assert all(len(line) == 3 and line[0] in ("start", "end") for line in lines), lines
    return lines  # type: ignore[return-value]


def starts_by_key(side: Path) -> Counter[str]:
    return Counter(key for what, key, _ in side_lines(side) if what == "start")


def most_at_once(side: Path) -> int:
    """The most members running at once, from the side file, across processes.

    A process's members still running when the next process writes its first line died
    with it (the test starts a process only after the last one was killed).
    """
    running: dict[str, set[str]] = {}
    most = 0
    for what, key, pid in side_lines(side):
        if pid not in running:
            running.clear()
            running[pid] = set()
        if what == "start":
            running[pid].add(key)
        else:
            running[pid].discard(key)
        most = max(most, len(running[pid]))
    return most


def run_child_until_killed(tmp_path: Path, db: Path, side: Path, round_: int,
                           kill_after: int) -> None:
    child = ChildProcess(CRASH_CHILD, [str(db), str(side)],
                         tmp_path / f"child-{round_}-stderr.txt")
    try:
        ended = 0
        while ended < kill_after:
            line = child.line()
            if line is None or line.startswith("done "):
                pytest.fail(f"the child finished before it was killed; {child.stderr()}")
            if line.startswith("end "):
                ended += 1
            else:
                assert line == "open", line
        child.kill()
        assert child.proc.returncode == -9
    finally:
        child.close()
    assert child.stderr_path.read_text() == "", child.stderr()


@pytest.mark.slow
def test_a_sigkill_in_the_middle_of_a_limited_all_loses_and_reruns_nothing(
        tmp_path: Path) -> None:
    db, side = tmp_path / "crash.duckdb", tmp_path / "side.txt"
    durable_at_kill: list[tuple[set[str], Counter[str]]] = []
    for round_, kill_after in enumerate((40, 50)):
        run_child_until_killed(tmp_path, db, side, round_, kill_after)
        done = completed_keys(db)
        assert len(done) < crash.MEMBERS
        durable_at_kill.append((done, starts_by_key(side)))
    assert len(durable_at_kill[0][0]) < len(durable_at_kill[1][0])  # progress each round

    async def finish() -> list[int]:
        async with replay.open_engine(db, workflows=[crash.crash_all]) as engine:
            assert engine.status("crash").state is RunState.RUNNING
            output: list[int] = await engine.get_run("crash").result()
            return output

    crash.SIDE_FILE, crash.QUIET = str(side), True
    try:
        output = trio.run(finish, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        crash.SIDE_FILE, crash.QUIET = "", False

    assert output == [crash.expected(i) for i in range(crash.MEMBERS)]
    starts = starts_by_key(side)
    keys = [f"m{i:03}:v1" for i in range(crash.MEMBERS)]
    assert set(starts) == set(keys)
    for done, starts_then in durable_at_kill:
        # A member whose outcome was durable at a kill never started again.
        rerun = {key: (starts_then[key], starts[key]) for key in done
                 if starts[key] != starts_then[key]}
        assert rerun == {}
    # Only members under way at a kill (started, outcome not durable: at most LIMIT at a
    # time, as a member's outcome commits before the member taking its place starts) ran
    # again.
    assert sum(starts.values()) - len(keys) <= 2 * crash.LIMIT
    assert 2 <= most_at_once(side) <= crash.LIMIT
    con = duckdb.connect(str(db), read_only=True)
    try:
        events = con.execute("SELECT kind, event, key FROM replay_events "
                             "WHERE run_id = 'crash' ORDER BY seq").fetchall()
    finally:
        con.close()
    counts = Counter((kind, event) for kind, event, _ in events)
    assert counts["step", "completed"] == crash.MEMBERS
    assert len({key for kind, event, key in events if (kind, event) == ("step", "completed")}
               ) == crash.MEMBERS
    assert (counts["group", "started"], counts["group", "completed"]) == (1, 1)
    assert counts["run", "completed"] == 1


@pytest.mark.slow
def test_a_member_that_kills_its_process_fails_after_bounded_restarts(tmp_path: Path) -> None:
    db, side = tmp_path / "killer.duckdb", tmp_path / "side.txt"
    for _ in range(5):  # bounded: the first death, one charged death, then it fails
        done = subprocess.run([sys.executable, str(CRASH_CHILD), str(db), str(side), "killer"],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != -signal.SIGKILL:
            break
    assert done.returncode == 0, f"still dying after 5 opens (status {done.returncode})"
    last = done.stdout.strip().splitlines()[-1]
    assert json.loads(last.removeprefix("done ")) == ["calm", "failed replay.StepInterrupted"]


def test_a_late_outcome_changes_nothing_in_the_memo() -> None:
    from replay._core._history import RunHistory
    from replay._core._records import Encoded, Run

    run = Run("r", "wf")
    cancelled = run.step_cancelled("slow:v1", 1, "m.slow", "group 'g' was decided", None)
    late = run.step_late("slow:v1", 1, "m.slow", Encoded(b"\xa1x", '"x"'), None, 5.0)
    history = RunHistory([cancelled, late])
    entry = history.get("slow:v1")
    assert entry is not None
    assert (entry.done, entry.cancelled, entry.value) == (False, True, None)
    assert history.last_key() == "slow:v1"
