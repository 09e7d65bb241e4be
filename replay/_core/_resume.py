"""What `resume` records: the unhandled failure that ended a failed run is voided.

Pure: no I/O.
"""

from __future__ import annotations

from replay._core._decisions import Codec
from replay._core._history import RunHistory
from replay._core._records import Encoded, Record, Run
from replay._core._state import RunStatus
from replay._types import RunState

# The run failures `resume` voids: a step's (or a group member's) and a child run's.
_VOIDABLE = ("replay.StepFailed", "replay.ChildFailed")


def resumed_record(run: Run, status: RunStatus, history: RunHistory, codec: Codec) -> Record:
    """Return what `Engine.resume` records for a run in `status` with `history`.

    The unhandled step failure that ended a failed run is voided (folding the record
    gives that step fresh budgets); every other outcome replays. A finished run runs
    again; a parked one keeps its state until the replay records a new one.
    """
    voided = None
    if status.state is RunState.FAILED and status.error_type in _VOIDABLE:
        voided = history.unhandled_failure()
    detail = {"retried_step": voided}
    state = RunState.RUNNING if status.finished else None
    return run.resumed(voided, Encoded(codec.encode(detail, key="resumed"),
                                       codec.to_json(detail)),
                       state)
