"""Running user queries from trio: their own threads, a time limit, and cancellation.

User queries (`engine.sql`, `engine.sql_arrow`, `replay sql` through a running engine)
run in at most `QUERY_THREADS` worker threads of their own, so that any number of them
never delays the reads workflows need (loading a run's history goes through trio's
default thread limiter, which user queries do not use). A query waits for a free
thread within its time limit.

A query ends when its time limit passes, when the calling task is cancelled, or when
the engine closes: the DuckDB call is interrupted (`ReadQuery.stop`), the waiting task
is released at once, and the thread is freed as soon as DuckDB notices.

This is the only module of the store that uses trio; the thread guard that keeps
virtual time still while a query runs (`replay._clock.busy_thread`) is passed in, as
the store sits below the clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import trio

from replay._errors import QueryError
from replay._store._protocol import UserQuery

T = TypeVar("T")

QUERY_THREADS = 4
ENGINE_ADVICE = ("pass a larger timeout= to engine.sql(), or set query_timeout= in "
                 "replay.open_engine()")
CLI_ADVICE = "pass a larger --timeout SECONDS to replay sql"


def checked_timeout(name: str, value: object) -> float | None:
    """Return `value` as a time limit in seconds (None: no limit of its own).

    Raises:
        TypeError: It is not a number or None.
        ValueError: It is not above 0 (or is NaN).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or None, got {value!r} "
                        f"({type(value).__name__})")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    return float(value)


def timed_out_message(limit: float, advice: str) -> str:
    """Return what a query stopped at its time limit says."""
    return f"query exceeded its time limit of {limit:g} s and was stopped; {advice}"


class Readers:
    """The worker threads of one engine's user queries, and its default time limit.

    Args:
        guard: Returns a context manager held while a thread works (the clock's
            `busy_thread`, so virtual time does not jump past a running query).
        default_timeout: The time limit of a query that gives none (None: no limit).
    """

    def __init__(self, guard: Callable[[], AbstractContextManager[Any]],
                 default_timeout: float | None) -> None:
        self._guard = guard
        self.default_timeout = default_timeout
        self._limiter = trio.CapacityLimiter(QUERY_THREADS)

    def timed(self, make_query: Callable[[float | None], UserQuery], timeout: object,
              advice: str) -> TimedQuery:
        """Build a query with `make_query` under a time limit that starts now.

        Args:
            make_query: Returns the query given its time limit (called once `timeout`
                is known to be good).
            timeout: Seconds the query may take, or None for `default_timeout`.
            advice: How to allow more time, for the message of a timed-out query.

        Raises:
            TypeError: `timeout` is not a number or None.
            ValueError: `timeout` is not above 0.
        """
        limit = checked_timeout("timeout", timeout)
        limit = self.default_timeout if limit is None else limit
        return TimedQuery(self, make_query(limit), limit, advice)

    async def run(self, function: Callable[[], T]) -> T:
        """Run `function` in a query thread; on cancellation leave it to end by itself."""
        with self._guard():
            return await trio.to_thread.run_sync(function, limiter=self._limiter,
                                                 abandon_on_cancel=True)


class TimedQuery:
    """A user query whose calls share one deadline; see `Readers.timed`."""

    def __init__(self, readers: Readers, query: UserQuery, limit: float | None,
                 advice: str) -> None:
        self.query = query
        self._readers = readers
        self._limit = limit
        self._advice = advice
        self._deadline = math.inf if limit is None else trio.current_time() + limit

    async def call(self, function: Callable[[UserQuery], T]) -> T:
        """Run `function(query)` in a query thread, stopping the query when time is up.

        Raises:
            QueryError: The time limit passed, or the query failed.
            trio.Cancelled: The calling task was cancelled (the query is stopped).
        """
        with trio.CancelScope(deadline=self._deadline) as scope:
            try:
                return await self._readers.run(lambda: function(self.query))
            except trio.Cancelled:
                self.query.stop(self._timed_out() if scope.cancel_called
                                else QueryError("the query was cancelled"))
                raise
        raise self._timed_out()

    def close(self) -> None:
        """Let go of the query (see `ReadQuery.close`)."""
        self.query.close()

    def _timed_out(self) -> QueryError:
        return QueryError(timed_out_message(self._limit or math.inf, self._advice))
