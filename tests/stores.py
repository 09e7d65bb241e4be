"""Reading a test's database directly, whichever store it is (no engine holds it).

`reading(db)` gives a DuckDB connection for a file path, and for a PostgreSQL URL an
object with the same `execute(sql, params).fetchall()/fetchone()` surface: ``?``
placeholders work on both, and JSON columns read as their text on both.
`memo_state(history)` is everything a run's memo holds, to compare the memos that
stores fold.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb

from replay._core._history import RunHistory


class _PgReader:
    def __init__(self, con: Any) -> None:
        self._con = con

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        import psycopg

        from replay._pg._params import positional

        text, values = positional(sql, params)
        return psycopg.RawCursor(self._con).execute(text, values)


@contextmanager
def reading(db: str) -> Iterator[Any]:
    """A read-only connection to the database (a DuckDB file or a PostgreSQL URL)."""
    if not db.startswith(("postgresql://", "postgres://")):
        con = duckdb.connect(db, read_only=True)
        try:
            yield con
        finally:
            con.close()
        return
    import psycopg
    from psycopg.types.string import TextLoader

    with psycopg.connect(db, autocommit=True) as pg:
        pg.adapters.register_loader("json", TextLoader)
        yield _PgReader(pg)


def memo_state(history: RunHistory) -> tuple[Any, ...]:
    """Everything a memo holds."""
    return tuple(getattr(history, name) for name in RunHistory.__slots__)
