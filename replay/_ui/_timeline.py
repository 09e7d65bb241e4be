"""A run's timeline for the page: one lane per key, its attempts and waits as segments.

Everything is read from the run's `replay_events` rows. A step attempt ends at its
``completed``/``retrying``/``failed`` event and began ``duration_ms`` before it (an
attempt's start is not recorded, except as ``step/started`` after a restart); a
back-off runs from ``retrying`` to its ``wake_at``; a sleep from ``scheduled`` to
``fired``; a suspend from ``suspended`` to the signal, the timeout or the
cancellation; a group and a child from ``started`` to their end. What has no end yet
runs to `now`; a wait still pending runs to its deadline, and the axis ends at `now`,
so a deadline days away runs off the right edge (its segment is marked ``open``). Groups and
their members are read by `replay._ui._tree.scope_of`, as ``replay show`` reads them.

Segments are positioned in percent of the run's span, so the HTML needs no script.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from replay._ui._html import esc, run_url, stamp
from replay._ui._tree import Row, Scope, scope_of

# An attempt's end event -> its outcome (a retried attempt failed too).
_ATTEMPT_ENDS = {"completed": "completed", "retrying": "failed", "failed": "failed",
                 "abandoned": "abandoned", "interrupted": "interrupted",
                 "cancelled": "cancelled", "late": "late"}
_WAIT_ENDS = {"fired": "completed", "timed_out": "timed_out", "cancelled": "cancelled"}
_ENDS = {"completed": "completed", "failed": "failed", "cancelled": "cancelled"}
# What each colour means, shown under the lanes.
LEGEND = (("#2e7d32", "completed"), ("#c62828", "failed"), ("#1565c0", "running"),
          ("#f9a825", "waiting"), ("#ffcc80", "retry back-off"), ("#9e9e9e", "cancelled"),
          ("#00838f", "signal"), ("#6a1b9a", "note"))


@dataclass
class Segment:
    """One bar (or point) on a lane: an attempt, a wait, a signal or a note."""

    start: datetime
    end: datetime
    outcome: str
    title: str
    wait: bool = False
    point: bool = False
    event: str = ""


@dataclass
class Lane:
    """One key of the run: what kind of command it is and its segments, in order."""

    key: str
    kind: str
    segments: list[Segment] = field(default_factory=list)
    child_run_id: str | None = None


@dataclass
class Timeline:
    """A run's lanes by key (in order of first record), its scope and its span."""

    lanes: dict[str, Lane]
    scope: Scope
    start: datetime
    end: datetime


def build(events: Sequence[Row], now: datetime, waiting_for: str | None = None) -> Timeline:
    """Return the timeline of a run from its events (in `seq` order).

    Args:
        events: The run's `replay_events` rows (without ``value``).
        now: The engine clock's time: where what has not ended yet ends.
        waiting_for: The key the run waits on now, if any (its pending wait shows as
            waiting rather than running).
    """
    scope = scope_of(events)
    lanes: dict[str, Lane] = {}
    open_attempts: dict[str, Row] = {}
    for event in events:
        key, kind = event["key"], event["kind"]
        if key is None or kind == "run":
            continue
        lane = lanes.get(key)
        if lane is None:
            lane = lanes[key] = Lane(key, kind)
        elif lane.kind == "signal":
            lane.kind = kind  # a signal that waited in the mailbox came first
        _add(lane, event, now, open_attempts, scope)
    for key, started in open_attempts.items():
        lanes[key].segments.append(Segment(started["recorded_at"], now, "running",
                                           f"attempt {started['attempt']} running",
                                           event="started"))
    for lane in lanes.values():
        _close_waits(lane, waiting_for)
    # The axis ends now (or at the last event): a wait until a deadline days away runs
    # off the right edge rather than squeezing what happened into a sliver.
    recorded = [event["recorded_at"] for event in events]
    starts = [s.start for lane in lanes.values() for s in lane.segments]
    start = min([*recorded, *starts]) if recorded or starts else now
    return Timeline(lanes, scope, start, max([now, *recorded, start]))


