"""Child runs: `Child` starts a registered workflow as a run of its own, on real files.

``output = yield Child("ship:v1", ship, order)`` starts run ``f"{parent}/ship:v1"``
(idempotently), parks the parent until the child ends, and returns the child's output;
a child's failure is thrown into the parent as `ChildFailed`. A child is a real run:
listed, signalled, resumed and cancelled like any other, with ``parent_run_id`` naming
its parent (`RunInfo`, ``replay_runs``).

Every test runs a real engine on a DuckDB file in `tmp_path` under
`MockClock(autojump_threshold=0)`. Step functions count their calls and how many run
at once, so a child that runs twice, or more children at once than a group's limit,
is visible. The SIGKILL test fans out to child runs in a child process
(`children_crash_child.py`) and finishes the parent here.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Generator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import children_crash_child as crash
import duckdb
import pytest
import trio
import trio.testing
from childproc import ChildProcess, executions
from stores import reading

import replay
from replay import (
    All,
    Child,
    ChildFailed,
    Gather,
    Gathered,
    Race,
    RunIdConflict,
    RunState,
    SignalRejected,
    Sleep,
    Step,
    StepFailed,
    Suspend,
    WorkflowFailed,
)

pytestmark = pytest.mark.both_stores

Flow = Generator[Any, Any, Any]
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


# -- instruments --


class Tracker:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.running = 0
        self.max_running = 0
        self.broken: set[str] = set()  # tags whose steps fail while listed


TRACK = Tracker()


@pytest.fixture(autouse=True)
def _fresh_tracker() -> Iterator[None]:
    global TRACK
    TRACK = Tracker()
    yield


def note(tag: str) -> str:
    with TRACK.lock:
        TRACK.calls[tag] += 1
    if tag in TRACK.broken:
        raise ConnectionError(f"{tag}: the service is down")
    return tag


async def busy(tag: str, seconds: float = 1.0) -> str:
    """An async step that takes `seconds` of virtual time; counts how many run at once."""
    TRACK.calls[tag] += 1
    TRACK.running += 1
    TRACK.max_running = max(TRACK.max_running, TRACK.running)
    try:
        await trio.sleep(seconds)
    finally:
        TRACK.running -= 1
    return tag


# -- workflows --


@replay.workflow(name="kids.ship")
def ship(order: dict[str, Any]) -> Flow:
    packed = yield Step("pack:v1", note, f"pack {order['id']}")
    return {"order": order["id"], "packed": packed}


@replay.workflow(name="kids.checkout")
def checkout(order: dict[str, Any]) -> Flow:
    shipped = yield Child("ship:v1", ship, order)
    yield Step("notify:v1", note, "notify")
    return shipped


@replay.workflow(name="kids.picky")
def picky(order: dict[str, Any]) -> Flow:
    """Fails in its own code (a bad order), or by a step that fails (a broken tag)."""
    if order.get("bad"):
        raise ValueError(f"bad order {order['id']}")
    packed = yield Step("pack:v1", note, f"pack {order['id']}")
    return {"order": order["id"], "packed": packed}


@replay.workflow(name="kids.careful")
def careful(order: dict[str, Any]) -> Flow:
    """A parent that catches its child's failure and reports it."""
    try:
        return (yield Child("ship:v1", picky, order))
    except ChildFailed as failed:
        return {"run_id": failed.run_id, "key": failed.key,
                "child_run_id": failed.child_run_id, "error_type": failed.error_type,
                "error_types": list(failed.error_types), "message": failed.message,
                "attempts": failed.attempts, "is_step_failed": isinstance(failed, StepFailed),
                "is_value_error": failed.is_a(ValueError), "text": str(failed)}


@replay.workflow(name="kids.careless")
def careless(order: dict[str, Any]) -> Flow:
    """A parent that lets its child's failure escape."""
    shipped = yield Child("ship:v1", picky, order)
    yield Step("notify:v1", note, "notify")
    return shipped


@replay.workflow(name="kids.approval")
def approval(order: dict[str, Any]) -> Flow:
    """A child that sleeps, then suspends until a signal approves it."""
    yield Sleep("cool-off:v1", HOUR)
    decision = yield Suspend("approve:v1", status=f"approve order {order['id']}")
    packed = yield Step("pack:v1", note, f"pack {order['id']}")
    return {"order": order["id"], "decision": decision, "packed": packed}


