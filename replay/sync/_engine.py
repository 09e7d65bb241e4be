"""`replay.sync.Engine`: the engine's calls as blocking calls.

Each call passes the engine's open-or-closed check, then runs the public async call of
the same name in the engine's trio thread (the small functions at the end of this
module). `open_engine` and that state, the engine's life, are in `_lifecycle`: the
façade only calls down into it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime, timedelta
from os import PathLike
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import replay
from replay.sync._run import Run
from replay.sync._watch import Watch

if TYPE_CHECKING:
    from replay import Engine as AsyncEngine
    from replay import Run as AsyncRun
    from replay.sync._lifecycle import Lifecycle

T = TypeVar("T")


class Engine:
    """A durable-execution engine for synchronous code; get one from `open_engine`.

    It is `replay.Engine` with blocking calls: each call is carried out by the engine's
    own thread and returns (or raises the same `replay` exception) once done. Any
    number of threads may call at once.

    Closing stops the engine as leaving ``async with replay.open_engine(...)`` does:
    `close` (or a ``with`` block that ends normally) starts no new command, lets
    running steps finish within `shutdown_timeout`, and closes the file; a ``with``
    block left by an exception (Ctrl-C included) stops running steps at once. Steps
    still running are recorded as abandoned and run again at the next open,
    uncharged; everything a call acknowledged is on disk. An engine nobody closed is
    closed when the interpreter exits. After it is closed, every call raises
    `replay.EngineClosed`.
    """

    def __init__(self, life: Lifecycle) -> None:
        self._life = life

    def __repr__(self) -> str:
        state = "closed" if self._life.closed else "open"
        return f"<replay.sync.Engine {state}>"

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._life.close(abort=error is not None, raise_failure=error is None)

    # -- the engine's calls --

    def start(self, workflow: Callable[..., Any] | str, *args: Any,
              run_id: str | None = None, timeout: float | timedelta | None = None) -> Run:
        """Start a run of `workflow` with `args` as its input (idempotent by `run_id`).

        Returns once the run is recorded, as `replay.Engine.start` does.

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
        return self._handle(self._host_call(_start, workflow, args, run_id, timeout))

    def signal(self, run_id: str, key: str, payload: Any = None) -> Run:
        """Deliver `payload` to the run's `Suspend(key)`; return once it is durable.

        Raises:
            RunNotFound: No such run.
            SignalRejected: The run is finished, the key already has a value, the key
                was recorded as another kind of command, or the mailbox is full.
            EncodingError: The payload cannot be recorded; nothing is recorded.
            TypeError: `key` is not a str.
            ValueError: `key` is empty.
            EngineClosed: The engine is closed or closing.
        """
        return self._handle(self._host_call(_signal, run_id, key, payload))

    def resume(self, run_id: str) -> Run:
        """Retry a failed run, or replay a parked one now, as `replay.Engine.resume`.

        Raises:
            RunNotFound: No such run.
            WorkflowNotRegistered: The run's workflow is not registered.
            EngineClosed: The engine is closed or closing.
        """
        return self._handle(self._host_call(_resume, run_id))

    def cancel(self, run_id: str, reason: Any = None) -> Run:
        """Cancel the run: `Cancelled` is thrown in at the command it waits on.

        As `replay.Engine.cancel`: the request is durable when this returns, a parked
        run wakes to take it, the workflow may catch `Cancelled` and compensate, and a
        second `cancel` changes nothing.

        Args:
            run_id: The run.
            reason: Why; any encodable value, passed on as `Cancelled.reason`.

        Raises:
            RunNotFound: No such run.
            RunFinished: The run is finished.
            EncodingError: `reason` cannot be recorded; nothing is recorded.
            EngineClosed: The engine is closed or closing.
        """
        return self._handle(self._host_call(_cancel, run_id, reason))

    def terminate(self, run_id: str, reason: Any = None) -> Run:
        """End the run ``cancelled`` at once, as `replay.Engine.terminate`.

        Runs none of its workflow code: for a run whose compensation hangs.

        Args:
            run_id: The run.
            reason: Why; any encodable value, recorded with the end.

        Raises:
            RunNotFound: No such run.
            RunFinished: The run is finished.
            EncodingError: `reason` cannot be recorded; nothing is recorded.
            EngineClosed: The engine is closed or closing.
        """
        return self._handle(self._host_call(_terminate, run_id, reason))

    def purge(self, *, older_than: timedelta | float = timedelta(days=30),
              states: Collection[replay.RunState | str] = ("completed", "failed", "cancelled"),
              workflow: Callable[..., Any] | str | None = None,
              archive_to: str | PathLike[str] | None = None) -> replay.PurgeReport:
        """Delete finished runs that ended more than `older_than` ago, as `replay.Engine.purge`.

        Returns:
            A `replay.PurgeReport` of what was deleted.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: `older_than` is negative, `states` is empty or names an
                unknown or unfinished state, or `archive_to` exists or cannot be
                written.
            OSError: Writing the archive failed (nothing was deleted).
            DatabaseError: A delete failed; the batches before it stay deleted.
            EngineClosed: The engine is closed or closing.
        """
        return self._host_call(_purge, older_than, states, workflow, archive_to)

    def get_run(self, run_id: str) -> Run:
        """Return a handle to an existing run.

        Raises:
            RunNotFound: No such run.
            EngineClosed: The engine is closed.
        """
        return self._handle(self._host_call_sync(_get_run, run_id))

    def status(self, run_id: str) -> replay.RunInfo:
        """Return the run's current durable state.

        Raises:
            RunNotFound: No such run.
            EncodingError: The run's recorded output cannot be decoded.
            EngineClosed: The engine is closed.
        """
        return self._host_call_sync(_status, run_id)

    def runs(self, state: replay.RunState | str | None = None, workflow: str | None = None,
             limit: int = 1000) -> list[replay.RunInfo]:
        """List runs, newest first by `created_at`, as `replay.Engine.runs`.

        Args:
            state: Only runs in this state.
            workflow: Only runs of this workflow name.
            limit: At most this many.

        Raises:
            ValueError: `state` is not a run state, or `limit` is negative.
            EngineClosed: The engine is closed.
        """
        return self._host_call(_runs, state, workflow, limit)

    def history(self, run_id: str) -> list[replay.Event]:
        """Return every event of one run in order, values decoded.

        Raises:
            RunNotFound: No such run.
            EngineClosed: The engine is closed.
        """
        return self._host_call(_history, run_id)

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None,
            *, timeout: float | None = None) -> list[tuple[Any, ...]]:
        """Run one read-only query against the database, as `replay.Engine.sql`.

        Args:
            query: Exactly one ``SELECT``, ``WITH … SELECT`` or ``EXPLAIN``.
            params: Values for ``?`` or ``$name`` placeholders.
            timeout: Seconds the query may take (default: the engine's `query_timeout`);
                a query over its limit is stopped with `QueryError`.

        Returns:
            The result rows.

        Raises:
            QueryError: The text is not exactly one read-only query, it failed, or it
                exceeded its time limit.
            TypeError: `timeout` is not a number or None.
            ValueError: `timeout` is not above 0.
            EngineClosed: The engine is closed, or closed while the query ran.
        """
        return self._host_call(_sql, query, params, timeout)

    def sql_arrow(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None,
                  *, timeout: float | None = None) -> Any:
        """Run one read-only query like `sql`; return a ``pyarrow.Table``.

        Raises:
            ModuleNotFoundError: pyarrow is not installed.
            QueryError: As for `sql`.
            TypeError: `timeout` is not a number or None.
            ValueError: `timeout` is not above 0.
            EngineClosed: The engine is closed, or closed while the query ran.
        """
        return self._host_call(_sql_arrow, query, params, timeout)

    def export_history(self, run_id: str, path: str | PathLike[str]) -> None:
        """Write one run's history to a JSON file, as `replay.Engine.export_history`.

        Raises:
            RunNotFound: No such run.
            EngineClosed: The engine is closed.
        """
        self._host_call(_export_history, run_id, path)

    def watch(self, workflow: Callable[..., Any] | str | None = None,
              states: Collection[replay.RunState | str] | None = None,
              buffer: int = 1000) -> Watch:
        """Watch every run (filtered), as `replay.Engine.watch`: a blocking iterator.

        Raises:
            TypeError: An argument has the wrong type (raised by the first ``next``).
            ValueError: A state is unknown, or `buffer` < 1 (raised by the first ``next``).
            EngineClosed: The engine is closed, or closes while watching.
        """
        return Watch(self, lambda engine: engine.watch(workflow, states, buffer))

    def now(self) -> datetime:
        """Return the engine clock's current time (aware, UTC).

        Raises:
            EngineClosed: The engine is closed.
        """
        return self._host_call_sync(_now)

    # -- its life --

    def close(self) -> None:
        """Stop the engine cleanly and close the file; return once that is done.

        Running steps get `shutdown_timeout` to finish; no new command starts. Calls
        that other threads are blocked in end as they do when ``async with
        replay.open_engine(...)`` is left: a run's `wait` or `result` raises
        `replay.EngineClosed` unless the run finished first. A second `close` does
        nothing. Ctrl-C while it waits stops running steps at once.

        Raises:
            RuntimeError: Called from the engine's own thread (an async step).
            DatabaseError: The engine had stopped by itself because a commit failed
                (raised by the first `close` only).
        """
        self._life.close(abort=False, raise_failure=True)

    @property
    def closed(self) -> bool:
        """Whether the engine has stopped and closed its file."""
        return self._life.closed

    @property
    def ui_url(self) -> str | None:
        """The address of the engine's web view (``open_engine(ui=...)``), else None."""
        return self._life.ui_url

    # -- internals --

    def _host_call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self._life.call(function, *args)

    def _host_call_sync(self, function: Callable[..., T], *args: Any) -> T:
        return self._life.call_sync(function, *args)

    def _handle(self, run: AsyncRun) -> Run:
        return Run(self, run.run_id, run.workflow)