def _add(lane: Lane, event: Row, now: datetime, open_attempts: dict[str, Row],
         scope: Scope) -> None:
    """Add what one event means to its key's lane."""
    kind, name, at = event["kind"], event["event"], event["recorded_at"]
    key = lane.key
    if kind == "step":
        if name == "started":
            open_attempts[key] = event
            return
        if name in _ATTEMPT_ENDS:
            started = open_attempts.pop(key, None)
            took = event["duration_ms"]
            begin = (at - timedelta(milliseconds=took) if took is not None
                     else started["recorded_at"] if started is not None else at)
            lane.segments.append(Segment(begin, at, _ATTEMPT_ENDS[name],
                                         _attempt_title(event), event=name))
            if name == "retrying" and event["wake_at"] is not None:
                lane.segments.append(Segment(at, max(at, event["wake_at"]), "backoff",
                                             f"back-off until {stamp(event['wake_at'])}",
                                             wait=True, event="backoff"))
        return
    if kind in ("sleep", "suspend") and name in ("scheduled", "suspended"):
        until = event["wake_at"]
        title = f"{kind} {'until ' + stamp(until) if until is not None else 'for a signal'}"
        lane.segments.append(Segment(at, until or now, "waiting", title, wait=True,
                                     event=name))
    elif kind in ("sleep", "suspend") and name in _WAIT_ENDS:
        _end_wait(lane, at, _WAIT_ENDS[name], f"{kind}/{name}" + _error(event))
    elif kind == "signal":
        _end_wait(lane, at, "completed", "signalled")
        lane.segments.append(Segment(at, at, "signal", f"signal: {_short(event)}",
                                     point=True, event=name))
    elif kind == "note":
        lane.segments.append(Segment(at, at, "note", f"note: {_short(event)}", point=True,
                                     event=name))
    elif kind in ("group", "child"):
        _group_or_child(lane, event, now, scope)


def _group_or_child(lane: Lane, event: Row, now: datetime, scope: Scope) -> None:
    name, at = event["event"], event["recorded_at"]
    if name == "started":
        child = scope.children.get(lane.key) if event["kind"] == "child" else None
        if child is not None:
            lane.child_run_id = child.run_id
        group = scope.groups.get(lane.key) if event["kind"] == "group" else None
        what = f"{group.kind} of {len(group.members)}" if group is not None else (
            f"child run {child.run_id}" if child is not None else event["kind"])
        lane.segments.append(Segment(at, now, "running", what, event="pending"))
    elif name in ("waiting", "running") and event["kind"] == "group":
        return  # the group's lane stays one bar; its members show what it waits on
    elif name in _ENDS:
        title = f"{event['kind']}/{name}" + _error(event)
        if lane.segments and lane.segments[-1].event == "pending":
            last = lane.segments[-1]
            last.end, last.outcome, last.event = at, _ENDS[name], name
            last.title = f"{last.title}: {title}"
        else:
            lane.segments.append(Segment(at, at, _ENDS[name], title, event=name))


def _end_wait(lane: Lane, at: datetime, outcome: str, title: str) -> None:
    """End the lane's pending wait at `at`."""
    for segment in reversed(lane.segments):
        if segment.wait and segment.event in ("scheduled", "suspended"):
            segment.end, segment.outcome, segment.event = at, outcome, "ended"
            segment.title += f" → {title} at {stamp(at)}"
            return


def _close_waits(lane: Lane, waiting_for: str | None) -> None:
    """Mark a group or child the run is parked on as waiting (else it is running)."""
    for segment in lane.segments:
        if segment.event == "pending" and lane.key == waiting_for:
            segment.outcome = "waiting"


def _attempt_title(event: Row) -> str:
    took = event["duration_ms"]
    parts = [f"attempt {event['attempt']}: {event['event']}"]
    if took is not None:
        parts.append(f"{took:.1f} ms")
    return ", ".join(parts) + _error(event)


def _error(event: Row) -> str:
    error = event.get("error")
    if not error:
        return ""
    kind = event.get("error_type") or "error"
    return f" ({kind}: {str(error).strip().splitlines()[-1][:200]})"


def _short(event: Row) -> str:
    text = event.get("value_json")
    return "" if text is None else str(text)[:200]


# -- HTML --


