"""The trio engine: `open_engine`, the `Engine` API and `Run` handles.

The engine owns one database (`Store`), one group-commit flusher (`Committer`), and
a nursery in which each active run has one task (`Runner.drive`). Every run's state is
kept in memory as a `RunSlot`, changed only by committed records.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from os import PathLike
from typing import Any

import trio

from replay._clock import EngineClock, in_thread
from replay._codec import decode, encode, to_json
from replay._commands import Retry
from replay._committer import Committer
from replay._errors import (
    EngineClosed,
    RunIdConflict,
    RunNotFound,
    WorkflowFailed,
)
from replay._history import Event, Record, RunHistory
from replay._model import FINISHED, SETTLED, RunInfo, RunSlot, RunState
from replay._opening import database_path, open_store, validate_options
from replay._runner import Runner
from replay._steps import StepRunner
from replay._store import Store
from replay._workflows import Registry

log = logging.getLogger("replay")


class Run:
    """A handle to one run of an engine.

    Attributes:
        run_id: The run's id.
        workflow: The run's workflow name.
    """

    __slots__ = ("_engine", "run_id", "workflow")

    def __init__(self, engine: Engine, run_id: str, workflow: str) -> None:
        self._engine = engine
        self.run_id = run_id
        self.workflow = workflow

    def __repr__(self) -> str:
        return f"Run(run_id={self.run_id!r}, workflow={self.workflow!r})"

    async def wait(self) -> RunInfo:
        """Wait until the run completes, fails, is cancelled or is suspended.

        Sleeps and retry back-offs are waited through.

        Raises:
            EngineClosed: The engine closed first.
        """
        return await self._engine._wait_for(self.run_id, SETTLED)

    async def result(self) -> Any:
        """Wait for the run to finish and return its output.

        Raises:
            WorkflowFailed: The run failed.
            EngineClosed: The engine closed first.
        """
        info = await self._engine._wait_for(self.run_id, FINISHED)
        if info.state is RunState.COMPLETED:
            return info.output
        slot = self._engine._slot(self.run_id)
        message = "" if slot.message is None else str(decode(slot.message))
        raise WorkflowFailed(
            self.run_id, info.error_type or "builtins.Exception", message, info.error or ""
        )


class Engine:
    """A durable-execution engine bound to one database; get one from `open_engine`."""

    def __init__(self, store: Store, registry: Registry, clock: EngineClock, last_seq: int,
                 default_retry: Retry | None, max_threads: int) -> None:
        self._store = store
        self._registry = registry
        self._clock = clock
        self._committer = Committer(store, clock, last_seq)
        self._slots: dict[str, RunSlot] = {}
        self._closing = False
        self._closed = False
        self._nursery: trio.Nursery | None = None
        self._steps = StepRunner(self._commit, clock, default_retry,
                                 trio.CapacityLimiter(max_threads))
        self._runner = Runner(registry.functions, self._load, self._commit, self._steps,
                              lambda: self._closing)

    # -- public API --

    async def start(self, workflow: Callable[..., Any] | str, *args: Any,
                    run_id: str | None = None) -> Run:
        """Start a run of `workflow` with `args` as its input (idempotent by `run_id`).

        Starting an existing `run_id` of the same workflow returns the existing run
        and ignores `args`. The input, the ``run/started`` event and the first state
        are committed together before this returns.

        Args:
            workflow: A registered workflow function, or its name.
            *args: The run's input; must be encodable.
            run_id: The run's id; a unique one is generated when omitted.

        Returns:
            A `Run` handle.

        Raises:
            WorkflowNotRegistered: `workflow` is not registered with this engine.
            RunIdConflict: `run_id` belongs to a run of another workflow.
            EncodingError: An argument cannot be recorded; nothing is recorded.
            TypeError: `run_id` is not a str.
            ValueError: `run_id` is empty.
            EngineClosed: The engine is closed or closing.
        """
        self._check_open()
        name = self._registry.name_of(workflow)
        run_id = uuid.uuid4().hex if run_id is None else _checked_run_id(run_id)
        existing = self._slots.get(run_id)
        if existing is not None:
            return await self._existing(existing, name)
        data = encode(args, key="input")
        slot = RunSlot(run_id, name, RunState.RUNNING, self._clock.now())
        slot.history = RunHistory()
        slot.active = True
        self._slots[run_id] = slot
        record = Record(run_id, name, "run", "started", value=data,
                        value_json=to_json(list(args)), run_state="running")
        try:
            await self._commit(slot, record)
        except BaseException:
            del self._slots[run_id]
            raise
        slot.created_at = record.recorded_at or slot.created_at
        slot.durable.set()
        self._spawn(slot, data, recovering=False)
        return Run(self, run_id, name)

    async def resume(self, run_id: str) -> Run:
        """Retry a failed run, or replay a parked one now with the current code.

        The unhandled step failure that ended a failed run runs again with a fresh
        retry budget; every other recorded outcome replays. Resuming a completed run,
        or one executing right now, changes nothing.

        Raises:
            RunNotFound: No such run.
            WorkflowNotRegistered: The run's workflow is not registered.
            EngineClosed: The engine is closed or closing.
        """
        self._check_open()
        slot = self._slot(run_id)
        self._registry.name_of(slot.workflow)
        if slot.state is RunState.COMPLETED or slot.active:
            return Run(self, run_id, slot.workflow)
        slot.active = True
        try:
            records = await self._load(run_id)
            history = RunHistory(records)
            voided = None
            if slot.state is RunState.FAILED and slot.error_type == "replay.StepFailed":
                voided = history.unhandled_failure()
            slot.history = history
            retried = {"retried_step": voided}
            await self._commit(slot, Record(
                run_id, slot.workflow, "run", "resumed", name=voided,
                value=encode(retried, key="resumed"), value_json=to_json(retried),
                run_state="running"))
        except BaseException:
            slot.active = False
            raise
        self._spawn(slot, None, recovering=False)
        return Run(self, run_id, slot.workflow)

    def get_run(self, run_id: str) -> Run:
        """Return a handle to an existing run.

        Raises:
            RunNotFound: No such run.
        """
        slot = self._slot(run_id)
        return Run(self, run_id, slot.workflow)

    def status(self, run_id: str) -> RunInfo:
        """Return the run's current durable state.

        Raises:
            RunNotFound: No such run.
        """
        return self._slot(run_id).info(decode)

    async def runs(self, state: RunState | str | None = None, workflow: str | None = None,
                   limit: int = 1000) -> list[RunInfo]:
        """List runs, newest first by `created_at`.

        Args:
            state: Only runs in this state.
            workflow: Only runs of this workflow name.
            limit: At most this many.

        Raises:
            ValueError: `state` is not a run state, or `limit` is negative.
        """
        wanted = None if state is None else _checked_state(state)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        slots = [s for s in self._slots.values() if s.durable.is_set()
                 and (wanted is None or s.state is wanted)
                 and (workflow is None or s.workflow == workflow)]
        slots.sort(key=lambda s: s.created_at, reverse=True)
        return [slot.info(decode) for slot in slots[:limit]]

    async def history(self, run_id: str) -> list[Event]:
        """Return every event of one run in order, values decoded.

        Raises:
            RunNotFound: No such run.
            EngineClosed: The engine is closed.
        """
        self._check_open(allow_closing=True)
        self._slot(run_id)
        records = await self._load(run_id)
        return [_event(record) for record in records]

    async def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None
                  ) -> list[tuple[Any, ...]]:
        """Run one read-only query against the database, off the trio loop.

        Args:
            query: Exactly one ``SELECT``, ``WITH … SELECT`` or ``EXPLAIN``.
            params: Values for ``?`` or ``$name`` placeholders.

        Returns:
            The result rows.

        Raises:
            QueryError: The text is not exactly one read-only query, or it failed.
            EngineClosed: The engine is closed.
        """
        self._check_open(allow_closing=True)
        return await in_thread(self._store.query, query, params)

    def now(self) -> datetime:
        """Return the engine clock's current time (aware, UTC)."""
        return self._clock.now()

    # -- internals --

    async def _existing(self, slot: RunSlot, name: str) -> Run:
        if slot.workflow != name:
            raise RunIdConflict(
                f"run_id {slot.run_id!r} is already used by a run of workflow "
                f"{slot.workflow!r}, not {name!r}; choose another run_id",
                run_id=slot.run_id,
            )
        await slot.durable.wait()
        return Run(self, slot.run_id, name)

    def _slot(self, run_id: str) -> RunSlot:
        slot = self._slots.get(run_id)
        if slot is None or not slot.durable.is_set():
            raise RunNotFound(run_id)
        return slot

    def _check_open(self, allow_closing: bool = False) -> None:
        if self._closed or (self._closing and not allow_closing):
            raise EngineClosed("the engine is closed; open a new one with replay.open_engine()")

    async def _commit(self, slot: RunSlot, record: Record) -> None:
        await self._committer.commit(record)
        slot.apply(record)

    async def _load(self, run_id: str) -> list[Record]:
        return await in_thread(self._store.load_history, run_id)

    async def _wait_for(self, run_id: str, states: frozenset[RunState]) -> RunInfo:
        slot = self._slot(run_id)
        while slot.state not in states:
            if self._closed:
                raise EngineClosed(
                    f"the engine closed while waiting for run {run_id!r}; it continues "
                    "when an engine opens the database again"
                )
            await slot.changed.wait()
        return slot.info(decode)

    def _spawn(self, slot: RunSlot, input_data: bytes | None, recovering: bool) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._runner.drive, slot, input_data, recovering,
                                 name=f"replay run {slot.run_id}")

    async def _serve(self, runs: trio.Nursery) -> None:
        """Load every run and pick up the unfinished ones in the `runs` nursery."""
        self._nursery = runs
        for row in await in_thread(self._store.load_runs):
            slot = RunSlot(row.run_id, row.workflow, RunState(row.state), row.created_at)
            slot.restore(row)
            self._slots[row.run_id] = slot
        for slot in self._slots.values():
            if slot.state in (RunState.RUNNING, RunState.SLEEPING):
                if slot.workflow not in self._registry.functions:
                    log.warning("run %r of workflow %r is left as it is: the workflow is not "
                                "registered with this engine", slot.run_id, slot.workflow)
                    continue
                slot.active = True
                self._spawn(slot, None, recovering=True)

    def _begin_shutdown(self) -> None:
        """Start no new command; stop back-off waits (their deadlines are durable)."""
        self._closing = True
        self._steps.stop()

    def _mark_closed(self) -> None:
        self._closed = True
        for slot in self._slots.values():
            slot.notify()


