"""Watching runs from another process: the ``watch`` request and its stream of updates.

`RemoteWatch` (blocking, for `Client`) and `AsyncRemoteWatch` (asyncio, for
`AsyncClient`) hold one connection each for as long as the watch lasts; closing them
(or leaving their ``with`` block, or breaking out of a loop over them and dropping
them) hangs up, and the engine stops the watch at once. The engine answers a header,
then one ``{"update": ...}`` message per `RunUpdate`, then ``{"end": true}`` once the
watched run finished (protocol: `replay._channel._protocol`; values as in `_calls`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any

from replay._channel import _calls as calls
from replay._channel._calls import Call
from replay._channel._protocol import MAX_MESSAGE_BYTES
from replay._checks import checked_states
from replay._errors import ReplayError, RunFinished
from replay._types import Event, RunInfo, RunState, RunUpdate
from replay._workflows import workflow_name

if TYPE_CHECKING:
    import socket
    from typing import BinaryIO

    from replay._channel._aio import AsyncClient
    from replay._channel._connect import Client

DEFAULT_BUFFER = 1000
_KINDS = frozenset({"snapshot", "event", "progress", "missed"})


def request(run_id: str | None, after_seq: int | None, workflow: Callable[..., Any] | str | None,
            states: Collection[RunState | str] | None, buffer: int) -> Call:
    """Return a ``watch`` request, its arguments checked here (nothing sent if bad).

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: `after_seq` < 0 or given without `run_id`, `buffer` < 1, or a
            state name is unknown.
    """
    if run_id is not None:
        calls.checked("run_id", run_id)
    if after_seq is not None:
        if isinstance(after_seq, bool) or not isinstance(after_seq, int):
            raise TypeError(f"after_seq must be an int or None, got {after_seq!r} "
                            f"({type(after_seq).__name__})")
        if after_seq < 0 or run_id is None:
            raise ValueError(f"after_seq must be >= 0 and needs a run_id, got {after_seq}")
    if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
        raise ValueError(f"buffer must be an int of at least 1, got {buffer!r}")
    name = workflow if workflow is None or isinstance(workflow, str) else workflow_name(workflow)
    found = checked_states("watch(states=...)", states)
    chosen = None if found is None else sorted(state.value for state in found)
    doing = "watching all runs" if run_id is None else f"watching run {run_id!r}"
    return Call("watch", {"run_id": run_id, "after_seq": after_seq, "workflow": name,
                          "states": chosen, "buffer": buffer}, doing, waits=True)


def update_of(data: Any, path: str) -> RunUpdate:
    """Return the `RunUpdate` an ``update`` message carries, values decoded.

    Raises:
        ReplayError: It is malformed.
        EncodingError: A value cannot be decoded here (a type registered in the
            engine's process but not in this one).
    """
    if not isinstance(data, dict) or data.get("kind") not in _KINDS:
        raise ReplayError(f"malformed answer from the engine serving {path!r}: no update")
    info = data.get("info")
    event = data.get("event")
    kind = str(data["kind"])
    try:
        return RunUpdate(
            kind, str(data.get("run_id")), None if info is None else calls.info_of(info, path),
            int(data.get("seq") or 0), None if event is None else event_of(event, path),
            calls.recorded(data, "progress", path) if kind == "progress" else None,
            calls.value(data, "key", path), int(data.get("missed") or 0))
    except (TypeError, ValueError) as error:
        raise ReplayError(f"malformed answer from the engine serving {path!r}: {error}"
                          ) from None


def event_of(data: Any, path: str) -> Event:
    """Return the `Event` an update carries, its value decoded.

    Raises:
        ReplayError: It is malformed.
        EncodingError: Its value cannot be decoded here.
    """
    if not isinstance(data, dict):
        raise ReplayError(f"malformed answer from the engine serving {path!r}: no event")
    fields = {name: calls.value(data, name, path) for name in Event.__dataclass_fields__
              if name != "value"}
    recorded = None if data.get("value") is None else calls.recorded(data, "value", path)
    return Event(**fields, value=recorded)


def not_reached(run_id: str, last: RunInfo | None) -> RunFinished:
    """The error of a `wait(until=...)` whose run finished first."""
    state = "finished" if last is None else last.state.value
    return RunFinished(f"run {run_id!r} {state} without reaching the state waited for; "
                       "check the condition, or wait for the run's result instead",
                       run_id=run_id, state=state)


class RemoteWatch:
    """A blocking iterator of `RunUpdate` from the engine; see `Client.watch`.

    ``for update in client.watch(run_id): ...`` ends by itself once the run finishes;
    ``with client.watch() as updates:`` hangs up when the block ends.
    """

    def __init__(self, client: Client, call: Call, timeout: float | None = None) -> None:
        self._client = client
        self._call = call
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._sock: socket.socket | None = None
        self._file: BinaryIO | None = None
        self._done = False

    def __iter__(self) -> Iterator[RunUpdate]:
        return self

    def __enter__(self) -> RemoteWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Hang up: the engine stops watching (a watch that ended needs no closing)."""
        self._done = True
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()

    def __next__(self) -> RunUpdate:
        if self._done:
            raise StopIteration
        try:
            if self._sock is None:
                self._open()
            message = self._read()
        except BaseException:
            self.close()
            raise
        if message.get("end"):
            self.close()
            raise StopIteration
        return update_of(message.get("update"), self._client.database)

    def _open(self) -> None:
        client, line = self._client, self._call.line()
        self._sock = client._socket()
        try:
            self._sock.sendall(line)
        except OSError as error:
            raise calls.lost(client.database, client.pid, self._call.doing, f" ({error})"
                             ) from None
        self._file = self._sock.makefile("rb")
        header = self._read(client.timeout)
        if isinstance(header.get("pid"), int):
            client.pid = header["pid"]

    def _read(self, limit: float | None = None) -> dict[str, Any]:
        assert self._sock is not None and self._file is not None
        if self._deadline is not None:
            left = max(self._deadline - time.monotonic(), 0.001)
            limit = left if limit is None else min(limit, left)
        self._sock.settimeout(limit)
        return self._client._read(self._file, self._call, limit)


class AsyncRemoteWatch:
    """An async iterator of `RunUpdate` from the engine; see `AsyncClient.watch`.

    ``async for update in client.watch(run_id): ...`` ends by itself once the run
    finishes; ``async with client.watch() as updates:`` hangs up when the block ends.
    """

    def __init__(self, client: AsyncClient, call: Call) -> None:
        self._client = client
        self._call = call
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._done = False

    def __aiter__(self) -> AsyncIterator[RunUpdate]:
        return self

    async def __aenter__(self) -> AsyncRemoteWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Hang up: the engine stops watching (a watch that ended needs no closing)."""
        self._done = True
        if self._writer is not None:
            self._writer.close()

    async def __anext__(self) -> RunUpdate:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._reader is None:
                await self._open()
            assert self._reader is not None
            message = await self._client._read(self._reader, self._call)
        except BaseException:
            await self.aclose()
            raise
        if message.get("end"):
            await self.aclose()
            raise StopAsyncIteration
        return update_of(message.get("update"), self._client.database)

    async def _open(self) -> None:
        client, line = self._client, self._call.line()
        reader, self._writer = await asyncio.open_unix_connection(
            sock=await client._socket(), limit=MAX_MESSAGE_BYTES + 1)
        try:
            async with asyncio.timeout(client.timeout) as limit:
                self._writer.write(line)
                await self._writer.drain()
                header = await client._read(reader, self._call)
        except TimeoutError:
            if not limit.expired():
                raise
            raise calls.no_answer(client.database, self._call.doing, client.timeout) from None
        except OSError as error:
            raise calls.lost(client.database, client.pid, self._call.doing, f" ({error})"
                             ) from None
        if isinstance(header.get("pid"), int):
            client.pid = header["pid"]
        self._reader = reader
