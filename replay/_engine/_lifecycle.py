"""`open_engine`: an engine's life from opening the file to closing it.

Structure: a *services* nursery holds the group-commit flusher, the timer task and the
channel server of the `replay` command; a *runs* nursery inside it holds one task per
executing run. On a clean exit the runs nursery gets `shutdown_timeout` to let running
steps finish (no new command starts); if the body raises or is cancelled, running steps
are stopped at once. Either way, each attempt still running is recorded as abandoned by
its own task as it is cancelled; once every run's task has ended, the flusher commits
what is left, then the services stop and the file is closed. Abandoned attempts run
again at the next open, uncharged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from os import PathLike
from typing import Any

import trio

from replay._channel._protocol import channel_supported
from replay._engine._channel_server import ChannelServer
from replay._engine._clock import EngineClock, in_thread
from replay._engine._facade import Engine, internals
from replay._engine._options import (
    checked_code_version,
    checked_retention,
    checked_ui,
    checked_workers,
    database_path,
    open_store,
    validate_count,
    validate_options,
)
from replay._engine._retention import Retention
from replay._engine._shared import SharedRuns
from replay._engine._tuning import tuned_for_engines
from replay._engine._ui_backend import serve_ui
from replay._errors import LeaseLost, ReplayError
from replay._pg._url import is_postgres_url
from replay._retry import Retry
from replay._workflows import Registry


@asynccontextmanager
async def open_engine(
    path: str | PathLike[str] = ":memory:",
    *,
    workflows: Sequence[Callable[..., Any]],
    default_retry: Retry | None = None,
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
) -> AsyncIterator[Engine]:
    """Open an engine on a DuckDB file or PostgreSQL and run it for the `async with` body.

    On open, the engine picks up everything that was pending when the last process
    stopped: runs that were running continue, every recorded deadline (sleeps, retry
    back-offs, suspend timeouts) is scheduled (overdue ones at once), and suspended
    runs with a signal waiting in their mailbox wake. On a clean exit the engine starts
    no new commands, lets running steps finish within `shutdown_timeout`, and closes
    the database; if the body is cancelled or raises, running steps are stopped at
    once. Steps still running when the engine stops are recorded as abandoned: they run
    again at the next open, charging neither their retry budget nor `max_interruptions`.

    Args:
        path: The database file (created if missing), ``":memory:"``, or a
            ``postgresql://`` URL (the ``postgres`` extra; see docs/postgres.md).
        workflows: The workflow functions this engine can run.
        default_retry: Retry policy for steps without `retry=` (default: one attempt).
        durability: ``"fsync"`` (every commit is fsynced) or ``"none"`` (tests).
        always_replay: Drop every parked generator, so each wake-up replays the
            workflow from the top; a replay that reaches an unrecorded command before
            the key where the run stopped fails the run with `NondeterminismError`
            (a cheap determinism check for tests).
        shutdown_timeout: Seconds running steps get to finish on a clean exit.
        lock_timeout: Seconds to wait for another engine to release the file.
        max_threads: How many sync step functions may run at once.
        cache_size: How many parked generators to keep; an evicted one is re-created
            and replayed when its run wakes.
        serve_cli: Serve the `replay` command while the engine holds the file, over a
            Unix socket next to it (``<path>.sock``, usable only by this user); pass
            False not to. Ignored for ``":memory:"``.
        max_interruptions: How many times one step may be running when the process
            dies before it fails with `StepInterrupted` (a clean stop never counts).
        query_timeout: Seconds an `engine.sql` query (or `replay sql` through this
            engine) may take before it is stopped with `QueryError`; None: no limit.
        code_version: The version of your code (e.g. a release tag), stamped on each
            run's start; an execution of a run under another version records a
            ``run/code_changed`` event. Default: the ``REPLAY_CODE_VERSION``
            environment variable, else none. It never blocks a run: keys decide
            compatibility.
        retention: Keep finished runs this long (a `timedelta` or seconds): the engine
            purges older ones, as `Engine.purge(older_than=retention)` does, a minute
            after it opens and then every hour, logging what it deleted (a failed
            purge is logged and tried again the next hour). None: keep everything.
        ui: Serve the web view of runs at this ``(host, port)`` while the engine runs,
            e.g. ``("127.0.0.1", 8077)`` (port 0: any free one); `Engine.ui_url` is its
            address. Needs the ``ui`` extra (``pip install "replay-workflows[ui]"``).
            None: no web view.
        worker: On PostgreSQL, this engine's worker name (default ``"default"``).
            Engines with different names share the schema's runs; one engine per
            name runs at a time, and an engine restarted under its name takes its
            unfinished runs back at once (see docs/postgres.md).
        lease: On PostgreSQL, seconds each of this engine's leases lasts unless
            renewed (every third of it): how long its runs wait to be taken over
            after it dies or is cut off.
        max_runs: On PostgreSQL, how many runs this engine executes at once; runs it
            starts beyond that are left for other engines, and it claims no more
            until it has room. 0: it only starts, signals and waits. None: no limit.
        poll_interval: On PostgreSQL, seconds between looks for free runs and for
            messages besides notifications (and between looks at a run another
            engine executes, while waiting for it).

    Yields:
        The open `Engine`.

    Raises:
        DatabaseLocked: Another engine holds the file (or runs under the same worker
            name on the PostgreSQL schema) after `lock_timeout`.
        LeaseLost: On PostgreSQL, another engine took over runs of this one, which had
            not renewed its leases in time; this engine stopped.
        DatabaseError: The file is not a usable replay database, or a commit failed.
        TypeError: An option has the wrong type, or a workflow is not a generator function.
        ValueError: An option has a wrong value, or two workflows share a name.
        ReplayError: Called from asyncio code: use `replay.aio.open_engine` there.
        ModuleNotFoundError: `ui` is given and hypercorn is not installed, or `path`
            is a PostgreSQL URL and psycopg is not installed.
        OSError: The `ui` address cannot be listened on (the port is taken, ...).
    """
    _refuse_asyncio()
    validate_options(durability, shutdown_timeout, lock_timeout, max_threads, default_retry,
                     always_replay, cache_size, query_timeout=query_timeout)
    validate_count("max_interruptions", max_interruptions)
    if not isinstance(serve_cli, bool):
        raise TypeError(
            f"serve_cli must be a bool, got {serve_cli!r} ({type(serve_cli).__name__})"
        )
    code_version = checked_code_version(code_version)
    retention = checked_retention(retention)
    ui = checked_ui(ui)
    registry = Registry(workflows)
    path = database_path(path)
    workers = checked_workers(path, worker, lease, max_runs, poll_interval,
                              tuple(registry.functions))
    store, release = await open_store(path, durability, lock_timeout, workers)
    engine: Engine | None = None
    try:
        last_seq, last_time = await in_thread(store.last_seq_and_time)
        generations = await in_thread(store.generations)
        engine = Engine(store, registry, EngineClock(last_time), last_seq, default_retry,
                        max_threads, 0 if always_replay else cache_size, always_replay,
                        max_interruptions, query_timeout=query_timeout,
                        code_version=code_version, generations=generations)
        scheduler = internals(engine).scheduler
        with tuned_for_engines():  # see `_tuning`
            async with _single_errors(), trio.open_nursery() as services:
                try:
                    await scheduler.start_services(services)
                    async with trio.open_nursery() as runs:
                        await scheduler.recovery.recover(runs)
                        if store.sharing is not None:
                            await services.start(SharedRuns(scheduler, store.sharing).run)
                        if serve_cli and _has_socket(store.path) and channel_supported():
                            await services.start(ChannelServer(engine, store).run)
                        if retention is not None:
                            await services.start(Retention(scheduler, store).service, retention)
                        if ui is not None:
                            engine._ui_url = await services.start(serve_ui, engine, *ui)
                        try:
                            yield engine
                        except BaseException:
                            scheduler.begin_shutdown()
                            runs.cancel_scope.cancel()
                            raise
                        scheduler.begin_shutdown()
                        runs.cancel_scope.deadline = trio.current_time() + shutdown_timeout
                finally:
                    scheduler.runs_ended()
                services.cancel_scope.cancel()
    finally:
        if engine is not None:
            internals(engine).workers.close()
            internals(engine).scheduler.mark_closed()
        with trio.CancelScope(shield=True):
            await in_thread(store.close)
        release()


def _has_socket(path: str) -> bool:
    """Whether the `replay` command finds an engine on `path` by a socket next to it."""
    return path != ":memory:" and not is_postgres_url(path)


def _refuse_asyncio() -> None:
    """Point asyncio code to replay.aio: trio's own error there gives no hint."""
    try:
        in_asyncio = asyncio.current_task() is not None
    except RuntimeError:  # no asyncio loop in this thread: plain trio, the usual case
        return
    if in_asyncio:
        raise ReplayError(
            "replay.open_engine() runs on trio, but it was called from asyncio code; "
            "use `async with replay.aio.open_engine(...)`, which runs the engine on "
            "your asyncio loop")


@asynccontextmanager
async def _single_errors() -> AsyncIterator[None]:
    """Raise a lone error out of the engine's nurseries as itself, not as a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if all(isinstance(leaf, LeaseLost) for leaf in leaves):
            # A renewal found leases lost, and the last commit for those runs failed
            # its fence as the engine stopped: one cause, told once.
            leaves = leaves[:1]
        if len(leaves) != 1:
            raise
        error, context = leaves[0], leaves[0].__context__
        try:
            raise error
        finally:
            error.__context__ = context


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found
