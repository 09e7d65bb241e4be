"""The SQL page's examples: queries of the SQL cookbook (``docs/cookbook.md``).

Each is copied from the cookbook word for word (a test checks it), so that a click
fills the box with a query the documentation explains. The cookbook's recipes are
written in DuckDB's SQL, with a PostgreSQL version where that dialect differs; the
page offers the examples in the dialect of the database it reads (`examples`).
"""

from __future__ import annotations

DUCKDB = "duckdb"
POSTGRES = "postgres"
DIALECTS = (DUCKDB, POSTGRES)

# (title, query) in DuckDB's SQL, in the cookbook's order.
EXAMPLES: tuple[tuple[str, str], ...] = (
    ('p95 duration per step key',
     """SELECT key,
       count(*) AS attempts,
       round(quantile_cont(duration_ms, 0.95), 1) AS p95_ms
FROM replay_events
WHERE kind = 'step' AND duration_ms IS NOT NULL
GROUP BY key
ORDER BY p95_ms DESC, key;"""),
    ('Runs failed in the last hour, with their error',
     """SELECT r.run_id,
       r.error_type,
       e.value_json ->> '$' AS message
FROM replay_runs r
JOIN replay_events e ON e.run_id = r.run_id AND e.kind = 'run' AND e.event = 'failed'
WHERE r.state = 'failed'
  AND e.recorded_at > (SELECT max(recorded_at) FROM replay_events) - INTERVAL '1 hour'
QUALIFY row_number() OVER (PARTITION BY r.run_id ORDER BY e.seq DESC) = 1
ORDER BY e.recorded_at DESC;"""),
    ('Retry count per key',
     """SELECT key,
       count(*) FILTER (WHERE event = 'retrying') AS retries,
       count(*) FILTER (WHERE event = 'failed') AS gave_up
FROM replay_events
WHERE kind = 'step'
GROUP BY key
HAVING retries > 0
ORDER BY retries DESC, key;"""),
    ('Failure rate per step key',
     """SELECT key,
       count(*) AS attempts,
       count(*) FILTER (WHERE error_type IS NOT NULL) AS failed_attempts,
       round(100.0 * failed_attempts / attempts, 1) AS failure_pct
FROM replay_events
WHERE kind = 'step' AND event IN ('completed', 'retrying', 'failed')
GROUP BY key
ORDER BY failure_pct DESC, key;"""),
    ('Errors by type',
     """SELECT error_type,
       count(*) AS attempts,
       count(DISTINCT run_id) AS runs,
       any_value(error) AS example
FROM replay_events
WHERE kind = 'step' AND error_type IS NOT NULL
GROUP BY error_type
ORDER BY attempts DESC;"""),
    ('Runs stuck waiting',
     """SELECT run_id,
       state,
       waiting_for,
       status_text,
       round(epoch((SELECT max(recorded_at) FROM replay_events) - updated_at) / 3600, 1)
           AS idle_hours
FROM replay_runs
WHERE state IN ('sleeping', 'suspended')
ORDER BY updated_at;"""),
    ('Runs per workflow and state',
     """SELECT workflow,
       count(*) AS runs,
       count(*) FILTER (WHERE state = 'completed') AS completed,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'cancelled') AS cancelled,
       count(*) FILTER (WHERE state IN ('running', 'sleeping', 'suspended')) AS in_flight
FROM replay_runs
GROUP BY workflow
ORDER BY workflow;"""),
    ('Runs started per day',
     """SELECT (created_at AT TIME ZONE 'UTC')::DATE AS day,
       count(*) AS started,
       count(*) FILTER (WHERE state = 'completed') AS completed
FROM replay_runs
GROUP BY day
ORDER BY day;"""),
    ('Signals and how long runs waited for them',
     """SELECT s.run_id,
       s.key,
       g.value_json AS payload,
       round(epoch(g.recorded_at - s.recorded_at) / 60, 1) AS waited_minutes
FROM replay_events s
JOIN replay_events g ON g.run_id = s.run_id AND g.key = s.key AND g.kind = 'signal'
WHERE s.event = 'suspended'
ORDER BY s.run_id;"""),
)

