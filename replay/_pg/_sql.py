"""The engine's queries of a PostgreSQL replay schema, in the DuckDB store's row shapes.

`replay._pg._reads` and the sharing modules run them; `replay._store._rows` converts
their rows as it converts DuckDB's. Postgres has no ``QUALIFY`` nor ``arg_max``: "the
newest row of each run" is ``DISTINCT ON (run_id) ... ORDER BY run_id, seq DESC``.
"""

from __future__ import annotations

# What a history load reads, in `replay._store._rows.row_record`'s order. value_json is
# cast to text so that it reads as str whatever loaders the connection has.
COLUMNS = (
    "seq, run_id, workflow, key, kind, event, attempt, value, value_json::text, error_type, "
    "error, recorded_at, duration_ms, wake_at, name, error_types, run_state, status_text, "
    "coalesce(generation, 0), code_version"
)

# What the memo needs (`memo_record`): wake_at as epoch microseconds, no recorded_at.
# extract() returns numeric, so the microseconds are exact.
MEMO_COLUMNS = (
    "seq, key, kind, event, attempt, value, error_type, error, "
    "(extract(epoch from wake_at) * 1000000)::bigint, name, error_types, status_text, "
    "coalesce(generation, 0), code_version"
)


def run_summary(source: str = "replay_event_all", scope: str = "") -> str:
    """Return the query of the state of every run in `source` (`run_row`'s columns).

    It is the ``replay_runs`` view's logic, with the encoded value; `scope` may define
    the CTE that `source` names.
    """
    return f"""
    WITH {scope} latest AS (
        SELECT DISTINCT ON (run_id) run_id, run_state, key, wake_at, status_text,
               error_type, error, value, generation
        FROM {source} WHERE run_state IS NOT NULL ORDER BY run_id, seq DESC
    ), started AS (
        SELECT run_id, workflow, recorded_at, seq, name, key FROM {source}
        WHERE kind = 'run' AND event = 'started'
    ), touched AS (
        SELECT run_id, max(recorded_at) AS updated_at, max(seq) AS last_seq FROM {source}
        GROUP BY run_id
    ), notes AS (
        SELECT DISTINCT ON (run_id) run_id, status_text AS note_text, value AS note_value
        FROM {source} WHERE kind = 'note' ORDER BY run_id, seq DESC
    )
    SELECT s.run_id, s.workflow, l.run_state, s.recorded_at, t.updated_at, l.key,
           l.wake_at, l.status_text, l.error_type, l.error, l.value, s.seq, s.name,
           n.note_text, n.note_value, coalesce(l.generation, 0), t.last_seq, s.key
    FROM started s JOIN latest l USING (run_id) JOIN touched t USING (run_id)
         LEFT JOIN notes n USING (run_id)
    """


# Every run's state (the CLI's listing, `engine.runs()`).
RUN_SUMMARY = run_summary()


def run_list(conditions: str = "true") -> str:
    """Return the query of `RUN_SUMMARY`'s rows newest first (by creation), limited.

    `conditions` (on ``l.run_state`` and ``s.workflow``, with ``%s`` placeholders)
    filters the runs; the limit is the last parameter. The runs are chosen by their
    start and newest state alone (the state index), and only the chosen ones' other
    rows are read for `updated_at`, `last_seq` and the newest note, where RUN_SUMMARY
    aggregates every row of every run (measured, 20,000 runs of 25 rows: 0.3 s
    against 0.7 s).
    """
    return f"""
    WITH latest AS (
        SELECT DISTINCT ON (run_id) run_id, run_state, key, wake_at, status_text,
               error_type, error, value, generation
        FROM replay_event_all WHERE run_state IS NOT NULL ORDER BY run_id, seq DESC
    ), chosen AS (
        SELECT s.run_id, s.workflow, l.run_state, s.recorded_at, l.key, l.wake_at,
               l.status_text, l.error_type, l.error, l.value, s.seq, s.name,
               l.generation, s.key AS parent_key
        FROM replay_event_all s JOIN latest l USING (run_id)
        WHERE s.kind = 'run' AND s.event = 'started' AND ({conditions})
        ORDER BY s.recorded_at DESC, s.seq DESC LIMIT %s
    )
    SELECT c.run_id, c.workflow, c.run_state, c.recorded_at, t.updated_at, c.key,
           c.wake_at, c.status_text, c.error_type, c.error, c.value, c.seq, c.name,
           n.note_text, n.note_value, coalesce(c.generation, 0), t.last_seq, c.parent_key
    FROM chosen c
    CROSS JOIN LATERAL (
        SELECT max(recorded_at) AS updated_at, max(seq) AS last_seq FROM replay_event_all
        WHERE run_id = c.run_id
    ) t
    LEFT JOIN LATERAL (
        SELECT status_text AS note_text, value AS note_value FROM replay_event_all
        WHERE run_id = c.run_id AND kind = 'note' ORDER BY seq DESC LIMIT 1
    ) n ON true
    ORDER BY c.recorded_at DESC, c.seq DESC
    """


# One run's state (parameter: the run id). Its rows are read once, by the run index,
# into a CTE the four parts then share.
ONE_RUN = run_summary(
    "one", "one AS MATERIALIZED (SELECT * FROM replay_event_all WHERE run_id = %s),")

# Every record of every run that has not finished, grouped by run, in order. The newest
# state of each run comes from the partial index of state-carrying rows, so opening a
# schema with a million finished runs reads none of their other rows. The rows of each
# open run are read by the run index, one run at a time: LATERAL with ORDER BY keeps
# the planner from joining instead, which it does by scanning the whole run index
# (measured: 500,000 rows, 200 open runs).
OPEN_RUN_ROWS = f"""
    WITH open_runs AS MATERIALIZED (
        SELECT run_id FROM (
            SELECT DISTINCT ON (run_id) run_id, run_state FROM replay_event_all
            WHERE run_state IS NOT NULL ORDER BY run_id, seq DESC
        ) newest WHERE run_state NOT IN ('completed', 'failed', 'cancelled')
    )
    SELECT run_rows.* FROM open_runs CROSS JOIN LATERAL (
        SELECT {COLUMNS} FROM replay_event_all e WHERE e.run_id = open_runs.run_id
        ORDER BY e.seq
    ) run_rows
    ORDER BY open_runs.run_id, run_rows.seq
"""

# The workflow of a run, if the run exists (parameter: the run id).
RUN_WORKFLOW = """
    SELECT workflow FROM replay_event_all
    WHERE run_id = %s AND kind = 'run' AND event = 'started' LIMIT 1
"""
