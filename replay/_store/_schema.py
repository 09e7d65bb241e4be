"""The database schema: tables, the public views, and the schema-version check.

The event table is append-only, has no primary key and no UPDATEs; a run's state is
derived from its newest state-carrying event. Commits write narrow rows to the hot log
first (`_hot`); every reader reads `replay_event_all`, the table and the hot rows. A
single-column index on `run_id` keeps loading one run's history fast in big files.
The views `replay_events` and `replay_runs` are the public SQL contract (docs/sql.md).
"""

from __future__ import annotations

import duckdb

from replay._errors import DatabaseError, ReplayError
from replay._store._connect import unusable

SCHEMA_VERSION = 3

# The table's columns in order (rows are written by position).
TABLE_COLUMNS = (
    "seq, run_id, workflow, key, kind, event, attempt, value, value_json, error_type, "
    "error, recorded_at, duration_ms, wake_at, name, error_types, run_state, status_text, "
    "generation, code_version"
)

# The hot log that small commits write (see `_hot`).
HOT_TABLE = ("CREATE TABLE IF NOT EXISTS replay_event_hot "
             "(seq BIGINT, run_id VARCHAR, data VARCHAR);")

# The hot rows as rows of `replay_event_log` (the JSON array holds the row from its
# third column on). `run_id` is a column of its own, so that a query for one run's
# records (loading a memo, a run's state) filters before any JSON is parsed. Each array
# is parsed once, into text values, then cast: half the time of extracting each value
# from the JSON (2,060 rows: 4-5 against 8-21 ms), the cost of settling the hot log.
HOT_ROWS = """
    SELECT seq, run_id, d[1] AS workflow, d[2] AS key, d[3] AS kind, d[4] AS event,
           d[5]::INTEGER AS attempt, from_base64(d[6]) AS value,
           d[7]::JSON AS value_json, d[8] AS error_type, d[9] AS error,
           make_timestamptz(d[10]::BIGINT) AS recorded_at,
           d[11]::DOUBLE AS duration_ms, make_timestamptz(d[12]::BIGINT) AS wake_at,
           d[13] AS name, d[14] AS error_types, d[15] AS run_state,
           d[16] AS status_text, d[17]::INTEGER AS generation, d[18] AS code_version
    FROM (SELECT seq, run_id, from_json(data, '["VARCHAR"]') AS d FROM replay_event_hot)
"""

# What every reader reads: the table and the rows not settled yet.
ALL_VIEW = f"""
CREATE OR REPLACE VIEW replay_event_all AS
    SELECT {TABLE_COLUMNS} FROM replay_event_log
    UNION ALL
    {HOT_ROWS};
"""

# What each schema version added to `replay_event_log`, applied in order to an older file
# when a writer opens it (columns are appended: the Appender writes rows by position).
_MIGRATIONS = {
    2: ("ALTER TABLE replay_event_log ADD COLUMN generation INTEGER;"
        "ALTER TABLE replay_event_log ADD COLUMN code_version VARCHAR;"),
    3: HOT_TABLE,
}


_TABLES = """
CREATE TABLE IF NOT EXISTS replay_meta (name VARCHAR, value VARCHAR);
CREATE TABLE IF NOT EXISTS replay_event_log (
    seq BIGINT, run_id VARCHAR, workflow VARCHAR, key VARCHAR, kind VARCHAR,
    event VARCHAR, attempt INTEGER, value BLOB, value_json JSON, error_type VARCHAR,
    error VARCHAR, recorded_at TIMESTAMPTZ, duration_ms DOUBLE, wake_at TIMESTAMPTZ,
    name VARCHAR, error_types VARCHAR, run_state VARCHAR, status_text VARCHAR,
    generation INTEGER, code_version VARCHAR
);
CREATE INDEX IF NOT EXISTS replay_event_log_run_id ON replay_event_log (run_id);
""" + HOT_TABLE

# The `replay_runs` view's columns, from its CTEs (`started`, `latest`, `touched`,
# `notes`, `versions`), which each store writes in its own SQL dialect.
RUNS_VIEW_SELECT = """
    SELECT s.run_id, s.workflow, l.run_state AS state, s.recorded_at AS created_at,
           t.updated_at, s.value_json AS input_json,
           CASE WHEN l.run_state = 'completed' THEN l.value_json END AS output_json,
           CASE WHEN l.run_state IN ('failed', 'cancelled') THEN l.error_type END AS error_type,
           CASE WHEN l.run_state IN ('failed', 'cancelled') THEN l.error END AS error,
           CASE WHEN l.run_state IN ('sleeping', 'suspended') THEN l.key END AS waiting_for,
           CASE WHEN l.run_state IN ('sleeping', 'suspended') THEN l.wake_at END AS wake_at,
           coalesce(CASE WHEN l.run_state = 'suspended' THEN l.status_text END, n.note_text)
               AS status_text,
           s.parent_run_id, n.note_json AS status_json,
           coalesce(l.generation, 0) AS generation, s.code_version, v.last_code_version
    FROM started s JOIN latest l USING (run_id) JOIN touched t USING (run_id)
         LEFT JOIN notes n USING (run_id) LEFT JOIN versions v USING (run_id);
"""

