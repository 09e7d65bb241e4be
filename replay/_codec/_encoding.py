"""Encoding: a value to msgpack bytes, prefixed with the format-version byte.

First one walk over the containers only, level by level with no recursion, refuses a
value nested deeper than `MAX_DEPTH` (or containing itself) and stops early on one too
large to record: msgpack recurses in C once per level, so that bound is what keeps a
hostile value from overflowing the C stack. Then msgpack walks the value in C: with
``strict_types=True`` every object whose type is not exactly msgpack-native (tuples,
subclasses, big ints, dates, ...) reaches `_default`, which makes it an ext type whose
payload is itself a packed value. Dispatch is on the exact type, so a subclass is never
silently turned into its base. Only when encoding fails do we walk the value again, to
say where the offending object sits.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
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
    MAX_ENCODED_BYTES,
    NATIVE,
    PACKED_AS_IS,
    REGISTERED,
    SET,
    SURROGATE_STR,
    TIME,
    TIMEDELTA,
    TUPLE,
    UUID_CODE,
    Registration,
    by_class,
    nesting,
)
from replay._errors import EncodingError

_ONE_US = timedelta(microseconds=1)
_SEQUENCES: frozenset[type] = frozenset({list, tuple, set, frozenset})


class SurrogateStr(str):
    """A str with lone surrogates; its inexact type routes it to `_default`."""

    __slots__ = ()


class _Unsupported(Exception):
    def __init__(self, obj: object) -> None:
        self.obj = obj


class _HookFailed(Exception):
    pass


class _TooDeep(Exception):
    pass


class _TooLarge(Exception):
    pass


# ------------------------------------------------------------------- the nesting walk


def _check_nesting(value: object) -> None:
    """Refuse a value whose containers nest deeper than `MAX_DEPTH`, level by level.

    Also counts the items met: each one takes at least a byte, so a value with more than
    `MAX_ENCODED_BYTES` of them is too large, however its containers share objects.

    Raises:
        _TooDeep: The value nests deeper than `MAX_DEPTH` or contains itself.
        _TooLarge: The value certainly encodes to more than `MAX_ENCODED_BYTES`.
        _HookFailed: A registered encode function raised.
    """
    t = type(value)
    if t not in nesting:
        return
    if t is dict and len(value) < _FLAT_ITEMS:  # type: ignore[arg-type]
        # A flat dict, the most common value: one level, no walk.
        for k, v in value.items():  # type: ignore[attr-defined]
            if type(v) in nesting or type(k) in nesting:
                break
        else:
            return
    level: list[Any] = [value]
    items = 0
    for _ in range(MAX_DEPTH):
        below: list[Any] = []
        for obj in level:
            t = type(obj)
            if t is dict:
                items += 2 * len(obj)
                _add_nesting(below, obj)
                _add_nesting(below, obj.values())
            else:
                children = obj if t in _SEQUENCES else _registered_children(by_class[t], obj)
                items += len(children)
                _add_nesting(below, children)
            if items >= MAX_ENCODED_BYTES:
                raise _TooLarge
        if not below:
            return
        level = below
    raise _TooDeep


# Flat dicts of fewer entries are checked by one quick loop (more entries: the walk,
# which looks for containers in C).
_FLAT_ITEMS = 64


def _add_nesting(below: list[Any], children: Iterable[Any]) -> None:
    # Most items are not containers: look for one in C before filtering in Python.
    if not nesting.isdisjoint(map(type, children)):
        below += [x for x in children if type(x) in nesting]


def _registered_children(reg: Registration, obj: object) -> list[Any]:
    if reg.fields is not None:
        return [getattr(obj, name) for name in reg.fields]
    return [_registered_data(reg, obj)]


def _registered_data(reg: Registration, obj: object) -> object:
    try:
        return reg.to_data(obj)
    except Exception as exc:
        raise _HookFailed(f"the encode function registered for tag {reg.tag!r} raised "
                          f"{type(exc).__qualname__}: {exc}") from exc


# ---------------------------------------------------------------------------- packing


def _pack(value: object, pack: Callable[[object], bytes] | None = None) -> bytes:
    """Pack `value`; `pack`: the calling thread's packer (only where nothing encloses it)."""
    try:
        packed: bytes = (pack or _pack_one)(value)
    except UnicodeEncodeError:  # lone surrogates: mark those strs so they become an ext
        value = _mark_surrogates(value)
        packed = msgpack.packb(value, **_PACK_OPTIONS)
    # msgpack packs a few inexact types itself (bytearray, memoryview, ExtType, Timestamp)
    # without asking `_default`. They can only hide in a bin or ext item, so look for them
    # only when a byte that can start such an item is present (a fast scan in C).
    if _BIN_OR_EXT.search(packed):
        _reject_packed_as_is(value)
    return packed


