"""Tests of replay._commands: frozen, validated command values and the Retry policy."""

from __future__ import annotations

import copy
import dataclasses
import functools
import pickle
import re
from collections.abc import Generator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from replay._commands import (
    COMMAND_TYPES,
    Command,
    Sleep,
    Step,
    Suspend,
    command_kind,
)
from replay._errors import StepTimeout, error_types_of, qualified_name
from replay._retry import Retry

HERE = __name__
FN_HINT = "pass the function itself, e.g. Step('charge:v1', charge_card, order_id)"


def reserve(order_id: str) -> dict[str, str]:
    return {"order": order_id}


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


async def charge(order_id: str, cents: int = 0) -> str:
    return f"receipt-{order_id}-{cents}"


def numbers() -> Generator[int, None, None]:
    yield 1


async def async_numbers() -> Any:
    yield 1


class Shop:
    def reserve(self, order_id: str) -> str:
        return order_id

    async def charge(self, order_id: str) -> str:
        return order_id


class Charger:
    def __call__(self, order_id: str) -> str:
        return order_id


class AsyncCharger:
    async def __call__(self, order_id: str) -> str:
        return order_id


class PaymentDeclined(ValueError):
    pass


class Outer:
    class Inner(Exception):
        pass


def msg(text: str) -> str:
    """Anchor an exact error message for pytest.raises(match=...)."""
    return "^" + re.escape(text) + "$"


# --- Step: equality, hashing, repr, frozenness --------------------------------------


def test_step_equal_by_value() -> None:
    retry = Retry(attempts=5)
    a = Step("charge:v1", charge, "o-1", 4200, retry=retry, timeout=30)
    b = Step("charge:v1", charge, "o-1", 4200, retry=Retry(attempts=5), timeout=30.0)
    assert a == b
    assert hash(a) == hash(b)
    assert a != Step("charge:v1", charge, "o-1", 4200)


@pytest.mark.parametrize(
    "other",
    [
        Step("reserve:v2", reserve, "o-1"),
        Step("reserve:v1", reserve, "o-2"),
        Step("reserve:v1", Shop().reserve, "o-1"),
        Step("reserve:v1", reserve, "o-1", retry=Retry()),
        Step("reserve:v1", reserve, "o-1", timeout=5),
        Step("reserve:v1", reserve, "o-1", name="shop.reserve"),
        Step("reserve:v1", functools.partial(reserve, order_id="o-1")),
    ],
)
def test_step_unequal_when_any_part_differs(other: Step) -> None:
    assert Step("reserve:v1", reserve, "o-1") != other


def test_step_partial_compares_by_function_and_arguments() -> None:
    assert Step("k", functools.partial(add, 1, c=3)) == Step("k", functools.partial(add, 1, c=3))
    assert Step("k", functools.partial(add, b=1, c=2)) == Step(
        "k", functools.partial(add, c=2, b=1)
    )
    assert Step("k", functools.partial(add, 1), 2) == Step("k", add, 1, 2)
    assert Step("k", functools.partial(add, 1, c=3)) != Step("k", functools.partial(add, 1, c=4))
    assert hash(Step("k", functools.partial(add, 1, c=3))) == hash(
        Step("k", functools.partial(add, 1, c=3))
    )


def test_step_hash_with_unhashable_arguments() -> None:
    a = Step("k", reserve, ["o-1"], {"x": 1})
    b = Step("k", reserve, ["o-1"], {"x": 1})
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != Step("k", reserve, ["o-2"], {"x": 1})


def test_commands_of_different_kinds_never_equal() -> None:
    step = Step("k", reserve, "o-1")
    sleep = Sleep("k", 1)
    suspend = Suspend("k")
    assert step != sleep
    assert sleep != suspend
    assert suspend != step
    assert step != "k"
    assert len({step, sleep, suspend}) == 3


def test_step_repr_plain() -> None:
    assert repr(Step("reserve:v1", reserve, "o-1")) == f"Step('reserve:v1', {HERE}.reserve, 'o-1')"


