"""What the run machine decides, what it is given, and what the engine reports back.

Every decision carries the records to commit before acting on it (outcomes just
decided, early signals taken, renamed steps) and the warnings to log. The engine
commits them, then does what the decision says, and feeds the result back: an
attempt's `Outcome`, or a wake-up (a deadline passed, a signal came).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from replay._commands import Step
from replay._core._records import Encoded, Record
from replay._retry import Retry

# The current time, or a function that reads it: the engine passes its clock, read only
# by the decisions that need the time (a retry, a sleep, a suspend), not on every step.
Now = datetime | Callable[[], datetime]


def at(now: Now) -> datetime:
    """Return the time `now` gives."""
    return now if isinstance(now, datetime) else now()


@dataclass(frozen=True, slots=True)
class ChildStart:
    """A child run to start, committed with the parent's record of it (`take_children`)."""

    run_id: str
    workflow: str
    arguments: Encoded
    parent_key: str


@dataclass(slots=True)
class Decision:
    """Commit `records`, log `warnings`, then act as the subclass says."""

    records: tuple[Record, ...]
    warnings: tuple[str, ...]


@dataclass(slots=True)
class Attempt(Decision):
    """Make attempt `number` of `step`, then report its `Outcome`.

    With `start` set, the attempt is the run's first since the engine opened: commit
    `start` first and make the attempt alone, so a process death is charged to it.
    """

    step: Step
    number: int
    start: Record | None


@dataclass(slots=True)
class WaitUntil(Decision):
    """Park the run until `at` (a sleep or a retry back-off), then wake it."""

    key: str
    at: datetime


@dataclass(slots=True)
class WaitForSignal(Decision):
    """The run waits for a signal for `key`, until `deadline` (if any).

    Under the run's lock, which a signal holds until it is committed: commit the
    records, then `wake` the machine to decide again. Only a `settled` wait (the
    mailbox checked, the deadline ahead, the wait recorded) parks the run; the lock
    keeps every signal either in the mailbox by then or after the park, waking it.
    """

    key: str
    deadline: datetime | None
    settled: bool


@dataclass(slots=True)
class Attempts(Decision):
    """A group is under way: make the attempts in `start` alongside those under way.

    Report each attempt's outcome (`attempt_ended`); `wake` the machine (under the
    run's lock) at `wake_at` or when a signal or a cancellation is committed; and
    stop the attempts the machine cancels (`take_stopped`) after every decision.
    """

    start: tuple[Attempt, ...]
    wake_at: datetime | None


@dataclass(slots=True)
class Ended(Decision):
    """The run completed, failed or was cancelled: its last record is among `records`."""


Action = Attempt | Attempts | WaitUntil | WaitForSignal | Ended


@dataclass(frozen=True, slots=True)
class Later:
    """The replay of a long history paused: let other work run, then `go_on`.

    Only `RunMachine.start` and `RunMachine.go_on` return it, with nothing to commit
    yet: what the replay decided so far comes with the decision that ends it.
    """


LATER = Later()


@dataclass(slots=True)
class Outcome:
    """How an attempt ended: `value` is what it returned, or the exception it raised.

    Attributes:
        ok: Whether the step function returned.
        value: Its return value, or the exception (timeouts included).
        duration_ms: How long the attempt took.
    """

    ok: bool
    value: Any
    duration_ms: float | None


class Codec(Protocol):
    """How the machine turns values into recorded bytes and back (msgpack, in the engine)."""

    def encode(self, value: object, *, key: str) -> bytes:
        """Encode `value` (the value of `key`); raise `EncodingError` if it cannot be."""

    def decode(self, data: bytes) -> Any:
        """Decode recorded bytes into a fresh object; raise `EncodingError` if damaged."""

    def to_json(self, value: object) -> str | None:
        """Render `value` as JSON text for SQL (None if it has no rendering)."""


@dataclass(slots=True)
class Policy:
    """The engine-wide rules: retries, interruptions, the workflows a `Child` may start.

    `code_version` is the version of the code the engine runs, stamped on what it starts.
    """

    default_retry: Retry
    max_interruptions: int
    workflows: frozenset[str] = frozenset()
    code_version: str | None = None
