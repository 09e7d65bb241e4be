"""`cancel`, `terminate` and `start(..., timeout=...)` in every hosting façade.

`replay.aio` and `replay.sync` run the engine on the real clock: the tests wait on runs,
never on the clock (a run's deadline is checked in its ``run/started`` record). The
clients of `replay.connect` and `replay.connect_async` call an engine in this process
under the virtual clock, from a worker thread, so a deadline passes in virtual time.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import replay
import replay.aio
import replay.sync
from replay import RunState, Step, Suspend
from replay._engine._clock import in_thread

SAFETY = 60.0  # seconds; a test that takes longer has hung
COMPENSATED: list[tuple[str, Any]] = []
_LOCK = threading.Lock()


def refund(order_id: str, reason: Any) -> str:
    with _LOCK:
        COMPENSATED.append((order_id, reason))
    return f"refunded {order_id}"


@replay.workflow(name="order")
def order(order_id: str):  # type: ignore[no-untyped-def]
    try:
        shipped = yield Suspend("ship:v1", status="waiting for the warehouse")
    except replay.Cancelled as cancelled:
        yield Step("refund:v1", refund, order_id, cancelled.reason)
        raise
    return shipped


@replay.workflow(name="patient")
def patient():  # type: ignore[no-untyped-def]
    """Its compensation waits for a signal nobody sends: only `terminate` ends it."""
    try:
        yield Suspend("go:v1")
    except replay.Cancelled:
        yield Suspend("undo:v1")
        raise
    return "done"


WORKFLOWS = [order, patient]


@pytest.fixture(autouse=True)
def _fresh() -> None:
    COMPENSATED.clear()


def deadline_of(events: list[replay.Event]) -> timedelta:
    """How long after its start a run's deadline is (its ``run/started`` record)."""
    started = events[0]
    assert (started.kind, started.event) == ("run", "started")
    assert started.wake_at is not None and started.recorded_at is not None
    return started.wake_at - started.recorded_at


def within_an_hour(gap: timedelta) -> bool:
    # The deadline is counted from the call; the record is stamped a moment later.
    return timedelta(minutes=59) < gap <= timedelta(hours=1)


# -- the same arguments as replay.Engine --


@pytest.mark.parametrize("facade", [replay.aio.Engine, replay.sync.Engine, replay.Client,
                                    replay.AsyncClient])
@pytest.mark.parametrize("method", ["start", "cancel", "terminate"])
def test_the_facades_take_the_engines_arguments(facade: type, method: str) -> None:
    def parameters(function: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default)
                for p in inspect.signature(function).parameters.values()]

    assert parameters(getattr(facade, method)) == parameters(getattr(replay.Engine, method))


# -- replay.aio --


