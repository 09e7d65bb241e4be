"""History files (issue 5, item 4): `engine.export_history` writes them, `read_history` reads."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

import replay
from replay import Sleep, Step, Suspend
from replay._codec import decode
from replay._codec._export import FORMAT, VERSION, read_history, write_history
from replay._core._records import Record
from replay._engine._facade import internals
from replay.testing import open_test_engine

START = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Parcel:
    weight: Decimal
    label: str


replay.register_type(Parcel, tag="test.export.Parcel")

VALUES: dict[str, Any] = {
    "none": None,
    "nested": {"a": [1, (2, 3)], "b": {"c": b"\x00\xff"}, 4: frozenset({5})},
    "times": [datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), date(2030, 1, 2),
              timedelta(hours=1.5)],
    "numbers": [2**70, -1.5, Decimal("0.10"), UUID(int=7)],
    "text": "h\u00e9llo \u2603 \"quoted\" \\ back\nslash",
    "registered": Parcel(Decimal("1.25"), "tea"),
    "big": "x" * 70_000,  # too large for value_json: NULL there, exact in value
}


def echo(value: Any) -> Any:
    return value


def always_fails() -> None:
    raise OSError("disk on fire")


@replay.workflow(name="everything")
def everything(values: dict[str, Any]):  # type: ignore[no-untyped-def]
    for name, value in values.items():
        yield Step(f"echo:{name}", echo, value)
    yield Sleep("nap:v1", timedelta(hours=3))
    try:
        first = yield Suspend("answer:v1", status="waiting", timeout=timedelta(days=1))
    except replay.SuspendTimeout:
        first = None
    second = yield Suspend("second:v1")
    try:
        yield Step("fails:v1", always_fails, retry=replay.Retry(attempts=2, initial=5))
    except replay.StepFailed as failure:
        assert failure.attempts == 2
    return [first, *second]


async def record_everything(path: Path) -> list[Record]:
    async with open_test_engine([everything], start=START) as engine:
        run = await engine.start(everything, VALUES, run_id="r-1")
        await run.wait()
        await engine.signal("r-1", "second:v1", [None, "yes"])
        assert await run.result() == [None, None, "yes"]  # after a day's timeout, virtually
        await engine.export_history("r-1", path)
        return internals(engine).store.load_history("r-1")


async def test_an_exported_history_reads_back_as_the_same_records(tmp_path: Path) -> None:
    path = tmp_path / "everything.json"
    records = await record_everything(path)
    assert read_history(path) == ("r-1", "everything", records)
    assert read_history(str(path))[2] == records
    events = {f"{r.kind}/{r.event}" for r in records}
    assert events >= {"run/started", "step/completed", "step/retrying", "step/failed",
                      "sleep/scheduled", "sleep/fired", "suspend/suspended",
                      "suspend/timed_out", "signal/signalled", "run/completed"}


async def test_the_document_is_readable_json_with_format_and_version(tmp_path: Path) -> None:
    path = tmp_path / "everything.json"
    records = await record_everything(path)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and '\n  "records": [\n    {\n      "seq": 1,' in text
    assert "h\u00e9llo \u2603" in text  # not escaped
    document = json.loads(text)
    assert list(document) == ["format", "version", "run_id", "workflow", "records"]
    assert (document["format"], document["version"]) == ("replay-history", 1)
    assert (FORMAT, VERSION) == ("replay-history", 1)
    # The run's input is too large to render as JSON: its value_json is left out.
    assert "value_json" not in document["records"][0]
    assert list(document["records"][1]) == [
        "seq", "run_id", "workflow", "kind", "event", "key", "attempt", "name", "value_json",
        "value", "error_type", "error_types", "error", "recorded_at", "wake_at",
        "duration_ms", "run_state", "status_text"]
    # generation and code_version are written only when set (a run that never continued
    # as new, an engine without a code version): such files read as older ones.
    assert {field.name for field in fields(Record)} - {"generation", "code_version"} == set(
        document["records"][1])
    by_key = {(r["key"], r["event"]): r for r in document["records"]}
    nested = by_key[("echo:nested", "completed")]
    assert nested["value_json"] == {"a": [1, [2, 3]], "b": {"c": "AP8="}, "4": [5]}
    assert decode(base64.b64decode(nested["value"])) == VALUES["nested"]
    assert by_key[("echo:registered", "completed")]["value_json"] == {
        "weight": "1.25", "label": "tea"}
    assert by_key[("echo:none", "completed")]["value_json"] is None
    assert "value_json" not in by_key[("echo:big", "completed")]  # too large to render
    nap = by_key[("nap:v1", "scheduled")]
    assert (nap["recorded_at"], nap["wake_at"]) == (
        "2030-01-01T00:00:00+00:00", "2030-01-01T03:00:00+00:00")
    retry = by_key[("fails:v1", "retrying")]
    assert (retry["attempt"], retry["error_type"], retry["error"]) == (
        1, "builtins.OSError", "disk on fire")
    assert retry["error_types"][:2] == ["builtins.OSError", "builtins.Exception"]
    assert [r["seq"] for r in document["records"]] == [r.seq for r in records]


async def test_exporting_an_unknown_run_is_run_not_found(tmp_path: Path) -> None:
    async with open_test_engine([everything]) as engine:
        with pytest.raises(replay.RunNotFound):
            await engine.export_history("nope", tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "history.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def minimal(**record: Any) -> dict[str, Any]:
    base = {"seq": 1, "run_id": "r", "workflow": "w", "kind": "run", "event": "started",
            "value": None, "recorded_at": "2030-01-01T00:00:00+00:00"}
    return {"format": "replay-history", "version": 1, "run_id": "r", "workflow": "w",
            "records": [{**base, **record}]}


def test_a_minimal_document_reads_with_missing_fields_as_null(tmp_path: Path) -> None:
    run_id, workflow, [record] = read_history(write(tmp_path, minimal()))
    assert (run_id, workflow) == ("r", "w")
    assert record == Record("r", "w", "run", "started", seq=1, recorded_at=START)


def test_json_null_and_a_missing_value_json_differ(tmp_path: Path) -> None:
    value = base64.b64encode(b"\x01\xc0").decode()
    [null] = read_history(write(tmp_path, minimal(value=value, value_json=None)))[2]
    [missing] = read_history(write(tmp_path, minimal(value=value)))[2]
    assert (null.value, null.value_json, missing.value_json) == (b"\x01\xc0", "null", None)


def test_a_file_from_a_future_replay_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = write(tmp_path, {**minimal(), "version": 2})
    with pytest.raises(ValueError, match=(
        rf"^history file {re.escape(repr(str(path)))} has version 2; this replay reads "
        r"version 1: export the history again with this replay, or use the replay that "
        r"wrote it$"
    )):
        read_history(path)


@pytest.mark.parametrize(("document", "message"), [
    ("{not json", r"is not valid JSON: Expecting property name enclosed in double quotes: "
                  r"line 1 column 2 \(char 1\)$"),
    ([1, 2], r"is not a replay history \(no \"format\": 'replay-history'\); write one with "
             r"engine\.export_history\(run_id, path\)$"),
    ({"format": "temporal", "version": 1}, r"is not a replay history"),
    ({**minimal(), "run_id": 7}, r": 'run_id' must be a string, got 7$"),
    ({**minimal(), "workflow": None}, r": 'workflow' must be a string, got None$"),
    ({**minimal(), "records": {}}, r": 'records' must be a list of records$"),
    ({**minimal(), "records": ["x"]}, r": record 0 must be an object, got 'x'$"),
    (minimal(colour="red"), r": record 0 has unknown fields \['colour'\]$"),
    (minimal(seq="1"), r": record 0 has a bad 'seq': expected an integer, got '1'$"),
    (minimal(seq=True), r": record 0 has a bad 'seq': expected an integer, got True$"),
    (minimal(kind=None), r": record 0 has a bad 'kind': expected a string, got None$"),
    (minimal(key=3), r": record 0 has a bad 'key': expected a string or null, got 3$"),
    (minimal(value="***"), r": record 0 has a bad 'value': "),
    (minimal(value=12), r": record 0 has a bad 'value': expected base64, got 12$"),
    (minimal(recorded_at="2030-01-01T00:00:00"),
     r": record 0 has a bad 'recorded_at': expected a timestamp with a UTC offset, got "
     r"'2030-01-01T00:00:00'$"),
    (minimal(recorded_at="yesterday"), r": record 0 has a bad 'recorded_at': "),
    (minimal(error_types="builtins.OSError"),
     r": record 0 has a bad 'error_types': expected a list of strings, got "
     r"'builtins\.OSError'$"),
    (minimal(duration_ms="fast"), r": record 0 has a bad 'duration_ms': expected a number, "
                                  r"got 'fast'$"),
    (minimal(run_id="other"), r": record 0 belongs to run 'other' of workflow 'w', not to "
                              r"the document's run 'r' of workflow 'w'; a history file "
                              r"holds one run$"),
])
def test_a_malformed_document_is_a_value_error_naming_the_file(
        tmp_path: Path, document: Any, message: str) -> None:
    path = write(tmp_path, document)
    with pytest.raises(ValueError, match=rf"^history file {re.escape(repr(str(path)))}"):
        read_history(path)
    with pytest.raises(ValueError, match=message):
        read_history(path)


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_history(tmp_path / "absent.json")


def test_write_history_writes_what_it_is_given(tmp_path: Path) -> None:
    record = Record("r", "w", "step", "completed", key="k", attempt=1, value=b"\x01\x05",
                    value_json="5", name="m.f", recorded_at=START, duration_ms=1.5, seq=3)
    write_history(tmp_path / "h.json", "r", "w", [record])
    assert read_history(tmp_path / "h.json") == ("r", "w", [record])