@replay.workflow(name="kids.approving_parent")
def approving_parent(order: dict[str, Any], on_parent_close: str = "cancel") -> Flow:
    approved = yield Child("ship:v1", approval, order, on_parent_close=on_parent_close)
    yield Step("notify:v1", note, "notify")
    return approved


@replay.workflow(name="kids.item")
def item(i: int) -> Flow:
    worked = yield Step("work:v1", busy, f"item {i}")
    return {"i": i, "worked": worked}


@replay.workflow(name="kids.fan_out")
def fan_out(count: int, limit: int | None) -> Flow:
    outputs = yield All("items:v1", [Child(f"item:{i}", item, i) for i in range(count)],
                        limit=limit)
    return list(outputs)


@replay.workflow(name="kids.gathering")
def gathering(orders: list[dict[str, Any]]) -> Flow:
    gathered = yield Gather("orders:v1", [Child(f"order:{o['id']}", picky, o)
                                          for o in orders])
    assert isinstance(gathered, Gathered)
    return {
        "values": gathered.values(),
        "failures": [(i, type(f).__name__, f.child_run_id, f.error_type, f.key)
                     for i, f in gathered.failures],
        "ok": gathered.ok,
    }


@replay.workflow(name="kids.grandparent")
def grandparent(order: dict[str, Any]) -> Flow:
    return (yield Child("checkout:v1", checkout, order))


ALL = [ship, checkout, picky, careful, careless, approval, approving_parent, item, fan_out,
       gathering, grandparent]


# -- helpers --


async def events_of(engine: replay.Engine, run_id: str) -> list[tuple[str, str, str | None]]:
    return [(e.kind, e.event, e.key) for e in await engine.history(run_id)]


async def one_event(engine: replay.Engine, run_id: str, kind: str, name: str,
                    key: str | None = None) -> replay.Event:
    found = [e for e in await engine.history(run_id)
             if (e.kind, e.event, e.key) == (kind, name, key)]
    assert len(found) == 1, (kind, name, key, await events_of(engine, run_id))
    return found[0]


async def child_suspended(engine: replay.Engine, run_id: str) -> replay.RunInfo:
    """Wait until the child run exists (its parent started it) and is suspended."""
    await trio.sleep(1)
    info = await engine.get_run(run_id).wait()
    assert info.state is RunState.SUSPENDED, info
    return info


ORDER = {"id": 7, "items": ["tea", "cups"]}


# == 1. a child's output, its identity, and SQL ==


