"""The `replay` command's side of the live channel (protocol: `replay._channel._protocol`).

Plain blocking sockets: the command does one thing and exits. Each request opens its
own connection. Before anything is sent, the engine's user id is checked, so the
command never talks to a socket that another user planted next to the database.

A busy engine's listen backlog can be full for a moment: then ``connect`` fails with
EAGAIN (Linux) or ECONNREFUSED (macOS) although the engine listens, so the command tries
again, `CONNECT_TRIES` times in all, backing off from `CONNECT_BACKOFF_SECONDS`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from replay._channel._protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL,
    WireError,
    dump_message,
    from_wire,
    load_message,
    peer_uid,
    short_address,
    socket_path,
    to_wire,
)

TIMEOUT_SECONDS = 60.0
CONNECT_TRIES = 8
CONNECT_BACKOFF_SECONDS = 0.01  # doubled after each try: 1.27 s of waiting in all
# A refusal usually means a stale socket (nobody listens): give up on it sooner.
REFUSED_TRIES = 3


class ChannelError(Exception):
    """The engine answered with an error, or the channel cannot be used.

    Attributes:
        kind: The error's class name on the engine's side (``"RunNotFound"``, ...).
        message: Its message.
    """

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(message)


def connect(database: str, timeout: float = TIMEOUT_SECONDS) -> Connection | None:
    """Connect to the engine serving `database`.

    Returns:
        The connection, or None when no engine serves the file (no socket, or a stale
        one left by a process that died: it refuses connections).

    Raises:
        ChannelError: The socket exists but this user may not use it, or the engine's
            backlog stayed full (``kind`` ``"Busy"``), or connecting failed otherwise.
    """
    path = socket_path(database)
    if not os.path.lexists(path):
        return None
    try:
        sock = _connected(path, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except PermissionError:
        raise ChannelError(
            "PermissionError",
            f"cannot use the engine's channel {path!r}: permission denied; it serves only "
            "the user that runs the engine: run replay as that user") from None
    except BlockingIOError:
        raise ChannelError(
            "Busy", f"the engine's channel {path!r} stayed busy: {CONNECT_TRIES} tries to "
            "connect found its backlog full; the engine is overloaded or blocked: run the "
            "command again") from None
    except OSError as error:
        raise ChannelError("OSError", f"cannot connect to {path!r}: {error}") from None
    owner = peer_uid(sock)
    if owner != os.geteuid():
        sock.close()
        raise ChannelError(
            "PermissionError",
            f"{path!r} is served by uid {owner}, not by you (uid {os.geteuid()}); "
            "refusing to talk to it: run replay as the user that runs the engine")
    return Connection(sock, path)


def _connected(path: str, timeout: float) -> socket.socket:
    """Return a socket connected to `path`, retrying while the listen backlog is full.

    Raises:
        OSError: The last try's error (BlockingIOError: the backlog stayed full).
    """
    pause, attempt = CONNECT_BACKOFF_SECONDS, 1
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            with short_address(path) as address:
                sock.connect(address)
            return sock
        except OSError as error:
            sock.close()
            tries = REFUSED_TRIES if error.errno == errno.ECONNREFUSED else CONNECT_TRIES
            if error.errno not in _BUSY_ERRNOS or attempt >= tries:
                raise
        _sleep(pause)
        pause, attempt = pause * 2, attempt + 1


_BUSY_ERRNOS = frozenset({errno.EAGAIN, errno.ECONNREFUSED})
_sleep = time.sleep  # replaced by tests that count the pauses


class Connection:
    """One connection to an engine: one request, then its answer."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")
        self.path = path

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._file.close()
        self._sock.close()

    def hang_up(self) -> None:
        """Close the connection from any thread, waking a thread blocked reading it.

        Closing a socket does not wake a thread blocked in a read; shutting it down does.
        """
        with contextlib.suppress(OSError):  # already closed by the engine
            self._sock.shutdown(socket.SHUT_RDWR)
        self.close()

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return the answer's header (values decoded).

        Raises:
            ChannelError: The engine refused or failed the request, or a value cannot
                travel on the channel (``kind`` ``"WireError"``).
        """
        try:
            wire = {name: to_wire(value) for name, value in fields.items()}
        except WireError as error:
            raise ChannelError("WireError", f"cannot send this to the engine: {error}"
                               ) from None
        message = {"protocol": PROTOCOL, "op": op, **wire}
        try:
            self._sock.sendall(dump_message(message))
        except OSError as error:
            raise self._lost(error) from None
        return self._receive()

    def rows(self) -> Iterator[list[tuple[Any, ...]]]:
        """Yield the rows of a query's answer in chunks, after `request`.

        Raises:
            ChannelError: The query failed half-way, or the engine went away.
        """
        while True:
            message = self._receive()
            if message.get("end"):
                return
            yield [tuple(row) for row in message["rows"]]

    def receive(self, timeout: float | None = TIMEOUT_SECONDS) -> dict[str, Any]:
        """Read the next message of an answer in several (``purge``), as sent.

        `timeout`: seconds to wait for it (None: no limit). Its values are still wire
        values (`from_wire` decodes each).

        Raises:
            ChannelError: It is an error answer, or the engine went away.
        """
        self._sock.settimeout(timeout)
        return self._receive(raw=True)

    def stream(self) -> Iterator[dict[str, Any]]:
        """Yield the messages of a streaming answer (``watch``) after `request`, to its end.

        No time limit: a watched run may be quiet for days. The messages are as sent
        (wire values inside, e.g. each field of an update's ``info``).

        Raises:
            ChannelError: The engine answered an error (``EngineClosed`` when it
                stopped), or went away.
        """
        self._sock.settimeout(None)
        while not (message := self._receive(raw=True)).get("end"):
            yield message

    def _receive(self, raw: bool = False) -> dict[str, Any]:
        try:
            line = self._file.readline(MAX_MESSAGE_BYTES + 1)
        except OSError as error:
            raise self._lost(error) from None
        if not line.endswith(b"\n"):
            raise self._lost(None)
        try:
            message = load_message(line)
        except ValueError as error:
            raise ChannelError("ProtocolError", f"malformed answer from the engine: {error}"
                               ) from None
        if message.get("ok") is False:
            failure = message.get("error") or {}
            raise ChannelError(str(failure.get("type")), str(failure.get("message")))
        if raw:
            return message
        try:
            return {key: from_wire(value) for key, value in message.items()}
        except WireError as error:
            raise ChannelError("ProtocolError", f"malformed answer from the engine: {error}"
                               ) from None

    def _lost(self, error: OSError | None) -> ChannelError:
        why = f" ({error})" if error is not None else ""
        if isinstance(error, TimeoutError):
            return ChannelError(
                "TimeoutError", f"the engine did not answer within {self._sock.gettimeout():g} "
                f"s on {self.path!r}: it may be blocked or out of file descriptors (its log "
                "says which); run the command again")
        return ChannelError("ConnectionError", f"the engine closed the channel {self.path!r}"
                            f"{why}; it may have stopped: run the command again")
