"""`replay.connect_async`: the client of `replay.connect` for asyncio applications.

The same calls as `Client`, as coroutines on asyncio's own streams: nothing blocks the
event loop and no thread is used, so an asyncio application (FastAPI, Starlette,
aiohttp) can keep thousands of `result` waits open at once. Each call opens its own
connection; cancelling a call (``asyncio.timeout``, a client that disconnects from
your web server) closes it, and the engine stops waiting for it. It needs a running
asyncio loop; from trio, use the blocking `Client` through ``trio.to_thread``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable, Collection, Generator, Iterable
from datetime import timedelta
from os import PathLike
from typing import Any

from replay._channel import _calls as calls
from replay._channel import _watching as watching
from replay._channel._calls import DEFAULT_TIMEOUT, FINISHED_STATES, Call
from replay._channel._client import (
    CONNECT_BACKOFF_SECONDS,
    CONNECT_TRIES,
    REFUSED_TRIES,
)
from replay._channel._protocol import MAX_MESSAGE_BYTES, peer_uid, short_address, socket_path
from replay._channel._watching import AsyncRemoteWatch
from replay._checks import checked_condition
from replay._errors import EngineClosed, ReplayError
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


class AsyncClient:
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

    def __init__(self, database: str | PathLike[str], *, timeout: float = DEFAULT_TIMEOUT
                 ) -> None:
        self.database = os.fspath(database)
        self.timeout = calls.checked_timeout(timeout)
        # Resolved once: a later chdir of the process must not move the engine.
        self._path = socket_path(self.database)
        self.pid: int | None = None
        self.command: str | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"AsyncClient(database={self.database!r}, pid={self.pid!r})"

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

    # -- the channel --

    async def _hello(self) -> None:
        header, _ = await self._ask(calls.call("hello", "connecting"))
        self.command = str(header.get("command"))

    async def _ask(self, call: Call, timeout: float | None = None
                   ) -> tuple[dict[str, Any], list[Any]]:
        """Send `call` on a connection of its own; return the answer and its chunks."""
        if self._closed:
            raise EngineClosed("this client is closed; connect again with "
                               "replay.connect_async()")
        line = call.line()
        if timeout is not None:
            timeout = calls.checked_timeout(timeout)
        elif not call.waits:
            timeout = self.timeout
        reader, writer = await asyncio.open_unix_connection(
            sock=await self._socket(), limit=MAX_MESSAGE_BYTES + 1)
        try:
            async with asyncio.timeout(timeout) as limit:
                try:
                    writer.write(line)
                    await writer.drain()
                except OSError as error:
                    raise calls.lost(self.database, self.pid, call.doing, f" ({error})"
                                     ) from None
                header = await self._read(reader, call)
                items: list[Any] = []
                while call.chunks is not None:
                    message = await self._read(reader, call)
                    if message.get("end"):
                        break
                    items.extend(message.get(call.chunks) or ())
        except TimeoutError:
            if not limit.expired():
                raise
            raise calls.no_answer(self.database, call.doing, timeout or 0.0) from None
        finally:
            writer.close()  # a cancelled wait hangs up: the engine stops waiting
        if isinstance(header.get("pid"), int):
            self.pid = header["pid"]
        return header, items

    async def _read(self, reader: asyncio.StreamReader, call: Call) -> dict[str, Any]:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise calls.lost(self.database, self.pid, call.doing) from None
        except (ConnectionError, BrokenPipeError) as error:
            raise calls.lost(self.database, self.pid, call.doing, f" ({error})") from None
        except asyncio.LimitOverrunError:
            raise ReplayError(f"the engine's answer is larger than {MAX_MESSAGE_BYTES} "
                              "bytes; ask for less (a smaller limit or query)") from None
        return calls.parse(line, self.database)

    async def _socket(self) -> socket.socket:
        """Return a socket connected to the engine (its user checked), without blocking.

        A Unix socket connects at once or fails at once; a full listen backlog
        (EAGAIN) is tried again with the blocking client's back-off.
        """
        path = self._path
        pause, attempt = CONNECT_BACKOFF_SECONDS, 1
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                with short_address(path) as address:
                    sock.connect(address)
                break
            except OSError as error:
                sock.close()
                refused = error.errno == errno.ECONNREFUSED
                if error.errno in (errno.EAGAIN, errno.ECONNREFUSED) and attempt < (
                        REFUSED_TRIES if refused else CONNECT_TRIES):
                    await asyncio.sleep(pause)
                    pause, attempt = pause * 2, attempt + 1
                    continue
                raise self._failed(path, error) from None
        owner, me = peer_uid(sock), os.geteuid()
        if owner != me:
            sock.close()
            raise calls.refused(path, owner, me)
        return sock

    def _failed(self, path: str, error: OSError) -> Exception:
        if isinstance(error, FileNotFoundError):
            return calls.no_engine(self.database, stale=False)
        if isinstance(error, ConnectionRefusedError):
            return calls.no_engine(self.database, stale=True)
        if isinstance(error, PermissionError):
            return calls.denied(path)
        if isinstance(error, BlockingIOError):
            return calls.busy(path, CONNECT_TRIES)
        return ReplayError(f"cannot connect to the engine's channel {path!r}: {error}")


class AsyncRemoteRun:
    """A handle to one run of the engine an `AsyncClient` talks to.

    Attributes:
        run_id: The run's id.
        workflow: The run's workflow name.
    """

    __slots__ = ("_client", "run_id", "workflow")

    def __init__(self, client: AsyncClient, run_id: str, workflow: str) -> None:
        self._client = client
        self.run_id = run_id
        self.workflow = workflow

    def __repr__(self) -> str:
        return f"AsyncRemoteRun(run_id={self.run_id!r}, workflow={self.workflow!r})"

    async def status(self) -> RunInfo:
        """Return the run's current durable state.

        Raises:
            EngineClosed: No engine serves the file.
        """
        return await self._client.status(self.run_id)

    async def wait(self, timeout: float | None = None, *,
                   until: Callable[[RunInfo], bool] | RunState | str | None = None
                   ) -> RunInfo:
        """Wait until the run settles, or until `until` holds (see `RemoteRun.wait`).

        Raises:
            RunFinished: With `until`, the run finished without the condition holding.
            TimeoutError: `timeout` passed first.
            TypeError: `until` is neither callable nor a state.
            ValueError: `until` is a string that is not a state's name.
            EngineClosed: No engine serves the file, or it stopped or died meanwhile.
        """
        if until is None:
            return await self._client.wait(self.run_id, timeout)
        holds = checked_condition(until)
        limit = None if timeout is None else calls.checked_timeout(timeout)
        last = None
        try:
            async with asyncio.timeout(limit), self.watch() as updates:
                async for update in updates:
                    last = update.info or last
                    if update.info is not None and holds(update.info):
                        return update.info
        except TimeoutError:
            raise calls.no_answer(self._client.database, f"waiting for run {self.run_id!r}",
                                  limit or 0.0) from None
        raise watching.not_reached(self.run_id, last)

    def watch(self, after_seq: int | None = None, buffer: int = watching.DEFAULT_BUFFER
              ) -> AsyncRemoteWatch:
        """Watch the run until it finishes (see `AsyncClient.watch`).

        Raises:
            RunNotFound: No such run (raised by the first step).
            EngineClosed: No engine serves the file, or it stopped while watching.
        """
        return self._client.watch(self.run_id, after_seq=after_seq, buffer=buffer)

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to finish and return its output (see `Client.result`).

        Raises:
            WorkflowFailed: The run failed, or was cancelled (its `error_type` is then
                ``"replay.Cancelled"`` and its message is the reason).
            TimeoutError: `timeout` passed first.
            EngineClosed: No engine serves the file, or it stopped or died meanwhile.
        """
        return await self._client.result(self.run_id, timeout)

