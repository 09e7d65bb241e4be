"""`replay.aio` watches: a run's (or every run's) updates as an asyncio async iterator.

Each step of the iteration awaits the next update of a `replay.Run.watch` (or
`replay.Engine.watch`) in a trio task of the guest run; cancelling the asyncio caller
cancels that step, which ends the watch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import replay
from replay.aio._guest import Calls

_END = object()  # the trio side's watch ended (a StopAsyncIteration cannot cross a future)


class Watch:
    """Updates as they commit, for asyncio code; from `Run.watch` or `Engine.watch`.

    ``async for update in run.watch():`` stops by itself when the run finishes;
    ``async with engine.watch() as updates:`` stops watching when the block ends.
    """

    def __init__(self, calls: Calls, open_watch: Callable[[], Any]) -> None:
        self._calls = calls
        self._open = open_watch
        self._watch: Any = None
        self._done = False

    def __aiter__(self) -> AsyncIterator[replay.RunUpdate]:
        return self

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop watching (a watch that ended on its own needs no closing)."""
        if not self._done and self._watch is not None:
            self._done = True
            await self._calls.call(self._watch.aclose)
        self._done = True

    async def __anext__(self) -> replay.RunUpdate:
        if self._done:
            raise StopAsyncIteration
        if self._watch is None:
            self._watch = await self._calls.call_sync(self._open)
        update = await self._calls.call(self._step)
        if update is _END:
            self._done = True
            raise StopAsyncIteration
        assert isinstance(update, replay.RunUpdate)
        return update

    async def _step(self) -> object:
        try:
            return await self._watch.__anext__()
        except StopAsyncIteration:
            return _END
