"""Tests of replay._codec: exact msgpack round trips, errors, and the JSON rendering."""

from __future__ import annotations

import collections
import dataclasses
import enum
import io
import json
import math
import re
import struct
import typing
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replay import _codec
from replay._codec import (
    MAX_ENCODED_BYTES,
    MAX_JSON_CHARS,
    decode,
    encode,
    register_type,
    to_json,
)
from replay._errors import EncodingError

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


# ----------------------------------------------------------------------- helpers


def same(a: object, b: object) -> bool:
    """Exact equality: same types all the way down, NaN equals NaN, -0.0 is not 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)  # type: ignore[arg-type]
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(same, a, b))  # type: ignore[arg-type]
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, set | frozenset):
        assert isinstance(b, set | frozenset)
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    if isinstance(a, datetime | time):
        assert isinstance(b, datetime | time)
        return (a.replace(tzinfo=None) == b.replace(tzinfo=None) and a.fold == b.fold
                and same_tz(a.tzinfo, b.tzinfo))
    return a == b


def same_tz(a: tzinfo | None, b: tzinfo | None) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, ZoneInfo):
        return a.key == b.key  # type: ignore[union-attr]
    if isinstance(a, timezone):
        return a.utcoffset(None) == b.utcoffset(None) and a.tzname(None) == b.tzname(None)  # type: ignore[union-attr]
    return a is None


def round_trip(value: object) -> object:
    return decode(encode(value))


def no_constants(name: str) -> object:
    raise AssertionError(f"to_json produced the non-JSON constant {name}")


def parse_json(text: str | None) -> object:
    assert text is not None
    return json.loads(text, parse_constant=no_constants)


@pytest.fixture(autouse=True)
def registry_unchanged() -> Iterator[None]:
    """Every test leaves the process-wide registry as it found it."""
    before = dict(_codec._by_tag)
    yield
    assert _codec._by_tag == before
    assert _codec._by_class == {reg.cls: reg for reg in before.values()}


@pytest.fixture
def register() -> Iterator[Any]:
    """`register_type`, undone when the test ends."""
    tags: list[str] = []

    def reg(cls: type, *, tag: str, **kwargs: Any) -> None:
        register_type(cls, tag=tag, **kwargs)
        tags.append(tag)

    yield reg
    for tag in tags:
        _codec._unregister(tag)


# ------------------------------------------------------------------ test classes


@dataclasses.dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str = "EUR"


class Color(enum.Enum):
    RED = "red"
    GREEN = (0, 255, 0)


class Level(enum.IntEnum):
    LOW = 1


class Point(typing.NamedTuple):
    x: int
    y: int


PlainPoint = collections.namedtuple("PlainPoint", "x y")


@dataclasses.dataclass
class Order:
    lines: list[Money]
    color: Color
    where: Point
    total: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        self.total = len(self.lines)


@dataclasses.dataclass
class NeedsInitVar:
    x: int
    scale: dataclasses.InitVar[int]

    def __post_init__(self, scale: int) -> None:
        self.x *= scale


class Temperature:
    def __init__(self, kelvin: float) -> None:
        self.kelvin = kelvin

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Temperature) and other.kelvin == self.kelvin

    __hash__ = None  # type: ignore[assignment]


class Foo:
    pass


class MyDict(dict):  # type: ignore[type-arg]
    pass


class MyStr(str):
    __slots__ = ()


class FixedTz(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=1)

    def tzname(self, dt: datetime | None) -> str:
        return "FIX"

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def __repr__(self) -> str:
        return "FixedTz()"


# ---------------------------------------------------------------- property tests

hashable_leaves = (
    st.none() | st.booleans() | st.integers() | st.integers(-(2**200), 2**200)
    | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.text(alphabet="a\ud800\udfffé😀", max_size=4) | st.binary(max_size=8)
    | st.dates() | st.timedeltas() | st.uuids()
    | st.decimals(allow_nan=False, allow_infinity=True)
    | st.datetimes(timezones=st.none() | st.timezones()
                   | st.builds(timezone, st.timedeltas(-timedelta(hours=23),
                                                       timedelta(hours=23))))
    | st.times(timezones=st.none() | st.just(UTC))
)
leaves = hashable_leaves | st.floats() | st.decimals()
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.lists(inner, max_size=3).map(tuple)
    | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4)
    | st.lists(inner, max_size=4).map(tuple)
    | st.dictionaries(hashables, inner, max_size=4)
    | st.sets(hashables, max_size=3)
    | st.frozensets(hashables, max_size=3),
    max_leaves=12,
)
fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(values)
def test_codec_round_trip_is_exact_and_json_always_parses(value: object) -> None:
    data = encode(value)
    assert data[0] == 1
    assert same(decode(data), value)
    parse_json(to_json(value))


@fast
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text()
                    | st.floats(allow_nan=False),
                    lambda inner: st.lists(inner) | st.lists(inner).map(tuple)
                    | st.dictionaries(st.text() | st.integers(), inner),
                    max_leaves=15))
def test_codec_round_trip_equals_without_nan(value: object) -> None:
    assert round_trip(value) == value
    assert same(round_trip(value), value)


# ------------------------------------------------------------ every type, exactly

EXAMPLES = [
    None, True, False, 0, -1, 2**63 - 1, 2**64 - 1, -(2**63), 2**64, -(2**63) - 1,
    2**1000, -(2**1000), 10**5000, 0.0, -0.0, 1.5, math.inf, -math.inf, math.nan,
    "", "héllo 😀", "\ud800", "a\udfffb\ud83d", b"", b"\x00\xff", [], [1, [2, [3]]],
    (), (1,), (1, (2, (3,))), [(1, 2), [3, (4,)]], {}, {"a": 1},
    {1: "int", (1, 2): "tuple", frozenset({1}): "frozenset", None: 0, 2.5: 1, b"k": 2},
    {(1, (2, 3)): [(4,)]}, {"\ud800": "\udc00"}, set(), {1, "a", (2, 3)}, frozenset(),
    frozenset({frozenset({1}), (1, 2)}), {"s": {"\ud800"}},
    datetime(2024, 1, 2, 3, 4, 5, 678901),
    datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    datetime(2024, 1, 2, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2024, 1, 2, tzinfo=timezone(-timedelta(hours=3, seconds=7, microseconds=9))),
    datetime(2024, 1, 2, tzinfo=timezone(timedelta(hours=2), "CEST")),
    datetime(2024, 7, 1, 12, tzinfo=PARIS), datetime(2024, 11, 3, 1, 30, fold=1),
    datetime(2024, 11, 3, 1, 30, tzinfo=NEW_YORK, fold=1), datetime.min, datetime.max,
    date(2024, 2, 29), date.min, time(), time(23, 59, 59, 999999), time(1, fold=1),
    time(1, 2, tzinfo=timezone(timedelta(hours=-2))), time(1, tzinfo=PARIS),
    timedelta(), timedelta(days=-3, microseconds=5), timedelta.max, timedelta.min,
    Decimal("1.10"), Decimal("-0"), Decimal("0E-7"), Decimal("1E+10"), Decimal("NaN"),
    Decimal("-NaN123"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity"),
    Decimal("123456789012345678901234567890.123456789"),
    UUID("12345678-1234-5678-1234-567812345678"), UUID(int=0),
]


@pytest.mark.parametrize("value", EXAMPLES, ids=lambda v: type(v).__name__)
def test_codec_round_trips_every_supported_type(value: object) -> None:
    assert same(round_trip(value), value)
    parse_json(to_json(value))


def test_codec_keeps_aware_offsets_zone_keys_and_naive() -> None:
    offset = round_trip(datetime(2024, 1, 2, tzinfo=timezone(timedelta(hours=2))))
    assert isinstance(offset, datetime)
    assert type(offset.tzinfo) is timezone
    assert offset.utcoffset() == timedelta(hours=2)
    zoned = round_trip(datetime(2024, 1, 2, tzinfo=PARIS))
    assert isinstance(zoned, datetime)
    assert zoned.tzinfo is PARIS
    naive = round_trip(datetime(2024, 1, 2, 3, 4, 5, 6))
    assert isinstance(naive, datetime)
    assert naive.tzinfo is None
    assert naive.microsecond == 6
    named = round_trip(datetime(2024, 1, 2, tzinfo=timezone(timedelta(hours=2), "CEST")))
    assert isinstance(named, datetime)
    assert named.tzname() == "CEST"


def test_codec_keeps_fold_of_an_ambiguous_local_time() -> None:
    first = datetime(2024, 11, 3, 1, 30, tzinfo=NEW_YORK)
    second = first.replace(fold=1)
    assert round_trip(first).utcoffset() == timedelta(hours=-4)  # type: ignore[attr-defined]
    assert round_trip(second).utcoffset() == timedelta(hours=-5)  # type: ignore[attr-defined]


def test_codec_keeps_decimal_exponent_and_sign() -> None:
    for text in ["1.10", "-0", "0.000", "1E+3", "-NaN", "sNaN"]:
        result = round_trip(Decimal(text))
        assert isinstance(result, Decimal)
        assert str(result) == text
        assert result.as_tuple() == Decimal(text).as_tuple()


def test_codec_keeps_tuples_tuples_and_lists_lists() -> None:
    value = {(1, (2,)): [(3, [4]), [5]]}
    result = round_trip(value)
    assert result == value
    assert same(result, value)
    assert type(next(iter(result))) is tuple  # type: ignore[call-overload]


def test_codec_keeps_bool_distinct_from_int() -> None:
    result = round_trip([True, 1, False, 0])
    assert [type(x) for x in result] == [bool, int, bool, int]  # type: ignore[attr-defined]


@pytest.mark.parametrize("n", [2**64, -(2**63) - 1, 2**64 - 1, -(2**63), 3**5000, -(7**900)])
def test_codec_round_trips_big_ints(n: int) -> None:
    assert round_trip(n) == n
    assert round_trip([n, {n: n}]) == [n, {n: n}]


@pytest.mark.parametrize("s", ["\ud800", "\udfff", "x\ud800y", "\ud83d\ude00", "😀\udc80"])
def test_codec_round_trips_lone_surrogates(s: str) -> None:
    value = [s, {s: (s,)}, {s}]
    assert same(round_trip(value), value)
    assert same(round_trip(s), s)


def test_codec_accepts_any_bytes_like_in_decode() -> None:
    data = encode({"a": (1, 2)})
    assert decode(bytearray(data)) == {"a": (1, 2)}
    assert decode(memoryview(data)) == {"a": (1, 2)}


def test_codec_starts_with_version_byte_one() -> None:
    assert encode(None) == b"\x01\xc0"
    assert encode({"a": 1}) == b"\x01" + msgpack.packb({"a": 1})


# ------------------------------------------------------------------ registered types


def test_codec_round_trips_registered_dataclass_enum_namedtuple(register: Any) -> None:
    register(Money, tag="test.Money")
    register(Color, tag="test.Color")
    register(Point, tag="test.Point")
    register(Order, tag="test.Order")
    register(PlainPoint, tag="test.PlainPoint")
    register(Level, tag="test.Level")
    order = Order([Money(Decimal("1.10")), Money(Decimal("2"), "USD")], Color.GREEN,
                  Point(1, 2))
    order.total = 99  # an init=False field keeps its recorded value
    value = {Color.RED: order, Point(3, 4): [PlainPoint(5, 6), Level.LOW]}
    result = round_trip(value)
    assert result == value
    assert same(result, value)
    restored = result[Color.RED]  # type: ignore[index]
    assert restored.total == 99
    assert type(restored.where) is Point
    assert type(result[Point(3, 4)][1]) is Level  # type: ignore[index]


def test_codec_round_trips_custom_class_with_functions(register: Any) -> None:
    register(Temperature, tag="test.Temperature", encode=lambda t: {"k": (t.kelvin,)},
             decode=lambda d: Temperature(d["k"][0]))
    value = [Temperature(273.15), {"t": Temperature(0.0)}]
    assert round_trip(value) == value
    assert parse_json(to_json(value)) == [{"k": [273.15]}, {"t": {"k": [0.0]}}]


def test_codec_stores_the_tag_not_the_module_path(register: Any) -> None:
    register(Money, tag="shop.Money")
    data = encode(Money(Decimal(1)))
    assert b"shop.Money" in data
    assert b"test_codec" not in data


def test_codec_does_not_apply_a_registration_to_subclasses(register: Any) -> None:
    @dataclasses.dataclass(frozen=True)
    class Sub(Money):
        pass

    register(Money, tag="test.Money")
    with pytest.raises(EncodingError, match=r"object of type 'test_codec_does_not_apply_a_"):
        encode(Sub(Decimal(1)))


def test_register_type_again_is_a_no_op(register: Any) -> None:
    register(Money, tag="test.Money")
    register_type(Money, tag="test.Money")
    assert round_trip(Money(Decimal(1))) == Money(Decimal(1))


def test_register_type_rejects_a_taken_tag(register: Any) -> None:
    register(Money, tag="test.Money")
    with pytest.raises(ValueError, match=(
            r"^tag 'test\.Money' is already registered for Money; choose another tag for "
            r"Point$")):
        register_type(Point, tag="test.Money")


def test_register_type_rejects_a_second_tag_for_a_class(register: Any) -> None:
    register(Money, tag="test.Money")
    with pytest.raises(ValueError, match=(
            r"^Money is already registered under tag 'test\.Money'; it cannot also be "
            r"registered as 'test\.Money2'$")):
        register_type(Money, tag="test.Money2")


def test_register_type_needs_functions_for_plain_classes() -> None:
    with pytest.raises(TypeError, match=(
            r"^cannot register Foo without encode and decode: only dataclasses, enums and "
            r"NamedTuples work without them; pass encode= \(object -> plain data\) and "
            r"decode= \(plain data -> object\)$")):
        register_type(Foo, tag="test.Foo")


def test_register_type_needs_both_functions() -> None:
    with pytest.raises(TypeError, match=(
            r"^cannot register Foo: pass both encode= and decode=, or neither$")):
        register_type(Foo, tag="test.Foo", encode=lambda f: 1)


def test_register_type_rejects_dataclass_whose_init_is_not_its_fields() -> None:
    with pytest.raises(TypeError, match=(
            r"^cannot register NeedsInitVar without encode and decode: its __init__ does "
            r"not take exactly its fields; pass encode= and decode=$")):
        register_type(NeedsInitVar, tag="test.NeedsInitVar")


@pytest.mark.parametrize(("cls", "tag", "error", "message"), [
    (Money, "", ValueError,
     r"^the tag must be a non-empty str, e.g. tag='shop\.Reservation'$"),
    (Money, 3, TypeError, r"^the tag must be a str, not int 3$"),
    (Money(Decimal(1)), "x", TypeError,
     r"^register_type\(\) takes a class, not Money\(amount=Decimal\('1'\), currency='EUR'\)$"),
    (dict, "x", ValueError, r"^cannot register dict: msgpack packs it itself$"),
    (datetime, "x", ValueError, r"^cannot register datetime: msgpack packs it itself$"),
    (bytearray, "x", ValueError, r"^cannot register bytearray: msgpack packs it itself$"),
])
def test_register_type_rejects_bad_arguments(cls: Any, tag: Any, error: type[Exception],
                                             message: str) -> None:
    with pytest.raises(error, match=message):
        register_type(cls, tag=tag)


def test_unregister_forgets_the_class_and_the_tag() -> None:
    register_type(Money, tag="test.Money")
    data = encode(Money(Decimal(1)))
    _codec._unregister("test.Money")
    _codec._unregister("test.Money")  # unknown tags are ignored
    with pytest.raises(EncodingError, match=r"tag 'test\.Money' is not registered"):
        decode(data)
    with pytest.raises(EncodingError, match=r"object of type 'Money'"):
        encode(Money(Decimal(1)))


# ---------------------------------------------------------------- encoding errors

HINT = (r" is not supported; use plain data \(dict, list, str, bytes, int, \.\.\.\) or "
        r"register the class with replay\.register_type\({}, tag=\.\.\.\)$")
PLAIN = r" is not supported; use plain data \(dict, list, str, bytes, int, \.\.\.\)$"


@pytest.mark.parametrize(("value", "where", "name"), [
    (Foo(), "object of type 'Foo'", "Foo"),
    ([1, {"x": Foo()}], r"object of type 'Foo' at \[1\]\['x'\]", "Foo"),
    ({"a": [(1, Foo())]}, r"object of type 'Foo' at \['a'\]\[0\]\[1\]", "Foo"),
    ({Foo(): 1}, "object of type 'Foo' in a dict key", "Foo"),
    ({"k": {(1, Foo())}}, r"object of type 'Foo' in a set element at \['k'\]", "Foo"),
    (MyDict(), "object of type 'MyDict'", "MyDict"),
    ([MyStr("s")], r"object of type 'MyStr' at \[0\]", "MyStr"),
    ((Level.LOW,), r"object of type 'Level' at \[0\]", "Level"),
    (Point(1, 2), "object of type 'Point'", "Point"),
    (PlainPoint(1, 2), "object of type 'PlainPoint'", "PlainPoint"),
    (collections.OrderedDict(), "object of type 'OrderedDict'", "OrderedDict"),
    (bytearray(b"x"), "object of type 'bytearray'", None),
    ({"a": [1, memoryview(b"x")]}, r"object of type 'memoryview' at \['a'\]\[1\]", None),
    ([msgpack.ExtType(11, b"")], r"object of type 'ExtType' at \[0\]", None),
    ((1, [msgpack.Timestamp(0)]), r"object of type 'Timestamp' at \[1\]\[0\]", None),
    ({"k": {b"x": bytearray()}}, r"object of type 'bytearray' at \['k'\]\[b'x'\]", None),
    ([object()], r"object of type 'object' at \[0\]", "object"),
    (Decimal, "object of type 'type'", "type"),
])
def test_encode_names_key_type_path_and_fix(value: object, where: str,
                                            name: str | None) -> None:
    fix = PLAIN if name is None else HINT.format(name)
    message = r"^cannot encode value of 'charge:v1': " + where + fix
    with pytest.raises(EncodingError, match=message) as info:
        encode(value, key="charge:v1")
    assert info.value.key == "charge:v1"
    assert isinstance(info.value, TypeError)


def test_encode_names_fields_of_registered_dataclasses(register: Any) -> None:
    register(Order, tag="test.Order")
    with pytest.raises(EncodingError, match=(
            r"^cannot encode value of 'value': object of type 'Money' at \[0\]\.lines\[0\]"
            + HINT.format("Money"))):
        encode([Order([Money(Decimal(1)), Money(Decimal(2))], Color.RED, Point(1, 2))])


def test_encode_rejects_unsupported_tzinfo() -> None:
    with pytest.raises(EncodingError, match=(
            r"^cannot encode value of 'input': the tzinfo FixedTz\(\) of a datetime at "
            r"\['at'\] is not supported; use datetime\.timezone or "
            r"zoneinfo\.ZoneInfo\(key\)$")):
        encode({"at": datetime(2024, 1, 1, tzinfo=FixedTz())}, key="input")
    with pytest.raises(EncodingError, match=r"the tzinfo FixedTz\(\) of a time is"):
        encode(time(1, tzinfo=FixedTz()))


def test_encode_rejects_zoneinfo_without_key() -> None:
    # A minimal TZif file for UTC: a ZoneInfo from a file has no key to record.
    utc_file = b"TZif2" + b"\0" * 15 + b"\0\0\0\0" * 6 + b"TZif2" + b"\0" * 15
    utc_file += b"\0\0\0\0" * 4 + b"\0\0\0\1" + b"\0\0\0\4" + b"\0" * 6 + b"UTC\0\nUTC0\n"
    zone = ZoneInfo.from_file(io.BytesIO(utc_file))
    with pytest.raises(EncodingError, match=(
            r"^cannot encode value of 'value': the tzinfo .* of a datetime at \[0\] is not "
            r"supported; use datetime\.timezone or zoneinfo\.ZoneInfo\(key\)$")):
        encode([datetime(2024, 1, 1, tzinfo=zone)])


def test_encode_rejects_cycles_and_deep_nesting() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    deep: object = []
    for _ in range(2000):
        deep = (deep,)
    message = (r"^cannot encode value of 'value': it nests more than 100 levels of "
               r"containers \(lists, tuples, dicts, sets, registered classes\) or contains "
               r"itself; record a flatter value without cycles$")
    for value in (cycle, [(cycle,)], deep):
        with pytest.raises(EncodingError, match=message):
            encode(value)


def test_encode_reports_a_failing_registered_encode(register: Any) -> None:
    def broken(t: Temperature) -> object:
        raise RuntimeError("boom")

    register(Temperature, tag="test.Temperature", encode=broken, decode=Temperature)
    with pytest.raises(EncodingError, match=(
            r"^cannot encode value of 'k': the encode function registered for tag "
            r"'test\.Temperature' raised RuntimeError: boom$")) as info:
        encode([Temperature(1.0)], key="k")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_encode_rejects_values_over_4_mib() -> None:
    limit = MAX_ENCODED_BYTES
    header = 1 + 5  # the version byte, then msgpack's bin32 header
    assert len(encode(b"x" * (limit - header))) == limit
    with pytest.raises(EncodingError, match=(
            rf"^value of 'input' is {limit + 1} bytes encoded; the limit is {limit} bytes "
            r"\(4 MiB\); store large data elsewhere and record a reference$")) as info:
        encode(b"x" * (limit - header + 1), key="input")
    assert info.value.key == "input"
    with pytest.raises(EncodingError, match=r"^value of 'value' is 5242894 bytes encoded"):
        encode([(b"x" * (5 * 1024 * 1024),)])


# ---------------------------------------------------------------- tampered data


def tampered(obj: object) -> bytes:
    return b"\x01" + msgpack.packb(obj, use_bin_type=True)


def ext(code: int, obj: object) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb(obj, use_bin_type=True))


@pytest.mark.parametrize(("data", "message"), [
    (b"", r"^cannot decode value: unknown format version missing \(this replay reads "
          r"version 1\); the data is corrupted or was written by a newer replay$"),
    (b"\x02\xc0", r"^cannot decode value: unknown format version 2 "),
    (b"\x00", r"^cannot decode value: unknown format version 0 "),
    (tampered(msgpack.ExtType(99, b"")),
     r"^cannot decode value: unknown ext code 99; the data is corrupted or was written "
     r"by a newer replay$"),
    (tampered([1, {"a": msgpack.ExtType(0, b"x")}]), r"^cannot decode value: unknown ext code 0;"),
    (tampered(ext(11, ["os.system", "ls"])),
     r"^cannot decode value: tag 'os\.system' is not registered in this process; call "
     r"replay\.register_type\(cls, tag='os\.system'\) before reading values of that type$"),
    (b"\x01\xc1", r"^cannot decode value: malformed data \("),
    (b"\x01\x92\x01", r"^cannot decode value: malformed data \("),
    (b"\x01\x01\x02", r"^cannot decode value: malformed data \("),
    (b"\x01\xdb\xff\xff\xff\xff", r"^cannot decode value: malformed data \("),
    (tampered(ext(7, [2024, 13, 1, 0, 0, 0, 0, 0, None])), r"malformed data \(ValueError: "),
    (tampered(ext(7, [2024, 1, 1, 0, 0, 0, 0, 0, "../../etc/passwd"])), r"malformed data"),
    (tampered(ext(7, [2024, 1, 1, 0, 0, 0, 0, 0, "No/Such_Zone"])), r"malformed data"),
    (tampered(ext(7, [2024, 1, 1, 0, 0, 0, 0, 0, [10**12]])), r"malformed data"),
    (tampered(ext(7, "nope")), r"malformed data"),
    (tampered(ext(8, {"y": 1})), r"malformed data"),
    (tampered(ext(9, [1, 2])), r"malformed data"),
    (tampered(ext(10, [10**10, 0, 0])), r"malformed data \(OverflowError: "),
    (tampered(msgpack.ExtType(3, b"1.0.0")), r"malformed data \(InvalidOperation: "),
    (tampered(msgpack.ExtType(3, b"\xff")), r"malformed data \(UnicodeDecodeError: "),
    (tampered(msgpack.ExtType(4, b"short")), r"malformed data \(ValueError: "),
    (tampered(ext(5, [[1]])), r"malformed data \(TypeError: unhashable"),
    (tampered({(1,): 2}), r"malformed data \(TypeError: unhashable"),
    (tampered(ext(11, ["only-tag"])), r"malformed data"),
])
def test_decode_rejects_tampered_data(data: bytes, message: str) -> None:
    with pytest.raises(EncodingError, match=message):
        decode(data)


def test_decode_reports_a_failing_registered_decode(register: Any) -> None:
    register(Color, tag="test.Color")
    register(Money, tag="test.Money")
    with pytest.raises(EncodingError, match=(
            r"^cannot decode value: decoding tag 'test\.Color' as Color raised ValueError: "
            r"'blue' is not a valid Color$")):
        decode(tampered(ext(11, ["test.Color", "blue"])))
    with pytest.raises(EncodingError, match=r"decoding tag 'test\.Money' as Money raised "
                                            r"TypeError: .*unexpected keyword"):
        decode(tampered(ext(11, ["test.Money", {"amount": 1, "gone": 2}])))


# -------------------------------------------------------------------- JSON rendering


@pytest.mark.parametrize(("value", "text"), [
    (None, "null"), (True, "true"), (3, "3"), (2**53, str(2**53)),
    (2**53 + 1, f'"{2**53 + 1}"'), (-(2**53) - 1, f'"{-(2**53) - 1}"'),
    (1.5, "1.5"), (math.nan, '"NaN"'), (math.inf, '"Infinity"'), (-math.inf, '"-Infinity"'),
    ("é😀", '"é😀"'), ("a\ud800", '"a\\\\ud800"'), (b"\x00\xff", '"AP8="'),
    ((1, (2, [3])), "[1,[2,[3]]]"), ({3, 1, 2}, "[1,2,3]"),
    (frozenset({"b", "a", 10}), '["a","b",10]'), ({(1, 2), (0,)}, "[[0],[1,2]]"),
    (Decimal("1.10"), '"1.10"'), (Decimal("NaN"), '"NaN"'),
    (UUID(int=1), '"00000000-0000-0000-0000-000000000001"'),
    (datetime(2024, 1, 2, 3, 4, 5, 6), '"2024-01-02T03:04:05.000006"'),
    (datetime(2024, 7, 1, 12, tzinfo=PARIS), '"2024-07-01T12:00:00+02:00"'),
    (date(2024, 2, 29), '"2024-02-29"'), (time(1, 2, tzinfo=UTC), '"01:02:00+00:00"'),
    (timedelta(minutes=1, microseconds=500000), "60.5"),
    ({"a": 1, 1: "b", None: 2, False: 3, 1.5: 4, (1, 2): 5, "": 6},
     '{"a":1,"1":"b","null":2,"false":3,"1.5":4,"[1,2]":5,"":6}'),
    ({frozenset({2, 1}): 1, Decimal("2.0"): 2, math.nan: 3, b"k": 4, 2**60: 5},
     '{"[1,2]":1,"2.0":2,"NaN":3,"aw==":4,"1152921504606846976":5}'),
    ({1: "int", "1": "str"}, '[["1","int"],["1","str"]]'),
])
def test_to_json_renders(value: object, text: str) -> None:
    assert to_json(value) == text
    parse_json(text)


def test_to_json_renders_registered_types(register: Any) -> None:
    register(Money, tag="test.Money")
    register(Color, tag="test.Color")
    register(Point, tag="test.Point")
    value = {Color.RED: [Money(Decimal("1.10")), Point(1, 2), Color.GREEN]}
    assert to_json(value) == (
        '{"red":[{"amount":"1.10","currency":"EUR"},{"x":1,"y":2},[0,255,0]]}')


def test_to_json_is_none_over_64_kib() -> None:
    at_limit = "x" * (MAX_JSON_CHARS - 2)
    assert to_json(at_limit) == f'"{at_limit}"'
    assert to_json(at_limit + "x") is None
    assert to_json([b"x" * MAX_JSON_CHARS]) is None


def test_to_json_renders_ints_beyond_str_digit_limit() -> None:
    assert to_json(10**5000) == '"1' + "0" * 5000 + '"'
    assert to_json(-(10**5000)) == '"-1' + "0" * 5000 + '"'


def test_to_json_rejects_unsupported_values() -> None:
    with pytest.raises(EncodingError, match=r"^cannot encode value of 'value': object of "
                                            r"type 'Foo'" + HINT.format("Foo")):
        to_json({"a": Foo()})


def test_to_json_is_valid_for_duckdb() -> None:
    duckdb = pytest.importorskip("duckdb")
    texts = [to_json(v) for v in [*EXAMPLES, "\x00\x1f\"\\", "\u2028", {"\ud800": [1]}]]
    con = duckdb.connect()
    rows = con.execute("SELECT json_valid(t), t::JSON::VARCHAR = t FROM unnest(?) AS u(t)",
                       [texts]).fetchall()
    assert rows == [(True, True)] * len(texts)


def test_encode_error_messages_start_lowercase() -> None:
    with pytest.raises(EncodingError) as info:
        encode(Foo())
    assert re.match(r"^[a-z]", str(info.value))


class Sealed:
    """A class whose encode function records its state with `replay.encode` itself."""

    def __init__(self, inner: object) -> None:
        self.inner = inner


def test_an_encode_function_may_encode_while_the_value_is_packed(register: Any) -> None:
    # The thread's packer is busy packing the outer value when the hook runs: the
    # nested encode must not share it, or both encodings come out mangled.
    register(Sealed, tag="test.Sealed", encode=lambda s: encode({"sealed": s.inner}),
             decode=lambda data: Sealed(decode(data)["sealed"]))
    value = {"before": [1, 2, 3], "sealed": Sealed({"a": [4, 5]}), "after": "x" * 40}
    again = decode(encode(value))
    assert again["before"] == [1, 2, 3] and again["after"] == "x" * 40
    assert again["sealed"].inner == {"a": [4, 5]}
    assert decode(encode({"plain": 1})) == {"plain": 1}  # the packer is free again


flat_dicts = st.dictionaries(
    st.text(max_size=8) | st.integers(),
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.lists(st.integers(), max_size=2),
    max_size=40)


@given(flat_dicts)
def test_flat_dicts_render_as_the_renderer_renders_them(value: dict[Any, Any]) -> None:
    # Small flat dicts skip the renderer when the JSON encoder writes them the same way.
    from replay._codec._json import _dumps, _Renderer
    assert to_json(value) == _dumps(_Renderer().render(value))
