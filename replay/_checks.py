"""Frozen, validated values: the base class of commands and `Retry`, and argument checks.

Every public value type validates its arguments on construction, so a mistake raises at
the line that made it, with a message naming the argument, what it got and what to pass
instead. Pure: standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import FrozenInstanceError
from datetime import datetime, timedelta
from typing import Any

from replay._errors import qualified_name
from replay._types import RunInfo, RunState

# Durations (sleeps, timeouts, retry delays) stay below 100 years, so that a deadline
# (now + duration, and a retry delay's jitter on top) is always a valid datetime.
MAX_DURATION = timedelta(days=36525)
MAX_SECONDS = MAX_DURATION.total_seconds()
TOO_LONG = f"at most 100 years ({MAX_SECONDS:.0f} seconds)"
# The latest `Sleep(until=...)`: later ones would take the engine clock near datetime.max.


def shown(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def restore(cls: type[Frozen], state: dict[str, Any]) -> Frozen:
    obj = object.__new__(cls)
    obj._set(**state)
    return obj


class Frozen:
    """Base of the value classes: slotted, immutable, equal when `_value()` is."""

    __slots__ = ()

    def _set(self, **fields: Any) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def _value(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def __setattr__(self, name: str, value: object) -> None:
        cls = type(self).__name__
        raise FrozenInstanceError(
            f"cannot assign to {cls}.{name}: {cls} is frozen; build a new {cls} instead"
        )

    def __delattr__(self, name: str) -> None:
        cls = type(self).__name__
        raise FrozenInstanceError(f"cannot delete {cls}.{name}: {cls} is frozen")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Frozen)
        return self._value() == other._value()

    def __hash__(self) -> int:
        return hash((type(self), self._value()))

    def __reduce__(self) -> tuple[Any, ...]:
        # The default protocol restores slots with setattr, which a frozen class refuses.
        slots: tuple[str, ...] = type(self).__slots__
        return (restore, (type(self), {slot: getattr(self, slot) for slot in slots}))


def check_key(sig: str, key: object) -> str:
    # Every command checks its key on a workflow's hot path: plain ASCII keys without
    # NUL (nearly all of them) pass on two quick tests.
    if type(key) is str and key.isascii() and key and NUL not in key:
        return key
    if not isinstance(key, str):
        raise TypeError(
            f"{sig}: key must be a string, got {shown(key)}; "
            "the key comes first and names the command, e.g. 'reserve:v1'"
        )
    if not key:
        raise ValueError(f"{sig}: key must be a non-empty string, got {shown(key)}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        # Keys are stored as text and looked up again on replay: they must survive.
        raise ValueError(
            f"{sig}: key must be valid unicode text (no lone surrogates), got {key!r}"
        ) from None
    if NUL in key:
        raise ValueError(f"{sig}: key must not contain NUL characters (\\x00), got {key!r}; "
                         f"{_NUL_WHY}")
    return key


# Keys and run ids are stored as text in both stores, and PostgreSQL text cannot hold
# NUL: refused on DuckDB too, so that a workflow runs on either store unchanged.
NUL = "\x00"
_NUL_WHY = "keys and run ids are stored as text, which cannot hold NUL on PostgreSQL"


def checked_duration(sig: str, arg: str, value: object, *, positive: bool) -> timedelta:
    """Normalise a `timedelta` or a number of seconds; reject bools, NaN, negatives."""
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            duration = timedelta(seconds=value)
        except (OverflowError, ValueError):  # inf, nan, beyond timedelta.max
            raise ValueError(
                f"{sig}: {arg} must be a finite number of seconds {bound}, got {shown(value)}"
            ) from None
    else:
        hint = "; for a deadline pass until=" if isinstance(value, datetime) else ""
        raise TypeError(
            f"{sig}: {arg} must be a timedelta or a number of seconds, got {shown(value)}{hint}"
        )
    if duration < timedelta(0) or (positive and not duration):
        hint = "; pass None for no timeout" if positive else ""
        raise ValueError(f"{sig}: {arg} must be {bound}, got {shown(value)}{hint}")
    if duration > MAX_DURATION:
        raise ValueError(f"{sig}: {arg} must be {TOO_LONG}, got {shown(value)}")
    return duration


def checked_number(arg: str, value: object, minimum: float, maximum: float = float("inf")) -> float:
    sig = f"Retry({arg}=...)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{sig}: {arg} must be a number, got {shown(value)}")
    within = f"between {minimum:g} and {maximum:g}" if maximum < float("inf") else f">= {minimum:g}"
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = float("inf")
    if not minimum <= number <= maximum or number == float("inf"):
        raise ValueError(f"{sig}: {arg} must be a finite number {within}, got {shown(value)}")
    return number


def checked_seconds(arg: str, value: object) -> float:
    number = checked_number(arg, value, 0.0)
    if number > MAX_SECONDS:
        raise ValueError(f"Retry({arg}=...): {arg} must be {TOO_LONG}, got {shown(value)}")
    return number


def exception_classes(arg: str, value: object) -> tuple[type[Exception], ...]:
    classes = tuple(value) if isinstance(value, tuple | list) else (value,)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise TypeError(
                f"Retry({arg}=...): {arg} must be an Exception subclass or a tuple of them, "
                f"got {shown(cls)}"
            )
    return classes


def class_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else qualified_name(cls)


def checked_run_id(run_id: object) -> str:
    """Return `run_id` if it can name a run.

    Raises:
        TypeError: It is not a str.
        ValueError: It is empty, not valid unicode text, or holds a NUL character.
    """
    if not isinstance(run_id, str):
        raise TypeError(f"run_id must be a str, got {run_id!r} ({type(run_id).__name__})")
    if not run_id:
        raise ValueError("run_id must be a non-empty string, got ''")
    try:
        run_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"run_id must be valid unicode text, got {run_id!r}") from None
    if NUL in run_id:
        raise ValueError(f"run_id must not contain NUL characters (\\x00), got {run_id!r}; "
                         f"{_NUL_WHY}")
    return run_id


def checked_key(key: object) -> str:
    """Return `key` if it can name a `Suspend` to signal.

    Raises:
        TypeError: It is not a str.
        ValueError: It is empty or not valid unicode text.
    """
    if not isinstance(key, str):
        raise TypeError(
            f"engine.signal(run_id, key, payload): key must be a str, got {key!r} "
            f"({type(key).__name__})"
        )
    if not key:
        raise ValueError("engine.signal(run_id, key, payload): key must be a non-empty string")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"engine.signal(run_id, key, payload): key must be valid unicode text, got {key!r}"
        ) from None
    if NUL in key:
        raise ValueError(f"engine.signal(run_id, key, payload): key must not contain NUL "
                         f"characters (\\x00), got {key!r}; {_NUL_WHY}")
    return key


def checked_state(state: RunState | str) -> RunState:
    """Return `state` as a `RunState`.

    Raises:
        ValueError: It names no run state.
    """
    try:
        return RunState(state)
    except ValueError:
        names = ", ".join(s.value for s in RunState)
        raise ValueError(f"unknown run state {state!r}; expected one of {names}") from None


def checked_states(sig: str, states: object) -> frozenset[RunState] | None:
    """Return the run states `states` names (values or `RunState`s); None stays None.

    Raises:
        TypeError: `states` is a single string, or holds something else than states.
        ValueError: A name is not a run state's.
    """
    if states is None:
        return None
    if isinstance(states, str) or not isinstance(states, Collection):
        raise TypeError(f"{sig}: states must be a collection of states, e.g. "
                        f"('suspended',), not {shown(states)}")
    return frozenset(checked_state_name(sig, state) for state in states)


def checked_state_name(sig: str, state: object) -> RunState:
    """Return the `RunState` that `state` (a `RunState` or its name) is.

    Raises:
        TypeError: It is not a string.
        ValueError: It names no run state.
    """
    if not isinstance(state, str):
        raise TypeError(f"{sig}: each state must be a RunState or its name, got {shown(state)}")
    if state not in {s.value for s in RunState}:
        names = ", ".join(repr(s.value) for s in RunState)
        raise ValueError(f"{sig}: unknown state {state!r}; use {names}")
    return RunState(state)


def checked_condition(until: object) -> Callable[[RunInfo], bool]:
    """Return a `wait(until=...)` condition: `until` itself, or "the run is in that state".

    Raises:
        TypeError: `until` is neither callable nor a state.
        ValueError: `until` is a string that is not a state's name.
    """
    if isinstance(until, str):
        state = checked_state_name("wait(until=...)", until)
        return lambda info: info.state is state
    if not callable(until):
        raise TypeError(f"wait(until=...): until must be a condition on RunInfo or a state, "
                        f"got {shown(until)}")
    return until
