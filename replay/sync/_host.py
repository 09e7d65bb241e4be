"""`EngineHost`: one trio run, on a thread of its own, holding one open engine.

Every call from another thread is sent into that run with `trio.from_thread.run` and
the run's token, so the engine only ever runs on its own thread (it is not
thread-safe) and any number of threads may call at once. The engine lives inside
``async with replay.open_engine(...)``, so it opens and stops exactly as it does for
async code: a clean stop gives running steps `shutdown_timeout`; an abort (an error
or Ctrl-C in the caller) takes the path of an ``async with`` body that raised, which
stops running steps at once and records them as abandoned.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from os import PathLike
from typing import TYPE_CHECKING, Any, TypeVar

import trio

# Only the public API: `replay.sync` is a client of the engine like any application,
# and stays unaffected when the engine's insides change.
import replay

if TYPE_CHECKING:
    from replay import Engine as AsyncEngine

T = TypeVar("T")


class EngineHost:
    """Run `replay.open_engine(path, **options)` on a daemon thread until stopped."""

    def __init__(self, path: str | PathLike[str], options: dict[str, Any]) -> None:
        self._path = path
        self._options = options
        self._lock = threading.Lock()  # guards everything below that threads share
        self._opened = threading.Event()  # set once the open succeeded or failed
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._scope: trio.CancelScope | None = None
        self._request: str | None = None  # None, "clean" or "abort"
        self._engine: AsyncEngine | None = None
        self._error: BaseException | None = None  # what ended the trio run, if anything
        self._error_reported = False
        self._thread = threading.Thread(target=self._main, daemon=True,
                                        name=f"replay engine {path}")

    # -- the engine's thread --

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as error:
            self._error = error
        finally:
            self._opened.set()  # an opener still waiting learns that the open failed

    async def _serve(self) -> None:
        stop = trio.Event()
        with trio.CancelScope() as scope:
            with self._lock:
                self._token = trio.lowlevel.current_trio_token()
                self._stop, self._scope = stop, scope
                request = self._request
            if request == "abort":  # asked before the run had a token to be asked with
                scope.cancel()
            elif request == "clean":
                stop.set()
            async with replay.open_engine(self._path, **self._options) as engine:
                self._engine = engine
                self._opened.set()
                await stop.wait()
        # An abort cancels `scope`: the `async with` body above is cancelled, so the
        # engine stops running steps at once, exactly as for an async body that raised.

    # -- any other thread --

    def open(self) -> AsyncEngine:
        """Start the thread and wait until the engine is open.

        Raises:
            BaseException: Whatever `replay.open_engine` raised (DatabaseLocked,
                TypeError, ...), as itself.
        """
        self._thread.start()
        try:
            self._opened.wait()
        except BaseException:  # Ctrl-C while opening: do not leave the engine behind
            self.stop(abort=True)
            self.join()
            raise
        if self._engine is None:
            error = self._error
            self._error_reported = True
            if error is None:
                raise replay.EngineClosed("the engine was stopped while it opened")
            raise error
        return self._engine

    def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await function(engine, *args)`` in the engine's trio run; wait for it.

        Raises:
            EngineClosed: The engine stopped (or stops while the call waits).
            BaseException: Whatever `function` raised, as itself.
        """
        token = self._token
        assert token is not None and self._engine is not None, "call() before open()"
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "replay.sync calls block until the engine answers, so they cannot be made "
                "from the engine's own thread (an async step); call them from other threads")
        try:
            return trio.from_thread.run(function, self._engine, *args, trio_token=token)
        except (trio.RunFinishedError, trio.Cancelled):
            # The trio run ended (or is ending) while the call was sent or ran.
            raise self.closed_error() from self._error

    def call_sync(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(engine, *args)`` (no await) in the engine's trio thread.

        Raises:
            EngineClosed: The engine stopped.
            BaseException: Whatever `function` raised, as itself.
        """
        token = self._token
        assert token is not None and self._engine is not None, "call_sync() before open()"
        if threading.current_thread() is self._thread:
            return function(self._engine, *args)
        try:
            return trio.from_thread.run_sync(function, self._engine, *args, trio_token=token)
        except (trio.RunFinishedError, trio.Cancelled):
            raise self.closed_error() from self._error

    def stop(self, *, abort: bool) -> None:
        """Ask the engine to stop: cleanly, or at once (`abort`); returns at once."""
        with self._lock:
            if abort:
                self._request = "abort"
            elif self._request is None:
                self._request = "clean"
            token, stop, scope = self._token, self._stop, self._scope
        if token is None or stop is None or scope is None:
            return  # the run has not started yet: `_serve` reads the request itself
        with contextlib.suppress(trio.RunFinishedError):  # it has stopped already
            token.run_sync_soon(scope.cancel if abort else stop.set)

    def join(self) -> None:
        """Wait until the engine has stopped and its file is closed.

        Raises:
            RuntimeError: Called from the engine's own thread.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "an engine of replay.sync cannot be closed from its own thread (an async "
                "step): close it from the thread that opened it")
        if self._thread.ident is not None:
            self._thread.join()

    @property
    def running(self) -> bool:
        """Whether the engine's trio run is still going."""
        return self._thread.is_alive()

    def failure(self) -> BaseException | None:
        """What stopped the engine by itself (a failed commit, ...), reported once.

        Returns None when it stopped because it was asked to, or the error was already
        reported (by `open` or an earlier `failure`).
        """
        with self._lock:
            if self._error is None or self._error_reported:
                return None
            self._error_reported = True
            return self._error

    def closed_error(self) -> replay.EngineClosed:
        """The `EngineClosed` for a call made after (or cut short by) the engine's stop."""
        if self._error is not None:
            return replay.EngineClosed(
                f"the engine stopped: {type(self._error).__name__}: {self._error}; open a "
                "new one with replay.sync.open_engine()")
        return replay.EngineClosed("the engine is closed; open a new one with "
                            "replay.sync.open_engine()")
