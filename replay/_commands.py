"""Commands: the frozen values a workflow yields (`Step`, `Sleep`, `Suspend`), and `Retry`.

Building a command executes nothing: it validates its arguments and stores them, so a
mistake raises at the `yield` that made it. Commands compare by value, which lets the
interpreter check a yielded command against its record and lets a test step a workflow
by hand: ``assert next(gen) == Step("reserve:v1", reserve_stock, "o-1")``.

Pure: standard library only; no I/O, no clock, no randomness that is not derived from
its inputs (retry jitter is a hash of ``(run_id, key, attempt)`` so replays agree).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import weakref
from collections.abc import Callable, Sequence
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta
from types import FunctionType
from typing import Any, TypeAlias

from replay._errors import qualified_name

_STEP = "Step(key, fn, *args)"
# Durations (sleeps, timeouts, retry delays) stay below 100 years, so that a deadline
# (now + duration, and a retry delay's jitter on top) is always a valid datetime.
MAX_DURATION = timedelta(days=36525)
_MAX_SECONDS = MAX_DURATION.total_seconds()
_TOO_LONG = f"at most 100 years ({_MAX_SECONDS:.0f} seconds)"
# The latest `Sleep(until=...)`: later ones would take the engine clock near datetime.max.
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)
_EXAMPLE = "e.g. Step('charge:v1', charge_card, order_id)"


def _got(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def _restore(cls: type[_Frozen], state: dict[str, Any]) -> _Frozen:
    obj = object.__new__(cls)
    obj._set(**state)
    return obj


class _Frozen:
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
        assert isinstance(other, _Frozen)
        return self._value() == other._value()

    def __hash__(self) -> int:
        return hash((type(self), self._value()))

    def __reduce__(self) -> tuple[Any, ...]:
        # The default protocol restores slots with setattr, which a frozen class refuses.
        slots: tuple[str, ...] = type(self).__slots__
        return (_restore, (type(self), {slot: getattr(self, slot) for slot in slots}))


def _check_key(sig: str, key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(
            f"{sig}: key must be a string, got {_got(key)}; "
            "the key comes first and names the command, e.g. 'reserve:v1'"
        )
    if not key:
        raise ValueError(f"{sig}: key must be a non-empty string, got {_got(key)}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        # Keys are stored as text and looked up again on replay: they must survive.
        raise ValueError(
            f"{sig}: key must be valid unicode text (no lone surrogates), got {key!r}"
        ) from None
    return key


def _duration(sig: str, arg: str, value: object, *, positive: bool) -> timedelta:
    """Normalise a `timedelta` or a number of seconds; reject bools, NaN, negatives."""
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            duration = timedelta(seconds=value)
        except (OverflowError, ValueError):  # inf, nan, beyond timedelta.max
            raise ValueError(
                f"{sig}: {arg} must be a finite number of seconds {bound}, got {_got(value)}"
            ) from None
    else:
        hint = "; for a deadline pass until=" if isinstance(value, datetime) else ""
        raise TypeError(
            f"{sig}: {arg} must be a timedelta or a number of seconds, got {_got(value)}{hint}"
        )
    if duration < timedelta(0) or (positive and not duration):
        hint = "; pass None for no timeout" if positive else ""
        raise ValueError(f"{sig}: {arg} must be {bound}, got {_got(value)}{hint}")
    if duration > MAX_DURATION:
        raise ValueError(f"{sig}: {arg} must be {_TOO_LONG}, got {_got(value)}")
    return duration


def _number(arg: str, value: object, minimum: float, maximum: float = float("inf")) -> float:
    sig = f"Retry({arg}=...)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{sig}: {arg} must be a number, got {_got(value)}")
    within = f"between {minimum:g} and {maximum:g}" if maximum < float("inf") else f">= {minimum:g}"
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = float("inf")
    if not minimum <= number <= maximum or number == float("inf"):
        raise ValueError(f"{sig}: {arg} must be a finite number {within}, got {_got(value)}")
    return number


def _seconds(arg: str, value: object) -> float:
    number = _number(arg, value, 0.0)
    if number > _MAX_SECONDS:
        raise ValueError(f"Retry({arg}=...): {arg} must be {_TOO_LONG}, got {_got(value)}")
    return number


def _exception_classes(arg: str, value: object) -> tuple[type[Exception], ...]:
    classes = tuple(value) if isinstance(value, tuple | list) else (value,)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise TypeError(
                f"Retry({arg}=...): {arg} must be an Exception subclass or a tuple of them, "
                f"got {_got(cls)}"
            )
    return classes


def _class_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else qualified_name(cls)


def _unit(run_id: str, key: str, attempt: int) -> float:
    """Return a number in [-1, 1) fixed by the inputs (blake2b, not the salted `hash()`)."""
    payload = json.dumps([run_id, key, attempt]).encode("ascii")
    digest = hashlib.blake2b(payload, digest_size=8, person=b"replay.retry").digest()
    return (int.from_bytes(digest, "big") >> 11) / 2**53 * 2.0 - 1.0


class Retry(_Frozen):
    """A durable retry policy for a `Step`.

    Args:
        attempts: How many attempts in all, including the first (``1`` = no retries).
        initial: Seconds to wait after the first failed attempt.
        backoff: Factor by which each further wait grows (``1`` = constant).
        max_delay: Upper bound, in seconds, of a wait before jitter.
        jitter: Fraction of each wait added or removed, drawn deterministically from
            ``(run_id, key, attempt)``.
        retry_on: Exception classes (or one class) worth another attempt.
        give_up_on: Exception classes (or one class) that are never retried, even when
            they also match `retry_on`.

    Raises:
        TypeError: An argument has the wrong type (bools are not numbers here).
        ValueError: A number is out of range or not finite; `initial` or `max_delay` is
            over 100 years.
    """

    __slots__ = ("attempts", "backoff", "give_up_on", "initial", "jitter", "max_delay",
                 "retry_on")
    _FIELDS = ("attempts", "initial", "backoff", "max_delay", "jitter", "retry_on",
               "give_up_on")  # signature order, for repr
    attempts: int
    initial: float
    backoff: float
    max_delay: float
    jitter: float
    retry_on: tuple[type[Exception], ...]
    give_up_on: tuple[type[Exception], ...]

    def __init__(
        self,
        attempts: int = 3,
        initial: float = 1.0,
        backoff: float = 2.0,
        max_delay: float = 60.0,
        jitter: float = 0.1,
        retry_on: type[Exception] | Sequence[type[Exception]] = (Exception,),
        give_up_on: type[Exception] | Sequence[type[Exception]] = (),
    ) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise TypeError(f"Retry(attempts=...): attempts must be an int, got {_got(attempts)}")
        if attempts < 1:
            raise ValueError(
                f"Retry(attempts=...): attempts must be >= 1 (it counts the first attempt), "
                f"got {_got(attempts)}; use attempts=1 for no retries"
            )
        self._set(
            attempts=attempts,
            initial=_seconds("initial", initial),
            backoff=_number("backoff", backoff, 1.0),
            max_delay=_seconds("max_delay", max_delay),
            jitter=_number("jitter", jitter, 0.0, 1.0),
            retry_on=_exception_classes("retry_on", retry_on),
            give_up_on=_exception_classes("give_up_on", give_up_on),
        )

    def _value(self) -> tuple[Any, ...]:
        return tuple(getattr(self, field) for field in self._FIELDS)

    def __repr__(self) -> str:
        parts = []
        for name, default in zip(self._FIELDS, _DEFAULT_RETRY_VALUE, strict=True):
            value = getattr(self, name)
            if value != default:
                if isinstance(value, tuple):
                    names = [_class_name(cls) for cls in value]
                    value_repr = f"({', '.join(names)}{',' if len(names) == 1 else ''})"
                else:
                    value_repr = repr(value)
                parts.append(f"{name}={value_repr}")
        return f"Retry({', '.join(parts)})"

    def delay(self, run_id: str, key: str, attempt: int) -> float:
        """Return the seconds to wait after failed attempt `attempt` before the next one.

        ``min(max_delay, initial * backoff ** (attempt - 1))`` times ``1 + jitter * u``,
        with ``u`` in [-1, 1) drawn from ``(run_id, key, attempt)``: the same inputs give
        the same delay in every process, so a recorded back-off replays identically.

        Args:
            run_id: The run the step belongs to.
            key: The step's key.
            attempt: The number of the attempt that failed, starting at 1.

        Returns:
            A delay in seconds, never negative.

        Raises:
            ValueError: `attempt` is not an int >= 1.
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ValueError(f"Retry.delay(run_id, key, attempt): attempt must be an int >= 1, "
                             f"got {_got(attempt)}")
        try:
            base = self.initial * self.backoff ** (attempt - 1)
        except OverflowError:
            base = float("inf") if self.initial else 0.0
        base = min(self.max_delay, base)
        return max(0.0, base * (1.0 + self.jitter * _unit(run_id, key, attempt)))

    def retries(self, error_types: Sequence[str]) -> bool:
        """Tell whether a failed attempt with these exception classes deserves another.

        Decided from qualified class names (as recorded, most specific first), not from
        a live exception, so a failure read back from the history decides the same way.

        Args:
            error_types: Qualified names of the exception's classes, most specific
                first (``f"{cls.__module__}.{cls.__qualname__}"`` for each class in
                the exception's MRO), as recorded in the history.

        Returns:
            True iff some `retry_on` class and no `give_up_on` class is among them.
        """
        names = set(error_types)
        if any(qualified_name(cls) in names for cls in self.give_up_on):
            return False
        return any(qualified_name(cls) in names for cls in self.retry_on)


