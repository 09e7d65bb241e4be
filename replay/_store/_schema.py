"""The database schema: tables, the public views, and the schema-version check.

The event table is append-only, has no primary key and no UPDATEs; a run's state is
derived from its newest state-carrying event. A single-column index on `run_id` keeps
loading one run's history fast in big files. The views `replay_events` and
`replay_runs` are the public SQL contract (docs/sql.md).
"""

from __future__ import annotations

import duckdb

from replay._errors import DatabaseError, ReplayError
from replay._store._connect import unusable

SCHEMA_VERSION = 1


_SCHEMA = """
CREATE TABLE IF NOT EXISTS replay_meta (name VARCHAR, value VARCHAR);
CREATE TABLE IF NOT EXISTS replay_event_log (
    seq BIGINT, run_id VARCHAR, workflow VARCHAR, key VARCHAR, kind VARCHAR,
    event VARCHAR, attempt INTEGER, value BLOB, value_json JSON, error_type VARCHAR,
    error VARCHAR, recorded_at TIMESTAMPTZ, duration_ms DOUBLE, wake_at TIMESTAMPTZ,
    name VARCHAR, error_types VARCHAR, run_state VARCHAR, status_text VARCHAR
);
CREATE INDEX IF NOT EXISTS replay_event_log_run_id ON replay_event_log (run_id);
CREATE OR REPLACE VIEW replay_events AS
    SELECT seq, run_id, workflow, key, kind, event, attempt, value, value_json,
           error_type, error, recorded_at, duration_ms, wake_at
    FROM replay_event_log;
CREATE OR REPLACE VIEW replay_runs AS
    WITH latest AS (
        SELECT run_id, run_state, key, wake_at, status_text, error_type, error, value_json
        FROM replay_event_log WHERE run_state IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1
    ), started AS (
        SELECT run_id, workflow, recorded_at, value_json
        FROM replay_event_log WHERE kind = 'run' AND event = 'started'
    ), touched AS (
        SELECT run_id, max(recorded_at) AS updated_at FROM replay_event_log GROUP BY run_id
    )
    SELECT s.run_id, s.workflow, l.run_state AS state, s.recorded_at AS created_at,
           t.updated_at, s.value_json AS input_json,
           CASE WHEN l.run_state = 'completed' THEN l.value_json END AS output_json,
           CASE WHEN l.run_state = 'failed' THEN l.error_type END AS error_type,
           CASE WHEN l.run_state = 'failed' THEN l.error END AS error,
           CASE WHEN l.run_state IN ('sleeping', 'suspended') THEN l.key END AS waiting_for,
           CASE WHEN l.run_state IN ('sleeping', 'suspended') THEN l.wake_at END AS wake_at,
           CASE WHEN l.run_state = 'suspended' THEN l.status_text END AS status_text
    FROM started s JOIN latest l USING (run_id) JOIN touched t USING (run_id);
"""


COLUMNS = (
    "seq, run_id, workflow, key, kind, event, attempt, value, value_json, error_type, "
    "error, recorded_at, duration_ms, wake_at, name, error_types, run_state, status_text"
)

# What the memo needs, cheap to fetch: converting TIMESTAMPTZ values costs more than
# everything else in a history load, and the fold reads only `wake_at`.
MEMO_COLUMNS = (
    "seq, key, kind, event, attempt, value, error_type, error, epoch_us(wake_at), name, "
    "error_types, status_text"
)


RUN_SUMMARY = """
    WITH latest AS (
        SELECT run_id, run_state, key, wake_at, status_text, error_type, error, value
        FROM replay_event_log WHERE run_state IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1
    ), started AS (
        SELECT run_id, workflow, recorded_at FROM replay_event_log
        WHERE kind = 'run' AND event = 'started'
    ), touched AS (
        SELECT run_id, max(recorded_at) AS updated_at FROM replay_event_log GROUP BY run_id
    )
    SELECT s.run_id, s.workflow, l.run_state, s.recorded_at, t.updated_at, l.key,
           l.wake_at, l.status_text, l.error_type, l.error, l.value
    FROM started s JOIN latest l USING (run_id) JOIN touched t USING (run_id)
"""


SIGNALLED_WHILE_SUSPENDED = """
    WITH latest AS (
        SELECT run_id, run_state, key FROM replay_event_log WHERE run_state IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1
    )
    SELECT DISTINCT l.run_id FROM latest l
    JOIN replay_event_log s ON s.run_id = l.run_id AND s.kind = 'signal' AND s.key = l.key
    WHERE l.run_state = 'suspended'
"""


def check_schema(con: duckdb.DuckDBPyConnection, path: str) -> None:
    try:
        listed = con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        tables = {row[0] for row in listed}
        if "replay_meta" in tables:
            found = con.execute(
                "SELECT value FROM replay_meta WHERE name = 'schema_version'"
            ).fetchall()
            version = found[0][0] if found else None
            if version != str(SCHEMA_VERSION):
                raise DatabaseError(
                    f"database {path!r} has replay schema version {version!r}, but this "
                    f"version of replay reads schema version {SCHEMA_VERSION}; upgrade "
                    "replay-workflows to open it"
                )
            return
        con.execute("BEGIN TRANSACTION")
        con.execute(_SCHEMA)
        con.execute("INSERT INTO replay_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        con.execute("COMMIT")
    except ReplayError:
        raise
    except duckdb.Error as error:
        raise unusable(path, error) from error


def check_existing_schema(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Check that `path` is a replay database of this schema version; create nothing."""
    try:
        _check_version(con, path)
    except duckdb.Error as error:
        raise unusable(path, error) from error


def _check_version(con: duckdb.DuckDBPyConnection, path: str) -> None:
    tables = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "replay_meta" not in tables or "replay_event_log" not in tables:
        raise DatabaseError(
            f"{path!r} is a DuckDB file but not a replay database (it has no replay "
            "tables); pass the path your application gives replay.open_engine()"
        )
    found = con.execute("SELECT value FROM replay_meta WHERE name = 'schema_version'").fetchall()
    version = found[0][0] if found else None
    if version != str(SCHEMA_VERSION):
        raise DatabaseError(
            f"database {path!r} has replay schema version {version!r}, but this version of "
            f"replay reads schema version {SCHEMA_VERSION}; upgrade replay-workflows to open it"
        )