_BIN_OR_EXT = re.compile(rb"[\xc4-\xc9\xd4-\xd8]")
_WALKED = PACKED_AS_IS | {list, dict}


def _reject_packed_as_is(value: Any) -> None:
    # Only msgpack's own containers: other containers are ext payloads, checked by `_pack`.
    t = type(value)
    if t is list:
        for item in value:
            if type(item) in _WALKED:
                _reject_packed_as_is(item)
    elif t is dict:
        for k, item in value.items():
            if type(k) in PACKED_AS_IS:
                raise _Unsupported(k)
            if type(item) in _WALKED:
                _reject_packed_as_is(item)
    elif t in PACKED_AS_IS:
        raise _Unsupported(value)


def _mark_surrogates(value: Any) -> Any:
    # Only the natively packed containers need a walk: ext payloads go through `_pack`.
    t = type(value)
    if t is str:
        return value if utf8_ok(value) else SurrogateStr(value)
    if t is list:
        return [_mark_surrogates(x) for x in value]
    if t is dict:
        return {_mark_surrogates(k): _mark_surrogates(v) for k, v in value.items()}
    return value


def utf8_ok(s: str) -> bool:
    """Tell whether `s` encodes as UTF-8 (has no lone surrogates)."""
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


def _ext(code: int, payload: object) -> msgpack.ExtType:
    return msgpack.ExtType(code, _pack(payload))