_DEFAULT_RETRY_VALUE = Retry()._value()


def _unwrap(
    fn: Callable[..., Any], args: tuple[Any, ...]
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """Peel `functools.partial` layers: (function, all positional args, keywords)."""
    keywords: dict[str, Any] = {}
    while isinstance(fn, functools.partial):
        args = fn.args + args
        keywords = {**fn.keywords, **keywords}  # an outer partial's keywords win
        fn = fn.func
    return fn, args, keywords


# What a Step needs to know about its function, by function: building a Step is on
# every workflow's hot path, and plain functions are the common case. Weak keys, so
# functions made on the fly (lambdas, closures) are not kept alive.
_FUNCTION_FACTS: weakref.WeakKeyDictionary[
    Callable[..., Any], tuple[Any, tuple[Any, ...], tuple[tuple[str, Any], ...], str, bool]
] = weakref.WeakKeyDictionary()


def _facts_of(
    fn: Callable[..., Any],
) -> tuple[Any, tuple[Any, ...], tuple[tuple[str, Any], ...], str, bool]:
    """Check `fn` and return (target, bound args, keywords, name, is_async).

    Raises:
        TypeError: `fn` is not callable, is a coroutine or generator object, or a
            generator function.
    """
    _check_fn(fn)
    target, bound_args, keywords = _unwrap(fn, ())
    call = target if _is_plain_callable(target) else getattr(target, "__call__", None)  # noqa: B004
    if inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call):
        raise TypeError(
            f"{_STEP}: fn must be a plain or async function, not a generator function, "
            f"got {_got(fn)}; steps call plain or async functions: return a list, "
            "or run a sub-workflow inline with yield from"
        )
    ordered = tuple(sorted(keywords.items(), key=lambda item: item[0]))
    return target, bound_args, ordered, _describe(target), inspect.iscoroutinefunction(call)


