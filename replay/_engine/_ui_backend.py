"""The web view of a running engine: `open_engine(..., ui=(host, port))`.

`EngineBackend` answers the pages (`replay._ui`) with the engine's own calls, in the
engine's trio loop: queries are user queries (`Engine.open_query`: read-only, on the
query threads, under `query_timeout`), watches are `Run.watch`, actions are
`Engine.signal`, `resume` and `cancel`, so the page has exactly the rules and errors
of the API. `serve_ui` starts the server in the engine's services nursery.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

import trio

from replay._core._history import RunHistory
from replay._core._signals import misdirected_signal
from replay._engine._clock import in_thread
from replay._engine._facade import Engine, internals
from replay._pg._url import is_postgres_url
from replay._store import ENGINE_ADVICE, UserQuery
from replay._types import Event, RunInfo, RunUpdate
from replay._ui import Facts, Outcome, Table, Update, serve
from replay._ui._backend import cancelled, resumed, signalled
from replay._ui._examples import DUCKDB, POSTGRES

if TYPE_CHECKING:
    from replay._engine._watch import Watch


class EngineBackend:
    """The pages' view of `engine` (see `replay._ui.Backend`)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.facts = Facts(True, f"the engine in process {os.getpid()}")
        # The store's path is the URL (password masked) for a PostgreSQL store.
        self.dialect = POSTGRES if is_postgres_url(internals(engine).store.path) else DUCKDB

    async def now(self) -> datetime:
        """Return the engine clock's time."""
        return self._engine.now()

    async def query(self, sql: str, params: Sequence[Any] | None = None, *,
                    max_rows: int = 1000) -> Table:
        """Run one read-only user query; return at most `max_rows` rows.

        Raises:
            QueryError: It is not one read-only query, it failed, or it took longer than
                the engine's `query_timeout`.
            EngineClosed: The engine closed.
        """
        def fetch(query: UserQuery) -> Table:
            query.start()
            rows = query.fetch(max_rows + 1)
            return Table(list(query.columns), list(query.types), rows[:max_rows],
                         len(rows) > max_rows)

        timed = self._engine.open_query(sql, params, None, ENGINE_ADVICE)
        try:
            return await timed.call(fetch)
        finally:
            timed.close()

    @asynccontextmanager
    async def watch(self, run_id: str, after_seq: int | None) -> AsyncIterator[_Updates]:
        """Watch the run with `Run.watch` (see `replay._ui.Backend.watch`).

        Raises:
            RunNotFound: No such run.
            EngineClosed: The engine closed.
        """
        run = self._engine.get_run(run_id)
        async with run.watch(after_seq=after_seq) as updates:
            yield _Updates(updates)

    async def signal(self, run_id: str, key: str, payload: Any) -> Outcome:
        """Signal the run with `Engine.signal`.

        Raises:
            RunNotFound: No such run.
            SignalRejected: The run is finished, or the key already has a value.
            EncodingError: The payload cannot be recorded.
            ValueError: The key is empty.
            EngineClosed: The engine closed.
        """
        await self._engine.signal(run_id, key, payload)
        info = self._engine.status(run_id)
        return signalled(run_id, key, info.state.value, self.facts,
                         misdirected_signal(info, key))

    async def resume(self, run_id: str) -> Outcome:
        """Resume the run with `Engine.resume`.

        Raises:
            RunNotFound: No such run.
            WorkflowNotRegistered: This engine does not run the run's workflow.
            EngineClosed: The engine closed.
        """
        before = self._engine.status(run_id).state.value
        await self._engine.resume(run_id)
        return resumed(run_id, before, self._engine.status(run_id).state.value)

    async def cancel(self, run_id: str, reason: str | None) -> Outcome:
        """Cancel the run with `Engine.cancel`.

        Raises:
            RunNotFound: No such run.
            RunFinished: The run is finished.
            EngineClosed: The engine closed.
        """
        # Whether this request counts: a second cancel changes nothing, and the page
        # says so, as the command does (the channel asks the same way).
        records = await in_thread(internals(self._engine).store.load_history, run_id)
        before = RunHistory(records).cancel_reason is not None
        await self._engine.cancel(run_id, reason)
        return cancelled(run_id, self._engine.status(run_id).state.value, not before,
                         self.facts)


class _Updates:
    """A run's `RunUpdate`s as the pages' plain `Update` dicts."""

    def __init__(self, updates: Watch) -> None:
        self._updates = updates

    def __aiter__(self) -> _Updates:
        return self

    async def __anext__(self) -> Update:
        update: RunUpdate = await self._updates.__anext__()
        return {"kind": update.kind, "seq": update.seq, "info": _info(update.info),
                "event": _event(update.event)}


def _info(info: RunInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    found = {field.name: getattr(info, field.name) for field in fields(info)}
    found["state"] = info.state.value
    return found


def _event(event: Event | None) -> dict[str, Any] | None:
    if event is None:
        return None
    return {field.name: getattr(event, field.name) for field in fields(event)
            if field.name != "value"}


async def serve_ui(engine: Engine, host: str, port: int, *,
                   task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `engine`'s web view until cancelled; `task_status` gets its URL.

    Raises:
        OSError: The address cannot be listened on.
    """
    await serve(EngineBackend(engine), host, port, task_status=task_status)
