"""What a run waits on outside groups: a back-off, a sleep, a suspend, a child run.

An execution parks at one command at a time (a group's waiting members are the group
host's, `_group_host`). `Waits` makes the decisions that park the run there: the
records of the wait (a sleep's deadline, a suspend, a child's start) and the
`WaitUntil` or `WaitForSignal` that carries them. It holds the command (`pending`)
until the engine wakes the run (`wake`: the command is decided again) or cancels it
(`cancel`: the cancellation is recorded at the command). The run machine (`_machine`)
owns it, as it owns the group host.

- **Step back-off**: a failed attempt's retry, or a pending back-off on replay, is
  waited out (`wait`); the machine decides the attempt that follows.
- **Sleep**: its deadline is recorded once (``scheduled``), then waited for; when it
  has passed the sleep ``fired`` and the workflow goes on.
- **Suspend**: recorded as ``suspended`` with its timeout's deadline, then waited for;
  a signal arriving (`RunMachine.deliver`) answers it on the next `RunMachine.wake`, a
  passed deadline throws `SuspendTimeout` in (decided by `wake` only, which the engine
  calls under the run's lock, so that a signal being committed and the timeout never
  both win): `suspend` parks undecided, `suspended` decides.
- **Child**: its start is recorded once (the engine starts the child run in the same
  commit), then its end is waited for.

Pure: no I/O.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from replay._commands import Sleep, Suspend
from replay._core._decisions import Action, Now, WaitForSignal, WaitUntil, at
from replay._core._history import KeyRecord
from replay._core._interpreter import Command, Interpreter, Pending, Result
from replay._core._recorder import Recorder
from replay._core._records import ErrorText
from replay._errors import SuspendTimeout, qualified_name
from replay._flow import Note
from replay._parallel import Child
from replay._types import RunState


class Waits:
    """The command one execution of a run waits on outside groups.

    Args:
        rec: The execution's recorder.
    """

    __slots__ = ("_rec", "pending")

    def __init__(self, rec: Recorder) -> None:
        self._rec = rec
        self.pending: Pending | None = None  # the command a parked run waits on

    def wait(self, kind: type[WaitUntil] | type[WaitForSignal], pending: Pending | Command,
             **where: Any) -> Action:
        """Park on `pending` (its current record looked up for a bare command)."""
        if not isinstance(pending, Pending):
            pending = Pending(pending, self._rec.history.get(pending.key))
        self.pending = pending
        return kind(*self._rec.flush(), **where)

    def wake(self, interpreter: Interpreter, now: Now) -> Action | Result:
        """Decide again about the command waited on: park again, or the workflow goes on.

        Returns:
            The decision to park again, or the interpreter's result once the command
            has its outcome (a suspend's signal or its timeout thrown in, a passed
            deadline) for the machine to act on.
        """
        assert self.pending is not None, "wake() of a run that waits on nothing"
        pending, self.pending = self.pending, None
        result = interpreter.reconsider(pending)
        if isinstance(result, Pending) and isinstance(result.command, Suspend):
            action = self.suspended(result.command, result.record, now)
            if not isinstance(action, SuspendTimeout):
                return action
            result = interpreter.throw(action)
        return result

    def cancel(self) -> str:
        """Record the run's cancellation thrown in at the command waited on; return its key."""
        assert self.pending is not None, "cancel() of a run that waits on nothing"
        pending, self.pending = self.pending, None
        key = pending.command.key
        assert not isinstance(pending.command, Note), "a note is never waited on"
        self._rec.cancelled_at(pending.command, pending.record)
        return key

    def sleep(self, pending: Pending, sleep: Sleep, now: Now) -> Action | tuple[bool, Any]:
        """Wait for the sleep's deadline (recorded the first time), or go on: it fired."""
        rec = self._rec
        record = pending.record
        if record is None or record.wake_at is None:
            wake_at = sleep.until or at(now) + (sleep.duration or timedelta(0))
            rec.emit(rec.run.sleep_scheduled(sleep.key, wake_at))
        else:
            wake_at = record.wake_at
        if wake_at > at(now):
            return self.wait(WaitUntil, pending, key=sleep.key, at=wake_at)
        rec.emit(rec.run.sleep_fired(sleep.key, wake_at))
        return True, None

    def suspend(self, pending: Pending, suspend: Suspend) -> Action:
        """Park on the suspend undecided (see `suspended`)."""
        # Decided by `wake`, under the run's lock: a signal may be on its way.
        self.pending = pending
        deadline = None if pending.record is None else pending.record.wake_at
        return WaitForSignal(*self._rec.flush(), key=suspend.key, deadline=deadline,
                             settled=False)

    def suspended(self, suspend: Suspend, record: KeyRecord | None,
                  now: Now) -> Action | SuspendTimeout:
        """Wait for the signal (recorded the first time), or time out: the error to throw."""
        rec = self._rec
        key = suspend.key
        if record is None:
            deadline = None if suspend.timeout is None else at(now) + suspend.timeout
            rec.emit(rec.run.suspended(key, deadline, suspend.status))
            return self.wait(WaitForSignal, suspend, key=key, deadline=deadline, settled=False)
        if record.wake_at is None or record.wake_at > at(now):
            if rec.state is not RunState.SUSPENDED:  # waiting again after a resume
                rec.emit(rec.run.suspended(key, record.wake_at, suspend.status))
                return self.wait(WaitForSignal, suspend, key=key, deadline=record.wake_at,
                                 settled=False)
            return self.wait(WaitForSignal, suspend, key=key, deadline=record.wake_at,
                             settled=True)
        timeout = SuspendTimeout(rec.run.run_id, key)
        rec.emit(rec.run.suspend_timed_out(key, record.wake_at, ErrorText(
            qualified_name(SuspendTimeout), (), str(timeout))))
        return timeout

    def child(self, pending: Pending, child: Child) -> Action:
        """Start the child run (recorded the first time), then wait for its end.

        The machine has checked that the child's workflow is registered.
        """
        rec = self._rec
        if pending.record is None:
            rec.start_child(child, RunState.SUSPENDED)
        elif rec.state is not RunState.SUSPENDED:
            # Waiting again (a resume voided the child's failure): the run parks on it.
            rec.emit(rec.run.child_waiting(child.key))
        self.pending = pending
        records, warnings = rec.flush()
        return WaitForSignal(records, warnings, key=child.key, deadline=None,
                             settled=not records)