# The public views. Derived from the table alone, so a writer re-creates them on every
# open: a file written by an earlier release gains the columns added since.
_VIEWS = ALL_VIEW + f"""
CREATE OR REPLACE VIEW replay_events AS
    SELECT seq, run_id, workflow, key, kind, event, attempt, value, value_json,
           error_type, error, recorded_at, duration_ms, wake_at,
           coalesce(generation, 0) AS generation
    FROM replay_event_all;
CREATE OR REPLACE VIEW replay_runs AS
    WITH latest AS (
        SELECT run_id, run_state, key, wake_at, status_text, error_type, error, value_json,
               generation
        FROM replay_event_all WHERE run_state IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1
    ), started AS (
        SELECT run_id, workflow, recorded_at, value_json, name AS parent_run_id, code_version
        FROM replay_event_all WHERE kind = 'run' AND event = 'started'
    ), touched AS (
        SELECT run_id, max(recorded_at) AS updated_at FROM replay_event_all GROUP BY run_id
    ), notes AS (
        SELECT run_id, status_text AS note_text, value_json AS note_json
        FROM replay_event_all WHERE kind = 'note'
        QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1
    ), versions AS (
        SELECT run_id, code_version AS last_code_version
        FROM replay_event_all WHERE kind = 'run' AND code_version IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1
    )
{RUNS_VIEW_SELECT}"""


# What a history load reads (a row of an older release's file has no generation).
COLUMNS = (
    "seq, run_id, workflow, key, kind, event, attempt, value, value_json, error_type, "
    "error, recorded_at, duration_ms, wake_at, name, error_types, run_state, status_text, "
    "coalesce(generation, 0), code_version"
)

# What the memo needs, cheap to fetch: converting TIMESTAMPTZ values costs more than
# everything else in a history load, and the fold reads only `wake_at`.
# Zero generations come as NULL: DuckDB hands Python a NULL for much less than an
# integer, and every record of a run that never continued has generation 0.
MEMO_COLUMNS = (
    "seq, key, kind, event, attempt, value, error_type, error, epoch_us(wake_at), name, "
    "error_types, status_text, nullif(generation, 0), code_version"
)


def run_summary(source: str = "replay_event_all", scope: str = "") -> str:
    """Return the query of the state of every run in `source`.

    It is the ``replay_runs`` view's logic, with the encoded value; `scope` may define
    the CTE that `source` names.
    """
    return f"""
    WITH {scope} latest AS (
        SELECT run_id, run_state, key, wake_at, status_text, error_type, error, value,
               generation
        FROM {source} WHERE run_state IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1
    ), started AS (
        SELECT run_id, workflow, recorded_at, seq, name, key FROM {source}
        WHERE kind = 'run' AND event = 'started'
    ), touched AS (
        SELECT run_id, max(recorded_at) AS updated_at, max(seq) AS last_seq FROM {source}
        GROUP BY run_id
    ), notes AS (
        SELECT run_id, status_text AS note_text, value AS note_value FROM {source}
        WHERE kind = 'note'
        QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1
    )
    SELECT s.run_id, s.workflow, l.run_state, s.recorded_at, t.updated_at, l.key,
           l.wake_at, l.status_text, l.error_type, l.error, l.value, s.seq, s.name,
           n.note_text, n.note_value, coalesce(l.generation, 0), t.last_seq, s.key
    FROM started s JOIN latest l USING (run_id) JOIN touched t USING (run_id)
         LEFT JOIN notes n USING (run_id)
    """


# Every run's state (the CLI's listing, `engine.runs()`).
RUN_SUMMARY = run_summary()

# The conditions of a run's start record, and of a record that carries its state.
_STARTED = "kind = 'run' AND event = 'started'"
_STATE = "run_state IS NOT NULL"

