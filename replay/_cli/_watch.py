"""``replay watch DB [RUN_ID]``: print a run's updates live, from another terminal.

While an engine holds the file, the command asks it for a watch over the live channel
(the ``watch`` operation) and prints one line per update as it comes: the run's state
first (or, with ``--after-seq``, its recorded events after that one), then every
event, status note and progress value, until the run finishes (exit 0), the engine
stops (exit 1) or Ctrl-C (exit 130). Without RUN_ID it watches every run (filtered by
``--workflow`` and ``--state``) until stopped. With no engine, nothing can change: it
prints what the file holds and says so.

Each update becomes a plain dict first (`info` and `event` as objects, recorded values
as their JSON rendering), so the human line and the ``--json`` object come from the
same data, live or from the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from replay._channel._client import ChannelError, connect
from replay._channel._protocol import WireError, from_wire
from replay._cli import _format as fmt
from replay._cli._answers import EVENT_COLUMNS, CliError, Source, shown
from replay._cli._source import open_source
from replay._codec import decode
from replay._errors import ReplayError, RunNotFound
from replay._types import FINISHED, Event, RunInfo, RunState

_RECORDED = {"output": "output_json", "status_value": "status_json"}  # info: its column
_GONE = ("EngineClosed", "ConnectionError")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``replay watch``'s arguments (after DB and --json)."""
    parser.add_argument("run_id", metavar="RUN_ID", nargs="?", default=None,
                        help="the run to watch (default: every run, until Ctrl-C)")
    parser.add_argument("--after-seq", metavar="N", type=_seq, default=None,
                        help="start with the run's recorded events after event N (an "
                        "update's seq), instead of its state now")
    parser.add_argument("--workflow", metavar="NAME", help="only runs of this workflow")
    parser.add_argument("--state", action="append", choices=[s.value for s in RunState],
                        metavar="STATE", help="only updates that leave a run in this state "
                        "(repeat for several)")


