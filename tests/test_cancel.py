"""Cancellation, terminate and run deadlines, on real engines and files, in virtual time.

`engine.cancel(run_id, reason)` records ``run/cancel_requested`` durably and wakes a
parked run; `replay.Cancelled` is thrown into the workflow at the command it waits on
(recorded as ``<kind>/cancelled`` at that key, with the reason as its value), and
whatever was under way there is cancelled. A workflow may catch it and compensate;
if it escapes, the run ends ``cancelled``. `engine.terminate` ends a run at once
without running workflow code; `engine.start(..., timeout=)` cancels a run at its
deadline.

Every test runs a real engine on a DuckDB file in `tmp_path` under
`MockClock(autojump_threshold=0)`: sleeps, back-offs and deadlines take no real time.
Step functions report to a `Tracker` (calls, async steps that saw their cancellation,
sync steps still blocked), and workflows record every `Cancelled` they catch, so a
replay that throws it again is visible. The SIGKILL test runs an engine in a child
process (`cancel_crash_child.py`) and finishes its run here.
"""

from __future__ import annotations

import json
import math
import pickle
import threading
from collections import Counter
from collections.abc import Generator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import cancel_crash_child as crash
import duckdb
import pytest
import trio
import trio.testing
from childproc import ChildProcess, executions

import replay
from replay import (
    All,
    Cancelled,
    Child,
    ChildFailed,
    EncodingError,
    Race,
    Retry,
    RunFinished,
    RunNotFound,
    RunState,
    SignalRejected,
    Sleep,
    Step,
    Suspend,
    WorkflowFailed,
)

pytestmark = pytest.mark.both_stores

Flow = Generator[Any, Any, Any]
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
WAIT = "wait:v1"  # the key every guarded workflow waits on
REASON = {"by": "ops", "ticket": 42}


# -- instruments --