# One run's state (parameter: the run id), `run_summary`'s columns: one ungrouped
# aggregate over the run's rows, read by the run_id index (for a run of 100 steps,
# DuckDB takes about 4 ms for it, 8 grouped, 10 for the joined parts of `run_summary`;
# a condition on run_id inside each part makes it scan).
ONE_RUN = f"""
    SELECT any_value(run_id), any_value(workflow) FILTER ({_STARTED}),
           arg_max(run_state, seq) FILTER ({_STATE}),
           any_value(recorded_at) FILTER ({_STARTED}),
           max(recorded_at), arg_max_null(key, seq) FILTER ({_STATE}),
           arg_max_null(wake_at, seq) FILTER ({_STATE}),
           arg_max_null(status_text, seq) FILTER ({_STATE}),
           arg_max_null(error_type, seq) FILTER ({_STATE}),
           arg_max_null(error, seq) FILTER ({_STATE}),
           arg_max_null(value, seq) FILTER ({_STATE}),
           any_value(seq) FILTER ({_STARTED}),
           any_value(name) FILTER ({_STARTED}),
           arg_max_null(status_text, seq) FILTER (kind = 'note'),
           arg_max_null(value, seq) FILTER (kind = 'note'),
           coalesce(arg_max_null(generation, seq) FILTER ({_STATE}), 0),
           max(seq), any_value(key) FILTER ({_STARTED})
    FROM replay_event_all WHERE run_id = $1
    HAVING count(*) FILTER ({_STARTED}) > 0
       AND count(*) FILTER ({_STATE}) > 0
"""

# `COLUMNS` with the timestamps as epoch microseconds: DuckDB's conversion of
# TIMESTAMPTZ values to Python was half the fetch time of an open (20,000 runs).
OPEN_COLUMNS = COLUMNS.replace("recorded_at", "epoch_us(recorded_at)").replace(
    "wake_at", "epoch_us(wake_at)")

# The runs that have not finished: the newest state-carrying record of each says so
# (one aggregate over those rows, a few per run, so opening a file with a million
# finished runs reads none of their other rows).
_OPEN_RUNS = """
    open_runs AS (
        SELECT run_id FROM replay_event_all
        WHERE run_state IS NOT NULL GROUP BY run_id
        HAVING arg_max(run_state, seq) NOT IN ('completed', 'failed', 'cancelled')
    )
"""

# The state of every unfinished run (`run_summary`'s logic, timestamps as epoch
# microseconds), with the run's deadline and whether it is quiet: parked (sleeping or
# suspended), with one sound start, and with no record that could be news for a
# parked run (a signal, a child's record, a cancellation). A quiet run is known from
# this row alone: it needs no history until it wakes. One aggregate over the rows of
# the unfinished runs (a few joined aggregates took three times as long).
OPEN_STATES = f"""
    WITH {_OPEN_RUNS}
    SELECT run_id, any_value(workflow) FILTER ({_STARTED}),
           arg_max(run_state, seq) FILTER ({_STATE}),
           epoch_us(any_value(recorded_at) FILTER ({_STARTED})), epoch_us(max(recorded_at)),
           arg_max_null(key, seq) FILTER ({_STATE}),
           epoch_us(arg_max_null(wake_at, seq) FILTER ({_STATE})),
           arg_max_null(status_text, seq) FILTER ({_STATE}),
           any_value(seq) FILTER ({_STARTED}), any_value(name) FILTER ({_STARTED}),
           arg_max_null(status_text, seq) FILTER (kind = 'note'),
           arg_max_null(value, seq) FILTER (kind = 'note'),
           nullif(arg_max_null(generation, seq) FILTER ({_STATE}), 0), max(seq),
           any_value(key) FILTER ({_STARTED}),
           epoch_us(any_value(wake_at) FILTER ({_STARTED})),
           arg_max(run_state, seq) FILTER ({_STATE}) IN ('sleeping', 'suspended')
           AND NOT bool_or(kind IN ('signal', 'child') OR event = 'cancel_requested')
           AND count(*) FILTER ({_STARTED}) = 1
           AND count(*) FILTER ({_STARTED} AND workflow IS NOT NULL
                                AND recorded_at IS NOT NULL) = 1
    FROM replay_event_all WHERE run_id IN (SELECT run_id FROM open_runs) GROUP BY run_id
"""

# Every record of the runs named by the parameter (a list of run ids), grouped by run,
# in order: the unfinished runs that are not quiet.
OPEN_RUN_ROWS = f"""
    SELECT {OPEN_COLUMNS} FROM replay_event_all
    WHERE run_id IN (SELECT unnest($1::VARCHAR[]))
    ORDER BY run_id, seq
"""