def test_step_repr_shows_options_only_when_set() -> None:
    step = Step("charge:v1", charge, "o-1", 4200, retry=Retry(attempts=5), timeout=30)
    assert repr(step) == (
        f"Step('charge:v1', {HERE}.charge, 'o-1', 4200, retry=Retry(attempts=5), timeout=30.0)"
    )
    named = Step("reserve:v1", reserve, "o-1", name="shop.reserve")
    assert repr(named) == f"Step('reserve:v1', {HERE}.reserve, 'o-1', name='shop.reserve')"
    same = Step("reserve:v1", reserve, "o-1", name=f"{HERE}.reserve")
    assert repr(same) == f"Step('reserve:v1', {HERE}.reserve, 'o-1')"


def test_step_repr_partial() -> None:
    step = Step("k", functools.partial(functools.partial(add, 1, c=2), c=3), 4)
    assert repr(step) == f"Step('k', partial({HERE}.add, 1, c=3), 4)"


def test_step_repr_callable_object() -> None:
    charger = Charger()
    assert repr(Step("k", charger, "o-1")) == f"Step('k', {charger!r}, 'o-1')"


def test_step_is_frozen_and_slotted() -> None:
    step = Step("reserve:v1", reserve, "o-1")
    with pytest.raises(
        dataclasses.FrozenInstanceError,
        match=msg("cannot assign to Step.key: Step is frozen; build a new Step instead"),
    ):
        step.key = "other"
    with pytest.raises(AttributeError, match=msg("cannot delete Step.fn: Step is frozen")):
        del step.fn
    assert not hasattr(step, "__dict__")
    assert step.key == "reserve:v1"


def test_step_attributes() -> None:
    partial = functools.partial(add, 1, c=2)
    step = Step("k", partial, 5, retry=Retry(), timeout=timedelta(milliseconds=1500))
    assert step.key == "k"
    assert step.fn is partial
    assert step.args == (5,)
    assert step.retry == Retry()
    assert step.timeout == 1.5
    assert Step("k", add).timeout is None
    assert Step("k", add).retry is None


def test_step_constructor_executes_nothing() -> None:
    calls: list[str] = []

    def effect(x: str) -> None:
        calls.append(x)

    Step("k", effect, "boom")
    Step("k", functools.partial(effect, "boom"))
    assert calls == []


def test_step_pickle_and_copy_round_trip() -> None:
    step = Step("k", functools.partial(add, 1, c=2), 3, retry=Retry(retry_on=PaymentDeclined))
    assert pickle.loads(pickle.dumps(step)) == step
    assert copy.copy(step) == step
    assert copy.deepcopy(step) == step
    assert repr(copy.deepcopy(step)) == repr(step)


# --- Step: naming and async detection ---------------------------------------------


def test_step_name_of_nested_function() -> None:
    def inner() -> None:
        pass

    expected = f"{HERE}.test_step_name_of_nested_function.<locals>.inner"
    assert Step("k", inner).name == expected


@pytest.mark.parametrize(
    ("fn", "name", "is_async"),
    [
        (reserve, f"{HERE}.reserve", False),
        (charge, f"{HERE}.charge", True),
        (Shop().reserve, f"{HERE}.Shop.reserve", False),
        (Shop().charge, f"{HERE}.Shop.charge", True),
        (Shop.reserve, f"{HERE}.Shop.reserve", False),
        (functools.partial(reserve, "o-1"), f"{HERE}.reserve", False),
        (functools.partial(functools.partial(charge, "o-1"), cents=3), f"{HERE}.charge", True),
        (Charger(), f"{HERE}.Charger", False),
        (AsyncCharger(), f"{HERE}.AsyncCharger", True),
        (functools.partial(AsyncCharger(), "o-1"), f"{HERE}.AsyncCharger", True),
        (len, "builtins.len", False),
        (dict, "builtins.dict", False),
    ],
)
def test_step_name_and_is_async(fn: Any, name: str, is_async: bool) -> None:
    step = Step("k", fn)
    assert step.name == name
    assert step.is_async is is_async


def test_step_explicit_name_wins() -> None:
    assert Step("k", reserve, name="shop.reserve_stock").name == "shop.reserve_stock"


def test_step_nested_partial_outer_keyword_wins() -> None:
    inner = functools.partial(add, 1, c=2)
    outer = functools.partial(inner, 5, c=3)
    step = Step("k", outer)
    assert step == Step("k", functools.partial(add, 1, 5, c=3))
    assert step == Step("k", functools.partial(add, 1, c=3), 5)
    assert step != Step("k", functools.partial(add, 1, 5, c=2))
    assert step.name == f"{HERE}.add"


