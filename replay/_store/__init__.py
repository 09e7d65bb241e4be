"""The DuckDB store: the only package that imports duckdb.

Everything here is synchronous; the engine calls it from worker threads (reads) or
hands batches to its writer thread. `_schema` holds the tables and public views,
`_rows` the conversion of records to rows and back, `_connect` opening files and the
read-only query check, `_writer_store` the engine's store with its group-commit writer,
and `_access` what the `replay` command and the live channel use.
"""

from replay._store._access import FileAccess, ReadQuery, query_arrow, read_query, write_export
from replay._store._connect import damaged, file_keys
from replay._store._rows import RunRow, clean_text, record_row, utc, utc_or_none
from replay._store._schema import SCHEMA_VERSION
from replay._store._writer_store import Store

__all__ = [
    "SCHEMA_VERSION",
    "FileAccess",
    "ReadQuery",
    "RunRow",
    "Store",
    "clean_text",
    "damaged",
    "file_keys",
    "query_arrow",
    "read_query",
    "record_row",
    "utc",
    "utc_or_none",
    "write_export",
]