def _is_plain_callable(target: object) -> bool:
    return inspect.isroutine(target) or isinstance(target, type)


def _check_fn(fn: object) -> None:
    if inspect.iscoroutine(fn) or inspect.isgenerator(fn) or inspect.isasyncgen(fn):
        raise TypeError(
            f"{_STEP}: fn must be callable, got {_got(fn)}; steps call plain or async "
            f"functions, so pass the function itself instead of calling it, {_EXAMPLE}"
        )
    if not callable(fn):
        raise TypeError(
            f"{_STEP}: fn must be callable, got {_got(fn)}; pass the function itself, {_EXAMPLE}"
        )


def _describe(target: object) -> str:
    """`module.qualname` of a function, method or class; for other objects their type's."""
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(qualname, str):
        return qualified_name(type(target))
    module = getattr(target, "__module__", None)
    return f"{module if isinstance(module, str) else type(target).__module__}.{qualname}"


def _show(target: object) -> str:
    named = isinstance(getattr(target, "__qualname__", None), str)
    return _describe(target) if named else repr(target)


class Step(_Frozen):
    """Call `fn(*args)` once per run and record its outcome under `key`.

    `fn` is a plain function (run in a worker thread) or an `async def` function (run on
    the engine's loop). Keyword arguments for `fn` go through `functools.partial`.
    Two steps are equal when their key, function (partials unwrapped), positional and
    keyword arguments, retry, timeout and name are; so ``Step("k", partial(f, 1))``
    equals ``Step("k", f, 1)``.

    Args:
        key: The step's identity inside its run, e.g. ``"charge:v1"``.
        fn: The function to call; never called by the constructor.
        *args: Positional arguments for `fn`.
        retry: The retry policy; None uses the engine's default.
        timeout: Limit of one attempt, in seconds or as a `timedelta`; stored in seconds.
        name: The recorded name; defaults to ``f"{fn.__module__}.{fn.__qualname__}"``.

    Attributes:
        fn: The callable as passed (a `functools.partial` stays one); `key`, `args` and
            `retry` are also kept as passed.
        timeout: Seconds, or None.
        name: The resolved name.
        is_async: Whether the unwrapped function is an `async def` function (or a
            callable object whose ``__call__`` is).

    Raises:
        TypeError: `key` is not a string; `fn` is not callable, is a coroutine or
            generator object, or is a generator function; `retry` is not a `Retry`;
            `timeout` or `name` has the wrong type.
        ValueError: `key` or `name` is empty; `timeout` is not a finite duration > 0 of
            at most 100 years.
    """

    __slots__ = ("_all_args", "_keywords", "_target", "args", "fn", "is_async", "key", "name",
                 "retry", "timeout")
    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    retry: Retry | None
    timeout: float | None
    name: str
    is_async: bool
    _target: Any
    _all_args: tuple[Any, ...]
    _keywords: tuple[tuple[str, Any], ...]

    def __init__(
        self,
        key: str,
        fn: Callable[..., Any],
        *args: Any,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
        name: str | None = None,
    ) -> None:
        _check_key(_STEP, key)
        facts = _FUNCTION_FACTS.get(fn) if type(fn) is FunctionType else None
        if facts is None:
            facts = _facts_of(fn)
            if type(fn) is FunctionType:
                _FUNCTION_FACTS[fn] = facts
        target, bound_args, keywords, described, is_async = facts
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(
                f"Step(key, fn, *args, retry=...): retry must be a replay.Retry or None, "
                f"got {_got(retry)}; e.g. retry=Retry(attempts=3)"
            )
        if timeout is not None:
            sig = "Step(key, fn, *args, timeout=...)"
            timeout = _duration(sig, "timeout", timeout, positive=True).total_seconds()
        if name is not None and (not isinstance(name, str) or not name):
            error = ValueError if isinstance(name, str) else TypeError
            raise error(f"Step(key, fn, *args, name=...): name must be a non-empty string or "
                        f"None, got {_got(name)}")
        self._set(
            key=key, fn=fn, args=args, retry=retry, timeout=timeout,
            name=name or described, is_async=is_async,
            _target=target, _all_args=bound_args + args if bound_args else args,
            _keywords=keywords,
        )

    def _value(self) -> tuple[Any, ...]:
        return (self.key, self._target, self._all_args, self._keywords, self.retry,
                self.timeout, self.name)

    def __hash__(self) -> int:
        try:
            return hash((Step, self._value()))
        except TypeError:  # unhashable arguments: equal steps still share key and name
            return hash((Step, self.key, self.name))

    def __repr__(self) -> str:
        shown = _show(self._target)
        if isinstance(self.fn, functools.partial):
            bound = self._all_args[: len(self._all_args) - len(self.args)]
            inner = [shown, *map(repr, bound), *(f"{k}={v!r}" for k, v in self._keywords)]
            shown = f"partial({', '.join(inner)})"
        parts = [repr(self.key), shown, *map(repr, self.args)]
        if self.retry is not None:
            parts.append(f"retry={self.retry!r}")
        if self.timeout is not None:
            parts.append(f"timeout={self.timeout!r}")
        if self.name != _describe(self._target):
            parts.append(f"name={self.name!r}")
        return f"Step({', '.join(parts)})"