def render(timeline: Timeline, child_states: dict[str, str] | None = None) -> str:
    """Return the ``#timeline`` element's inner HTML: axis, lanes nested by group."""
    if not timeline.lanes:
        return '<p class="empty">nothing recorded under a key yet</p>'
    states = child_states or {}
    done: set[str] = set()
    parts = [_axis(timeline)]
    for key in timeline.lanes:
        if _enclosing(timeline, key) is None:
            parts.append(_subtree(timeline, key, states, done))
    parts.append('<div class="legend">' + "".join(
        f'<span><i style="background:{colour}"></i>{esc(name)}</span>'
        for colour, name in LEGEND) + "</div>")
    return "".join(parts)


def _enclosing(timeline: Timeline, key: str) -> str | None:
    group = timeline.scope.enclosing.get(key)
    return group if group in timeline.lanes else None


def _subtree(timeline: Timeline, key: str, states: dict[str, str], done: set[str],
             depth: int = 0) -> str:
    if key in done:  # a malformed history naming a key twice: draw it once
        return ""
    done.add(key)
    group = timeline.scope.groups.get(key)
    if group is None:
        return _lane(timeline, timeline.lanes[key], states, depth)
    inner = [_lane(timeline, timeline.lanes[key], states, depth)]
    for member in group.members:
        if member in timeline.lanes:
            inner.append(_subtree(timeline, member, states, done, depth + 1))
        else:
            inner.append(f'<div class="lane not-started" data-key="{esc(member)}">'
                         f'<span class="label" title="not started" style="{_indent(depth + 1)}">'
                         f'{esc(member)} (not started)</span><span class="track"></span></div>')
    return f'<div class="group" data-key="{esc(key)}">{"".join(inner)}</div>'


def _indent(depth: int) -> str:
    """A member's label is indented by its depth; its track stays on the common axis."""
    return f"padding-left:{0.2 + 1.2 * depth:.1f}em"


def _lane(timeline: Timeline, lane: Lane, states: dict[str, str], depth: int) -> str:
    label = (f'<span class="label" title="{esc(lane.kind)} {esc(lane.key)}" '
             f'style="{_indent(depth)}">{esc(lane.key)}')
    if lane.child_run_id is not None:
        state = states.get(lane.child_run_id)
        label += (f' <a class="child-link" href="{esc(run_url(lane.child_run_id))}">'
                  f'{esc(lane.child_run_id)}</a>')
        if state:
            label += f' <span class="state" data-state="{esc(state)}">{esc(state)}</span>'
    label += "</span>"
    bars = "".join(_segment(timeline, segment) for segment in lane.segments)
    return (f'<div class="lane" data-key="{esc(lane.key)}" data-kind="{esc(lane.kind)}">'
            f'{label}<span class="track">{bars}</span></div>')


def _segment(timeline: Timeline, segment: Segment) -> str:
    span = (timeline.end - timeline.start).total_seconds() or 1.0
    left = (segment.start - timeline.start).total_seconds() / span * 100
    width = (segment.end - segment.start).total_seconds() / span * 100
    classes = "segment" + (" wait" if segment.wait else "") + (" point" if segment.point
                                                              else "")
    if segment.end > timeline.end:
        classes += " open"  # it goes on past the axis: a deadline still to come
    style = f"left:{min(max(left, 0.0), 99.7):.3f}%"
    if not segment.point:
        style += f";width:{min(max(width, 0.0), 100.0 - left):.3f}%"
    title = f"{segment.title} ({stamp(segment.start)} → {stamp(segment.end)})"
    return (f'<span class="{classes}" data-outcome="{esc(segment.outcome)}" '
            f'data-event="{esc(segment.event)}" style="{style}" title="{esc(title)}"></span>')


def _axis(timeline: Timeline) -> str:
    return (f'<div class="axis"><span>{esc(stamp(timeline.start))}</span>'
            f'<span>{esc(stamp(timeline.end))}</span></div>')


def child_ids(timeline: Timeline) -> list[str]:
    """Return the run ids of the run's children, in order of their start."""
    return [lane.child_run_id for lane in timeline.lanes.values()
            if lane.child_run_id is not None]
