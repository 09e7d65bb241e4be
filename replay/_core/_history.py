"""A run's recorded history, folded into one record per key (pure: no I/O).

The event table is append-only; what a key "is" at any moment is the fold of its
events in `seq` order. `RunHistory.apply` is that fold, used both when a history is
loaded from the database and when the engine records a new event, so a run behaves the
same whether its memo was built in this process or reloaded after a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from replay._core._records import Record
from replay._errors import ChildFailed, StepFailed


@dataclass(frozen=True, slots=True)
class Failure:
    """A recorded step failure, enough to rebuild the same `StepFailed` on replay."""

    error_type: str
    error_types: tuple[str, ...]
    message: str
    attempts: int


@dataclass(slots=True, init=False)
class KeyRecord:
    """What one key's events say so far.

    Attributes:
        kind: The command kind first recorded for the key.
        name: The step name recorded with the key's latest attempt.
        attempts: The highest attempt number that has ended (with an outcome, or
            interrupted, or abandoned): the next attempt is numbered one more.
        charged: Failed attempts charged to the current retry budget (`resume`
            gives a failed step a fresh budget; interruptions and abandoned attempts
            are never charged).
        interruptions: Attempts of the current budget interrupted by a process death.
        done: Whether the key has a final outcome.
        value: The encoded value of a successful outcome.
        failure: The failure of a failed outcome.
        wake_at: A pending deadline (retry back-off).
        started: An attempt whose start is durable and whose end is not: found at
            open, it was interrupted by the process dying.
        renamed_to: Step names already recorded in a ``renamed`` event.
        timed_out: A `Suspend` whose timeout fired before its signal arrived.
        status_text: The `Suspend`'s status, as recorded.
        cancelled: The command was cancelled before its outcome (a lost race, a
            cancelled run): it has none.
        thrown: The encoded reason when the run's cancellation was thrown in here.
        detail: A group's encoded members, as recorded when it started.
        failed_member: The key of the member whose failure failed a group.
    """

    kind: str
    name: str | None = None
    attempts: int = 0
    charged: int = 0
    interruptions: int = 0
    done: bool = False
    value: bytes | None = None
    failure: Failure | None = None
    wake_at: datetime | None = None
    started: int | None = None
    renamed_to: frozenset[str] = frozenset()
    timed_out: bool = False
    status_text: str | None = None
    cancelled: bool = False
    thrown: bytes | None = None
    detail: bytes | None = None
    failed_member: str | None = None

    def __init__(self, kind: str) -> None:
        # Written out: every replay makes one per recorded key, and the generated
        # `__init__` (seventeen keyword defaults, a new set) costs twice as much.
        self.kind = kind
        self.name = self.value = self.failure = self.wake_at = self.started = None
        self.attempts = self.charged = self.interruptions = 0
        self.done = self.timed_out = self.cancelled = False
        self.renamed_to = _NO_NAMES
        self.status_text = self.thrown = self.detail = self.failed_member = None


_NO_NAMES: frozenset[str] = frozenset()
# Events that do not make their key the run's newest (`last_key`, `unhandled_failure`).
_NOT_NEWEST = frozenset(("renamed", "waiting", "running"))
# Kinds whose final failure, if nothing follows it, failed the run (`resume` voids it).
_FAILABLE = frozenset(("step", "group", "child"))


class RunHistory:
    """The per-key memo of one run, built by folding its records in order."""

    __slots__ = ("arguments", "cancel_pending", "cancel_reason", "code_version", "generation",
                 "keys", "last_step_key", "last_was_step_failure", "signal_seqs", "signals",
                 "started_with")

    def __init__(self, records: list[Record] | None = None) -> None:
        self.keys: dict[str, KeyRecord] = {}
        # The mailbox: signal payloads (encoded) by key. Only `Suspend` reads it, so a
        # signal never becomes the outcome of a step or sleep with the same key.
        self.signals: dict[str, bytes | None] = {}
        self.signal_seqs: dict[str, int] = {}  # when each signal was recorded
        # The run's cancellation: its encoded reason once requested, and whether it
        # still waits to be thrown in at the next command the run waits on.
        self.cancel_reason: bytes | None = None
        self.cancel_pending = False
        # Whether the newest key-level event is an unhandled step failure: `resume`
        # gives that step a fresh budget instead of replaying the failure.
        self.last_step_key: str | None = None
        self.last_was_step_failure = False
        # The current generation (see `ContinueAsNew`), its encoded arguments when it is
        # not the first, and the code version the run last ran under.
        self.generation = 0
        self.arguments: bytes | None = None
        self.started_with: bytes | None = None  # the encoded input of the first generation
        self.code_version: str | None = None
        apply = self.apply
        for record in records or ():
            apply(record)

    def get(self, key: str) -> KeyRecord | None:
        """Return the key's record, or None if nothing is recorded for it."""
        return self.keys.get(key)

    def input(self) -> bytes | None:
        """Return the encoded input of the run's current generation, if recorded.

        That is the arguments of its newest ``run/continued`` record, else those of its
        ``run/started`` record.
        """
        return self.arguments if self.arguments is not None else self.started_with

    def first_outcome(self, key: str | None, attempt: int | None, name: str | None,
                      value: bytes | None) -> bool:
        """Fold a ``step/completed`` record given by its fields, if it is its key's first.

        A replay's usual record, a step's outcome with nothing before it, folded as
        `apply` would fold it, in a few lines. Returns False (nothing folded) when the
        key has records already: then `apply` the record.
        """
        if key is None or key in self.keys:
            return False
        first = self.keys[key] = KeyRecord("step")
        first.attempts, first.name = attempt or 0, name or None
        first.done, first.value = True, value
        self.last_step_key, self.last_was_step_failure = key, False
        return True

    def apply(self, record: Record) -> None:
        """Fold one record into the memo."""
        # Every replay folds every record of the run: read each field once.
        kind, event = record.kind, record.event
        if event == "completed" and kind == "step" and self.first_outcome(
                record.key, record.attempt, record.name, record.value):
            return
        key = record.key
        if event == "late":
            return  # a cancelled attempt's outcome, for the record only
        if kind == "run":
            # `resume` names the step whose failure it voids in the internal `name`
            # column: run-level events have no key.
            if event == "started":
                self.started_with = record.value
            elif event == "resumed" and record.name is not None:
                self._void_failure(record.name)
            elif event == "cancel_requested" and self.cancel_reason is None:
                self.cancel_reason, self.cancel_pending = record.value, True
            elif event == "continued":
                self._next_generation(record)
            if record.code_version is not None:
                self.code_version = record.code_version
            return
        if key is None:
            return
        if kind == "signal":
            self.signals[key] = record.value
            self.signal_seqs[key] = record.seq
            return
        entry = self.keys.get(key)
        if entry is None:
            entry = self.keys[key] = KeyRecord(kind)
        if event not in _NOT_NEWEST:
            self.last_step_key = key
            self.last_was_step_failure = event == "failed" and kind in _FAILABLE
        if event == "cancelled":
            # A cancelled command has no outcome: it starts afresh if its group runs
            # again after a resume. Where the run's cancellation was thrown in, the
            # `Cancelled` is its outcome.
            entry.cancelled, entry.wake_at, entry.started = True, None, None
            entry.attempts = max(entry.attempts, record.attempt or 0)
            if record.value is not None:
                entry.done, entry.thrown, self.cancel_pending = True, record.value, False
            return
        entry.cancelled = False
        if kind == "step":
            self._apply_step(entry, record, event)
        elif kind == "note":
            entry.done, entry.value = True, record.value
        elif kind in ("group", "child"):
            self._apply_group(entry, record)
        elif kind == "sleep":
            entry.wake_at = record.wake_at or entry.wake_at
            entry.done = event == "fired"
        elif kind == "suspend":
            entry.wake_at = record.wake_at if event == "suspended" else entry.wake_at
            entry.status_text = record.status_text or entry.status_text
            entry.timed_out = entry.done = event == "timed_out"

    def awaits(self, key: str) -> bool:
        """Whether `key` is recorded as waiting for an outcome from outside the run.

        That is a `Suspend` no signal answered yet, or a `Child` that has not ended.
        """
        entry = self.keys.get(key)
        if entry is None or entry.done or entry.cancelled:
            return False
        return entry.kind == "child" or (entry.kind == "suspend" and key not in self.signals)

    def signal_awaited(self) -> bool:
        """Whether a signal in the mailbox answers a `Suspend` recorded as waiting."""
        return any(self.keys.get(key) is not None and not self.keys[key].done
                   and self.keys[key].kind == "suspend" for key in self.signals)

    def children(self) -> list[tuple[str, bytes | None]]:
        """Return ``(key, encoded details)`` of every child started that has not ended."""
        return [(key, entry.detail) for key, entry in self.keys.items()
                if entry.kind == "child" and not entry.done and not entry.cancelled]

    def undelivered(self) -> int:
        """Count signals in the mailbox whose key the run has not suspended on yet."""
        return sum(1 for key in self.signals if key not in self.keys)

    def last_key(self) -> str | None:
        """Return the key of the newest step, sleep or suspend record: where it stopped."""
        return self.last_step_key

    def unhandled_failure(self) -> str | None:
        """Return the key of the step failure that ended the run, if one did.

        That is a step whose final failure is the newest key-level record: nothing was
        recorded after it, so the workflow did not handle it.
        """
        return self.last_step_key if self.last_was_step_failure else None

    @staticmethod
    def _apply_step(entry: KeyRecord, record: Record, event: str) -> None:
        if event == "renamed":
            if record.name is not None:
                entry.renamed_to |= {record.name}
            return
        attempt = record.attempt or 0
        if event == "started":
            entry.started = attempt
            return
        if entry.started == attempt:
            entry.started = None
        if attempt > entry.attempts:
            entry.attempts = attempt
        if event in ("abandoned", "interrupted"):
            # Neither charges the retry budget: a clean stop costs nothing, and a
            # process death counts against its own budget (`max_interruptions`).
            entry.interruptions += event == "interrupted"
            entry.wake_at = None
            return
        entry.name = record.name or entry.name
        entry.wake_at = record.wake_at if event == "retrying" else None
        if event == "completed":
            entry.done, entry.value = True, record.value
        elif event == "retrying":
            entry.charged += 1
        elif event == "failed":
            entry.done = True
            entry.failure = Failure(
                error_type=record.error_type or "builtins.Exception",
                error_types=record.error_types or (record.error_type or "",),
                message=record.error or "",
                attempts=attempt,
            )

    @staticmethod
    def _apply_group(entry: KeyRecord, record: Record) -> None:
        """Fold a group's or a child's record (started, then completed or failed)."""
        if record.event == "started":
            entry.detail, entry.name = record.value, record.name
        elif record.event in ("completed", "failed"):
            entry.done, entry.value = True, record.value
            if record.event == "failed" and record.kind == "group":
                entry.failed_member = record.name
            if record.event == "failed":
                entry.failure = Failure(
                    error_type=record.error_type or "builtins.Exception",
                    error_types=record.error_types or (record.error_type or "",),
                    message=record.error or "", attempts=record.attempt or 0)

    def _next_generation(self, record: Record) -> None:
        """Start a new generation: an empty memo, and the mailbox's signals not taken.

        A signal whose key the ending generation used was taken (or refused) there; any
        other waits in the mailbox for a `Suspend` of a later generation.
        """
        self.signals = {key: value for key, value in self.signals.items()
                        if key not in self.keys}
        self.signal_seqs = {key: seq for key, seq in self.signal_seqs.items()
                            if key in self.signals}
        self.keys = {}
        self.last_step_key, self.last_was_step_failure = None, False
        self.generation, self.arguments = record.generation, record.value

    def _void_failure(self, key: str) -> None:
        entry = self.keys.get(key)
        if entry is not None and entry.failure is not None:
            entry.done, entry.failure = False, None
            entry.charged = entry.interruptions = 0
            if entry.failed_member is not None:  # a group: its member runs again too
                self._void_failure(entry.failed_member)
                entry.failed_member = None
        self.last_was_step_failure = False


