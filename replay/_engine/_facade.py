"""`Engine`: the public face of one open database, a thin layer over the scheduler.

It checks arguments, encodes values and answers queries; the runs themselves belong to
the `Scheduler` (`_scheduler`), which alone claims, parks, wakes and lets them go, and
whose run machines (`replay._core`) decide what each workflow means.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from replay._checks import checked_duration, checked_key, checked_run_id, checked_state
from replay._codec import decode, encode, to_json
from replay._codec._export import event_of, write_history
from replay._core._decisions import Policy
from replay._core._records import Encoded, Record, started_record
from replay._core._signals import misdirected_signal
from replay._engine._clock import EngineClock, busy_thread, in_thread
from replay._engine._committer import Committer
from replay._engine._handle import Run
from replay._engine._retention import (
    DEFAULT_OLDER_THAN,
    DEFAULT_STATES,
    Retention,
    checked_request,
)
from replay._engine._scheduler import Scheduler
from replay._engine._serving import STOP_SIGNALS, wait_for_stop_signal
from replay._engine._slots import RunSlot
from replay._engine._steps import StepCaller
from replay._engine._watch import Watch, checked_buffer, checked_states
from replay._engine._watching import DEFAULT_BUFFER
from replay._engine._workers import WorkerPool
from replay._errors import EncodingError, RunIdConflict, RunNotFound
from replay._retry import Retry
from replay._store import ENGINE_ADVICE, Readers, ReadQuery, Store, TimedQuery
from replay._types import Event, PurgeReport, RunInfo, RunState
from replay._workflows import Registry

log = logging.getLogger("replay")
T = TypeVar("T")

ONE_ATTEMPT = Retry(attempts=1)


class Engine:
    """A durable-execution engine bound to one database; get one from `open_engine`."""

    def __init__(self, store: Store, registry: Registry, clock: EngineClock, last_seq: int,
                 default_retry: Retry | None, max_threads: int, cache_size: int,
                 always_replay: bool = False, max_interruptions: int = 3,
                 query_timeout: float | None = 30.0, code_version: str | None = None,
                 generations: dict[str, int] | None = None) -> None:
        self._store = store
        self._readers = Readers(busy_thread, query_timeout)
        self._registry = registry
        self._workers = WorkerPool(max_threads)
        policy = Policy(default_retry or ONE_ATTEMPT, max_interruptions,
                        frozenset(registry.functions), code_version)
        steps = StepCaller(self._workers)
        self._scheduler = Scheduler(
            store, registry, clock, Committer(store, clock, last_seq, generations),
            steps, policy, cache_size, strict_replay=always_replay,
            opened_at=last_seq)
        steps.on_progress = self._scheduler.publish_progress

    # -- public API --

    async def start(self, workflow: Callable[..., Any] | str, *args: Any,
                    run_id: str | None = None, timeout: float | timedelta | None = None
                    ) -> Run:
        """Start a run of `workflow` with `args` as its input (idempotent by `run_id`).

        Starting an existing `run_id` of the same workflow returns the existing run
        and ignores `args`. The input, the ``run/started`` event and the first state
        are committed together before this returns.

        Args:
            workflow: A registered workflow function, or its name.
            *args: The run's input; must be encodable.
            run_id: The run's id; a unique one is generated when omitted.
            timeout: The run's deadline, from now (seconds or a `timedelta`): if it has
                not finished by then it is cancelled, as by `cancel`.

        Returns:
            A `Run` handle.

        Raises:
            WorkflowNotRegistered: `workflow` is not registered with this engine.
            RunIdConflict: `run_id` belongs to a run of another workflow.
            EncodingError: An argument cannot be recorded; nothing is recorded.
            TypeError: `run_id` is not a str, or `timeout` is not a duration.
            ValueError: `run_id` is empty, or `timeout` is not a finite duration > 0.
            EngineClosed: The engine is closed or closing.
        """
        self._check_open()
        if timeout is not None:
            timeout = checked_duration("engine.start(..., timeout=...)", "timeout", timeout,
                                       positive=True)
        name = self._registry.name_of(workflow)
        run_id_given = run_id is not None
        run_id = uuid.uuid4().hex if run_id is None else checked_run_id(run_id)
        existing = self._scheduler.runs.find(run_id)
        if existing is not None:
            return await self._existing(existing, name)
        if run_id_given:
            stored = await self._scheduler.runs.workflow_of(run_id)  # a finished run, maybe
            if stored is not None:
                return self._stored(run_id, stored, name)
            existing = self._scheduler.runs.find(run_id)  # started meanwhile?
            if existing is not None:
                return await self._existing(existing, name)
        arguments = Encoded(encode(args, key="input"), to_json(list(args)))
        deadline = None if timeout is None else self._scheduler.clock.now() + timeout
        await self._scheduler.start(run_id, name, arguments, deadline)
        return Run(self._scheduler, run_id, name)

    async def resume(self, run_id: str) -> Run:
        """Retry a failed run, or replay a parked one now with the current code.

        The unhandled step failure that ended a failed run runs again with a fresh
        retry budget; every other recorded outcome replays. A sleeping or suspended
        run replays now (useful after a deploy that removed the key it waits on) and
        parks again if it reaches the same wait. Resuming a completed run, or one
        executing right now, changes nothing.

        Raises:
            RunNotFound: No such run.
            WorkflowNotRegistered: The run's workflow is not registered.
            EngineClosed: The engine is closed or closing.
        """
        self._check_open()
        slot = await self._scheduler.runs.adopt(run_id, keep_finished=True)
        try:
            self._registry.name_of(slot.workflow)
        except BaseException:
            self._scheduler.runs.forget_if_idle(slot)
            raise
        await self._scheduler.resume(slot)
        return Run(self._scheduler, run_id, slot.workflow)

    async def cancel(self, run_id: str, reason: Any = None) -> Run:
        """Cancel the run: `Cancelled` is thrown in at the command it waits on.

        The request is durable when this returns, and a parked run wakes to take it.
        The workflow may catch `Cancelled` and yield compensation commands, which run
        normally; if `Cancelled` escapes, the run ends ``cancelled``. Work under way at
        that command is cancelled as for a race's losing member. A second `cancel`
        changes nothing. When the run ends, its child runs still running follow their
        ``on_parent_close``.

        Args:
            run_id: The run.
            reason: Why; any encodable value, passed on as `Cancelled.reason`.

        Raises:
            RunNotFound: No such run.
            RunFinished: The run is finished.
            EncodingError: `reason` cannot be recorded; nothing is recorded.
            EngineClosed: The engine is closed or closing.
        """
        return await self._stop(run_id, reason, self._scheduler.cancel)

    async def terminate(self, run_id: str, reason: Any = None) -> Run:
        """End the run ``cancelled`` at once, running none of its workflow code.

        For a run whose compensation hangs: its step attempt under way is abandoned
        (a thread cannot be stopped: it finishes, its result dropped), its generator
        is closed, and ``run/cancelled`` is recorded. Its child runs follow their
        ``on_parent_close``.

        Args:
            run_id: The run.
            reason: Why; any encodable value, recorded with the end.

        Raises:
            RunNotFound: No such run.
            RunFinished: The run is finished.
            EncodingError: `reason` cannot be recorded; nothing is recorded.
            EngineClosed: The engine is closed or closing.
        """
        return await self._stop(run_id, reason, self._scheduler.terminate)

    async def _stop(self, run_id: str, reason: Any,
                    how: Callable[[RunSlot, Encoded], Awaitable[object]]) -> Run:
        """Cancel or terminate a run (`how`), with `reason` recorded."""
        self._check_open()
        encoded = Encoded(encode(reason, key="reason"), to_json(reason))
        slot = await self._scheduler.runs.adopt(run_id, keep_finished=True)
        try:
            await how(slot, encoded)
        finally:
            self._scheduler.runs.forget_if_idle(slot)  # a finished run read to say so
        return Run(self._scheduler, run_id, slot.workflow)

    async def purge(self, *, older_than: timedelta | float = DEFAULT_OLDER_THAN,
                    states: Iterable[RunState | str] = DEFAULT_STATES,
                    workflow: Callable[..., Any] | str | None = None,
                    archive_to: str | PathLike[str] | None = None) -> PurgeReport:
        """Delete finished runs that ended more than `older_than` ago.

        A run is deleted whole, with its child runs (a child only with its parent,
        and a parent only once all its children have finished); a run that has not
        finished is never deleted. Runs that continued as new also lose the events of
        generations replaced more than `older_than` ago, except what the run still
        needs (its start, its newest generation's start, signals still in its mailbox,
        its newest note). Deletes run in batches between the engine's own commits, so
        runs keep executing meanwhile; a run resumed before its batch is deleted stays.

        Args:
            older_than: How long ago a run must have finished (a `timedelta` or
                seconds, >= 0).
            states: Which finished states to delete: any of ``"completed"``,
                ``"failed"``, ``"cancelled"``.
            workflow: Only runs of this workflow (a function or its name).
            archive_to: A new Parquet file to write the deleted events to first
                (the columns of ``replay_events``); nothing is deleted if it cannot be
                written. No file is written when there is nothing to delete.

        Returns:
            A `PurgeReport` of what was deleted.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: `older_than` is negative, `states` is empty or names an
                unknown or unfinished state, or `archive_to` exists or cannot be
                written.
            OSError: Writing the archive failed (nothing was deleted).
            DatabaseError: A delete failed; the batches before it stay deleted.
            EngineClosed: The engine is closed or closing.
        """
        self._check_open()
        request = checked_request(older_than, states, workflow, archive_to)
        return await Retention(self._scheduler, self._store).purge(request)

    async def signal(self, run_id: str, key: str, payload: Any = None) -> Run:
        """Deliver `payload` to the run's `Suspend(key)`; return once it is durable.

        A signal that arrives before the run reaches the key waits in the run's
        mailbox. A run suspended on the key wakes at once.

        Raises:
            RunNotFound: No such run.
            SignalRejected: The run is finished, the key already has a value (a signal
                or a timeout), the key was recorded as another kind of command, or the
                mailbox holds 100 undelivered signals.
            EncodingError: The payload cannot be recorded; nothing is recorded.
            TypeError: `key` is not a str.
            ValueError: `key` is empty.
            EngineClosed: The engine is closed or closing.
        """
        self._check_open()
        key = checked_key(key)
        slot = await self._scheduler.runs.adopt(run_id)
        await self._scheduler.signal(slot, key, Encoded(encode(payload, key=key), to_json(payload)))
        warning = misdirected_signal(slot.info(decode), key)
        if warning is not None:
            log.warning(warning)
        return Run(self._scheduler, run_id, slot.workflow)

    def get_run(self, run_id: str) -> Run:
        """Return a handle to an existing run.

        Raises:
            RunNotFound: No such run.
        """
        slot = self._scheduler.slot(run_id)
        return Run(self._scheduler, run_id, slot.workflow)

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
        stop: ``break``, or ``async with engine.watch() as updates:``).

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
                     buffer=checked_buffer(buffer), workflow=name, states=chosen)

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
        return await self._user_query(query, params, timeout, ReadQuery.rows)

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

    async def serve_forever(self, signals: Iterable[int] = STOP_SIGNALS) -> int:
        """Keep the engine running until SIGTERM or SIGINT arrives; return its number.

        Make it the last line of the ``async with open_engine(...)`` body of a
        service: when a signal arrives it returns, the body ends, and the engine stops
        cleanly (running steps get `shutdown_timeout` to finish; what still runs then
        is recorded as abandoned and runs again at the next open, uncharged). A second
        Ctrl-C after that raises `KeyboardInterrupt` and stops at once.

        Args:
            signals: The signal numbers to stop on.

        Returns:
            The number of the signal that arrived.

        Raises:
            RuntimeError: Not called from the main thread.
            ValueError: `signals` is empty.
            EngineClosed: The engine is closed or closing.
        """
        self._check_open()
        return await wait_for_stop_signal(signals)

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
        return await self._user_query(query, params, timeout, ReadQuery.arrow)

    async def _user_query(self, query: str, params: Sequence[Any] | dict[str, Any] | None,
                          timeout: float | None, fetch: Callable[[ReadQuery], T]) -> T:
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
        return self._readers.timed(lambda: self._store.read_query(query, params), timeout,
                                   advice)

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

    async def _existing(self, slot: RunSlot, name: str) -> Run:
        run = self._stored(slot.run_id, slot.workflow, name)
        await slot.wait_durable()
        return run

    def _stored(self, run_id: str, workflow: str, name: str) -> Run:
        """The existing run `run_id` of `workflow`, asked for as a run of `name`."""
        if workflow != name:
            raise RunIdConflict(
                f"run_id {run_id!r} is already used by a run of workflow "
                f"{workflow!r}, not {name!r}; choose another run_id",
                run_id=run_id,
            )
        return Run(self._scheduler, run_id, name)

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



class Internals(NamedTuple):
    """What is behind an `Engine`: for `open_engine`, the channel server and testing."""

    scheduler: Scheduler
    store: Store
    workers: WorkerPool


def internals(engine: Engine) -> Internals:
    """Internal: the parts behind `engine`.

    The one sanctioned way for replay's own modules to reach past the public API.
    """
    return Internals(engine._scheduler, engine._store, engine._workers)