def _tz_data(tz: tzinfo | None) -> object:
    if tz is None:
        return None
    if type(tz) is timezone:
        offset, name = tz.utcoffset(None), tz.tzname(None)
        if name == timezone(offset).tzname(None):
            return [offset // _ONE_US]
        return [offset // _ONE_US, name]  # an explicit name, e.g. timezone(..., "CEST")
    if type(tz) is ZoneInfo and tz.key is not None:
        return tz.key
    raise _Unsupported(tz)


_ENCODERS: dict[type, Callable[[Any], msgpack.ExtType]] = {
    tuple: lambda t: _ext(TUPLE, list(t)),
    int: lambda n: msgpack.ExtType(  # only ints outside msgpack's 64-bit range get here
        BIGINT, n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True)),
    Decimal: lambda d: msgpack.ExtType(DECIMAL, str(d).encode()),
    UUID: lambda u: msgpack.ExtType(UUID_CODE, u.bytes),
    set: lambda s: _ext(SET, list(s)),
    frozenset: lambda s: _ext(FROZENSET, list(s)),
    datetime: lambda d: _ext(DATETIME, [
        d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond, d.fold,
        _tz_data(d.tzinfo)]),
    date: lambda d: _ext(DATE, [d.year, d.month, d.day]),
    time: lambda t: _ext(TIME, [
        t.hour, t.minute, t.second, t.microsecond, t.fold, _tz_data(t.tzinfo)]),
    timedelta: lambda d: _ext(TIMEDELTA, [d.days, d.seconds, d.microseconds]),
    SurrogateStr: lambda s: msgpack.ExtType(
        SURROGATE_STR, s.encode("utf-8", "surrogatepass")),
}


def _default(obj: object) -> msgpack.ExtType:
    encoder = _ENCODERS.get(type(obj))
    if encoder is not None:
        return encoder(obj)
    reg = by_class.get(type(obj))
    if reg is None:
        raise _Unsupported(obj)
    return _ext(REGISTERED, [reg.tag, _registered_data(reg, obj)])


_PACK_OPTIONS: dict[str, Any] = {"default": _default, "strict_types": True,
                                 "use_bin_type": True}
# One packer per thread for whole values: `msgpack.packb` builds a new one per call,
# which costs more than packing a small value. A packer that raises midway empties its
# buffer. Payloads packed inside `_default` (while the thread's packer is busy) use
# `packb`.
_PACKERS = threading.local()


def _pack_one(value: object) -> bytes:
    return msgpack.packb(value, **_PACK_OPTIONS)  # type: ignore[no-any-return]


class _Packer:
    """A thread's packer, and whether it is packing now."""

    __slots__ = ("busy", "pack")

    def __init__(self) -> None:
        self.pack: Callable[[object], bytes] = msgpack.Packer(**_PACK_OPTIONS).pack
        self.busy = False


def _pack_whole(value: object) -> bytes:
    """Pack a whole value with the thread's packer.

    An `encode` nested in a registered encode function, which runs while that packer
    packs, uses `packb`.
    """
    packer: _Packer | None = getattr(_PACKERS, "packer", None)
    if packer is None:
        packer = _PACKERS.packer = _Packer()
    if packer.busy:
        return _pack(value)
    packer.busy = True
    try:
        return _pack(value, packer.pack)
    finally:
        packer.busy = False


def encode(value: object, *, key: str = "value") -> bytes:
    """Encode a value as msgpack, prefixed with the format-version byte.

    Args:
        value: The value to record (docs/concepts.md lists the supported types).
        key: The key or role of the value (``"input"``, a step key), for error messages.

    Returns:
        The encoded bytes.

    Raises:
        EncodingError: If the value holds an unsupported object anywhere inside it, nests
            deeper than `MAX_DEPTH` levels or contains itself, or its encoding is larger
            than `MAX_ENCODED_BYTES`.
    """
    try:
        _check_nesting(value)
        packed = _pack_whole(value)
    except _Unsupported as exc:
        raise EncodingError(unsupported_message(value, exc.obj, key), key=key) from None
    except _HookFailed as exc:
        raise EncodingError(f"cannot encode value of {key!r}: {exc}", key=key) from exc.__cause__
    except (_TooDeep, ValueError, RecursionError):  # msgpack says "recursion limit exceeded"
        raise EncodingError(
            f"cannot encode value of {key!r}: it nests more than {MAX_DEPTH} levels of "
            "containers (lists, tuples, dicts, sets, registered classes) or contains "
            "itself; record a flatter value without cycles", key=key) from None
    except _TooLarge:
        raise EncodingError(_too_large(key, f"more than {MAX_ENCODED_BYTES}"), key=key) from None
    size = len(packed) + 1
    if size > MAX_ENCODED_BYTES:
        raise EncodingError(_too_large(key, str(size)), key=key)
    return b"\x01" + packed


def _too_large(key: str, size: str) -> str:
    return (f"value of {key!r} is {size} bytes encoded; the limit is {MAX_ENCODED_BYTES} "
            "bytes (4 MiB); store large data elsewhere and record a reference")


def unsupported_message(value: object, obj: object, key: str) -> str:
    """Say which object of `value` cannot be encoded, where it sits, and what to do.

    Args:
        value: The whole value.
        obj: The offending object, as msgpack met it.
        key: The key or role of the value.

    Returns:
        The message for an `EncodingError`.
    """
    try:
        found = _locate(value, "", "")
    except Exception:  # a cycle, or a registered encode that fails: give no path
        found = None
    path, note, container, offender = found or ("", "", None, obj)
    where = (f" in a {note}" if note else "") + (f" at {path}" if path else "")
    if isinstance(offender, tzinfo):
        kind = "datetime" if container is None else type(container).__name__
        return (f"cannot encode value of {key!r}: the tzinfo {offender!r} of a {kind}{where} "
                "is not supported; use datetime.timezone or zoneinfo.ZoneInfo(key)")
    cls = type(offender)
    fix = ("" if cls in PACKED_AS_IS else
           f" or register the class with replay.register_type({cls.__name__}, tag=...)")
    return (f"cannot encode value of {key!r}: object of type {cls.__qualname__!r}{where} "
            f"is not supported; use plain data (dict, list, str, bytes, int, ...){fix}")


def _locate(value: Any, path: str, note: str) -> tuple[str, str, object, object] | None:
    """Find the first unencodable object: (path, note, its container, it), or None."""
    t = type(value)

    def sub(segment: str) -> str:  # the path stops where a set element or dict key starts
        return path if note else path + segment

    if t is datetime or t is time:
        try:
            _tz_data(value.tzinfo)
        except _Unsupported:
            return path, note, value, value.tzinfo
        return None
    if t is list or t is tuple:
        items = [(sub(f"[{i}]"), note, x) for i, x in enumerate(value)]
    elif t is set or t is frozenset:
        items = [(path, note or "set element", x) for x in value]
    elif t is dict:
        items = [pair for k, v in value.items()
                 for pair in ((path, note or "dict key", k), (sub(f"[{k!r}]"), note, v))]
    elif t in NATIVE or t is SurrogateStr:
        return None
    elif t in by_class:
        reg = by_class[t]
        items = ([(path, note, reg.to_data(value))] if reg.fields is None else
                 [(sub(f".{name}"), note, getattr(value, name)) for name in reg.fields])
    else:
        return path, note, None, value
    for sub_path, sub_note, item in items:
        found = _locate(item, sub_path, sub_note)
        if found is not None:
            return found
    return None
