"""`replay.aio.open_engine`: a replay engine's life inside an asyncio program.

The engine is the same trio engine as `replay.open_engine`'s, opened by a trio task
of the loop's guest run (`_Hosting.serve`) and kept open until the asyncio `async
with` body ends. The body's end is handed to that task: a clean exit closes the
engine cleanly (running steps get `shutdown_timeout`), an exception or a cancellation
stops it at once, as an exception in a trio body would. The asyncio side always waits
until the trio side has closed the file before it goes on.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from os import PathLike
from typing import Any

import trio

import replay
from replay.aio._facade import Engine
from replay.aio._guest import Calls, GuestRun, wait_out


class _BodyFailed(Exception):
    """Raised in the trio engine's body: the asyncio body raised or was cancelled."""


def _only_body_failed(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return all(_only_body_failed(e) for e in error.exceptions)
    return isinstance(error, _BodyFailed)


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark an unwanted future's error as seen (asyncio logs unseen ones)."""
    if future.done() and not future.cancelled():
        future.exception()


class _Hosting:
    """One engine's trio task in the guest run, seen from asyncio as two futures."""

    def __init__(self, guest: GuestRun,
                 opening: Callable[[], AbstractAsyncContextManager[replay.Engine]]) -> None:
        loop = asyncio.get_running_loop()
        self._guest = guest
        self._opening = opening
        self._opened: asyncio.Future[replay.Engine] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._body_ended = trio.Event()
        self._body_failed = False
        self._scope = trio.CancelScope()  # cancelled: stop now, whatever the phase
        self._owner = asyncio.current_task()
        self._owner_cancelled = False

    def _stop_now(self) -> None:
        self._guest.run_soon(self._scope.cancel)

    async def open(self) -> replay.Engine:
        """Open the engine in the guest run; raises what `replay.open_engine` raises."""
        self._guest.start_soon(self.serve)
        cancelled = await wait_out(self._opened, on_cancel=self._stop_now)
        if cancelled is not None:
            await wait_out(self._closed)
            _consume(self._opened)
            _consume(self._closed)
            raise cancelled
        return self._opened.result()

    async def close(self, failed: bool) -> None:
        """End the body: close cleanly, or at once if `failed`; wait until closed.

        Raises:
            BaseException: What closing raised (a failed commit), or what stopped the
                engine while the body ran; a cancellation of the caller, once closed.
        """
        def end_body() -> None:
            self._body_failed = failed
            self._body_ended.set()

        self._guest.run_soon(end_body)
        # Cancelled while running steps get their shutdown_timeout: stop them now.
        cancelled = await wait_out(self._closed, on_cancel=self._stop_now)
        if cancelled is not None:
            _consume(self._closed)
            raise cancelled
        error = self._closed.exception()
        if error is not None:
            if self._owner_cancelled and self._owner is not None:
                self._owner.uncancel()  # our cancel only stopped the body; this is the news
            raise error

    async def serve(self) -> None:
        """The trio side: open, wait for the body to end, close; never raises."""
        try:
            with self._scope:
                async with self._opening() as engine:
                    self._opened.set_result(engine)
                    await self._body_ended.wait()
                    if self._body_failed:
                        raise _BodyFailed
        except BaseException as error:
            if _only_body_failed(error):
                self._closed.set_result(None)
            elif not self._opened.done():
                self._opened.set_exception(error)
                self._closed.set_result(None)
            else:
                self._closed.set_exception(error)
                if not self._body_ended.is_set() and self._owner is not None:
                    # The engine stopped under a running body (a failed commit): stop
                    # the body as a trio nursery would, and raise the error at its exit.
                    self._owner_cancelled = True
                    self._owner.cancel()
            if isinstance(error, trio.Cancelled):
                raise  # not our scope's: the guest run is ending, let it
            return
        if not self._opened.done():  # our scope was cancelled before the engine opened
            self._opened.cancel()
        self._closed.set_result(None)


def _check_host(clock: object) -> None:
    if clock is not None:
        raise ValueError(
            f"replay.aio.open_engine() always runs on the real clock; got clock={clock!r}. "
            "A fake clock (trio.testing.MockClock) cannot work here: trio does not see what "
            "the asyncio side waits for, so its autojump would skip sleeps and timeouts "
            "while your asyncio code is still busy. Test time-dependent workflows under "
            "trio's virtual clock instead: replay.testing, or replay.open_engine() inside "
            "trio.run(..., clock=trio.testing.MockClock(autojump_threshold=0))")
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        pass  # not in a trio task: good
    else:
        raise replay.ReplayError(
            "replay.aio.open_engine() was called from trio code; under trio, use "
            "replay.open_engine()")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise replay.ReplayError(
            "replay.aio.open_engine() needs a running asyncio loop: use it in `async with` "
            "inside a coroutine run by asyncio (asyncio.run, uvicorn, ...)") from None


@asynccontextmanager
async def open_engine(
    path: str | PathLike[str] = ":memory:",
    *,
    workflows: Sequence[Callable[..., Any]],
    default_retry: replay.Retry | None = None,
    durability: str = "fsync",
    always_replay: bool = False,
    shutdown_timeout: float = 30.0,
    lock_timeout: float = 0.0,
    max_threads: int = 40,
    cache_size: int = 1000,
    serve_cli: bool = True,
    max_interruptions: int = 3,
    query_timeout: float | None = 30.0,
    code_version: str | None = None,
    retention: timedelta | float | None = None,
    ui: tuple[str, int] | None = None,
    worker: str | None = None,
    lease: float = 15.0,
    max_runs: int | None = None,
    poll_interval: float = 1.0,
    clock: None = None,
) -> AsyncIterator[Engine]:
    """Open an engine on a DuckDB file or PostgreSQL from asyncio, for the `async with` body.

    The engine is `replay.open_engine`'s trio engine, run as a trio *guest* on the
    running asyncio loop: it opens, picks up pending runs and closes exactly as there
    (a clean exit lets running steps finish within `shutdown_timeout`; an exception
    or a cancellation of the body stops them at once, and they run again, uncharged,
    at the next open). Several engines on one loop share one trio guest run. The
    `async with` returns only once the database is closed.

    Args:
        path: The database file (created if missing), ``":memory:"``, or a
            ``postgresql://`` URL (the ``postgres`` extra; see docs/postgres.md).
        workflows: The workflow functions this engine can run.
        default_retry: As in `replay.open_engine`.
        durability: As in `replay.open_engine` (``"none"`` for tests).
        always_replay: As in `replay.open_engine`.
        shutdown_timeout: As in `replay.open_engine`.
        lock_timeout: As in `replay.open_engine`.
        max_threads: As in `replay.open_engine`.
        cache_size: As in `replay.open_engine`.
        serve_cli: As in `replay.open_engine`.
        max_interruptions: As in `replay.open_engine`.
        query_timeout: As in `replay.open_engine`.
        code_version: As in `replay.open_engine`.
        retention: As in `replay.open_engine` (finished runs older than this are
            purged every hour).
        ui: As in `replay.open_engine` (the web view at this address; its pages run
            in the engine's trio guest run).
        clock: Must be None: the engine runs on the real clock (see Raises).
        worker: As in `replay.open_engine` (PostgreSQL: this engine's worker name).
        lease: As in `replay.open_engine` (PostgreSQL: seconds a lease lasts).
        max_runs: As in `replay.open_engine` (PostgreSQL: runs executed at once).
        poll_interval: As in `replay.open_engine` (PostgreSQL: seconds between polls).

    Yields:
        The open `Engine`, whose methods are asyncio coroutines.

    Raises:
        ReplayError: There is no running asyncio loop, this is trio code (use
            `replay.open_engine`), or another trio run is active in this thread.
        ValueError: `clock` is given: trio's fake clock cannot see the asyncio side's
            waits, so it would jump past sleeps and timeouts while asyncio code is busy;
            or an option has a wrong value.
        DatabaseLocked: Another engine holds the file (or the PostgreSQL schema)
            after `lock_timeout`.
        DatabaseError: The file is not a usable replay database, or a commit failed
            (while the body runs: the body is cancelled and this is raised at its end).
        TypeError: An option has the wrong type, or a workflow is not a generator function.
    """
    _check_host(clock)
    opening = functools.partial(
        replay.open_engine, path, workflows=workflows, default_retry=default_retry,
        durability=durability, always_replay=always_replay,
        shutdown_timeout=shutdown_timeout, lock_timeout=lock_timeout,
        max_threads=max_threads, cache_size=cache_size, serve_cli=serve_cli,
        max_interruptions=max_interruptions, query_timeout=query_timeout,
        code_version=code_version, retention=retention, ui=ui, worker=worker, lease=lease,
        max_runs=max_runs, poll_interval=poll_interval)
    guest = await GuestRun.join()
    calls = Calls(guest)
    try:
        hosting = _Hosting(guest, opening)
        engine = Engine(await hosting.open(), calls)
        try:
            yield engine
        except BaseException:
            await hosting.close(failed=True)
            raise
        await hosting.close(failed=False)
    finally:
        calls.closed = True
        await guest.leave()
