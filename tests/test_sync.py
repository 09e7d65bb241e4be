"""replay.sync and replay.run from threads (issue 14, part 2).

The engine of `replay.sync` runs on a thread of its own; these tests call it from
plain threads, many at once, and check that every call answers as the async engine
does, that timeouts leave runs alone, and that stopping the host (closing, an
exception in the ``with`` block, Ctrl-C, the interpreter exiting) loses nothing that
was acknowledged. No test sleeps to wait for the engine: threads meet on events and
barriers, and every wait has a bounded timeout as a safety net only.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb
import pytest
import trio
from childproc import ChildProcess

import replay
import replay.sync
from replay import Step, Suspend

pytestmark = pytest.mark.both_stores

ROOT = Path(__file__).resolve().parent.parent
SAFETY = 30.0  # seconds: a bound on waits that normally end at once

EXECUTED: Counter[str] = Counter()
_COUNT_LOCK = threading.Lock()
GATE = threading.Event()  # the gated step waits for it
STARTED: list[threading.Event] = []  # set by the gated step as it starts, one per run


def executed(name: str) -> None:
    with _COUNT_LOCK:
        EXECUTED[name] += 1


@pytest.fixture(autouse=True)
def fresh_state() -> Iterator[None]:
    EXECUTED.clear()
    GATE.clear()
    STARTED.clear()
    yield
    GATE.set()  # never leave a step thread blocked behind a failed test


def add(a: int, b: int) -> int:
    executed("add")
    return a + b


@replay.workflow(name="approval")
def approval(amount: int):  # type: ignore[no-untyped-def]
    total = yield Step("add:v1", add, amount, 1)
    decision = yield Suspend("approve:v1", status="waiting")
    return {"total": total, "decision": decision}


class Boom(Exception):
    pass


FAIL_ONCE: dict[str, bool] = {}


def flaky(name: str) -> str:
    executed("flaky")
    if FAIL_ONCE.pop(name, False):
        raise Boom(f"{name} failed")
    return f"{name} ok"


@replay.workflow(name="flaky")
def flaky_flow(name: str):  # type: ignore[no-untyped-def]
    return (yield Step("flaky:v1", flaky, name))


def gated(i: int) -> int:
    executed(f"gated-{i}")
    STARTED[i].set()
    assert GATE.wait(SAFETY), "the test never opened the gate"
    return i * 10


@replay.workflow(name="gated")
def gated_flow(i: int):  # type: ignore[no-untyped-def]
    value = yield Step("gated:v1", gated, i)
    return (yield Step("add:v1", add, value, 1))


def in_threads(work: Callable[[int], Any], count: int) -> list[Any]:
    """Run ``work(i)`` in `count` threads at once; return results, re-raise the first error."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            results[i] = work(i)
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SAFETY)
        assert not thread.is_alive(), "a thread did not finish"
    if errors:
        raise errors[0]
    return results


def open_engine(path: Path | str, **options: Any) -> replay.sync.Engine:
    options.setdefault("workflows", [approval, flaky_flow, gated_flow])
    options.setdefault("durability", "none")
    return replay.sync.open_engine(path, **options)


def gate_runs(count: int) -> None:
    STARTED[:] = [threading.Event() for _ in range(count)]


def wait_started(count: int) -> None:
    for i in range(count):
        assert STARTED[i].wait(SAFETY), f"gated step {i} never started"


# -- every call --


