"""The trio engine end to end, on real DuckDB files, in virtual time."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
import trio
import trio.testing

import replay
from replay import Retry, RunState, Step, StepFailed

pytestmark = pytest.mark.both_stores

executions: list[tuple[str, Any]] = []


@pytest.fixture(autouse=True)
def _clear_executions() -> None:
    executions.clear()


def record(name: str, value: Any = None) -> Any:
    executions.append((name, value))
    return value


def add(a: int, b: int) -> int:
    executions.append(("add", (a, b)))
    return a + b


async def double(n: int) -> int:
    executions.append(("double", n))
    await trio.sleep(0)
    return n * 2


@replay.workflow(name="arith")
def arith(x: int):  # type: ignore[no-untyped-def]
    s = yield Step("add:v1", add, x, 1)
    d = yield Step("double:v1", double, s)
    return {"sum": s, "double": d}


async def test_start_runs_sync_and_async_steps_to_completion(db: str) -> None:
    async with replay.open_engine(db, workflows=[arith]) as engine:
        run = await engine.start(arith, 4, run_id="r1")
        assert (run.run_id, run.workflow) == ("r1", "arith")
        assert await run.result() == {"sum": 5, "double": 10}
        info = engine.status("r1")
        assert info.state is RunState.COMPLETED and info.state == "completed"
        assert info.output == {"sum": 5, "double": 10}
        assert info.created_at <= info.updated_at
    assert executions == [("add", (4, 1)), ("double", 5)]


async def test_history_lists_every_event_in_order(db: str) -> None:
    async with replay.open_engine(db, workflows=[arith]) as engine:
        await (await engine.start(arith, 1, run_id="r1")).result()
        events = await engine.history("r1")
    assert [(e.kind, e.event, e.key, e.attempt, e.value) for e in events] == [
        ("run", "started", None, None, (1,)),
        ("step", "completed", "add:v1", 1, 2),
        ("step", "completed", "double:v1", 1, 4),
        ("run", "completed", None, None, {"sum": 2, "double": 4}),
    ]
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert events[0].value_json == "[1]"
    assert all(e.recorded_at.tzinfo is not None for e in events)


async def test_sql_views_agree_with_status(db: str) -> None:
    async with replay.open_engine(db, workflows=[arith]) as engine:
        await (await engine.start(arith, 2, run_id="r1")).result()
        rows = await engine.sql(
            "select run_id, workflow, state, input_json, output_json, error from replay_runs")
        keys = await engine.sql(
            "select key, event, attempt from replay_events where run_id = ? and kind = 'step' "
            "order by seq", ["r1"])
    assert rows == [("r1", "arith", "completed", "[2]", '{"sum":3,"double":6}', None)]
    assert keys == [("add:v1", "completed", 1), ("double:v1", "completed", 1)]


async def test_a_finished_run_is_not_executed_again_after_reopening(db: str) -> None:
    async with replay.open_engine(db, workflows=[arith]) as engine:
        await (await engine.start(arith, 3, run_id="r1")).result()
    executions.clear()
    async with replay.open_engine(db, workflows=[arith]) as engine:
        again = await engine.start(arith, 99, run_id="r1")
        assert await again.result() == {"sum": 4, "double": 8}
        assert await engine.get_run("r1").result() == {"sum": 4, "double": 8}
    assert executions == []


async def test_start_is_idempotent_by_run_id_even_when_concurrent(db: str) -> None:
    runs: list[replay.Run] = []
    async with replay.open_engine(db, workflows=[arith]) as engine:
        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(lambda n=n: _append(runs, engine.start(arith, n, run_id="same")))
        outputs = [await run.result() for run in runs]
        assert len(runs) == 5 and len({str(o) for o in outputs}) == 1
        assert len(await engine.runs()) == 1
    assert [name for name, _ in executions].count("add") == 1


async def _append(into: list[Any], awaitable: Any) -> None:
    into.append(await awaitable)


async def test_steps_receive_values_as_a_replay_would(db: str) -> None:
    def returns_tuple() -> tuple[int, list[int]]:
        return (1, [2, 3])

    @replay.workflow(name="shapes")
    def shapes():  # type: ignore[no-untyped-def]
        value = yield Step("t:v1", returns_tuple)
        return type(value).__name__, value

    async with replay.open_engine(db, workflows=[shapes]) as engine:
        assert await (await engine.start(shapes)).result() == ("tuple", (1, [2, 3]))


async def test_sync_steps_run_in_worker_threads_and_async_ones_on_the_loop(db: str) -> None:
    threads: dict[str, int] = {}

    def sync_step() -> None:
        threads["sync"] = threading.get_ident()

    async def async_step() -> None:
        threads["async"] = threading.get_ident()

    @replay.workflow(name="where")
    def where():  # type: ignore[no-untyped-def]
        yield Step("sync:v1", sync_step)
        yield Step("async:v1", async_step)

    async with replay.open_engine(db, workflows=[where]) as engine:
        await (await engine.start(where)).result()
    assert threads["async"] == threading.get_ident()
    assert threads["sync"] != threading.get_ident()


async def test_current_step_names_the_run_key_and_attempt(db: str) -> None:
    seen: list[tuple[str, str, int]] = []

    def sync_step() -> None:
        seen.append(replay.current_step())
        if len(seen) < 2:
            raise ConnectionError("flaky")

    async def async_step() -> None:
        seen.append(replay.current_step())

    @replay.workflow(name="ids")
    def ids():  # type: ignore[no-untyped-def]
        yield Step("sync:v1", sync_step, retry=Retry(attempts=2, initial=0))
        yield Step("async:v1", async_step)

    async with replay.open_engine(db, workflows=[ids]) as engine:
        await (await engine.start(ids, run_id="r9")).result()
    assert seen == [("r9", "sync:v1", 1), ("r9", "sync:v1", 2), ("r9", "async:v1", 1)]
    with pytest.raises(replay.ReplayError, match=r"^replay.current_step\(\) was called outside"):
        replay.current_step()


def flaky_until(n: int):  # type: ignore[no-untyped-def]
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        executions.append(("flaky", calls["n"]))
        if calls["n"] < n:
            raise ConnectionError(f"attempt {calls['n']} failed")
        return "ok"

    return flaky


async def test_retries_back_off_on_the_engine_clock(db: str) -> None:
    flaky = flaky_until(3)

    @replay.workflow(name="retrying")
    def retrying():  # type: ignore[no-untyped-def]
        return (yield Step("flaky:v1", flaky,
                           retry=Retry(attempts=5, initial=10, backoff=3, jitter=0)))

    async with replay.open_engine(db, workflows=[retrying]) as engine:
        began = engine.now()
        run = await engine.start(retrying, run_id="r1")
        await trio.sleep(5)
        info = engine.status("r1")
        assert info.state is RunState.SLEEPING
        assert info.waiting_for == "flaky:v1"
        assert info.wake_at is not None and info.wake_at - began == timedelta(seconds=10)
        assert await run.result() == "ok"
        assert engine.now() - began >= timedelta(seconds=40)
        events = [(e.event, e.attempt, e.error_type, e.error) for e in await engine.history("r1")
                  if e.kind == "step"]
        sleeping = await engine.sql("select count(*) from replay_runs where state = 'sleeping'")
    assert events == [
        ("retrying", 1, "builtins.ConnectionError", "attempt 1 failed"),
        ("retrying", 2, "builtins.ConnectionError", "attempt 2 failed"),
        ("completed", 3, None, None),
    ]
    assert sleeping == [(0,)]


async def test_an_exhausted_budget_throws_step_failed_into_the_workflow(db: str) -> None:
    flaky = flaky_until(10)
    caught: list[StepFailed] = []

    @replay.workflow(name="compensating")
    def compensating():  # type: ignore[no-untyped-def]
        try:
            yield Step("flaky:v1", flaky, retry=Retry(attempts=2, initial=0))
        except StepFailed as failure:
            caught.append(failure)
            yield Step("undo:v1", record, "undo", failure.error_type)
            return "compensated"

    async with replay.open_engine(db, workflows=[compensating]) as engine:
        assert await (await engine.start(compensating)).result() == "compensated"
    (failure,) = caught
    assert (failure.key, failure.error_type, failure.message, failure.attempts) == (
        "flaky:v1", "builtins.ConnectionError", "attempt 2 failed", 2)
    assert failure.is_a(ConnectionError) and failure.is_a(OSError)
    assert isinstance(failure.__cause__, ConnectionError)
    assert ("undo", "builtins.ConnectionError") in executions


async def test_give_up_on_stops_retrying_at_once(db: str) -> None:
    def declined() -> None:
        executions.append(("declined", None))
        raise PermissionError("card declined")

    @replay.workflow(name="declines")
    def declines():  # type: ignore[no-untyped-def]
        yield Step("charge:v1", declined,
                   retry=Retry(attempts=5, initial=0, give_up_on=(PermissionError,)))

    async with replay.open_engine(db, workflows=[declines]) as engine:
        run = await engine.start(declines, run_id="r1")
        with pytest.raises(replay.WorkflowFailed) as failed:
            await run.result()
    assert failed.value.error_type == "replay.StepFailed"
    assert "card declined" in failed.value.message
    assert executions == [("declined", None)]


async def test_default_retry_applies_to_steps_without_their_own(db: str) -> None:
    flaky = flaky_until(3)

    @replay.workflow(name="defaults")
    def defaults():  # type: ignore[no-untyped-def]
        return (yield Step("flaky:v1", flaky))

    async with replay.open_engine(db, workflows=[defaults],
                                  default_retry=Retry(attempts=3, initial=1)) as engine:
        assert await (await engine.start(defaults)).result() == "ok"


async def test_an_async_step_that_times_out_is_cancelled_and_counts_as_an_attempt(
    db: str,
) -> None:
    cancelled: list[int] = []

    async def slow() -> str:
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            cancelled.append(1)
            raise
        return "late"

    @replay.workflow(name="timeouts")
    def timeouts():  # type: ignore[no-untyped-def]
        try:
            yield Step("slow:v1", slow, timeout=5, retry=Retry(attempts=2, initial=0))
        except StepFailed as failure:
            return failure.error_type, failure.message, failure.attempts

    async with replay.open_engine(db, workflows=[timeouts]) as engine:
        result = await (await engine.start(timeouts, run_id="t1")).result()
    assert result == ("replay.StepTimeout",
                      "step 'slow:v1' of run 't1': attempt 2 exceeded its timeout of 5s", 2)
    assert cancelled == [1, 1]


async def test_a_sync_step_is_not_timed_out_by_virtual_time(db: str) -> None:
    def takes_real_time() -> str:
        threading.Event().wait(0.05)
        return "done"

    @replay.workflow(name="sync_timeout")
    def sync_timeout():  # type: ignore[no-untyped-def]
        return (yield Step("slow:v1", takes_real_time, timeout=5))

    async def sleeper(engine: replay.Engine, order: list[str]) -> None:
        await trio.sleep(10)
        order.append("sleep")

    order: list[str] = []
    async with (
        replay.open_engine(db, workflows=[sync_timeout]) as engine,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(sleeper, engine, order)
        assert await (await engine.start(sync_timeout)).result() == "done"
        order.append("step")
    assert order == ["step", "sleep"]


async def test_resume_reruns_the_failed_step_with_a_fresh_budget(db: str) -> None:
    fixed = {"ok": False}

    def load(rows: list[int]) -> int:
        executions.append(("load", fixed["ok"]))
        if not fixed["ok"]:
            raise RuntimeError("database unavailable")
        return len(rows)

    @replay.workflow(name="pipeline")
    def pipeline():  # type: ignore[no-untyped-def]
        rows = yield Step("extract:v1", record, "extract", [1, 2, 3])
        doubled = yield Step("transform:v1", record, "transform", [r * 2 for r in rows])
        return (yield Step("load:v1", load, doubled, retry=Retry(attempts=2, initial=0)))

    async with replay.open_engine(db, workflows=[pipeline]) as engine:
        run = await engine.start(pipeline, run_id="p1")
        with pytest.raises(replay.WorkflowFailed):
            await run.result()
        assert engine.status("p1").state is RunState.FAILED
        assert "database unavailable" in (engine.status("p1").error or "")
        fixed["ok"] = True
        resumed = await engine.resume("p1")
        assert await resumed.result() == 3
        events = [(e.kind, e.event, e.key, e.attempt) for e in await engine.history("p1")]
    assert [name for name, _ in executions] == ["extract", "transform", "load", "load", "load"]
    assert events[-3:] == [("run", "resumed", None, None),
                           ("step", "completed", "load:v1", 3),
                           ("run", "completed", None, None)]


async def test_resume_after_a_bug_fix_replays_handled_failures(db: str) -> None:
    def charge() -> None:
        executions.append(("charge", None))
        raise ValueError("declined")

    def buggy():  # type: ignore[no-untyped-def]
        try:
            yield Step("charge:v1", charge)
        except StepFailed:
            yield Step("release:v1", record, "release")
        raise AssertionError("bug after the compensation")

    def fixed():  # type: ignore[no-untyped-def]
        try:
            yield Step("charge:v1", charge)
        except StepFailed as failure:
            yield Step("release:v1", record, "release")
            return f"released after {failure.error_type}"

    buggy.__name__ = fixed.__name__ = "order"
    async with replay.open_engine(db, workflows=[buggy]) as engine:
        with pytest.raises(replay.WorkflowFailed, match="bug after the compensation"):
            await (await engine.start(buggy, run_id="o1")).result()
        assert "raise AssertionError" in (engine.status("o1").error or "")
    async with replay.open_engine(db, workflows=[fixed]) as engine:
        assert await (await engine.resume("o1")).result() == "released after builtins.ValueError"
    assert [name for name, _ in executions] == ["charge", "release"]


async def test_resume_of_a_completed_run_changes_nothing(db: str) -> None:
    async with replay.open_engine(db, workflows=[arith]) as engine:
        await (await engine.start(arith, 1, run_id="r1")).result()
        before = await engine.history("r1")
        run = await engine.resume("r1")
        assert await run.result() == {"sum": 2, "double": 4}
        assert await engine.history("r1") == before


async def test_a_renamed_step_replays_its_recorded_outcome_and_records_a_warning(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    def first(n: int) -> int:
        return n + 1

    def second(n: int) -> int:
        raise AssertionError("must not run: the outcome is recorded")

    def v1():  # type: ignore[no-untyped-def]
        value = yield Step("a:v1", first, 1)
        raise RuntimeError(f"crash after {value}")

    def v2():  # type: ignore[no-untyped-def]
        return (yield Step("a:v1", second, 1))

    v1.__name__ = v2.__name__ = "renames"
    async with replay.open_engine(db, workflows=[v1]) as engine:
        with pytest.raises(replay.WorkflowFailed):
            await (await engine.start(v1, run_id="r1")).result()
    async with replay.open_engine(db, workflows=[v2]) as engine:
        assert await (await engine.resume("r1")).result() == 2
        renamed = [e for e in await engine.history("r1") if e.event == "renamed"]
    (event,) = renamed
    assert event.value == {"recorded": f"{__name__}.test_a_renamed_step_replays_its_recorded_"
                           "outcome_and_records_a_warning.<locals>.first",
                           "current": f"{__name__}.test_a_renamed_step_replays_its_recorded_"
                           "outcome_and_records_a_warning.<locals>.second"}
    assert "pass name=" in (event.error or "")
    assert any("pass name=" in r.getMessage() for r in caplog.records)


async def test_runs_lists_newest_first_with_filters(db: str, clock: trio.testing.MockClock) -> None:
    def fails():  # type: ignore[no-untyped-def]
        yield Step("x:v1", record, "x")
        raise ValueError("no")

    async with replay.open_engine(db, workflows=[arith, fails]) as engine:
        for n in range(3):
            await (await engine.start(arith, n, run_id=f"a{n}")).wait()
            await trio.sleep(1)
        await (await engine.start(fails, run_id="f")).wait()
        assert [i.run_id for i in await engine.runs()] == ["f", "a2", "a1", "a0"]
        assert [i.run_id for i in await engine.runs(state="failed")] == ["f"]
        assert [i.run_id for i in await engine.runs(workflow="arith", limit=2)] == ["a2", "a1"]
        assert await engine.runs(state=RunState.RUNNING) == []


async def test_runs_that_were_running_continue_when_the_engine_opens(db: str) -> None:
    gate = trio.Event()

    async def blocked() -> str:
        await gate.wait()
        return "never"

    async def free() -> str:
        return "free"

    def v1():  # type: ignore[no-untyped-def]
        a = yield Step("a:v1", record, "a", 1)
        b = yield Step("b:v1", blocked)
        return a, b

    def v2():  # type: ignore[no-untyped-def]
        a = yield Step("a:v1", record, "a", 1)
        b = yield Step("b:v1", free)
        return a, b

    v1.__name__ = v2.__name__ = "resumable"
    with trio.CancelScope() as scope:
        async with replay.open_engine(db, workflows=[v1]) as engine:
            await engine.start(v1, run_id="r1")
            await trio.sleep(1)
            assert engine.status("r1").state is RunState.RUNNING
            scope.cancel()  # abandon: the blocked step is dropped, nothing recorded for it
    async with replay.open_engine(db, workflows=[v2]) as engine:
        assert await engine.get_run("r1").result() == (1, "free")
    assert executions == [("a", 1)]


async def test_a_clean_exit_lets_running_steps_finish_then_continues_later(db: str) -> None:
    async def slow() -> str:
        await trio.sleep(5)
        executions.append(("slow", None))
        return "slow"

    @replay.workflow(name="two_slow")
    def two_slow():  # type: ignore[no-untyped-def]
        a = yield Step("a:v1", slow)
        b = yield Step("b:v1", double, 21)
        return a, b

    async with replay.open_engine(db, workflows=[two_slow]) as engine:
        await engine.start(two_slow, run_id="r1")
        await trio.sleep(1)
    assert executions == [("slow", None)]
    async with replay.open_engine(db, workflows=[two_slow]) as engine:
        assert engine.status("r1").state is RunState.RUNNING
        assert await engine.get_run("r1").result() == ("slow", 42)
    assert executions == [("slow", None), ("double", 21)]


async def test_a_back_off_in_progress_continues_after_reopening(db: str) -> None:
    flaky = flaky_until(2)

    @replay.workflow(name="backoff")
    def backoff():  # type: ignore[no-untyped-def]
        policy = Retry(attempts=3, initial=3600, max_delay=7200, jitter=0)
        return (yield Step("f:v1", flaky, retry=policy))

    async with replay.open_engine(db, workflows=[backoff]) as engine:
        began = engine.now()
        await engine.start(backoff, run_id="r1")
        await trio.sleep(60)
        assert engine.status("r1").state is RunState.SLEEPING
    async with replay.open_engine(db, workflows=[backoff]) as engine:
        assert engine.status("r1").state is RunState.SLEEPING
        assert await engine.get_run("r1").result() == "ok"
        assert engine.now() - began >= timedelta(hours=1)
    assert executions == [("flaky", 1), ("flaky", 2)]


async def test_many_concurrent_runs_all_complete(db: str) -> None:
    @replay.workflow(name="chain")
    def chain(n: int):  # type: ignore[no-untyped-def]
        total = 0
        for i in range(5):
            total = yield Step(f"s{i}:v1", add, total, n)
        return total

    async with replay.open_engine(db, workflows=[chain], durability="none") as engine:
        runs = [await engine.start(chain, n, run_id=f"c{n}") for n in range(200)]
        outputs = [await run.result() for run in runs]
        count = await engine.sql("select count(*) from replay_events where kind = 'step'")
    assert outputs == [5 * n for n in range(200)]
    assert count == [(1000,)]


def test_replay_run_is_a_synchronous_one_call() -> None:
    assert replay.run(arith, 10) == {"sum": 11, "double": 22}

    def fails():  # type: ignore[no-untyped-def]
        yield Step("x:v1", record, "x")
        raise ValueError("nope")

    with pytest.raises(replay.WorkflowFailed,
                       match=r"^run '.*' failed: builtins.ValueError: nope$"):
        replay.run(fails)


def test_replay_run_continues_a_run_in_a_file(db: str) -> None:
    assert replay.run(arith, 1, db=db, run_id="r1") == {"sum": 2, "double": 4}
    executions.clear()
    assert replay.run(arith, 1, db=db, run_id="r1") == {"sum": 2, "double": 4}
    assert executions == []


async def test_engine_time_is_virtual_under_the_mock_clock(db: str) -> None:
    async with replay.open_engine(db, workflows=[arith]) as engine:
        began = engine.now()
        await trio.sleep(30 * 24 * 3600)
        assert engine.now() - began == timedelta(days=30)
        assert began.tzinfo is not None
