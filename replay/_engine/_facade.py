"""The trio engine: the `Engine` API, run scheduling, parking, timers and signals.

The engine owns one database (`Store`), one group-commit flusher (`Committer`), one
timer task (`Timers`), and a nursery in which each *executing* run has one task
(`Runner.drive`). A run that sleeps or is suspended holds no task: it is parked, with
at most its paused generator in a bounded cache (`ParkedCache`). Every run's state is
kept in memory as a `RunSlot`, changed only by committed records.

One place at a time: `RunSlot.active` is set (synchronously, before any await) by
whatever starts a run's task — `start`, `resume`, a timer, a signal, recovery — and
cleared by the task when it finishes or parks, so two copies of one run never execute.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import trio

from replay._codec import decode, encode, to_json
from replay._codec._export import write_history
from replay._core._history import Record, RunHistory
from replay._engine._clock import EngineClock, busy_thread, in_thread
from replay._engine._committer import Committer
from replay._engine._driver import Runner, input_of
from replay._engine._handle import (
    Run,
    check_signal,
    checked_key,
    checked_run_id,
    checked_state,
    event_of,
    misdirected_signal,
)
from replay._engine._parking import Parked, ParkedCache
from replay._engine._serving import STOP_SIGNALS, wait_for_stop_signal
from replay._engine._slots import RunSlot
from replay._engine._steps import StepRunner
from replay._engine._timers import Timers
from replay._engine._workers import WorkerPool
from replay._errors import EncodingError, EngineClosed, RunIdConflict, RunNotFound
from replay._retry import Retry
from replay._store import ENGINE_ADVICE, Readers, ReadQuery, Store, TimedQuery
from replay._types import FINISHED, Event, RunInfo, RunState
from replay._workflows import Registry

log = logging.getLogger("replay")
T = TypeVar("T")

class Engine:
    """A durable-execution engine bound to one database; get one from `open_engine`."""

    def __init__(self, store: Store, registry: Registry, clock: EngineClock, last_seq: int,
                 default_retry: Retry | None, max_threads: int, cache_size: int,
                 always_replay: bool = False, max_interruptions: int = 3,
                 query_timeout: float | None = 30.0) -> None:
        self._store = store
        self._readers = Readers(busy_thread, query_timeout)
        self._registry = registry
        self._clock = clock
        self._committer = Committer(store, clock, last_seq)
        self._timers = Timers(clock, self._on_timer)
        self._parked = ParkedCache(cache_size, self._forget_memo)
        self._slots: dict[str, RunSlot] = {}
        self._closing = False
        self._closed = False
        self._nursery: trio.Nursery | None = None
        self._workers = WorkerPool(max_threads)
        steps = StepRunner(self._commit, self._enqueue, clock, default_retry, self._workers,
                           max_interruptions)
        self._runner = Runner(registry.functions, self._load, self._commit, steps, clock,
                              self._park, lambda: self._closing, strict_replay=always_replay)

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
        run_id = uuid.uuid4().hex if run_id is None else checked_run_id(run_id)
        existing = self._slots.get(run_id)
        if existing is not None:
            return await self._existing(existing, name)
        data = encode(args, key="input")
        slot = RunSlot(run_id, name, RunState.RUNNING, self._clock.now())
        slot.history = RunHistory()
        slot.active = True
        slot.needs_start_mark = False  # no earlier process ran it
        self._slots[run_id] = slot
        record = Record(run_id, name, "run", "started", value=data,
                        value_json=to_json(list(args)), run_state="running")
        try:
            await self._commit(slot, record)
        except BaseException:
            del self._slots[run_id]
            raise
        slot.created_at = record.recorded_at or slot.created_at
        slot.mark_durable()
        self._spawn(slot, data)
        return Run(self, run_id, name)

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
        slot = self._slot(run_id)
        self._registry.name_of(slot.workflow)
        await self._let_go(slot)
        if slot.state is RunState.COMPLETED or slot.active:
            return Run(self, run_id, slot.workflow)
        slot.active = True
        self._parked.drop(run_id)
        try:
            async with slot.lock:  # no signal may commit between the load and the memo
                records = await self._load(run_id)
                history = RunHistory(records)
                voided = None
                if slot.state is RunState.FAILED and slot.error_type == "replay.StepFailed":
                    voided = history.unhandled_failure()
                slot.history = history
                retried = {"retried_step": voided}
                # A parked run keeps its state until the replay records a new one.
                state = "running" if slot.state in FINISHED else None
                resumed = Record(
                    run_id, slot.workflow, "run", "resumed", name=voided,
                    value=encode(retried, key="resumed"), value_json=to_json(retried),
                    run_state=state)
                # The replay must see the resumed record (it voids the failure) at once:
                # it runs while the record commits, so that both can share one commit.
                # Applying it again once it is durable changes nothing more.
                history.apply(resumed)
                durable = self._committer.enqueue(resumed, slot.apply)
        except BaseException:
            slot.active = False
            raise
        self._spawn(slot, input_of(records))  # the memo is loaded already
        await durable.wait()
        return Run(self, run_id, slot.workflow)

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
        slot = self._slot(run_id)
        key = checked_key(key)
        data = encode(payload, key=key)
        while not await self._signal_now(slot, key, data, payload):
            pass  # the run began to park again meanwhile: wait for it, then decide
        warning = misdirected_signal(slot.info(decode), key)
        if warning is not None:
            log.warning(warning)
        return Run(self, run_id, slot.workflow)

    async def _signal_now(self, slot: RunSlot, key: str, data: bytes, payload: Any) -> bool:
        """Commit the signal and wake the run if it waits for it; False: try again."""
        await self._let_go(slot)
        async with slot.lock:
            if slot.letting_go:
                return False
            parked_here = (slot.state is RunState.SUSPENDED and slot.waiting_for == key
                           and not slot.active)
            history = slot.history
            if history is None:
                # A run parked on this very key has no value for it yet, and its mailbox
                # limit does not apply: no need to load its history to decide.
                history = (RunHistory() if parked_here
                           else RunHistory(await self._load(slot.run_id)))
            check_signal(slot, history, key, parked_here)
            # A run whose workflow is not registered here is left as it is: the signal
            # waits in its mailbox for an engine that can run it.
            parked_here = parked_here and slot.workflow in self._registry.functions
            if parked_here:
                slot.active = True  # claimed now: no timer or resume may start it meanwhile
            try:
                await self._commit(slot, Record(
                    slot.run_id, slot.workflow, "signal", "signalled", key=key, value=data,
                    value_json=to_json(payload),
                    run_state="running" if parked_here else None))
            except BaseException:
                slot.active = slot.active and not parked_here
                raise
            if parked_here:
                self._wake(slot)
        return True

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
            EncodingError: The run's recorded output cannot be decoded (a damaged
                value, or a type that is no longer registered).
        """
        slot = self._slot(run_id)
        try:
            return slot.info(decode)
        except EncodingError as error:
            raise EncodingError(
                f"run {run_id!r}: its recorded output cannot be decoded: {error}",
                key="output") from error

    async def runs(self, state: RunState | str | None = None, workflow: str | None = None,
                   limit: int = 1000) -> list[RunInfo]:
        """List runs, newest first by `created_at`.

        A run whose recorded output cannot be decoded is listed with ``output=None``
        (and a warning on the ``replay`` logger); `status` of it says why.

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
        slots = [s for s in self._slots.values() if s.durable
                 and (wanted is None or s.state is wanted)
                 and (workflow is None or s.workflow == workflow)]
        slots.sort(key=lambda s: s.created_at, reverse=True)
        return [self._listed(slot) for slot in slots[:limit]]

    async def history(self, run_id: str) -> list[Event]:
        """Return every event of one run in order, values decoded.

        Raises:
            RunNotFound: No such run.
            EngineClosed: The engine is closed.
        """
        self._check_open(allow_closing=True)
        self._slot(run_id)
        records = await in_thread(self._store.load_history, run_id)
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
        slot = self._slot(run_id)
        records = await in_thread(self._store.load_history, run_id)
        await in_thread(write_history, Path(path), slot.run_id, slot.workflow, records)

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
        return self._clock.now()

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
        timed = self._open_query(query, params, timeout, ENGINE_ADVICE)
        try:
            return await timed.call(fetch)
        finally:
            timed.close()

    def _open_query(self, query: str, params: Sequence[Any] | dict[str, Any] | None,
                    timeout: object, advice: str) -> TimedQuery:
        """Return a user query (not started) under its time limit, in the query threads."""
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
        if slot.workflow != name:
            raise RunIdConflict(
                f"run_id {slot.run_id!r} is already used by a run of workflow "
                f"{slot.workflow!r}, not {name!r}; choose another run_id",
                run_id=slot.run_id,
            )
        await slot.wait_durable()
        return Run(self, slot.run_id, name)

    async def _let_go(self, slot: RunSlot) -> None:
        """Wait while the run's task has recorded a park or an end but not let go yet.

        In that window the run's state says it waits (or is finished) while its task
        still owns it; a call that decided from the state then (`resume`: "executing,
        nothing to do"; `signal`: "busy, keep it in the mailbox") would be lost. A run
        that is really executing (woken by a deadline, or replaying after `resume`)
        is not waited for.
        """
        while slot.letting_go:
            await slot.wait_changed()

    def _slot(self, run_id: str) -> RunSlot:
        slot = self._slots.get(run_id)
        if slot is None or not slot.durable:
            raise RunNotFound(run_id)
        return slot

    def _check_open(self, allow_closing: bool = False) -> None:
        if self._closed or (self._closing and not allow_closing):
            raise EngineClosed("the engine is closed; open a new one with replay.open_engine()")

    async def _commit(self, slot: RunSlot, record: Record) -> None:
        await self._committer.commit(record, slot.apply)

    def _enqueue(self, slot: RunSlot, record: Record) -> trio.Event:
        return self._committer.enqueue(record, slot.apply)

    async def _load(self, run_id: str) -> list[Record]:
        """Load a run's records for its memo (not for `history`: no timestamps)."""
        workflow = self._slots[run_id].workflow
        return await in_thread(self._store.load_memo, run_id, workflow)

    async def _wait_for(self, run_id: str, states: frozenset[RunState]) -> RunInfo:
        slot = self._slot(run_id)
        # A suspended run that is executing (replaying after `resume`) has not settled.
        while slot.state not in states or (slot.active and slot.state is RunState.SUSPENDED):
            if self._closed:
                raise EngineClosed(
                    f"the engine closed while waiting for run {run_id!r}; it continues "
                    "when an engine opens the database again"
                )
            await slot.wait_changed()
        return slot.info(decode)

    async def _wait_idle(self, run_id: str) -> RunInfo:
        """Wait until the run's task has let go (it ended or parked); for `replay resume`.

        Raises:
            RunNotFound: No such run.
        """
        slot = self._slot(run_id)
        while slot.active and not self._closed:
            await slot.wait_changed()
        return slot.info(decode)

    def _spawn(self, slot: RunSlot, input_data: bytes | None, parked: Parked | None = None,
               replaying: bool = False) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._runner.drive, slot, input_data, parked, replaying,
                                 name=f"replay run {slot.run_id}")

    def _park(self, slot: RunSlot, parked: Parked, wake_at: datetime | None) -> None:
        """Keep a parked run's execution (maybe) and schedule its deadline."""
        self._parked.put(slot.run_id, parked)
        if wake_at is not None:
            self._timers.add(slot.run_id, wake_at)
        slot.drop_idle_lock()
        slot.notify()

    def _forget_memo(self, run_id: str) -> None:
        slot = self._slots.get(run_id)
        if slot is not None and not slot.active:
            slot.history = None

    def _on_timer(self, run_id: str) -> None:
        slot = self._slots.get(run_id)
        if slot is None or slot.active or self._closing:
            return
        if slot.state not in (RunState.SLEEPING, RunState.SUSPENDED):
            return
        if slot.wake_at is None or slot.wake_at > self._clock.now():
            return  # an old entry: the run has moved on since
        self._wake(slot)

    def _wake(self, slot: RunSlot) -> None:
        """Continue a parked run in a new task (its cached execution, if any)."""
        slot.active = True
        parked = self._parked.take(slot.run_id)
        self._spawn(slot, None, parked=parked, replaying=parked is None)

    async def _start_services(self, services: trio.Nursery) -> None:
        await services.start(self._committer.run)
        await services.start(self._timers.run)

    async def _serve(self, runs: trio.Nursery) -> None:
        """Load every run and pick up whatever was pending, in the `runs` nursery."""
        self._nursery = runs
        for row in await in_thread(self._store.load_runs):
            slot = RunSlot(row.run_id, row.workflow, RunState(row.state), row.created_at)
            slot.restore(row)
            self._slots[row.run_id] = slot
        signalled = set(await in_thread(self._store.signalled_while_suspended))
        for slot in self._slots.values():
            if slot.state in FINISHED:
                continue
            if slot.workflow not in self._registry.functions:
                log.warning("run %r of workflow %r is left as it is: the workflow is not "
                            "registered with this engine", slot.run_id, slot.workflow)
                continue
            if slot.state is RunState.RUNNING or slot.run_id in signalled:
                slot.active = True
                self._spawn(slot, None)
            elif slot.wake_at is not None:
                self._timers.add(slot.run_id, slot.wake_at)

    def _begin_shutdown(self) -> None:
        """Start no new command (parked runs hold no task and simply stay parked)."""
        self._closing = True

    def _runs_ended(self) -> None:
        """Every run's task has ended: the committer may commit what is left and stop."""
        self._committer.runs_ended()

    def _mark_closed(self) -> None:
        self._closed = True
        self._workers.close()
        self._parked.clear()
        for slot in self._slots.values():
            slot.notify()
