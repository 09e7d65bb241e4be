"""The PostgreSQL schema: tables, the public views, the version check and upgrades.

Everything lives in the connection's current schema (``current_schema()``, set with
``options=-csearch_path%3D<schema>`` in the URL), so one database can hold several
replay schemas and other applications' tables beside them. The event table has the
DuckDB table's columns in the same order (`replay._store._schema.TABLE_COLUMNS`), and
the views `replay_events` and `replay_runs` have the same columns, order and meaning as
DuckDB's (docs/sql.md). The engine's queries of it are in `replay._pg._sql`.

There is no hot log: a commit is one COPY into `replay_event_log`, so `replay_event_all`
is the table itself, kept so that queries read the same names on both stores.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors

from replay._errors import DatabaseError, ReplayError
from replay._store._protocol import SEQ_BLOCK
from replay._store._schema import RUNS_VIEW_SELECT, TABLE_COLUMNS

PG_SCHEMA_VERSION = 3

# The event table's columns and their types as `format_type` shows them (checked on open).
LOG_COLUMNS = (
    ("seq", "bigint"), ("run_id", "text"), ("workflow", "text"), ("key", "text"),
    ("kind", "text"), ("event", "text"), ("attempt", "integer"), ("value", "bytea"),
    ("value_json", "json"), ("error_type", "text"), ("error", "text"),
    ("recorded_at", "timestamp with time zone"), ("duration_ms", "double precision"),
    ("wake_at", "timestamp with time zone"), ("name", "text"), ("error_types", "text"),
    ("run_state", "text"), ("status_text", "text"), ("generation", "integer"),
    ("code_version", "text"),
)

# json, not jsonb: the text is kept as written (key order, numbers), as DuckDB keeps it,
# and json accepts the \u0000 escape that jsonb refuses.
_TABLES = f"""
CREATE TABLE replay_meta (name text, value text);
CREATE TABLE replay_event_log (
    {", ".join(f"{name} {kind}" for name, kind in LOG_COLUMNS)},
    PRIMARY KEY (seq)
);
-- One run's rows in order: history and memo loads, ONE_RUN, the run_id IN (...) reads.
CREATE INDEX replay_event_log_run ON replay_event_log (run_id, seq);
-- The newest state of each run (replay_runs, RUN_SUMMARY, OPEN_RUN_ROWS) without
-- reading the rows that carry none, in the order DISTINCT ON wants them.
CREATE INDEX replay_event_log_state ON replay_event_log (run_id, seq DESC)
    INCLUDE (run_state) WHERE run_state IS NOT NULL;
