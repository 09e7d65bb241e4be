"""User queries on PostgreSQL: one read-only query on the public views, time-limited.

Each query gets a connection of its own, closed with the query, so nothing a query
does to its session (settings, advisory locks) outlives it. Three guards, all applied
by the server: the query runs in a ``READ ONLY`` transaction; under
``statement_timeout``; and as the role ``replay_reader``, which may read only
``replay_events`` and ``replay_runs`` (views run with their owner's rights, so they
read the event table for it). The query is sent with the extended protocol, which
carries exactly one statement, so no ``COMMIT; ...`` can follow it. Before that,
`_guard` refuses what could switch back from the role.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.types.string import TextBinaryLoader

from replay._errors import QueryError
from replay._pg._connect import connect
from replay._pg._guard import check_query
from replay._pg._params import positional
from replay._store._queries import OpenQueries
from replay._store._query_calls import QueryCalls

READER_ROLE = "replay_reader"
PUBLIC_VIEWS = ("replay_events", "replay_runs")


def prepare_reader_role(con: psycopg.Connection[Any], schema: str) -> str | None:
    """Let the role `READER_ROLE` read the public views of `schema`.

    Creates the role if missing and grants it to the connected user, when this user
    may; then grants it the views. Returns the role's name once the user can take it,
    else None (user queries then say what an administrator should run).
    """
    statements = [
        pgsql.SQL("CREATE ROLE {} NOLOGIN").format(pgsql.Identifier(READER_ROLE)),
        pgsql.SQL("GRANT {} TO CURRENT_USER").format(pgsql.Identifier(READER_ROLE)),
        pgsql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            pgsql.Identifier(schema), pgsql.Identifier(READER_ROLE)),
        pgsql.SQL("GRANT SELECT ON {} TO {}").format(
            pgsql.SQL(", ").join(pgsql.Identifier(view) for view in PUBLIC_VIEWS),
            pgsql.Identifier(READER_ROLE)),
    ]
    # Under the schema's lock (engines opening at once re-create its views, and a GRANT
    # on a view being replaced fails) and the role's (it belongs to the whole server).
    locks = ("hashtext('replay-schema:' || %s)", "hashtext('replay-reader-role')")
    con.execute(f"SELECT pg_advisory_lock({locks[0]}), pg_advisory_lock({locks[1]})",
                [schema])
    try:
        for statement in statements:
            with contextlib.suppress(psycopg.Error):  # exists already, or not ours to do
                con.execute(statement)
    finally:
        con.execute(f"SELECT pg_advisory_unlock({locks[1]}), pg_advisory_unlock({locks[0]})",
                    [schema])
    return usable_reader_role(con)


def usable_reader_role(con: psycopg.Connection[Any]) -> str | None:
    """Return `READER_ROLE` if the connected user can take it, else None."""
    try:
        con.execute(pgsql.SQL("SET ROLE {}").format(pgsql.Identifier(READER_ROLE)))
        con.execute("RESET ROLE")
    except psycopg.Error:
        return None
    return READER_ROLE


def no_reader_role_message(user: str) -> str:
    """The error of a user query when the reader role cannot be taken."""
    return (
        f"SQL on a PostgreSQL store reads through the role {READER_ROLE}, which the "
        f"database user {user!r} cannot create or take; ask an administrator to run "
        f"`CREATE ROLE {READER_ROLE} NOLOGIN; GRANT {READER_ROLE} TO {user}`, then open "
        "the engine again (it grants the role the views)"
    )


class _JsonbText(Loader):
    """Load binary jsonb as its text (a version byte, then the JSON)."""

    def load(self, data: Buffer) -> str:
        return bytes(data)[1:].decode("utf-8")


class PgReadQuery(QueryCalls):
    """One user query on its own connection; the same surface as DuckDB's `ReadQuery`.

    `start`, `fetch`, `rows` and `arrow` run in a worker thread, one at a time;
    `stop` and `close` may be called from any thread at any moment.

    Args:
        url: The database's URL.
        sql: The query.
        params: Values for its placeholders (``?``, ``$1`` or ``$name``; see `_params`).
        reader_role: The role that may read the views, or None if there is none.
        limit: The statement timeout in seconds (None: the server's default).
        opened: Where the store keeps its open queries (to stop them when it closes).
    """

    driver_errors = (psycopg.Error,)

    def __init__(self, url: str, sql: str, params: Sequence[Any] | dict[str, Any] | None, *,
                 reader_role: str | None, limit: float | None = None,
                 opened: OpenQueries | None = None) -> None:
        super().__init__(opened)
        self._url, self._sql, self._params = url, sql, params
        self._role, self._limit = reader_role, limit
        self._con: psycopg.Connection[Any] | None = None
        self._cursor: psycopg.RawCursor[Any] | None = None

    # -- in a worker thread --

    def start(self) -> None:
        """Run the query in a read-only transaction as the reader role.

        Raises:
            QueryError: It is not exactly one read-only query on the views, or failed.
            BaseException: The error the query was stopped with.
        """
        self._call(self._start)

    def fetch(self, size: int) -> list[tuple[Any, ...]]:
        """Return up to `size` more rows (an empty list at the end).

        Raises:
            QueryError: The query failed.
            BaseException: The error the query was stopped with.
        """
        return self._call(lambda: self._started().fetchmany(size))

    def rows(self) -> list[tuple[Any, ...]]:
        """Start the query, return all its rows, and close it.

        Raises:
            QueryError: It is not exactly one read-only query on the views, or failed.
            BaseException: The error the query was stopped with.
        """
        try:
            self.start()
            return self._call(lambda: self._started().fetchall())
        finally:
            self.close()

    def arrow(self) -> Any:
        """Start the query, return its result as a ``pyarrow.Table``, and close it.

        Raises:
            ModuleNotFoundError: pyarrow is not installed.
            QueryError: It is not exactly one read-only query on the views, or failed.
        """
        if importlib.util.find_spec("pyarrow") is None:
            raise ModuleNotFoundError(
                "engine.sql_arrow() needs pyarrow, which is not installed; "
                "pip install pyarrow (or replay-workflows[arrow]), or use engine.sql()",
                name="pyarrow",
            )
        import pyarrow  # type: ignore[import-not-found]  # optional

        rows = self.rows()
        return pyarrow.table({name: [row[i] for row in rows]
                              for i, name in enumerate(self.columns)})

    def _start(self) -> None:
        check_query(self._sql)
        con = connect(self._url, prepare=False)
        self._con = con
        con.adapters.register_loader("json", TextBinaryLoader)
        con.adapters.register_loader("jsonb", _JsonbText)
        if self._role is None:
            raise QueryError(no_reader_role_message(con.info.user))
        con.execute("BEGIN TRANSACTION READ ONLY")
        if self._limit is not None:
            con.execute(pgsql.SQL("SET LOCAL statement_timeout = {}").format(
                pgsql.Literal(max(1, round(self._limit * 1000)))))
        con.execute(pgsql.SQL("SET LOCAL ROLE {}").format(pgsql.Identifier(self._role)))
        sql, params = positional(self._sql, self._params)
        cursor = psycopg.RawCursor(con)  # $1 placeholders, and % is just a character
        self._cursor = cursor
        # Binary results use the extended protocol: one statement, never a script.
        cursor.execute(sql, params, binary=True)
        description = cursor.description or []
        self.columns = tuple(column.name for column in description)
        self.types = tuple(column.type_display.upper() for column in description)

    def _started(self) -> psycopg.RawCursor[Any]:
        if self._cursor is None:
            raise QueryError("the query was not started; call start() first")
        return self._cursor

    def _failed(self, error: BaseException) -> str:
        return _refusal(error) if isinstance(error, psycopg.Error) else str(error)

    # -- from any thread (see `QueryCalls`) --

    def _interrupt(self) -> None:
        con = self._con  # None until the call in flight has connected
        if con is not None:
            with contextlib.suppress(psycopg.Error):
                con.cancel_safe(timeout=5.0)

    def _release(self) -> None:
        if self._con is not None:
            with contextlib.suppress(psycopg.Error):
                self._con.close()  # rolls the read-only transaction back


def _refusal(error: psycopg.Error) -> str:
    """Say why PostgreSQL refused a user query, and what to do."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    # In DuckDB's words where it has them (`replay._store._readonly`), so that the
    # command and the web view say them their own way on both stores.
    if isinstance(error, psycopg.errors.InsufficientPrivilege):
        return (f"engine.sql() only reads the views {' and '.join(PUBLIC_VIEWS)} on a "
                f"PostgreSQL store: {text}")
    if isinstance(error, psycopg.errors.ReadOnlySqlTransaction):
        return (f"engine.sql() only reads: {text}; use SELECT, WITH ... SELECT or "
                "EXPLAIN")
    if isinstance(error, psycopg.errors.QueryCanceled):
        return f"query stopped: {text}; pass a larger timeout= to allow more time"
    if "multiple commands" in text:
        return (f"engine.sql() runs exactly one query: {text}; pass one SELECT, "
                "WITH ... SELECT or EXPLAIN")
    return f"query failed: {text}"
