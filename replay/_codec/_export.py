"""Histories as files: one run's records as a JSON document, and back.

The document is meant to be read by people (it is a golden history kept next to the
tests, reviewed in pull requests) and by `replay.testing.check_history`. So every
record keeps every column exactly: a value is stored as base64 of its msgpack bytes
(``value``, what replay decodes) *and* as the JSON rendering users see in SQL
(``value_json``, embedded as JSON, for reading; replay never reads it back as a
value; the field is left out when a value has no JSON rendering, i.e. when it is too
large, so that JSON ``null`` always means the value None). Timestamps are ISO 8601
with their UTC offset. The document names its format and version; a reader refuses
any other with a `ValueError` that says what to do.

Pure data conversion (the codec's JSON text conventions): no trio, no duckdb.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any

from replay._codec._decoding import decode
from replay._core._records import Record
from replay._types import Event

FORMAT = "replay-history"
VERSION = 1

# How `value_json` text is written by the codec: parsing it and dumping it again with
# these settings gives back the same text, so the file embeds it as JSON.
_JSON_TEXT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

# Every column of `Record`, in the order a reader wants them (the value's JSON before
# its base64 bytes).
_FIELDS = ("seq", "run_id", "workflow", "kind", "event", "key", "attempt", "name",
           "value_json", "value", "error_type", "error_types", "error", "recorded_at",
           "wake_at", "duration_ms", "run_state", "status_text", "generation", "code_version")
assert set(_FIELDS) == {field.name for field in dataclasses.fields(Record)}
# Written only when set: a history of one generation and no code version reads as
# files written before these fields existed.
_UNLESS_DEFAULT = {"generation": 0, "code_version": None}
_TEXT = ("run_id", "workflow", "kind", "event")
_OPTIONAL_TEXT = ("key", "error_type", "error", "name", "run_state", "status_text",
                  "code_version")
_TIMES = ("recorded_at", "wake_at")


def write_history(path: Path, run_id: str, workflow: str, records: list[Record]) -> None:
    """Write the records of one run to `path` as a JSON history document.

    Args:
        path: The file to write (replaced if it exists).
        run_id: The run's id.
        workflow: The run's workflow name.
        records: The run's records in `seq` order, as loaded from the database.

    Raises:
        OSError: The file cannot be written.
    """
    document = {
        "format": FORMAT,
        "version": VERSION,
        "run_id": run_id,
        "workflow": workflow,
        "records": [_record_data(record) for record in records],
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_history(path: str | PathLike[str]) -> tuple[str, str, list[Record]]:
    """Read a history document written by `write_history` (`Engine.export_history`).

    Args:
        path: The JSON file.

    Returns:
        The run's id, its workflow name and its records in `seq` order.

    Raises:
        OSError: The file cannot be read.
        ValueError: The file is not a replay history of a version this replay reads,
            or a record in it is malformed; the message names the file and the field.
    """
    where = str(path)
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"history file {where!r} is not valid JSON: {error}") from None
    run_id, workflow = _check_document(document, where)
    records = [_record(data, where, index) for index, data in enumerate(document["records"])]
    for index, record in enumerate(records):
        if (record.run_id, record.workflow) != (run_id, workflow):
            raise ValueError(
                f"history file {where!r}: record {index} belongs to run {record.run_id!r} "
                f"of workflow {record.workflow!r}, not to the document's run {run_id!r} of "
                f"workflow {workflow!r}; a history file holds one run"
            )
    return run_id, workflow, records


def _record_data(record: Record) -> dict[str, Any]:
    data: dict[str, Any] = {name: getattr(record, name) for name in _FIELDS}
    data["value"] = None if record.value is None else base64.b64encode(record.value).decode()
    if record.value_json is not None:
        data["value_json"] = json.loads(record.value_json)
    elif record.value is not None:
        del data["value_json"]  # too large to render: SQL NULL, not JSON null
    data["error_types"] = list(record.error_types)
    for name in _TIMES:
        moment = getattr(record, name)
        data[name] = None if moment is None else moment.isoformat()
    for name, default in _UNLESS_DEFAULT.items():
        if data[name] == default:
            del data[name]
    return data


def _check_document(document: object, where: str) -> tuple[str, str]:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(
            f"history file {where!r} is not a replay history (no \"format\": {FORMAT!r}); "
            "write one with engine.export_history(run_id, path)"
        )
    version = document.get("version")
    if version != VERSION:
        raise ValueError(
            f"history file {where!r} has version {version!r}; this replay reads version "
            f"{VERSION}: export the history again with this replay, or use the replay "
            "that wrote it"
        )
    for name in ("run_id", "workflow"):
        if not isinstance(document.get(name), str):
            raise ValueError(
                f"history file {where!r}: {name!r} must be a string, got "
                f"{document.get(name)!r}")
    if not isinstance(document.get("records"), list):
        raise ValueError(f"history file {where!r}: 'records' must be a list of records")
    return document["run_id"], document["workflow"]


def _record(data: object, where: str, index: int) -> Record:
    if not isinstance(data, dict):
        raise ValueError(f"history file {where!r}: record {index} must be an object, "
                         f"got {data!r}")
    unknown = set(data) - set(_FIELDS)
    if unknown:
        raise ValueError(f"history file {where!r}: record {index} has unknown fields "
                         f"{sorted(unknown)!r}")
    fields: dict[str, Any] = {}
    for name in _FIELDS:
        fields[name] = _field(name, data.get(name, _UNLESS_DEFAULT.get(name)), where, index)
    if fields["value"] is None or "value_json" not in data:
        fields["value_json"] = None
    return Record(**fields)


def _field(name: str, value: Any, where: str, index: int) -> Any:
    try:
        return _parse_field(name, value)
    except (TypeError, ValueError, binascii.Error) as error:
        raise ValueError(
            f"history file {where!r}: record {index} has a bad {name!r}: {error}"
        ) from None


def _parse_field(name: str, value: Any) -> Any:
    if name in _TEXT:
        return _typed(value, str, "a string")
    if name in _OPTIONAL_TEXT:
        return None if value is None else _typed(value, str, "a string or null")
    if name in _TIMES:
        return None if value is None else _moment(value)
    if name == "value":
        return None if value is None else base64.b64decode(_typed(value, str, "base64"),
                                                            validate=True)
    if name == "value_json":
        return _JSON_TEXT.encode(value)  # "null" for JSON null: the caller decides
    if name == "error_types":
        items = [] if value is None else _typed(value, list, "a list of strings")
        return tuple(_typed(item, str, "a list of strings") for item in items)
    if name in ("seq", "attempt", "generation"):
        if value is None and name == "attempt":
            return None
        return _typed(value, int, "an integer")
    if name == "duration_ms":
        if value is None:
            return None
        return float(_typed(value, (int, float), "a number"))
    raise AssertionError(f"unknown record field {name!r}")  # pragma: no cover


def _typed(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"expected {what}, got {value!r}")
    return value


def _moment(value: Any) -> datetime:
    moment = datetime.fromisoformat(_typed(value, str, "an ISO 8601 timestamp"))
    if moment.tzinfo is None:
        raise ValueError(f"expected a timestamp with a UTC offset, got {value!r}")
    return moment


def event_of(record: Record) -> Event:
    """Return the public `Event` of a loaded record, its value decoded."""
    return Event(
        seq=record.seq, run_id=record.run_id, workflow=record.workflow, key=record.key,
        kind=record.kind, event=record.event, attempt=record.attempt,
        value=None if record.value is None else decode(record.value),
        value_json=record.value_json, error_type=record.error_type, error=record.error,
        recorded_at=record.recorded_at,  # type: ignore[arg-type]
        duration_ms=record.duration_ms, wake_at=record.wake_at, generation=record.generation,
    )
