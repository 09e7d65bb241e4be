"""An engine among several on one PostgreSQL schema: taking claimed runs and messages.

The store's thread (`replay._pg._sharing`) claims families and fetches inbox messages;
this service brings them onto the engine's loop. Claimed runs join the engine as
runs do at open (`Recovery.take`), numbered from the fresh block of the claim.
Messages (signals, cancellations, terminations, resumes sent through other engines)
are delivered as if they were called here, then deleted; a message delivered twice
(the engine died in between) is refused the second time, as a second identical
signal, cancellation or termination is.

Calls the other way, from this engine's API to runs another engine holds, go through
`send_elsewhere`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from replay._core._records import Encoded
from replay._engine._clock import in_thread
from replay._engine._scheduler import Scheduler
from replay._errors import LeaseLost, ReplayError
from replay._store import Claimed, RunRow, SharedStore

log = logging.getLogger("replay")


class SharedRuns:
    """The service that takes what the store's thread claims for this engine.

    Args:
        scheduler: The engine's scheduler (its runs nursery open).
        sharing: The store's leases and inbox.
    """

    def __init__(self, scheduler: Scheduler, sharing: SharedStore) -> None:
        self._scheduler = scheduler
        self._sharing = sharing

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the store's thread, and keep taking its claims until cancelled.

        Raises:
            LeaseLost: A renewal found that another engine took runs this one holds.
        """
        token = trio.lowlevel.current_trio_token()

        def soon(function: Any, argument: Any) -> None:
            # Once the engine is gone, its leases are freed as it closes.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(function, argument)

        lost: list[LeaseLost] = []
        noticed = trio.Event()

        def stop(error: LeaseLost) -> None:
            lost.append(error)
            noticed.set()

        self._sharing.start(lambda claim: soon(self._claimed, claim),
                            lambda messages: soon(self._received, messages),
                            lambda: self._scheduler.tasks.executing,
                            lambda error: soon(stop, error))
        task_status.started()
        await noticed.wait()
        raise lost[0]  # the engine stops: its runs must not go on in two places

    def _claimed(self, claim: Claimed) -> None:
        if not self._scheduler.closing:  # else the claim ends as the engine frees its leases
            take_claim(self._scheduler, claim)
            self._sharing.taken()

    def _received(self, messages: list[tuple[Any, ...]]) -> None:
        if not self._scheduler.closing:
            self._scheduler.tasks.in_background(self._deliver, messages)

    async def _deliver(self, messages: list[tuple[Any, ...]]) -> None:
        for message_id, run_id, action, key, payload, payload_json in messages:
            slot = self._scheduler.runs.find(run_id)
            if slot is None:
                # Its family is leased in this engine's name but not held here (a claim
                # cut off before it arrived): kept for whoever takes the family.
                self._sharing.keep([message_id])
                continue
            try:
                if not slot.status.finished:
                    await self._act(slot, action, key, Encoded(payload, payload_json))
            except ReplayError as error:
                log.info("replay: %s for run %r sent through another engine was refused "
                         "here: %s", action, run_id, error)
            await in_thread(self._sharing.done, [message_id])

    async def _act(self, slot: Any, action: str, key: str | None, value: Encoded) -> None:
        scheduler = self._scheduler
        if action == "signal" and key is not None:
            await scheduler.signal(slot, key, value)
        elif action == "cancel":
            await scheduler.cancel(slot, value)
        elif action == "terminate":
            await scheduler.terminate(slot, value)
        elif action == "resume":
            await scheduler.recovery.resume(slot)


def take_claim(scheduler: Scheduler, claim: Claimed) -> None:
    """Hold the runs of claimed families, numbering their records from the claim's block."""
    scheduler.committer.advance(claim.block)
    for records in claim.records:
        scheduler.committer.note_generations(records)
    scheduler.recovery.take(claim.records, claim.block)


@asynccontextmanager
async def calling(scheduler: Scheduler, run_id: str, action: str, key: str | None = None,
                  value: Encoded | None = None) -> AsyncIterator[RunRow | None]:
    """Send `action` to the engine that holds the run, or let the caller act here.

    Yields the run's row if another engine holds it: the call is queued for that
    engine, and the caller returns. Yields None when the run is this engine's to act on
    (in memory, finished, or on a store no other engine shares). A run that no engine
    holds (its family is free, or its lease expired) is claimed here first, with its
    family, if this engine has room; if it runs none of the family's workflows, it hands
    the family back once the call is done, for an engine that runs them.
    """
    row, claim = await _held_elsewhere(scheduler, run_id)
    if row is not None:
        await send_elsewhere(scheduler, run_id, action, key, value)
        yield row
        return
    try:
        yield None
    finally:
        sharing = scheduler.store.sharing
        if claim is not None and sharing is not None and not _runs_any(sharing, claim):
            with trio.CancelScope(shield=True):
                await _hand_back(scheduler, sharing, claim)


async def _held_elsewhere(scheduler: Scheduler, run_id: str
                          ) -> tuple[RunRow | None, Claimed | None]:
    """The run's row if another engine holds it; else the claim that made it ours."""
    sharing = scheduler.store.sharing
    if sharing is None or scheduler.runs.find(run_id) is not None:
        return None, None
    row = await in_thread(scheduler.store.run_row, run_id)
    if row is None or row.state in ("completed", "failed", "cancelled"):
        return None, None
    # An engine without room (a client, `max_runs=0`) leaves it to one that has.
    room = sharing.has_room(scheduler.tasks.executing)
    claim = await in_thread(sharing.claim_run, run_id) if room else None
    if scheduler.runs.find(run_id) is not None:
        return None, None  # claimed here meanwhile
    if claim is not None and not scheduler.closing:
        take_claim(scheduler, claim)
        return None, claim
    return row, None


def _runs_any(sharing: SharedStore, claim: Claimed) -> bool:
    """Whether this engine runs a workflow of the claimed family."""
    runs = sharing.options.workflows
    return any(records[0].workflow in runs for records in claim.records if records)


async def _hand_back(scheduler: Scheduler, sharing: SharedStore, claim: Claimed) -> None:
    """Free a family this engine claimed for a call but cannot run (its call is durable).

    Held, it would stay unexecuted here until the engine closed.
    """
    scheduler.runs.let_go([records[0].run_id for records in claim.records if records])
    await in_thread(sharing.hand_back, claim.roots)


async def number_after(scheduler: Scheduler, seq: int) -> None:
    """Number this engine's next records above `seq` (a run's newest, to write more of).

    On a shared store another engine may have written the run last, from a block above
    this engine's: a fresh block is above every block handed out before.
    """
    sharing = scheduler.store.sharing
    if sharing is not None and not scheduler.committer.numbers_after(seq):
        scheduler.committer.advance(await in_thread(sharing.next_block))


async def send_elsewhere(scheduler: Scheduler, run_id: str, action: str,
                         key: str | None = None, value: Encoded | None = None) -> None:
    """Queue `action` for the engine that holds `run_id` (or claims it next)."""
    sharing = scheduler.store.sharing
    assert sharing is not None
    await in_thread(sharing.send, run_id, action, key,
                    None if value is None else value.data,
                    None if value is None else value.json)
