"""The live channel's protocol: where its socket lives, who may use it, what it carries.

While an engine holds a database file, no other process can open the file (DuckDB
takes a lock), so the `replay` command talks to the engine instead, over a Unix socket
next to the database: ``<database>.sock``, mode 0600, and the peer's user id is checked
on both ends (the engine serves only its own user; the command talks only to an
engine of its own user). It is never a TCP socket.

Messages are JSON objects, one per line (UTF-8). A connection carries one request
and its answer. The request names the protocol version and an operation::

    {"protocol": 1, "op": "query", "sql": "SELECT ...", "params": [...]}
    {"protocol": 1, "op": "signal", "run_id": "r", "key": "k", "payload": ...}
    {"protocol": 1, "op": "resume", "run_id": "r"}
    {"protocol": 1, "op": "hello"}

The answer starts with a header, ``{"ok": true, ...}`` or
``{"ok": false, "error": {"type": "RunNotFound", "message": "..."}}``. A query's header
carries ``columns`` and ``types`` (DuckDB type names); ``hello``'s carries ``pid``,
``version`` and ``now`` (the engine clock). Then a query's answer has
``{"rows": [...]}`` messages and a final ``{"end": true, "rows": N}`` (or an error
message, if the query fails half-way).

Values that JSON cannot carry exactly travel as one-key objects tagged with ``$``:
``{"$datetime": iso}``, ``{"$bytes": base64}``, ``{"$map": [[k, v], ...]}`` (every
dict), and so on (see `to_wire`). This module is pure standard library.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

PROTOCOL = 1
SUFFIX = ".sock"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# sun_path holds 108 bytes on Linux, 104 on macOS; longer paths go through a directory fd.
_MAX_ADDRESS_BYTES = 100


def socket_path(database: str) -> str:
    """Return the channel's socket path for a database file (symbolic links resolved)."""
    return os.path.realpath(database) + SUFFIX


@contextlib.contextmanager
def short_address(path: str) -> Iterator[str]:
    """Give an address for `path` that fits a Unix socket address.

    A path too long for ``sun_path`` is reached through an open descriptor of its
    directory (``/proc/self/fd/N/name``, Linux).

    Raises:
        OSError: The path is too long and this system has no ``/proc/self/fd``.
    """
    if len(os.fsencode(path)) <= _MAX_ADDRESS_BYTES:
        yield path
        return
    if not os.path.isdir("/proc/self/fd"):
        raise OSError(f"socket path {path!r} is too long for a Unix socket address")
    directory, name = os.path.split(path)
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def peer_uid(sock: Any) -> int | None:
    """Return the user id of the process at the other end of a Unix socket (stdlib or trio).

    Returns:
        The uid, or None if this system cannot tell (then nobody is trusted).
    """
    if hasattr(socket, "SO_PEERCRED"):  # Linux: struct ucred {pid, uid, gid}
        data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", data)[1])
    if sys.platform == "darwin" and hasattr(socket, "LOCAL_PEERCRED"):
        # struct xucred {u_int cr_version; uid_t cr_uid; ...}, at level SOL_LOCAL (0).
        data = sock.getsockopt(0, socket.LOCAL_PEERCRED, struct.calcsize("2I"))
        return int(struct.unpack("2I", data[:8])[1])
    return None


def channel_supported() -> bool:
    """Tell whether this system has Unix sockets with peer credentials."""
    return hasattr(socket, "AF_UNIX") and (
        hasattr(socket, "SO_PEERCRED")
        or (sys.platform == "darwin" and hasattr(socket, "LOCAL_PEERCRED"))
    )


# -- messages --


def dump_message(message: dict[str, Any]) -> bytes:
    """Return one message as a line of JSON (values must already be wire values)."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode() + b"\n"


def load_message(line: bytes) -> dict[str, Any]:
    """Parse one line of JSON into a message.

    Raises:
        ValueError: The line is not a JSON object.
    """
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"expected a JSON object, got {type(message).__name__}")
    return message


# -- values --

_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _float(value: float) -> Any:
    if math.isfinite(value):
        return value
    return {"$float": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}


_TO_WIRE: dict[type, Callable[[Any], Any]] = {
    float: _float,
    bytes: lambda b: {"$bytes": base64.b64encode(b).decode()},
    bytearray: lambda b: {"$bytes": base64.b64encode(bytes(b)).decode()},
    memoryview: lambda b: {"$bytes": base64.b64encode(bytes(b)).decode()},
    datetime: lambda d: {"$datetime": d.isoformat()},
    date: lambda d: {"$date": d.isoformat()},
    time: lambda t: {"$time": t.isoformat()},
    timedelta: lambda d: {"$timedelta": [d.days, d.seconds, d.microseconds]},
    Decimal: lambda d: {"$decimal": str(d)},
    UUID: lambda u: {"$uuid": str(u)},
    list: lambda xs: [to_wire(x) for x in xs],
    tuple: lambda xs: [to_wire(x) for x in xs],
    dict: lambda d: {"$map": [[to_wire(k), to_wire(v)] for k, v in d.items()]},
}

_FROM_WIRE: dict[str, Callable[[Any], Any]] = {
    "$float": lambda s: _FLOATS[s],
    "$bytes": base64.b64decode,
    "$datetime": datetime.fromisoformat,
    "$date": date.fromisoformat,
    "$time": time.fromisoformat,
    "$timedelta": lambda parts: timedelta(days=parts[0], seconds=parts[1],
                                          microseconds=parts[2]),
    "$decimal": Decimal,
    "$uuid": UUID,
    "$map": lambda pairs: {from_wire(k): from_wire(v) for k, v in pairs},
    "$text": str,
}


def to_wire(value: Any) -> Any:
    """Turn a query value or signal payload into JSON data, losslessly where possible.

    Types without a tag (none that DuckDB returns) travel as ``{"$text": str(value)}``.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if type(value) is int:
        return value
    convert = _TO_WIRE.get(type(value))
    if convert is not None:
        return convert(value)
    for kind, convert in _TO_WIRE.items():  # subclasses (e.g. an int enum, a str enum)
        if isinstance(value, kind):
            return convert(value)
    if isinstance(value, int):
        return int(value)
    return {"$text": str(value)}


def from_wire(data: Any) -> Any:
    """Turn JSON data made by `to_wire` back into Python values.

    Raises:
        ValueError: A tagged value is malformed or its tag is unknown.
    """
    if isinstance(data, list):
        return [from_wire(item) for item in data]
    if not isinstance(data, dict):
        return data
    if len(data) != 1:
        raise ValueError(f"malformed wire value {data!r}")
    (tag, payload), = data.items()
    convert = _FROM_WIRE.get(tag)
    if convert is None:
        raise ValueError(f"unknown wire value tag {tag!r}")
    try:
        return convert(payload)
    except (TypeError, KeyError, IndexError) as error:
        raise ValueError(f"malformed wire value {data!r}") from error
