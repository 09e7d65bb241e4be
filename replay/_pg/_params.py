"""Query parameters written for DuckDB, sent to PostgreSQL.

`engine.sql` takes the same queries on both stores. DuckDB accepts ``?``, ``$1`` and
``$name`` placeholders; PostgreSQL's own protocol takes ``$1`` only. So a query with
parameters has its ``?`` and ``$name`` placeholders numbered, and a dict of values
becomes a list in that order. Text inside quotes, dollar quotes and comments is left
alone, so ``'a?b'`` stays a string. A query without parameters is sent as written
(``?`` is also a jsonb operator in PostgreSQL).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from replay._errors import QueryError

# What a placeholder scan must step over whole, or what is a placeholder.
_TOKENS = re.compile(
    r"""
    (?P<skip>'(?:[^']|'')*'               # a string
      | "(?:[^"]|"")*"                    # a quoted identifier
      | --[^\n]*                          # a line comment
      | /\*.*?\*/                         # a block comment
      | \$(?P<tag>[A-Za-z_]*)\$.*?\$(?P=tag)\$)  # a dollar-quoted string
    | (?P<mark>\?)                        # DuckDB's positional placeholder
    | \$(?P<number>\d+)                   # PostgreSQL's own
    | \$(?P<name>[A-Za-z_][A-Za-z_0-9]*)  # DuckDB's named placeholder
    """,
    re.VERBOSE | re.DOTALL,
)


def positional(sql: str, params: Sequence[Any] | dict[str, Any] | None
               ) -> tuple[str, list[Any] | None]:
    """Return `sql` with ``$1``-style placeholders only, and the values in their order.

    Raises:
        QueryError: The placeholders and the values do not match (mixed styles, a
            name without a value, a count that differs).
    """
    if params is None:
        return sql, None
    if isinstance(params, dict):
        return _named(sql, params)
    values = list(params)
    count = 0
    numbered = False

    def number(match: re.Match[str]) -> str:
        nonlocal count, numbered
        if match.group("mark"):
            count += 1
            return f"${count}"
        numbered = numbered or match.group("number") is not None
        return match.group(0)

    text = _TOKENS.sub(number, sql)
    if count and numbered:
        raise QueryError("the query mixes ? and $1 placeholders; use one style")
    if count and count != len(values):
        raise QueryError(f"the query has {count} ? placeholders but {len(values)} values "
                         "were passed")
    return text, values


def _named(sql: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group("name")
        if name is None:
            if match.group("mark") or match.group("number"):
                raise QueryError("the query mixes named and positional placeholders; "
                                 "with a dict of values use $name placeholders only")
            return match.group(0)
        if name not in params:
            raise QueryError(f"the query's placeholder ${name} has no value; pass "
                             f"params with a {name!r} key")
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    text = _TOKENS.sub(number, sql)
    return text, [params[name] for name in order]
