"""User queries (`engine.sql`, `replay sql`): one cursor each, stoppable from any thread.

A DuckDB call blocks its thread until the query ends, and a cursor is single-threaded,
so a query is stopped from outside with `cursor.interrupt()` (the rules of stopping and
closing a query, shared with the PostgreSQL store, are `_query_calls`). DuckDB forgets an
interrupt that arrives before it starts executing (measured: an interrupt sent just
before ``execute`` is lost), so `ReadQuery.stop` repeats it until the call in flight
returns. A stopped query raises the error `stop` was given (a timeout, the engine
closing), not DuckDB's "Interrupted!".

Intermediate results (sorts, hash tables) of a user query may use at most
`QUERY_MEMORY_LIMIT` (DuckDB's per-connection ``operator_memory_limit``; bigger ones
spill to disk or fail): the database-wide ``memory_limit`` would also bind the writer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from collections.abc import Sequence
from typing import Any

import duckdb

from replay._errors import EngineClosed, QueryError
from replay._store._query_calls import QueryCalls
from replay._store._readonly import check_read_only

QUERY_MEMORY_LIMIT = "256MiB"
_REPEAT_SECONDS = 0.01


class ReadQuery(QueryCalls):
    """One read-only query's result, fetched on its own cursor in a read-only snapshot.

    Building one is cheap and may happen on any thread; `start`, `fetch`, `rows` and
    `arrow` run DuckDB and belong in a worker thread, one at a time. `stop` and `close`
    may be called from any thread at any moment.

    Args:
        con: The connection whose database the query reads.
        sql: The query.
        params: Values for its placeholders.
        opened: Where the store keeps its open queries (to stop them when it closes).
        timeout: Stop the query after this many seconds (a timer thread; for callers
            without an event loop), with `timed_out` as the error.
        timed_out: The QueryError message for `timeout`.
    """

    driver_errors = (duckdb.Error,)

    def __init__(self, con: duckdb.DuckDBPyConnection, sql: str,
                 params: Sequence[Any] | dict[str, Any] | None, *,
                 opened: OpenQueries | None = None, timeout: float | None = None,
                 timed_out: str = "") -> None:
        super().__init__(opened)
        self._sql, self._params = sql, params
        self._cursor = con.cursor()
        self._timer: threading.Timer | None = None
        if timeout is not None:
            self._timer = threading.Timer(timeout, self.stop, [QueryError(timed_out)])
            self._timer.daemon = True
            self._timer.start()

    # -- in a worker thread --

    def start(self) -> None:
        """Check the query (see `check_read_only`) and run it in a read-only transaction.

        Raises:
            QueryError: It is not exactly one read-only query, or it failed.
            BaseException: The error the query was stopped with.
        """
        self._call(self._start)

    def fetch(self, size: int) -> list[tuple[Any, ...]]:
        """Return up to `size` more rows (an empty list at the end).

        Raises:
            QueryError: The query failed while its rows were produced.
            BaseException: The error the query was stopped with.
        """
        return self._call(self._cursor.fetchmany, size)

    def rows(self) -> list[tuple[Any, ...]]:
        """Start the query, return all its rows, and close it.

        Raises:
            QueryError: It is not exactly one read-only query, or it failed.
            BaseException: The error the query was stopped with.
        """
        try:
            self.start()
            return self._call(self._cursor.fetchall)
        finally:
            self.close()

    def arrow(self) -> Any:
        """Start the query, return its result as a ``pyarrow.Table``, and close it.

        Raises:
            ModuleNotFoundError: pyarrow is not installed.
            QueryError: It is not exactly one read-only query, or it failed.
            BaseException: The error the query was stopped with.
        """
        if importlib.util.find_spec("pyarrow") is None:
            raise ModuleNotFoundError(
                "engine.sql_arrow() needs pyarrow, which is not installed; "
                "pip install pyarrow (or replay-workflows[arrow]), or use engine.sql()",
                name="pyarrow",
            )
        try:
            self.start()
            return self._call(self._cursor.to_arrow_table)
        finally:
            self.close()

    def _start(self) -> None:
        cursor = self._cursor
        check_read_only(cursor, self._sql, self._params)
        cursor.execute(f"SET operator_memory_limit = '{QUERY_MEMORY_LIMIT}'")
        cursor.execute("BEGIN TRANSACTION READ ONLY")
        cursor.execute(self._sql, self._params)
        description = cursor.description or []
        self.columns = tuple(column[0] for column in description)
        self.types = tuple(str(column[1]) for column in description)

    # -- from any thread (see `QueryCalls`) --

    def _interrupt(self) -> None:
        threading.Thread(target=self._interrupt_until_idle, name="replay-query-stop",
                         daemon=True).start()

    def _interrupt_until_idle(self) -> None:
        while True:
            with self._lock:
                if self._idle.is_set():
                    return
                self._cursor.interrupt()
            self._idle.wait(_REPEAT_SECONDS)

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with contextlib.suppress(duckdb.Error):  # already gone with its connection
            self._cursor.close()  # ends its read-only transaction too


class OpenQueries:
    """The user queries open on one connection, so that closing it can stop them first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[QueryCalls] = set()
        self._closing = False

    def add(self, query: QueryCalls) -> None:
        """Count `query` as open.

        Raises:
            EngineClosed: The connection is closing.
        """
        with self._lock:
            if self._closing:
                raise closed_error()
            self._open.add(query)

    def discard(self, query: QueryCalls) -> None:
        """Forget a closed query."""
        with self._lock:
            self._open.discard(query)

    def close_all(self) -> None:
        """Stop every open query, wait for their calls to end, close them (the store closes).

        They raise `EngineClosed`, and so do later queries, at once.
        """
        with self._lock:
            self._closing = True
            queries = list(self._open)
        for query in queries:
            query.stop(closed_error())
        for query in queries:
            query.wait_idle()
            query.close()


def closed_error() -> EngineClosed:
    """The error of a user query stopped because its store closed."""
    return EngineClosed("the engine closed while the query ran; run it again on an open "
                        "engine (replay.open_engine())")