@asynccontextmanager
async def open_engine(
    path: str | PathLike[str] = ":memory:",
    *,
    workflows: Sequence[Callable[..., Any]],
    default_retry: Retry | None = None,
    durability: str = "fsync",
    always_replay: bool = False,
    shutdown_timeout: float = 30.0,
    lock_timeout: float = 0.0,
    max_threads: int = 40,
) -> AsyncIterator[Engine]:
    """Open an engine on a DuckDB database and run it for the `async with` body.

    On open, runs that were running when the last process stopped continue. On a
    clean exit the engine starts no new commands, lets running steps finish within
    `shutdown_timeout`, and closes the database; if the body is cancelled or raises,
    running steps are abandoned at once (they run again at the next open).

    Args:
        path: The database file (created if missing), or ``":memory:"``.
        workflows: The workflow functions this engine can run.
        default_retry: Retry policy for steps without `retry=` (default: one attempt).
        durability: ``"fsync"`` (every commit is fsynced) or ``"none"`` (tests).
        always_replay: Reserved: drop parked generators so each wake-up replays.
        shutdown_timeout: Seconds running steps get to finish on a clean exit.
        lock_timeout: Seconds to wait for another engine to release the file.
        max_threads: How many sync step functions may run at once.

    Yields:
        The open `Engine`.

    Raises:
        DatabaseLocked: Another engine holds the file after `lock_timeout`.
        DatabaseError: The file is not a usable replay database, or a commit failed.
        TypeError: An option has the wrong type, or a workflow is not a generator function.
        ValueError: An option has a wrong value, or two workflows share a name.
    """
    validate_options(durability, shutdown_timeout, lock_timeout, max_threads, default_retry,
                     always_replay)
    registry = Registry(workflows)
    store, release = await open_store(database_path(path), durability, lock_timeout)
    engine: Engine | None = None
    try:
        last_seq, last_time = await in_thread(store.last_seq_and_time)
        engine = Engine(store, registry, EngineClock(last_time), last_seq, default_retry,
                        max_threads)
        async with _single_errors(), trio.open_nursery() as services:
            await services.start(engine._committer.run)
            async with trio.open_nursery() as runs:
                await engine._serve(runs)
                try:
                    yield engine
                except BaseException:
                    runs.cancel_scope.cancel()
                    raise
                engine._begin_shutdown()
                runs.cancel_scope.deadline = trio.current_time() + shutdown_timeout
            services.cancel_scope.cancel()
    finally:
        if engine is not None:
            engine._mark_closed()
        with trio.CancelScope(shield=True):
            await in_thread(store.close)
        release()


