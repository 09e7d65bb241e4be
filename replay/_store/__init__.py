"""The DuckDB store: the only package that imports duckdb.

Everything here is synchronous but `_readers`; the engine calls it from worker threads
(reads) or hands batches to its writer thread. `_schema` holds the tables and public
views, `_rows` the conversion of records to rows and back, `_connect` opening files
(owner-only), `_writer_store` the engine's store and `_writer` its group-commit writer,
`_access` what the `replay` command uses on a file no engine holds, `_purge` retention
(which records a purge deletes, the deletes, the archive), and `_compact` the rewrite
of a file into a fresh one. User queries: `_readonly` decides what may run, `_queries`
runs one on its own stoppable cursor (the rules of stopping one, shared with the
PostgreSQL store, in `_query_calls`), and `_readers` runs them from trio in threads of
their own, under a time limit.
"""

from replay._store._access import FileAccess, write_export
from replay._store._connect import damaged, file_keys
from replay._store._hot import hot_from_row
from replay._store._protocol import (
    SEQ_BLOCK,
    Claimed,
    EngineStore,
    OpenRuns,
    SharedStore,
    UserQuery,
    WorkerOptions,
)
from replay._store._purge import (
    FINISHED,
    GenerationRows,
    PurgePlan,
    check_archive_path,
    delete_generations,
    delete_runs,
)
from replay._store._queries import ReadQuery
from replay._store._readers import (
    CLI_ADVICE,
    ENGINE_ADVICE,
    Readers,
    TimedQuery,
    checked_timeout,
    timed_out_message,
)
from replay._store._rows import (
    ParkedRow,
    RunRow,
    clean_text,
    from_epoch_us,
    record_row,
    utc,
    utc_or_none,
)
from replay._store._schema import SCHEMA_VERSION
from replay._store._writer_store import Store

__all__ = [
    "CLI_ADVICE",
    "ENGINE_ADVICE",
    "Claimed",
    "EngineStore",
    "OpenRuns",
    "SEQ_BLOCK",
    "SharedStore",
    "WorkerOptions",
    "FINISHED",
    "SCHEMA_VERSION",
    "FileAccess",
    "GenerationRows",
    "PurgePlan",
    "ReadQuery",
    "Readers",
    "ParkedRow",
    "from_epoch_us",
    "RunRow",
    "Store",
    "TimedQuery",
    "UserQuery",
    "check_archive_path",
    "checked_timeout",
    "clean_text",
    "damaged",
    "delete_generations",
    "delete_runs",
    "file_keys",
    "hot_from_row",
    "timed_out_message",
    "record_row",
    "utc",
    "utc_or_none",
    "write_export",
]