# --- Step: validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("", reserve), {}, ValueError,
         "Step(key, fn, *args): key must be a non-empty string, got '' (str)"),
        ((42, reserve), {}, TypeError,
         "Step(key, fn, *args): key must be a string, got 42 (int); "
         "the key comes first and names the command, e.g. 'reserve:v1'"),
        ((None, reserve), {}, TypeError,
         "Step(key, fn, *args): key must be a string, got None (NoneType); "
         "the key comes first and names the command, e.g. 'reserve:v1'"),
        (("k", 42), {}, TypeError,
         f"Step(key, fn, *args): fn must be callable, got 42 (int); {FN_HINT}"),
        (("k", "reserve"), {}, TypeError,
         f"Step(key, fn, *args): fn must be callable, got 'reserve' (str); {FN_HINT}"),
        (("k", reserve), {"retry": 3}, TypeError,
         "Step(key, fn, *args, retry=...): retry must be a replay.Retry or None, "
         "got 3 (int); e.g. retry=Retry(attempts=3)"),
        (("k", reserve), {"timeout": 0}, ValueError,
         "Step(key, fn, *args, timeout=...): timeout must be > 0, got 0 (int); "
         "pass None for no timeout"),
        (("k", reserve), {"timeout": -1.5}, ValueError,
         "Step(key, fn, *args, timeout=...): timeout must be > 0, got -1.5 (float); "
         "pass None for no timeout"),
        (("k", reserve), {"timeout": timedelta(seconds=-1)}, ValueError,
         "Step(key, fn, *args, timeout=...): timeout must be > 0, "
         "got datetime.timedelta(days=-1, seconds=86399) (timedelta); pass None for no timeout"),
        (("k", reserve), {"timeout": float("nan")}, ValueError,
         "Step(key, fn, *args, timeout=...): timeout must be a finite number of seconds > 0, "
         "got nan (float)"),
        (("k", reserve), {"timeout": float("inf")}, ValueError,
         "Step(key, fn, *args, timeout=...): timeout must be a finite number of seconds > 0, "
         "got inf (float)"),
        (("k", reserve), {"timeout": timedelta.max}, ValueError,  # issue 18: overflowed
         "Step(key, fn, *args, timeout=...): timeout must be at most 100 years (3155760000 "
         "seconds), got "
         "datetime.timedelta(days=999999999, seconds=86399, microseconds=999999) (timedelta)"),
        (("k", reserve), {"timeout": True}, TypeError,
         "Step(key, fn, *args, timeout=...): timeout must be a timedelta or a number of "
         "seconds, got True (bool)"),
        (("k", reserve), {"timeout": "30s"}, TypeError,
         "Step(key, fn, *args, timeout=...): timeout must be a timedelta or a number of "
         "seconds, got '30s' (str)"),
        (("k", reserve), {"name": ""}, ValueError,
         "Step(key, fn, *args, name=...): name must be a non-empty string or None, "
         "got '' (str)"),
        (("k", reserve), {"name": 1}, TypeError,
         "Step(key, fn, *args, name=...): name must be a non-empty string or None, "
         "got 1 (int)"),
    ],
)
def test_step_validation(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=msg(message)):
        Step(*args, **kwargs)


def test_step_rejects_already_called_coroutine() -> None:
    coro = charge("o-1")
    try:
        with pytest.raises(TypeError, match=msg(
            f"Step(key, fn, *args): fn must be callable, got {coro!r} (coroutine); "
            "steps call plain or async functions, so pass the function itself instead of "
            "calling it, e.g. Step('charge:v1', charge_card, order_id)"
        )):
            Step("charge:v1", coro)  # type: ignore[arg-type]
    finally:
        coro.close()


