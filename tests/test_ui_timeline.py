"""The web view's timeline, built from literal `replay_events` rows (issue 17).

No engine and no database: each test writes the rows a run would have recorded and
checks the lanes and segments (`replay._ui._timeline.build`) and their HTML.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from replay._ui._timeline import build, render

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def row(seq: int, at: float, kind: str, event: str, key: str | None = None,
        **columns: Any) -> dict[str, Any]:
    return {"seq": seq, "key": key, "kind": kind, "event": event,
            "attempt": columns.get("attempt"), "value_json": columns.get("value_json"),
            "error_type": columns.get("error_type"), "error": columns.get("error"),
            "recorded_at": T0 + timedelta(seconds=at), "duration_ms": columns.get("ms"),
            "wake_at": columns.get("wake_at"), "generation": 0}


def outcomes(timeline: Any, key: str) -> list[tuple[str, str, float, float]]:
    return [(s.outcome, "wait" if s.wait else "point" if s.point else "bar",
             (s.start - T0).total_seconds(), (s.end - T0).total_seconds())
            for s in timeline.lanes[key].segments]


def test_timeline_attempts_end_at_their_event_and_began_their_duration_before() -> None:
    events = [row(1, 0, "run", "started"),
              row(2, 2, "step", "retrying", "charge:v1", attempt=1, ms=1000,
                  error_type="builtins.ConnectionError", error="unreachable",
                  wake_at=T0 + timedelta(seconds=7)),
              row(3, 8, "step", "completed", "charge:v1", attempt=2, ms=500,
                  value_json='"ok"'),
              row(4, 8, "run", "completed")]
    timeline = build(events, T0 + timedelta(seconds=8))
    assert outcomes(timeline, "charge:v1") == [("failed", "bar", 1, 2),
                                               ("backoff", "wait", 2, 7),
                                               ("completed", "bar", 7.5, 8)]
    assert "unreachable" in timeline.lanes["charge:v1"].segments[0].title


def test_timeline_waits_end_at_the_signal_or_run_to_their_deadline() -> None:
    deadline = T0 + timedelta(hours=2)
    events = [row(1, 0, "run", "started"),
              row(2, 1, "suspend", "suspended", "approval:v1", wake_at=deadline),
              row(3, 60, "signal", "signalled", "approval:v1", value_json="true"),
              row(4, 61, "sleep", "scheduled", "nap:v1", wake_at=T0 + timedelta(hours=1))]
    timeline = build(events, T0 + timedelta(seconds=90), waiting_for="nap:v1")
    assert outcomes(timeline, "approval:v1") == [("completed", "wait", 1, 60),
                                                 ("signal", "point", 60, 60)]
    assert outcomes(timeline, "nap:v1") == [("waiting", "wait", 61, 3600)]
    assert timeline.end == T0 + timedelta(seconds=90)  # now: the nap runs off the edge
    nap = render(timeline)
    assert re.search(r'class="segment wait open" data-outcome="waiting" data-event="scheduled"'
                     r' style="left:67\.778%;width:32\.222%"', nap)
    pending = build(events[:2], T0 + timedelta(seconds=30), waiting_for="approval:v1")
    assert outcomes(pending, "approval:v1") == [("waiting", "wait", 1, 7200)]


def test_timeline_a_signal_before_the_suspend_waits_in_the_mailbox() -> None:
    events = [row(1, 0, "run", "started"),
              row(2, 1, "signal", "signalled", "approval:v1", value_json="1"),
              row(3, 2, "suspend", "suspended", "approval:v1")]
    timeline = build(events, T0 + timedelta(seconds=3), waiting_for="approval:v1")
    assert timeline.lanes["approval:v1"].kind == "suspend"
    assert outcomes(timeline, "approval:v1")[0] == ("signal", "point", 1, 1)


def test_timeline_running_cancelled_and_late_attempts() -> None:
    events = [row(1, 0, "run", "started"),
              row(2, 1, "step", "started", "slow:v1", attempt=1),
              row(3, 1, "step", "started", "race-a:v1", attempt=1),
              row(4, 3, "step", "cancelled", "race-a:v1", attempt=1,
                  error="group 'r:v1' was decided by 'b'"),
              row(5, 4, "step", "late", "race-a:v1", attempt=1, ms=3500)]
    timeline = build(events, T0 + timedelta(seconds=5))
    assert outcomes(timeline, "slow:v1") == [("running", "bar", 1, 5)]
    assert outcomes(timeline, "race-a:v1") == [("cancelled", "bar", 1, 3),
                                               ("late", "bar", 0.5, 4)]


def test_timeline_groups_nest_their_members_and_children_link() -> None:
    events = [row(1, 0, "run", "started"),
              row(2, 1, "group", "started", "g:v1",
                  value_json='{"group": "all", "members": ["a:v1", "kid:v1", "c:v1"]}'),
              row(3, 2, "step", "completed", "a:v1", attempt=1, ms=100),
              row(4, 2, "child", "started", "kid:v1",
                  value_json='{"run_id": "r/kid:v1", "workflow": "kid", '
                             '"on_parent_close": "cancel"}'),
              row(5, 2, "group", "waiting", "g:v1")]
    timeline = build(events, T0 + timedelta(seconds=9), waiting_for="g:v1")
    assert outcomes(timeline, "g:v1") == [("waiting", "bar", 1, 9)]
    assert outcomes(timeline, "kid:v1") == [("running", "bar", 2, 9)]
    page = render(timeline, {"r/kid:v1": "sleeping"})
    group = page[page.index('<div class="group" data-key="g:v1">'):]
    assert re.findall(r'class="lane[^"]*" data-key="([^"]+)"', group) == [
        "g:v1", "a:v1", "kid:v1", "c:v1"]
    assert '<div class="lane not-started" data-key="c:v1">' in group
    assert ('<a class="child-link" href="/run?id=r%2Fkid%3Av1">r/kid:v1</a> '
            '<span class="state" data-state="sleeping">sleeping</span>') in group
    done = build([*events, row(6, 12, "child", "completed", "kid:v1", value_json="1"),
                  row(7, 12, "group", "completed", "g:v1", value_json="{}")],
                 T0 + timedelta(seconds=20))
    assert outcomes(done, "kid:v1") == [("completed", "bar", 2, 12)]
    assert outcomes(done, "g:v1") == [("completed", "bar", 1, 12)]


def test_timeline_positions_are_percent_of_the_runs_span() -> None:
    events = [row(1, 0, "run", "started"),
              row(2, 10, "step", "completed", "x:v1", attempt=1, ms=5000),
              row(3, 20, "note", "recorded", "n:v1", value_json='{"pct": 50}')]
    page = render(build(events, T0 + timedelta(seconds=20)))
    assert 'data-outcome="completed" data-event="completed" style="left:25.000%;width:25.000%"' \
        in page
    assert 'class="segment point" data-outcome="note" data-event="recorded" ' \
        'style="left:99.700%"' in page
    assert render(build([row(1, 0, "run", "started")], T0)) == (
        '<p class="empty">nothing recorded under a key yet</p>')
