r"""Records as rows of the PostgreSQL event table (`COPY ... FROM STDIN`).

The row is DuckDB's (`replay._store._rows.record_row`: same columns, same order, lone
surrogates escaped), adapted to one limit of Postgres: text cannot hold NUL (U+0000).
An identifier with NUL (run id, workflow, key, name) cannot be stored faithfully and is
refused; in descriptive text (errors, statuses, versions) NUL becomes U+FFFD, since an
error message must not keep a run from being recorded. `value_json` never holds a raw
NUL: JSON writes it as the escape ``\u0000``, which the json type keeps as text.
"""

from __future__ import annotations

from typing import Any

from replay._core._records import Record
from replay._store._rows import record_row
from replay._store._schema import TABLE_COLUMNS

# The columns `pg_row` fills, in its order: `COPY replay_event_log (COPY_COLUMNS) FROM STDIN`.
COPY_COLUMNS = TABLE_COLUMNS

_FIELDS = tuple(name.strip() for name in TABLE_COLUMNS.split(","))
# Identifiers, refused with NUL; descriptive text, NUL replaced.
_REFUSED = tuple(_FIELDS.index(name) for name in ("run_id", "workflow", "key", "name"))
_REPLACED = tuple(_FIELDS.index(name) for name in
                  ("error_type", "error", "error_types", "status_text", "code_version"))
_NUL = "\x00"


def pg_row(record: Record) -> tuple[Any, ...]:
    """Turn a record into a row of `replay_event_log` in `COPY_COLUMNS` order.

    Raises:
        ValueError: The run id, workflow, key or name holds a NUL character.
    """
    row = record_row(record)
    if not any(isinstance(value, str) and _NUL in value for value in row):
        return row  # nearly always: the row as DuckDB stores it
    for index in _REFUSED:
        value = row[index]
        if isinstance(value, str) and _NUL in value:
            field = _FIELDS[index]
            raise ValueError(
                f"the {field} {value!r} holds a NUL character (\\x00), which PostgreSQL "
                f"text cannot hold; use a {field} without NUL characters"
            )
    cleaned = list(row)
    for index in _REPLACED:
        value = cleaned[index]
        if isinstance(value, str):
            cleaned[index] = value.replace(_NUL, "\ufffd")
    return tuple(cleaned)
