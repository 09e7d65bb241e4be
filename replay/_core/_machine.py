"""The run machine: everything a workflow means, decided without I/O.

One `RunMachine` is one execution of one run. It takes the run's recorded history,
the current time and the outcomes the engine reports, and returns complete decisions
(`_decisions`): make attempt N of this step, wait until T, wait for a signal on K,
the run ended. Each decision carries the records to commit before acting on it. The
engine performs decisions and reports back; it decides nothing about the workflow.

What happens when the workflow yields a command:

- **Recorded outcome** (a completed or failed step, a fired sleep, a signal in the
  mailbox, a timed-out suspend): the interpreter answers it at once (`_interpreter`).
- **Step**: an attempt whose start is recorded with no end died with the process: it is
  recorded as ``interrupted`` and charged to `max_interruptions`, or, at the limit,
  the step fails with `StepInterrupted`. A pending back-off is waited out. Otherwise
  the next attempt is made (`Attempt`); the run's first attempt since the engine
  opened is marked (its start recorded first). A failed attempt is retried after its
  back-off while its `Retry` allows, else `StepFailed` is thrown in.
- **Sleep**, **Suspend**, **Child**: the run parks on it (`_waits`, which also holds
  the command a parked run waits on, a back-off's step included).
- **Group**: hosted by `_group_host` until it is decided.

How the execution ends (completed, continued as new, failed, cancelled) is recorded
by `_endings`. `_resume.resumed_record` decides what `Engine.resume` records.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from replay._commands import Sleep, Step, Suspend
from replay._core._decisions import (
    LATER,
    Action,
    Attempt,
    ChildStart,
    Codec,
    Ended,
    Later,
    Now,
    Outcome,
    Policy,
    WaitUntil,
    at,
)
from replay._core._endings import (
    call_workflow,
    internal_failure,
    record_completion,
    record_continuation,
    record_failure,
    unregistered,
)
from replay._core._group_host import GroupHost
from replay._core._history import KeyRecord, RunHistory
from replay._core._interpreter import Fail, Finish, Interpreter, Paused, Pending, Result
from replay._core._recorder import CANCELLED, Recorder, error_text
from replay._core._records import Encoded, Record, Run
from replay._core._waits import Waits
from replay._errors import Cancelled, EncodingError, error_types_of
from replay._flow import ContinueAsNew, Note
from replay._parallel import GROUP_TYPES, Child
from replay._types import RunState

# Makes an attempt of a sync pure step: (step, attempt number) -> how it ended.
Compute = Callable[[Step, int], Outcome]


class RunMachine:
    """Decides one execution of one run.

    Args:
        run: Makes the run's records (its id and workflow name).
        function: The workflow function.
        arguments: The run's encoded input.
        history: The run's memo, folded from its records; the machine owns it now.
        codec: Encodes and decodes values.
        policy: The engine-wide retry and interruption rules.
        state: The run's current state.
        mark_first_attempt: Whether the next attempt is the run's first since the
            engine opened (its start is then recorded first).
        frontier: In strict replay, where the last execution stopped (see `Interpreter`).
    """

    __slots__ = (
        "_arguments", "_codec", "_frontier", "_function", "_groups", "_history",
        "_interpreter", "_policy",
        "_rec", "_waits", "run",
    )

    def __init__(self, run: Run, function: Callable[..., Any], arguments: bytes,
                 history: RunHistory, codec: Codec, policy: Policy, *, state: RunState,
                 mark_first_attempt: bool, frontier: str | None = None) -> None:
        self.run = run
        self._function = function
        self._arguments = arguments
        self._history = history
        self._codec = codec
        self._policy = policy
        self._rec = Recorder(run, history, codec, state, policy.max_interruptions,
                             mark_first_attempt)
        self._frontier = frontier
        self._interpreter: Interpreter | None = None
        self._waits = Waits(self._rec)  # the command a parked run waits on
        self._groups = GroupHost(self._rec, lambda attempt, outcome, now: self._settle(
            attempt, outcome, now, grouped=True))

    @property
    def waits_for_signal(self) -> bool:
        """Whether the run waits on a `Suspend` (`wake` must then run under its lock)."""
        if self._groups.group is not None:
            return self._groups.group.waits_for_signal()
        pending = self._waits.pending
        return pending is not None and isinstance(pending.command, Suspend)

    @property
    def cancel_pending(self) -> bool:
        """Whether a committed cancellation waits to be thrown in (see `cancel`)."""
        return self._history.cancel_pending

    @property
    def involves_children(self) -> bool:
        """Whether the decision's records start or stop child runs (`take_children`)."""
        return bool(self._rec.children or self._rec.child_stops)

    def take_children(self) -> list[ChildStart]:
        """Return (and forget) the child runs to start with the decision's records."""
        children, self._rec.children = self._rec.children, []
        return children

    def take_child_stops(self) -> list[str]:
        """Return (and forget) the ids of child runs to cancel once the records commit."""
        stops, self._rec.child_stops = self._rec.child_stops, []
        return stops

    def take_stopped(self) -> list[Attempt]:
        """Return (and forget) the attempts under way that the machine cancelled."""
        stopped, self._rec.stopped = self._rec.stopped, []
        return stopped

    @property
    def history(self) -> RunHistory:
        """The run's memo, as this execution has recorded it so far."""
        return self._history

    # -- inputs --

    def start(self, now: Now) -> Action | Later:
        """Create the generator and run it to its first decision.

        A long history's replay pauses every so often: `Later` asks the engine to let
        other work run, then call `go_on`.
        """
        version = self._policy.code_version
        if version is not None and version != self._history.code_version:
            recorded = self._history.code_version
            versions = self._rec.encoded({"from": recorded, "to": version}, "code_version")
            self._rec.emit(self.run.code_changed(recorded, version, versions))
        generator = call_workflow(self._function, self._arguments, self._codec.decode,
                                  self.run.workflow)
        if isinstance(generator, Fail):
            return record_failure(self._rec, generator)
        self._interpreter = Interpreter(self.run.run_id, self.run.workflow, generator,
                                        self._history, self._codec.decode, self._frontier)
        return self._replayed(self._interpreter.start(), now)

    def go_on(self, now: Now) -> Action | Later:
        """Go on with a replay that returned `Later` (it may do so again)."""
        return self._replayed(self._resume().go_on(), now)

    def attempt_ended(self, attempt: Attempt, outcome: Outcome, now: Now,
                      compute: Compute | None = None, more: int = 0) -> Action:
        """Record how `attempt` ended and decide what comes next.

        `compute`: makes an attempt of a sync pure step (see `Step`) and returns its
        outcome. When `attempt` was of a pure step, up to `more` pure attempts that
        follow are made here, one after the other, their records carried into the
        decision returned: after a pure attempt nothing needs to be durable before
        the next, and a pure step's call is a quick computation.
        """
        action = self._attempt_ended(attempt, outcome, now)
        if compute is None or not attempt.step.pure:
            return action
        while more and isinstance(action, Attempt) and action.start is None:
            step = action.step
            if not step.pure or step.is_async or self._groups.group is not None:
                break
            more -= 1
            self._rec.put_back(action.records, action.warnings)
            action = self._attempt_ended(action, compute(step, action.number), now)
        return action

    def _attempt_ended(self, attempt: Attempt, outcome: Outcome, now: Now) -> Action:
        if self._groups.group is not None:
            return self._grouped(self._groups.attempt_ended(attempt, outcome, now), now)
        settled = self._settle(attempt, outcome, now, grouped=False)
        if isinstance(settled, Encoded):
            return self._decide(self._resume().send(self._codec.decode(settled.data)), now)
        if isinstance(settled, datetime):
            return self._waits.wait(WaitUntil, attempt.step, key=attempt.step.key, at=settled)
        return self._decide(self._resume().throw(settled), now)

    def _settle(self, attempt: Attempt, outcome: Outcome, now: Now,
                grouped: bool) -> Encoded | datetime | BaseException:
        """Record how an attempt ended: its value, its back-off's end, or its failure."""
        step, number = attempt.step, attempt.number
        if outcome.ok:
            try:
                value = self._rec.encoded(outcome.value, step.key)
            except EncodingError as unencodable:
                # An unencodable value is a bug in the step, not bad luck: not retried.
                return self._rec.step_failure(step, number, unencodable, outcome.duration_ms)
            self._rec.emit(self.run.step_completed(step.key, number, step.name, value,
                                               outcome.duration_ms, self._rec.running_unless()))
            return value
        record = self._history.get(step.key)
        used = (record.charged if record else 0) + 1
        policy = step.retry or self._policy.default_retry
        error: BaseException = outcome.value
        if used < policy.attempts and policy.retries(error_types_of(error)):
            delay = timedelta(seconds=policy.delay(self.run.run_id, step.key, used))
            wake_at = at(now) + delay
            self._rec.emit(self.run.step_retrying(
                step.key, number, step.name, error_text(error), outcome.duration_ms, wake_at,
                state=None if grouped else RunState.SLEEPING))
            return wake_at
        return self._rec.step_failure(step, number, error, outcome.duration_ms)

    def late_record(self, attempt: Attempt, outcome: Outcome) -> Record:
        """Return the record of a cancelled attempt's outcome that came after all."""
        return self._rec.late(attempt, outcome)

    def attempt_abandoned(self, attempt: Attempt) -> Record:
        """Return the record of an attempt the engine stopped: it runs again, uncharged."""
        step = attempt.step
        return self.run.step_abandoned(step.key, attempt.number, step.name)

    def wake(self, now: Now) -> Action:
        """Decide again about the command the run waits on (a deadline, a signal).

        Only here is a `Suspend` decided (taken from the mailbox, recorded as waited
        for, or timed out): the engine calls `wake` for a suspend under the run's lock,
        which a signal holds until it is committed, so a signal is never missed and a
        signal and a timeout never both win.
        """
        if self._history.cancel_pending:
            return self.cancel(now, None)
        if self._groups.group is not None:
            return self._grouped(self._groups.wake(now), now)
        woken = self._waits.wake(self._resume(), now)
        return self._decide(woken, now) if isinstance(woken, Result) else woken

    def cancel(self, now: Now, attempt: Attempt | None) -> Action:
        """Throw the run's committed cancellation in at the command it waits on.

        `attempt` is the step attempt under way outside any group, if any (the engine
        stopped it). A group's members under way are cancelled with it.
        """
        reason = self._rec.reason()
        if self._groups.group is not None:
            key = self._groups.cancel(reason)
        elif attempt is not None:
            key = attempt.step.key
            self._rec.emit(self.run.step_cancelled(key, attempt.number, attempt.step.name,
                                                   CANCELLED, reason))
        else:
            key = self._waits.cancel()
        cancelled = Cancelled(self.run.run_id, key, self._codec.decode(reason.data))
        return self._decide(self._resume().throw(cancelled), now)

    def deliver(self, record: Record) -> None:
        """Take a committed signal into the mailbox (the engine recorded it)."""
        self._history.apply(record)
        if record.run_state is not None:
            self._rec.state = RunState(record.run_state)

    def failed_internally(self, error: Exception) -> Ended:
        """The engine hit a bug while driving this run: fail the run with it."""
        return record_failure(self._rec, internal_failure(self.run.run_id, error))

    def close(self) -> None:
        """Close the generator; whatever it yields while closing is ignored."""
        if self._interpreter is not None:
            self._interpreter.close()

    # -- deciding --

    def _replayed(self, result: Result | Paused, now: Now) -> Action | Later:
        return LATER if isinstance(result, Paused) else self._decide(result, now)

    def _decide(self, result: Result, now: Now) -> Action:
        """Act on the interpreter's results until one needs the engine."""
        while True:
            self._take_notes()
            if isinstance(result, Finish):
                if type(result.output) is ContinueAsNew:
                    return self._continued(result.output, now)
                return record_completion(self._rec, result.output)
            if isinstance(result, Fail):
                return record_failure(self._rec, result)
            command = result.command
            if isinstance(command, Note):
                result = self._note(command)
                continue
            if self._history.cancel_pending:
                reason = self._codec.decode(self._rec.reason().data)
                self._rec.cancelled_at(command, result.record)
                result = self._resume().throw(Cancelled(self.run.run_id, command.key, reason))
                continue
            if isinstance(command, GROUP_TYPES):
                return self._grouped(self._groups.begin(result, command, now), now)
            if isinstance(command, Child):
                return self._child(result, command)
            if isinstance(command, Step):
                action = self._step(command, result.record, now)
            elif isinstance(command, Sleep):
                action = self._waits.sleep(result, command, now)
            else:
                return self._waits.suspend(result, command)
            if not isinstance(action, tuple):
                return action
            ok, value = action
            result = self._resume().send(value) if ok else self._resume().throw(value)

    def _step(self, step: Step, record: KeyRecord | None,
              now: Now) -> Action | tuple[bool, Any]:
        if record is not None and record.started is not None:
            failed = self._rec.interrupted(step, record, record.started)
            if failed is not None:
                return False, failed
            record = self._history.get(step.key)
        if record is not None and record.wake_at is not None and record.wake_at > at(now):
            return self._waits.wait(WaitUntil, step, key=step.key, at=record.wake_at)
        number = (record.attempts if record else 0) + 1
        start = None
        if self._rec.mark:
            self._rec.mark = False
            start = self.run.step_started(step.key, number, step.name,
                                          self._rec.running_unless())
            self._rec.apply(start)  # committed by the engine before the attempt, alone
        return Attempt(*self._rec.flush(), step=step, number=number, start=start)

    def _continued(self, output: ContinueAsNew, now: Now) -> Action:
        """Start the run's next generation: the new arguments, an empty memo."""
        arguments = record_continuation(self._rec, output)
        if isinstance(arguments, Ended):
            return arguments
        self._arguments, self._frontier, self._waits.pending = arguments.data, None, None
        action = self.start(now)
        assert not isinstance(action, Later), "a new generation has nothing to replay"
        return action

    def _note(self, note: Note) -> Result:
        """Record the workflow's status note and go on (the `yield` returns None)."""
        try:
            value = self._rec.encoded(note.value, note.key)
        except EncodingError as error:
            return self._resume().throw(error)
        text = note.text
        if text is None:
            text = note.value if isinstance(note.value, str) else (value.json or "")
        self._rec.emit(self.run.note(note.key, value, text))
        return self._resume().send(None)

    def _child(self, pending: Pending, child: Child) -> Action:
        """Start the child run (recorded the first time), then wait for its end."""
        if pending.record is None and child.workflow not in self._policy.workflows:
            self.close()
            return record_failure(self._rec, unregistered(self.run.run_id, child))
        return self._waits.child(pending, child)

    # -- groups --

    def _grouped(self, action: Action | Pending, now: Now) -> Action:
        """The group host's decision; a decided group's `Pending` is answered from it."""
        if isinstance(action, Pending):
            return self._decide(self._resume().reconsider(action), now)
        return action

    # -- bookkeeping --

    def _take_notes(self) -> None:
        """Record the suspends answered from the mailbox and the renamed steps."""
        interpreter = self._resume()
        while interpreter.taken:
            suspend = interpreter.taken.pop(0)
            self._rec.emit(self.run.signal_taken(suspend.key, suspend.status))
        while interpreter.renames:
            rename = interpreter.renames.pop(0)
            names = {"recorded": rename.recorded, "current": rename.current}
            self._rec.emit(self.run.step_renamed(rename.key, rename.recorded, rename.current,
                                             self._rec.encoded(names, rename.key), rename.message))
            self._rec.warn(rename.message)

    def _resume(self) -> Interpreter:
        assert self._interpreter is not None, "the machine was not started"
        return self._interpreter