@asynccontextmanager
async def _single_errors() -> AsyncIterator[None]:
    """Raise a lone error out of the engine's nurseries as itself, not as a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) != 1:
            raise
        error, context = leaves[0], leaves[0].__context__
        try:
            raise error
        finally:
            error.__context__ = context


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found


def _checked_run_id(run_id: object) -> str:
    if not isinstance(run_id, str):
        raise TypeError(f"run_id must be a str, got {run_id!r} ({type(run_id).__name__})")
    if not run_id:
        raise ValueError("run_id must be a non-empty string, got ''")
    try:
        run_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"run_id must be valid unicode text, got {run_id!r}") from None
    return run_id


def _checked_state(state: RunState | str) -> RunState:
    try:
        return RunState(state)
    except ValueError:
        names = ", ".join(s.value for s in RunState)
        raise ValueError(f"unknown run state {state!r}; expected one of {names}") from None


def _event(record: Record) -> Event:
    return Event(
        seq=record.seq, run_id=record.run_id, workflow=record.workflow, key=record.key,
        kind=record.kind, event=record.event, attempt=record.attempt,
        value=None if record.value is None else decode(record.value),
        value_json=record.value_json, error_type=record.error_type, error=record.error,
        recorded_at=record.recorded_at,  # type: ignore[arg-type]
        duration_ms=record.duration_ms, wake_at=record.wake_at,
    )
