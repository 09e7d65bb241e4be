"""What the pages show, read from the public views with one query each.

The runs list and a run's page are plain data here (dicts by column name, as
`replay_runs` and `replay_events` name them), read through `Backend.query`, so the
same SQL serves a running engine, another process's engine and a file. Filters come
from the page's address and are checked here: a bad one is a `BadRequest` with a
message for the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from replay._errors import RunNotFound
from replay._ui._backend import Backend
from replay._ui._html import STATES
from replay._ui._timeline import Timeline, build, child_ids

PAGE_SIZE = 50
MAX_EVENTS = 2000  # a run's page shows its newest events, this many at most
MAX_CHILDREN = 200
_RUN_COLUMNS = ("run_id, workflow, state, created_at, updated_at, waiting_for, wake_at, "
                "status_text, parent_run_id, generation")
_EVENT_COLUMNS = ("seq, key, kind, event, attempt, value_json, error_type, error, "
                  "recorded_at, duration_ms, wake_at, generation")


class BadRequest(ValueError):
    """A malformed request (a filter, a form field): HTTP 400 with this message."""


@dataclass
class RunFilter:
    """The runs list's filters and page, from the address's query parameters."""

    state: str | None = None
    workflow: str | None = None
    q: str | None = None
    since: datetime | None = None
    since_text: str = ""
    page: int = 1


def parse_filter(params: Mapping[str, str]) -> RunFilter:
    """Return the filters of ``GET /``.

    Raises:
        BadRequest: A state that does not exist, a time that is not ISO 8601, or a
            page that is not a whole number >= 1.
    """
    found = RunFilter(workflow=params.get("workflow") or None, q=params.get("q") or None)
    state = params.get("state") or None
    if state is not None and state not in STATES:
        raise BadRequest(f"unknown state {state!r}: choose one of {', '.join(STATES)}")
    found.state = state
    since = (params.get("since") or "").strip()
    if since:
        try:
            moment = datetime.fromisoformat(since)
        except ValueError:
            raise BadRequest(f"since must be a date or time such as 2026-03-02 or "
                             f"2026-03-02T09:30, got {since!r}") from None
        found.since = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        found.since_text = since
    page = params.get("page") or "1"
    if not page.isdigit() or int(page) < 1 or int(page) > 1_000_000:
        raise BadRequest(f"page must be a whole number from 1, got {page!r}")
    found.page = int(page)
    return found


@dataclass
class RunsPage:
    """One page of the runs list and the counts per state under the other filters."""

    filter: RunFilter
    counts: dict[str, int]
    runs: list[dict[str, Any]]
    has_next: bool
    workflows: list[str] = field(default_factory=list)


async def runs_page(backend: Backend, chosen: RunFilter) -> RunsPage:
    """Read one page of runs, newest first, and the counts per state.

    Raises:
        QueryError: A query failed.
        Refused: The database cannot be read now.
    """
    where, params = ["TRUE"], list[Any]()
    if chosen.workflow:
        where.append("workflow = ?")
        params.append(chosen.workflow)
    if chosen.q:
        where.append("strpos(run_id, ?) > 0")  # DuckDB and PostgreSQL alike
        params.append(chosen.q)
    if chosen.since is not None:
        where.append("created_at >= ?")
        params.append(chosen.since)
    counts_table = await backend.query(
        f"SELECT state, count(*) FROM replay_runs WHERE {' AND '.join(where)} "
        "GROUP BY state", params)
    counts = {state: 0 for state in STATES}
    counts.update({str(state): int(count) for state, count in counts_table.rows})
    if chosen.state:
        where.append("state = ?")
        params.append(chosen.state)
    offset = (chosen.page - 1) * PAGE_SIZE
    table = await backend.query(
        f"SELECT {_RUN_COLUMNS} FROM replay_runs WHERE {' AND '.join(where)} "
        f"ORDER BY created_at DESC, run_id LIMIT {PAGE_SIZE + 1} OFFSET {offset}", params,
        max_rows=PAGE_SIZE + 1)
    rows = table.dicts()
    names = await backend.query("SELECT DISTINCT workflow FROM replay_runs ORDER BY 1",
                                max_rows=500)
    return RunsPage(chosen, counts, rows[:PAGE_SIZE], len(rows) > PAGE_SIZE,
                    [str(row[0]) for row in names.rows])


@dataclass
class RunPage:
    """A run's row, its newest events, its timeline and its children's states."""

    run: dict[str, Any]
    events: list[dict[str, Any]]
    total_events: int
    timeline: Timeline
    child_states: dict[str, str]

    @property
    def last_seq(self) -> int:
        """The newest event shown (where a live watch of the page starts)."""
        return max((int(event["seq"]) for event in self.events), default=0)


async def run_page(backend: Backend, run_id: str) -> RunPage:
    """Read a run's page.

    Raises:
        RunNotFound: No such run.
        QueryError: A query failed.
        Refused: The database cannot be read now.
    """
    found = await backend.query(
        "SELECT *, (SELECT value_json FROM replay_events e WHERE e.run_id = r.run_id "
        "AND e.kind = 'run' AND e.event = 'continued' ORDER BY seq DESC LIMIT 1) "
        "AS continued_json FROM replay_runs r WHERE run_id = ?", [run_id], max_rows=1)
    if not found.rows:
        raise RunNotFound(run_id)
    run = found.dicts()[0]
    table = await backend.query(
        f"SELECT * FROM (SELECT {_EVENT_COLUMNS}, count(*) OVER () AS total "
        "FROM replay_events WHERE run_id = ? ORDER BY seq DESC "
        f"LIMIT {MAX_EVENTS}) AS newest ORDER BY seq", [run_id], max_rows=MAX_EVENTS)
    events = table.dicts()
    total = int(events[0]["total"]) if events else 0
    finished = run["state"] in ("completed", "failed", "cancelled")
    now = run["updated_at"] if finished else max(await backend.now(), run["updated_at"])
    waiting = run["waiting_for"] if run["state"] in ("sleeping", "suspended") else None
    timeline = build(events, now, waiting)
    children = child_ids(timeline)[:MAX_CHILDREN]
    states: dict[str, str] = {}
    if children:
        marks = ", ".join("?" * len(children))
        answer = await backend.query(
            f"SELECT run_id, state FROM replay_runs WHERE run_id IN ({marks})", children,
            max_rows=MAX_CHILDREN)
        states = {str(child): str(state) for child, state in answer.rows}
    return RunPage(run, events, total, timeline, states)
