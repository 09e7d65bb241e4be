"""The JSON rendering of recorded values, for SQL.

Rendering runs on the engine's loop, so its work is bounded: the text is NULL beyond
`MAX_JSON_CHARS`, and the renderer stops as soon as a lower bound of the text's length
passes that limit. Containers are charged for their brackets, separators and one
character per item before their items are looked at; a string, bytes or a big integer
is charged its length before it is converted (an integer's digits are counted from its
bit length: turning a 300 KB integer into text takes seconds). Only the JSON is bounded:
the recorded msgpack value stays exact.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from replay._codec._encoding import unsupported_message, utf8_ok
from replay._codec._types import MAX_JSON_CHARS, by_class
from replay._errors import EncodingError

_DIGITS_PER_BIT = math.log10(2)
_JS_SAFE = 2**53

_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False)


def _c_dumps() -> Callable[[object], str] | None:
    """`_ENCODER.encode` without building its C encoder anew on every call, if we can."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        encode = make(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",",
                      False, False, False)
    except TypeError:  # another signature in this Python: use the encoder as it is
        return None
    return lambda value: "".join(encode(value, 0))


_dumps: Callable[[object], str] = _c_dumps() or _ENCODER.encode


class _TooLong(Exception):
    """The text is certainly longer than `MAX_JSON_CHARS`."""


class _Renderer:
    """Turns an encodable value into plain JSON data (str keys, finite floats).

    Every item inside a container is already charged one character by its container;
    a value charges what its text holds beyond that.
    """

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_JSON_CHARS

    def charge(self, chars: int) -> None:
        self.left -= chars
        if self.left < 0:
            raise _TooLong

    def render(self, v: Any) -> Any:
        t = type(v)
        if t is str:
            self.left -= len(v) + 1  # and two quotes; `charge` inlined, for speed
            if self.left < 0:
                raise _TooLong
            return v if v.isascii() or utf8_ok(v) else _escape_surrogates(v)
        # The common cases first, without a call.
        if v is None or t is bool or (t is float and -math.inf < v < math.inf):
            return v
        convert = _CONVERTERS.get(t)
        if convert is not None:
            return convert(self, v)
        reg = by_class.get(t)
        if reg is None:
            raise EncodingError(unsupported_message(v, v, "value"), key="value")
        return self.render(reg.to_data(v))

    def sequence(self, xs: Any) -> list[Any]:
        self.charge(2 * len(xs) + 1)  # brackets, commas, one character per item
        return [self.render(x) for x in xs]

    def mapping(self, d: dict[Any, Any]) -> object:
        left = self.left
        self.charge(5 * len(d) + 1)  # braces, commas, and per entry: quotes, colon, value
        out = {k if type(k) is str and k.isascii() else self._key(k): self.render(v)
               for k, v in d.items()}
        if len(out) == len(d):
            return out
        # Keys that collide once rendered as text: keep every entry, as [key, value]
        # pairs (rendered again, so charged again from where this dict began).
        self.left = left
        self.charge(5 * len(d) + 1)
        return [[self._key(k), self.render(v)] for k, v in d.items()]

    def _key(self, k: object) -> str:
        if type(k) is str:
            return k if utf8_ok(k) else _escape_surrogates(k)
        rendered = _Renderer().render(k)  # on its own budget: its text becomes a string
        text = rendered if type(rendered) is str else _dumps(rendered)
        self.charge(len(text))
        return text

    def integer(self, n: int) -> object:
        if -_JS_SAFE <= n <= _JS_SAFE:
            return n
        # A lower bound of its digits, from its bit length, charged before the
        # conversion, which takes time quadratic in the digits.
        self.charge(int((n.bit_length() - 1) * _DIGITS_PER_BIT) + 1)
        return str(Decimal(n))  # str(int) refuses over 4300 digits; this has no such limit

    def text(self, s: str) -> str:
        self.charge(len(s) + 1)
        return s

    def blob(self, b: bytes) -> str:
        self.charge(4 * math.ceil(len(b) / 3) + 1)
        return base64.b64encode(b).decode()

    def members(self, xs: set[Any] | frozenset[Any]) -> list[Any]:
        return sorted(self.sequence(xs), key=_dumps)


def _escape_surrogates(s: str) -> str:
    return s.encode("utf-8", "backslashreplace").decode()  # a lone surrogate as \udxxx


_CONVERTERS: dict[type, Callable[[_Renderer, Any], object]] = {
    int: _Renderer.integer,
    float: lambda r, x: "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity"),
    list: _Renderer.sequence,
    tuple: _Renderer.sequence,
    dict: _Renderer.mapping,
    set: _Renderer.members,
    frozenset: _Renderer.members,
    bytes: _Renderer.blob,
    Decimal: lambda r, d: r.text(str(d)),
    UUID: lambda r, u: str(u),
    datetime: lambda r, d: d.isoformat(),
    date: lambda r, d: d.isoformat(),
    time: lambda r, t: t.isoformat(),
    timedelta: lambda r, d: d.total_seconds(),
}


def to_json(value: object) -> str | None:
    """Render an encodable value as JSON text for SQL.

    Args:
        value: A value that `encode` accepts.

    Returns:
        Valid JSON text, or None if it would be longer than `MAX_JSON_CHARS` (decided
        as soon as that is certain, without rendering the rest).

    Raises:
        EncodingError: If the part of the value rendered holds an unsupported object.
    """
    t = type(value)
    if t is int and -_JS_SAFE <= value <= _JS_SAFE:  # type: ignore[operator]
        return str(value)  # the most common step values render without the renderer
    if value is None or t is bool:
        return "null" if value is None else ("true" if value else "false")
    if t is dict and len(value) <= _FLAT_ENTRIES and _plain(value):  # type: ignore[arg-type]
        text = _dumps(value)  # as the renderer would give it, without its walk
        return text if len(text) <= MAX_JSON_CHARS else None
    try:
        text = _dumps(_Renderer().render(value))
    except _TooLong:
        return None
    return text if len(text) <= MAX_JSON_CHARS else None


# A dict of at most this many entries is checked for `_plain` before the renderer.
_FLAT_ENTRIES = 32


def _plain(d: dict[Any, Any]) -> bool:
    """Whether `d` renders as the JSON encoder writes it.

    That is: ASCII string keys, and values that are ASCII strings of bounded length,
    safe integers, finite floats, booleans or None (the common step value).
    """
    for k, v in d.items():
        if type(k) is not str or not k.isascii():
            return False
        t = type(v)
        if t is int:
            if not -_JS_SAFE <= v <= _JS_SAFE:
                return False
        elif t is str:
            if len(v) > MAX_JSON_CHARS or not v.isascii():
                return False
        elif t is float:
            if not -math.inf < v < math.inf:
                return False
        elif v is not None and t is not bool:
            return False
    return True
