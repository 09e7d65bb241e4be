"""How the `replay` command prints: aligned tables for people, JSON for scripts.

Human output is plain text without colours or third-party packages: timestamps in UTC
(the engine clock's zone), long cells cut with ``…`` (``--json`` has everything).
JSON output follows the SQL contract: one object per row with the view's column
names; JSON columns (``value_json``, ``input_json``, ``output_json``) are embedded as
JSON, timestamps are ISO 8601 strings, and other values follow the codec's JSON
rendering (bytes as base64, decimals and UUIDs as strings, intervals as seconds).
"""

from __future__ import annotations

import base64
import json
import math
import shlex
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from replay._types import RunState
from replay._ui._tree import Children, Group, Placed, Scope, json_of, nest, scope_of

MAX_CELL = 60
MAX_DETAIL = 120


# -- JSON --


def json_value(value: Any, type_name: str = "") -> Any:
    """Turn one query value into plain JSON data (a JSON column is parsed)."""
    if type_name == "JSON" and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(json_value(k)): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_value(item) for item in value]
    return str(value)


def objects(columns: Sequence[str], types: Sequence[str], rows: Sequence[Sequence[Any]]
            ) -> list[dict[str, Any]]:
    """Return rows as JSON objects; a repeated column name gets a ``_2``, ``_3`` suffix."""
    names: list[str] = []
    for column in columns:
        name, n = column, 1
        while name in names:
            n += 1
            name = f"{column}_{n}"
        names.append(name)
    return [{name: json_value(value, kind) for name, kind, value in zip(names, types, row,
                                                                          strict=True)}
            for row in rows]


def dumps(data: Any) -> str:
    """Return JSON text for `--json` output (indented, UTF-8, no NaN)."""
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)


# -- cells and tables --


def cut(text: str, width: int = MAX_CELL) -> str:
    """Return `text` on one line, at most `width` characters (cut with ``…``)."""
    text = text.replace("\r\n", "\n").replace("\n", "\\n").replace("\t", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def cell(value: Any, type_name: str = "", null: str = "NULL") -> str:
    """Render one query value for a human table."""
    if value is None:
        return null
    if type_name == "JSON" and isinstance(value, str):
        return cut(value)
    if isinstance(value, datetime):
        return stamp(value, millis=True) + "Z" if value.tzinfo else value.isoformat(" ")
    if isinstance(value, float):
        return number(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, dict | list | tuple):
        return cut(json.dumps(json_value(value), ensure_ascii=False))
    return cut(str(value))


def number(value: float) -> str:
    """Render a float readably: at most three decimals for ordinary magnitudes."""
    if not math.isfinite(value) or value == 0 or not 1e-3 <= abs(value) < 1e15:
        return repr(value)
    return f"{value:.3f}".rstrip("0").rstrip(".")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]],
          right: Sequence[bool] = ()) -> str:
    """Return an aligned plain-text table (two spaces between columns)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    aligned = list(right) + [False] * (len(headers) - len(right))

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w)
                 for c, w, r in zip(cells, widths, aligned, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def query_table(columns: Sequence[str], types: Sequence[str],
                rows: Sequence[Sequence[Any]]) -> str:
    """Render a query's result as a table with a row count."""
    right = [_numeric(kind) for kind in types]
    body = [[cell(value, kind) for value, kind in zip(row, types, strict=True)]
            for row in rows]
    count = f"({len(rows)} row{'' if len(rows) == 1 else 's'})"
    if not columns:
        return count
    return table(columns, body, right) + "\n" + count


def _numeric(type_name: str) -> bool:
    return type_name.split("(")[0] in {
        "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
        "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL"}


# -- time --


def stamp(value: datetime | None, millis: bool = False) -> str:
    """Render an aware datetime in UTC: ``2026-11-25 09:36:12`` (or with milliseconds)."""
    if value is None:
        return ""
    utc = value.astimezone(UTC)
    text = utc.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{utc.microsecond // 1000:03d}" if millis else text


def span(seconds: float) -> str:
    """Render a length of time compactly: ``0.012s``, ``12.3s``, ``5m03s``, ``2d03h``."""
    if seconds < 0:
        return "-" + span(-seconds)
    if seconds < 10:
        return f"{seconds:.3f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def took(ms: float | None) -> str:
    """Render an attempt's duration in milliseconds."""
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms:.1f}ms"
    return span(ms / 1000)


# -- runs --

RUN_HEADERS = ("RUN_ID", "WORKFLOW", "STATE", "CREATED (UTC)", "UPDATED (UTC)", "DETAIL")


