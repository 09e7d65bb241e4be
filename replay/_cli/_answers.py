"""What the `replay` command's subcommands get from a database, live or not.

`Source` is what a subcommand may ask (`replay._cli._source.open_source` returns one),
`Result` a query's answer, and `CliError` a failure reported with exit status 1.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from replay._pg._url import is_postgres_url, shown_url
from replay._types import Event

CHUNK_ROWS = 1000
# The columns of `replay_events` but `value` (the codec's bytes; `value_json` shows it),
# in the view's order: what the command prints of events, on either database.
EVENT_COLUMNS = ", ".join(name for name in Event.__dataclass_fields__ if name != "value")


class CliError(Exception):
    """A failure the command reports in one message, with exit status 1."""


@dataclass
class Result:
    """A query's answer: columns, DuckDB type names, and the rows in chunks."""

    columns: list[str]
    types: list[str]
    chunks: Iterator[list[tuple[Any, ...]]]
    _rows: list[tuple[Any, ...]] | None = field(default=None, repr=False)

    def rows(self) -> list[tuple[Any, ...]]:
        """Return every row (reading the rest of the answer)."""
        if self._rows is None:
            self._rows = [row for chunk in self.chunks for row in chunk]
        return self._rows


def shown(path: str) -> str:
    """Return the database as the command prints it: a URL's password masked."""
    return shown_url(path) if is_postgres_url(path) else path


# The password of a URL, even one too malformed to parse (which libpq may quote whole).
_PASSWORD = re.compile(r"postgres(?:ql)?://[^:@/?#]*:([^@/?#]+)@")


def masked(text: str, path: str) -> str:
    """Return a message about `path` with the URL's password, wherever it is quoted, masked."""
    found = _PASSWORD.match(path) if is_postgres_url(path) else None
    return text if found is None else text.replace(f":{found[1]}@", ":***@")


class Source(Protocol):
    """What a subcommand can ask of a database, live or not."""

    live: bool
    queued: bool
    """Whether writes are queued for the engines running on a PostgreSQL database."""
    description: str
    noun: str
    """What the command calls the database in messages: ``file`` or ``database``."""

    def now(self) -> datetime:
        """Return the engine clock's time (for a file: what an engine would read)."""

    def query(self, sql: str, params: Any = None, timeout: float | None = None) -> Result:
        """Run one read-only query, stopped after `timeout` seconds if given."""

    def signal(self, run_id: str, key: str, payload: Any) -> tuple[str, str | None]:
        """Signal a run; return its state afterwards and a warning for a misdirected one."""

    def resume(self, run_id: str) -> tuple[str, str]:
        """Resume a run; return its state before and after."""

    def cancel(self, run_id: str, reason: str | None) -> tuple[str, bool]:
        """Cancel a run; return its state afterwards and whether this request counted."""

    def terminate(self, run_id: str, reason: str | None) -> str:
        """Terminate a run; return its state afterwards."""

    def purge(self, request: dict[str, Any]) -> dict[str, Any]:
        """Purge (see `replay._cli._retention`); return the report's fields."""

    def close(self) -> None:
        """Let go of the database."""