# The workflow of a run, if the run exists.
RUN_WORKFLOW = """
    SELECT workflow FROM replay_event_all
    WHERE run_id = ? AND kind = 'run' AND event = 'started' LIMIT 1
"""


def check_schema(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Check that `path` is a complete replay database, creating the tables in a new one.

    A file with no tables and no views is new; one with tables or views but no
    replay tables belongs to something else and is left untouched.

    Raises:
        DatabaseError: The file belongs to something else, is damaged, or has another
            schema version.
    """
    try:
        if "replay_meta" in _objects(con):
            upgrade(con)
            _check_version(con, path)
            con.execute(_VIEWS)
            return
        _check_not_foreign(con, path)
        con.execute("BEGIN TRANSACTION")
        con.execute(_TABLES + _VIEWS)
        con.execute("INSERT INTO replay_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        con.execute("COMMIT")
    except ReplayError:
        raise
    except duckdb.Error as error:
        raise unusable(path, error) from error


def upgrade(con: duckdb.DuckDBPyConnection) -> bool:
    """Bring a replay database written by an earlier release to this schema version.

    One transaction: the columns added since, the views, and the new version number.
    A file of an unknown (newer) version is left for `_check_version` to refuse.

    Returns:
        Whether the file was upgraded.
    """
    version = stored_version(con)
    if version is None or not older(version):
        return False
    con.execute("BEGIN TRANSACTION")
    try:
        for step in range(int(version) + 1, SCHEMA_VERSION + 1):
            con.execute(_MIGRATIONS[step])
        con.execute(_VIEWS)  # a read-only open (the replay command) re-creates none
        con.execute("UPDATE replay_meta SET value = ? WHERE name = 'schema_version'",
                    [str(SCHEMA_VERSION)])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return True


def older(version: str | None) -> bool:
    """Whether `version` names a schema version this release upgrades from."""
    return version is not None and version.isdigit() and 0 < int(version) < SCHEMA_VERSION


def stored_version(con: duckdb.DuckDBPyConnection) -> str | None:
    """Return the schema version a replay database records, or None if none."""
    if "replay_meta" not in _objects(con):
        return None
    found = con.execute("SELECT value FROM replay_meta WHERE name = 'schema_version'").fetchall()
    return found[0][0] if found else None


def check_existing_schema(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Check that `path` is a replay database of this schema version; create nothing.

    Raises:
        DatabaseError: It is not, or it is damaged.
    """
    try:
        _check_version(con, path)
    except duckdb.Error as error:
        raise unusable(path, error) from error


def _objects(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Return the names of the database's own tables and views."""
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE NOT internal "
        "UNION ALL SELECT view_name FROM duckdb_views() WHERE NOT internal"
    ).fetchall()
    return {row[0] for row in rows}


def _check_not_foreign(con: duckdb.DuckDBPyConnection, path: str) -> None:
    found = sorted(_objects(con))
    if found:
        shown = ", ".join(repr(name) for name in found[:5]) + (", ..." if len(found) > 5 else "")
        raise DatabaseError(
            f"{path!r} is a DuckDB database of something else (it has {shown} and no "
            "replay tables), and replay keeps its history in a file of its own; pass "
            "replay.open_engine() a new path"
        )


def _check_version(con: duckdb.DuckDBPyConnection, path: str) -> None:
    objects = _objects(con)
    if "replay_meta" not in objects:
        raise DatabaseError(
            f"{path!r} is a DuckDB file but not a replay database (it has no replay "
            "tables); pass the path your application gives replay.open_engine()"
        )
    version = stored_version(con)
    if version != str(SCHEMA_VERSION):
        raise DatabaseError(
            f"database {path!r} has replay schema version {version!r}, but this version of "
            f"replay reads schema version {SCHEMA_VERSION}; upgrade replay-workflows to open it"
        )
    for kind, name in _REQUIRED:
        if name not in objects:
            raise damaged_schema(path, f"its {kind} {name} is missing")
    try:
        con.execute(f"SELECT {COLUMNS} FROM replay_event_log LIMIT 0").fetchall()
    except duckdb.Error as error:
        raise damaged_schema(path, f"its table replay_event_log lacks columns ({error})") from error


_REQUIRED = (("table", "replay_event_log"), ("table", "replay_event_hot"),
             ("view", "replay_event_all"), ("view", "replay_events"), ("view", "replay_runs"))


def damaged_schema(path: str, problem: str) -> DatabaseError:
    """Return the error for a replay database whose tables were changed or damaged."""
    return DatabaseError(
        f"database {path!r} is damaged: {problem}; restore the file from a backup, or "
        "move it aside to start a new database"
    )
