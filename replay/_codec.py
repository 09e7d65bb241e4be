"""The value codec: msgpack with a format-version byte, and the JSON rendering for SQL.

Encoding lets msgpack walk the value in C (no Python pre-walk): with ``strict_types=True``
every object whose type is not exactly msgpack-native (tuples, subclasses, big ints,
dates, ...) reaches `_default`, which makes it an ext type whose payload is itself a
packed value. Dispatch is on the exact type, so a subclass is never silently turned into
its base. Only when encoding fails do we walk the value in Python, to say where the
offending object sits.

Decoding never imports a module and never runs code chosen by the data: ext codes map to
a fixed table of constructors, and the registered-type ext builds only classes registered
in this process. (msgpack decodes its own timestamp ext, -1, to an aware UTC datetime
without asking `_ext_hook`; forging one is no worse than forging any recorded value.)
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import inspect
import json
import math
import re
import threading
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any, NamedTuple
from uuid import UUID
from zoneinfo import ZoneInfo

import msgpack

from replay._errors import EncodingError

MAX_ENCODED_BYTES: int = 4 * 1024 * 1024
MAX_JSON_CHARS: int = 64 * 1024

_VERSION = 1
# Ext codes are part of the on-disk format: never renumber, only add.
_TUPLE, _BIGINT, _DECIMAL, _UUID, _SET, _FROZENSET = 1, 2, 3, 4, 5, 6
_DATETIME, _DATE, _TIME, _TIMEDELTA, _REGISTERED, _SURROGATE_STR = 7, 8, 9, 10, 11, 12
_NATIVE: frozenset[type] = frozenset({
    type(None), bool, int, float, str, bytes, list, tuple, dict, set, frozenset,
    datetime, date, time, timedelta, Decimal, UUID,
})
_ONE_US = timedelta(microseconds=1)


class _Registration(NamedTuple):
    cls: type
    tag: str
    to_data: Callable[[Any], object]
    from_data: Callable[[Any], object]
    fields: tuple[str, ...] | None  # dataclass/NamedTuple fields, for error paths


_by_class: dict[type, _Registration] = {}
_by_tag: dict[str, _Registration] = {}
_registry_lock = threading.Lock()


class _SurrogateStr(str):
    """A str with lone surrogates; its inexact type routes it to `_default`."""

    __slots__ = ()


class _Unsupported(Exception):
    def __init__(self, obj: object) -> None:
        self.obj = obj


class _HookFailed(Exception):
    pass


# ---------------------------------------------------------------------------- encoding


def _pack(value: object) -> bytes:
    try:
        packed: bytes = msgpack.packb(value, **_PACK_OPTIONS)
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
_PACKED_AS_IS: frozenset[type] = frozenset({
    bytearray, memoryview, msgpack.ExtType, msgpack.Timestamp})
_WALKED = _PACKED_AS_IS | {list, dict}


def _reject_packed_as_is(value: Any) -> None:
    # Only msgpack's own containers: other containers are ext payloads, checked by `_pack`.
    t = type(value)
    if t is list:
        for item in value:
            if type(item) in _WALKED:
                _reject_packed_as_is(item)
    elif t is dict:
        for k, item in value.items():
            if type(k) in _PACKED_AS_IS:
                raise _Unsupported(k)
            if type(item) in _WALKED:
                _reject_packed_as_is(item)
    elif t in _PACKED_AS_IS:
        raise _Unsupported(value)


def _mark_surrogates(value: Any) -> Any:
    # Only the natively packed containers need a walk: ext payloads go through `_pack`.
    t = type(value)
    if t is str:
        return value if _utf8_ok(value) else _SurrogateStr(value)
    if t is list:
        return [_mark_surrogates(x) for x in value]
    if t is dict:
        return {_mark_surrogates(k): _mark_surrogates(v) for k, v in value.items()}
    return value


def _utf8_ok(s: str) -> bool:
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
    tuple: lambda t: _ext(_TUPLE, list(t)),
    int: lambda n: msgpack.ExtType(  # only ints outside msgpack's 64-bit range get here
        _BIGINT, n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True)),
    Decimal: lambda d: msgpack.ExtType(_DECIMAL, str(d).encode()),
    UUID: lambda u: msgpack.ExtType(_UUID, u.bytes),
    set: lambda s: _ext(_SET, list(s)),
    frozenset: lambda s: _ext(_FROZENSET, list(s)),
    datetime: lambda d: _ext(_DATETIME, [
        d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond, d.fold,
        _tz_data(d.tzinfo)]),
    date: lambda d: _ext(_DATE, [d.year, d.month, d.day]),
    time: lambda t: _ext(_TIME, [
        t.hour, t.minute, t.second, t.microsecond, t.fold, _tz_data(t.tzinfo)]),
    timedelta: lambda d: _ext(_TIMEDELTA, [d.days, d.seconds, d.microseconds]),
    _SurrogateStr: lambda s: msgpack.ExtType(
        _SURROGATE_STR, s.encode("utf-8", "surrogatepass")),
}


def _default(obj: object) -> msgpack.ExtType:
    encoder = _ENCODERS.get(type(obj))
    if encoder is not None:
        return encoder(obj)
    reg = _by_class.get(type(obj))
    if reg is None:
        raise _Unsupported(obj)
    try:
        data = reg.to_data(obj)
    except Exception as exc:
        raise _HookFailed(f"the encode function registered for tag {reg.tag!r} raised "
                          f"{type(exc).__qualname__}: {exc}") from exc
    return _ext(_REGISTERED, [reg.tag, data])


_PACK_OPTIONS: dict[str, Any] = {"default": _default, "strict_types": True,
                                 "use_bin_type": True}


def encode(value: object, *, key: str = "value") -> bytes:
    """Encode a value as msgpack, prefixed with the format-version byte.

    Args:
        value: The value to record (SPEC §5 lists the supported types).
        key: The key or role of the value (``"input"``, a step key), for error messages.

    Returns:
        The encoded bytes.

    Raises:
        EncodingError: If the value holds an unsupported object anywhere inside it, or
            its encoding is larger than `MAX_ENCODED_BYTES`.
    """
    try:
        packed = _pack(value)
    except _Unsupported as exc:
        raise EncodingError(_unsupported_message(value, exc.obj, key), key=key) from None
    except _HookFailed as exc:
        raise EncodingError(f"cannot encode value of {key!r}: {exc}", key=key) from exc.__cause__
    except (ValueError, RecursionError) as exc:  # msgpack says "recursion limit exceeded"
        raise EncodingError(
            f"cannot encode value of {key!r}: it is nested too deeply or contains itself; "
            "record a flatter value without cycles", key=key) from exc
    size = len(packed) + 1
    if size > MAX_ENCODED_BYTES:
        raise EncodingError(
            f"value of {key!r} is {size} bytes encoded; the limit is {MAX_ENCODED_BYTES} "
            "bytes (4 MiB); store large data elsewhere and record a reference", key=key)
    return b"\x01" + packed


def _unsupported_message(value: object, obj: object, key: str) -> str:
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
    fix = ("" if cls in _PACKED_AS_IS else
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
    elif t in _NATIVE or t is _SurrogateStr:
        return None
    elif t in _by_class:
        reg = _by_class[t]
        items = ([(path, note, reg.to_data(value))] if reg.fields is None else
                 [(sub(f".{name}"), note, getattr(value, name)) for name in reg.fields])
    else:
        return path, note, None, value
    for sub_path, sub_note, item in items:
        found = _locate(item, sub_path, sub_note)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------------- decoding


def _unpack(payload: bytes | memoryview) -> Any:
    return msgpack.unpackb(payload, ext_hook=_ext_hook, strict_map_key=False, timestamp=3)


def _tz_from(data: Any) -> tzinfo | None:
    if data is None:
        return None
    if type(data) is str:
        return ZoneInfo(data)
    return timezone(timedelta(microseconds=data[0]), *data[1:])


def _dec_datetime(payload: bytes) -> datetime:
    y, mo, d, h, mi, s, us, fold, tz = _unpack(payload)
    return datetime(y, mo, d, h, mi, s, us, tzinfo=_tz_from(tz), fold=fold)


def _dec_time(payload: bytes) -> time:
    h, mi, s, us, fold, tz = _unpack(payload)
    return time(h, mi, s, us, tzinfo=_tz_from(tz), fold=fold)


def _dec_registered(payload: bytes) -> object:
    tag, data = _unpack(payload)
    reg = _by_tag.get(tag)
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


_DECODERS: dict[int, Callable[[bytes], object]] = {
    _TUPLE: lambda p: tuple(_unpack(p)),
    _BIGINT: lambda p: int.from_bytes(p, "big", signed=True),
    _DECIMAL: lambda p: Decimal(p.decode()),
    _UUID: lambda p: UUID(bytes=p),
    _SET: lambda p: set(_unpack(p)),
    _FROZENSET: lambda p: frozenset(_unpack(p)),
    _DATETIME: _dec_datetime,
    _DATE: lambda p: date(*_unpack(p)),
    _TIME: _dec_time,
    _TIMEDELTA: lambda p: timedelta(*_unpack(p)),
    _REGISTERED: _dec_registered,
    _SURROGATE_STR: lambda p: p.decode("utf-8", "surrogatepass"),
}


def _ext_hook(code: int, payload: bytes) -> object:
    decoder = _DECODERS.get(code)
    if decoder is None:
        raise EncodingError(f"cannot decode value: unknown ext code {code}; the data is "
                            "corrupted or was written by a newer replay")
    return decoder(payload)


def decode(data: bytes) -> object:
    """Decode bytes made by `encode` back into the exact value.

    Args:
        data: The encoded bytes (any bytes-like object).

    Returns:
        The value, equal to the one encoded and made of the same types.

    Raises:
        EncodingError: If the version byte, an ext code or a registered tag is unknown,
            or the data is malformed.
    """
    view = memoryview(data)
    if len(view) == 0 or view[0] != _VERSION:
        raise EncodingError(
            f"cannot decode value: unknown format version {view[0] if view else 'missing'} "
            f"(this replay reads version {_VERSION}); the data is corrupted or was written "
            "by a newer replay")
    try:
        return _unpack(view[1:])
    except EncodingError:
        raise
    except (ValueError, TypeError, LookupError, ArithmeticError, OSError, RecursionError,
            msgpack.UnpackException) as exc:
        raise EncodingError(
            f"cannot decode value: malformed data ({type(exc).__qualname__}: {exc})"
        ) from exc


# ------------------------------------------------------------------------- JSON for SQL


def _json_key(k: object) -> str:
    rendered = _jsonable(k)
    return rendered if type(rendered) is str else _dumps(rendered)


def _json_str(s: str) -> str:
    if _utf8_ok(s):
        return s
    return s.encode("utf-8", "backslashreplace").decode()  # a lone surrogate as \udxxx


def _json_dict(d: dict[Any, Any]) -> object:
    out = {k if type(k) is str and k.isascii() else _json_key(k): _jsonable(v)
           for k, v in d.items()}
    if len(out) == len(d):
        return out
    # Keys that collide once rendered as text: keep every entry, as [key, value] pairs.
    return [[_json_key(k), _jsonable(v)] for k, v in d.items()]


_TO_JSONABLE: dict[type, Callable[[Any], object]] = {
    # str(int) refuses over 4300 digits; str(Decimal(int)) has no such limit.
    int: lambda n: n if -(2**53) <= n <= 2**53 else str(Decimal(n)),
    float: lambda x: "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity"),
    str: _json_str,
    list: lambda xs: [_jsonable(x) for x in xs],
    tuple: lambda xs: [_jsonable(x) for x in xs],
    dict: _json_dict,
    set: lambda xs: sorted(map(_jsonable, xs), key=_dumps),
    frozenset: lambda xs: sorted(map(_jsonable, xs), key=_dumps),
    bytes: lambda b: base64.b64encode(b).decode(),
    Decimal: str,
    UUID: str,
    datetime: datetime.isoformat,
    date: date.isoformat,
    time: time.isoformat,
    timedelta: timedelta.total_seconds,
}


def _jsonable(v: Any) -> Any:
    """Turn an encodable value into plain JSON data (str keys, finite floats)."""
    t = type(v)
    # The common cases first, without a call.
    if (t is str and v.isascii()) or v is None or t is bool or (
            t is float and -math.inf < v < math.inf):
        return v
    convert = _TO_JSONABLE.get(t)
    if convert is not None:
        return convert(v)
    reg = _by_class.get(t)
    if reg is None:
        raise EncodingError(_unsupported_message(v, v, "value"), key="value")
    return _jsonable(reg.to_data(v))


_dumps: Callable[[object], str] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
).encode


def to_json(value: object) -> str | None:
    """Render an encodable value as JSON text for SQL (SPEC §5, last paragraph).

    Args:
        value: A value that `encode` accepts.

    Returns:
        Valid JSON text, or None if it would be longer than `MAX_JSON_CHARS`.

    Raises:
        EncodingError: If the value holds an unsupported object.
    """
    text = _dumps(_jsonable(value))
    return text if len(text) <= MAX_JSON_CHARS else None


# --------------------------------------------------------------------------- registry


def _fields_codec(cls: type) -> tuple[Callable[[Any], object], Callable[[Any], object],
                                      tuple[str, ...]]:
    if issubclass(cls, tuple):  # a NamedTuple
        names: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]
        return (lambda obj: dict(zip(names, obj, strict=True))), (
            lambda data: cls(**data)), names
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    init = {f.name for f in fields if f.init}
    params = inspect.signature(cls).parameters.values()
    required = {p.name for p in params if p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if not init <= {p.name for p in params} or not required <= init:
        raise TypeError(f"cannot register {cls.__qualname__} without encode and decode: its "
                        "__init__ does not take exactly its fields; pass encode= and decode=")

    names = tuple(f.name for f in fields)
    later = set(names) - init  # field(init=False)s: set after __init__, to recorded values

    def from_data(data: dict[str, Any]) -> object:
        obj = cls(**{k: v for k, v in data.items() if k not in later})
        for k in later.intersection(data):
            object.__setattr__(obj, k, data[k])
        return obj

    return (lambda obj: {n: getattr(obj, n) for n in names}), from_data, names


def register_type(
    cls: type,
    *,
    tag: str,
    encode: Callable[[Any], object] | None = None,
    decode: Callable[[Any], object] | None = None,
) -> None:
    """Let values of `cls` be recorded; the stored form names `tag`, not the module path.

    Dataclasses (by fields), enums (by value) and NamedTuples (by fields) need no
    functions; any other class needs both. The registry is process-wide; registering the
    same class under the same tag again is a no-op.

    Args:
        cls: The class; only instances of exactly this class use the registration.
        tag: A stable, non-empty name, e.g. ``"shop.Reservation"``.
        encode: Turns an instance into an encodable value.
        decode: Turns that value back into an instance.

    Raises:
        TypeError: If `cls` is not a class, `tag` is not a str, only one of `encode` and
            `decode` is given, or a class that needs them has none.
        ValueError: If `tag` is empty, msgpack packs `cls` itself (e.g. `dict`,
            `bytearray`), the tag is taken by another class, or `cls` is registered under
            another tag.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_type() takes a class, not {cls!r}")
    if not isinstance(tag, str):
        raise TypeError(f"the tag must be a str, not {type(tag).__qualname__} {tag!r}")
    if not tag:
        raise ValueError("the tag must be a non-empty str, e.g. tag='shop.Reservation'")
    if cls in _NATIVE or cls in _PACKED_AS_IS:
        raise ValueError(f"cannot register {cls.__qualname__}: msgpack packs it itself")
    if (encode is None) != (decode is None):
        raise TypeError(f"cannot register {cls.__qualname__}: pass both encode= and "
                        "decode=, or neither")
    fields = None
    if encode is not None and decode is not None:
        to_data, from_data = encode, decode
    elif issubclass(cls, enum.Enum):
        to_data, from_data = (lambda obj: obj.value), cls
    elif (issubclass(cls, tuple) and hasattr(cls, "_fields")) or dataclasses.is_dataclass(cls):
        to_data, from_data, fields = _fields_codec(cls)
    else:
        raise TypeError(
            f"cannot register {cls.__qualname__} without encode and decode: only "
            "dataclasses, enums and NamedTuples work without them; pass encode= (object "
            "-> plain data) and decode= (plain data -> object)")
    with _registry_lock:
        old = _by_class.get(cls)
        if old is not None and old.tag == tag:
            return
        if tag in _by_tag:
            raise ValueError(f"tag {tag!r} is already registered for "
                             f"{_by_tag[tag].cls.__qualname__}; choose another tag for "
                             f"{cls.__qualname__}")
        if old is not None:
            raise ValueError(f"{cls.__qualname__} is already registered under tag "
                             f"{old.tag!r}; it cannot also be registered as {tag!r}")
        _by_class[cls] = _by_tag[tag] = _Registration(cls, tag, to_data, from_data, fields)


def _unregister(tag: str) -> None:
    """Forget the registration of `tag` (for tests)."""
    with _registry_lock:
        reg = _by_tag.pop(tag, None)
        if reg is not None:
            del _by_class[reg.cls]