def test_step_rejects_generator_object() -> None:
    gen = numbers()
    with pytest.raises(TypeError, match=msg(
        f"Step(key, fn, *args): fn must be callable, got {gen!r} (generator); "
        "steps call plain or async functions, so pass the function itself instead of "
        "calling it, e.g. Step('charge:v1', charge_card, order_id)"
    )):
        Step("k", gen)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fn", [numbers, async_numbers, functools.partial(numbers)], ids=["gen", "asyncgen", "partial"]
)
def test_step_rejects_generator_functions(fn: Any) -> None:
    with pytest.raises(TypeError, match=msg(
        f"Step(key, fn, *args): fn must be a plain or async function, not a generator "
        f"function, got {fn!r} ({type(fn).__name__}); steps call plain or async functions: "
        "return a list, or run a sub-workflow inline with yield from"
    )):
        Step("k", fn)


# --- Sleep --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "expected"),
    [
        (1800, timedelta(minutes=30)),
        (0.25, timedelta(milliseconds=250)),
        (0, timedelta(0)),
        (timedelta(days=30), timedelta(days=30)),
    ],
)
def test_sleep_duration_normalised(duration: Any, expected: timedelta) -> None:
    sleep = Sleep("cool-off:v1", duration)
    assert sleep.duration == expected
    assert sleep.until is None
    assert sleep == Sleep("cool-off:v1", expected)
    assert hash(sleep) == hash(Sleep("cool-off:v1", expected))


def test_sleep_until() -> None:
    deadline = datetime(2030, 1, 1, tzinfo=UTC)
    sleep = Sleep("k", until=deadline)
    assert sleep.until == deadline
    assert sleep.duration is None
    assert sleep == Sleep("k", until=deadline)
    assert sleep != Sleep("k", until=deadline + timedelta(seconds=1))
    assert sleep != Sleep("k", 0)


def test_sleep_repr() -> None:
    assert repr(Sleep("cool-off:v1", 1800)) == (
        "Sleep('cool-off:v1', datetime.timedelta(seconds=1800))"
    )
    deadline = datetime(2030, 1, 1, tzinfo=UTC)
    assert repr(Sleep("k", until=deadline)) == f"Sleep('k', until={deadline!r})"


def test_sleep_is_frozen_and_slotted() -> None:
    sleep = Sleep("k", 1)
    with pytest.raises(
        dataclasses.FrozenInstanceError,
        match=msg("cannot assign to Sleep.duration: Sleep is frozen; build a new Sleep instead"),
    ):
        sleep.duration = timedelta(0)
    assert not hasattr(sleep, "__dict__")
    assert copy.deepcopy(sleep) == sleep
    assert pickle.loads(pickle.dumps(sleep)) == sleep


NAIVE = datetime(2030, 1, 1)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("",), {"duration": 1}, ValueError,
         "Sleep(key, duration): key must be a non-empty string, got '' (str)"),
        ((timedelta(1),), {}, TypeError,
         "Sleep(key, duration): key must be a string, got datetime.timedelta(days=1) "
         "(timedelta); the key comes first and names the command, e.g. 'reserve:v1'"),
        (("k",), {}, TypeError,
         "Sleep(key, duration) or Sleep(key, until=datetime): pass exactly one of duration "
         "or until, got duration=None and until=None"),
        (("k", 1), {"until": datetime(2030, 1, 1, tzinfo=UTC)}, TypeError,
         "Sleep(key, duration) or Sleep(key, until=datetime): pass exactly one of duration "
         "or until, got duration=1 and until="
         "datetime.datetime(2030, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)"),
        (("k", -1), {}, ValueError,
         "Sleep(key, duration): duration must be >= 0, got -1 (int)"),
        (("k", timedelta(microseconds=-1)), {}, ValueError,
         "Sleep(key, duration): duration must be >= 0, "
         "got datetime.timedelta(days=-1, seconds=86399, microseconds=999999) (timedelta)"),
        (("k", float("nan")), {}, ValueError,
         "Sleep(key, duration): duration must be a finite number of seconds >= 0, "
         "got nan (float)"),
        (("k", 10**20), {}, ValueError,
         "Sleep(key, duration): duration must be a finite number of seconds >= 0, "
         "got 100000000000000000000 (int)"),
        (("k", timedelta.max), {}, ValueError,  # issue 18: overflowed the deadline
         "Sleep(key, duration): duration must be at most 100 years (3155760000 seconds), "
         "got datetime.timedelta(days=999999999, seconds=86399, microseconds=999999) (timedelta)"),
        (("k", 3155760000.5), {}, ValueError,
         "Sleep(key, duration): duration must be at most 100 years (3155760000 seconds), "
         "got 3155760000.5 (float)"),
        (("k",), {"until": datetime(9000, 1, 1, tzinfo=UTC)}, ValueError,
         "Sleep(key, until=datetime): until must be before the year 9000, "
         "got datetime.datetime(9000, 1, 1, 0, 0, tzinfo=datetime.timezone.utc) (datetime)"),
        (("k", False), {}, TypeError,
         "Sleep(key, duration): duration must be a timedelta or a number of seconds, "
         "got False (bool)"),
        (("k", "30m"), {}, TypeError,
         "Sleep(key, duration): duration must be a timedelta or a number of seconds, "
         "got '30m' (str)"),
        (("k", datetime(2030, 1, 1, tzinfo=UTC)), {}, TypeError,
         "Sleep(key, duration): duration must be a timedelta or a number of seconds, "
         "got datetime.datetime(2030, 1, 1, 0, 0, tzinfo=datetime.timezone.utc) (datetime); "
         "for a deadline pass until="),
        (("k",), {"until": NAIVE}, ValueError,
         "Sleep(key, until=datetime): until must be an aware datetime, "
         "got naive datetime.datetime(2030, 1, 1, 0, 0) (datetime); "
         "add a timezone, e.g. datetime(2030, 1, 1, tzinfo=timezone.utc)"),
        (("k",), {"until": 1700000000}, TypeError,
         "Sleep(key, until=datetime): until must be an aware datetime, got 1700000000 (int)"),
    ],
)
def test_sleep_validation(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=msg(message)):
        Sleep(*args, **kwargs)


