"""The live channel's protocol: where its socket lives, who may use it, what it carries.

While an engine holds a database file, no other process can open the file (DuckDB
takes a lock), so the `replay` command talks to the engine instead, over a Unix socket
next to the database: ``<database>.sock``, mode 0600, and the peer's user id is checked
on both ends (the engine serves only its own user; the command talks only to an
engine of its own user). It is never a TCP socket.

Messages are JSON objects, one per line (UTF-8). A connection carries one request
and its answer. The request names the protocol version and an operation::

    {"protocol": 2, "op": "watch", "run_id": "r", "after_seq": 12}
    {"protocol": 1, "op": "query", "sql": "SELECT ...", "params": [...]}
    {"protocol": 1, "op": "signal", "run_id": "r", "key": "k", "payload": ...}
    {"protocol": 1, "op": "resume", "run_id": "r"}
    {"protocol": 1, "op": "cancel", "run_id": "r", "reason": ...}
    {"protocol": 1, "op": "terminate", "run_id": "r", "reason": ...}
    {"protocol": 1, "op": "hello"}

The answer starts with a header, ``{"ok": true, ...}`` or
``{"ok": false, "error": {"type": "RunNotFound", "message": "..."}}``. A query's header
carries ``columns`` and ``types`` (DuckDB type names); ``hello``'s carries ``pid``,
``version`` and ``now`` (the engine clock); ``cancel``'s carries ``requested`` (false
when the run's cancellation was requested before) and ``state``. Then a query's answer has
``{"rows": [...]}`` messages and a final ``{"end": true, "rows": N}`` (or an error
message, if the query fails half-way).

``watch`` (protocol 2; ``run_id`` or null for every run, ``after_seq``, ``workflow``,
``states``, ``buffer``) streams: after the header, one ``{"update": {...}}`` message per
`RunUpdate` (its `RunInfo` as ``call``'s ``info``, its event's fields, recorded values
as codec bytes), until ``{"end": true}`` once the watched run finished, an error
message (``EngineClosed`` when the engine stops), or the client hangs up. A client that
reads slowly never holds the engine up: it is told how many updates it ``missed``.
An engine accepts every version in `ACCEPTED_PROTOCOLS`; version 1 lacks ``watch``.

Values that JSON cannot carry exactly travel as one-key objects tagged with ``$``:
``{"$datetime": iso}``, ``{"$bytes": base64}``, ``{"$map": [[k, v], ...]}`` (every
dict), and so on (see `to_wire`). A value that is malformed, has an unknown tag or
nests more than `MAX_DEPTH` lists and mappings deep is a `WireError`, answered as an
error like any other bad request. This module is pure standard library.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import reprlib
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

PROTOCOL = 2
# What an engine accepts: version 1 clients (no ``watch``) keep working.
ACCEPTED_PROTOCOLS = frozenset({1, 2})
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
        ValueError: The line is not a JSON object, or nests too deeply to parse.
    """
    try:
        message = json.loads(line)
    except RecursionError:  # thousands of levels: refuse it, never crash on it
        raise ValueError("the JSON nests too deeply to read; send a flatter value") from None
    if not isinstance(message, dict):
        raise ValueError(f"expected a JSON object, got {type(message).__name__}")
    return message


# -- values --

# How deep a value may nest on the wire (lists and mappings; the channel's limit, not the
# codec's): deep enough for any real payload, and far from Python's recursion limit, so a
# request nested thousands of levels deep is refused with a message, never a crash.
MAX_DEPTH = 200

_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class WireError(ValueError):
    """A value cannot travel on the channel: malformed, of an unknown tag, or too deep."""


def _float(value: float) -> Any:
    if math.isfinite(value):
        return value
    return {"$float": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}


def _b64(data: bytes | bytearray | memoryview) -> dict[str, str]:
    return {"$bytes": base64.b64encode(bytes(data)).decode()}


_TO_WIRE: dict[type, Callable[[Any], Any]] = {
    float: _float,
    bytes: _b64,
    bytearray: _b64,
    memoryview: _b64,
    datetime: lambda d: {"$datetime": d.isoformat()},
    date: lambda d: {"$date": d.isoformat()},
    time: lambda t: {"$time": t.isoformat()},
    timedelta: lambda d: {"$timedelta": [d.days, d.seconds, d.microseconds]},
    Decimal: lambda d: {"$decimal": str(d)},
    UUID: lambda u: {"$uuid": str(u)},
}


