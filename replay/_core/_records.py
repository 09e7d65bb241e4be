"""The event vocabulary: every ``(kind, event)`` replay records, made in one place.

The event table is append-only. Each record says what happened to a run (``run``),
one of its commands (``step``, ``sleep``, ``suspend``) or its mailbox (``signal``);
records that change what the run as a whole is doing carry its new `run_state`.
Values arrive here already encoded (the core has no codec): ``value`` holds the
msgpack bytes and ``value_json`` their JSON rendering.

| kind    | events                                                                |
|---------|-----------------------------------------------------------------------|
| run     | started, completed, failed, resumed, cancel_requested, cancelled,     |
|         | continued (a new generation), code_changed                            |
| step    | started, completed, retrying, failed, abandoned, interrupted, renamed, |
|         | cancelled, late                                                       |
| sleep   | scheduled, fired, cancelled                                           |
| suspend | suspended, signalled (an early signal taken), timed_out, cancelled    |
| signal  | signalled                                                             |
| note    | recorded                                                              |
| group   | started, completed, failed, cancelled, waiting, running               |
| child   | started, waiting, completed, failed, cancelled                        |

A child run's ``run/started`` names its parent: the parent's run id in the internal
`name` column and the parent's key for it in `key`.

Every record carries its run's `generation` (0 until the first ``run/continued``,
which is the first record of the next generation), stamped as it is committed.
``run/started`` and ``run/code_changed`` carry the engine's `code_version`.

A command inside a group records no run state of its own (other members may be under
way): the group's ``waiting`` record parks the run, its ``running`` record wakes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from replay._types import RunState

RUNNING, SLEEPING, SUSPENDED = RunState.RUNNING, RunState.SLEEPING, RunState.SUSPENDED


@dataclass(slots=True)
class Record:
    """An event as the engine writes and folds it (internal columns included).

    `value` holds the encoded bytes: decoding happens when a value is sent into a
    generator, so every execution gets a fresh object, exactly as a replay would.
    """

    run_id: str
    workflow: str
    kind: str
    event: str
    key: str | None = None
    attempt: int | None = None
    value: bytes | None = None
    value_json: str | None = None
    error_type: str | None = None
    error: str | None = None
    error_types: tuple[str, ...] = ()
    name: str | None = None
    recorded_at: datetime | None = None
    duration_ms: float | None = None
    wake_at: datetime | None = None
    run_state: str | None = None
    status_text: str | None = None
    seq: int = 0
    generation: int = 0
    code_version: str | None = None


def started_record(records: Iterable[Record]) -> Record | None:
    """Return a run's ``run/started`` record (its workflow, input and start), if any."""
    return next((r for r in records if r.kind == "run" and r.event == "started"), None)


@dataclass(slots=True)
class Encoded:
    """A value as it is recorded: msgpack bytes and their JSON rendering."""

    data: bytes
    json: str | None


@dataclass(slots=True)
class ErrorText:
    """An error as it is recorded: its class, its classes for `Retry.on`, its text."""

    error_type: str
    error_types: tuple[str, ...]
    message: str


