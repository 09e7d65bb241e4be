"""The `replay` command's side of the live channel (protocol: `replay._channel`).

Plain blocking sockets: the command does one thing and exits. Each request opens its
own connection. Before anything is sent, the engine's user id is checked, so the
command never talks to a socket that another user planted next to the database.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

from replay._channel import (
    MAX_MESSAGE_BYTES,
    PROTOCOL,
    dump_message,
    from_wire,
    load_message,
    peer_uid,
    short_address,
    socket_path,
    to_wire,
)

TIMEOUT_SECONDS = 60.0


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
        one left by a process that died).

    Raises:
        ChannelError: The socket exists but this user may not use it.
    """
    path = socket_path(database)
    if not os.path.lexists(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with short_address(path) as address:
            sock.connect(address)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except PermissionError:
        sock.close()
        raise ChannelError(
            "PermissionError",
            f"cannot use the engine's channel {path!r}: permission denied; it serves only "
            "the user that runs the engine: run replay as that user") from None
    except OSError as error:
        sock.close()
        raise ChannelError("OSError", f"cannot connect to {path!r}: {error}") from None
    owner = peer_uid(sock)
    if owner != os.geteuid():
        sock.close()
        raise ChannelError(
            "PermissionError",
            f"{path!r} is served by uid {owner}, not by you (uid {os.geteuid()}); "
            "refusing to talk to it: run replay as the user that runs the engine")
    return Connection(sock, path)


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

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return the answer's header (values decoded).

        Raises:
            ChannelError: The engine refused or failed the request.
        """
        message = {"protocol": PROTOCOL, "op": op, **{k: to_wire(v) for k, v in fields.items()}}
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

    def _receive(self) -> dict[str, Any]:
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
        return {key: from_wire(value) for key, value in message.items()}

    def _lost(self, error: OSError | None) -> ChannelError:
        why = f" ({error})" if error is not None else ""
        if isinstance(error, TimeoutError):
            return ChannelError("TimeoutError", f"the engine did not answer within "
                                f"{TIMEOUT_SECONDS:.0f} s on {self.path!r}; is it blocked?")
        return ChannelError("ConnectionError", f"the engine closed the channel {self.path!r}"
                            f"{why}; it may have stopped: run the command again")
