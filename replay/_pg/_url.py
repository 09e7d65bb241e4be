"""Whether a database location is a PostgreSQL URL, and how to show one (no psycopg)."""

from __future__ import annotations

import importlib.util
from urllib.parse import urlsplit, urlunsplit

SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(location: str) -> bool:
    """Whether `location` names a PostgreSQL database rather than a DuckDB file."""
    return location.startswith(SCHEMES)


def shown_url(url: str) -> str:
    """Return `url` fit for messages and logs: its password, if any, masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://..."
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def require_psycopg() -> None:
    """Check that the PostgreSQL driver is installed.

    Raises:
        ModuleNotFoundError: psycopg is missing; the message says what to install.
    """
    if importlib.util.find_spec("psycopg") is None:
        raise ModuleNotFoundError(
            "a postgresql:// database needs psycopg, which is not installed; "
            'pip install "replay-workflows[postgres]"',
            name="psycopg",
        )