def test_sleep_until_with_fixed_offset_is_aware() -> None:
    tz = timezone(timedelta(hours=2))
    assert Sleep("k", until=datetime(2030, 1, 1, tzinfo=tz)).until == datetime(
        2029, 12, 31, 22, tzinfo=UTC
    )


# --- Suspend ------------------------------------------------------------------------


def test_suspend_values() -> None:
    plain = Suspend("approval:v1")
    assert (plain.key, plain.status, plain.timeout) == ("approval:v1", None, None)
    full = Suspend("approval:v1", status="waiting for a manager", timeout=86400)
    assert full.timeout == timedelta(days=1)
    assert full == Suspend("approval:v1", "waiting for a manager", timedelta(days=1))
    assert hash(full) == hash(Suspend("approval:v1", "waiting for a manager", timedelta(days=1)))
    assert full != plain
    assert full != Suspend("approval:v1", status="other", timeout=86400)


def test_suspend_repr() -> None:
    assert repr(Suspend("approval:v1")) == "Suspend('approval:v1')"
    assert repr(Suspend("a", status="waiting", timeout=60)) == (
        "Suspend('a', status='waiting', timeout=datetime.timedelta(seconds=60))"
    )


def test_suspend_is_frozen_and_slotted() -> None:
    suspend = Suspend("k", "waiting")
    with pytest.raises(
        AttributeError,
        match=msg(
            "cannot assign to Suspend.status: Suspend is frozen; build a new Suspend instead"
        ),
    ):
        suspend.status = "x"
    assert not hasattr(suspend, "__dict__")
    assert pickle.loads(pickle.dumps(suspend)) == suspend


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("",), ValueError, "Suspend(key): key must be a non-empty string, got '' (str)"),
        ((b"k",), TypeError,
         "Suspend(key): key must be a string, got b'k' (bytes); "
         "the key comes first and names the command, e.g. 'reserve:v1'"),
        (("k", 3), TypeError,
         "Suspend(key, status=...): status must be a string or None, got 3 (int)"),
        (("k", None, 0), ValueError,
         "Suspend(key, timeout=...): timeout must be > 0, got 0 (int); pass None for no timeout"),
        (("k", None, -5.0), ValueError,
         "Suspend(key, timeout=...): timeout must be > 0, got -5.0 (float); "
         "pass None for no timeout"),
        (("k", None, True), TypeError,
         "Suspend(key, timeout=...): timeout must be a timedelta or a number of seconds, "
         "got True (bool)"),
        (("k", None, timedelta.max), ValueError,  # issue 18: overflowed the deadline
         "Suspend(key, timeout=...): timeout must be at most 100 years (3155760000 seconds), "
         "got datetime.timedelta(days=999999999, seconds=86399, microseconds=999999) (timedelta)"),
    ],
)
def test_suspend_validation(args: tuple[Any, ...], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=msg(message)):
        Suspend(*args)


