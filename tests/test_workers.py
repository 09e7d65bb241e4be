"""The worker pool that runs sync step functions (replay._engine._workers)."""

from __future__ import annotations

import contextvars
import threading

import pytest
import trio

from replay._engine._clock import busy_thread
from replay._engine._workers import WorkerPool

where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="unset")


async def test_results_errors_and_context_come_back() -> None:
    pool = WorkerPool(2)
    where.set("the caller's context")
    with busy_thread():
        assert await pool.run(lambda a, b: a + b, 2, 3) == 5
        assert await pool.run(where.get) == "the caller's context"
        assert await pool.run(threading.get_ident) != threading.get_ident()
        with pytest.raises(KeyError, match="missing"):
            await pool.run({}.__getitem__, "missing")
    pool.close()


async def test_at_most_size_functions_run_at_once() -> None:
    pool = WorkerPool(3)
    lock, running, most = threading.Lock(), [0], [0]
    gate = threading.Event()

    def work() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        gate.wait(1)
        with lock:
            running[0] -= 1

    with busy_thread():
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(pool.run, work)
            await trio.sleep(0)
            gate.set()
    assert most[0] <= 3
    pool.close()


async def test_a_cancelled_call_is_abandoned_and_the_pool_goes_on() -> None:
    pool = WorkerPool(1)
    release = threading.Event()
    with busy_thread():
        with trio.move_on_after(0) as scope:
            await pool.run(release.wait, 5)
        assert scope.cancelled_caught
        release.set()  # the abandoned call ends; its result is dropped
        assert await pool.run(lambda: "next") == "next"
    pool.close()


async def test_blocking_calls_make_the_pool_grow_to_run_them_together() -> None:
    pool = WorkerPool(40)
    together = threading.Barrier(20, timeout=10)  # breaks unless 20 calls run at once
    with busy_thread():
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(pool.run, together.wait)
    assert len(pool._threads) == 20
    pool.close()