def test_every_call_answers_as_the_async_engine(tmp_path: Path) -> None:
    with open_engine(tmp_path / "calls.duckdb") as engine:
        run = engine.start(approval, 41, run_id="a-1")
        assert isinstance(run, replay.sync.Run)
        assert (run.run_id, run.workflow) == ("a-1", "approval")
        assert repr(run) == "replay.sync.Run(run_id='a-1', workflow='approval')"
        info = run.wait()
        assert (info.state, info.waiting_for, info.status_text) == (
            "suspended", "approve:v1", "waiting")
        assert engine.status("a-1") == info == run.status()
        assert engine.get_run("a-1").run_id == "a-1"
        assert engine.start(approval, 0, run_id="a-1").run_id == "a-1"  # idempotent
        assert [r.run_id for r in engine.runs()] == ["a-1"]
        assert engine.runs(state="completed") == []
        assert engine.runs(workflow="approval")[0].run_id == "a-1"

        signalled = engine.signal("a-1", "approve:v1", {"ok": True})
        assert signalled.run_id == "a-1"
        assert run.result() == {"total": 42, "decision": {"ok": True}}
        assert engine.status("a-1").state == "completed"

        events = engine.history("a-1")
        assert (events[0].kind, events[0].event) == ("run", "started")
        assert ("signal", "signalled") in [(e.kind, e.event) for e in events]
        assert engine.sql("SELECT state FROM replay_runs WHERE run_id = ?", ["a-1"]) == [
            ("completed",)]
        engine.export_history("a-1", tmp_path / "a-1.json")
        assert json.loads((tmp_path / "a-1.json").read_text())["run_id"] == "a-1"
        assert engine.now().tzinfo is not None

        FAIL_ONCE["f"] = True
        failed = engine.start(flaky_flow, "f", run_id="f-1")
        with pytest.raises(replay.WorkflowFailed) as failure:
            failed.result()
        assert failure.value.error_type == "replay.StepFailed"
        resumed = engine.resume("f-1")
        assert resumed.result() == "f ok"
        assert EXECUTED["flaky"] == 2


def test_sql_arrow_needs_pyarrow(tmp_path: Path) -> None:
    with open_engine(tmp_path / "arrow.duckdb") as engine:
        try:
            import pyarrow  # noqa: F401
        except ModuleNotFoundError:
            with pytest.raises(ModuleNotFoundError):
                engine.sql_arrow("SELECT 1 AS one")
        else:
            assert engine.sql_arrow("SELECT 1 AS one").to_pylist() == [{"one": 1}]


def test_the_options_are_those_of_replay_open_engine() -> None:
    mine = inspect.signature(replay.sync.open_engine).parameters
    theirs = inspect.signature(replay.open_engine).parameters
    assert [(p.name, p.kind, p.default) for p in mine.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()]


def test_public_names_report_the_public_module() -> None:
    assert replay.sync.__all__ == ["Engine", "Run", "open_engine"]
    for name in replay.sync.__all__:
        assert getattr(replay.sync, name).__module__ == "replay.sync"


# -- threads --


@pytest.mark.slow
def test_sixteen_threads_start_signal_and_wait_at_once(tmp_path: Path) -> None:
    # Every run's first step waits at a barrier for all 16: they can only pass it if
    # the 16 threads' runs really execute at the same time.
    barrier = threading.Barrier(16, timeout=SAFETY)

    def meet(i: int) -> int:
        barrier.wait()
        return i

    @replay.workflow(name="met")
    def met(i: int):  # type: ignore[no-untyped-def]
        value = yield Step("meet:v1", meet, i)
        decision = yield Suspend("go:v1")
        return value + decision

    with open_engine(tmp_path / "threads.duckdb", workflows=[met]) as engine:

        def client(i: int) -> Any:
            run = engine.start(met, i, run_id=f"t-{i}")
            assert run.wait(timeout=SAFETY).state == "suspended"
            engine.signal(f"t-{i}", "go:v1", 1000)
            return run.result(timeout=SAFETY), engine.status(f"t-{i}").state

        results = in_threads(client, 16)
        assert results == [(1000 + i, "completed") for i in range(16)]
        assert len(engine.runs(state="completed")) == 16


@pytest.mark.slow
def test_many_threads_read_while_others_write(tmp_path: Path) -> None:
    with open_engine(tmp_path / "mixed.duckdb") as engine:

        def client(i: int) -> int:
            if i % 2:
                run = engine.start(approval, i, run_id=f"m-{i}")
                run.wait(timeout=SAFETY)
                engine.signal(f"m-{i}", "approve:v1", i)
                return int(run.result(timeout=SAFETY)["total"])
            for _ in range(20):
                engine.runs()
                engine.sql("SELECT count(*) FROM replay_events")
            return 0

        assert sum(in_threads(client, 16)) == sum(i + 1 for i in range(16) if i % 2)