# --- command_kind -------------------------------------------------------------------


def test_command_kind() -> None:
    assert command_kind(Step("k", reserve)) == "step"
    assert command_kind(Sleep("k", 1)) == "sleep"
    assert command_kind(Suspend("k")) == "suspend"
    assert tuple(COMMAND_TYPES) == (Step, Sleep, Suspend)


def test_command_kind_rejects_other_values() -> None:
    with pytest.raises(TypeError, match=msg(
        "command_kind(cmd): cmd must be a Step, Sleep or Suspend, got 42 (int)"
    )):
        command_kind(42)  # type: ignore[arg-type]


# --- Retry: values ------------------------------------------------------------------


def test_retry_defaults() -> None:
    retry = Retry()
    assert (retry.attempts, retry.initial, retry.backoff, retry.max_delay, retry.jitter) == (
        3, 1.0, 2.0, 60.0, 0.1
    )
    assert retry.retry_on == (Exception,)
    assert retry.give_up_on == ()


def test_retry_equality_hash_and_normalisation() -> None:
    assert Retry() == Retry(3, 1, 2, 60, 0.1, (Exception,), ())
    assert hash(Retry()) == hash(Retry(initial=1, backoff=2))
    assert Retry(retry_on=ValueError).retry_on == (ValueError,)
    assert Retry(retry_on=ValueError) == Retry(retry_on=(ValueError,))
    assert Retry(give_up_on=[KeyError, PaymentDeclined]).give_up_on == (KeyError, PaymentDeclined)
    assert Retry(attempts=2) != Retry()
    assert Retry() != Step("k", reserve)
    assert isinstance(Retry().initial, float)


def test_retry_repr() -> None:
    assert repr(Retry()) == "Retry()"
    assert repr(Retry(attempts=5, initial=2, jitter=0)) == (
        "Retry(attempts=5, initial=2.0, jitter=0.0)"
    )
    assert repr(Retry(retry_on=ValueError, give_up_on=(PaymentDeclined, Outer.Inner))) == (
        f"Retry(retry_on=(ValueError,), give_up_on=({HERE}.PaymentDeclined, {HERE}.Outer.Inner))"
    )


def test_retry_is_frozen_and_slotted() -> None:
    retry = Retry()
    with pytest.raises(
        dataclasses.FrozenInstanceError,
        match=msg("cannot assign to Retry.attempts: Retry is frozen; build a new Retry instead"),
    ):
        retry.attempts = 9
    assert not hasattr(retry, "__dict__")
    assert pickle.loads(pickle.dumps(retry)) == retry


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"attempts": 0}, ValueError,
         "Retry(attempts=...): attempts must be >= 1 (it counts the first attempt), "
         "got 0 (int); use attempts=1 for no retries"),
        ({"attempts": 2.0}, TypeError,
         "Retry(attempts=...): attempts must be an int, got 2.0 (float)"),
        ({"attempts": True}, TypeError,
         "Retry(attempts=...): attempts must be an int, got True (bool)"),
        ({"initial": -1}, ValueError,
         "Retry(initial=...): initial must be a finite number >= 0, got -1 (int)"),
        ({"initial": "1"}, TypeError,
         "Retry(initial=...): initial must be a number, got '1' (str)"),
        ({"initial": False}, TypeError,
         "Retry(initial=...): initial must be a number, got False (bool)"),
        ({"backoff": 0.5}, ValueError,
         "Retry(backoff=...): backoff must be a finite number >= 1, got 0.5 (float)"),
        ({"max_delay": float("inf")}, ValueError,
         "Retry(max_delay=...): max_delay must be a finite number >= 0, got inf (float)"),
        ({"max_delay": float("nan")}, ValueError,
         "Retry(max_delay=...): max_delay must be a finite number >= 0, got nan (float)"),
        ({"max_delay": 10**400}, ValueError,
         f"Retry(max_delay=...): max_delay must be a finite number >= 0, got {10**400!r} (int)"),
        ({"initial": 1e300}, ValueError,  # issue 18: delays overflowed the deadline
         "Retry(initial=...): initial must be at most 100 years (3155760000 seconds), "
         "got 1e+300 (float)"),
        ({"max_delay": 3155760001}, ValueError,
         "Retry(max_delay=...): max_delay must be at most 100 years (3155760000 seconds), "
         "got 3155760001 (int)"),
        ({"jitter": 1.5}, ValueError,
         "Retry(jitter=...): jitter must be a finite number between 0 and 1, got 1.5 (float)"),
        ({"jitter": -0.1}, ValueError,
         "Retry(jitter=...): jitter must be a finite number between 0 and 1, got -0.1 (float)"),
        ({"retry_on": "ValueError"}, TypeError,
         "Retry(retry_on=...): retry_on must be an Exception subclass or a tuple of them, "
         "got 'ValueError' (str)"),
        ({"retry_on": (ValueError, KeyboardInterrupt)}, TypeError,
         "Retry(retry_on=...): retry_on must be an Exception subclass or a tuple of them, "
         "got <class 'KeyboardInterrupt'> (type)"),
        ({"give_up_on": ValueError("x")}, TypeError,
         "Retry(give_up_on=...): give_up_on must be an Exception subclass or a tuple of them, "
         "got ValueError('x') (ValueError)"),
    ],
)
def test_retry_validation(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=msg(message)):
        Retry(**kwargs)