class Tracker:
    """What step functions and workflows saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.cancelled: list[str] = []  # async steps that saw their trio cancellation
        self.finished: list[str] = []  # steps whose function returned or raised
        self.entered: dict[str, threading.Event] = {}  # sync `hold` steps that began
        self.gates: dict[str, threading.Event] = {}  # `hold` steps block until set
        self.left: dict[str, threading.Event] = {}  # `hold` steps that returned
        self.caught: list[tuple[str, str | None, Any]] = []  # Cancelled seen by workflows
        self.executions: Counter[str] = Counter()  # workflow generators created, by run

    def gate(self, tag: str) -> threading.Event:
        self.entered.setdefault(tag, threading.Event())
        self.left.setdefault(tag, threading.Event())
        return self.gates.setdefault(tag, threading.Event())


TRACK = Tracker()


@pytest.fixture(autouse=True)
def _fresh_tracker() -> Iterator[None]:
    global TRACK
    TRACK = Tracker()
    yield
    for gate in TRACK.gates.values():  # never leave a worker thread blocked
        gate.set()


def note(tag: str) -> str:
    """A sync step that counts its calls."""
    with TRACK.lock:
        TRACK.calls[tag] += 1
        TRACK.finished.append(tag)
    return tag


async def linger(tag: str, seconds: float = DAY.total_seconds()) -> str:
    """An async step that takes `seconds` of virtual time (inf: for ever)."""
    TRACK.calls[tag] += 1
    try:
        await trio.sleep(seconds)
    except trio.Cancelled:
        TRACK.cancelled.append(tag)
        raise
    TRACK.finished.append(tag)
    return tag


def hold(tag: str) -> str:
    """A sync step (a worker thread) that blocks until its gate is set."""
    gate = TRACK.gate(tag)
    with TRACK.lock:
        TRACK.calls[tag] += 1
    TRACK.entered[tag].set()
    gate.wait(timeout=30)
    with TRACK.lock:
        TRACK.finished.append(tag)
    TRACK.left[tag].set()
    return tag


def flaky(tag: str) -> str:
    """A sync step that always fails."""
    with TRACK.lock:
        TRACK.calls[tag] += 1
    raise ConnectionError(f"{tag}: the service is down")


def caught(error: Cancelled) -> None:
    TRACK.caught.append((error.run_id, error.key, error.reason))


@replay.workflow(name="cancel.sleepy_child")
def sleepy_child(seconds: float) -> Flow:
    yield Step("c-before:v1", note, "c-before")
    yield Sleep("c-nap:v1", seconds)
    yield Step("c-after:v1", note, "c-after")
    return "child done"


# The command each kind of wait yields at WAIT, and the kind it is recorded as.
KINDS = {
    "sleep": "sleep",
    "suspend": "suspend",
    "backoff": "step",
    "sync": "step",
    "async": "step",
    "all": "group",
    "race": "group",
    "parked-group": "group",
    "child": "child",
}
BACKOFF = Retry(attempts=5, initial=3600, backoff=1, max_delay=3600, jitter=0)


def waiting_on(kind: str) -> Any:
    if kind == "sleep":
        return Sleep(WAIT, DAY)
    if kind == "suspend":
        return Suspend(WAIT, status="waiting for approval")
    if kind == "backoff":
        return Step(WAIT, flaky, "wait", retry=BACKOFF)
    if kind == "sync":
        return Step(WAIT, hold, "wait")
    if kind == "async":
        return Step(WAIT, linger, "wait")
    if kind == "all":
        return All(WAIT, [Step("m-async:v1", linger, "m-async"), Sleep("m-sleep:v1", DAY),
                          Suspend("m-suspend:v1"), Step("m-sync:v1", hold, "m-sync")])
    if kind == "race":
        return Race(WAIT, {"work": Step("m-async:v1", linger, "m-async"),
                           "nap": Sleep("m-sleep:v1", DAY),
                           "ok": Suspend("m-suspend:v1")})
    if kind == "parked-group":  # nothing under way: the run is parked in the group
        return All(WAIT, [Sleep("m-sleep:v1", DAY), Suspend("m-suspend:v1")])
    assert kind == "child"
    return Child(WAIT, sleepy_child, DAY.total_seconds())


@replay.workflow(name="cancel.guarded")
def guarded(kind: str, compensate: bool = True) -> Flow:
    """Reserve, wait at WAIT; on Cancelled release (compensate) or let it escape."""
    yield Step("reserve:v1", note, "reserve")
    try:
        value = yield waiting_on(kind)
    except Cancelled as error:
        caught(error)
        if not compensate:
            raise
        undone = yield Step("release:v1", note, "release")
        return {"cancelled_at": error.key, "reason": error.reason, "undone": undone}
    return {"value": value}


@replay.workflow(name="cancel.patient")
def patient() -> Flow:
    """A compensation that itself waits: a sleep, then a step."""
    TRACK.executions["patient"] += 1
    yield Step("reserve:v1", note, "reserve")
    try:
        yield Sleep(WAIT, DAY)
    except Cancelled as error:
        caught(error)
        yield Step("release:v1", note, "release")
        yield Sleep("cool-off:v1", HOUR)
        yield Step("notify:v1", note, "notify")
        return {"cancelled_at": error.key, "reason": error.reason}
    return "slept"


@replay.workflow(name="cancel.confirmed")
def confirmed() -> Flow:
    """A compensation that suspends on another key."""
    try:
        yield Suspend(WAIT)
    except Cancelled:
        return (yield Suspend("confirm:v1"))
    return "approved"


@replay.workflow(name="cancel.stuck")
def stuck(kind: str) -> Flow:
    """A compensation that never finishes: an async or a sync step that hangs."""
    try:
        yield Sleep(WAIT, DAY)
    except Cancelled as error:
        caught(error)
        if kind == "async":
            yield Step("undo:v1", linger, "undo", math.inf)
        else:
            yield Step("undo:v1", hold, "undo")
        yield Step("after-undo:v1", note, "after-undo")
    return "never"


@replay.workflow(name="cancel.quick")
def quick() -> Flow:
    return (yield Step("only:v1", note, "only"))


@replay.workflow(name="cancel.broken")
def broken() -> Flow:
    yield Step("only:v1", note, "only")
    raise ValueError("broken on purpose")


@replay.workflow(name="cancel.parent")
def parent(on_parent_close: str, then: str = "escape", group: bool = False) -> Flow:
    """Wait on one child (or, with `group`, an All of three); on Cancelled `then` says
    what the parent does: let it escape, return at once, or compensate with a step."""
    seconds = DAY.total_seconds()
    if group:
        command: Any = All("kids:v1", [Child(f"kid:{i}", sleepy_child, seconds,
                                             on_parent_close=on_parent_close)
                                       for i in range(3)])
    else:
        command = Child("kid:v1", sleepy_child, seconds, on_parent_close=on_parent_close)
    try:
        return (yield command)
    except ChildFailed as failed:
        return {"child_failed": failed.child_run_id, "error_type": failed.error_type,
                "key": failed.key, "run_id": failed.run_id}
    except Cancelled as error:
        caught(error)
        if then == "escape":
            raise
        if then == "compensate":
            yield Step("undo:v1", note, "undo")
        return f"cancelled at {error.key}"


ALL = [sleepy_child, guarded, patient, confirmed, stuck, quick, broken, parent]


# -- helpers --


async def events_of(engine: replay.Engine, run_id: str) -> list[tuple[str, str, str | None]]:
    return [(e.kind, e.event, e.key) for e in await engine.history(run_id)]


async def event(engine: replay.Engine, run_id: str, kind: str, name: str,
                key: str | None = None) -> replay.Event:
    found = [e for e in await engine.history(run_id)
             if (e.kind, e.event, e.key) == (kind, name, key)]
    assert len(found) == 1, (kind, name, key, await events_of(engine, run_id))
    return found[0]


async def wait_until_waiting(engine: replay.Engine, run: replay.Run, kind: str) -> None:
    """Let the run reach WAIT: parked there, or with work under way there.

    While a sync step runs, virtual time stands still (`busy_thread`): the test must
    not sleep then, only let the engine's tasks run.
    """
    if kind in ("sync", "all"):
        await trio.to_thread.run_sync(TRACK.entered["wait" if kind == "sync" else "m-sync"]
                                      .wait, 20)
        for _ in range(20):
            await trio.sleep(0)
    else:
        await trio.sleep(60)
    info = engine.status(run.run_id)
    if kind in ("sync", "async", "all", "race"):  # a step under way: the run is running
        assert (info.state, info.waiting_for) == (RunState.RUNNING, None), info
    else:
        assert info.state is not RunState.RUNNING, info
        assert info.waiting_for == WAIT, info


def cancelled_value(e: replay.Event) -> Any:
    assert e.value_json is not None
    return json.loads(e.value_json)


# == 1. cancellation at each kind of wait ==


@pytest.mark.parametrize("kind", list(KINDS))
async def test_cancelled_is_thrown_in_at_the_wait_and_the_compensation_runs(
        db: str, kind: str) -> None:
    TRACK.gate("wait")
    TRACK.gate("m-sync")
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(guarded, kind, run_id="r")
        await wait_until_waiting(engine, run, kind)
        returned = await engine.cancel("r", REASON)
        assert (returned.run_id, returned.workflow) == ("r", "cancel.guarded")
        # Durable when cancel returns.
        requested = await event(engine, "r", "run", "cancel_requested")
        assert cancelled_value(requested) == REASON
        assert await run.result() == {"cancelled_at": WAIT, "reason": REASON,
                                      "undone": "release"}
        assert TRACK.caught == [("r", WAIT, REASON)]
        thrown = await event(engine, "r", KINDS[kind], "cancelled", WAIT)
        assert cancelled_value(thrown) == REASON
        assert thrown.seq > requested.seq
        info = engine.status("r")
        assert (info.state, info.waiting_for, info.error_type) == (
            RunState.COMPLETED, None, None)
        history = await events_of(engine, "r")
        assert history[-2:] == [("step", "completed", "release:v1"),
                                ("run", "completed", None)]
        assert ("run", "cancelled", None) not in history
        # Nothing that waited at WAIT comes back later (timers, back-offs, threads).
        TRACK.gates["wait"].set()
        TRACK.gates["m-sync"].set()
        await trio.sleep(2 * DAY.total_seconds())
        # A cancelled sync member's thread may still finish: its outcome is kept as
        # step/late, for the record only (whenever the thread happens to end).
        later = [e for e in await events_of(engine, "r") if e[1] != "late"]
        assert later == history
        assert TRACK.calls["reserve"] == TRACK.calls["release"] == 1
        child = engine.status("r/wait:v1") if kind == "child" else None
    if kind == "backoff":
        assert TRACK.calls["wait"] == 1  # the back-off was not waited out
        assert history.count(("step", "retrying", WAIT)) == 1
    if kind == "async":
        assert TRACK.cancelled == ["wait"]
    if kind == "child":  # the compensation step took the child's stop with it
        assert (child.state, child.error_type) == (RunState.CANCELLED, "replay.Cancelled")
        assert TRACK.calls["c-after"] == 0


@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_cancelled_that_escapes_ends_the_run_cancelled(db: str, kind: str) -> None:
    TRACK.gate("wait")
    TRACK.gate("m-sync")
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(guarded, kind, False, run_id="r")
        await wait_until_waiting(engine, run, kind)
        await engine.cancel("r", "customer asked")
        info = await run.wait()
        assert info.state is RunState.CANCELLED
        assert info.error_type == "replay.Cancelled"
        assert info.error is not None and "Cancelled" in info.error
        with pytest.raises(WorkflowFailed) as failed:
            await run.result()
        assert failed.value.error_type == "replay.Cancelled"
        end = await event(engine, "r", "run", "cancelled")
        assert end.value == "customer asked"
        assert end.error_type == "replay.Cancelled"
        assert TRACK.caught == [("r", WAIT, "customer asked")]
        assert ("step", "completed", "release:v1") not in await events_of(engine, "r")
        rows = await engine.sql(
            "SELECT state, error_type FROM replay_runs WHERE run_id = 'r'")
        assert rows == [("cancelled", "replay.Cancelled")]
        cancelled = await engine.runs(state="cancelled")
        assert [i.run_id for i in cancelled if i.parent_run_id is None] == ["r"]


async def test_the_reason_defaults_to_none(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(guarded, "sleep", run_id="r")
        await trio.sleep(1)
        await engine.cancel("r")
        assert await run.result() == {"cancelled_at": WAIT, "reason": None,
                                      "undone": "release"}
        thrown = await event(engine, "r", "sleep", "cancelled", WAIT)
    assert thrown.value is None


async def test_an_async_step_under_way_is_cancelled_and_its_attempt_recorded(
        db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(guarded, "async", run_id="r")
        await trio.sleep(3600)
        began = engine.now()
        await engine.cancel("r", "stop")
        await run.result()
        assert engine.now() == began  # no waiting for the day-long step
        cancelled = await event(engine, "r", "step", "cancelled", WAIT)
    assert TRACK.cancelled == ["wait"]
    assert "wait" not in TRACK.finished
    assert cancelled.attempt == 1
    assert cancelled.error == "the run was cancelled"


async def test_a_sync_step_under_way_is_abandoned_and_its_result_dropped(db: str) -> None:
    gate = TRACK.gate("wait")
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(guarded, "sync", run_id="r")
        await trio.to_thread.run_sync(TRACK.entered["wait"].wait, 20)
        await engine.cancel("r", "stop")
        # The compensation runs while the abandoned thread is still blocked.
        assert (await run.result())["undone"] == "release"
        assert "wait" not in TRACK.finished
        gate.set()
        await trio.to_thread.run_sync(TRACK.left["wait"].wait, 20)
        await trio.sleep(60)
        history = await events_of(engine, "r")
    assert ("step", "cancelled", WAIT) in history
    assert ("step", "completed", WAIT) not in history


async def test_a_groups_members_under_way_are_cancelled(db: str) -> None:
    TRACK.gate("m-sync")
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(guarded, "all", run_id="r")
        await wait_until_waiting(engine, run, "all")
        await engine.cancel("r", REASON)
        await run.result()
        history = await events_of(engine, "r")
        members = {e.key: e for e in await engine.history("r")
                   if e.event == "cancelled" and e.key != WAIT}
    assert set(members) == {"m-async:v1", "m-sleep:v1", "m-suspend:v1", "m-sync:v1"}
    assert {(e.kind, e.key) for e in members.values()} == {
        ("step", "m-async:v1"), ("sleep", "m-sleep:v1"), ("suspend", "m-suspend:v1"),
        ("step", "m-sync:v1")}
    assert TRACK.cancelled == ["m-async"]
    assert ("group", "cancelled", WAIT) in history
    assert ("group", "completed", WAIT) not in history
    assert ("group", "failed", WAIT) not in history


async def test_a_race_cancelled_records_no_winner(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(guarded, "race", run_id="r")
        await trio.sleep(60)
        await engine.cancel("r")
        assert (await run.result())["cancelled_at"] == WAIT
        history = await events_of(engine, "r")
    assert ("group", "cancelled", WAIT) in history
    assert not any(kind == "group" and name == "completed" for kind, name, _ in history)
    assert TRACK.cancelled == ["m-async"]


async def test_a_cancelled_suspend_takes_no_later_signal(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(confirmed, run_id="r")
        await run.wait()
        await engine.cancel("r")
        info = await run.wait()
        assert (info.state, info.waiting_for) == (RunState.SUSPENDED, "confirm:v1")
        with pytest.raises(SignalRejected):
            await engine.signal("r", WAIT, "too late")
        await engine.signal("r", "confirm:v1", "undone")
        assert await run.result() == "undone"


async def test_a_cancelled_group_suspend_takes_no_later_signal(db: str) -> None:
    @replay.workflow(name="cancel.group_then_confirm")
    def flow() -> Flow:
        try:
            yield All(WAIT, [Suspend("a:v1"), Suspend("b:v1")])
        except Cancelled:
            return (yield Suspend("confirm:v1"))
        return "approved"

    async with replay.open_engine(db, workflows=[flow]) as engine:
        run = await engine.start(flow, run_id="r")
        await run.wait()
        await engine.signal("r", "a:v1", 1)
        await engine.cancel("r")
        assert (await run.wait()).waiting_for == "confirm:v1"
        with pytest.raises(SignalRejected):
            await engine.signal("r", "b:v1", "too late")
        await engine.signal("r", "confirm:v1", "undone")
        assert await run.result() == "undone"


async def test_a_cancel_requested_by_the_running_step_itself_cancels_that_step(
        db: str) -> None:
    engines: list[replay.Engine] = []

    async def self_cancelling(tag: str) -> str:
        run_id, _, _ = replay.current_step()
        await engines[0].cancel(run_id, "from inside")
        await trio.sleep(1)
        TRACK.finished.append(tag)
        return tag

    @replay.workflow(name="cancel.self_cancelling")
    def flow() -> Flow:
        try:
            first = yield Step("first:v1", self_cancelling, "first")
            yield Sleep("next:v1", DAY)
        except Cancelled as error:
            caught(error)
            return error.key
        return first

    async with replay.open_engine(db, workflows=[flow]) as engine:
        engines.append(engine)
        began = engine.now()
        run = await engine.start(flow, run_id="r")
        assert await run.result() == "first:v1"
        assert engine.now() == began
        history = await events_of(engine, "r")
    assert TRACK.caught == [("r", "first:v1", "from inside")]
    assert TRACK.finished == []
    assert ("step", "cancelled", "first:v1") in history
    assert ("step", "completed", "first:v1") not in history


@pytest.mark.parametrize("then", ["step", "end"])
async def test_a_step_that_ends_by_itself_after_the_cancel_keeps_its_outcome(
        db: str, then: str) -> None:
    """The cancel lands while the step runs, but the step shields itself and returns.

    Its outcome stands; `Cancelled` is thrown in at the workflow's next command, and a
    run that ends there ends as it decided.
    """
    engines: list[replay.Engine] = []

    async def shielded(tag: str) -> str:
        run_id, _, _ = replay.current_step()
        with trio.CancelScope(shield=True):
            await engines[0].cancel(run_id, "from inside")
            await trio.sleep(1)
        TRACK.finished.append(tag)
        return tag

    @replay.workflow(name="cancel.shielded")
    def flow(then: str) -> Flow:
        first = yield Step("first:v1", shielded, "first")
        if then == "end":
            return [first, None]
        try:
            yield Step("next:v1", note, "next")
        except Cancelled as error:
            caught(error)
            return [first, error.key]
        return [first, "next"]

    async with replay.open_engine(db, workflows=[flow]) as engine:
        engines.append(engine)
        run = await engine.start(flow, then, run_id="r")
        expected = ["first", None] if then == "end" else ["first", "next:v1"]
        assert await run.result() == expected
        assert (await engine.get_run("r").wait()).state == RunState.COMPLETED
        history = await events_of(engine, "r")
    assert TRACK.finished == ["first"]
    assert ("step", "completed", "first:v1") in history
    if then == "step":
        assert ("step", "cancelled", "next:v1") in history


@replay.workflow(name="cancel.waits_first")
def waits_first(kind: str) -> Flow:
    try:
        if kind == "sleep":
            yield Sleep(WAIT, DAY)
        else:
            yield Step(WAIT, flaky, "wait", retry=BACKOFF)
    except Cancelled as error:
        caught(error)
        return error.key
    return "waited"


@pytest.mark.parametrize("kind", ["sleep", "backoff"])
async def test_a_cancel_right_after_start_is_taken_at_once(db: str, kind: str) -> None:
    async with replay.open_engine(db, workflows=[waits_first]) as engine:
        began = engine.now()
        run = await engine.start(waits_first, kind, run_id="r")
        await engine.cancel("r", "changed my mind")  # the run is on its way to WAIT
        assert await run.result() == WAIT
        # The day-long sleep (or the hour-long back-off) is waited out first.
        assert engine.now() == began


@pytest.mark.parametrize("kind", ["sleep", "suspend", "parked-group", "child"])
async def test_a_cancel_reaches_a_parked_run_whose_machine_is_not_cached(
        db: str, kind: str) -> None:
    """With no parked machine kept, the woken run is replayed from its records."""
    async with replay.open_engine(db, workflows=ALL, cache_size=0) as engine:
        run = await engine.start(guarded, kind, run_id="r")
        await trio.sleep(60)
        await engine.cancel("r", REASON)
        assert await run.result() == {"cancelled_at": WAIT, "reason": REASON,
                                      "undone": "release"}
    assert TRACK.caught == [("r", WAIT, REASON)]
    assert TRACK.calls["reserve"] == 1


def test_cancelled_is_an_exception_that_carries_its_reason() -> None:
    error = Cancelled("r", WAIT, {"by": "ops"})
    assert isinstance(error, Exception)
    assert isinstance(error, replay.ReplayError)
    assert not isinstance(error, replay.StepFailed)
    assert (error.run_id, error.key, error.reason) == ("r", WAIT, {"by": "ops"})
    assert str(error) == "run 'r' was cancelled: {'by': 'ops'}"
    assert str(Cancelled("r", None)) == "run 'r' was cancelled"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.run_id, copy.key, copy.reason) == (
        Cancelled, "r", WAIT, {"by": "ops"})


# == 2. a second cancel, compensation that waits, replays ==


async def test_a_second_cancel_changes_nothing(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(patient, run_id="r")
        await trio.sleep(60)
        await engine.cancel("r", "first")
        await engine.cancel("r", "second")  # at once: the run has not taken the first
        await trio.sleep(60)
        assert engine.status("r").waiting_for == "cool-off:v1"
        await engine.cancel("r", "third")  # while compensating: no new Cancelled
        assert await run.result() == {"cancelled_at": WAIT, "reason": "first"}
        history = await events_of(engine, "r")
    assert history.count(("run", "cancel_requested", None)) == 1
    assert ("sleep", "cancelled", "cool-off:v1") not in history
    assert ("sleep", "fired", "cool-off:v1") in history
    assert TRACK.caught == [("r", WAIT, "first")]
    assert TRACK.calls == {"reserve": 1, "release": 1, "notify": 1}


async def test_always_replay_throws_the_same_cancelled_and_replays_the_compensation(
        db: str) -> None:
    async with replay.open_engine(db, workflows=ALL, always_replay=True) as engine:
        run = await engine.start(patient, run_id="r")
        await trio.sleep(60)
        await engine.cancel("r", REASON)
        assert await run.result() == {"cancelled_at": WAIT, "reason": REASON}
        history = await events_of(engine, "r")
    assert TRACK.executions["patient"] >= 3  # replayed from the top at each wake-up
    assert len(TRACK.caught) >= 2
    assert all(seen == ("r", WAIT, REASON) for seen in TRACK.caught)
    assert TRACK.calls == {"reserve": 1, "release": 1, "notify": 1}
    assert history.count(("sleep", "cancelled", WAIT)) == 1
    assert history[-1] == ("run", "completed", None)


async def test_a_reopened_engine_throws_the_same_cancelled_and_replays_the_compensation(
        db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        await engine.start(patient, run_id="r")
        await trio.sleep(60)
        await engine.cancel("r", REASON)
        await trio.sleep(60)
        assert engine.status("r").waiting_for == "cool-off:v1"
    assert TRACK.caught == [("r", WAIT, REASON)]
    async with replay.open_engine(db, workflows=ALL) as engine:
        assert await engine.get_run("r").result() == {"cancelled_at": WAIT, "reason": REASON}
        history = await events_of(engine, "r")
    assert TRACK.caught == [("r", WAIT, REASON)] * 2
    assert TRACK.calls == {"reserve": 1, "release": 1, "notify": 1}
    assert history.count(("sleep", "cancelled", WAIT)) == 1
    assert history.count(("run", "cancel_requested", None)) == 1


async def test_a_replay_of_a_run_that_ended_cancelled_is_not_needed_to_read_it(
        db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(guarded, "suspend", False, run_id="r")
        await run.wait()
        await engine.cancel("r", "bye")
        await run.wait()
    async with replay.open_engine(db, workflows=ALL) as engine:
        info = engine.status("r")
        assert (info.state, info.error_type) == (RunState.CANCELLED, "replay.Cancelled")
        with pytest.raises(RunFinished):
            await engine.cancel("r")


# == 3. bad input ==


async def test_cancelling_a_finished_run_raises_run_finished(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        await (await engine.start(quick, run_id="done")).result()
        failed = await engine.start(broken, run_id="failed")
        with pytest.raises(WorkflowFailed):
            await failed.result()
        gone = await engine.start(guarded, "suspend", False, run_id="gone")
        await gone.wait()
        await engine.cancel("gone")
        await gone.wait()
        for run_id, state in [("done", "completed"), ("failed", "failed"),
                              ("gone", "cancelled")]:
            for call in (engine.cancel, engine.terminate):
                with pytest.raises(RunFinished, match=state) as finished:
                    await call(run_id, "late")
                assert (finished.value.run_id, finished.value.state) == (run_id, state)
        assert (await events_of(engine, "done"))[-1] == ("run", "completed", None)
        assert (await events_of(engine, "failed"))[-1] == ("run", "failed", None)
        assert (await events_of(engine, "gone")).count(("run", "cancel_requested", None)) == 1


async def test_cancelling_a_finished_run_read_from_the_file_raises_run_finished(
        db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        await (await engine.start(quick, run_id="done")).result()
    async with replay.open_engine(db, workflows=ALL) as engine:
        with pytest.raises(RunFinished):
            await engine.cancel("done")
        with pytest.raises(RunFinished):
            await engine.terminate("done")


async def test_cancelling_an_unknown_run_raises_run_not_found(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        with pytest.raises(RunNotFound):
            await engine.cancel("nobody")
        with pytest.raises(RunNotFound):
            await engine.terminate("nobody", "x")
        assert await engine.runs() == []


async def test_an_unencodable_reason_raises_encoding_error_and_records_nothing(
        db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(guarded, "sleep", run_id="r")
        await trio.sleep(60)
        before = await events_of(engine, "r")
        for call in (engine.cancel, engine.terminate):
            with pytest.raises(EncodingError):
                await call("r", object())
            with pytest.raises(EncodingError):
                await call("r", {"when": threading.Lock()})
        assert await events_of(engine, "r") == before
        assert engine.status("r").state is RunState.SLEEPING
        assert await run.result() == {"value": None}  # the day passes, untouched
    assert TRACK.caught == []


async def test_cancel_and_terminate_on_a_closed_engine_raise_engine_closed(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        await engine.start(guarded, "sleep", run_id="r")
        await trio.sleep(1)
    with pytest.raises(replay.EngineClosed):
        await engine.cancel("r")
    with pytest.raises(replay.EngineClosed):
        await engine.terminate("r")


# == 4. cancellations the engine could not act on at once ==


async def test_a_cancel_right_after_reopening_wakes_a_parked_run(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        await engine.start(guarded, "sleep", run_id="r")
        await trio.sleep(60)
    async with replay.open_engine(db, workflows=ALL) as engine:
        await engine.cancel("r", "after the restart")
        assert await engine.get_run("r").result() == {
            "cancelled_at": WAIT, "reason": "after the restart", "undone": "release"}


async def test_a_cancel_right_after_reopening_reaches_a_run_being_recovered(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL, shutdown_timeout=0) as engine:
        await engine.start(guarded, "async", run_id="r")
        await trio.sleep(60)  # its day-long step is abandoned at the close
    assert TRACK.cancelled == ["wait"]
    async with replay.open_engine(db, workflows=ALL) as engine:
        await engine.cancel("r", "after the restart")  # before the recovered run runs
        assert await engine.get_run("r").result() == {
            "cancelled_at": WAIT, "reason": "after the restart", "undone": "release"}
        history = await events_of(engine, "r")
    assert ("step", "abandoned", WAIT) in history
    assert ("step", "cancelled", WAIT) in history


async def test_a_cancel_recorded_by_an_engine_without_the_workflow_runs_at_the_next_open(
        db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        await (await engine.start(guarded, "suspend", run_id="r")).wait()
    async with replay.open_engine(db, workflows=[quick]) as engine:
        await engine.cancel("r", "from elsewhere")
        info = engine.status("r")
        assert (info.state, info.waiting_for) == (RunState.SUSPENDED, WAIT)  # left as it is
        await engine.cancel("r", "again")  # still a no-op
    async with replay.open_engine(db, workflows=ALL) as engine:
        assert await engine.get_run("r").result() == {
            "cancelled_at": WAIT, "reason": "from elsewhere", "undone": "release"}
        history = await events_of(engine, "r")
    assert history.count(("run", "cancel_requested", None)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["block", "ack"])
def test_a_sigkill_right_after_the_cancel_request_runs_the_compensation_at_reopen(
        tmp_path: Path, mode: str) -> None:
    """`block`: killed while the compensation step runs; `ack`: killed right after the
    cancel request is acknowledged, wherever the compensation is."""
    db, side = tmp_path / "crash.duckdb", tmp_path / "side.txt"
    process = ChildProcess(CRASH_CHILD, [str(db), str(side), mode], tmp_path / "stderr.txt")
    last = "compensating" if mode == "block" else "cancel-acked"
    lines = []
    try:
        while not lines or lines[-1] != last:
            line = process.line()
            assert line is not None, f"the child exited early after {lines}; {process.stderr()}"
            lines.append(line)
        process.kill()
    finally:
        process.close()
    assert lines[:3] == ["open", "parked", "cancel-acked"], process.stderr()
    if mode == "block":
        assert executions(side) == {("crash", "release:v1"): 1}
    before = _crash_rows(db)
    assert before.count(("run", "cancel_requested", None)) == 1  # durable
    assert ("run", "completed", None) not in before or mode == "ack"
    crash.SIDE_FILE = str(side)
    trio.run(_finish_crashed, str(db), clock=trio.testing.MockClock(autojump_threshold=0))
    counts = executions(side)
    assert counts["crash", "notify:v1"] == 1
    assert 1 <= counts["crash", "release:v1"] <= 2
    if mode == "block":
        assert counts["crash", "release:v1"] == 2
    rows = _crash_rows(db)
    assert rows.count(("run", "cancel_requested", None)) == 1
    assert rows.count(("suspend", "cancelled", "wait:v1")) == 1
    assert rows.count(("step", "completed", "release:v1")) == 1
    assert rows.count(("step", "completed", "notify:v1")) == 1
    assert rows[-1] == ("run", "completed", None)


CRASH_CHILD = Path(__file__).with_name("cancel_crash_child.py")


def _crash_rows(db: Path) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT kind, event, key FROM replay_events "
                           "WHERE run_id = 'crash' ORDER BY seq").fetchall()
    finally:
        con.close()


async def _finish_crashed(db: str) -> None:
    crash.BLOCK = False
    async with replay.open_engine(db, workflows=[crash.compensating]) as engine:
        output = await engine.get_run("crash").result()
        assert engine.status("crash").state is RunState.COMPLETED
    assert output == {"cancelled_at": "wait:v1", "reason": "crash test",
                      "released": "release:v1", "notified": "notify:v1"}


# == 5. terminate ==


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_terminate_ends_a_run_whose_compensation_hangs(db: str, kind: str) -> None:
    gate = TRACK.gate("undo")
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(stuck, kind, run_id="r")
        await trio.sleep(60)
        await engine.cancel("r", "first")
        if kind == "sync":
            await trio.to_thread.run_sync(TRACK.entered["undo"].wait, 20)
        else:
            await trio.sleep(3600)
        assert engine.status("r").state is RunState.RUNNING
        began = engine.now()
        terminated = await engine.terminate("r", {"by": "oncall"})
        assert terminated.run_id == "r"
        info = engine.status("r")
        assert (info.state, info.error_type) == (RunState.CANCELLED, "replay.Cancelled")
        assert engine.now() == began
        end = await event(engine, "r", "run", "cancelled")
        assert end.value == {"by": "oncall"}
        assert end.error is not None and "terminated" in end.error
        with pytest.raises(WorkflowFailed, match=r"replay\.Cancelled"):
            await run.result()
        gate.set()
        if kind == "sync":
            await trio.to_thread.run_sync(TRACK.left["undo"].wait, 20)
        await trio.sleep(60)
        history = await events_of(engine, "r")
    assert ("step", "completed", "undo:v1") not in history
    assert ("step", "completed", "after-undo:v1") not in history
    assert history[-1] == ("run", "cancelled", None)
    assert TRACK.calls["after-undo"] == 0
    if kind == "async":
        assert TRACK.cancelled == ["undo"]


async def test_terminate_a_parked_run_runs_no_workflow_code(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(guarded, "sleep", run_id="r")
        await trio.sleep(60)
        await engine.terminate("r")
        assert engine.status("r").state is RunState.CANCELLED
        await trio.sleep(2 * DAY.total_seconds())  # the sleep's timer finds it finished
        history = await events_of(engine, "r")
        with pytest.raises(WorkflowFailed):
            await run.result()
    assert TRACK.caught == []
    assert TRACK.calls == {"reserve": 1}
    assert history == [("run", "started", None), ("step", "completed", "reserve:v1"),
                       ("sleep", "scheduled", WAIT), ("run", "cancelled", None)]


async def test_terminate_a_suspended_run_then_signal_it(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(guarded, "suspend", run_id="r")
        await run.wait()
        await engine.terminate("r", "gone")
        with pytest.raises(SignalRejected):
            await engine.signal("r", WAIT, "late")
    assert TRACK.caught == []


async def test_terminate_a_parked_run_after_reopening(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        await engine.start(guarded, "sleep", run_id="r")
        await trio.sleep(60)
    async with replay.open_engine(db, workflows=ALL) as engine:
        await engine.terminate("r", "after restart")
        assert engine.status("r").state is RunState.CANCELLED
    async with replay.open_engine(db, workflows=ALL) as engine:
        assert engine.status("r").state is RunState.CANCELLED
        await trio.sleep(2 * DAY.total_seconds())
        assert (await events_of(engine, "r"))[-1] == ("run", "cancelled", None)
    assert TRACK.caught == []


async def test_terminate_after_a_cancel_request_skips_the_compensation(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        await (await engine.start(guarded, "suspend", run_id="r")).wait()
    async with replay.open_engine(db, workflows=[quick]) as engine:
        await engine.cancel("r", "requested")  # recorded; nobody here can run it
        await engine.terminate("r", "ended")
    async with replay.open_engine(db, workflows=ALL) as engine:
        await trio.sleep(60)
        info = engine.status("r")
        history = await events_of(engine, "r")
    assert info.state is RunState.CANCELLED
    assert TRACK.caught == []
    assert ("step", "completed", "release:v1") not in history


# == 6. run deadlines ==


async def test_a_run_deadline_cancels_the_run_when_it_passes(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        began = engine.now()
        run = await engine.start(guarded, "sleep", run_id="r", timeout=HOUR)
        started = await event(engine, "r", "run", "started")
        assert started.wake_at == began + HOUR
        assert await run.result() == {"cancelled_at": WAIT,
                                      "reason": "the run's deadline passed",
                                      "undone": "release"}
        requested = await event(engine, "r", "run", "cancel_requested")
    assert requested.recorded_at == began + HOUR


async def test_a_run_deadline_in_seconds_cancels_an_escaping_run(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        began = engine.now()
        run = await engine.start(guarded, "suspend", False, run_id="r", timeout=90.5)
        info = await run.wait()
        assert info.state is RunState.SUSPENDED
        await trio.sleep(100)
        info = engine.status("r")
        assert (info.state, info.error_type) == (RunState.CANCELLED, "replay.Cancelled")
        requested = await event(engine, "r", "run", "cancel_requested")
    assert requested.recorded_at == began + timedelta(seconds=90.5)


async def test_a_run_that_finishes_before_its_deadline_is_not_cancelled(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(quick, run_id="r", timeout=HOUR)
        assert await run.result() == "only"
        await trio.sleep(2 * HOUR.total_seconds())
        history = await events_of(engine, "r")
        assert engine.status("r").state is RunState.COMPLETED
    assert history == [("run", "started", None), ("step", "completed", "only:v1"),
                       ("run", "completed", None)]


async def test_a_run_deadline_survives_a_restart(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        began = engine.now()
        await engine.start(guarded, "sleep", run_id="r", timeout=HOUR)
        await trio.sleep(600)
    async with replay.open_engine(db, workflows=ALL) as engine:
        output = await engine.get_run("r").result()
        requested = await event(engine, "r", "run", "cancel_requested")
    assert output["reason"] == "the run's deadline passed"
    assert requested.recorded_at == began + HOUR


async def test_a_run_deadline_that_passed_while_closed_cancels_at_the_open(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        await engine.start(guarded, "sleep", run_id="r", timeout=HOUR)
        await trio.sleep(600)
    await trio.sleep(2 * HOUR.total_seconds())  # no engine runs meanwhile
    async with replay.open_engine(db, workflows=ALL) as engine:
        opened = engine.now()
        output = await engine.get_run("r").result()
        requested = await event(engine, "r", "run", "cancel_requested")
    assert output["cancelled_at"] == WAIT
    assert requested.recorded_at == opened


async def test_a_run_deadline_reaches_a_step_under_way(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        began = engine.now()
        run = await engine.start(guarded, "async", run_id="r", timeout=HOUR)
        assert (await run.result())["cancelled_at"] == WAIT
        assert engine.now() == began + HOUR
    assert TRACK.cancelled == ["wait"]


async def test_a_cancelled_run_deadline_passing_later_changes_nothing(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(patient, run_id="r", timeout=DAY / 2)
        await trio.sleep(60)
        await engine.cancel("r", "by hand")
        assert await run.result() == {"cancelled_at": WAIT, "reason": "by hand"}
        await trio.sleep(DAY.total_seconds())
        history = await events_of(engine, "r")
    assert history.count(("run", "cancel_requested", None)) == 1


@pytest.mark.parametrize(("timeout", "error"), [
    (0, ValueError), (-1, ValueError), (timedelta(0), ValueError),
    (timedelta(seconds=-5), ValueError), (math.inf, ValueError), (math.nan, ValueError),
    ("1h", TypeError), (True, TypeError),
])
async def test_a_bad_run_timeout_is_rejected_and_nothing_recorded(
        db: str, timeout: Any, error: type[Exception]) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        with pytest.raises(error, match="timeout"):
            await engine.start(quick, run_id="r", timeout=timeout)
        assert await engine.runs() == []


# == 7. cancellation and children ==


def children_cases() -> list[Any]:
    cases = []
    for group in (False, True):
        for on_parent_close in ("cancel", "abandon"):
            for then in ("escape", "return", "compensate"):
                ident = f"{'group' if group else 'child'}-{on_parent_close}-{then}"
                cases.append(pytest.param(group, on_parent_close, then, id=ident))
    return cases


@pytest.mark.parametrize(("group", "on_parent_close", "then"), children_cases())
async def test_cancelling_a_parent_follows_its_childrens_on_parent_close(
        db: str, group: bool, on_parent_close: str, then: str) -> None:
    kids = [f"p/kid:{i}" for i in range(3)] if group else ["p/kid:v1"]
    key = "kids:v1" if group else "kid:v1"
    async with replay.open_engine(db, workflows=ALL) as engine:
        await engine.start(parent, on_parent_close, then, group, run_id="p")
        await trio.sleep(60)
        assert [engine.status(kid).state for kid in kids] == [RunState.SLEEPING] * len(kids)
        await engine.cancel("p", "stop everything")
        await trio.sleep(60)
        info = engine.status("p")
        if then == "escape":
            assert (info.state, info.error_type) == (RunState.CANCELLED, "replay.Cancelled")
        else:
            assert (info.state, info.output) == (RunState.COMPLETED, f"cancelled at {key}")
        assert TRACK.caught == [("p", key, "stop everything")]
        thrown = await event(engine, "p", "group" if group else "child", "cancelled", key)
        assert thrown.value == "stop everything"
        await trio.sleep(2 * DAY.total_seconds())  # long enough for a child left to run
        infos = [engine.status(kid) for kid in kids]
        parent_history = await events_of(engine, "p")
    if on_parent_close == "cancel":
        assert [(i.state, i.error_type) for i in infos] == [
            (RunState.CANCELLED, "replay.Cancelled")] * len(kids)
        assert TRACK.calls["c-after"] == 0
    else:
        assert [(i.state, i.output) for i in infos] == [
            (RunState.COMPLETED, "child done")] * len(kids)
        assert TRACK.calls["c-after"] == len(kids)
    # The parent stopped waiting: a child's later end is not recorded in it.
    assert not any(kind == "child" and name in ("completed", "failed")
                   for kind, name, _ in parent_history)


@pytest.mark.parametrize("on_parent_close", ["cancel", "abandon"])
async def test_terminating_a_parent_follows_its_childrens_on_parent_close(
        db: str, on_parent_close: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        await engine.start(parent, on_parent_close, run_id="p")
        await trio.sleep(60)
        await engine.terminate("p", "gone")
        assert engine.status("p").state is RunState.CANCELLED
        info = await engine.get_run("p/kid:v1").wait()
    assert TRACK.caught == []
    expected = RunState.CANCELLED if on_parent_close == "cancel" else RunState.COMPLETED
    assert info.state is expected


async def test_cancelling_a_child_fails_its_parent_with_child_failed(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(parent, "cancel", run_id="p")
        await trio.sleep(60)
        await engine.cancel("p/kid:v1", "not needed")
        assert await run.result() == {"child_failed": "p/kid:v1",
                                      "error_type": "replay.Cancelled", "key": "kid:v1",
                                      "run_id": "p"}
        child = engine.status("p/kid:v1")
        failed = await event(engine, "p", "child", "failed", "kid:v1")
    assert (child.state, child.error_type) == (RunState.CANCELLED, "replay.Cancelled")
    assert failed.error_type == "replay.Cancelled"
    assert TRACK.caught == []  # the child's own Cancelled escaped it


async def test_terminating_a_child_fails_its_parent_with_child_failed(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(parent, "cancel", run_id="p")
        await trio.sleep(60)
        await engine.terminate("p/kid:v1", "not needed")
        assert await run.result() == {"child_failed": "p/kid:v1",
                                      "error_type": "replay.Cancelled", "key": "kid:v1",
                                      "run_id": "p"}
        assert engine.status("p/kid:v1").state is RunState.CANCELLED


async def test_a_parents_deadline_cancels_it_and_its_child(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        began = engine.now()
        await engine.start(parent, "cancel", run_id="p", timeout=HOUR)
        await trio.sleep(HOUR.total_seconds() + 60)
        info = engine.status("p")
        assert (info.state, info.error_type) == (RunState.CANCELLED, "replay.Cancelled")
        requested = await event(engine, "p", "run", "cancel_requested")
        assert requested.recorded_at == began + HOUR
        thrown = await event(engine, "p", "child", "cancelled", "kid:v1")
        assert thrown.value == "the run's deadline passed"
        await trio.sleep(2 * DAY.total_seconds())
        child = engine.status("p/kid:v1")
    assert child.state is RunState.CANCELLED
