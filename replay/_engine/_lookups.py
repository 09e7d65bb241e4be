"""Looking runs up in the file together: one query for every look made in one moment.

`engine.start(wf, run_id=...)` must know whether the file already holds a run of that
id (a finished run is not in memory). Asked one at a time, a thousand requests that
each start a run with their own id would make a thousand reads, one after the other in
the reader's thread. `RunLookups` lets the looks made in one scheduling round share
one read: the first to ask waits one round for the others, reads for all of them, and
hands each its answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from replay._engine._clock import in_thread
from replay._store import EngineStore


@dataclass(slots=True)
class _Batch:
    run_ids: list[str] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)
    found: set[str] = field(default_factory=set)
    error: Exception | None = None


class RunLookups:
    """Tells which run ids the file holds, batching the looks made together.

    Args:
        store: The open database.
    """

    def __init__(self, store: EngineStore) -> None:
        self._store = store
        self._gathering: _Batch | None = None

    async def in_file(self, run_id: str) -> bool:
        """Whether the file holds a run `run_id` (its start).

        Raises:
            DatabaseError: The file could not be read.
        """
        batch = self._gathering
        if batch is not None:
            batch.run_ids.append(run_id)
            await batch.done.wait()
        else:
            batch = self._gathering = _Batch([run_id])
            try:
                # Shielded: the others wait on this read. A cancelled caller reads for
                # them anyway, then takes its cancellation.
                with trio.CancelScope(shield=True):
                    await trio.lowlevel.checkpoint()  # one round: the looks made with it
                    self._gathering = None
                    batch.found = await in_thread(self._store.existing, batch.run_ids)
            except Exception as error:
                batch.error = error  # the others get the read's failure, never a hang
                raise
            finally:
                if self._gathering is batch:
                    self._gathering = None
                batch.done.set()
            await trio.lowlevel.checkpoint_if_cancelled()
        if batch.error is not None:
            raise batch.error
        return run_id in batch.found