# --- Retry.delay --------------------------------------------------------------------


def test_retry_delay_is_deterministic() -> None:
    retry = Retry()
    first = [retry.delay("order-17", "charge:v1", n) for n in range(1, 6)]
    again = [Retry().delay("order-17", "charge:v1", n) for n in range(1, 6)]
    assert first == again
    assert first != [1.0, 2.0, 4.0, 8.0, 16.0]  # jitter applied, not the bare exponential


def test_retry_delay_pinned_across_processes() -> None:
    # Computed once (same under any PYTHONHASHSEED: blake2b, not the salted hash()); a
    # change here would change the back-offs of runs recorded by older versions.
    retry = Retry(initial=10.0, backoff=1.0, jitter=1.0)
    assert retry.delay("r", "k", 1) == pytest.approx(5.740274512176587, rel=1e-12)


def test_retry_delay_varies_with_attempt_run_and_key() -> None:
    retry = Retry(initial=10.0, backoff=1.0, jitter=0.5)
    by_attempt = {retry.delay("r", "k", n) for n in range(1, 21)}
    assert len(by_attempt) == 20
    assert retry.delay("r", "k", 1) != retry.delay("r2", "k", 1)
    assert retry.delay("r", "k", 1) != retry.delay("r", "k2", 1)
    # The fields are kept apart: ("ab", "c") and ("a", "bc") differ.
    assert retry.delay("ab", "c", 1) != retry.delay("a", "bc", 1)


def test_retry_delay_bounded() -> None:
    retry = Retry(attempts=100, initial=0.5, backoff=3.0, max_delay=20.0, jitter=0.25)
    for attempt in range(1, 100):
        delay = retry.delay("run", "key", attempt)
        assert 0.0 <= delay < 20.0 * 1.25
        base = min(20.0, 0.5 * 3.0 ** (attempt - 1))
        assert base * 0.75 <= delay < base * 1.25