# Where a stored row keeps what `RunHistory.first_outcome` folds (see `fold_rows`): the
# positions of its key, kind, event, attempt, name and value.
OutcomeFields = tuple[int, int, int, int, int, int]


def fold_rows(rows: Iterable[tuple[Any, ...]], at: OutcomeFields,
              record: Callable[[tuple[Any, ...]], Record]) -> RunHistory:
    """Fold a run's rows, as a store reads them, into its memo.

    A step's first outcome (nearly every row of a replayed run) is folded from its
    fields, found where `at` says; any other row is made a record by `record` and
    applied. The memo is the one `RunHistory([record(row) for row in rows])` makes, at
    about half the cost per row, since no record is made for most rows.
    """
    history = RunHistory()
    first_outcome, apply = history.first_outcome, history.apply
    key_at, kind_at, event_at, attempt_at, name_at, value_at = at
    for row in rows:
        if not (row[event_at] == "completed" and row[kind_at] == "step" and first_outcome(
                row[key_at], row[attempt_at], row[name_at], row[value_at])):
            apply(record(row))
    return history


def step_failed(run_id: str, key: str, failure: Failure) -> StepFailed:
    """Return the `StepFailed` a recorded step failure throws into the workflow."""
    return StepFailed(run_id, key, failure.error_type, failure.message, failure.attempts,
                      failure.error_types)


def child_run_id(parent_run_id: str, key: str, generation: int) -> str:
    """Return the run id of the child a parent starts at `key` in its `generation`.

    ``f"{parent}/{key}"``; after the parent continued as new, ``f"{parent}/{key}@{n}"``:
    each generation's child at a key is a run of its own.
    """
    child = f"{parent_run_id}/{key}"
    return child if generation == 0 else f"{child}@{generation}"


def child_failed(run_id: str, key: str, failure: Failure, generation: int = 0) -> ChildFailed:
    """Return the `ChildFailed` a recorded child failure throws into the parent."""
    return ChildFailed(run_id, key, failure.error_type, failure.message,
                       child_run_id(run_id, key, generation), failure.error_types)


def outcome_failure(run_id: str, key: str, record: KeyRecord, generation: int = 0
                    ) -> StepFailed:
    """Return the failure a recorded step or child failure throws into the workflow."""
    assert record.failure is not None
    if record.kind == "child":
        return child_failed(run_id, key, record.failure, generation)
    return step_failed(run_id, key, record.failure)