class Sleep(_Frozen):
    """Wait durably for `duration`, or until the aware datetime `until`.

    The deadline is recorded when the sleep is first reached; the `yield` returns None.

    Args:
        key: The sleep's identity inside its run, e.g. ``"cool-off:v1"``.
        duration: A `timedelta` or seconds >= 0; stored as a `timedelta` (None when
            `until` is given).
        until: An aware `datetime` to wake at, instead of `duration`.

    Raises:
        TypeError: `key` is not a string; not exactly one of `duration` and `until` is
            given; either has the wrong type.
        ValueError: `key` is empty; `duration` is negative, not finite or over 100
            years; `until` is naive or not before the year 9000.
    """

    __slots__ = ("duration", "key", "until")
    key: str
    duration: timedelta | None
    until: datetime | None

    def __init__(
        self,
        key: str,
        duration: timedelta | float | None = None,
        *,
        until: datetime | None = None,
    ) -> None:
        _check_key("Sleep(key, duration)", key)
        if (duration is None) == (until is None):
            raise TypeError(
                "Sleep(key, duration) or Sleep(key, until=datetime): pass exactly one of "
                f"duration or until, got duration={duration!r} and until={until!r}"
            )
        sig = "Sleep(key, until=datetime)"
        if until is not None and not isinstance(until, datetime):
            raise TypeError(f"{sig}: until must be an aware datetime, got {_got(until)}")
        if until is not None and until.utcoffset() is None:
            raise ValueError(
                f"{sig}: until must be an aware datetime, got naive {_got(until)}; "
                "add a timezone, e.g. datetime(2030, 1, 1, tzinfo=timezone.utc)"
            )
        if until is not None and until >= _LATEST:
            raise ValueError(f"{sig}: until must be before the year 9000, got {_got(until)}")
        if duration is not None:
            duration = _duration("Sleep(key, duration)", "duration", duration, positive=False)
        self._set(key=key, duration=duration, until=until)

    def _value(self) -> tuple[Any, ...]:
        return (self.key, self.duration, self.until)

    def __repr__(self) -> str:
        if self.until is not None:
            return f"Sleep({self.key!r}, until={self.until!r})"
        return f"Sleep({self.key!r}, {self.duration!r})"


