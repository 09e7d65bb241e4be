"""Decoding: bytes made by `encode` back into the exact value, whatever the bytes hold.

Decoding never imports a module and never runs code chosen by the data: ext codes map to
a fixed table of constructors, and the registered-type ext builds only classes registered
in this process. (msgpack decodes its own timestamp ext, -1, to an aware UTC datetime
without asking the hook; forging one is no worse than forging any recorded value.)

No stored bytes can crash the process. msgpack parses lists and maps with a stack of its
own, but an ext payload (a tuple, a set, a registered class) is parsed by a nested call
from the ext hook. Those calls are counted and refused beyond the nesting `encode`
allows; past the first few, an `Unpacker` parses the payload, because `unpackb` keeps
its whole parser state (about 40 KB) on the C stack.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import msgpack

from replay._codec._types import (
    BIGINT,
    DATE,
    DATETIME,
    DECIMAL,
    FROZENSET,
    MAX_DEPTH,
    REGISTERED,
    SET,
    SURROGATE_STR,
    TIME,
    TIMEDELTA,
    TUPLE,
    UUID_CODE,
    VERSION,
    by_tag,
)
from replay._errors import EncodingError

_OPTIONS: dict[str, Any] = {"strict_map_key": False, "timestamp": 3}
_SHALLOW = 3  # nested payloads parsed by `unpackb` (fast, but heavy on the C stack)
# An encodable value nests at most MAX_DEPTH containers, and a date or time may sit
# inside the innermost one: that many nested ext payloads, and no more.
_MAX_EXTS = MAX_DEPTH + 1


class _Decoding:
    """One call of `decode`: knows how deep in nested ext payloads it is."""

    __slots__ = ("depth",)

    def __init__(self) -> None:
        self.depth = 0

    def unpack(self, payload: bytes | memoryview) -> Any:
        if self.depth <= _SHALLOW:
            return msgpack.unpackb(payload, ext_hook=self.ext_hook, **_OPTIONS)
        unpacker = msgpack.Unpacker(
            None, ext_hook=self.ext_hook, max_buffer_size=max(len(payload), 1), **_OPTIONS)
        unpacker.feed(payload)
        value = unpacker.unpack()
        if unpacker.tell() != len(payload):
            raise ValueError("extra data after an ext payload")
        return value

    def ext_hook(self, code: int, payload: bytes) -> object:
        decoder = _DECODERS.get(code)
        if decoder is None:
            raise EncodingError(f"cannot decode value: unknown ext code {code}; the data is "
                                "corrupted or was written by a newer replay")
        if self.depth >= _MAX_EXTS:
            raise EncodingError(
                f"cannot decode value: it nests more than {MAX_DEPTH} levels of containers, "
                "deeper than replay records; the data is corrupted or was recorded by an "
                "older replay")
        self.depth += 1
        try:
            return decoder(self, payload)
        finally:
            self.depth -= 1


def _tz_from(data: Any) -> tzinfo | None:
    if data is None:
        return None
    if type(data) is str:
        return ZoneInfo(data)
    return timezone(timedelta(microseconds=data[0]), *data[1:])


def _dec_datetime(d: _Decoding, payload: bytes) -> datetime:
    y, mo, day, h, mi, s, us, fold, tz = d.unpack(payload)
    return datetime(y, mo, day, h, mi, s, us, tzinfo=_tz_from(tz), fold=fold)


def _dec_time(d: _Decoding, payload: bytes) -> time:
    h, mi, s, us, fold, tz = d.unpack(payload)
    return time(h, mi, s, us, tzinfo=_tz_from(tz), fold=fold)


def _dec_registered(d: _Decoding, payload: bytes) -> object:
    tag, data = d.unpack(payload)
    reg = by_tag.get(tag)
    if reg is None:
        raise EncodingError(
            f"cannot decode value: tag {tag!r} is not registered in this process; call "
            f"replay.register_type(cls, tag={tag!r}) before reading values of that type")
    try:
        return reg.from_data(data)
    except Exception as exc:
        raise EncodingError(
            f"cannot decode value: decoding tag {tag!r} as {reg.cls.__qualname__} raised "
            f"{type(exc).__qualname__}: {exc}") from exc


_DECODERS: dict[int, Callable[[_Decoding, bytes], object]] = {
    TUPLE: lambda d, p: tuple(d.unpack(p)),
    BIGINT: lambda d, p: int.from_bytes(p, "big", signed=True),
    DECIMAL: lambda d, p: Decimal(p.decode()),
    UUID_CODE: lambda d, p: UUID(bytes=p),
    SET: lambda d, p: set(d.unpack(p)),
    FROZENSET: lambda d, p: frozenset(d.unpack(p)),
    DATETIME: _dec_datetime,
    DATE: lambda d, p: date(*d.unpack(p)),
    TIME: _dec_time,
    TIMEDELTA: lambda d, p: timedelta(*d.unpack(p)),
    REGISTERED: _dec_registered,
    SURROGATE_STR: lambda d, p: p.decode("utf-8", "surrogatepass"),
}


def decode(data: bytes) -> object:
    """Decode bytes made by `encode` back into the exact value.

    Args:
        data: The encoded bytes (any bytes-like object).

    Returns:
        The value, equal to the one encoded and made of the same types.

    Raises:
        EncodingError: If the version byte, an ext code or a registered tag is unknown,
            the data nests deeper than `encode` allows, or it is malformed.
    """
    # Replay decodes every recorded value it sends back: `bytes` (what the stores
    # return) is sliced (a copy, cheaper than a memoryview for the usual small value),
    # and the nesting count is made only when an ext payload is met.
    if type(data) is not bytes:
        data = memoryview(data)  # type: ignore[assignment]
    if not data or data[0] != VERSION:
        raise EncodingError(
            f"cannot decode value: unknown format version {data[0] if data else 'missing'} "
            f"(this replay reads version {VERSION}); the data is corrupted or was written "
            "by a newer replay")
    try:
        return msgpack.unpackb(data[1:], ext_hook=_top_ext, strict_map_key=False, timestamp=3)
    except EncodingError:
        raise
    except (ValueError, TypeError, LookupError, ArithmeticError, OSError, RecursionError,
            msgpack.UnpackException) as exc:
        raise EncodingError(
            f"cannot decode value: malformed data ({type(exc).__qualname__}: {exc})"
        ) from exc


def _top_ext(code: int, payload: bytes) -> object:
    # An ext payload of the outermost level: from here on, its nesting is counted.
    return _Decoding().ext_hook(code, payload)