# The recipes whose PostgreSQL version differs (its "On PostgreSQL" block), by title.
_ON_POSTGRES: dict[str, str] = {
    'p95 duration per step key':
        """SELECT key,
       count(*) AS attempts,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)::numeric, 1)
           AS p95_ms
FROM replay_events
WHERE kind = 'step' AND duration_ms IS NOT NULL
GROUP BY key
ORDER BY p95_ms DESC, key;""",
    'Runs failed in the last hour, with their error':
        """SELECT run_id, error_type, message
FROM (SELECT DISTINCT ON (r.run_id)
             r.run_id,
             r.error_type,
             e.value_json #>> '{}' AS message,
             e.recorded_at
      FROM replay_runs r
      JOIN replay_events e ON e.run_id = r.run_id AND e.kind = 'run' AND e.event = 'failed'
      WHERE r.state = 'failed'
        AND e.recorded_at > (SELECT max(recorded_at) FROM replay_events) - INTERVAL '1 hour'
      ORDER BY r.run_id, e.seq DESC) newest
ORDER BY recorded_at DESC;""",
    'Retry count per key':
        """SELECT key,
       count(*) FILTER (WHERE event = 'retrying') AS retries,
       count(*) FILTER (WHERE event = 'failed') AS gave_up
FROM replay_events
WHERE kind = 'step'
GROUP BY key
HAVING count(*) FILTER (WHERE event = 'retrying') > 0
ORDER BY retries DESC, key;""",
    'Failure rate per step key':
        """SELECT key,
       count(*) AS attempts,
       count(*) FILTER (WHERE error_type IS NOT NULL) AS failed_attempts,
       round(100.0 * count(*) FILTER (WHERE error_type IS NOT NULL) / count(*), 1)
           AS failure_pct
FROM replay_events
WHERE kind = 'step' AND event IN ('completed', 'retrying', 'failed')
GROUP BY key
ORDER BY failure_pct DESC, key;""",
    'Errors by type':
        """SELECT error_type,
       count(*) AS attempts,
       count(DISTINCT run_id) AS runs,
       min(error) AS example
FROM replay_events
WHERE kind = 'step' AND error_type IS NOT NULL
GROUP BY error_type
ORDER BY attempts DESC;""",
    'Runs stuck waiting':
        """SELECT run_id,
       state,
       waiting_for,
       status_text,
       round(extract(epoch FROM (SELECT max(recorded_at) FROM replay_events) - updated_at)
             / 3600, 1) AS idle_hours
FROM replay_runs
WHERE state IN ('sleeping', 'suspended')
ORDER BY updated_at;""",
    'Signals and how long runs waited for them':
        """SELECT s.run_id,
       s.key,
       g.value_json AS payload,
       round(extract(epoch FROM g.recorded_at - s.recorded_at) / 60, 1) AS waited_minutes
FROM replay_events s
JOIN replay_events g ON g.run_id = s.run_id AND g.key = s.key AND g.kind = 'signal'
WHERE s.event = 'suspended'
ORDER BY s.run_id;""",
}

# The same examples in PostgreSQL's SQL: a recipe with one query runs on both.
POSTGRES_EXAMPLES: tuple[tuple[str, str], ...] = tuple(
    (title, _ON_POSTGRES.get(title, query)) for title, query in EXAMPLES)


def examples(dialect: str) -> tuple[tuple[str, str], ...]:
    """Return the examples in `dialect`'s SQL (`DUCKDB` or `POSTGRES`).

    Raises:
        ValueError: `dialect` is neither.
    """
    if dialect == DUCKDB:
        return EXAMPLES
    if dialect == POSTGRES:
        return POSTGRES_EXAMPLES
    raise ValueError(f"unknown SQL dialect {dialect!r}; expected one of {DIALECTS}")
