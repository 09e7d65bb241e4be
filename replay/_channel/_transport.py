"""How the clients of `replay.connect` and `replay.connect_async` reach the engine.

Every call of a `Client` or an `AsyncClient` travels on a connection of its own: the
client finds the engine's socket beside the database, checks that the engine runs as
this user before it sends anything, sends one request, and reads the answer and its
chunks; a missing, stale, busy or lost engine becomes one of replay's errors (worded
in `_calls`). This is all a client knows of sockets and streams, so it lives here, in
the clients' internal base classes: `Transport` (blocking sockets, for `Client` in
`_connect`) and `AsyncTransport` (asyncio streams, nothing blocks the loop, for
`AsyncClient` in `_aio`). The two do the same work in two flavours and sit side by
side, as the two watches of `_watching` do, which connect through them too.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from os import PathLike
from typing import Any, BinaryIO

from replay._channel import _calls as calls
from replay._channel._calls import DEFAULT_TIMEOUT, Call
from replay._channel._client import (
    CONNECT_BACKOFF_SECONDS,
    CONNECT_TRIES,
    REFUSED_TRIES,
    _connected,
)
from replay._channel._protocol import MAX_MESSAGE_BYTES, peer_uid, short_address, socket_path
from replay._errors import EngineClosed, ReplayError


class _Endpoint:
    """What both clients hold: the database, the engine's socket, the call's time limit.

    Raises:
        TypeError: `timeout` is not a number.
        ValueError: `timeout` is not above 0.
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
        return f"{type(self).__name__}(database={self.database!r}, pid={self.pid!r})"


class Transport(_Endpoint):
    """The channel of a `Client`, one blocking connection per call (internal base class).

    The calls here read the client's attributes, and record the engine's `pid` and
    `command` from its answers.
    """

    def _hello(self) -> None:
        header, _ = self._ask(calls.call("hello", "connecting"))
        self.command = str(header.get("command"))

    def _ask(self, call: Call, timeout: float | None = None
             ) -> tuple[dict[str, Any], list[Any]]:
        """Send `call` on a connection of its own; return the answer and its chunks.

        `timeout` limits a long wait (None: no limit); other calls default to the
        client's.
        """
        if self._closed:
            raise EngineClosed("this client is closed; connect again with replay.connect()")
        line = call.line()  # before connecting: a value that cannot travel sends nothing
        if timeout is not None:
            timeout = calls.checked_timeout(timeout)
        elif not call.waits:
            timeout = self.timeout
        sock = self._socket()
        try:
            try:
                sock.sendall(line)
            except OSError as error:
                raise calls.lost(self.database, self.pid, call.doing, f" ({error})") from None
            sock.settimeout(timeout)
            with sock.makefile("rb") as file:
                header = self._read(file, call, timeout)
                items: list[Any] = []
                while call.chunks is not None:
                    message = self._read(file, call, timeout)
                    if message.get("end"):
                        break
                    items.extend(message.get(call.chunks) or ())
        finally:
            sock.close()
        if isinstance(header.get("pid"), int):
            self.pid = header["pid"]
        return header, items

    def _read(self, file: BinaryIO, call: Call, timeout: float | None) -> dict[str, Any]:
        try:
            line = file.readline(MAX_MESSAGE_BYTES + 1)
        except TimeoutError:
            raise calls.no_answer(self.database, call.doing, timeout or 0.0) from None
        except OSError as error:
            raise calls.lost(self.database, self.pid, call.doing, f" ({error})") from None
        if not line.endswith(b"\n"):
            if len(line) > MAX_MESSAGE_BYTES:
                raise ReplayError(f"the engine's answer is larger than {MAX_MESSAGE_BYTES} "
                                  "bytes; ask for less (a smaller limit or query)")
            raise calls.lost(self.database, self.pid, call.doing)
        return calls.parse(line, self.database)

    def _socket(self) -> socket.socket:
        path = self._path
        try:
            sock = _connected(path, self.timeout)
        except FileNotFoundError:
            raise calls.no_engine(self.database, stale=False) from None
        except ConnectionRefusedError:
            raise calls.no_engine(self.database, stale=True) from None
        except PermissionError:
            raise calls.denied(path) from None
        except BlockingIOError:
            raise calls.busy(path, CONNECT_TRIES) from None
        except OSError as error:
            raise ReplayError(f"cannot connect to the engine's channel {path!r}: {error}"
                              ) from None
        owner, me = peer_uid(sock), os.geteuid()
        if owner != me:
            sock.close()
            raise calls.refused(path, owner, me)
        return sock


class AsyncTransport(_Endpoint):
    """The channel of an `AsyncClient`, one asyncio connection per call (internal base class).

    The calls here read the client's attributes, and record the engine's `pid` and
    `command` from its answers.
    """

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
