"""`replay.aio.Engine` and `replay.aio.Run`: the engine's calls as asyncio coroutines.

Each call runs the `replay.Engine` (or `replay.Run`) method of the same name in a trio
task of the loop's guest run and hands its outcome back: the same value, or the same
exception object (class, message and attributes unchanged).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta
from os import PathLike
from typing import Any

import replay
from replay.aio._guest import Calls
from replay.aio._watch import Watch


class Run:
    """A handle to one run, for asyncio code; returned by `Engine.start` and friends.

    Attributes:
        run_id: The run's id.
        workflow: The run's workflow name.
    """

    __slots__ = ("_calls", "_run", "run_id", "workflow")

    def __init__(self, run: replay.Run, calls: Calls) -> None:
        self._run = run
        self._calls = calls
        self.run_id = run.run_id
        self.workflow = run.workflow

    def __repr__(self) -> str:
        return f"replay.aio.Run(run_id={self.run_id!r}, workflow={self.workflow!r})"

    async def wait(self, until: Callable[[replay.RunInfo], bool] | replay.RunState | str
                   | None = None) -> replay.RunInfo:
        """Wait until the run completes, fails, is cancelled or is suspended.

        Sleeps and retry back-offs are waited through. With `until`, wait instead for
        the first state that satisfies it, as `replay.Run.wait` does. Cancelling the
        caller stops the wait, not the run.

        Args:
            until: A condition on the run's `RunInfo`, or a state (``"sleeping"``).

        Returns:
            The run's state then.

        Raises:
            RunFinished: With `until`, the run finished without the condition holding.
            TypeError: `until` is neither callable nor a state.
            ValueError: `until` is a string that is not a state's name.
            EngineClosed: The engine closed first.
        """
        return await self._calls.call(functools.partial(self._run.wait, until))

    def watch(self, after_seq: int | None = None, buffer: int = 1000) -> Watch:
        """Watch the run until it finishes, as `replay.Run.watch`: an async iterator.

        ``async for update in run.watch():`` yields `replay.RunUpdate`: a snapshot
        (or the recorded events after `after_seq`), then every change.

        Raises:
            RunNotFound: No such run (raised by the first step).
            TypeError: An argument has the wrong type (raised by the first step).
            ValueError: `after_seq` < 0 or `buffer` < 1 (raised by the first step).
            EngineClosed: The engine is closed, or closes while watching.
        """
        return Watch(self._calls, functools.partial(self._run.watch, after_seq, buffer))

    async def result(self) -> Any:
        """Wait for the run to finish and return its output (suspensions waited through).

        Returns:
            The workflow's return value.

        Raises:
            WorkflowFailed: The run failed, or was cancelled (its `error_type` is then
                ``"replay.Cancelled"`` and its message is the reason).
            EngineClosed: The engine closed first.
        """
        return await self._calls.call(self._run.result)


class Engine:
    """An open replay engine, for asyncio code; get one from `replay.aio.open_engine`.

    Every method is a coroutine that runs the `replay.Engine` method of the same name
    on the engine's trio loop (a guest of your asyncio loop), with the same arguments,
    results and errors. Cancelling a caller cancels that call on the trio side, and
    the caller resumes once it has ended; a call that had already recorded something
    (a start, a signal) keeps it, as it would under trio. Call it from the asyncio loop
    that opened it.
    """

    __slots__ = ("_calls", "_engine")

    def __init__(self, engine: replay.Engine, calls: Calls) -> None:
        self._engine = engine
        self._calls = calls

    def __repr__(self) -> str:
        return f"replay.aio.Engine({self._engine!r})"

    @property
    def ui_url(self) -> str | None:
        """The address of the engine's web view (``open_engine(ui=...)``), else None."""
        return self._engine.ui_url

    def _run(self, run: replay.Run) -> Run:
        return Run(run, self._calls)

    async def start(self, workflow: Callable[..., Any] | str, *args: Any,
                    run_id: str | None = None, timeout: float | timedelta | None = None
                    ) -> Run:
        """Start a run of `workflow` with `args` as its input (idempotent by `run_id`).

        As `replay.Engine.start`: the input and the ``run/started`` event are
        committed before this returns.

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
        start = functools.partial(self._engine.start, workflow, *args, run_id=run_id,
                                  timeout=timeout)
        return self._run(await self._calls.call(start))

    async def signal(self, run_id: str, key: str, payload: Any = None) -> Run:
        """Deliver `payload` to the run's `Suspend(key)`; return once it is durable.

        As `replay.Engine.signal`.

        Raises:
            RunNotFound: No such run.
            SignalRejected: The run is finished, the key already has a value, or the
                mailbox is full.
            EncodingError: The payload cannot be recorded; nothing is recorded.
            TypeError: `key` is not a str.
            ValueError: `key` is empty.
            EngineClosed: The engine is closed or closing.
        """
        signal = functools.partial(self._engine.signal, run_id, key, payload)
        return self._run(await self._calls.call(signal))

    async def resume(self, run_id: str) -> Run:
        """Retry a failed run, or replay a parked one now; as `replay.Engine.resume`.

        Raises:
            RunNotFound: No such run.
            WorkflowNotRegistered: The run's workflow is not registered.
            EngineClosed: The engine is closed or closing.
        """
        resume = functools.partial(self._engine.resume, run_id)
        return self._run(await self._calls.call(resume))

    async def cancel(self, run_id: str, reason: Any = None) -> Run:
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
        cancel = functools.partial(self._engine.cancel, run_id, reason)
        return self._run(await self._calls.call(cancel))

    async def purge(self, *, older_than: timedelta | float = timedelta(days=30),
                    states: Collection[replay.RunState | str] = ("completed", "failed",
                                                                 "cancelled"),
                    workflow: Callable[..., Any] | str | None = None,
                    archive_to: str | PathLike[str] | None = None) -> replay.PurgeReport:
        """Delete finished runs that ended more than `older_than` ago.

        As `replay.Engine.purge`: in batches, while runs keep executing.

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
        purge = functools.partial(self._engine.purge, older_than=older_than, states=states,
                                  workflow=workflow, archive_to=archive_to)
        report: replay.PurgeReport = await self._calls.call(purge)
        return report

    async def terminate(self, run_id: str, reason: Any = None) -> Run:
        """End the run ``cancelled`` at once; as `replay.Engine.terminate`.

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
        terminate = functools.partial(self._engine.terminate, run_id, reason)
        return self._run(await self._calls.call(terminate))

    async def get_run(self, run_id: str) -> Run:
        """Return a handle to an existing run.

        Raises:
            RunNotFound: No such run.
        """
        return self._run(await self._calls.call_sync(
            functools.partial(self._engine.get_run, run_id)))

    def watch(self, workflow: Callable[..., Any] | str | None = None,
              states: Collection[replay.RunState | str] | None = None,
              buffer: int = 1000) -> Watch:
        """Watch every run (filtered), as `replay.Engine.watch`: an async iterator.

        Raises:
            TypeError: An argument has the wrong type (raised by the first step).
            ValueError: A state is unknown, or `buffer` < 1 (raised by the first step).
            EngineClosed: The engine is closed, or closes while watching.
        """
        return Watch(self._calls, functools.partial(self._engine.watch, workflow, states,
                                                    buffer))

    async def status(self, run_id: str) -> replay.RunInfo:
        """Return the run's current durable state.

        Raises:
            RunNotFound: No such run.
            EncodingError: The run's recorded output cannot be decoded.
        """
        return await self._calls.call_sync(functools.partial(self._engine.status, run_id))

    async def runs(self, state: replay.RunState | str | None = None,
                   workflow: str | None = None, limit: int = 1000) -> list[replay.RunInfo]:
        """List runs, newest first; as `replay.Engine.runs`.

        Args:
            state: Only runs in this state.
            workflow: Only runs of this workflow name.
            limit: At most this many.

        Raises:
            ValueError: `state` is not a run state, or `limit` is negative.
        """
        return await self._calls.call(
            functools.partial(self._engine.runs, state, workflow, limit))

    async def history(self, run_id: str) -> list[replay.Event]:
        """Return every event of one run in order, values decoded.

        Raises:
            RunNotFound: No such run.
            EngineClosed: The engine is closed.
        """
        return await self._calls.call(functools.partial(self._engine.history, run_id))

    async def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None,
                  *, timeout: float | None = None) -> list[tuple[Any, ...]]:
        """Run one read-only query against the database; as `replay.Engine.sql`.

        Cancelling the caller stops the query.

        Args:
            query: Exactly one ``SELECT``, ``WITH … SELECT`` or ``EXPLAIN``.
            params: Values for ``?`` or ``$name`` placeholders.
            timeout: Seconds the query may take (default: the engine's `query_timeout`).

        Returns:
            The result rows.

        Raises:
            QueryError: The text is not exactly one read-only query, it failed, or it
                exceeded its time limit.
            TypeError: `timeout` is not a number or None.
            ValueError: `timeout` is not above 0.
            EngineClosed: The engine is closed, or closed while the query ran.
        """
        return await self._calls.call(
            functools.partial(self._engine.sql, query, params, timeout=timeout))

    async def sql_arrow(self, query: str,
                        params: Sequence[Any] | dict[str, Any] | None = None,
                        *, timeout: float | None = None) -> Any:
        """Run one read-only query like `sql` and return a ``pyarrow.Table``.

        Args:
            query: Exactly one ``SELECT``, ``WITH … SELECT`` or ``EXPLAIN``.
            params: Values for ``?`` or ``$name`` placeholders.
            timeout: Seconds the query may take (default: the engine's `query_timeout`).

        Returns:
            A ``pyarrow.Table``.

        Raises:
            ModuleNotFoundError: pyarrow is not installed.
            QueryError: As for `sql`.
            TypeError: `timeout` is not a number or None.
            ValueError: `timeout` is not above 0.
            EngineClosed: The engine is closed, or closed while the query ran.
        """
        return await self._calls.call(
            functools.partial(self._engine.sql_arrow, query, params, timeout=timeout))

    async def export_history(self, run_id: str, path: str | PathLike[str]) -> None:
        """Write one run's history to a JSON file; as `replay.Engine.export_history`.

        Raises:
            RunNotFound: No such run.
            EngineClosed: The engine is closed.
        """
        await self._calls.call(functools.partial(self._engine.export_history, run_id, path))