def test_retry_delay_without_jitter_is_exact_exponential() -> None:
    retry = Retry(attempts=10, initial=1.0, backoff=2.0, max_delay=60.0, jitter=0)
    assert [retry.delay("r", "k", n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_retry_delay_huge_attempt_does_not_overflow() -> None:
    assert Retry(jitter=0).delay("r", "k", 100_000) == 60.0
    assert Retry(initial=0, jitter=0).delay("r", "k", 100_000) == 0.0


@pytest.mark.parametrize("attempt", [0, -1, True, 1.0])
def test_retry_delay_rejects_bad_attempt(attempt: Any) -> None:
    with pytest.raises(ValueError, match=msg(
        f"Retry.delay(run_id, key, attempt): attempt must be an int >= 1, "
        f"got {attempt!r} ({type(attempt).__name__})"
    )):
        Retry().delay("r", "k", attempt)


# --- Retry.retries ------------------------------------------------------------------


def test_retry_retries_any_exception_by_default() -> None:
    assert Retry().retries(error_types_of(ValueError("x")))
    assert Retry().retries(("replay.StepTimeout", "replay.ReplayError", "builtins.Exception"))
    assert not Retry().retries(())


def test_retry_retries_subclasses_by_name() -> None:
    retry = Retry(retry_on=ValueError)
    assert retry.retries(error_types_of(PaymentDeclined("declined")))
    assert retry.retries(error_types_of(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")))
    assert not retry.retries(error_types_of(KeyError("x")))
    assert not retry.retries(error_types_of(StepTimeout("slow")))


def test_retry_give_up_on_wins() -> None:
    retry = Retry(retry_on=(ValueError, KeyError), give_up_on=PaymentDeclined)
    assert not retry.retries(error_types_of(PaymentDeclined("declined")))
    assert retry.retries(error_types_of(ValueError("x")))
    assert retry.retries(error_types_of(KeyError("x")))
    nested = Retry(give_up_on=Outer.Inner)
    assert qualified_name(Outer.Inner) == f"{HERE}.Outer.Inner"
    assert not nested.retries(error_types_of(Outer.Inner()))
    assert nested.retries(error_types_of(RuntimeError()))


def test_retry_retries_decides_from_recorded_names() -> None:
    recorded = [f"{HERE}.PaymentDeclined", "builtins.ValueError", "builtins.Exception"]
    assert Retry(retry_on=ValueError).retries(recorded)
    assert not Retry(retry_on=ValueError, give_up_on=PaymentDeclined).retries(recorded)


# --- Stepping a workflow by hand ----------------------------------------------------


def checkout(order_id: str) -> Generator[Command, Any, dict[str, Any]]:
    reservation = yield Step("reserve:v1", reserve, order_id)
    yield Sleep("cool-off:v1", timedelta(minutes=30))
    approved = yield Suspend("approval:v1", status="waiting for a manager")
    if not approved:
        return {"order": order_id, "state": "rejected"}
    receipt = yield Step("charge:v1", charge, order_id, 4200, retry=Retry(attempts=5), timeout=30)
    return {"order": order_id, "reservation": reservation, "receipt": receipt}


def test_step_workflow_by_hand() -> None:
    gen = checkout("o-1")
    assert next(gen) == Step("reserve:v1", reserve, "o-1")
    assert gen.send({"order": "o-1"}) == Sleep("cool-off:v1", 1800)
    assert gen.send(None) == Suspend("approval:v1", status="waiting for a manager")
    assert gen.send(True) == Step(
        "charge:v1", charge, "o-1", 4200, retry=Retry(attempts=5), timeout=timedelta(seconds=30)
    )
    with pytest.raises(StopIteration) as stop:
        gen.send("receipt-1")
    assert stop.value.value == {
        "order": "o-1", "reservation": {"order": "o-1"}, "receipt": "receipt-1"
    }


def test_step_workflow_by_hand_rejected_path() -> None:
    gen = checkout("o-2")
    next(gen)
    gen.send(None)
    gen.send(None)
    with pytest.raises(StopIteration) as stop:
        gen.send(False)
    assert stop.value.value == {"order": "o-2", "state": "rejected"}


def test_a_key_that_cannot_be_stored_as_text_is_rejected() -> None:
    with pytest.raises(ValueError, match=re.escape(
            "Step(key, fn, *args): key must be valid unicode text (no lone surrogates), "
            "got 'a\\ud800'")):
        Step("a\ud800", len)


def test_longest_durations_are_accepted() -> None:
    # Issue 18: the limits are inclusive, and the longest retry delay (max_delay plus its
    # jitter, 200 years) still makes a valid deadline.
    hundred_years = timedelta(days=36525)
    assert Sleep("k", hundred_years).duration == hundred_years
    assert Suspend("k", timeout=hundred_years).timeout == hundred_years
    assert Step("k", reserve, timeout=hundred_years).timeout == 3155760000.0
    retry = Retry(initial=3155760000, max_delay=3155760000, backoff=1e300, jitter=1.0)
    delay = retry.delay("r", "k", 1000)
    assert delay <= 2 * 3155760000
    latest = datetime(8999, 12, 31, tzinfo=UTC)
    assert latest + timedelta(seconds=delay) > latest
    assert Sleep("k", until=datetime(8999, 12, 31, tzinfo=UTC)).until is not None