def test_a_step_may_use_the_engine_from_its_thread(tmp_path: Path) -> None:
    engines: list[replay.sync.Engine] = []

    def approve_other(run_id: str) -> str:
        engines[0].signal(run_id, "approve:v1", "by a step")
        return run_id

    @replay.workflow(name="approver")
    def approver(run_id: str):  # type: ignore[no-untyped-def]
        return (yield Step("approve-other:v1", approve_other, run_id))

    with open_engine(tmp_path / "step.duckdb", workflows=[approval, approver]) as engine:
        engines.append(engine)
        waiting = engine.start(approval, 1, run_id="waiting")
        waiting.wait(timeout=SAFETY)
        assert engine.start(approver, "waiting").result(timeout=SAFETY) == "waiting"
        assert waiting.result(timeout=SAFETY)["decision"] == "by a step"


def test_an_async_step_cannot_block_on_the_engine(tmp_path: Path) -> None:
    engines: list[replay.sync.Engine] = []

    async def start_another() -> str:
        return engines[0].start(approval, 1).run_id

    @replay.workflow(name="blocker")
    def blocker():  # type: ignore[no-untyped-def]
        return (yield Step("start:v1", start_another))

    with open_engine(tmp_path / "async.duckdb", workflows=[approval, blocker]) as engine:
        engines.append(engine)
        with pytest.raises(replay.WorkflowFailed) as failure:
            engine.start(blocker).result(timeout=SAFETY)
        assert "builtins.RuntimeError" in str(failure.value)
        assert "cannot be made from the engine's own thread" in str(failure.value)


# -- timeouts --


def test_wait_and_result_time_out_and_leave_the_run_alone(tmp_path: Path) -> None:
    with open_engine(tmp_path / "timeouts.duckdb") as engine:
        run = engine.start(approval, 1, run_id="slow")
        assert run.wait(timeout=SAFETY).state == "suspended"
        assert run.wait(timeout=0).state == "suspended"  # settled: no waiting at all
        before = engine.history("slow")
        with pytest.raises(TimeoutError, match=r"^run 'slow' did not finish within 0\.05 s "
                                               r"\(it is suspended\); it goes on unchanged"):
            run.result(timeout=0.05)
        assert engine.history("slow") == before
        assert engine.status("slow").state == "suspended"
        engine.signal("slow", "approve:v1", "yes")
        assert run.result(timeout=SAFETY)["decision"] == "yes"

        gate_runs(1)
        gated_run = engine.start(gated_flow, 0, run_id="gated")
        wait_started(1)
        with pytest.raises(TimeoutError, match="did not finish or suspend within 0.01 s "
                                               r"\(it is running\)"):
            gated_run.wait(timeout=0.01)
        GATE.set()
        assert gated_run.result(timeout=SAFETY) == 1
        assert EXECUTED["gated-0"] == 1


@pytest.mark.parametrize(("timeout", "error"), [
    ("1", TypeError), (True, TypeError), (-1, ValueError), (math.nan, ValueError)])
def test_a_bad_timeout_is_refused(tmp_path: Path, timeout: Any, error: type) -> None:
    with open_engine(tmp_path / "bad.duckdb") as engine:
        run = engine.start(approval, 1)
        with pytest.raises(error, match="timeout must be"):
            run.wait(timeout=timeout)
        with pytest.raises(error, match="timeout must be"):
            run.result(timeout=timeout)


# -- errors are replay's --


