"""Public value types: run states, run snapshots and history events.

Plain data with no engine behind it, so the history checker and the command line can
use them without loading the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class RunState(StrEnum):
    """The state of a run; a `StrEnum`, so ``RunState.COMPLETED == "completed"``."""

    RUNNING = "running"
    SLEEPING = "sleeping"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED})
# States in which `Run.wait()` returns: finished, or waiting for a signal.
SETTLED = FINISHED | {RunState.SUSPENDED}


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A snapshot of one run's durable state.

    Attributes:
        run_id: The run's id.
        workflow: The workflow's registered name.
        state: The run's `RunState`.
        created_at: When the run was started (engine clock).
        updated_at: When anything last happened to it (engine clock).
        output: The workflow's return value, once completed.
        error: The traceback text of the failure, once failed (or cancelled).
        error_type: The qualified name of the exception that failed the run
            (``replay.Cancelled`` once cancelled).
        waiting_for: The key the run sleeps or is suspended on, else None.
        wake_at: When a waiting run wakes: the deadline of its sleep or retry back-off,
            or of its `Suspend`'s timeout.
        status_text: The run's status: the `status` of the `Suspend` it waits on,
            else the text of its newest `Note`, else None.
        parent_run_id: The parent's run id, for a child run started by `Child`.
        status_value: The value of the run's newest `Note` (kept once it finishes).
        generation: How many times the run continued as new (`ContinueAsNew`).
    """

    run_id: str
    workflow: str
    state: RunState
    created_at: datetime
    updated_at: datetime
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    waiting_for: str | None = None
    wake_at: datetime | None = None
    status_text: str | None = None
    parent_run_id: str | None = None
    status_value: Any = None
    generation: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    """One row of the `replay_events` view, with `value` decoded.

    Attributes:
        seq: Global order of the event in the database.
        run_id: The run it belongs to.
        workflow: The run's workflow name.
        key: The command's key (None for run-level events).
        kind: ``run``, ``step``, ``sleep``, ``suspend`` or ``signal``.
        event: What happened, e.g. ``completed``, ``retrying``, ``failed``.
        attempt: The attempt number, for step events.
        value: The recorded value (decoded), if any.
        value_json: The value rendered as JSON text, if any.
        error_type: Qualified name of the error's class, if any.
        error: The error message (a traceback for ``run/failed``), if any.
        recorded_at: When it was recorded, on the engine clock.
        duration_ms: How long the attempt took, for completed and failed attempts.
        wake_at: The deadline of a back-off, sleep or suspend timeout.
        generation: The run's generation it belongs to (see `ContinueAsNew`).
    """

    seq: int
    run_id: str
    workflow: str
    key: str | None
    kind: str
    event: str
    attempt: int | None
    value: Any
    value_json: str | None
    error_type: str | None
    error: str | None
    recorded_at: datetime
    duration_ms: float | None
    wake_at: datetime | None
    generation: int = 0


@dataclass(frozen=True, slots=True)
class RunUpdate:
    """One update a watcher gets (`Run.watch`, `Engine.watch`).

    Attributes:
        kind: ``"snapshot"`` (the run as it is now: first, and after falling behind),
            ``"event"`` (a recorded event, in `seq` order), ``"progress"`` (what a
            running step published with `StepContext.progress`; not recorded) or
            ``"missed"`` (an engine-wide watcher fell behind: `missed` updates were
            dropped; snapshots of the unfinished runs follow).
        run_id: The run (empty for ``"missed"``).
        info: The run's state after this update (None for ``"missed"``).
        seq: The `seq` of the newest event this update reflects: pass it as
            `after_seq` to watch again from here.
        event: The recorded event, for ``"event"``.
        progress: The published value, for ``"progress"``.
        key: The key of the step that published it, for ``"progress"``.
        missed: How many updates were dropped before this one because the watcher
            fell behind (a ``"snapshot"`` or ``"missed"``), else 0.
    """

    kind: str
    run_id: str
    info: RunInfo | None
    seq: int
    event: Event | None = None
    progress: Any = None
    key: str | None = None
    missed: int = 0


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What one `Engine.purge` deleted.

    Attributes:
        runs_purged: How many finished runs were deleted (child runs included).
        events_deleted: How many events were deleted, those of earlier generations
            of runs that continued as new included.
        generations_purged: How many earlier generations lost their events.
        archive: The Parquet file the deleted events were written to first, else None.
        cutoff: The moment on the engine clock before which runs had to finish (and
            later generations to start) to be deleted: now minus `older_than`.
    """

    runs_purged: int
    events_deleted: int
    generations_purged: int
    archive: str | None
    cutoff: datetime