# What runs in the engine's trio thread for each call: the public async API, as is.


async def _start(engine: AsyncEngine, workflow: Callable[..., Any] | str,
                 args: tuple[Any, ...], run_id: str | None,
                 timeout: float | timedelta | None) -> AsyncRun:
    return await engine.start(workflow, *args, run_id=run_id, timeout=timeout)


async def _signal(engine: AsyncEngine, run_id: str, key: str, payload: Any) -> AsyncRun:
    return await engine.signal(run_id, key, payload)


async def _resume(engine: AsyncEngine, run_id: str) -> AsyncRun:
    return await engine.resume(run_id)


async def _cancel(engine: AsyncEngine, run_id: str, reason: Any) -> AsyncRun:
    return await engine.cancel(run_id, reason)


async def _terminate(engine: AsyncEngine, run_id: str, reason: Any) -> AsyncRun:
    return await engine.terminate(run_id, reason)


async def _purge(engine: AsyncEngine, older_than: timedelta | float,
                 states: Collection[replay.RunState | str], workflow: Any,
                 archive_to: str | PathLike[str] | None) -> replay.PurgeReport:
    return await engine.purge(older_than=older_than, states=states, workflow=workflow,
                              archive_to=archive_to)


def _get_run(engine: AsyncEngine, run_id: str) -> AsyncRun:
    return engine.get_run(run_id)


def _status(engine: AsyncEngine, run_id: str) -> replay.RunInfo:
    return engine.status(run_id)


async def _runs(engine: AsyncEngine, state: replay.RunState | str | None,
                workflow: str | None,
                limit: int) -> list[replay.RunInfo]:
    return await engine.runs(state, workflow, limit)


async def _history(engine: AsyncEngine, run_id: str) -> list[replay.Event]:
    return await engine.history(run_id)


async def _sql(engine: AsyncEngine, query: str,
               params: Sequence[Any] | dict[str, Any] | None,
               timeout: float | None) -> list[tuple[Any, ...]]:
    return await engine.sql(query, params, timeout=timeout)


async def _sql_arrow(engine: AsyncEngine, query: str,
                     params: Sequence[Any] | dict[str, Any] | None,
                     timeout: float | None) -> Any:
    return await engine.sql_arrow(query, params, timeout=timeout)


async def _export_history(engine: AsyncEngine, run_id: str, path: str | PathLike[str]) -> None:
    await engine.export_history(run_id, path)


def _now(engine: AsyncEngine) -> datetime:
    return engine.now()
