"""The worker pool that runs sync step functions (replay._engine._workers)."""

from __future__ import annotations

import contextvars
import functools
import threading

import pytest
import trio
import trio.testing

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


class Noting:
    """A prelude that notes what the pool did with it (and may be made to fail)."""

    def __init__(self, succeed: bool = True, entered: threading.Event | None = None,
                 release: threading.Event | None = None) -> None:
        self.done_at: float | None = None
        self.succeed = succeed
        self.entered, self.release = entered, release
        self.ran_on: list[str] = []
        self.skips = 0

    def run(self) -> bool:
        self.ran_on.append(threading.current_thread().name)
        if self.entered is not None:
            self.entered.set()
        if self.release is not None:
            self.release.wait(10)
        return self.succeed

    def skipped(self) -> None:
        self.skips += 1


async def test_a_prelude_runs_first_on_the_thread_that_then_makes_the_call() -> None:
    pool = WorkerPool(1)
    prelude = Noting()
    with busy_thread():
        assert await pool.run(threading.current_thread, prelude=prelude) is not None
        thread = await pool.run(lambda: threading.current_thread().name, prelude=prelude)
    assert prelude.ran_on == [thread, thread] and prelude.skips == 0
    pool.close()


async def test_a_failed_prelude_makes_no_call_and_hands_nothing_back() -> None:
    pool = WorkerPool(1)
    entered, called = threading.Event(), []
    with busy_thread():
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(
                    pool.run, called.append, 1, prelude=Noting(succeed=False, entered=entered)))
                await trio.to_thread.run_sync(entered.wait, 10)
                # The thread is free again, the call was not made, its waiter still waits.
                assert await pool.run(lambda: "next") == "next"
                scope.cancel()
        assert called == []
    pool.close()


async def test_a_call_given_up_before_a_thread_took_it_skips_its_prelude() -> None:
    pool = WorkerPool(1)
    release, called = threading.Event(), []
    prelude = Noting()
    with busy_thread():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run, release.wait, 10)  # holds the only thread
            await trio.testing.wait_all_tasks_blocked()
            assert not pool.has_idle_thread()
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as waiting:
                    waiting.start_soon(functools.partial(pool.run, called.append, 1,
                                                         prelude=prelude))
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
            release.set()
        assert await pool.run(lambda: "next") == "next"
    assert (prelude.skips, prelude.ran_on, called) == (1, [], [])
    pool.close()


async def test_a_call_given_up_while_its_prelude_runs_is_not_made() -> None:
    pool = WorkerPool(1)
    entered, release, called = threading.Event(), threading.Event(), []
    prelude = Noting(entered=entered, release=release)
    with busy_thread():
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(pool.run, called.append, 1, prelude=prelude))
                await trio.to_thread.run_sync(entered.wait, 10)
                scope.cancel()  # the waiter gives up while the prelude runs
        release.set()
        assert await pool.run(lambda: "next") == "next"  # the same thread, done with it
    assert (len(prelude.ran_on), prelude.skips, called) == (1, 0, [])
    pool.close()