def run_detail(run: dict[str, Any]) -> str:
    """Say in a few words what a run waits on, how it failed or what it returned."""
    state = run["state"]
    if state in (RunState.SLEEPING, RunState.SUSPENDED):
        text = str(run["waiting_for"])
        if run.get("status_text"):
            text += f": {run['status_text']}"
        if run.get("wake_at") is not None:
            verb = "until" if state == RunState.SLEEPING else "times out"
            text += f" ({verb} {stamp(run['wake_at'])})"
        return cut(text, MAX_DETAIL)
    if state in (RunState.FAILED, RunState.CANCELLED):
        text = last_line(run.get("error") or run.get("error_type") or "")
        return cut(text.replace(f" of run {run['run_id']!r}", ""), MAX_DETAIL)
    if state == RunState.COMPLETED and run.get("output_json") is not None:
        return cut(f"→ {run['output_json']}", MAX_DETAIL)
    return ""


def last_line(text: str) -> str:
    """Return the last non-empty line of a traceback: the exception and its message."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def runs_table(runs: Sequence[dict[str, Any]]) -> str:
    """Render `replay runs`."""
    rows = [[r["run_id"], r["workflow"], r["state"], stamp(r["created_at"]),
             stamp(r["updated_at"]), run_detail(r)] for r in runs]
    return table(RUN_HEADERS, rows)


# -- one run's timeline (`replay show`) --

TIMELINE_HEADERS = ("AT", "EVENT", "KEY", "ATTEMPT", "TOOK", "DETAIL")
CHILD_HEADERS = ("CHILD RUN", "KEY", "WORKFLOW", "STATE", "SHOW IT WITH")
CROSS = "✗"


def show_text(run: dict[str, Any], events: Sequence[dict[str, Any]], *,
              children: Children | None = None, db: str | None = None) -> str:
    """Render `replay show`: the run's summary, then one line per event.

    A group's members are indented under it (`replay._ui._tree`), and a run with child
    runs ends with a table of them. `children` (from `_children.load_children`): child runs whose
    own lines are nested under their ``child/started`` line; `db`: the database path,
    for the command that shows a child run on its own.
    """
    start: datetime = run["created_at"]
    placed = nest(events, children)
    scope = scope_of(events)
    lines = [f"run       {run['run_id']}", f"workflow  {run['workflow']}",
             f"state     {_state_line(run, start, scope)}",
             f"created   {stamp(start, millis=True)} UTC",
             f"updated   {stamp(run['updated_at'], millis=True)} UTC "
             f"(+{span((run['updated_at'] - start).total_seconds())})",
             f"input     {cut(str(run['input_json']), MAX_DETAIL)}"]
    if run.get("parent_run_id") is not None:
        lines.append(f"parent    {run['parent_run_id']}")
    if run.get("output_json") is not None:
        lines.append(f"output    {cut(str(run['output_json']), MAX_DETAIL)}")
    rows = _timeline_rows(placed, start)
    lines += ["", table(TIMELINE_HEADERS, rows, right=(False, False, False, True, True))]
    if scope.children:
        lines += ["", _children_table(scope, children or {}, db)]
    if run.get("error"):
        lines += ["", "error:", *("  " + line for line in str(run["error"]).splitlines())]
    return "\n".join(lines)


def _state_line(run: dict[str, Any], start: datetime, scope: Scope) -> str:
    state = str(run["state"])
    if run.get("waiting_for") is not None:
        group = run["waiting_for"] in scope.groups
        state += f" on {'group ' if group else ''}{run['waiting_for']}"
        if run.get("status_text"):
            state += f" ({run['status_text']})"
        if run.get("wake_at") is not None:
            verb = ("next deadline" if group
                    else "wakes" if run["state"] == RunState.SLEEPING else "times out")
            state += f", {verb} at +{span((run['wake_at'] - start).total_seconds())}"
    elif run.get("error_type"):
        state += f": {run['error_type']}"
    return state


def _timeline_rows(placed: Sequence[Placed], start: datetime) -> list[list[str]]:
    parked: dict[tuple[str, str], datetime] = {}  # (run, key) -> when it began to wait
    rows = []
    for line in placed:
        event = line.event
        at: datetime = event["recorded_at"]
        key = event["key"] or ""
        name = f"{event['kind']}/{event['event']}"
        where = (str(event.get("run_id")), key)
        if name in ("sleep/scheduled", "suspend/suspended"):
            parked.setdefault(where, at)
        waited = parked.pop(where, None) if name in (
            "sleep/fired", "signal/signalled", "suspend/timed_out") else None
        detail = _detail(name, event, start, None if waited is None else at - waited)
        if event["kind"] in ("group", "child") or event["event"] in ("cancelled",
                                                                      "cancel_requested"):
            detail = _nested_detail(name, event, line.scope, start) or detail
        attempt = "" if event["attempt"] is None else str(event["attempt"])
        if name == "group/failed":
            attempt = ""  # the deciding member's attempts: its own line shows them
        rows.append([f"+{span((at - start).total_seconds())}", line.indent + name,
                     cut(key, 30), attempt, took(event["duration_ms"]),
                     cut(detail, MAX_DETAIL)])
    return rows


def _detail(name: str, event: dict[str, Any], start: datetime,
            waited: timedelta | None) -> str:
    value = "" if event["value_json"] is None else str(event["value_json"])
    error = f"{event['error_type']}: {last_line(event['error'] or '')}" if event[
        "error_type"] else ""
    wake = ("" if event["wake_at"] is None
            else f"+{span((event['wake_at'] - start).total_seconds())}")
    after = "" if waited is None else f" after {span(waited.total_seconds())}"
    details = {
        "run/started": f"input {value}",
        "run/completed": f"output {value}",
        "run/failed": f"{event['error_type']}: {_text(value)}",
        "step/retrying": f"{error}; next attempt at {wake}",
        "step/failed": error,
        "step/started": "attempt started (its start recorded: first attempt after an open)",
        "step/abandoned": "attempt abandoned: the engine stopped; it runs again, uncharged",
        "step/renamed": event["error"] or value,
        "sleep/scheduled": f"sleeps until {wake}",
        "sleep/fired": f"woke{after}",
        "suspend/suspended": "waits for a signal" + (f", times out at {wake}" if wake else ""),
        "suspend/timed_out": f"timed out{after}",
        "signal/signalled": f"{value}" + (f" (delivered{after})" if after else ""),
    }
    return details.get(name, error or value)


def _nested_detail(name: str, event: dict[str, Any], scope: Scope, start: datetime) -> str:
    """Say what a group, child or cancellation record means, in its run's terms."""
    value = json_of(event["value_json"])
    error = f"{event['error_type']}: {last_line(event['error'] or '')}" if event[
        "error_type"] else ""
    group = scope.groups.get(event["key"] or "")
    if name == "group/started" and group is not None:
        if group.kind == "race":
            members = [f"{n}={k}" for n, k in zip(group.names, group.members, strict=False)]
        else:
            members = group.members
        return f"{group.kind} of {len(group.members)}: {', '.join(members)}"
    if name == "group/completed" and group is not None:
        if group.kind == "race":
            return _won(group, value)
        failed = [key for key in group.members if key in scope.failed]
        if failed:
            return f"every member ended; {len(failed)} failed: {', '.join(failed)}"
        return f"every member completed ({len(group.members)})"
    if name == "group/failed" and group is not None:
        if group.kind == "race":
            return f"{_won(group, value)}, which failed: {error}"
        member = value.get("member") if isinstance(value, dict) else None
        text = f"fail-fast: {member} failed: {error}"
        never = scope.not_started(group)
        return text + (f"; never started: {', '.join(never)}" if never else "")
    if name == "group/waiting":
        wake = event["wake_at"]
        return "the run waits for its members" + (
            "" if wake is None else f"; next deadline +{span((wake - start).total_seconds())}")
    if name == "group/running":
        return "a member is under way again"
    if name == "child/started" and isinstance(value, dict):
        text = f"child run {value.get('run_id')} ({value.get('workflow')})"
        if value.get("on_parent_close") == "abandon":
            text += "; runs on if this run ends first"
        return text
    reason = "" if value is None else f": {_reason(value)}"
    if name == "run/cancel_requested":
        return f"cancellation requested{reason}"
    if name == "run/cancelled":
        text = f"{event['error_type']}{reason}"
        raised = str(event["error"] or "")
        return text if not raised or raised.startswith("Traceback") else f"{text}; {raised}"
    if event["event"] == "cancelled":  # a member, or the command the run waited on
        text = f"{CROSS} cancelled: {last_line(event['error'] or '')}"
        if event["value_json"] is not None:  # the run's cancellation was thrown in here
            text += f" (Cancelled thrown in here{reason})"
        return text
    return ""


def _reason(value: Any) -> str:
    """Render a cancellation's reason: a text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _won(group: Group, value: Any) -> str:
    winner = value.get("winner") if isinstance(value, dict) else None
    key = group.member_of(str(winner)) if winner is not None else None
    return f"won by {winner}" + (f" ({key})" if key else "")


def _children_table(scope: Scope, children: Children, db: str | None) -> str:
    where = "DB" if db is None else shlex.quote(db)
    rows = []
    for child in scope.children.values():
        known = children.get(child.run_id)
        state = child.state()
        if known is not None:
            actual = str(known[0]["state"])
            if state in ("completed", "failed", "cancelled") and actual != state:
                actual += f" (this run recorded it {state})"
            state = actual
        rows.append([child.run_id, child.key, child.workflow, state,
                     f"replay show {where} {shlex.quote(child.run_id)}"])
    return table(CHILD_HEADERS, rows)


def _text(value_json: str) -> str:
    """Return a JSON string value as its text (the message of a `run/failed`)."""
    try:
        decoded = json.loads(value_json)
    except ValueError:
        return value_json
    return decoded if isinstance(decoded, str) else value_json
