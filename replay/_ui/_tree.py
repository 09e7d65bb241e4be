"""How a run's timeline nests: group members under their group, child runs beneath.

A run's events stay in the order they were recorded; each line is indented by the
groups around its key (``│ `` per group), so a group's members sit under the line
that started it and the line that decided it closes the block. A child run's own
lines, when the command has them, follow its ``child/started`` line, indented with
``┊ ``. Everything here is read from the recorded rows: which keys a group has (its
``group/started`` value), which members never started, which run a child is.

Pure: standard library only. `replay show` (`replay._cli._format`) turns the placed
lines into text; the web view (`replay._ui._timeline`) reads the same `Scope` to draw
its lanes. It lives here, below both, because the web view may not import the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

GUIDE = "│ "
CHILD_GUIDE = "┊ "
# A member's end that is a failure (a Gather counts them).
FAILURES = {("step", "failed"), ("suspend", "timed_out"), ("child", "failed"),
            ("group", "failed")}
CANCELLED = "replay.Cancelled"

Row = dict[str, Any]
# A child run's `replay_runs` row and its `replay_events` rows, by run id.
Children = Mapping[str, tuple[Row, Sequence[Row]]]


def json_of(value: Any) -> Any:
    """Return a `value_json` cell as data (a JSON column may arrive as text)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@dataclass
class Group:
    """A group as its ``group/started`` record describes it."""

    key: str
    kind: str
    members: list[str]
    names: list[str]

    def member_of(self, name: str) -> str | None:
        """Return the key of the race member called `name`."""
        if name in self.names:
            index = self.names.index(name)
            if index < len(self.members):
                return self.members[index]
        return None


@dataclass
class Child:
    """A child run as its parent recorded it."""

    key: str
    run_id: str
    workflow: str
    on_parent_close: str
    end: Row | None = None  # the parent's child/completed, failed or cancelled

    def state(self) -> str:
        """Return the child's state as far as its parent's records tell."""
        if self.end is None:
            return "not finished"
        if self.end["event"] == "completed":
            return "completed"
        if self.end["event"] == "cancelled":
            return "left running" if self.on_parent_close == "abandon" else "cancelled"
        return "cancelled" if self.end["error_type"] == CANCELLED else "failed"


@dataclass
class Scope:
    """One run's groups and children, and where each key sits."""

    groups: dict[str, Group] = field(default_factory=dict)
    enclosing: dict[str, str] = field(default_factory=dict)  # member key -> group key
    children: dict[str, Child] = field(default_factory=dict)  # by the parent's key
    seen: set[str] = field(default_factory=set)  # keys with a record
    failed: set[str] = field(default_factory=set)  # keys whose end is a failure

    def depth(self, key: str | None) -> int:
        """Return how many groups enclose `key`."""
        depth = 0
        while key is not None and key in self.enclosing and depth < 1000:
            key = self.enclosing[key]
            depth += 1
        return depth

    def not_started(self, group: Group) -> list[str]:
        """Return the members of `group` that have no record at all."""
        return [key for key in group.members if key not in self.seen]


def scope_of(events: Sequence[Row]) -> Scope:
    """Read a run's groups and children from its events."""
    scope = Scope()
    for event in events:
        kind, name, key = event["kind"], event["event"], event["key"]
        if key is None or kind == "run":
            continue
        scope.seen.add(key)
        if (kind, name) in FAILURES:
            scope.failed.add(key)
        if kind == "group" and name == "started":
            detail = json_of(event["value_json"])
            detail = detail if isinstance(detail, dict) else {}
            group = Group(key, str(detail.get("group", "")), _strings(detail.get("members")),
                          _strings(detail.get("names")))
            scope.groups[key] = group
            for member in group.members:
                scope.enclosing.setdefault(member, key)
        elif kind == "child" and name == "started":
            detail = json_of(event["value_json"])
            detail = detail if isinstance(detail, dict) else {}
            scope.children[key] = Child(key, str(detail.get("run_id", "")),
                                        str(detail.get("workflow", "")),
                                        str(detail.get("on_parent_close", "cancel")))
        elif kind == "child" and key in scope.children:
            scope.children[key].end = event
    return scope


@dataclass
class Placed:
    """One timeline line: the event, its indent, and the scope of the run it belongs to."""

    event: Row
    indent: str
    scope: Scope


def nest(events: Sequence[Row], children: Children | None = None) -> list[Placed]:
    """Return the run's events in order, indented, with the given children's beneath."""
    return _nest(events, children or {}, "", set())


def _nest(events: Sequence[Row], children: Children, base: str, shown: set[str]
          ) -> list[Placed]:
    scope = scope_of(events)
    placed = []
    for event in events:
        depth = 0 if event["kind"] == "run" else scope.depth(event["key"])
        indent = base + GUIDE * depth
        placed.append(Placed(event, indent, scope))
        if event["kind"] == "child" and event["event"] == "started":
            child = scope.children.get(event["key"])
            if child is not None and child.run_id in children and child.run_id not in shown:
                shown.add(child.run_id)
                placed += _nest(children[child.run_id][1], children, indent + CHILD_GUIDE,
                                shown)
    return placed


def _strings(value: Any) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []
