"""The read-only check of `engine.sql` and `replay sql`, decided by DuckDB itself.

Two questions, both answered from what DuckDB reports about the statement rather than
from its text:

1. Is it exactly one query? DuckDB's parser gives the statement type; only ``SELECT``
   (and ``EXPLAIN`` of a ``SELECT``) passes.
2. Does the query call a table function that is not a plain read? A ``SELECT`` can call
   ``checkpoint()``, ``force_checkpoint()``, ``enable_logging()`` and the like, which
   act on the database even inside a read-only transaction. The binder's logical plan
   (``EXPLAIN`` with ``explain_output = 'all'``, before the optimizer could drop
   anything) names every table function the query reaches, through views, macros,
   subqueries and ``query()``. DuckDB's catalog (``duckdb_functions()``) says which
   plan nodes are table functions; its ``has_side_effects`` column is NULL for every
   table function in duckdb 2.0, so whether one only reads is decided by the allow-list
   below, and any table function not on it is refused, naming it.

Files, URLs and extensions are refused by the connection itself (external access is
off), so the table functions that read files fail while the query is bound.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb

from replay._errors import QueryError

# Table functions that only read what the database or DuckDB itself holds.
READ_ONLY_TABLE_FUNCTIONS = frozenset({
    # tables, and rows made from values
    "seq_scan", "range", "generate_series", "unnest", "repeat", "repeat_row", "json_each",
    "json_tree", "summary", "query", "query_table",
    # the catalog and the engine's state, as information_schema, SHOW and DESCRIBE use them
    "duckdb_columns", "duckdb_constraints", "duckdb_databases", "duckdb_dependencies",
    "duckdb_functions", "duckdb_indexes", "duckdb_keywords", "duckdb_schemas",
    "duckdb_sequences", "duckdb_settings", "duckdb_tables", "duckdb_types", "duckdb_views",
    "duckdb_memory", "duckdb_temporary_files", "duckdb_optimizers", "duckdb_extensions",
    "duckdb_logs", "duckdb_log_contexts", "duckdb_triggers",
    "pragma_table_info", "pragma_storage_info", "pragma_database_size",
    "pragma_metadata_info", "pragma_version", "pragma_platform", "pragma_show",
    "pragma_collations", "pragma_user_agent", "pg_timezone_names", "icu_calendar_names",
    "test_all_types", "test_vector_types",
})

_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s*(\([^)]*\))?\s*(ANALYZE\b)?", re.IGNORECASE)
_TABLE_FUNCTIONS: frozenset[str] | None = None
_CATALOG_LOCK = threading.Lock()

Params = Sequence[Any] | dict[str, Any] | None


def check_read_only(cursor: duckdb.DuckDBPyConnection, sql: str, params: Params = None) -> None:
    """Accept exactly one SELECT (or EXPLAIN of one) that calls no table function but reads.

    `EXPLAIN ANALYZE` executes the statement it explains, so the explained statement
    must itself pass.

    Raises:
        QueryError: It is not exactly one read-only query.
        duckdb.Error: DuckDB cannot bind it (the caller reports that as a failed query).
    """
    statements = cursor.extract_statements(sql)
    if not statements:
        raise QueryError(
            "engine.sql() runs exactly one query, got none; pass one SELECT, "
            "WITH ... SELECT or EXPLAIN"
        )
    if len(statements) > 1:
        raise QueryError(
            f"engine.sql() runs exactly one query, got {len(statements)} statements; "
            "send them one at a time"
        )
    kind, query = statements[0].type.name, statements[0].query
    if kind == "EXPLAIN":
        query = _EXPLAIN_PREFIX.sub("", query, 1)
        inner = cursor.extract_statements(query)
        kind = inner[0].type.name if len(inner) == 1 else "EXPLAIN"
    if kind != "SELECT":
        raise QueryError(
            f"engine.sql() only reads: {kind} statements are not allowed; "
            "use SELECT, WITH ... SELECT or EXPLAIN"
        )
    for name in sorted(_plan_names(cursor, query, params) & _table_functions(cursor)):
        if name not in READ_ONLY_TABLE_FUNCTIONS:
            raise QueryError(
                f"engine.sql() only reads: the table function {name}() is not allowed (it "
                "may change the database or the engine, or read outside the database); "
                "query the replay_events and replay_runs views"
            )


def _plan_names(cursor: duckdb.DuckDBPyConnection, query: str, params: Params) -> set[str]:
    """Return the lower-cased operator names of every plan DuckDB makes for `query`."""
    planner = cursor.cursor()
    try:
        # A session setting: it changes the EXPLAIN output of this cursor only.
        planner.execute("SET explain_output = 'all'")
        try:
            plans = planner.execute(f"EXPLAIN (FORMAT JSON) {query}", params).fetchall()
        except duckdb.Error:
            # Bind the query alone (binding runs nothing), so that the error quotes
            # the user's text rather than ours.
            planner.sql(query, params=params)
            raise
    finally:
        planner.close()
    names: set[str] = set()
    for _, text in plans:
        for node in _nodes(json.loads(text)):
            names.add(str(node.get("name", "")).lower())
    return names


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    for node in tree if isinstance(tree, list) else [tree]:
        if isinstance(node, dict):
            yield node
            yield from _nodes(node.get("children", []))


def _table_functions(cursor: duckdb.DuckDBPyConnection) -> frozenset[str]:
    """Return the names of DuckDB's table functions (read once per process: ~20 ms)."""
    global _TABLE_FUNCTIONS
    with _CATALOG_LOCK:
        if _TABLE_FUNCTIONS is None:
            rows = cursor.execute(
                "SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
                "WHERE function_type = 'table'"
            ).fetchall()
            _TABLE_FUNCTIONS = frozenset(row[0] for row in rows)
        return _TABLE_FUNCTIONS