def _timedelta(parts: Any) -> timedelta:
    if not (isinstance(parts, list) and len(parts) == 3
            and all(type(part) is int for part in parts)):
        raise TypeError("expected three whole numbers")
    return timedelta(days=parts[0], seconds=parts[1], microseconds=parts[2])


# tag: (convert, what its payload must be). Every payload but $timedelta's is text.
_FROM_WIRE: dict[str, tuple[Callable[[Any], Any], str]] = {
    "$bytes": (lambda s: base64.b64decode(s, validate=True), "base64 text"),
    "$date": (date.fromisoformat, 'an ISO 8601 date as text, such as "2026-01-02"'),
    "$datetime": (datetime.fromisoformat,
                  'an ISO 8601 date and time as text, such as "2026-01-02T03:04:05+00:00"'),
    "$decimal": (Decimal, 'a decimal number as text, such as "1.25"'),
    "$float": (_FLOATS.__getitem__, '"NaN", "Infinity" or "-Infinity"'),
    "$text": (str, "text"),
    "$time": (time.fromisoformat, 'an ISO 8601 time as text, such as "03:04:05"'),
    "$timedelta": (_timedelta, "[days, seconds, microseconds], three whole numbers"),
    "$uuid": (UUID, 'a UUID as text, such as "12345678-1234-5678-1234-567812345678"'),
}


def to_wire(value: Any) -> Any:
    """Turn a query value or signal payload into JSON data, losslessly where possible.

    Types without a tag (none that DuckDB returns) travel as ``{"$text": str(value)}``.

    Raises:
        WireError: The value nests more than `MAX_DEPTH` lists and mappings deep.
    """
    return _to_wire(value, MAX_DEPTH)


def _to_wire(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool | str) or type(value) is int:
        return value
    convert = _TO_WIRE.get(type(value))
    if convert is not None:
        return convert(value)
    if isinstance(value, list | tuple | dict):
        if depth == 0:
            raise _too_deep()
        if isinstance(value, dict):
            return {"$map": [[_to_wire(k, depth - 1), _to_wire(v, depth - 1)]
                             for k, v in value.items()]}
        return [_to_wire(item, depth - 1) for item in value]
    for kind, convert in _TO_WIRE.items():  # subclasses (e.g. a float enum)
        if isinstance(value, kind):
            return convert(value)
    if isinstance(value, int):  # e.g. an int enum
        return int(value)
    return {"$text": str(value)}


def from_wire(data: Any) -> Any:
    """Turn JSON data made by `to_wire` back into Python values.

    Raises:
        WireError: A tagged value is malformed or its tag is unknown, or the data nests
            more than `MAX_DEPTH` lists and mappings deep.
    """
    return _from_wire(data, MAX_DEPTH)


def _from_wire(data: Any, depth: int) -> Any:
    if not isinstance(data, list | dict):
        return data
    if isinstance(data, list):
        if depth == 0:
            raise _too_deep()
        return [_from_wire(item, depth - 1) for item in data]
    if len(data) != 1:
        raise WireError(f"{short_repr(data)} is not a wire value: an object carries one tag, "
                        'such as {"$decimal": "1.25"}, and a mapping travels as '
                        '{"$map": [[key, value], ...]}')
    (tag, payload), = data.items()
    if tag == "$map":
        if depth == 0:
            raise _too_deep()
        return _map(data, payload, depth - 1)
    if tag not in _FROM_WIRE:
        raise WireError(f"unknown wire value tag {tag!r}")  # (tests/test_cli.py has it)
    convert, takes = _FROM_WIRE[tag]
    try:
        if tag != "$timedelta" and not isinstance(payload, str):
            raise TypeError("expected text")
        return convert(payload)
    except (TypeError, ValueError, LookupError, ArithmeticError):
        raise WireError(f"{short_repr(data)} is not a valid {tag}: {tag} takes {takes}") from None


def _map(data: Any, pairs: Any, depth: int) -> dict[Any, Any]:
    try:
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in pairs):
            raise TypeError("expected pairs")
        return {_from_wire(k, depth): _from_wire(v, depth) for k, v in pairs}
    except TypeError:  # not a list of pairs, or a key that is a list or a mapping
        raise WireError(f"{short_repr(data)} is not a valid $map: $map takes [[key, value], "
                        "...] pairs whose keys are not lists or mappings") from None


def _too_deep() -> WireError:
    return WireError(f"the value nests more than {MAX_DEPTH} lists and mappings deep; "
                     "send a flatter value")


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40
_REPR.maxlevel = 3


def short_repr(data: Any) -> str:
    """Return a repr of `data` short enough for an error message (never recursing far)."""
    return _REPR.repr(data)