def test_errors_are_the_replay_exceptions(tmp_path: Path) -> None:
    with open_engine(tmp_path / "errors.duckdb") as engine:
        with pytest.raises(replay.WorkflowNotRegistered):
            engine.start("nobody")
        with pytest.raises(replay.EncodingError):
            engine.start(approval, object())
        with pytest.raises(TypeError, match="run_id must be a str"):
            engine.start(approval, 1, run_id=5)  # type: ignore[arg-type]
        for call in (engine.status, engine.get_run, engine.resume, engine.history,
                     lambda r: engine.signal(r, "k"),
                     lambda r: engine.export_history(r, tmp_path / "x.json")):
            with pytest.raises(replay.RunNotFound):
                call("missing")
        engine.start(approval, 1, run_id="r").wait(timeout=SAFETY)
        with pytest.raises(replay.RunIdConflict):
            engine.start(flaky_flow, "x", run_id="r")
        engine.signal("r", "approve:v1", 1)
        with pytest.raises(replay.SignalRejected):
            engine.signal("r", "approve:v1", 2)
        with pytest.raises(replay.QueryError):
            engine.sql("DELETE FROM replay_events")
        with pytest.raises(ValueError, match="unknown run state"):
            engine.runs(state="bogus")


def test_open_errors_are_the_replay_exceptions_and_free_the_file(tmp_path: Path) -> None:
    db = tmp_path / "locked.duckdb"
    with pytest.raises(TypeError, match="generator function"):
        replay.sync.open_engine(db, workflows=[add])
    with pytest.raises(ValueError, match="durability"):
        replay.sync.open_engine(db, workflows=[approval], durability="sometimes")
    with open_engine(db) as engine:
        with pytest.raises(replay.DatabaseLocked):
            open_engine(db)

        async def async_open() -> None:
            async with replay.open_engine(db, workflows=[approval]):
                pass

        with pytest.raises(replay.DatabaseLocked):
            trio.run(async_open)
        engine.start(approval, 1, run_id="kept")
    with open_engine(db) as engine:  # the failed opens left the file free
        assert engine.status("kept").state == "suspended"


# -- stopping the host --


def test_close_lets_running_steps_finish_and_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "close.duckdb"
    gate_runs(4)
    engine = open_engine(db, shutdown_timeout=SAFETY)
    runs = [engine.start(gated_flow, i, run_id=f"g-{i}") for i in range(4)]
    wait_started(4)
    closer = threading.Thread(target=engine.close)
    closer.start()
    GATE.set()  # the steps finish while (or before) the engine stops
    closer.join(SAFETY)
    assert not closer.is_alive() and engine.closed
    with pytest.raises(replay.EngineClosed):
        runs[0].result()

    with open_engine(db) as again:  # every acknowledged run is there and goes on
        assert [again.get_run(f"g-{i}").result(timeout=SAFETY) for i in range(4)] == [
            1, 11, 21, 31]
    assert all(EXECUTED[f"gated-{i}"] == 1 for i in range(4))


def test_an_exception_in_the_with_block_stops_steps_at_once(tmp_path: Path) -> None:
    db = tmp_path / "abort.duckdb"
    gate_runs(3)
    with pytest.raises(Boom), open_engine(db, shutdown_timeout=SAFETY) as engine:
        for i in range(3):
            engine.start(gated_flow, i, run_id=f"g-{i}")
        wait_started(3)
        raise Boom  # leaves the block while three steps run: they are abandoned
    assert engine.closed
    with duckdb.connect(str(db), read_only=True) as con:
        abandoned = con.execute("SELECT run_id, attempt FROM replay_events WHERE event = "
                                "'abandoned' ORDER BY run_id").fetchall()
    assert abandoned == [("g-0", 1), ("g-1", 1), ("g-2", 1)]

    GATE.set()
    gate_runs(3)
    with open_engine(db) as again:  # the abandoned attempts run again, uncharged
        assert [again.get_run(f"g-{i}").result(timeout=SAFETY) for i in range(3)] == [
            1, 11, 21]
        steps = again.sql("SELECT event, attempt FROM replay_events WHERE run_id = 'g-0' "
                          "AND key = 'gated:v1' ORDER BY seq")
    assert steps == [("abandoned", 1), ("started", 2), ("completed", 2)]