""" + "\n"

# Version 2: what engines sharing the schema need (replay._pg._leases). Every unfinished
# run is a member of its family (a root run and its children); the family's lease says
# which worker executes it, until when, under which fencing token. The inbox holds
# signals and cancellations for runs another engine holds; `seq` comes in blocks from
# a sequence, so engines number their records without colliding.
_SHARING = f"""
CREATE TABLE replay_lease (
    root_id text PRIMARY KEY,
    workflow text NOT NULL,
    owner text,
    token bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX replay_lease_free ON replay_lease (expires_at);
CREATE INDEX replay_lease_owner ON replay_lease (owner);
CREATE TABLE replay_member (run_id text PRIMARY KEY, root_id text NOT NULL,
                            workflow text NOT NULL);
CREATE INDEX replay_member_root ON replay_member (root_id);
CREATE TABLE replay_inbox (
    id bigserial PRIMARY KEY,
    run_id text NOT NULL,
    action text NOT NULL,
    key text,
    payload bytea,
    payload_json text,
    sent_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX replay_inbox_run ON replay_inbox (run_id);
CREATE SEQUENCE replay_seq_block INCREMENT BY {SEQ_BLOCK} MINVALUE 0 START WITH 0;
CREATE SEQUENCE replay_lease_token;
"""

# A version-1 schema's unfinished runs become free families (any engine claims them),
# and the blocks of `seq` start after its records.
_UPGRADE_1 = """
WITH RECURSIVE open_runs AS (
    SELECT run_id FROM (
        SELECT DISTINCT ON (run_id) run_id, run_state FROM replay_event_log
        WHERE run_state IS NOT NULL ORDER BY run_id, seq DESC
    ) newest WHERE run_state NOT IN ('completed', 'failed', 'cancelled')
), parents AS (
    SELECT run_id, name AS parent_id, workflow FROM replay_event_log
    WHERE kind = 'run' AND event = 'started'
), roots AS (
    SELECT run_id, run_id AS root_id FROM parents WHERE parent_id IS NULL
    UNION ALL
    SELECT p.run_id, r.root_id FROM parents p JOIN roots r ON p.parent_id = r.run_id
)
INSERT INTO replay_member SELECT r.run_id, r.root_id, p.workflow FROM roots r
    JOIN parents p USING (run_id) WHERE r.run_id IN (SELECT run_id FROM open_runs);
INSERT INTO replay_lease
    SELECT DISTINCT m.root_id, e.workflow, NULL, 0, now() FROM replay_member m
    JOIN replay_event_log e ON e.run_id = m.root_id AND e.kind = 'run' AND e.event = 'started';
SELECT setval('replay_seq_block', coalesce((SELECT max(seq) FROM replay_event_log), 0),
              false);
UPDATE replay_meta SET value = '2' WHERE name = 'schema_version';
"""

# Version 3: every block of `seq` handed out (`_leases.seq_block`), with the worker it
# went to, so that an engine-wide watch finds the records other engines commit
# (`replay._pg._feed`). Old rows are pruned as engines renew their leases.
_BLOCKS = """
CREATE TABLE replay_block (
    block bigint PRIMARY KEY,
    worker text NOT NULL,
    taken_at timestamptz NOT NULL DEFAULT now()
);
"""
_UPGRADE_2 = _BLOCKS + "UPDATE replay_meta SET value = '3' WHERE name = 'schema_version';\n"


def block_horizon(lease: float) -> float:
    """Return how long a block of `seq` may get records once its worker took a newer one.

    A batch numbered before a claim (which takes a fresh block) may still be committing
    after it; a batch that commits passes the lease fence, so it commits within about
    a lease of the claim. Twice the lease, and half a minute for a slow server.
    """
    return 2 * lease + 30


def block_kept(lease: float) -> float:
    """Return how long a block stays in `replay_block` once its worker took a newer one.

    Twice the horizon: a watch that looks less often than that may find a block gone
    that it never read, and starts afresh (`_feed`).
    """
    return 2 * block_horizon(lease)


# Forget the blocks whose worker took a newer one more than `block_kept` seconds ago
# (parameter: the seconds).
PRUNE_BLOCKS = """
    DELETE FROM replay_block b USING (
        SELECT worker, max(block) AS block FROM replay_block
        WHERE taken_at < now() - %s * interval '1 second' GROUP BY worker
    ) settled
    WHERE b.worker = settled.worker AND b.block < settled.block
"""

# The public views, re-created on every open (CREATE OR REPLACE keeps their grants and
# the user views built on them; a later release may only append columns).
_VIEWS = f"""
CREATE OR REPLACE VIEW replay_event_all AS
    SELECT {TABLE_COLUMNS} FROM replay_event_log;
CREATE OR REPLACE VIEW replay_events AS
    SELECT seq, run_id, workflow, key, kind, event, attempt, value, value_json,
           error_type, error, recorded_at, duration_ms, wake_at,
           coalesce(generation, 0) AS generation
    FROM replay_event_all;
CREATE OR REPLACE VIEW replay_runs AS
    WITH latest AS (
        SELECT DISTINCT ON (run_id) run_id, run_state, key, wake_at, status_text,
               error_type, error, value_json, generation
        FROM replay_event_all WHERE run_state IS NOT NULL ORDER BY run_id, seq DESC
    ), started AS (
        SELECT run_id, workflow, recorded_at, value_json, name AS parent_run_id, code_version
        FROM replay_event_all WHERE kind = 'run' AND event = 'started'
    ), touched AS (
        SELECT run_id, max(recorded_at) AS updated_at FROM replay_event_all GROUP BY run_id
    ), notes AS (
        SELECT DISTINCT ON (run_id) run_id, status_text AS note_text, value_json AS note_json
        FROM replay_event_all WHERE kind = 'note' ORDER BY run_id, seq DESC
    ), versions AS (
        SELECT DISTINCT ON (run_id) run_id, code_version AS last_code_version
        FROM replay_event_all WHERE kind = 'run' AND code_version IS NOT NULL
        ORDER BY run_id, seq DESC
    )
{RUNS_VIEW_SELECT}"""

_REQUIRED_1 = (("table", "replay_event_log"), ("view", "replay_event_all"),
               ("view", "replay_events"), ("view", "replay_runs"))
_REQUIRED_2 = (*_REQUIRED_1, ("table", "replay_lease"), ("table", "replay_member"),
               ("table", "replay_inbox"), ("sequence", "replay_seq_block"),
               ("sequence", "replay_lease_token"))
_REQUIRED = (*_REQUIRED_2, ("table", "replay_block"))
# What each version has (an older one is upgraded when an engine opens it).
_REQUIRED_BY_VERSION = {"1": _REQUIRED_1, "2": _REQUIRED_2, str(PG_SCHEMA_VERSION): _REQUIRED}
_KINDS = {"r": "table", "p": "table", "v": "view", "m": "materialized view",
          "f": "foreign table", "S": "sequence", "i": "index", "I": "index",
          "c": "composite type"}
_NAMES = ("replay_meta", *(name for _, name in _REQUIRED))


def prepare_schema(con: psycopg.Connection[Any], shown: str) -> None:
    """Make the connection's current schema a replay schema of this version.

    One transaction, under an advisory lock on the schema's name, so that engines
    opening a new schema at once create it once: in a schema without replay tables
    (other tables may be there) it creates the tables, views and version row; in a
    replay schema it checks the version and the objects, and re-creates the views.

    Args:
        con: An open connection (autocommit).
        shown: The database as messages show it (the URL, password masked).

    Raises:
        DatabaseError: The search path names no existing schema; the schema holds an
            object with a replay name but no replay_meta; it has another schema
            version; it is damaged; or Postgres refused (e.g. no CREATE privilege).
    """
    try:
        with con.transaction():
            # Read committed: the checks after the lock must see what a creator committed.
            con.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            schema = current_schema(con, shown)
            con.execute("SELECT pg_advisory_xact_lock(hashtext('replay-schema:' || %s))",
                        [schema])
            objects = _objects(con)
            if "replay_meta" in objects:
                version = _check_version(con, shown, objects)
                if version == "1":
                    con.execute(_SHARING + _UPGRADE_1)
                if version in ("1", "2"):
                    con.execute(_UPGRADE_2)
                con.execute(_VIEWS)
                return
            _check_not_foreign(shown, schema, objects)
            con.execute(_TABLES + _SHARING + _BLOCKS + _VIEWS)
            con.execute("INSERT INTO replay_meta VALUES ('schema_version', %s)",
                        [str(PG_SCHEMA_VERSION)])
    except ReplayError:
        raise
    except errors.InsufficientPrivilege as error:
        raise DatabaseError(
            f"database {shown!r} refused to set up replay's tables: {error}; grant the user "
            "CREATE and USAGE on the schema (or connect as its owner), or use a schema the "
            "user owns (options=-csearch_path%3D<schema> in the URL)"
        ) from error
    except psycopg.Error as error:
        raise DatabaseError(
            f"cannot use database {shown!r} as a replay database: {error}; check the "
            "schema's tables, or use a new schema (options=-csearch_path%3D<schema> in the "
            "URL)"
        ) from error


def current_schema(con: psycopg.Connection[Any], shown: str) -> str:
    """Return the schema replay's tables live in (the first usable one on the search path).

    Raises:
        DatabaseError: No schema on the search path exists and is usable.
    """
    row = con.execute("SELECT current_schema(), current_setting('search_path')").fetchone()
    if row is None or row[0] is None:
        path = row[1] if row else ""
        raise DatabaseError(
            f"database {shown!r} has no schema to keep replay's tables in: none of the "
            f"schemas on its search_path ({path}) exists and is usable by the user; create "
            "the schema first (CREATE SCHEMA name) and grant the user USAGE and CREATE on "
            "it, or name another one with options=-csearch_path%3D<schema> in the URL"
        )
    return str(row[0])


def _objects(con: psycopg.Connection[Any]) -> dict[str, str]:
    """Return replay's names that exist in the current schema, with what each one is."""
    rows = con.execute(
        "SELECT c.relname, c.relkind::text FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relname = ANY(%s::text[])",
        [list(_NAMES)],
    ).fetchall()
    return {name: _KINDS.get(kind, "relation") for name, kind in rows}


def _check_not_foreign(shown: str, schema: str, objects: dict[str, str]) -> None:
    if objects:
        found = ", ".join(f"a {kind} {name}" for name, kind in sorted(objects.items()))
        raise DatabaseError(
            f"database {shown!r} has {found} in schema {schema!r} but no replay_meta "
            "table: it belongs to something else, or is a damaged replay schema; use "
            "another schema (options=-csearch_path%3D<schema> in the URL), or move that "
            "object aside"
        )


def _check_version(con: psycopg.Connection[Any], shown: str, objects: dict[str, str]) -> str:
    """Check the schema's version and objects; return the version ("1", "2" are upgraded)."""
    if objects["replay_meta"] != "table":
        raise damaged_schema(shown, f"its replay_meta is a {objects['replay_meta']}")
    found = con.execute(
        "SELECT value FROM replay_meta WHERE name = 'schema_version'").fetchall()
    version = found[0][0] if found else None
    if version not in _REQUIRED_BY_VERSION:
        raise DatabaseError(
            f"database {shown!r} has replay schema version {version!r}, but this version of "
            f"replay reads schema version {PG_SCHEMA_VERSION}; upgrade replay-workflows to "
            "open it"
        )
    for kind, name in _REQUIRED_BY_VERSION[str(version)]:
        if name not in objects:
            raise damaged_schema(shown, f"its {kind} {name} is missing")
        if objects[name] != kind:
            raise damaged_schema(shown, f"its {kind} {name} is a {objects[name]}")
    columns = dict(con.execute(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = 'replay_event_log'::regclass AND a.attnum > 0 "
        "AND NOT a.attisdropped").fetchall())
    wrong = [f"{name} {kind}" for name, kind in LOG_COLUMNS if columns.get(name) != kind]
    if wrong:
        raise damaged_schema(
            shown, f"its table replay_event_log lacks columns ({', '.join(wrong)})")
    return str(version)


def damaged_schema(shown: str, problem: str) -> DatabaseError:
    """Return the error for a replay schema whose tables or views were changed or dropped."""
    return DatabaseError(
        f"database {shown!r} is damaged: {problem}; restore the schema from a backup, or "
        "use a new schema (options=-csearch_path%3D<schema> in the URL) to start a new "
        "database"
    )
