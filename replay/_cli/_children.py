"""Reading a run's child runs for `replay show`, so that their lines nest under the parent.

A run's children are named by its ``child/started`` records; their children by
theirs. At most `MAX_RUNS` runs are read, and a child with more than `MAX_EVENTS`
events is left out (the timeline says how to show it on its own): a parent with a
thousand children, or a child that loops for a year, stays one short screen.
"""

from __future__ import annotations

from collections.abc import Sequence

from replay._cli._answers import EVENT_COLUMNS, Source
from replay._ui._tree import Row, scope_of

MAX_RUNS = 20
MAX_EVENTS = 200


def load_children(source: Source, events: Sequence[Row], *, max_runs: int = MAX_RUNS,
                  max_events: int = MAX_EVENTS) -> dict[str, tuple[Row, list[Row]]]:
    """Return the run's children and theirs: ``{run_id: (replay_runs row, events)}``.

    Args:
        source: Where the run was read.
        events: The run's `replay_events` rows, in order.
        max_runs: How many child runs to read at most (breadth first).
        max_events: Children with more events than this are left out.
    """
    found: dict[str, tuple[Row, list[Row]]] = {}
    asked: set[str] = set()
    pending = [child.run_id for child in scope_of(events).children.values()]
    while pending and len(asked) < max_runs:
        batch = [run_id for run_id in dict.fromkeys(pending) if run_id not in asked]
        batch = batch[: max_runs - len(asked)]
        pending = []
        if not batch:
            break
        asked.update(batch)
        marks = ", ".join("?" * len(batch))
        runs = source.query(f"SELECT * FROM replay_runs WHERE run_id IN ({marks})", batch)
        rows = {row["run_id"]: row for row in _dicts(runs.columns, runs.rows())}
        history = source.query(  # no QUALIFY: the same query on PostgreSQL
            f"SELECT {EVENT_COLUMNS} FROM (SELECT {EVENT_COLUMNS}, row_number() OVER "
            "(PARTITION BY run_id ORDER BY seq) AS n FROM replay_events "
            f"WHERE run_id IN ({marks})) e WHERE n <= ? ORDER BY seq",
            [*batch, max_events + 1])
        by_run: dict[str, list[Row]] = {}
        for event in _dicts(history.columns, history.rows()):
            by_run.setdefault(event["run_id"], []).append(event)
        for run_id in batch:
            child_events = by_run.get(run_id, [])
            if run_id not in rows or len(child_events) > max_events:
                continue
            found[run_id] = (rows[run_id], child_events)
            pending += [child.run_id for child in scope_of(child_events).children.values()]
    return found


def _dicts(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> list[Row]:
    return [dict(zip(columns, row, strict=True)) for row in rows]