def test_calls_after_close_raise_engine_closed(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "closed.duckdb")
    run = engine.start(approval, 1, run_id="r")
    run.wait(timeout=SAFETY)
    waiting: list[BaseException] = []

    def wait_for_result() -> None:
        try:
            run.result()
        except BaseException as error:  # checked below
            waiting.append(error)

    waiter = threading.Thread(target=wait_for_result)
    waiter.start()
    engine.close()
    engine.close()  # a second close does nothing
    waiter.join(SAFETY)
    assert [type(e) for e in waiting] == [replay.EngineClosed]
    assert engine.closed and repr(engine) == "<replay.sync.Engine closed>"
    calls: list[Callable[[], Any]] = [
        lambda: engine.start(approval, 1), lambda: engine.signal("r", "approve:v1"),
        lambda: engine.resume("r"), lambda: engine.status("r"), lambda: engine.get_run("r"),
        engine.runs, lambda: engine.history("r"), lambda: engine.sql("SELECT 1"),
        lambda: engine.export_history("r", tmp_path / "r.json"), engine.now,
        run.wait, run.result, run.status,
    ]
    for call in calls:
        with pytest.raises(replay.EngineClosed, match=r"replay\.sync\.open_engine"):
            call()
    with engine, pytest.raises(replay.EngineClosed):  # entering a closed one is harmless
        engine.status("r")


CHILD = textwrap.dedent("""
    import sys, threading
    import replay, replay.sync
    from replay import Step, Suspend

    DB, MODE = sys.argv[1], sys.argv[2]

    def block():
        print("blocked", flush=True)
        if MODE == "block":
            threading.Event().wait()
        return 7

    @replay.workflow(name="stopped")
    def stopped():
        return (yield Step("block:v1", block))

    @replay.workflow(name="waiter")
    def waiter():
        yield Suspend("answer:v1")

    if MODE == "exit":  # never closed: the interpreter's exit closes it
        engine = replay.sync.open_engine(DB, workflows=[waiter])
        engine.start(waiter, run_id="z").wait()
        print("exiting", flush=True)
        sys.exit(0)
    try:
        with replay.sync.open_engine(DB, workflows=[stopped]) as engine:
            print(f"output {engine.start(stopped, run_id='s').result()}", flush=True)
    except KeyboardInterrupt:
        print("stopped by KeyboardInterrupt", flush=True)
        sys.exit(3)
""")


def child(tmp_path: Path, db: Path, mode: str) -> ChildProcess:
    script = tmp_path / "sync_child.py"
    script.write_text(CHILD)
    return ChildProcess(script, [str(db), mode], tmp_path / "child.stderr")


@pytest.mark.slow
def test_ctrl_c_while_a_call_blocks_stops_the_engine_cleanly(tmp_path: Path) -> None:
    db = tmp_path / "ctrl-c.duckdb"
    for _ in (1, 2):  # the second time, during the attempt the reopen recovered
        process = child(tmp_path, db, "block")
        try:
            assert process.line() == "blocked", process.stderr()
            process.proc.send_signal(signal.SIGINT)
            assert process.line() == "stopped by KeyboardInterrupt", process.stderr()
            assert process.exited() == 3, process.stderr()
        finally:
            process.close()
    process = child(tmp_path, db, "pass")
    try:
        assert [process.line(), process.line()] == ["blocked", "output 7"], process.stderr()
        assert process.exited() == 0, process.stderr()
    finally:
        process.close()
    with duckdb.connect(str(db), read_only=True) as con:
        steps = con.execute("SELECT event, attempt FROM replay_events WHERE kind = 'step' "
                            "ORDER BY seq").fetchall()
        states = con.execute("SELECT state FROM replay_runs").fetchall()
    assert steps == [("abandoned", 1), ("started", 2), ("abandoned", 2), ("started", 3),
                     ("completed", 3)]
    assert states == [("completed",)]


@pytest.mark.slow
def test_an_engine_left_open_is_closed_cleanly_at_exit(tmp_path: Path) -> None:
    db = tmp_path / "exit.duckdb"
    process = child(tmp_path, db, "exit")
    try:
        assert process.line() == "exiting", process.stderr()
        assert process.exited() == 0, process.stderr()
    finally:
        process.close()
    # A clean close folds the write-ahead log into the file and removes it.
    assert not Path(f"{db}.wal").exists()
    assert not Path(f"{db}.sock").exists()  # the command channel was closed too
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT state FROM replay_runs").fetchall() == [("suspended",)]