class Suspend(_Frozen):
    """Park the run until `engine.signal(run_id, key, payload)`; the `yield` returns it.

    Args:
        key: The suspension's identity inside its run, e.g. ``"approval:v1"``.
        status: Text shown as the run's `status_text` while it waits.
        timeout: A `timedelta` or seconds > 0 after which `SuspendTimeout` is thrown
            into the workflow; stored as a `timedelta`.

    Raises:
        TypeError: `key` or `status` is not a string; `timeout` has the wrong type.
        ValueError: `key` is empty; `timeout` is not a finite duration > 0 of at most
            100 years.
    """

    __slots__ = ("key", "status", "timeout")
    key: str
    status: str | None
    timeout: timedelta | None

    def __init__(
        self,
        key: str,
        status: str | None = None,
        timeout: timedelta | float | None = None,
    ) -> None:
        _check_key("Suspend(key)", key)
        if status is not None and not isinstance(status, str):
            raise TypeError(
                f"Suspend(key, status=...): status must be a string or None, got {_got(status)}"
            )
        if timeout is not None:
            timeout = _duration("Suspend(key, timeout=...)", "timeout", timeout, positive=True)
        self._set(key=key, status=status, timeout=timeout)

    def _value(self) -> tuple[Any, ...]:
        return (self.key, self.status, self.timeout)

    def __repr__(self) -> str:
        parts = [repr(self.key)]
        if self.status is not None:
            parts.append(f"status={self.status!r}")
        if self.timeout is not None:
            parts.append(f"timeout={self.timeout!r}")
        return f"Suspend({', '.join(parts)})"


Command: TypeAlias = Step | Sleep | Suspend
COMMAND_TYPES: tuple[type, ...] = (Step, Sleep, Suspend)
_KINDS: dict[type, str] = {Step: "step", Sleep: "sleep", Suspend: "suspend"}


def command_kind(cmd: Command) -> str:
    """Return the recorded kind of a command: ``"step"``, ``"sleep"`` or ``"suspend"``.

    Args:
        cmd: A command.

    Returns:
        The kind, as stored in the ``kind`` column of ``replay_events``.

    Raises:
        TypeError: `cmd` is not a command.
    """
    for cls, kind in _KINDS.items():
        if isinstance(cmd, cls):
            return kind
    raise TypeError(f"command_kind(cmd): cmd must be a Step, Sleep or Suspend, got {_got(cmd)}")
