"""Rows of the event table: records turned into rows and back, and run summaries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from replay._history import Record


@dataclass(frozen=True, slots=True)
class RunRow:
    """A run's state as the database has it, read when the engine opens."""

    run_id: str
    workflow: str
    state: str
    created_at: datetime
    updated_at: datetime
    waiting_for: str | None
    wake_at: datetime | None
    status_text: str | None
    error_type: str | None
    error: str | None
    value: bytes | None


def clean_text(text: str) -> str:
    """Return `text` storable as DuckDB VARCHAR (lone surrogates escaped)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def record_row(record: Record) -> tuple[Any, ...]:
    """Turn a record into a row of `replay_event_log`, validated for storage."""
    return (
        record.seq, clean_text(record.run_id), clean_text(record.workflow),
        _clean(record.key), record.kind, record.event,
        record.attempt, record.value, _clean(record.value_json), _clean(record.error_type),
        _clean(record.error), record.recorded_at, record.duration_ms, record.wake_at,
        _clean(record.name), _clean(",".join(record.error_types) or None), record.run_state,
        _clean(record.status_text),
    )


def _clean(text: str | None) -> str | None:
    return None if text is None else clean_text(text)


def row_record(row: tuple[Any, ...]) -> Record:
    (seq, run_id, workflow, key, kind, event, attempt, value, value_json, error_type, error,
     recorded_at, duration_ms, wake_at, name, error_types, run_state, status_text) = row
    return Record(
        run_id=run_id, workflow=workflow, kind=kind, event=event, key=key, attempt=attempt,
        value=value, value_json=value_json, error_type=error_type, error=error,
        error_types=tuple(error_types.split(",")) if error_types else (), name=name,
        recorded_at=utc(recorded_at), duration_ms=duration_ms, wake_at=utc_or_none(wake_at),
        run_state=run_state, status_text=status_text, seq=seq,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def memo_record(run_id: str, workflow: str, row: tuple[Any, ...]) -> Record:
    """Turn a row of `MEMO_COLUMNS` into a record for the memo (no `recorded_at`)."""
    (seq, key, kind, event, attempt, value, error_type, error, wake_us, name, error_types,
     status_text) = row
    return Record(
        run_id=run_id, workflow=workflow, kind=kind, event=event, key=key, attempt=attempt,
        value=value, error_type=error_type, error=error,
        error_types=tuple(error_types.split(",")) if error_types else (), name=name,
        wake_at=None if wake_us is None else _EPOCH + timedelta(microseconds=wake_us),
        status_text=status_text, seq=seq,
    )


def utc(value: datetime) -> datetime:
    """Return a TIMESTAMPTZ read from DuckDB as an aware datetime in `datetime.UTC`."""
    return value.astimezone(UTC)


def utc_or_none(value: datetime | None) -> datetime | None:
    """Like `utc`, passing None through."""
    return None if value is None else value.astimezone(UTC)
