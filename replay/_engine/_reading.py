"""`EngineReads`: the read side of `Engine` (states, runs, watching, history, SQL).

Nothing here changes a run: it answers from the runs in memory, from the file (off the
loop, on reader threads), or by watching commits. `Engine` adds the calls that act.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

from replay._checks import checked_state, checked_states
from replay._codec import decode
from replay._codec._export import event_of, write_history
from replay._core._records import Record, started_record
from replay._engine._clock import in_thread
from replay._engine._scheduler import Scheduler
from replay._engine._slots import RunSlot
from replay._engine._watch import Watch, checked_buffer
from replay._engine._watching import DEFAULT_BUFFER
from replay._errors import EncodingError, RunNotFound
from replay._store import ENGINE_ADVICE, EngineStore, Readers, TimedQuery, UserQuery
from replay._types import Event, RunInfo, RunState
from replay._workflows import Registry

log = logging.getLogger("replay")
T = TypeVar("T")


class EngineReads:
    """The calls of `Engine` that read: see `Engine` (internal base class)."""

    _scheduler: Scheduler
    _store: EngineStore
    _readers: Readers
    _registry: Registry

    def status(self, run_id: str) -> RunInfo:
        """Return the run's current durable state.

        Unfinished runs and the last 1,000 runs to finish are answered from memory. An
        older finished run is read from the file (its rows, by the run's index: a few
        milliseconds, on the calling task, which blocks the loop that long).

        Raises:
            RunNotFound: No such run.
            EngineClosed: The run must be read from the file, and the engine is closed.
            EncodingError: The run's recorded output cannot be decoded (a damaged
                value, or a type that is no longer registered).
        """
        slot = self._scheduler.slot(run_id)
        try:
            return slot.info(decode)
        except EncodingError as error:
            raise EncodingError(
                f"run {run_id!r}: its recorded output cannot be decoded: {error}",
                key="output") from error

    async def runs(self, state: RunState | str | None = None, workflow: str | None = None,
                   limit: int = 1000) -> list[RunInfo]:
        """List runs, newest first by `created_at`.

        The list is read from the file (one query, off the loop, in time proportional
        to the file); once the engine is closed, it lists the runs still in memory:
        the unfinished ones and the last 1,000 to finish. A run whose recorded output
        cannot be decoded is listed with ``output=None`` (and a warning on the
        ``replay`` logger); `status` of it says why.

        Args:
            state: Only runs in this state.
            workflow: Only runs of this workflow name.
            limit: At most this many.

        Raises:
            ValueError: `state` is not a run state, or `limit` is negative.
        """
        wanted = None if state is None else checked_state(state)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        if self._scheduler.closed:
            # The file is closed: list what is still in memory (the unfinished runs and
            # those that finished last).
            # Reversed first: the stable sort then lists ties newest first, as the file does.
            slots = [s for s in reversed(self._scheduler.runs.in_memory()) if s.durable
                     and (wanted is None or s.state is wanted)
                     and (workflow is None or s.workflow == workflow)]
            slots.sort(key=lambda s: s.created_at, reverse=True)
            return [self._listed(slot) for slot in slots[:limit]]
        rows = await in_thread(self._store.list_runs, None if wanted is None else wanted.value,
                               workflow, limit)
        return [self._listed(RunSlot.restored(row)) for row in rows]

    def watch(self, workflow: str | Callable[..., Any] | None = None,
              states: Iterable[RunState | str] | None = None,
              buffer: int = DEFAULT_BUFFER) -> Watch:
        """Watch every run: a snapshot of each unfinished run, then every update.

        Use it as ``async for update in engine.watch(): ...`` (it runs until you
        stop: ``break``, or ``async with engine.watch() as updates:``). On a
        PostgreSQL schema shared by several engines it watches the runs every engine
        executes: other engines' updates are read every `poll_interval`.

        Args:
            workflow: Only runs of this workflow (a registered function or its name).
            states: Only updates that leave a run in one of these states.
            buffer: How many unread updates to keep; a watcher that falls behind
                gets a ``"missed"`` update with the count, then fresh snapshots.

        Returns:
            An async iterator of `RunUpdate`.

        Raises:
            WorkflowNotRegistered: `workflow` is not registered with this engine.
            ValueError: A state is not a `RunState` name, or `buffer` < 1.
            TypeError: An argument has the wrong type.
            EngineClosed: The engine is closed (or closes while watching).
        """
        self._check_open(allow_closing=True)
        name = None if workflow is None else self._registry.name_of(workflow)
        chosen = checked_states("engine.watch(states=...)", states)
        return Watch(self._scheduler.watchers, self._store, run_id=None,
                     unfinished=lambda: list(self._scheduler.runs.live.values()),
                     buffer=checked_buffer(buffer), workflow=name, states=chosen,
                     sharing=self._store.sharing)

    async def history(self, run_id: str) -> list[Event]:
        """Return every event of one run in order, values decoded.

        Raises:
            RunNotFound: No such run.
            EngineClosed: The engine is closed.
        """
        self._check_open(allow_closing=True)
        _, records = await self._history_of(run_id)
        return [event_of(record) for record in records]

    async def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None,
                  *, timeout: float | None = None) -> list[tuple[Any, ...]]:
        """Run one read-only query against the database, off the trio loop.

        User queries run in a few threads of their own, so they never delay the reads
        of running workflows. Cancelling the calling task stops the query.

        Args:
            query: Exactly one ``SELECT``, ``WITH … SELECT`` or ``EXPLAIN``.
            params: Values for ``?`` or ``$name`` placeholders.
            timeout: Seconds the query may take, waiting for a thread included
                (default: the engine's `query_timeout`).

        Returns:
            The result rows.

        Raises:
            QueryError: The text is not exactly one read-only query, it failed, or it
                exceeded its time limit (it is stopped).
            TypeError: `timeout` is not a number or None.
            ValueError: `timeout` is not above 0.
            EngineClosed: The engine is closed, or closed while the query ran.
        """
        return await self._user_query(query, params, timeout, _all_rows)

    async def export_history(self, run_id: str, path: str | PathLike[str]) -> None:
        """Write one run's history to a JSON file (a golden history for tests).

        The format is readable, carries a ``version`` field, and keeps every recorded
        value exactly (msgpack, base64) beside its JSON rendering; see
        `replay.testing.check_history`.

        Raises:
            RunNotFound: No such run.
            EngineClosed: The engine is closed.
        """
        self._check_open(allow_closing=True)
        workflow, records = await self._history_of(run_id)
        await in_thread(write_history, Path(path), run_id, workflow, records)

    def now(self) -> datetime:
        """Return the engine clock's current time (aware, UTC)."""
        return self._scheduler.clock.now()

    async def sql_arrow(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None,
                        *, timeout: float | None = None) -> Any:
        """Run one read-only query like `sql`, and return the result as an Arrow table.

        Needs pyarrow (``pip install replay-workflows[arrow]``). The table is built by
        DuckDB with the query's column names and types; ``table.to_pandas()`` gives a
        pandas DataFrame, and ``duckdb.from_arrow(table)`` a DuckDB relation on your
        own connection.

        Args:
            query: Exactly one ``SELECT``, ``WITH … SELECT`` or ``EXPLAIN``.
            params: Values for ``?`` or ``$name`` placeholders.
            timeout: Seconds the query may take (default: the engine's `query_timeout`).

        Returns:
            A ``pyarrow.Table``.

        Raises:
            ModuleNotFoundError: pyarrow is not installed.
            QueryError: The text is not exactly one read-only query, it failed, or it
                exceeded its time limit (it is stopped).
            TypeError: `timeout` is not a number or None.
            ValueError: `timeout` is not above 0.
            EngineClosed: The engine is closed, or closed while the query ran.
        """
        return await self._user_query(query, params, timeout, _arrow)

    async def _user_query(self, query: str, params: Sequence[Any] | dict[str, Any] | None,
                          timeout: float | None, fetch: Callable[[UserQuery], T]) -> T:
        timed = self.open_query(query, params, timeout, ENGINE_ADVICE)
        try:
            return await timed.call(fetch)
        finally:
            timed.close()

    def open_query(self, query: str, params: Sequence[Any] | dict[str, Any] | None,
                   timeout: object, advice: str) -> TimedQuery:
        """Internal (the channel server): a user query, not started, under its time limit.

        Raises:
            EngineClosed: The engine is closed.
        """
        self._check_open(allow_closing=True)
        return self._readers.timed(
            lambda limit: self._store.read_query(query, params, limit), timeout, advice)

    # -- internals --

    @staticmethod
    def _listed(slot: RunSlot) -> RunInfo:
        """A run as `runs` lists it: one undecodable output must not hide the others."""
        try:
            return slot.info(decode)
        except EncodingError as error:
            log.warning("run %r is listed without its output, which cannot be decoded: %s",
                        slot.run_id, error)
            return slot.info(lambda data: None)

    async def _history_of(self, run_id: str) -> tuple[str, list[Record]]:
        """Return a run's workflow and every record (one read, by the run's index).

        Raises:
            RunNotFound: No such run (or its start is not durable yet).
        """
        records = await in_thread(self._store.load_history, run_id)
        started = started_record(records)
        if started is None or started.workflow is None:
            raise RunNotFound(run_id)
        return started.workflow, records

    def _check_open(self, allow_closing: bool = False) -> None:
        self._scheduler.check_open(allow_closing)


def _all_rows(query: UserQuery) -> list[tuple[Any, ...]]:
    return query.rows()


def _arrow(query: UserQuery) -> Any:
    return query.arrow()
