"""Child runs: started with their parent's record of them, ended with its record of the end.

A parent's decision that starts children is committed in one batch with each child's
``run/started``; the children's tasks are spawned once it is durable. A child's last
record is committed in one batch with the parent's ``child/completed`` (or ``failed``),
under the parent's lock, exactly as a signal is: a parked parent waiting for the child
wakes, a busy one finds the outcome in its mailbox. When a run ends, its children that
are still running follow their ``on_parent_close``: cancelled, or left running.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from replay._codec import CODEC, decode
from replay._core._decisions import ChildStart
from replay._core._history import RunHistory, child_run_id
from replay._core._records import Encoded, ErrorText, Record, Run
from replay._core._state import RunStatus
from replay._engine._slots import RunSlot
from replay._errors import ReplayError, message_of
from replay._types import RunState

if TYPE_CHECKING:
    from replay._engine._scheduler import Scheduler

log = logging.getLogger("replay")
_CANCELLED = "replay.Cancelled"


class Family:
    """Starts, ends and closes child runs for the scheduler.

    Args:
        scheduler: The scheduler that owns every run.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    async def commit(self, slot: RunSlot, records: Sequence[Record],
                     starts: Sequence[ChildStart], stops: Sequence[str]) -> None:
        """Commit a parent's records with its new children's starts; then run them."""
        scheduler = self._scheduler
        found = await scheduler.runs.existing([start.run_id for start in starts])
        fresh = [start for start in starts if start.run_id not in found]
        existing = [start for start in starts if start.run_id in found]
        durable = None
        for record in records:
            durable = scheduler.enqueue(slot, record)
        children = []
        for start in fresh:
            child = scheduler.new_slot(start.run_id, start.workflow)
            child.parent = (slot.run_id, start.parent_key)
            record = Run(start.run_id, start.workflow).started(
                start.arguments, parent=(slot.run_id, start.parent_key),
                code_version=scheduler.code_version)
            durable = scheduler.committer.enqueue(record, child.apply)
            children.append((child, record, start))
        if durable is not None:
            await durable.wait()
        for child, record, start in children:
            child.created_at = record.recorded_at or child.created_at
            child.mark_durable()
            scheduler.spawn_new(child, start.arguments.data)
        for start in existing:  # a resumed parent: the child ran already
            await self._existing(slot, start)
        self._stop_children(slot, stops)

    async def end(self, slot: RunSlot, records: Sequence[Record],
                  history: RunHistory | None, stops: Sequence[str] = ()) -> None:
        """Commit a run's last records (a child's with its parent's record of the end).

        Then cancel the children its last decision stopped (`stops`: a race's losing
        child, the child it waited on when it was cancelled) and close those still
        running (`history`: its memo).
        """
        if records:
            await self._commit_end(slot, records)
        self._stop_children(slot, stops)
        if history is not None:
            self.close_children(slot, history)

    def close_children(self, slot: RunSlot, history: RunHistory) -> None:
        """Cancel the run's children still running whose `on_parent_close` says so."""
        for key, detail in history.children():
            details = decode(detail) if detail is not None else {}
            if not isinstance(details, dict) or details.get("on_parent_close") != "abandon":
                self._scheduler.tasks.in_background(
                    self._cancel_child, child_run_id(slot.run_id, key, history.generation),
                    f"its parent {slot.run_id!r} ended")

    async def _commit_end(self, slot: RunSlot, records: Sequence[Record]) -> None:
        parent = self._scheduler.runs.live.get(slot.parent[0]) if slot.parent else None
        if parent is None or slot.parent is None or not await self._to_parent(
                parent, slot.parent[1], slot, records, _final_status(records)):
            await self._scheduler.commit(slot, records)

    async def _to_parent(self, parent: RunSlot, key: str, child: RunSlot,
                         records: Sequence[Record], status: RunStatus) -> bool:
        """Commit `child`'s last `records` with the parent's record of its end (`status`).

        Returns:
            False if the parent no longer waits for this child: nothing was committed.
        """
        scheduler = self._scheduler
        while True:
            await scheduler.tasks.let_go(parent)
            async with parent.lock:
                if parent.letting_go:
                    continue  # the parent began to park meanwhile: wait for it, then decide
                history = await scheduler.mailbox(parent)
                if not history.awaits(key):
                    return False
                wakes = scheduler.parked_on(parent, key, history)
                record = _outcome_record(Run(parent.run_id, parent.workflow), key,
                                         child.run_id, status,
                                         RunState.RUNNING if wakes else None)
                # Queued under the parent's lock, so that the parent's decision to park
                # comes before or after it; waited for outside it, so that many children
                # ending at once share commits instead of taking turns.
                durable = scheduler.enqueue_together(child, records, parent, record, wakes)
            # The parent may have parked on this child meanwhile (its own lock let it
            # decide while the batch was in flight): then it is woken now.
            await scheduler.durable_together(durable, parent, wakes, recheck=True)
            return True

    async def _existing(self, parent: RunSlot, start: ChildStart) -> None:
        """A child that exists already: if it has ended, its end goes to the parent now."""
        try:
            child = await self._scheduler.runs.adopt(start.run_id)
        except ReplayError:
            return
        if child.status.finished:
            await self._to_parent(parent, start.parent_key, child, (), child.status)

    def _stop_children(self, parent: RunSlot, run_ids: Sequence[str]) -> None:
        """Cancel the child runs the parent's decision stopped waiting for."""
        for run_id in run_ids:
            self._scheduler.tasks.in_background(
                self._cancel_child, run_id, f"its parent {parent.run_id!r} no longer waits for it")

    async def _cancel_child(self, run_id: str, why: str) -> None:
        try:
            slot = await self._scheduler.runs.adopt(run_id)
            if not slot.status.finished:
                await self._scheduler.cancel(slot, Encoded(CODEC.encode(why, key="reason"),
                                                           CODEC.to_json(why)))
        except ReplayError as error:  # it ended meanwhile, or the engine is closing
            log.debug("child run %r was not cancelled: %s", run_id, message_of(error))


def _final_status(records: Sequence[Record]) -> RunStatus:
    status = RunStatus(RunState.RUNNING)
    for record in records:
        status = status.after(record)
    return status


def _outcome_record(parent: Run, key: str, child_run_id: str, status: RunStatus,
                    state: RunState | None) -> Record:
    """The parent's record of its child's end (`status`: the child's final status)."""
    if status.state is RunState.COMPLETED:
        output = status.output if status.output is not None else CODEC.encode(None, key=key)
        return parent.child_completed(key, output, CODEC.to_json(decode(output)), state)
    message = decode(status.message) if status.message is not None else ""
    if status.state is RunState.CANCELLED:
        error_type = _CANCELLED
        message = f"child run {child_run_id!r} was cancelled: {message}"
    else:
        error_type = status.error_type or "builtins.Exception"
    text = ErrorText(error_type, (error_type,), str(message))
    return parent.child_failed(key, child_run_id, text, state)