# -- replay.run from several threads on one file --


@pytest.mark.slow
def test_replay_run_from_sixteen_threads_shares_the_file(tmp_path: Path) -> None:
    db = tmp_path / "shared.duckdb"
    barrier = threading.Barrier(16, timeout=SAFETY)

    def meet(i: int) -> int:
        barrier.wait()  # passes only if the 16 runs execute at the same time
        return i * 2

    @replay.workflow(name="together")
    def together(i: int):  # type: ignore[no-untyped-def]
        return (yield Step("meet:v1", meet, i))

    assert in_threads(lambda i: replay.run(together, i, db=db, run_id=f"r-{i}"), 16) == [
        i * 2 for i in range(16)]
    # The file is free once the last call returned, and every run is recorded.
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM replay_runs WHERE state = 'completed'"
                           ).fetchall() == [(16,)]
    # Again: the recorded outputs come back, and nothing runs.
    barrier.reset()
    assert in_threads(lambda i: replay.run(together, i, db=db, run_id=f"r-{i}"), 16) == [
        i * 2 for i in range(16)]


@pytest.mark.slow
def test_replay_run_of_different_workflows_on_one_file(tmp_path: Path) -> None:
    db = tmp_path / "different.duckdb"

    @replay.workflow(name="plus")
    def plus(i: int):  # type: ignore[no-untyped-def]
        return (yield Step("add:v1", add, i, 1))

    @replay.workflow(name="minus")
    def minus(i: int):  # type: ignore[no-untyped-def]
        return -(yield Step("add:v1", add, i, 1))

    def call(i: int) -> Any:
        return replay.run(plus if i % 3 else minus, i, db=db, run_id=f"r-{i}")

    assert in_threads(call, 16) == [(i + 1) * (1 if i % 3 else -1) for i in range(16)]
    assert EXECUTED["add"] == 16


def test_replay_run_waits_for_a_workflow_of_the_same_name(tmp_path: Path) -> None:
    db = tmp_path / "same-name.duckdb"
    gate_runs(1)

    @replay.workflow(name="gated")
    def other_gated(i: int):  # type: ignore[no-untyped-def]
        return (yield Step("add:v1", add, i, 100))

    first: list[Any] = []
    thread = threading.Thread(target=lambda: first.append(
        replay.run(gated_flow, 0, db=db, run_id="one")))
    thread.start()
    wait_started(1)
    second: list[Any] = []
    waiter = threading.Thread(target=lambda: second.append(
        replay.run(other_gated, 1, db=db, run_id="two")))
    waiter.start()  # another function named "gated": it needs an engine of its own
    GATE.set()
    thread.join(SAFETY)
    waiter.join(SAFETY)
    assert (first, second) == ([1], [101])


def test_replay_run_next_to_an_engine_of_this_process_names_replay_sync(
        tmp_path: Path) -> None:
    db = tmp_path / "held.duckdb"
    with open_engine(db), pytest.raises(replay.DatabaseLocked,
                                        match=r"replay\.sync\.open_engine"):
        replay.run(approval, 1, db=db)
    assert replay.run(flaky_flow, "after", db=db) == "after ok"  # the file is free again


def test_replay_run_inside_a_step_never_waits_for_its_own_engine(tmp_path: Path) -> None:
    db = tmp_path / "nested.duckdb"

    def inner(n: int) -> Any:
        if n == 0:
            return 0
        return replay.run(countdown, n - 1, db=db, run_id=f"c-{n - 1}")  # same engine

    @replay.workflow(name="countdown")
    def countdown(n: int):  # type: ignore[no-untyped-def]
        return (yield Step("inner:v1", inner, n)) + n

    assert replay.run(countdown, 3, db=db, run_id="c-3") == 6

    def other(n: int) -> Any:
        return replay.run(flaky_flow, "inner", db=db)  # the engine does not know it

    @replay.workflow(name="outer")
    def outer():  # type: ignore[no-untyped-def]
        return (yield Step("other:v1", other, 1))

    with pytest.raises(replay.WorkflowFailed, match="could wait for this very step"):
        replay.run(outer, db=db)


