"""`replay.sync` watches: a run's (or every run's) updates as a blocking iterator.

Each ``next`` awaits the next update of a `replay.Run.watch` (or `replay.Engine.watch`)
in the engine's thread; the watch object itself lives there too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import replay

if TYPE_CHECKING:
    from replay import Engine as AsyncEngine
    from replay.sync._engine import Engine

_END = object()  # the watch ended (a StopAsyncIteration must not cross threads)


class Watch:
    """Updates as they commit, blocking; from `Run.watch` or `Engine.watch`.

    ``for update in run.watch():`` stops by itself when the run finishes;
    ``with engine.watch() as updates:`` stops watching when the block ends. Use it
    from one thread at a time.
    """

    def __init__(self, engine: Engine, open_watch: Callable[[AsyncEngine], Any]) -> None:
        self._engine = engine
        self._open = open_watch
        self._watch: Any = None
        self._done = False

    def __iter__(self) -> Iterator[replay.RunUpdate]:
        return self

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop watching (a watch that ended on its own needs no closing)."""
        if not self._done and self._watch is not None:
            with contextlib.suppress(replay.EngineClosed):  # closed: nothing to stop
                self._engine._host_call(_aclose, self._watch)
        self._done = True

    def __next__(self) -> replay.RunUpdate:
        if self._done:
            raise StopIteration
        if self._watch is None:
            self._watch = self._engine._host_call_sync(self._open)
        update = self._engine._host_call(_step, self._watch)
        if update is _END:
            self._done = True
            raise StopIteration
        assert isinstance(update, replay.RunUpdate)
        return update


async def _step(engine: AsyncEngine, watch: Any) -> object:
    try:
        return await watch.__anext__()
    except StopAsyncIteration:
        return _END


async def _aclose(engine: AsyncEngine, watch: Any) -> None:
    await watch.aclose()
