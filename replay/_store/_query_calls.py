"""The life of one user query's calls, whichever database runs them.

A query's calls (start, fetch) run in worker threads one at a time, while `stop` and
`close` may come from any thread at any moment: the engine's deadline, the engine
closing, the caller giving up. This holds the rules both stores' queries share; each
store says how to interrupt a call in flight (`_interrupt`), how to let go of its
cursor or connection (`_release`), and which of its driver's errors a call may raise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from replay._errors import QueryError

if TYPE_CHECKING:
    from replay._store._queries import OpenQueries

T = TypeVar("T")


class QueryCalls:
    """One user query's calls: one at a time, stoppable and closable from any thread.

    Args:
        opened: Where the store keeps its open queries (to stop them when it closes).

    Raises:
        BaseException: The store is closing (the error its `OpenQueries` was given).
    """

    # The driver's errors, which a call turns into `QueryError`.
    driver_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, opened: OpenQueries | None) -> None:
        self._opened = opened
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._stopped: BaseException | None = None
        self._closed = False
        self.columns: tuple[str, ...] = ()
        self.types: tuple[str, ...] = ()
        if opened is not None:
            opened.add(self)

    def _call(self, function: Callable[..., T], *args: Any) -> T:
        """Run one call of the query (in a worker thread).

        Raises:
            QueryError: The call failed, or the query was closed.
            BaseException: The error the query was stopped with.
        """
        with self._lock:
            if self._stopped is not None:
                raise self._stopped
            if self._closed:
                raise QueryError("the query was closed; run it again")
            self._idle.clear()
        try:
            return function(*args)
        except self.driver_errors as error:
            if self._stopped is not None:
                raise self._stopped from None
            raise QueryError(self._failed(error)) from error
        finally:
            with self._lock:
                self._idle.set()
                close = self._closed
            if close:
                self._close_now()

    def _failed(self, error: BaseException) -> str:
        """Say why the driver refused a call."""
        return f"query failed: {error}"

    def stop(self, error: BaseException) -> None:
        """Stop the query: the call in flight, and every later one, raises `error`."""
        with self._lock:
            if self._stopped is None:
                self._stopped = error
            if self._idle.is_set():
                return
        self._interrupt()

    def wait_idle(self) -> None:
        """Return once no call of this query is in flight."""
        self._idle.wait()

    def close(self) -> None:
        """Let go of the query, now or when the call in flight ends."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = self._idle.is_set()
        if idle:
            self._close_now()

    def _close_now(self) -> None:
        self._release()
        if self._opened is not None:
            self._opened.discard(self)

    def _interrupt(self) -> None:
        """Interrupt the call in flight (called from any thread)."""
        raise NotImplementedError

    def _release(self) -> None:
        """Let go of the cursor or connection (and its transaction)."""
        raise NotImplementedError
