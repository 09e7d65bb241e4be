"""What the codec knows: its limits, the on-disk ext codes, and the registry of classes.

The registry is process-wide and written under a lock; readers look classes up without
it (a dict lookup is atomic), which keeps encoding and decoding lock-free.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import threading
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, NamedTuple
from uuid import UUID

import msgpack

MAX_ENCODED_BYTES: int = 4 * 1024 * 1024
MAX_JSON_CHARS: int = 64 * 1024
# Containers (lists, tuples, dicts, sets, frozensets, registered classes) nest at most
# this deep. Each tuple, set or registered class is decoded by a nested msgpack call, and
# about 195 of those overflowed the C stack and killed the process.
MAX_DEPTH: int = 100

VERSION = 1
# Ext codes are part of the on-disk format: never renumber, only add.
TUPLE, BIGINT, DECIMAL, UUID_CODE, SET, FROZENSET = 1, 2, 3, 4, 5, 6
DATETIME, DATE, TIME, TIMEDELTA, REGISTERED, SURROGATE_STR = 7, 8, 9, 10, 11, 12
NATIVE: frozenset[type] = frozenset({
    type(None), bool, int, float, str, bytes, list, tuple, dict, set, frozenset,
    datetime, date, time, timedelta, Decimal, UUID,
})
# Types msgpack packs itself without asking `default`, although we do not support them.
PACKED_AS_IS: frozenset[type] = frozenset({
    bytearray, memoryview, msgpack.ExtType, msgpack.Timestamp})
_CONTAINERS: frozenset[type] = frozenset({list, tuple, dict, set, frozenset})


class Registration(NamedTuple):
    """How one registered class is stored."""

    cls: type
    tag: str
    to_data: Callable[[Any], object]
    from_data: Callable[[Any], object]
    fields: tuple[str, ...] | None  # dataclass/NamedTuple fields, for error paths


by_class: dict[type, Registration] = {}
by_tag: dict[str, Registration] = {}
# Every type that adds a level of nesting: the containers and the registered classes.
nesting: set[type] = set(_CONTAINERS)
_registry_lock = threading.Lock()


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
    if cls in NATIVE or cls in PACKED_AS_IS:
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
        old = by_class.get(cls)
        if old is not None and old.tag == tag:
            return
        if tag in by_tag:
            raise ValueError(f"tag {tag!r} is already registered for "
                             f"{by_tag[tag].cls.__qualname__}; choose another tag for "
                             f"{cls.__qualname__}")
        if old is not None:
            raise ValueError(f"{cls.__qualname__} is already registered under tag "
                             f"{old.tag!r}; it cannot also be registered as {tag!r}")
        by_class[cls] = by_tag[tag] = Registration(cls, tag, to_data, from_data, fields)
        nesting.add(cls)


def unregister(tag: str) -> None:
    """Forget the registration of `tag` (for tests)."""
    with _registry_lock:
        reg = by_tag.pop(tag, None)
        if reg is not None:
            del by_class[reg.cls]
            nesting.discard(reg.cls)
