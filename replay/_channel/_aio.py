"""`replay.connect_async`: the client of `replay.connect` for asyncio applications.

The same calls as `Client`, as coroutines on asyncio's own streams: nothing blocks the
event loop and no thread is used, so an asyncio application (FastAPI, Starlette,
aiohttp) can keep thousands of `result` waits open at once. Each call opens its own
connection; cancelling a call (``asyncio.timeout``, a client that disconnects from
your web server) closes it, and the engine stops waiting for it. It needs a running
asyncio loop; from trio, use the blocking `Client` through ``trio.to_thread``. Each
call's connection is made and read in `_transport`; the `AsyncRemoteRun` handles the
calls return live in `_handles`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Iterable
from datetime import timedelta
from os import PathLike
from typing import Any

from replay._channel import _calls as calls
from replay._channel import _watching as watching
from replay._channel._calls import DEFAULT_TIMEOUT, FINISHED_STATES
from replay._channel._handles import AsyncRemoteRun
from replay._channel._transport import AsyncTransport
from replay._channel._watching import AsyncRemoteWatch
from replay._types import PurgeReport, RunInfo, RunState


def connect_async(database: str | PathLike[str], *, timeout: float = DEFAULT_TIMEOUT
                  ) -> _Connecting:
    """Connect to the engine that serves `database`, from an asyncio program.

    ``client = await replay.connect_async(path)``, or
    ``async with replay.connect_async(path) as client:``. The client's methods are
    those of `replay.connect`'s `Client`, as coroutines.

    Args:
        database: The database file the engine holds.
        timeout: Seconds a call may wait for the engine's answer (not `wait` and
            `result`, which take their own).

    Returns:
        An awaitable (and async context manager) that gives an `AsyncClient`.

    Raises:
        EngineClosed: (when awaited) No engine serves the file.
        PermissionError: (when awaited) The engine runs as another user.
        TypeError: `timeout` is not a number.
        ValueError: `timeout` is not above 0.
    """
    return _Connecting(AsyncClient(database, timeout=timeout))


class _Connecting:
    """``await`` it for the client, or use it as ``async with``."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def __await__(self) -> Generator[Any, None, AsyncClient]:
        return self._connected().__await__()

    async def _connected(self) -> AsyncClient:
        await self._client._hello()
        return self._client

    async def __aenter__(self) -> AsyncClient:
        return await self._connected()

    async def __aexit__(self, *exc: object) -> None:
        self._client.close()


