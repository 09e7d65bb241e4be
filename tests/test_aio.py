"""replay.aio: the trio engine as a guest of an asyncio loop.

Each test drives asyncio with `asyncio.run` from a plain (sync) test function; the
conftest runs only coroutine tests under trio. Nothing waits for the engine in real
time: the tests wait on runs, events and calls; `asyncio.timeout` is only a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import replay
import replay.aio
from replay import RunState, Step, Suspend

pytestmark = pytest.mark.both_stores

SAFETY = 60.0  # seconds; a test that takes longer has hung


def run_asyncio(main: Callable[[], Awaitable[Any]]) -> Any:
    """asyncio.run(main()), then check that no trio run is left in this thread."""
    async def bounded() -> Any:
        async with asyncio.timeout(SAFETY):
            return await main()
    try:
        return asyncio.run(bounded())
    finally:
        with pytest.raises(RuntimeError):
            trio.lowlevel.current_trio_token()  # the guest run has ended with the engines


def guest_calls() -> int:
    """How many asyncio calls are running as trio tasks in the guest run right now."""
    def walk(task: trio.lowlevel.Task) -> list[trio.lowlevel.Task]:
        return [task, *(found for nursery in task.child_nurseries
                        for child in nursery.child_tasks for found in walk(child))]

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return sum(task.name.endswith("_Call.run") for task in walk(root))


# --- workflows ---

_LOCK = threading.Lock()
EXECUTED: Counter[str] = Counter()


def add_one(x: int) -> int:
    return x + 1


def boom() -> None:
    raise ValueError("boom")


@replay.workflow(name="flow")
def flow(x: int):
    y = yield Step("add:v1", add_one, x)
    z = yield Suspend("go")
    return {"y": y, "z": z}


@replay.workflow(name="failing")
def failing():
    yield Step("boom:v1", boom)


@replay.workflow(name="one-step")
def one_step(x: int):
    return (yield Step("add:v1", add_one, x))


def not_a_workflow() -> None:
    pass


# --- each call, the same answers as the trio engine ---


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def scenario(engine: Any, export: Path) -> list[Any]:
    """The same calls on a trio `replay.Engine` or a `replay.aio.Engine`."""
    seen: list[Any] = []
    run = await engine.start(flow, 41, run_id="r1")
    seen.append((type(run).__name__, run.run_id, run.workflow))
    info = await run.wait()
    seen.append((info.state, info.waiting_for))
    seen.append((await maybe_await(engine.status("r1"))).state)
    seen.append((await engine.start(flow, 0, run_id="r1")).run_id)  # idempotent
    handle = await maybe_await(engine.get_run("r1"))
    seen.append((await engine.signal("r1", "go", "yes")).run_id)
    seen.append(await handle.result())
    seen.append([(i.run_id, i.state) for i in await engine.runs(state="completed")])
    seen.append([(e.kind, e.key, e.event, e.value) for e in await engine.history("r1")])
    seen.append(await engine.sql("SELECT key, event FROM replay_events WHERE run_id = ? "
                                 "ORDER BY seq", ["r1"]))
    await engine.export_history("r1", export)
    document = json.loads(export.read_text())
    seen.append((document["run_id"], len(document["records"])))
    failed = await engine.start(failing, run_id="f1")
    with pytest.raises(replay.WorkflowFailed) as failure:
        await failed.result()
    seen.append(str(failure.value))
    resumed = await engine.resume("f1")  # the step fails again
    seen.append((await resumed.wait()).state)
    return seen


def test_each_call_answers_as_the_trio_engine_does(tmp_path: Path) -> None:
    async def on_trio() -> list[Any]:
        async with replay.open_engine(workflows=[flow, failing], durability="none") as engine:
            return await scenario(engine, tmp_path / "trio.json")

    async def on_asyncio() -> list[Any]:
        async with replay.aio.open_engine(workflows=[flow, failing],
                                          durability="none") as engine:
            assert isinstance(engine, replay.aio.Engine)
            return await scenario(engine, tmp_path / "aio.json")

    expected = trio.run(on_trio)
    seen = run_asyncio(on_asyncio)
    assert seen[0] == ("Run", "r1", "flow")
    assert seen[1:] == expected[1:]
    assert seen[1] == (RunState.SUSPENDED, "go")
    assert seen[5] == {"y": 42, "z": "yes"}
    assert seen[-1] is RunState.FAILED


async def bad_calls(engine: Any) -> list[tuple[str, str]]:
    """Every call that must fail, with the class and message of what it raised."""
    await engine.start(flow, 1, run_id="r1")
    await (await engine.signal("r1", "go", 1)).result()  # completed
    await engine.start(failing, run_id="f1")
    calls: list[Callable[[], Any]] = [
        lambda: engine.status("nope"),
        lambda: engine.get_run("nope"),
        lambda: engine.start("no-such-workflow"),
        lambda: engine.start(failing, run_id="r1"),
        lambda: engine.start(flow, object()),
        lambda: engine.start(flow, 1, run_id=5),
        lambda: engine.start(flow, 1, run_id=""),
        lambda: engine.signal("r1", "go", 2),
        lambda: engine.signal("r1", "", 2),
        lambda: engine.signal("nope", "go", 2),
        lambda: engine.resume("nope"),
        lambda: engine.runs(limit=-1),
        lambda: engine.runs(state="bogus"),
        lambda: engine.history("nope"),
        lambda: engine.sql("DELETE FROM replay_events"),
        lambda: engine.sql("SELECT 1", timeout=0),
        lambda: engine.export_history("nope", "nowhere.json"),
        lambda: engine.get_run("f1"),
    ]
    errors = []
    for call in calls:
        try:
            result = await maybe_await(call())
            if hasattr(result, "result"):  # the failed run's handle
                await result.result()
        except Exception as error:
            errors.append((f"{type(error).__module__}.{type(error).__qualname__}", str(error)))
        else:
            errors.append(("no error", repr(call)))
    return errors


def test_errors_are_replays_own_classes_and_messages() -> None:
    async def on_trio() -> list[tuple[str, str]]:
        async with replay.open_engine(workflows=[flow, failing], durability="none") as engine:
            return await bad_calls(engine)

    async def on_asyncio() -> list[tuple[str, str]]:
        async with replay.aio.open_engine(workflows=[flow, failing],
                                          durability="none") as engine:
            return await bad_calls(engine)

    expected = trio.run(on_trio)
    assert run_asyncio(on_asyncio) == expected
    assert {kind for kind, _ in expected} == {
        "replay.RunNotFound", "replay.WorkflowNotRegistered", "replay.RunIdConflict",
        "replay.EncodingError", "builtins.TypeError", "builtins.ValueError",
        "replay.SignalRejected", "replay.QueryError", "replay.WorkflowFailed"}


@pytest.mark.parametrize(("options", "error"), [
    ({"durability": "bogus"}, ValueError),
    ({"shutdown_timeout": -1}, ValueError),
    ({"max_threads": "many"}, TypeError),
    ({"workflows": [not_a_workflow]}, TypeError),
])
def test_open_errors_are_those_of_replay_open_engine(options: dict[str, Any],
                                                     error: type[Exception]) -> None:
    options = {"workflows": [flow], **options}

    async def on_trio() -> str:
        with pytest.raises(error) as raised:
            async with replay.open_engine(**options):
                pass
        return str(raised.value)

    async def on_asyncio() -> str:
        with pytest.raises(error) as raised:
            async with replay.aio.open_engine(**options):
                pass
        return str(raised.value)

    assert run_asyncio(on_asyncio) == trio.run(on_trio)


def test_open_engine_takes_the_options_of_replay_open_engine() -> None:
    trio_side = dict(inspect.signature(replay.open_engine).parameters)
    aio_side = dict(inspect.signature(replay.aio.open_engine).parameters)
    assert aio_side.pop("clock").default is None
    assert [(p.name, p.kind, p.default) for p in aio_side.values()] == [
        (p.name, p.kind, p.default) for p in trio_side.values()]


def test_a_second_engine_on_the_same_file_is_locked_out(tmp_path: Path) -> None:
    db = tmp_path / "one.duckdb"

    async def main() -> None:
        async with replay.aio.open_engine(db, workflows=[flow], durability="none"):
            with pytest.raises(replay.DatabaseLocked):
                async with replay.aio.open_engine(db, workflows=[flow], durability="none"):
                    pass

    run_asyncio(main)


# --- cancellation ---


def test_cancelling_a_caller_cancels_its_call_on_the_trio_side() -> None:
    async def main() -> None:
        async with replay.aio.open_engine(workflows=[flow], durability="none") as engine:
            run = await engine.start(flow, 1, run_id="r")
            assert (await run.wait()).state is RunState.SUSPENDED

            waiter = asyncio.create_task(run.result())  # waits through the suspension
            await asyncio.sleep(0)  # the task submits its call
            await engine.runs()  # a call submitted later: the result() call has begun
            assert guest_calls() == 1
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert guest_calls() == 0  # the caller resumed after the trio side ended

            # A timeout is a cancellation too.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(run.result(), timeout=0.01)
            assert guest_calls() == 0

            # The run did not notice: a signal still finishes it.
            assert (await engine.status("r")).state is RunState.SUSPENDED
            await engine.signal("r", "go", "late")
            assert await run.result() == {"y": 2, "z": "late"}

    run_asyncio(main)


def test_cancelling_a_query_stops_it() -> None:
    async def main() -> None:
        async with replay.aio.open_engine(workflows=[flow], durability="none") as engine:
            # Minutes of work if it were not stopped.
            query = asyncio.create_task(
                engine.sql("SELECT count(*) FROM range(1000000000000)", timeout=None))
            await asyncio.sleep(0)
            await engine.runs()  # the query's call has begun
            query.cancel()
            with pytest.raises(asyncio.CancelledError):
                await query
            assert guest_calls() == 0
            assert await engine.sql("SELECT 42") == [(42,)]

    run_asyncio(main)


def test_a_call_waiting_when_the_engine_closes_gets_engine_closed() -> None:
    async def main() -> None:
        async with replay.aio.open_engine(workflows=[flow], durability="none") as engine:
            run = await engine.start(flow, 1, run_id="r")
            await run.wait()
            waiter = asyncio.create_task(run.result())
            await asyncio.sleep(0)
            await engine.runs()
        with pytest.raises(replay.EngineClosed):
            await waiter
        with pytest.raises(replay.EngineClosed, match=r"replay\.aio\.open_engine\(\)"):
            await engine.status("r")  # the guest run has ended too
        with pytest.raises(replay.EngineClosed):
            await run.wait()

    run_asyncio(main)


def test_an_engine_failing_under_the_body_cancels_it_and_raises_at_its_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_open_engine = replay.open_engine

    @contextlib.asynccontextmanager
    async def failing_engine(*args: Any, **kwargs: Any) -> AsyncIterator[replay.Engine]:
        """The real engine, and a service beside it that fails (a commit that failed)."""
        async def fail() -> None:
            await trio.sleep(0)
            raise replay.DatabaseError("disk full")

        async with real_open_engine(*args, **kwargs) as engine, \
                trio.open_nursery() as services:
            services.start_soon(fail)
            yield engine

    monkeypatch.setattr(replay, "open_engine", failing_engine)

    async def main() -> None:
        with pytest.raises(replay.DatabaseError, match="disk full"):
            async with replay.aio.open_engine(workflows=[flow], durability="none"):
                await asyncio.Event().wait()  # cancelled when the engine fails
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # not left half-cancelled

    run_asyncio(main)


# --- stopping the host while steps run ---

HANG = True
RUNNING: list[int] = []
ALL_RUNNING: asyncio.Event | None = None
RUNS = 10


def first_step(x: int) -> int:
    with _LOCK:
        EXECUTED["first"] += 1
    return x


async def slow_step(x: int) -> int:
    EXECUTED["slow"] += 1
    if HANG:
        RUNNING.append(x)
        if len(RUNNING) == RUNS and ALL_RUNNING is not None:
            ALL_RUNNING.set()  # trio and asyncio share the thread: no locking needed
        await trio.sleep_forever()
    return x * 10


@replay.workflow(name="slow")
def slow():
    x = yield Suspend("go")
    a = yield Step("first:v1", first_step, x)
    return (yield Step("slow:v1", slow_step, a))


@pytest.mark.parametrize("how", ["body raises", "task cancelled", "clean exit",
                                 "loop ends"])
def test_stopping_the_host_while_steps_run_loses_nothing(tmp_path: Path, how: str) -> None:
    global HANG, ALL_RUNNING
    db = tmp_path / "host.duckdb"
    EXECUTED.clear()
    RUNNING.clear()
    HANG = True
    # A clean exit gives running steps no time here: they are abandoned at once.
    options: dict[str, Any] = {"workflows": [slow], "shutdown_timeout": 0.0}

    async def serve(started: asyncio.Event) -> None:
        async with replay.aio.open_engine(db, **options) as engine:
            for i in range(RUNS):
                await engine.start(slow, run_id=f"run-{i}")
                await engine.signal(f"run-{i}", "go", i)  # acknowledged: durable
            await started.wait()
            if how == "body raises":
                raise RuntimeError("the host stops")
            if how in ("task cancelled", "loop ends"):
                await asyncio.Event().wait()  # until cancelled

    async def first_process() -> None:
        global ALL_RUNNING
        ALL_RUNNING = asyncio.Event()
        host = asyncio.create_task(serve(ALL_RUNNING))
        await asyncio.wait([host, asyncio.create_task(ALL_RUNNING.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if host.done():
            host.result()  # it failed early: show why
        if how == "loop ends":
            return  # asyncio.run cancels the host task, which closes the engine
        if how == "task cancelled":
            host.cancel()
            with pytest.raises(asyncio.CancelledError):
                await host
        elif how == "body raises":
            with pytest.raises(RuntimeError, match="the host stops"):
                await host
        else:
            await host

    run_asyncio(first_process)
    assert sorted(RUNNING) == list(range(RUNS))
    assert EXECUTED == {"first": RUNS, "slow": RUNS}

    HANG = False

    async def second_process() -> list[Any]:
        async with replay.aio.open_engine(db, **options) as engine:
            outputs = [await (await engine.get_run(f"run-{i}")).result() for i in range(RUNS)]
            abandoned = await engine.sql(
                "SELECT count(*) FROM replay_events WHERE key = 'slow:v1' "
                "AND event = 'abandoned'")
            return [outputs, abandoned]

    outputs, abandoned = run_asyncio(second_process)
    assert outputs == [i * 10 for i in range(RUNS)]  # each run's signal was kept
    assert EXECUTED == {"first": RUNS, "slow": 2 * RUNS}  # recorded steps did not run again
    assert abandoned == [(RUNS,)]  # a stop, not a crash: nothing was charged


# --- several engines, one guest run ---


def test_two_engines_on_one_loop_share_one_guest_run(tmp_path: Path) -> None:
    async def main() -> None:
        async with replay.aio.open_engine(tmp_path / "a.duckdb", workflows=[one_step],
                                          durability="none") as a:
            token = trio.lowlevel.current_trio_token()
            async with replay.aio.open_engine(tmp_path / "b.duckdb", workflows=[one_step],
                                              durability="none") as b:
                assert trio.lowlevel.current_trio_token() is token
                runs = await asyncio.gather(*(engine.start(one_step, i, run_id=f"r{i}")
                                              for i, engine in enumerate([a, b, a, b])))
                results = await asyncio.gather(*(run.result() for run in runs))
                assert results == [1, 2, 3, 4]
                assert sorted(i.run_id for i in await a.runs()) == ["r0", "r2"]
                assert sorted(i.run_id for i in await b.runs()) == ["r1", "r3"]
            # b is closed; a goes on in the same guest run.
            assert trio.lowlevel.current_trio_token() is token
            for call in (b.start(one_step, 9), b.status("r1"), runs[1].wait()):
                with pytest.raises(replay.EngineClosed, match="the engine is closed"):
                    await call
            assert await (await a.start(one_step, 9)).result() == 10
            # b's file can be opened again beside a.
            async with replay.aio.open_engine(tmp_path / "b.duckdb", workflows=[one_step],
                                              durability="none") as b2:
                assert await (await b2.get_run("r3")).result() == 4

    run_asyncio(main)


def test_engines_opened_and_closed_concurrently(tmp_path: Path) -> None:
    async def one(i: int) -> int:
        async with replay.aio.open_engine(tmp_path / f"{i}.duckdb", workflows=[one_step],
                                          durability="none") as engine:
            result: int = await (await engine.start(one_step, i)).result()
            return result

    async def main() -> list[int]:
        first = await asyncio.gather(*(one(i) for i in range(5)))
        second = await asyncio.gather(*(one(i) for i in range(5)))  # a new guest run
        return first + second

    assert run_asyncio(main) == [1, 2, 3, 4, 5] * 2
    trio.run(trio.sleep, 0)  # the thread is free for trio again


# --- what cannot work says so ---


def test_an_engine_is_called_from_the_loop_that_opened_it() -> None:
    async def main() -> None:
        async with replay.aio.open_engine(workflows=[flow], durability="none") as engine:
            settled = await (await engine.start(flow, 1, run_id="r")).wait()
            elsewhere = asyncio.to_thread(asyncio.run, engine.status("r"))  # another loop
            with pytest.raises(replay.ReplayError, match="run_coroutine_threadsafe"):
                await elsewhere
            # ... which is how another thread gets its answer.
            loop = asyncio.get_running_loop()
            answer = asyncio.run_coroutine_threadsafe(engine.status("r"), loop)
            info = await asyncio.to_thread(answer.result, SAFETY)
            assert info == settled

    run_asyncio(main)


def test_another_trio_guest_run_on_the_loop_is_refused() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = trio.Event()
        done: asyncio.Future[None] = loop.create_future()
        trio.lowlevel.start_guest_run(
            stop.wait, run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=lambda outcome: done.set_result(outcome.unwrap()),
            host_uses_signal_set_wakeup_fd=True)
        try:
            with pytest.raises(replay.ReplayError,
                               match="a trio run is already active in this thread"):
                async with replay.aio.open_engine(workflows=[flow]):
                    pass
        finally:
            trio.lowlevel.current_trio_token().run_sync_soon(stop.set)
            await done

    run_asyncio(main)


def test_a_fake_clock_is_refused() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="always runs on the real clock"):
            async with replay.aio.open_engine(
                    workflows=[flow],
                    clock=trio.testing.MockClock(autojump_threshold=0)):  # type: ignore[arg-type]
                pass

    run_asyncio(main)


async def test_replay_aio_under_trio_points_to_replay_open_engine() -> None:
    with pytest.raises(replay.ReplayError, match=r"under trio, use replay\.open_engine\(\)"):
        async with replay.aio.open_engine(workflows=[flow]):
            pass


def test_replay_aio_outside_any_loop_says_it_needs_asyncio() -> None:
    manager = replay.aio.open_engine(workflows=[flow])
    with pytest.raises(replay.ReplayError, match="needs a running asyncio loop"):
        manager.__aenter__().send(None)


def test_replay_open_engine_under_asyncio_points_to_replay_aio() -> None:
    async def main() -> None:
        async with replay.open_engine(workflows=[flow]):
            pass

    try:
        asyncio.run(main())
    except replay.ReplayError as error:
        assert "replay.aio.open_engine" in str(error)
    except RuntimeError as error:
        # trio's own error: replay.open_engine does not check for asyncio yet.
        pytest.skip(f"replay.open_engine gives trio's error under asyncio: {error}")
    else:
        pytest.fail("replay.open_engine opened under asyncio")
