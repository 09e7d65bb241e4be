"""`Engine`: the public face of one open database, a thin layer over the scheduler.

It checks arguments, encodes values and answers queries (the read side is in
`_reading`, `EngineReads`); the runs themselves belong to
the `Scheduler` (`_scheduler`), which alone claims, parks, wakes and lets them go, and
whose run machines (`replay._core`) decide what each workflow means.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from os import PathLike
from typing import Any, NamedTuple, TypeVar

from replay._checks import checked_duration, checked_key, checked_run_id
from replay._codec import decode, encode, to_json
from replay._core._decisions import Policy
from replay._core._records import Encoded
from replay._core._signals import misdirected_signal
from replay._engine._clock import EngineClock, busy_thread
from replay._engine._committer import Committer
from replay._engine._handle import Run
from replay._engine._reading import EngineReads
from replay._engine._retention import (
    DEFAULT_OLDER_THAN,
    DEFAULT_STATES,
    Retention,
    checked_request,
)
from replay._engine._scheduler import Scheduler
from replay._engine._serving import STOP_SIGNALS, wait_for_stop_signal
from replay._engine._shared import calling, number_after
from replay._engine._slots import RunSlot
from replay._engine._steps import StepCaller
from replay._engine._workers import WorkerPool
from replay._errors import RunIdConflict
from replay._retry import Retry
from replay._store import EngineStore, Readers
from replay._types import PurgeReport, RunState
from replay._workflows import Registry

log = logging.getLogger("replay")
T = TypeVar("T")

ONE_ATTEMPT = Retry(attempts=1)


class Engine(EngineReads):
    """A durable-execution engine bound to one database; get one from `open_engine`."""

    def __init__(self, store: EngineStore, registry: Registry, clock: EngineClock, last_seq: int,
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
        self._ui_url: str | None = None  # set by open_engine(ui=...) once it listens

    @property
    def ui_url(self) -> str | None:
        """The address of the engine's web view (``open_engine(ui=...)``), else None."""
        return self._ui_url

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
        async with calling(self._scheduler, run_id, "resume") as held:
            if held is not None:
                return Run(self._scheduler, run_id, held.workflow)
            slot = await self._scheduler.runs.adopt(run_id, keep_finished=True)
            try:
                self._registry.name_of(slot.workflow)
                await number_after(self._scheduler, slot.seq)
            except BaseException:
                self._scheduler.runs.forget_if_idle(slot)
                raise
            await self._scheduler.recovery.resume(slot)
            return Run(self._scheduler, run_id, slot.workflow)

    async def cancel(self, run_id: str, reason: Any = None) -> Run:
        """Cancel the run: `Cancelled` is thrown in at the command it waits on.

        The request is durable when this returns, and a parked run wakes to take it
        (a run another engine holds on a shared PostgreSQL schema: from that engine).
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
        return await self._stop(run_id, reason, self._scheduler.cancel, "cancel")

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
        return await self._stop(run_id, reason, self._scheduler.terminate, "terminate")

    async def _stop(self, run_id: str, reason: Any,
                    how: Callable[[RunSlot, Encoded], Awaitable[object]], action: str) -> Run:
        """Cancel or terminate a run (`how`), with `reason` recorded."""
        self._check_open()
        encoded = Encoded(encode(reason, key="reason"), to_json(reason))
        async with calling(self._scheduler, run_id, action, value=encoded) as held:
            if held is not None:
                return Run(self._scheduler, run_id, held.workflow)
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
        mailbox. A run suspended on the key wakes at once. On a PostgreSQL schema
        shared by several engines, a run another engine holds gets the signal from
        that engine: this returns once it is queued in the database, and a refusal
        only the holder can see (the key already has a value) is logged there.

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
        encoded = Encoded(encode(payload, key=key), to_json(payload))
        async with calling(self._scheduler, run_id, "signal", key, encoded) as held:
            if held is not None:
                return Run(self._scheduler, run_id, held.workflow)
            slot = await self._scheduler.runs.adopt(run_id)
            await self._scheduler.signal(slot, key, encoded)
        # Only a suspended run can wait on another key (and building its info costs).
        if slot.status.state is RunState.SUSPENDED:
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

    # -- internals --

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


class Internals(NamedTuple):
    """What is behind an `Engine`: for `open_engine`, the channel server and testing."""

    scheduler: Scheduler
    store: EngineStore
    workers: WorkerPool


def internals(engine: Engine) -> Internals:
    """Internal: the parts behind `engine`.

    The one sanctioned way for replay's own modules to reach past the public API.
    """
    return Internals(engine._scheduler, engine._store, engine._workers)