async def test_a_child_returns_its_output_to_the_parent(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(checkout, ORDER, run_id="p")
        assert await run.result() == {"order": 7, "packed": "pack 7"}
        child = engine.status("p/ship:v1")
        assert (child.workflow, child.state, child.parent_run_id) == (
            "kids.ship", RunState.COMPLETED, "p")
        assert child.output == {"order": 7, "packed": "pack 7"}
        assert engine.status("p").parent_run_id is None
        listed = {info.run_id: info for info in await engine.runs()}
        assert set(listed) == {"p", "p/ship:v1"}
        assert listed["p/ship:v1"].parent_run_id == "p"
        assert listed["p"].parent_run_id is None
        assert [i.run_id for i in await engine.runs(workflow="kids.ship")] == ["p/ship:v1"]
        parent_history = await events_of(engine, "p")
        started = await one_event(engine, "p", "child", "started", "ship:v1")
        completed = await one_event(engine, "p", "child", "completed", "ship:v1")
        child_started = await one_event(engine, "p/ship:v1", "run", "started", "ship:v1")
    assert parent_history == [
        ("run", "started", None), ("child", "started", "ship:v1"),
        ("child", "completed", "ship:v1"), ("step", "completed", "notify:v1"),
        ("run", "completed", None)]
    assert started.value == {"run_id": "p/ship:v1", "workflow": "kids.ship",
                             "on_parent_close": "cancel"}
    assert completed.value == {"order": 7, "packed": "pack 7"}
    assert list(child_started.value) == [ORDER]  # its key: the parent's key for it
    assert child_started.seq < completed.seq
    assert TRACK.calls == {"pack 7": 1, "notify": 1}


async def test_replay_runs_names_the_parent_in_sql(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        await (await engine.start(grandparent, ORDER, run_id="g")).result()
        rows = await engine.sql(
            "SELECT run_id, workflow, state, parent_run_id FROM replay_runs ORDER BY run_id")
        children = await engine.sql(
            "SELECT count(*) FROM replay_runs WHERE parent_run_id = 'g/checkout:v1'")
    assert rows == [
        ("g", "kids.grandparent", "completed", None),
        ("g/checkout:v1", "kids.checkout", "completed", "g"),
        ("g/checkout:v1/ship:v1", "kids.ship", "completed", "g/checkout:v1")]
    assert children == [(1,)]
    with reading(db) as con:  # the database itself, without an engine
        assert con.execute("SELECT parent_run_id FROM replay_runs WHERE run_id = "
                           "'g/checkout:v1/ship:v1'").fetchall() == [("g/checkout:v1",)]


async def test_a_child_named_by_its_workflow_name_runs_too(db: str) -> None:
    @replay.workflow(name="kids.by_name")
    def by_name() -> Flow:
        return (yield Child("ship:v1", "kids.ship", ORDER))

    async with replay.open_engine(db, workflows=[*ALL, by_name]) as engine:
        assert await (await engine.start(by_name, run_id="p")).result() == {
            "order": 7, "packed": "pack 7"}


async def test_starting_a_child_is_idempotent(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(approving_parent, ORDER, run_id="p")
        await trio.sleep(60)
        again = await engine.start(approval, {"id": 99}, run_id="p/ship:v1")  # args ignored
        assert (again.run_id, again.workflow) == ("p/ship:v1", "kids.approval")
        with pytest.raises(RunIdConflict):
            await engine.start(ship, ORDER, run_id="p/ship:v1")
        await engine.get_run("p/ship:v1").wait()
        await engine.signal("p/ship:v1", "approve:v1", "yes")
        assert (await run.result())["decision"] == "yes"
        finished = await engine.start(approval, ORDER, run_id="p/ship:v1")
        assert await finished.result() == await run.result()
        history = await events_of(engine, "p/ship:v1")
    assert history.count(("run", "started", "ship:v1")) == 1
    assert TRACK.calls["pack 7"] == 1


async def test_a_replaying_parent_starts_its_child_once(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL, always_replay=True) as engine:
        run = await engine.start(approving_parent, ORDER, run_id="p")
        await trio.sleep(2 * HOUR.total_seconds())
        await engine.signal("p/ship:v1", "approve:v1", "ok")
        assert (await run.result())["decision"] == "ok"
        parent_history = await events_of(engine, "p")
        child_history = await events_of(engine, "p/ship:v1")
    assert parent_history.count(("child", "started", "ship:v1")) == 1
    assert child_history.count(("run", "started", "ship:v1")) == 1
    assert TRACK.calls == {"pack 7": 1, "notify": 1}


async def test_a_parent_waiting_on_its_child_survives_a_restart(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        await engine.start(approving_parent, ORDER, run_id="p")
        await trio.sleep(60)
        assert engine.status("p/ship:v1").state is RunState.SLEEPING
    async with replay.open_engine(db, workflows=ALL) as engine:
        child = await engine.get_run("p/ship:v1").wait()  # slept out its hour, suspended
        assert (child.state, child.waiting_for) == (RunState.SUSPENDED, "approve:v1")
    async with replay.open_engine(db, workflows=ALL) as engine:
        await engine.signal("p/ship:v1", "approve:v1", "after restarts")
        assert (await engine.get_run("p").result())["decision"] == "after restarts"
        parent_history = await events_of(engine, "p")
    assert parent_history.count(("child", "started", "ship:v1")) == 1
    assert parent_history.count(("child", "completed", "ship:v1")) == 1
    assert TRACK.calls == {"pack 7": 1, "notify": 1}


async def test_a_child_that_ended_while_its_parent_was_not_loaded_wakes_it(db: str) -> None:
    """The parent's engine closes; an engine that runs only the child finishes it."""
    async with replay.open_engine(db, workflows=ALL) as engine:
        await engine.start(approving_parent, ORDER, run_id="p")
        await trio.sleep(2 * HOUR.total_seconds())
    async with replay.open_engine(db, workflows=[approval]) as engine:  # no parent here
        await engine.signal("p/ship:v1", "approve:v1", "elsewhere")
        assert (await engine.get_run("p/ship:v1").result())["decision"] == "elsewhere"
        assert engine.status("p").state is RunState.SUSPENDED
    async with replay.open_engine(db, workflows=ALL) as engine:
        assert (await engine.get_run("p").result())["decision"] == "elsewhere"


# == 2. failures ==


async def test_a_childs_failure_is_thrown_into_the_parent_as_child_failed(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(careful, {"id": 3, "bad": True}, run_id="p")
        caught = await run.result()
        child = engine.status("p/ship:v1")
        failed = await one_event(engine, "p", "child", "failed", "ship:v1")
    assert (child.state, child.error_type) == (RunState.FAILED, "builtins.ValueError")
    assert caught == {
        "run_id": "p", "key": "ship:v1", "child_run_id": "p/ship:v1",
        "error_type": "builtins.ValueError", "error_types": ["builtins.ValueError"],
        "message": "bad order 3", "attempts": 1, "is_step_failed": True,
        "is_value_error": True,
        "text": "child run 'p/ship:v1' (key 'ship:v1' of run 'p') ended with "
                "builtins.ValueError: bad order 3"}
    assert failed.error_type == "builtins.ValueError"


async def test_a_child_whose_step_failed_is_a_child_failed_of_step_failed(db: str) -> None:
    TRACK.broken.add("pack 4")
    async with replay.open_engine(db, workflows=ALL) as engine:
        caught = await (await engine.start(careful, {"id": 4}, run_id="p")).result()
        child = engine.status("p/ship:v1")
    assert child.error_type == "replay.StepFailed"
    assert (caught["error_type"], caught["child_run_id"]) == ("replay.StepFailed", "p/ship:v1")
    assert caught["is_step_failed"] is True


async def test_an_unhandled_child_failure_fails_the_parent(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(careless, {"id": 5, "bad": True}, run_id="p")
        with pytest.raises(WorkflowFailed) as failed:
            await run.result()
        info = engine.status("p")
    assert failed.value.error_type == "replay.ChildFailed"
    assert info.error_type == "replay.ChildFailed"
    assert "bad order 5" in failed.value.message
    assert TRACK.calls["notify"] == 0


async def test_a_child_of_an_unregistered_workflow_fails_the_parent(db: str) -> None:
    @replay.workflow(name="kids.unknown_child")
    def unknown_child() -> Flow:
        return (yield Child("ghost:v1", "kids.not_registered", 1))

    async with replay.open_engine(db, workflows=[unknown_child]) as engine:
        run = await engine.start(unknown_child, run_id="p")
        with pytest.raises(WorkflowFailed) as failed:
            await run.result()
        listed = [info.run_id for info in await engine.runs()]
    assert failed.value.error_type == "replay.WorkflowNotRegistered"
    assert "kids.not_registered" in failed.value.message
    assert listed == ["p"]  # no child run was started


async def test_a_child_of_a_workflow_registered_later_runs_after_a_resume(db: str) -> None:
    @replay.workflow(name="kids.late_child")
    def late_child() -> Flow:
        return (yield Child("ship:v1", "kids.ship", ORDER))

    async with replay.open_engine(db, workflows=[late_child]) as engine:
        with pytest.raises(WorkflowFailed, match="WorkflowNotRegistered"):
            await (await engine.start(late_child, run_id="p")).result()
    async with replay.open_engine(db, workflows=[late_child, ship]) as engine:
        await engine.resume("p")
        assert await engine.get_run("p").result() == {"order": 7, "packed": "pack 7"}


def test_a_child_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="on_parent_close"):
        Child("a:v1", ship, on_parent_close="orphan")
    with pytest.raises(TypeError):
        Child("a:v1", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Child("", ship)
    assert Child("a:v1", ship, 1).workflow == "kids.ship"
    assert Child("a:v1", ship, 1).on_parent_close == "cancel"
    assert issubclass(ChildFailed, StepFailed)


async def test_gather_of_children_collects_their_failures(db: str) -> None:
    orders = [{"id": i, "bad": i % 2 == 1} for i in range(6)]
    async with replay.open_engine(db, workflows=ALL) as engine:
        result = await (await engine.start(gathering, orders, run_id="p")).result()
        states = {info.run_id: info.state for info in await engine.runs()
                  if info.parent_run_id == "p"}
    assert result == {
        "values": [{"order": i, "packed": f"pack {i}"} for i in (0, 2, 4)],
        "failures": [(i, "ChildFailed", f"p/order:{i}", "builtins.ValueError", f"order:{i}")
                     for i in (1, 3, 5)],
        "ok": False}
    assert states == {f"p/order:{i}": RunState.FAILED if i % 2 else RunState.COMPLETED
                      for i in range(6)}


THEN = ["return", "step"]


@pytest.mark.parametrize("then", THEN)
async def test_all_of_children_fails_fast_and_cancels_the_children_under_way(
        db: str, then: str) -> None:
    @replay.workflow(name="kids.fail_fast")
    def fail_fast() -> Flow:
        try:
            yield All("orders:v1", [Child("slow:v1", approval, ORDER),
                                    Child("bad:v1", picky, {"id": 1, "bad": True})])
        except ChildFailed as failed:
            if then == "step":
                yield Step("notify:v1", note, "notify")
            return failed.child_run_id
        return "no"

    async with replay.open_engine(db, workflows=[*ALL, fail_fast]) as engine:
        assert await (await engine.start(fail_fast, run_id="p")).result() == "p/bad:v1"
        await trio.sleep(60)
        slow = engine.status("p/slow:v1")
        parent_history = await events_of(engine, "p")
    assert ("child", "cancelled", "slow:v1") in parent_history
    assert (slow.state, slow.error_type) == (RunState.CANCELLED, "replay.Cancelled")


@pytest.mark.parametrize("then", THEN)
async def test_a_child_that_loses_a_race_is_cancelled(db: str, then: str) -> None:
    @replay.workflow(name="kids.race")
    def race() -> Flow:
        won = yield Race("first:v1", {"kid": Child("slow:v1", approval, ORDER),
                                      "late": Sleep("late:v1", 60)})
        if then == "step":
            yield Step("notify:v1", note, "notify")
        return won

    async with replay.open_engine(db, workflows=[*ALL, race]) as engine:
        assert await (await engine.start(race, run_id="p")).result() == ("late", None)
        await trio.sleep(60)
        slow = engine.status("p/slow:v1")
    assert slow.state is RunState.CANCELLED


# == 3. a child is a real run ==


async def test_a_child_sleeps_suspends_and_is_signalled_directly(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(approving_parent, ORDER, run_id="p")
        await trio.sleep(60)
        child = engine.status("p/ship:v1")
        assert (child.state, child.waiting_for, child.parent_run_id) == (
            RunState.SLEEPING, "cool-off:v1", "p")
        parent_info = engine.status("p")
        assert (parent_info.state, parent_info.waiting_for) == (RunState.SUSPENDED, "ship:v1")
        child = await engine.get_run("p/ship:v1").wait()
        assert (child.state, child.waiting_for, child.status_text) == (
            RunState.SUSPENDED, "approve:v1", "approve order 7")
        rows = await engine.sql("SELECT run_id, state, waiting_for, parent_run_id "
                                "FROM replay_runs ORDER BY run_id")
        assert rows == [("p", "suspended", "ship:v1", None),
                        ("p/ship:v1", "suspended", "approve:v1", "p")]
        with pytest.raises(SignalRejected):  # the parent waits for a child, not a signal
            await engine.signal("p", "ship:v1", "forged")
        signalled = await engine.signal("p/ship:v1", "approve:v1", {"by": "ann"})
        assert signalled.run_id == "p/ship:v1"
        assert await run.result() == {"order": 7, "decision": {"by": "ann"},
                                      "packed": "pack 7"}
        with pytest.raises(SignalRejected):
            await engine.signal("p/ship:v1", "approve:v1", "again")


async def test_a_signal_for_a_child_may_arrive_before_its_suspend(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(approving_parent, ORDER, run_id="p")
        await trio.sleep(60)
        await engine.signal("p/ship:v1", "approve:v1", "early")  # it still sleeps
        assert (await run.result())["decision"] == "early"


async def test_a_parked_child_can_be_resumed(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(approving_parent, ORDER, run_id="p")
        await child_suspended(engine, "p/ship:v1")
        resumed = await engine.resume("p/ship:v1")
        info = await resumed.wait()
        assert (info.state, info.waiting_for) == (RunState.SUSPENDED, "approve:v1")
        await engine.signal("p/ship:v1", "approve:v1", "after resume")
        assert (await run.result())["decision"] == "after resume"


async def test_children_of_many_parents_keep_apart(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        runs = [await engine.start(checkout, {"id": i}, run_id=f"p{i}") for i in range(5)]
        outputs = [await run.result() for run in runs]
        rows = await engine.sql("SELECT run_id, parent_run_id FROM replay_runs "
                                "WHERE parent_run_id IS NOT NULL ORDER BY run_id")
    assert outputs == [{"order": i, "packed": f"pack {i}"} for i in range(5)]
    assert rows == [(f"p{i}/ship:v1", f"p{i}") for i in range(5)]


# == 4. fan-out ==


async def test_fifty_children_in_an_all_with_a_limit(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        began = trio.current_time()
        run = await engine.start(fan_out, 50, 20, run_id="p")
        outputs = await run.result()
        elapsed = trio.current_time() - began
        children = [info for info in await engine.runs() if info.parent_run_id == "p"]
        parent_history = await events_of(engine, "p")
    assert outputs == [{"i": i, "worked": f"item {i}"} for i in range(50)]
    assert TRACK.max_running == 20
    assert elapsed == pytest.approx(3)  # 20 + 20 + 10 children, one virtual second each
    assert sorted(info.run_id for info in children) == sorted(f"p/item:{i}"
                                                              for i in range(50))
    assert all(info.state is RunState.COMPLETED for info in children)
    assert parent_history.count(("child", "started", "item:0")) == 1
    assert sum(kind == "child" and name == "started" for kind, name, _ in parent_history) == 50
    assert sum(kind == "child" and name == "completed"
               for kind, name, _ in parent_history) == 50
    assert set(TRACK.calls.values()) == {1}


async def test_children_in_an_all_without_a_limit_run_at_once(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        began = trio.current_time()
        outputs = await (await engine.start(fan_out, 12, None, run_id="p")).result()
        assert trio.current_time() - began == pytest.approx(1)
    assert len(outputs) == 12
    assert TRACK.max_running == 12


async def test_a_fan_out_survives_a_restart_midway(db: str) -> None:
    async with replay.open_engine(db, workflows=ALL) as engine:
        await engine.start(fan_out, 10, 3, run_id="p")
        await trio.sleep(1.5)  # the first three are done, the next three under way
    async with replay.open_engine(db, workflows=ALL) as engine:
        outputs = await engine.get_run("p").result()
        parent_history = await events_of(engine, "p")
    assert outputs == [{"i": i, "worked": f"item {i}"} for i in range(10)]
    assert sum(kind == "child" and name == "started" for kind, name, _ in parent_history) == 10
    assert TRACK.max_running <= 3


@pytest.mark.slow
def test_a_sigkill_while_children_run_then_reopening_completes_every_child_once(
        tmp_path: Path) -> None:
    db, side = tmp_path / "crash.duckdb", tmp_path / "side.txt"
    process = ChildProcess(Path(crash.__file__), [str(db), str(side)],
                           tmp_path / "stderr.txt")
    ends = 0
    try:
        assert process.line() == "open", process.stderr()
        while ends < 6:
            line = process.line()
            assert line is not None and line.startswith("end "), (line, process.stderr())
            ends += 1
        process.kill()
    finally:
        process.close()
    killed_with = executions(side)
    assert 6 <= sum(killed_with.values()) < crash.ITEMS
    crash.SIDE_FILE, crash.QUIET = str(side), True
    output = trio.run(_finish_fan_out, str(db),
                      clock=trio.testing.MockClock(autojump_threshold=0))
    assert output == [crash.expected(i) for i in range(crash.ITEMS)]
    counts = executions(side)
    kids = [f"crash/item:{i}" for i in range(crash.ITEMS)]
    assert set(counts) == {(kid, "work:v1") for kid in kids}
    assert all(1 <= counts[kid, "work:v1"] <= 2 for kid in kids), counts
    # A step that ended before the kill did not run again (only those under way did).
    assert sum(counts.values()) - sum(killed_with.values()) <= crash.ITEMS - 6 + crash.LIMIT
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT run_id, kind, event, key FROM replay_events "
                           "ORDER BY seq").fetchall()
        states = con.execute("SELECT run_id, state, parent_run_id FROM replay_runs "
                             "ORDER BY run_id").fetchall()
    finally:
        con.close()
    for kid in kids:
        mine = [row[1:] for row in rows if row[0] == kid]
        assert mine.count(("run", "started", kid.split("/")[1])) == 1, (kid, mine)
        assert mine.count(("run", "completed", None)) == 1, (kid, mine)
        assert mine.count(("step", "completed", "work:v1")) == 1, (kid, mine)
    parent = [row[1:] for row in rows if row[0] == "crash"]
    for i in range(crash.ITEMS):
        assert parent.count(("child", "started", f"item:{i}")) == 1
        assert parent.count(("child", "completed", f"item:{i}")) == 1
    assert parent[-1] == ("run", "completed", None)
    assert states == sorted([("crash", "completed", None),
                             *((kid, "completed", "crash") for kid in kids)])


async def _finish_fan_out(db: str) -> Any:
    async with replay.open_engine(db, workflows=[crash.fan_out, crash.item]) as engine:
        return await engine.get_run("crash").result()


# == 5. on_parent_close ==


@pytest.mark.parametrize("on_parent_close", ["cancel", "abandon"])
async def test_a_parent_that_ends_while_its_child_is_suspended(
        db: str, on_parent_close: str) -> None:
    """The parent is terminated (it ends at once) while its child waits for a signal."""
    async with replay.open_engine(db, workflows=ALL) as engine:
        await engine.start(approving_parent, ORDER, on_parent_close, run_id="p")
        await child_suspended(engine, "p/ship:v1")
        await engine.terminate("p", "closing the shop")
        assert engine.status("p").state is RunState.CANCELLED
        await trio.sleep(60)
        child = engine.status("p/ship:v1")
        if on_parent_close == "cancel":
            assert (child.state, child.error_type) == (RunState.CANCELLED, "replay.Cancelled")
            with pytest.raises(SignalRejected):
                await engine.signal("p/ship:v1", "approve:v1", "too late")
        else:
            assert (child.state, child.waiting_for) == (RunState.SUSPENDED, "approve:v1")
            await engine.signal("p/ship:v1", "approve:v1", "still wanted")
            output = await engine.get_run("p/ship:v1").result()
            assert output["decision"] == "still wanted"
            assert engine.status("p").state is RunState.CANCELLED
        parent_history = await events_of(engine, "p")
    assert ("child", "completed", "ship:v1") not in parent_history
    assert TRACK.calls["notify"] == 0


@pytest.mark.parametrize("on_parent_close", ["cancel", "abandon"])
async def test_a_parent_cancelled_while_its_child_is_suspended_compensates(
        db: str, on_parent_close: str) -> None:
    @replay.workflow(name="kids.compensating_parent")
    def compensating_parent() -> Flow:
        try:
            return (yield Child("ship:v1", approval, ORDER, on_parent_close=on_parent_close))
        except replay.Cancelled:
            yield Step("refund:v1", note, "refund")
            return "refunded"

    async with replay.open_engine(db, workflows=[*ALL, compensating_parent]) as engine:
        run = await engine.start(compensating_parent, run_id="p")
        await child_suspended(engine, "p/ship:v1")
        await engine.cancel("p", "customer left")
        assert await run.result() == "refunded"
        await trio.sleep(60)
        child = engine.status("p/ship:v1")
        if on_parent_close == "cancel":
            assert child.state is RunState.CANCELLED
        else:
            assert child.state is RunState.SUSPENDED
            await engine.signal("p/ship:v1", "approve:v1", "ok")
            assert (await engine.get_run("p/ship:v1").result())["decision"] == "ok"
        assert engine.status("p").output == "refunded"


# == 6. resume ==


PATIENCE = DAY.total_seconds()  # virtual: a run that is stuck fails the test at once


async def test_resuming_a_parent_failed_by_a_child_resumes_the_child(db: str) -> None:
    TRACK.broken.add("pack 9")
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(careless, {"id": 9}, run_id="p")
        with pytest.raises(WorkflowFailed, match="ChildFailed"):
            await run.result()
        assert engine.status("p/ship:v1").error_type == "replay.StepFailed"
        await trio.sleep(1)  # the failed run's task has let go of it
        TRACK.broken.clear()
        await engine.resume("p")
        with trio.fail_after(PATIENCE):
            assert await engine.get_run("p").result() == {"order": 9, "packed": "pack 9"}
        child = engine.status("p/ship:v1")
        parent_history = await events_of(engine, "p")
        child_history = await events_of(engine, "p/ship:v1")
    assert (child.state, child.output) == (RunState.COMPLETED, {"order": 9, "packed": "pack 9"})
    assert TRACK.calls == {"pack 9": 2, "notify": 1}
    assert child_history.count(("run", "resumed", None)) == 1
    assert child_history.count(("step", "failed", "pack:v1")) == 1
    assert child_history.count(("step", "completed", "pack:v1")) == 1
    assert parent_history.count(("child", "started", "ship:v1")) == 1  # not started anew
    assert parent_history.count(("child", "failed", "ship:v1")) == 1
    assert parent_history.count(("child", "completed", "ship:v1")) == 1
    assert parent_history[-1] == ("run", "completed", None)


async def test_resuming_a_parent_failed_by_a_child_resumes_the_child_and_records_its_end(
        db: str) -> None:
    """What works today: the child runs again and its end is recorded in the parent;
    reopening the file (the parent is found 'running') lets the parent finish."""
    TRACK.broken.add("pack 9")
    async with replay.open_engine(db, workflows=ALL) as engine:
        with pytest.raises(WorkflowFailed):
            await (await engine.start(careless, {"id": 9}, run_id="p")).result()
        await trio.sleep(1)
        TRACK.broken.clear()
        await engine.resume("p")
        with trio.fail_after(PATIENCE):
            assert (await engine.get_run("p/ship:v1").result())["packed"] == "pack 9"
        await trio.sleep(60)
        assert ("child", "completed", "ship:v1") in await events_of(engine, "p")
    async with replay.open_engine(db, workflows=ALL) as engine:
        with trio.fail_after(PATIENCE):
            assert await engine.get_run("p").result() == {"order": 9, "packed": "pack 9"}
    assert TRACK.calls == {"pack 9": 2, "notify": 1}


async def test_resuming_a_parent_failed_by_a_child_after_reopening(db: str) -> None:
    TRACK.broken.add("pack 9")
    async with replay.open_engine(db, workflows=ALL) as engine:
        with pytest.raises(WorkflowFailed):
            await (await engine.start(careless, {"id": 9}, run_id="p")).result()
    TRACK.broken.clear()
    async with replay.open_engine(db, workflows=ALL) as engine:
        resumed = await engine.resume("p")
        with trio.fail_after(PATIENCE):
            assert await resumed.result() == {"order": 9, "packed": "pack 9"}
        assert engine.status("p/ship:v1").state is RunState.COMPLETED
    assert TRACK.calls == {"pack 9": 2, "notify": 1}


async def test_resuming_a_parent_whose_child_failed_in_its_own_code(db: str) -> None:
    """The child's failure is its workflow code's: resuming replays it (and it fails
    again) until the code changes; the parent fails again with it."""
    async with replay.open_engine(db, workflows=ALL) as engine:
        run = await engine.start(careless, {"id": 2, "bad": True}, run_id="p")
        with pytest.raises(WorkflowFailed):
            await run.result()
        await trio.sleep(1)
        await engine.resume("p")
        with trio.fail_after(PATIENCE), pytest.raises(WorkflowFailed, match="ChildFailed"):
            await engine.get_run("p").result()
        assert engine.status("p/ship:v1").error_type == "builtins.ValueError"


async def test_resuming_a_failed_child_directly_does_not_revive_its_parent(db: str) -> None:
    TRACK.broken.add("pack 9")
    async with replay.open_engine(db, workflows=ALL) as engine:
        with pytest.raises(WorkflowFailed):
            await (await engine.start(careless, {"id": 9}, run_id="p")).result()
        TRACK.broken.clear()
        resumed = await engine.resume("p/ship:v1")
        assert await resumed.result() == {"order": 9, "packed": "pack 9"}
        await trio.sleep(60)
        assert engine.status("p").state is RunState.FAILED  # it stopped waiting
        parent_history = await events_of(engine, "p")
    assert ("child", "completed", "ship:v1") not in parent_history