def test_replay_run_of_a_bad_workflow_fails_alone(tmp_path: Path) -> None:
    db = tmp_path / "bad.duckdb"

    def call(i: int) -> Any:
        if i == 3:
            with pytest.raises(TypeError, match="generator function"):
                replay.run(add, 1, db=db)  # type: ignore[arg-type]
            return None
        return replay.run(flaky_flow, str(i), db=db, run_id=f"r-{i}")

    assert in_threads(call, 8) == [None if i == 3 else f"{i} ok" for i in range(8)]


async def test_replay_run_refuses_to_block_a_trio_run(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="cannot be called from inside a trio run"):
        replay.run(flaky_flow, "x", db=tmp_path / "trio.duckdb")


# -- the example and the benchmark --


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_threads_app_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("threads_app")
    db = str(tmp_path / "threads_app.duckdb")
    first = example.main(db)
    assert first["states"] == {f"req-{i:02}": "completed" for i in range(1, 17)}
    ordered = {r for r, o in first["outputs"].items() if o["state"] == "ordered"}
    assert ordered == {"req-01", "req-02", "req-03", "req-04"}  # below 500.00 EUR
    assert first["outputs"]["req-01"]["order"] == "po-req-01-order:v1"
    assert first["executed"] == {"record_request": 16, "place_order": 4}
    assert "16 threads filed 16 requests: {'suspended': 16}" in capsys.readouterr().out

    again = example.main(db)  # the same file: everything is decided, nothing runs
    assert again["outputs"] == first["outputs"]
    assert again["executed"] == {}


@pytest.mark.slow
def test_hosting_benchmark_smoke() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hosting.py"), "--smoke"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["smoke"] is True
    modes = {key.rsplit("_", 1)[0] for key in result["figures"]}
    assert {"status_trio", "status_sync", "start_result_trio", "start_result_sync"} <= set(
        result["figures"]), modes
    for figure in result["figures"].values():
        assert isinstance(figure["value"], float) and figure["value"] > 0


def _interrupt_as_the_thread_reports_open(opened: list[Any]) -> Callable[..., Any]:
    from replay.sync import _host

    original = _host.EngineHost.open

    def interrupted(self: Any) -> Any:
        original(self)
        opened.append(self)
        raise KeyboardInterrupt

    return interrupted


def _interrupt_fetching_the_web_address(opened: list[Any]) -> Callable[..., Any]:
    def interrupted(self: Any, function: Any, *args: Any) -> Any:
        opened.append(self._host)
        raise KeyboardInterrupt

    return interrupted


@pytest.mark.parametrize(("target", "interrupt"), [
    ("replay.sync._host.EngineHost.open", _interrupt_as_the_thread_reports_open),
    ("replay.sync._lifecycle.Lifecycle.call_sync", _interrupt_fetching_the_web_address),
], ids=["as-the-thread-reports-open", "fetching-the-web-address"])
def test_ctrl_c_after_the_engine_opened_but_before_open_engine_returned_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str,
    interrupt: Callable[[list[Any]], Callable[..., Any]],
) -> None:
    # Ctrl-C can land after the engine's thread has opened the file (recovered runs
    # may be executing already) but before `open_engine` hands the engine back: the
    # caller never holds it, so `open_engine` itself must stop it. Left running, its
    # daemon thread died with the process, and the steps it had started were found
    # interrupted at the next open instead of abandoned.
    db = tmp_path / "interrupted-open.duckdb"
    opened: list[Any] = []  # the engine's host, as the interruption came
    monkeypatch.setattr(target, interrupt(opened))
    with pytest.raises(KeyboardInterrupt):
        replay.sync.open_engine(db, workflows=[])
    assert len(opened) == 1 and not opened[0].running  # stopped, its file closed
    monkeypatch.undo()
    with replay.sync.open_engine(db, workflows=[]) as engine:  # the file is free again
        assert engine.runs() == []
