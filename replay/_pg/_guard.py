"""What a user query may say before PostgreSQL sees it.

The server enforces the rules of `engine.sql` (a read-only transaction, one statement,
the role ``replay_reader``), with one gap: a session may always switch back to the role
it logged in as, even from inside a query (``set_config('role', 'none', true)``), and
a query that builds SQL text and runs it (``query_to_xml``, ``ts_stat``, a ``DO``
block) can hide that call from any reading of its own text. So a query must be a query
(``SELECT``, ``WITH``, ``VALUES``, ``TABLE``, ``EXPLAIN``), and may not name the
functions that change settings or run SQL text, nor spell a name with Unicode escapes
(``U&"..."``), which would hide it from this check. Names are compared as PostgreSQL
folds them: unquoted ones lower-cased, quoted ones as written.
"""

from __future__ import annotations

import re

from replay._errors import QueryError

QUERY_STARTS = frozenset({"select", "with", "values", "table", "explain"})
# The first words of PostgreSQL's other statements, refused by their name.
STATEMENTS = frozenset({
    "insert", "update", "delete", "merge", "create", "alter", "drop", "truncate", "grant",
    "revoke", "copy", "call", "do", "set", "reset", "commit", "rollback", "begin", "start",
    "savepoint", "release", "abort", "end", "lock", "listen", "notify", "unlisten",
    "vacuum", "analyze", "analyse", "cluster", "reindex", "refresh", "prepare", "execute",
    "deallocate", "discard", "show", "load", "comment", "security", "import",
    "checkpoint", "fetch", "move", "close", "declare",
})

# Functions that set the session's role or settings, or run SQL given as text.
REFUSED_FUNCTIONS = frozenset({
    "set_config", "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema",
    "cursor_to_xml", "cursor_to_xmlschema", "ts_stat", "dblink", "dblink_exec",
    "dblink_open", "dblink_send_query",
})

_TOKENS = re.compile(
    r"""
    '(?:[^']|'')*'                      # a string
    | \$(?P<tag>[A-Za-z_]*)\$.*?\$(?P=tag)\$  # a dollar-quoted string
    | --[^\n]*                          # a line comment
    | /\*.*?\*/                         # a block comment
    | (?P<escaped>[Uu]&["'])            # a Unicode-escaped name or string
    | "(?P<quoted>(?:[^"]|"")*)"        # a quoted name
    | (?P<word>[A-Za-z_][A-Za-z_0-9$]*) # a name or keyword
    """,
    re.VERBOSE | re.DOTALL,
)


def check_query(sql: str) -> None:
    """Refuse what is not a plain query of the views (see the module's docstring).

    Raises:
        QueryError: It is not a query, names a refused function, or uses ``U&``.
    """
    first: str | None = None
    for match in _TOKENS.finditer(sql):
        if match.group("escaped"):
            raise QueryError("engine.sql() only reads: names and strings spelled with "
                             "Unicode escapes (U&\"...\") are not allowed; write them as "
                             "they are")
        word = match.group("word")
        name = word.lower() if word is not None else match.group("quoted")
        if name is None:
            continue
        name = name.replace('""', '"')
        if first is None:
            first = name.lower()
        if name in REFUSED_FUNCTIONS:
            raise QueryError(
                f"engine.sql() only reads: {name}() is not allowed (it changes the "
                "session's role or settings, or runs SQL given as text); query the "
                "replay_events and replay_runs views")
    if first is None:
        raise QueryError("engine.sql() runs exactly one query, got none; pass one SELECT, "
                         "WITH ... SELECT or EXPLAIN")
    if first in STATEMENTS:
        raise QueryError(f"engine.sql() only reads: {first.upper()} statements are not "
                         "allowed; use SELECT, WITH ... SELECT or EXPLAIN")
    if first not in QUERY_STARTS:
        raise QueryError(f"query failed: a query starts with SELECT, WITH, VALUES, TABLE "
                         f"or EXPLAIN, not {first!r}")
