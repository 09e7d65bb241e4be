"""Rows of the event table: records turned into rows and back, and run summaries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

from replay._codec import encode
from replay._core._history import OutcomeFields
from replay._core._records import Record
from replay._core._state import damaged_message, run_problem
from replay._epoch import EPOCH, micros, moment
from replay._errors import DatabaseError


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
    started_seq: int = 0
    parent_run_id: str | None = None
    note_text: str | None = None
    note_value: bytes | None = None
    generation: int = 0
    last_seq: int = 0
    parent_key: str | None = None


def run_row(row: tuple[Any, ...], path: str) -> RunRow:
    """Build a run's state from a row of `RUN_SUMMARY`.

    A damaged run (an unknown state, a missing workflow name or start time) is loaded
    as failed with a `replay.DatabaseError` saying what is wrong, so that one bad run
    does not keep the others from running; nothing is written.
    """
    (run_id, workflow, state, created_at, updated_at, key, wake_at, status_text, error_type,
     error, value, started_seq, parent_run_id, note_text, note_value, generation, last_seq,
     parent_key) = row
    problem = run_problem(workflow, state, created_at)
    if problem is None:
        return RunRow(run_id, workflow, state, utc(created_at), utc(updated_at), key,
                      utc_or_none(wake_at), status_text, error_type, error, value,
                      started_seq or 0, parent_run_id, note_text, note_value, generation or 0,
                      last_seq or 0, parent_key)
    message = damaged_message(run_id, path, problem)
    at = utc(created_at or updated_at or EPOCH)
    return RunRow(run_id, workflow or "", "failed", at, utc(updated_at or at), None, None,
                  None, "replay.DatabaseError", message, encode(message, key="error"),
                  started_seq or 0)


def fold_summary(run_id: str, rows: list[tuple[Any, ...]]) -> tuple[Any, ...] | None:
    """Fold one run's rows, in `seq` order, into a row of `RUN_SUMMARY` (see `run_row`).

    The rows are `MEMO_COLUMNS` followed by ``workflow, run_state, recorded_at`` (epoch
    microseconds). The fold is ``ONE_RUN``'s, in Python: DuckDB's aggregate with its
    filters costs about twice the plain read of the same rows. None if the run has no
    start or no state-carrying record (it is not a run, or not yet).
    """
    started = latest = note = None
    updated = None
    for row in rows:
        if row[2] == "run" and row[3] == "started" and started is None:
            started = row
        if row[15] is not None:
            latest = row
        if row[2] == "note":
            note = row
        if row[16] is not None and (updated is None or row[16] > updated):
            updated = row[16]
    if started is None or latest is None:
        return None
    return (run_id, started[14], latest[15], from_epoch_us(started[16]),
            from_epoch_us(updated), latest[1], from_epoch_us(latest[8]), latest[11],
            latest[6], latest[7], latest[5], started[0], started[9],
            None if note is None else note[11], None if note is None else note[5],
            latest[12] or 0, rows[-1][0], started[1])


def history_records(rows: list[tuple[Any, ...]], path: str,
                    stamp: Callable[[Any], datetime | None] | None = None) -> list[Record]:
    """Turn rows of `COLUMNS` into records (`stamp` reads their timestamps).

    Raises:
        DatabaseError: A row has no `recorded_at` (a damaged or hand-edited file).
    """
    for row in rows:
        if row[11] is None:
            raise DatabaseError(
                f"run {row[1]!r} is damaged in {path!r}: its event seq {row[0]} "
                f"({row[4]}/{row[5]}) has no recorded_at; repair its rows in "
                "replay_event_log, or restore the file from a backup"
            )
    return [row_record(row, stamp or utc_or_none) for row in rows]


def clean_text(text: str) -> str:
    """Return `text` storable as DuckDB VARCHAR (lone surrogates escaped)."""
    if text.isascii():  # nearly every text: no encoding to try
        return text
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
        _clean(record.status_text), record.generation,
        record.code_version and clean_text(record.code_version),
    )


def _clean(text: str | None) -> str | None:
    return None if text is None else clean_text(text)


def utc(value: datetime) -> datetime:
    """Return a TIMESTAMPTZ read from DuckDB as an aware datetime in `datetime.UTC`."""
    return value.astimezone(UTC)


def utc_or_none(value: datetime | None) -> datetime | None:
    """Like `utc`, passing None through."""
    return None if value is None else value.astimezone(UTC)


def row_record(row: tuple[Any, ...],
               stamp: Callable[[Any], datetime | None] = utc_or_none) -> Record:
    """Turn a row of `COLUMNS` into a record; `stamp` reads its two timestamps."""
    (seq, run_id, workflow, key, kind, event, attempt, value, value_json, error_type, error,
     recorded_at, duration_ms, wake_at, name, error_types, run_state, status_text, generation,
     code_version) = row
    return Record(
        run_id=run_id, workflow=workflow, kind=kind, event=event, key=key, attempt=attempt,
        value=value, value_json=value_json, error_type=error_type, error=error,
        error_types=tuple(error_types.split(",")) if error_types else (), name=name,
        recorded_at=stamp(recorded_at), duration_ms=duration_ms, wake_at=stamp(wake_at),
        run_state=run_state, status_text=status_text, seq=seq, generation=generation,
        code_version=code_version,
    )


def from_epoch_us(us: int | None) -> datetime | None:
    """The UTC time `us` microseconds after the epoch (None passes through)."""
    return None if us is None else moment(us)


def epoch_us(at: datetime | None) -> int | None:
    """The aware `at` in microseconds since the epoch (None passes through)."""
    return None if at is None else micros(at)


# An unfinished run's state, as `OPEN_STATES` reads it: (run_id, workflow, state,
# created_us, updated_us, waiting_for, wake_us, status_text, started_seq, parent_run_id,
# note_text, note_value, generation or None, last_seq, parent_key, deadline_us, quiet);
# the `_us` columns are microseconds since the epoch.
ParkedRow: TypeAlias = tuple[str, str, str, int, int, str | None, int | None, str | None,
                             int, str | None, str | None, bytes | None, int | None, int,
                             str | None, int | None, bool]


def open_record(row: tuple[Any, ...]) -> Record:
    """Turn a row of `OPEN_COLUMNS` (timestamps as epoch microseconds) into a record."""
    return row_record(row, from_epoch_us)


# Where a row of `MEMO_COLUMNS` keeps what `fold_rows` reads of a step's outcome.
MEMO_OUTCOME: OutcomeFields = (1, 2, 3, 4, 9, 5)


def memo_record(run_id: str, workflow: str, row: tuple[Any, ...]) -> Record:
    """Turn a row of `MEMO_COLUMNS` into a record for the memo (no `recorded_at`)."""
    (seq, key, kind, event, attempt, value, error_type, error, wake_us, name, error_types,
     status_text, generation, code_version) = row
    # Positional (in `Record`'s field order): a replay makes one per recorded event.
    return Record(run_id, workflow, kind, event, key, attempt, value, None, error_type, error,
                  tuple(error_types.split(",")) if error_types else (), name, None, None,
                  from_epoch_us(wake_us), None, status_text, seq, generation or 0,
                  code_version)

