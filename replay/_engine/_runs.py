"""`RunTable`: which runs the engine holds in memory, and finding the others in the file.

Only unfinished runs live in memory (`live`), and the last `RECENTLY_FINISHED` runs to
finish (a caller often asks about a run right after it ends). Any other finished run
is read from the file when asked for, so finished runs cost no memory however many
there are. The scheduler decides when a run moves between them; this table only keeps
them and reads the file.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import trio

from replay._engine._clock import in_thread
from replay._engine._lookups import RunLookups
from replay._engine._slots import RunSlot
from replay._engine._watching import Watchers
from replay._errors import EngineClosed, RunNotFound
from replay._store import EngineStore, RunRow

# How many of the runs that finished last stay in memory (about 1 KB each).
RECENTLY_FINISHED = 1000


class RunTable:
    """The runs of one engine, in memory or in its file.

    Args:
        store: The open database.
        opened_at: The newest `seq` in the file when the engine opened it.
    """

    def __init__(self, store: EngineStore, opened_at: int, watchers: Watchers) -> None:
        self._store = store
        self.watchers = watchers  # told of each record every slot in memory commits
        self.opened_at = opened_at  # the newest `seq` in the file when it opened
        self.live: dict[str, RunSlot] = {}  # unfinished runs, and finished ones owned
        self._finished: OrderedDict[str, RunSlot] = OrderedDict()  # the newest finished
        self._reading: dict[str, trio.Event] = {}  # runs being read from the file
        # Finished runs a purge is deleting (`hold_for_purge`): `adopt` waits for them.
        self._purging: set[str] = set()
        self._purged = trio.Event()
        self._lookups = RunLookups(store)

    def find(self, run_id: str) -> RunSlot | None:
        """Return the slot of a run in memory (its start may not be durable yet), or None."""
        return self.live.get(run_id) or self._finished.get(run_id)

    def in_memory(self) -> list[RunSlot]:
        """Return the slots in memory: unfinished runs and the runs that finished last."""
        return [*self.live.values(), *self._finished.values()]

    def add(self, slot: RunSlot) -> RunSlot:
        """Hold `slot` in memory (a new run, or one read from the file)."""
        slot.watchers = self.watchers
        self.live[slot.run_id] = slot
        return slot

    def restored(self, row: RunRow) -> RunSlot:
        """Return the slot of a run as the file has it."""
        return RunSlot.restored(row, self.opened_at)

    def slot(self, run_id: str, closed: bool) -> RunSlot:
        """Return the run's slot (a finished run's may be read from the file, blocking).

        Raises:
            RunNotFound: No such run (or its start is not durable yet).
            EngineClosed: The run must be read from the file, which is `closed`.
        """
        slot = self.find(run_id)
        if slot is None:
            if closed:
                raise EngineClosed(
                    f"the engine is closed, and run {run_id!r} finished long enough ago to "
                    "be read from the file; open the engine again to ask about it")
            slot = self._stored(self._store.run_row(run_id))
        if slot is None or not slot.durable:
            raise RunNotFound(run_id)
        return slot

    async def adopt(self, run_id: str, keep_finished: bool = False) -> RunSlot:
        """Return the run's slot, read from the file into memory if need be.

        A finished run read from the file is kept in memory only with `keep_finished`
        (`resume` runs it again); it leaves again when its task lets go. One read per
        run at a time: a read that began while another call's slot for the run was
        committing could return a state older than the file's.

        Raises:
            RunNotFound: No such run (or its start is not durable yet).
        """
        # No checkpoint between a check that the run is not being purged and the return
        # (or the start of a read, during which it cannot be held for a purge).
        await self._not_purging(run_id)
        if keep_finished and run_id in self._finished:
            self.add(self._finished.pop(run_id))
        slot = self.find(run_id)
        while slot is None:
            reading = self._reading.get(run_id)
            if reading is not None:
                await reading.wait()
                await self._not_purging(run_id)
                slot = self.find(run_id)
                continue
            reading = self._reading[run_id] = trio.Event()
            try:
                slot = self._stored(await in_thread(self._store.run_row, run_id))
            finally:
                del self._reading[run_id]
                reading.set()
            if slot is None:
                break
            # On a shared store an unfinished run not in memory is another engine's.
            if (keep_finished and slot.status.finished) or not (
                    slot.status.finished or self._store.sharing is not None):
                self.add(slot)
        if slot is None or not slot.durable:
            raise RunNotFound(run_id)
        return slot

    def hold_for_purge(self, run_ids: Sequence[str]) -> dict[str, RunSlot | None] | None:
        """Hold finished runs (a run and its children) for a purge, unless one is in use.

        In use: being read from the file, or in memory and unfinished or owned by a task
        (a `resume` under way). Until `release_purged`, `adopt` waits for held runs, so
        nothing can start to use one while its delete is on its way.

        Returns:
            Each run's slot in memory (None if it is not in memory), or None if a run
            is in use (nothing is held then).
        """
        held: dict[str, RunSlot | None] = {}
        for run_id in run_ids:
            slot = self.find(run_id)
            if run_id in self._reading or run_id in self._purging or (
                    slot is not None and (slot.active or not slot.status.finished)):
                return None
            held[run_id] = slot
        self._purging.update(held)
        return held

    def release_purged(self, held: dict[str, RunSlot | None], deleted: set[str]) -> None:
        """Forget the `deleted` runs held for a purge, and let `adopt` go on for all."""
        for run_id, slot in held.items():
            if run_id in deleted and slot is not None:
                slot.purged = True
            if run_id in deleted and slot is not None and self.find(run_id) is slot:
                self.live.pop(run_id, None)
                self._finished.pop(run_id, None)
        self._purging.difference_update(held)
        self._purged.set()
        self._purged = trio.Event()

    async def _not_purging(self, run_id: str) -> None:
        """Wait while a purge holds the run (no checkpoint if it does not)."""
        while run_id in self._purging:
            await self._purged.wait()

    async def existing(self, run_ids: list[str]) -> set[str]:
        """Return which of `run_ids` exist (in memory or in the file; one read for all)."""
        found = {run_id for run_id in run_ids if self.find(run_id) is not None}
        rest = [run_id for run_id in run_ids if run_id not in found]
        if rest:
            found |= await in_thread(self._store.existing, rest)
        return found

    async def workflow_of(self, run_id: str) -> str | None:
        """Return the workflow of run `run_id` (in memory or in the file), or None."""
        slot = self.find(run_id)
        if slot is not None:
            return slot.workflow if slot.durable else None
        if not await self._lookups.in_file(run_id):  # shared with the looks made with it
            return None
        return await in_thread(self._store.workflow_of, run_id)

    def keep(self, slot: RunSlot) -> None:
        """Hold `slot` among the live runs again (a finished run about to run again)."""
        if self._finished.get(slot.run_id) is slot:
            del self._finished[slot.run_id]
        self.live.setdefault(slot.run_id, slot)

    def forget_if_idle(self, slot: RunSlot) -> None:
        """Keep a finished run no task owns among the recently finished ones only."""
        if slot.status.finished and not slot.active and self.live.get(slot.run_id) is slot:
            del self.live[slot.run_id]
            self._finished[slot.run_id] = slot
            if len(self._finished) > RECENTLY_FINISHED:
                self._finished.popitem(last=False)  # read from the file from now on

    def let_go(self, run_ids: Sequence[str]) -> None:
        """Drop runs from memory that another engine may take (a family handed back).

        Whoever waits on one of them wakes, and finds it is now read from the store.
        """
        for run_id in run_ids:
            slot = self.live.pop(run_id, None) or self._finished.pop(run_id, None)
            if slot is not None:
                slot.notify()

    async def elsewhere(self, run_id: str) -> RunSlot | None:
        """Return the run as the store has it now, unless it is in memory (then None).

        For a run another engine executes (on a shared store): read again while
        waiting for it or watching it.
        """
        if self.find(run_id) is not None:
            return None
        row = await in_thread(self._store.run_row, run_id)
        return None if row is None else self.restored(row)

    def _stored(self, row: RunRow | None) -> RunSlot | None:
        return None if row is None else self.restored(row)
