"""Opening PostgreSQL connections the way every part of the store needs them.

A server that went away (a restart, a failover) is tried again with `Retry`, by the
store's readers and by its writer alike, up to `RECONNECT_SECONDS`.
"""

from __future__ import annotations

import time

import psycopg
from psycopg.types.string import TextLoader

from replay._errors import DatabaseError
from replay._pg._url import shown_url

# How long to wait for the server to answer a connection: a wrong host fails in
# seconds instead of the operating system's minutes.
CONNECT_TIMEOUT_SECONDS = 10
# How long the engine keeps trying to reach a server that went away (a restart, a
# failover) before it stops: a commit or read waits that long, then fails.
RECONNECT_SECONDS = 60.0


def connect(url: str, *, autocommit: bool = True,
            prepare: bool = True) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection to `url` that reads JSON columns as their text.

    replay hands `value_json` to users as the JSON text it wrote, as DuckDB does,
    never as parsed Python objects.

    Args:
        url: A ``postgresql://`` URL (libpq's syntax, options included).
        autocommit: Whether each statement commits on its own.
        prepare: Whether psycopg may prepare statements it runs often (off for
            connections whose session a user query may reset).

    Raises:
        DatabaseError: The server cannot be reached or refuses the connection.
    """
    shown = shown_url(url)
    try:
        con = psycopg.connect(url, autocommit=True, application_name="replay",
                              connect_timeout=CONNECT_TIMEOUT_SECONDS)
        # JIT compiling costs more than the engine's small queries take (measured:
        # +350 ms on loading the open runs of a 500,000-row history). Set here, not
        # in the connection's options, which would replace the URL's own.
        con.execute("SET jit = off")
        con.autocommit = autocommit
    except psycopg.Error as error:
        # libpq may quote a malformed URL whole, password included.
        problem = _first_line(error).replace(url, shown)
        raise DatabaseError(
            f"cannot connect to the PostgreSQL database {shown!r}: {problem}; check that "
            "the server runs and that the URL's host, port, user, password and database "
            "are right"
        ) from None
    for name in ("json", "jsonb"):
        con.adapters.register_loader(name, TextLoader)
    if not prepare:
        con.prepare_threshold = None
    return con


def failed(shown: str, error: psycopg.Error) -> DatabaseError:
    """Return the error for a statement of the store that PostgreSQL refused."""
    if isinstance(error, psycopg.OperationalError):
        return DatabaseError(
            f"lost the PostgreSQL database {shown!r}: {_first_line(error)}; the engine "
            "kept trying to reconnect for a minute; check the server, then open the engine "
            "again (nothing acknowledged was lost)"
        )
    return DatabaseError(
        f"PostgreSQL database {shown!r} refused a statement: {_first_line(error)}; "
        "if replay's tables were changed by hand, restore them from a backup"
    )


class Retry:
    """Waits between attempts to reach a server that went away, up to a deadline."""

    def __init__(self) -> None:
        self._deadline = time.monotonic() + RECONNECT_SECONDS
        self._delay = 0.05

    def wait_or_raise(self, error: BaseException) -> None:
        """Sleep before the next attempt, or raise `error` once the deadline passed."""
        if time.monotonic() + self._delay > self._deadline:
            raise error
        time.sleep(self._delay)
        self._delay = min(self._delay * 2, 1.0)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
