"""`replay.sync.open_engine` and the life of the engine it opens: open, the check, close.

A `Lifecycle` is the one owner of a sync engine's open-or-closed state. `open_engine`
opens the engine through it; every blocking call (of `Engine`, `Run` and `Watch`)
passes its check before it is sent into the engine's thread; and `Engine.close`, the
end of a ``with`` block and the interpreter's exit all close the engine through it.
`Engine` is a façade that only calls down into it. The orderings that keep a run's
steps from being left interrupted (atexit registered before the thread starts, a
failed or interrupted open stopped at once, Ctrl-C during a close still waiting for
the file) read here in one place, apart from the calls and their long docstrings.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from os import PathLike
from typing import TYPE_CHECKING, Any, TypeVar

import replay
from replay.sync._engine import Engine
from replay.sync._host import EngineHost

if TYPE_CHECKING:
    from replay import Engine as AsyncEngine

T = TypeVar("T")


def open_engine(
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
) -> Engine:
    """Open an engine for synchronous code; it runs on a background thread of its own.

    Takes exactly the arguments of `replay.open_engine` and opens the file the same
    way (picking up whatever was pending), then returns at once with the engine
    running. Use it in a ``with`` block, which closes the engine at its end, or keep
    it (for a web application's lifetime, say) and call `Engine.close` yourself:

        with replay.sync.open_engine("app.duckdb", workflows=[checkout]) as engine:
            output = engine.start(checkout, "o-1", 4200).result(timeout=60)

    Args:
        path: The database file (created if missing), ``":memory:"``, or a
            ``postgresql://`` URL (the ``postgres`` extra; see docs/postgres.md).
        workflows: The workflow functions this engine can run.
        default_retry: As for `replay.open_engine`.
        durability: As for `replay.open_engine`.
        always_replay: As for `replay.open_engine`.
        shutdown_timeout: Seconds running steps get to finish when the engine is closed
            (a ``with`` block that ends normally, or `Engine.close`).
        lock_timeout: As for `replay.open_engine`.
        max_threads: As for `replay.open_engine`.
        cache_size: As for `replay.open_engine`.
        serve_cli: As for `replay.open_engine`.
        max_interruptions: As for `replay.open_engine`.
        query_timeout: As for `replay.open_engine`.
        code_version: As for `replay.open_engine`.
        retention: As for `replay.open_engine` (finished runs older than this are
            purged every hour).
        ui: As for `replay.open_engine` (the web view at this address, served by the
            engine's thread).
        worker: As for `replay.open_engine` (PostgreSQL: this engine's worker name).
        lease: As for `replay.open_engine` (PostgreSQL: seconds a lease lasts).
        max_runs: As for `replay.open_engine` (PostgreSQL: runs executed at once).
        poll_interval: As for `replay.open_engine` (PostgreSQL: seconds between polls).

    Returns:
        The open `Engine`.

    Raises:
        DatabaseLocked: Another engine holds the file (or the PostgreSQL schema)
            after `lock_timeout`.
        DatabaseError: The file is not a usable replay database.
        TypeError: An option has the wrong type, or a workflow is not a generator function.
        ValueError: An option has a wrong value, or two workflows share a name.
    """
    options: dict[str, Any] = {
        "workflows": workflows, "default_retry": default_retry, "durability": durability,
        "always_replay": always_replay, "shutdown_timeout": shutdown_timeout,
        "lock_timeout": lock_timeout, "max_threads": max_threads, "cache_size": cache_size,
        "serve_cli": serve_cli, "max_interruptions": max_interruptions,
        "query_timeout": query_timeout, "code_version": code_version,
        "retention": retention, "ui": ui, "worker": worker, "lease": lease,
        "max_runs": max_runs, "poll_interval": poll_interval,
    }
    life = Lifecycle(EngineHost(path, options))
    engine = Engine(life)
    life.open()
    return engine


class Lifecycle:
    """One sync engine's open or closed state; every call and every close passes here.

    Opened once by `open_engine`; closed by `Engine.close`, a ``with`` block's end, or
    at the interpreter's exit, whichever comes first (once closed, later closes do
    nothing).
    """

    def __init__(self, host: EngineHost) -> None:
        self._host = host
        self.ui_url: str | None = None  # the engine's web view, read once it is open
        self._lock = threading.Lock()
        self._closing = False  # close() was called: no new call is accepted
        self._closed = threading.Event()  # the engine has stopped and the file is closed

    @property
    def closed(self) -> bool:
        """Whether the engine has stopped and closed its file."""
        return self._closed.is_set()

    def open(self) -> None:
        """Start the engine's thread and wait until the engine is open.

        Raises:
            BaseException: Whatever opening raised (`EngineHost.open`), as itself,
                once the engine is stopped.
        """
        # An engine nobody closed is closed cleanly at exit: its thread is a daemon
        # thread, which would otherwise die wherever it is when the interpreter ends.
        atexit.register(self._close_at_exit)
        try:
            self._host.open()
            self.ui_url = self.call_sync(_ui_url)
        except BaseException:
            # A failed open, or Ctrl-C at any point after the engine's thread started
            # (recovered runs may be executing already, and the caller never holds the
            # engine): stop it as a `with` block left by an exception would, so that
            # their steps are recorded as abandoned; a failed open raises as itself.
            self.close(abort=True, raise_failure=False)
            raise

    def close(self, *, abort: bool, raise_failure: bool) -> None:
        """Stop the engine (its running steps at once if `abort`); wait until it has.

        Raises:
            RuntimeError: Called from the engine's own thread (an async step).
            KeyboardInterrupt: Ctrl-C while waiting; running steps were then stopped
                at once and the file closed.
            BaseException: What had stopped the engine by itself (a failed commit,
                ...), if `raise_failure` and not reported before.
        """
        with self._lock:
            self._closing = True
        if self._closed.is_set():
            return
        self._host.stop(abort=abort)
        try:
            self._host.join()
        except KeyboardInterrupt:
            # Ctrl-C while waiting for running steps: stop them now, then still wait
            # for the file to be closed, so that nothing is left half done.
            self._host.stop(abort=True)
            self._host.join()
            raise
        finally:
            if not self._host.running:
                self._closed.set()
                atexit.unregister(self._close_at_exit)
        failure = self._host.failure()
        if failure is not None and raise_failure:
            raise failure

    def _close_at_exit(self) -> None:
        self.close(abort=False, raise_failure=False)

    def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await function(engine, *args)`` in the engine's thread; wait for it.

        Raises:
            EngineClosed: The engine is closed or closing, or stops during the call.
            BaseException: Whatever `function` raised, as itself.
        """
        self._check_open()
        return self._host.call(function, *args)

    def call_sync(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(engine, *args)`` (no await) in the engine's thread.

        Raises:
            EngineClosed: The engine is closed or closing.
            BaseException: Whatever `function` raised, as itself.
        """
        self._check_open()
        return self._host.call_sync(function, *args)

    def _check_open(self) -> None:
        if self._closing or self._closed.is_set():
            raise replay.EngineClosed("the engine is closed; open a new one with "
                               "replay.sync.open_engine()")
        if not self._host.running:
            raise self._host.closed_error()


# What runs in the engine's trio thread as it opens: the public async API, as is.


def _ui_url(engine: AsyncEngine) -> str | None:
    return engine.ui_url