def _seq(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def watch(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``replay watch``; return its exit status.

    Raises:
        CliError: No database, or it cannot be used.
        RunNotFound: No such run (in the file).
        ChannelError: The engine refused the watch (``RunNotFound``, ...).
    """
    if args.after_seq is not None and args.run_id is None:
        print("replay watch: error: --after-seq needs RUN_ID: it resumes one run's watch "
              "after one of its events", file=sys.stderr)
        return 2
    source = open_source(args.db)
    try:
        if not source.live:
            return _offline(source, args, out)
    finally:
        source.close()
    return _live(args, out)


def _live(args: argparse.Namespace, out: TextIO) -> int:
    try:
        connection = connect(args.db)
    except ChannelError as error:
        raise CliError(error.message) from None
    if connection is None:
        raise CliError(f"the engine serving {args.db!r} stopped before the watch began; "
                       "run the command again")
    last = args.after_seq
    with connection:
        connection.request("watch", run_id=args.run_id, after_seq=args.after_seq,
                           workflow=args.workflow, states=args.state)
        try:
            for message in connection.stream():
                update = _update(message.get("update"))
                last = update["seq"] if update["kind"] != "missed" else last
                _print(update, args.json, out)
        except ChannelError as error:
            if error.kind not in _GONE:
                raise
            again = "" if args.run_id is None or last is None else f" --after-seq {last}"
            print(f"replay watch: the engine serving {args.db!r} stopped; nothing more comes "
                  f"from it: watch again once an engine holds the file (`replay watch "
                  f"{args.db}{' ' + args.run_id if args.run_id else ''}{again}`)",
                  file=sys.stderr)
            return 1
    return 0


def _offline(source: Source, args: argparse.Namespace, out: TextIO) -> int:
    """Print what the file holds; no engine serves it, so nothing will change."""
    where, params = ["TRUE"], list[Any]()
    if args.run_id is not None:
        where.append("run_id = ?")
        params.append(args.run_id)
    else:  # every run's watch starts with the unfinished runs
        where.append("state NOT IN ('completed', 'failed', 'cancelled')")
    if args.workflow:
        where.append("workflow = ?")
        params.append(args.workflow)
    if args.state:
        where.append(f"state IN ({', '.join('?' for _ in args.state)})")
        params.extend(args.state)
    runs = _dicts(source.query(f"SELECT * FROM replay_runs WHERE {' AND '.join(where)} "
                               "ORDER BY created_at, run_id", params))
    if args.run_id is not None and not runs and not _dicts(source.query(
            "SELECT run_id FROM replay_runs WHERE run_id = ?", [args.run_id])):
        raise RunNotFound(args.run_id)
    if args.after_seq is not None:
        events = _dicts(source.query(f"SELECT {EVENT_COLUMNS} FROM replay_events WHERE "
                                     "run_id = ? AND seq > ? ORDER BY seq",
                                     [args.run_id, args.after_seq]))
        for row in events:
            event = {name: row.get(name) for name in Event.__dataclass_fields__}
            event["value"] = _parsed(row.get("value_json"))
            del event["value_json"]
            _print({"kind": "event", "run_id": row["run_id"], "info": None, "seq": row["seq"],
                    "event": event, "progress": None, "key": None, "missed": 0},
                   args.json, out)
    last_seq = _dicts(source.query("SELECT max(seq) AS seq FROM replay_events"))[0]["seq"]
    for run in runs:
        info = {name: run.get(_RECORDED.get(name, name)) for name in RunInfo.__dataclass_fields__}
        _print({"kind": "snapshot", "run_id": run["run_id"], "info": info, "seq": last_seq,
                "event": None, "progress": None, "key": None, "missed": 0}, args.json, out)
    if source.noun == "database":  # a PostgreSQL URL: an engine may run, out of reach
        print(f"replay watch: the replay command cannot watch {shown(args.db)!r} live (it "
              "reaches no engine on a PostgreSQL database): this is what the database "
              "holds now; follow updates with engine.watch() in the application whose "
              "engine runs on it", file=sys.stderr)
        return 0
    print(f"replay watch: no engine serves {args.db!r}, so nothing will change: this is what "
          "the file holds; watch again while an engine holds it to see updates live",
          file=sys.stderr)
    return 0


def _dicts(result: Any) -> list[dict[str, Any]]:
    """Return a query's rows as dicts, JSON columns parsed."""
    return [{name: fmt.json_value(value, kind) if kind == "JSON" else value
             for name, kind, value in zip(result.columns, result.types, row, strict=True)}
            for row in result.rows()]


def _parsed(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- one update --


def _update(data: Any) -> dict[str, Any]:
    """Return an ``update`` message as plain data, recorded values decoded and rendered.

    Raises:
        ChannelError: The message is malformed.
    """
    try:
        if not isinstance(data, dict) or "kind" not in data:
            raise WireError("no update")
        update = {name: from_wire(item) for name, item in data.items()
                  if name not in ("info", "event")}
        info, event = data.get("info"), data.get("event")
        update["info"] = None if not isinstance(info, dict) else {
            name: _value(from_wire(info.get(name))) if name in _RECORDED
            else from_wire(info.get(name)) for name in RunInfo.__dataclass_fields__}
        update["event"] = None
        if isinstance(event, dict):
            fields = {name: from_wire(event.get(name)) for name in Event.__dataclass_fields__}
            fields["value"] = _value(fields["value"], fields.pop("value_json"))
            update["event"] = fields
    except WireError as error:
        raise ChannelError("ProtocolError", f"malformed update from the engine: {error}"
                           ) from None
    if update.get("kind") == "progress":
        update["progress"] = _value(update.get("progress"))
    return update


def _value(data: Any, fallback_json: Any = None) -> Any:
    """Decode a recorded value (codec bytes) to JSON data; else its recorded rendering."""
    if not isinstance(data, bytes):
        return _parsed(fallback_json)
    try:
        return fmt.json_value(decode(data))
    except ReplayError:  # e.g. a type registered in the engine's process only
        return _parsed(fallback_json) if fallback_json is not None else "<undecodable value>"


def _print(update: dict[str, Any], as_json: bool, out: TextIO) -> None:
    if as_json:
        text = json.dumps(fmt.json_value(update), ensure_ascii=False, allow_nan=False)
    else:
        text = line(update)
    print(text, file=out, flush=True)


def line(update: dict[str, Any]) -> str:
    """Render one update for people: time, run, what happened, state, status."""
    info, event, kind = update.get("info"), update.get("event"), update["kind"]
    if kind == "missed":
        return (f"{_clock(None)}  (fell behind: missed {update['missed']} updates; the "
                "unfinished runs' states follow)")
    if kind == "event" and event is not None:
        what = f"{event['kind']}/{event['event']}"
        if event.get("key"):
            what += f" {event['key']}"
        if event.get("attempt"):
            what += f" (attempt {event['attempt']})"
        at = event.get("recorded_at")
    elif kind == "progress":
        what = f"progress {update.get('key')}: {fmt.cut(_json(update.get('progress')))}"
        at = None
    else:
        what = "now"
        at = None if info is None else info.get("updated_at")
    parts = [_clock(at), str(update["run_id"]), what]
    if info is not None:
        parts.append(_state(info))
        status = info.get("status_text")
        if status and kind != "progress":
            parts.append(json.dumps(fmt.cut(str(status)), ensure_ascii=False))
    if update.get("missed") and kind == "snapshot":
        parts.append(f"(fell behind: missed {update['missed']} updates)")
    return "  ".join(parts)


def _state(info: dict[str, Any]) -> str:
    state = str(info.get("state"))
    if info.get("waiting_for") and state in (RunState.SLEEPING, RunState.SUSPENDED):
        return f"{state} on {info['waiting_for']}"
    if state == RunState.COMPLETED:
        return f"completed → {fmt.cut(_json(info.get('output')))}"
    if state in FINISHED and info.get("error"):
        return f"{state}: {fmt.cut(fmt.last_line(str(info['error'])))}"
    return state


def _json(value: Any) -> str:
    return json.dumps(fmt.json_value(value), ensure_ascii=False)


def _clock(at: Any) -> str:
    """``HH:MM:SS`` in UTC (now, for what carries no time of its own)."""
    moment = at if isinstance(at, datetime) else datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%H:%M:%S")