@dataclass(frozen=True, slots=True)
class Run:
    """Makes the records of one run (its id and workflow name are on every record)."""

    run_id: str
    workflow: str

    # -- the run as a whole --

    def started(self, arguments: Encoded, parent: tuple[str, str] | None = None,
                deadline: datetime | None = None, code_version: str | None = None) -> Record:
        """The run began with these arguments (as `parent`'s ``(run_id, key)`` child).

        `deadline`: when the run is cancelled if it has not finished (`wake_at`);
        `code_version`: the version of the code that started it.
        """
        record = self._record("run", "started", value=arguments, run_state=RUNNING,
                              wake_at=deadline)
        record.code_version = code_version
        if parent is not None:
            record.name, record.key = parent
        return record

    def continued(self, arguments: Encoded, generation: int) -> Record:
        """The workflow returned `ContinueAsNew`: generation `generation` begins afresh."""
        record = self._record("run", "continued", value=arguments, run_state=RUNNING)
        record.generation = generation
        return record

    def code_changed(self, recorded: str | None, current: str, versions: Encoded) -> Record:
        """An execution runs under another code version than the run's last one.

        `versions`: ``{"from": recorded, "to": current}``, for people reading the event.
        """
        record = self._record("run", "code_changed", name=recorded, value=versions)
        record.code_version = current
        return record

    def note(self, key: str, value: Encoded, text: str) -> Record:
        """The workflow noted its status: `value` (structured) and `text`."""
        return self._record("note", "recorded", key=key, value=value, status_text=text)

    def completed(self, output: Encoded) -> Record:
        """The workflow returned `output`."""
        return self._record("run", "completed", value=output, run_state=RunState.COMPLETED)

    def failed(self, error_type: str, traceback: str, message: Encoded) -> Record:
        """The workflow raised (or broke a rule of replay)."""
        return self._record("run", "failed", value=message, error_type=error_type,
                            error=traceback, run_state=RunState.FAILED)

    def resumed(self, voided: str | None, detail: Encoded, state: RunState | None) -> Record:
        """`resume`: `voided` names the step whose failure runs again (internal `name`)."""
        return self._record("run", "resumed", value=detail, name=voided, run_state=state)

    def cancel_requested(self, reason: Encoded, state: RunState | None) -> Record:
        """`cancel`: `Cancelled` is thrown in at the command the run waits on next."""
        return self._record("run", "cancel_requested", value=reason, run_state=state)

    def cancelled(self, reason: Encoded, error: str) -> Record:
        """`Cancelled` escaped the workflow, or the run was terminated."""
        return self._record("run", "cancelled", value=reason, error_type="replay.Cancelled",
                            error=error, run_state=RunState.CANCELLED)

    # -- steps --

    def step_started(self, key: str, attempt: int, name: str, state: RunState | None) -> Record:
        """An attempt begins, recorded first so that a process death is charged to it."""
        return self._record("step", "started", key=key, attempt=attempt, name=name,
                            run_state=state)

    def step_completed(self, key: str, attempt: int, name: str, value: Encoded,
                       duration_ms: float | None, state: RunState | None) -> Record:
        """An attempt returned `value`: the step's outcome."""
        return self._record("step", "completed", key=key, attempt=attempt, name=name,
                            value=value, duration_ms=duration_ms, run_state=state)

    def step_retrying(self, key: str, attempt: int, name: str, error: ErrorText,
                      duration_ms: float | None, wake_at: datetime,
                      state: RunState | None = SLEEPING) -> Record:
        """An attempt failed and the next one waits out its back-off until `wake_at`."""
        return self._failure("retrying", key, attempt, name, error, duration_ms,
                             wake_at=wake_at, state=state)

    def step_failed(self, key: str, attempt: int, name: str, error: ErrorText,
                    duration_ms: float | None, state: RunState | None) -> Record:
        """The step failed for good: `StepFailed` is thrown into the workflow."""
        return self._failure("failed", key, attempt, name, error, duration_ms,
                             wake_at=None, state=state)

    def step_abandoned(self, key: str, attempt: int, name: str) -> Record:
        """The engine stopped while the attempt ran: it runs again, charged nothing."""
        return self._record("step", "abandoned", key=key, attempt=attempt, name=name)

    def step_cancelled(self, key: str, attempt: int, name: str, why: str,
                       reason: Encoded | None) -> Record:
        """The attempt under way (or due) was cancelled: a race lost, a run cancelled.

        With `reason`, the run's cancellation was thrown into the workflow here, and
        is again on every replay.
        """
        return self._record("step", "cancelled", key=key, attempt=attempt, name=name,
                            error=why, value=reason)

    def step_interrupted(self, key: str, attempt: int, name: str, count: int,
                         limit: int, error_type: str) -> Record:
        """The process died while the attempt ran (found at the next open)."""
        return self._record(
            "step", "interrupted", key=key, attempt=attempt, name=name, error_type=error_type,
            error=f"the process died while attempt {attempt} ran "
                  f"(interruption {count} of at most {limit})")

    def step_late(self, key: str, attempt: int, name: str, value: Encoded | None,
                  error: ErrorText | None, duration_ms: float | None) -> Record:
        """A cancelled sync attempt's thread finished after all: recorded, never used."""
        if error is not None:
            return Record(self.run_id, self.workflow, "step", "late", key=key,
                          attempt=attempt, error_type=error.error_type, error=error.message,
                          error_types=error.error_types, name=name, duration_ms=duration_ms)
        return self._record("step", "late", key=key, attempt=attempt, name=name,
                            value=value, duration_ms=duration_ms)

    def step_renamed(self, key: str, recorded: str, current: str, names: Encoded,
                     message: str) -> Record:
        """A recorded step now calls a function of another name (its outcome is kept)."""
        return self._record("step", "renamed", key=key, value=names, error=message,
                            name=current)

    # -- sleeps and suspends --

    def sleep_scheduled(self, key: str, wake_at: datetime,
                        state: RunState | None = SLEEPING) -> Record:
        """The run sleeps until `wake_at`."""
        return self._record("sleep", "scheduled", key=key, wake_at=wake_at, run_state=state)

    def sleep_fired(self, key: str, wake_at: datetime) -> Record:
        """The sleep's deadline passed: the run goes on."""
        return self._record("sleep", "fired", key=key, wake_at=wake_at, run_state=RUNNING)

    def suspended(self, key: str, deadline: datetime | None, status: str | None,
                  state: RunState | None = SUSPENDED) -> Record:
        """The run waits for a signal for `key` (until `deadline`, if any)."""
        return self._record("suspend", "suspended", key=key, wake_at=deadline,
                            status_text=status, run_state=state)

    def signal_taken(self, key: str, status: str | None) -> Record:
        """A `Suspend` found its signal already in the mailbox (it came early)."""
        return self._record("suspend", "signalled", key=key, status_text=status)

    def suspend_timed_out(self, key: str, deadline: datetime, error: ErrorText,
                          state: RunState | None = RUNNING) -> Record:
        """No signal came for `key` before its deadline: `SuspendTimeout` is thrown in."""
        return self._record("suspend", "timed_out", key=key, wake_at=deadline,
                            error_type=error.error_type, error=error.message,
                            run_state=state)

    def waiting_cancelled(self, kind: str, key: str, why: str,
                          reason: Encoded | None) -> Record:
        """A sleep or suspend was cancelled (a later signal for a suspend is rejected)."""
        return self._record(kind, "cancelled", key=key, error=why, value=reason)

    # -- groups --

    def group_started(self, key: str, group: str, members: Encoded) -> Record:
        """A group (`group`: all, gather or race) began with these members' keys."""
        return self._record("group", "started", key=key, name=group, value=members)

    def group_completed(self, key: str, group: str, detail: Encoded,
                        state: RunState | None) -> Record:
        """The group was decided: every member done (a race: its winner)."""
        return self._record("group", "completed", key=key, name=group, value=detail,
                            run_state=state)

    def group_failed(self, key: str, member: str, detail: Encoded, error: ErrorText,
                     attempts: int | None, state: RunState | None) -> Record:
        """`member`'s failure decided the group (fail-fast, or a race's winner failed).

        The member's key goes in the internal `name` column, for `resume` to void.
        """
        return Record(self.run_id, self.workflow, "group", "failed", key=key,
                      attempt=attempts, value=detail.data, value_json=detail.json,
                      error_type=error.error_type, error=error.message,
                      error_types=error.error_types, name=member,
                      run_state=None if state is None else state.value)

    def group_cancelled(self, key: str, why: str, reason: Encoded | None) -> Record:
        """The group was cancelled with its members under way (see `step_cancelled`)."""
        return self._record("group", "cancelled", key=key, error=why, value=reason)

    def group_waiting(self, key: str, state: RunState, wake_at: datetime | None,
                      status: str | None) -> Record:
        """Nothing in the group is under way: the run parks until `wake_at` or a signal."""
        return self._record("group", "waiting", key=key, wake_at=wake_at,
                            status_text=status, run_state=state)

    def group_running(self, key: str) -> Record:
        """The parked group has work under way again."""
        return self._record("group", "running", key=key, run_state=RUNNING)

    # -- child runs --

    def child_started(self, key: str, workflow: str, detail: Encoded,
                      state: RunState | None) -> Record:
        """A child run of `workflow` began (committed with its own ``run/started``)."""
        return self._record("child", "started", key=key, name=workflow, value=detail,
                            run_state=state)

    def child_waiting(self, key: str) -> Record:
        """The run parks on a child already started (after a `resume`)."""
        return self._record("child", "waiting", key=key, run_state=SUSPENDED)

    def child_completed(self, key: str, output: bytes, output_json: str | None,
                        state: RunState | None) -> Record:
        """The child run completed (committed with its own last record)."""
        return Record(self.run_id, self.workflow, "child", "completed", key=key,
                      value=output, value_json=output_json,
                      run_state=None if state is None else state.value)

    def child_failed(self, key: str, child_run_id: str, error: ErrorText,
                     state: RunState | None) -> Record:
        """The child run failed or was cancelled (committed with its own last record).

        The child's run id goes in the internal `name` column.
        """
        return Record(self.run_id, self.workflow, "child", "failed", key=key,
                      error_type=error.error_type, error=error.message,
                      error_types=error.error_types, name=child_run_id,
                      run_state=None if state is None else state.value)

    # -- the mailbox --

    def signalled(self, key: str, payload: Encoded, state: RunState | None) -> Record:
        """A signal for `key` arrived (`state`: it woke the run)."""
        return self._record("signal", "signalled", key=key, value=payload, run_state=state)

    def _failure(self, event: str, key: str, attempt: int, name: str, error: ErrorText,
                 duration_ms: float | None, *, wake_at: datetime | None,
                 state: RunState | None) -> Record:
        return Record(self.run_id, self.workflow, "step", event, key=key, attempt=attempt,
                      error_type=error.error_type, error=error.message,
                      error_types=error.error_types, name=name, duration_ms=duration_ms,
                      wake_at=wake_at, run_state=state)

    def _record(self, kind: str, event: str, *, key: str | None = None,
                attempt: int | None = None, value: Encoded | None = None,
                name: str | None = None, error_type: str | None = None,
                error: str | None = None, duration_ms: float | None = None,
                wake_at: datetime | None = None, status_text: str | None = None,
                run_state: RunState | None = None) -> Record:
        return Record(
            self.run_id, self.workflow, kind, event, key=key, attempt=attempt,
            value=None if value is None else value.data,
            value_json=None if value is None else value.json,
            error_type=error_type, error=error, name=name, duration_ms=duration_ms,
            wake_at=wake_at, status_text=status_text,
            run_state=None if run_state is None else run_state.value)