class AsyncClient(AsyncTransport):
    """The engine serving a database file, from an asyncio program in another process.

    Get one from `replay.connect_async`, which checks that an engine answers, or build
    one with ``AsyncClient(database)``, which contacts nobody until the first call. It
    holds no connection and no event loop, so one client may serve every task (and
    loop) of a process. Its methods are those of `Client`, as coroutines; errors are
    the same.

    Args:
        database: The database file the engine holds.
        timeout: Seconds a call may wait for the engine's answer (not `wait` and
            `result`, which take their own).

    Raises:
        TypeError: `timeout` is not a number.
        ValueError: `timeout` is not above 0.

    Attributes:
        database: The database file.
        pid: The engine's process id, as of the last answer.
        command: The engine process's command line.
    """

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop using the client (it holds no connection; later calls raise)."""
        self._closed = True

    async def start(self, workflow: Callable[..., Any] | str, *args: Any,
                    run_id: str | None = None, timeout: float | timedelta | None = None
                    ) -> AsyncRemoteRun:
        """Start a run of `workflow` in the engine (see `Client.start`).

        Args:
            workflow: A workflow function, or its registered name.
            *args: The run's input, encoded here as the engine records it.
            run_id: The run's id; the engine generates one when omitted.
            timeout: The run's deadline, from now on the engine's clock (seconds or a
                `timedelta`): if it has not finished by then it is cancelled.

        Raises:
            WorkflowNotRegistered: The engine does not have `workflow`.
            RunIdConflict: `run_id` belongs to a run of another workflow.
            EncodingError: An argument cannot be recorded; nothing is sent.
            TypeError: `workflow` or `run_id` has the wrong type, or `timeout` is not a
                duration.
            ValueError: `timeout` is not a finite duration > 0.
            EngineClosed: No engine serves the file, or it stopped.
        """
        header, _ = await self._ask(calls.start(workflow, args, run_id, timeout))
        return AsyncRemoteRun(self, str(header["run_id"]), str(header["workflow"]))

    async def signal(self, run_id: str, key: str, payload: Any = None) -> AsyncRemoteRun:
        """Deliver `payload` to the run's ``Suspend(key)`` (see `Client.signal`).

        Raises:
            RunNotFound: No such run.
            SignalRejected: The engine rejects the signal.
            EncodingError: The payload cannot be recorded; nothing is sent.
            EngineClosed: No engine serves the file, or it stopped.
        """
        header, _ = await self._ask(calls.signal(run_id, key, payload))
        calls.warn(header)
        return AsyncRemoteRun(self, run_id, str(header["workflow"]))

    async def resume(self, run_id: str) -> AsyncRemoteRun:
        """Retry a failed run, or replay a parked one now (see `Client.resume`).

        Raises:
            RunNotFound: No such run.
            EngineClosed: No engine serves the file, or it stopped.
        """
        header, _ = await self._ask(calls.on_run("resume", "resuming", run_id))
        return AsyncRemoteRun(self, run_id, str(header["workflow"]))

    async def cancel(self, run_id: str, reason: Any = None) -> AsyncRemoteRun:
        """Cancel the run: `Cancelled` is thrown in at the command it waits on.

        See `Client.cancel`.

        Raises:
            RunNotFound: No such run.
            RunFinished: The run is finished.
            EncodingError: `reason` cannot be recorded; nothing is sent.
            TypeError: `run_id` is not a str.
            EngineClosed: No engine serves the file, or it stopped.
        """
        header, _ = await self._ask(calls.ending("cancel", run_id, reason))
        return AsyncRemoteRun(self, run_id, str(header["workflow"]))

    async def purge(self, *, older_than: timedelta | float = timedelta(days=30),
                    states: Iterable[RunState | str] = FINISHED_STATES,
                    workflow: Callable[..., Any] | str | None = None,
                    archive_to: str | PathLike[str] | None = None) -> PurgeReport:
        """Delete finished runs that ended more than `older_than` ago, in the engine.

        As `Engine.purge`, with the same arguments, result and errors. `archive_to` is
        a path on the engine's machine (made absolute here). The answer's time limit
        counts from the engine's last message: it reports after each batch.

        Returns:
            A `PurgeReport` of what was deleted.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: An argument has a wrong value, or `archive_to` exists or cannot
                be written.
            DatabaseError: A delete failed; the batches before it stay deleted.
            ReplayError: Writing the archive failed (nothing was deleted).
            EngineClosed: No engine serves the file, or it stopped.
        """
        _, items = await self._ask(calls.purge(older_than, states, workflow, archive_to))
        return calls.report_of(items, self.database)

    async def terminate(self, run_id: str, reason: Any = None) -> AsyncRemoteRun:
        """End the run ``cancelled`` at once, running none of its workflow code.

        See `Client.terminate`.

        Raises:
            RunNotFound: No such run.
            RunFinished: The run is finished.
            EncodingError: `reason` cannot be recorded; nothing is sent.
            TypeError: `run_id` is not a str.
            EngineClosed: No engine serves the file, or it stopped.
        """
        header, _ = await self._ask(calls.ending("terminate", run_id, reason))
        return AsyncRemoteRun(self, run_id, str(header["workflow"]))

    async def get_run(self, run_id: str) -> AsyncRemoteRun:
        """Return a handle to an existing run.

        Raises:
            RunNotFound: No such run.
        """
        return AsyncRemoteRun(self, run_id, (await self.status(run_id)).workflow)

    async def status(self, run_id: str) -> RunInfo:
        """Return the run's current durable state (see `Client.status`).

        Raises:
            RunNotFound: No such run.
        """
        header, _ = await self._ask(calls.on_run("status", "asking for", run_id))
        return calls.info_of(header.get("info"), self.database)

    async def wait(self, run_id: str, timeout: float | None = None) -> RunInfo:
        """Wait until the run settles (see `Client.wait`); the engine does the waiting.

        Raises:
            RunNotFound: No such run.
            TimeoutError: `timeout` passed first (the run goes on).
            EngineClosed: No engine serves the file, or it stopped or died meanwhile.
        """
        header, _ = await self._ask(
            calls.on_run("wait", "waiting for", run_id, waits=True), timeout)
        return calls.info_of(header.get("info"), self.database)

    async def result(self, run_id: str, timeout: float | None = None) -> Any:
        """Wait for the run to finish and return its output (see `Client.result`).

        Raises:
            WorkflowFailed: The run failed, or was cancelled (its `error_type` is then
                ``"replay.Cancelled"`` and its message is the reason).
            RunNotFound: No such run.
            TimeoutError: `timeout` passed first (the run goes on).
            EngineClosed: No engine serves the file, or it stopped or died meanwhile.
        """
        header, _ = await self._ask(
            calls.on_run("result", "waiting for the result of", run_id, waits=True), timeout)
        return calls.recorded(header, "output", self.database)

    async def runs(self, state: RunState | str | None = None, workflow: str | None = None,
                   limit: int = 1000) -> list[RunInfo]:
        """List runs, newest first by `created_at` (see `Engine.runs`).

        Raises:
            ValueError: `state` is not a run state, or `limit` is negative.
        """
        _, items = await self._ask(calls.call("runs", "listing runs", chunks="runs",
                                              state=state, workflow=workflow, limit=limit))
        return calls.infos(items, self.database)

    def watch(self, run_id: str | None = None, *, after_seq: int | None = None,
              workflow: Callable[..., Any] | str | None = None,
              states: Collection[RunState | str] | None = None,
              buffer: int = watching.DEFAULT_BUFFER) -> AsyncRemoteWatch:
        """Watch one run, or every run (see `Client.watch`), as an async iterator.

        ``async for update in client.watch(run_id):``; cancelling the loop, or
        leaving ``async with client.watch() as updates:``, hangs up.

        Raises:
            RunNotFound: No such run (raised by the first step).
            TypeError: An argument has the wrong type.
            ValueError: `after_seq` < 0 or without `run_id`, `buffer` < 1, or a state
                is unknown.
            EngineClosed: No engine serves the file, or it stopped while watching.
        """
        call = watching.request(run_id, after_seq, workflow, states, buffer)
        return AsyncRemoteWatch(self, call)

    async def sql(self, query: str, params: Any = None, *, timeout: float | None = None
                  ) -> list[tuple[Any, ...]]:
        """Run one read-only query in the engine (see `Engine.sql`).

        Raises:
            QueryError: The query was refused, failed or exceeded its time limit.
        """
        limit = self.timeout if timeout is None else self.timeout + timeout
        _, items = await self._ask(calls.query(query, params, timeout), limit)
        return calls.rows(items, self.database)