def run_asyncio(main: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(SAFETY):
            return await main()
    return asyncio.run(bounded())


def test_aio_cancel_terminate_and_a_deadline(tmp_path: Path) -> None:
    async def main() -> None:
        async with replay.aio.open_engine(tmp_path / "aio.duckdb", workflows=WORKFLOWS,
                                          durability="none") as engine:
            run = await engine.start(order, "o-1", run_id="o1")
            assert (await run.wait()).state is RunState.SUSPENDED
            cancelled = await engine.cancel("o1", reason={"by": "support"})
            assert repr(cancelled) == "replay.aio.Run(run_id='o1', workflow='order')"
            with pytest.raises(replay.WorkflowFailed) as failed:
                await cancelled.result()
            assert failed.value.error_type == "replay.Cancelled"
            assert COMPENSATED == [("o-1", {"by": "support"})]
            assert (await engine.status("o1")).state is RunState.CANCELLED

            with pytest.raises(replay.RunFinished) as finished:
                await engine.cancel("o1")
            assert (finished.value.run_id, finished.value.state) == ("o1", "cancelled")
            with pytest.raises(replay.RunNotFound):
                await engine.terminate("zz")
            with pytest.raises(replay.EncodingError):
                await engine.cancel("o1", reason=object())

            await (await engine.start(patient, run_id="p1")).wait()
            await engine.cancel("p1")
            await engine.cancel("p1")  # a second cancel changes nothing
            info = await (await engine.get_run("p1")).wait()
            assert (info.state, info.waiting_for) == (RunState.SUSPENDED, "undo:v1")
            ended = await engine.terminate("p1", reason="hung")
            assert isinstance(ended, replay.aio.Run)
            info = await engine.status("p1")
            assert (info.state, info.error_type) == (RunState.CANCELLED, "replay.Cancelled")

            timed = await engine.start(order, "o-2", run_id="o2", timeout=3600)
            assert within_an_hour(deadline_of(await engine.history(timed.run_id)))
            with pytest.raises(ValueError, match="timeout"):
                await engine.start(order, "o-3", timeout=-1)

    run_asyncio(main)


# -- replay.sync --


def test_sync_cancel_terminate_and_a_deadline(tmp_path: Path) -> None:
    with replay.sync.open_engine(tmp_path / "sync.duckdb", workflows=WORKFLOWS,
                                 durability="none") as engine:
        run = engine.start(order, "o-1", run_id="o1")
        assert run.wait(timeout=SAFETY).state is RunState.SUSPENDED
        cancelled = engine.cancel("o1", "customer asked")
        assert repr(cancelled) == "replay.sync.Run(run_id='o1', workflow='order')"
        with pytest.raises(replay.WorkflowFailed) as failed:
            cancelled.result(timeout=SAFETY)
        assert (failed.value.error_type, failed.value.message) == (
            "replay.Cancelled", "customer asked")
        assert COMPENSATED == [("o-1", "customer asked")]

        with pytest.raises(replay.RunFinished, match="a finished run cannot be cancelled"):
            engine.cancel("o1")
        with pytest.raises(replay.RunFinished, match="a finished run cannot be terminated"):
            engine.terminate("o1")
        with pytest.raises(replay.RunNotFound):
            engine.cancel("zz")

        engine.start(patient, run_id="p1").wait(timeout=SAFETY)
        engine.cancel("p1")
        assert engine.get_run("p1").wait(timeout=SAFETY).waiting_for == "undo:v1"
        assert engine.terminate("p1").run_id == "p1"
        assert engine.status("p1").state is RunState.CANCELLED

        engine.start(order, "o-2", run_id="o2", timeout=timedelta(hours=1))
        assert within_an_hour(deadline_of(engine.history("o2")))
        with pytest.raises(TypeError, match="timeout"):
            engine.start(order, "o-3", timeout="soon")  # type: ignore[arg-type]


# -- replay.connect and replay.connect_async --


async def test_a_client_cancels_and_terminates(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none") as engine:
        await (await engine.start(order, "o-1", run_id="o1")).wait()
        await (await engine.start(patient, run_id="p1")).wait()
        client = replay.Client(db)

        cancelled = await in_thread(client.cancel, "o1", ("late", 3))
        assert repr(cancelled) == "RemoteRun(run_id='o1', workflow='order')"
        with pytest.raises(replay.WorkflowFailed) as failed:
            await engine.get_run("o1").result()
        assert failed.value.error_type == "replay.Cancelled"
        assert COMPENSATED == [("o-1", ("late", 3))]  # the reason, as the client sent it

        with pytest.raises(replay.RunFinished) as finished:
            await in_thread(client.terminate, "o1")
        assert (finished.value.run_id, finished.value.state) == ("o1", "cancelled")
        assert str(finished.value) == "run 'o1' is cancelled; a finished run cannot be terminated"
        with pytest.raises(replay.RunNotFound) as missing:
            await in_thread(client.cancel, "zz")
        assert missing.value.run_id == "zz"
        with pytest.raises(replay.EncodingError):
            client.cancel("p1", reason=object())  # refused here: nothing is sent
        with pytest.raises(TypeError, match="run_id must be a str"):
            client.terminate(7)  # type: ignore[arg-type]

        await in_thread(client.cancel, "p1")
        await in_thread(client.cancel, "p1")  # a second cancel changes nothing
        assert (await engine.get_run("p1").wait()).waiting_for == "undo:v1"
        ended = await in_thread(client.terminate, "p1", "hung")
        assert ended.run_id == "p1" and engine.status("p1").state is RunState.CANCELLED
        assert [e.value for e in await engine.history("p1") if e.event == "cancelled"
                and e.kind == "run"] == ["hung"]


async def test_a_clients_deadline_passes_in_the_engine(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none") as engine:
        client = replay.Client(db)
        run = await in_thread(lambda: client.start(order, "o-1", run_id="o1", timeout=60))
        assert deadline_of(await engine.history(run.run_id)) == timedelta(seconds=60)
        before = engine.now()
        with pytest.raises(replay.WorkflowFailed) as failed:
            await engine.get_run("o1").result()  # virtual time runs to the deadline
        assert (failed.value.error_type, failed.value.message) == (
            "replay.Cancelled", "the run's deadline passed")
        assert engine.now() - before >= timedelta(seconds=59)
        assert COMPENSATED == [("o-1", "the run's deadline passed")]
        with pytest.raises(ValueError, match="timeout"):
            await in_thread(lambda: client.start(order, "o-2", timeout=0))
        with pytest.raises(TypeError, match="timeout must be a timedelta or a number"):
            client.start(order, "o-2", timeout=[60])  # type: ignore[arg-type]


async def test_an_async_client_cancels_and_terminates(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none") as engine:
        await (await engine.start(order, "o-1", run_id="o1")).wait()
        await (await engine.start(patient, run_id="p1")).wait()

        async def calls() -> list[Any]:
            async with replay.connect_async(db) as client:
                cancelled = await client.cancel("o1", "by an async client")
                timed = await client.start(order, "o-2", run_id="o2",
                                           timeout=timedelta(hours=1))
                await client.cancel("p1")
                with pytest.raises(replay.RunNotFound):
                    await client.terminate("zz")
                return [cancelled, timed]

        cancelled, timed = await in_thread(asyncio.run, calls())
        assert repr(cancelled) == "AsyncRemoteRun(run_id='o1', workflow='order')"
        with pytest.raises(replay.WorkflowFailed, match="by an async client"):
            await engine.get_run("o1").result()
        assert deadline_of(await engine.history(timed.run_id)) == timedelta(hours=1)
        assert (await engine.get_run("p1").wait()).waiting_for == "undo:v1"

        async def terminate() -> Any:
            client = replay.AsyncClient(db)
            return await client.terminate("p1", "hung")

        assert (await in_thread(asyncio.run, terminate())).run_id == "p1"
        assert engine.status("p1").state is RunState.CANCELLED
        with pytest.raises(replay.WorkflowFailed):
            await engine.get_run("p1").result()
