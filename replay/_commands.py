"""Commands: the frozen values a workflow yields (`Step`, `Sleep`, `Suspend`).

Building a command executes nothing: it validates its arguments and stores them, so a
mistake raises at the `yield` that made it. Commands compare by value, which lets the
interpreter check a yielded command against its record and lets a test step a workflow
by hand: ``assert next(gen) == Step("reserve:v1", reserve_stock, "o-1")``.

Pure: standard library only; no I/O, no clock, no randomness that is not derived from
its inputs (retry jitter is a hash of ``(run_id, key, attempt)`` so replays agree).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FunctionType
from typing import Any, TypeAlias

from replay._checks import (
    Frozen,
    check_key,
    checked_duration,
    shown,
)
from replay._errors import qualified_name
from replay._retry import Retry

_STEP = "Step(key, fn, *args)"
# The latest `Sleep(until=...)`: later ones would take the engine clock near datetime.max.
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)
_EXAMPLE = "e.g. Step('charge:v1', charge_card, order_id)"


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
# every workflow's hot path, and plain functions are the common case. A plain dict (a
# weak-keyed one costs a weak reference per lookup, a fifth of building the Step),
# emptied when it grows past _FACTS_KEPT, so functions made on the fly (lambdas,
# closures) are kept alive only for a while.
# (target, bound args, keywords, name, is_async)
_Facts: TypeAlias = tuple[Any, tuple[Any, ...], tuple[tuple[str, Any], ...], str, bool]
_FUNCTION_FACTS: dict[Callable[..., Any], _Facts] = {}
_FACTS_KEPT = 4096


def _facts_of(fn: Callable[..., Any]) -> _Facts:
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
            f"got {shown(fn)}; steps call plain or async functions: return a list, "
            "or run a sub-workflow inline with yield from"
        )
    ordered = tuple(sorted(keywords.items(), key=lambda item: item[0]))
    return target, bound_args, ordered, _describe(target), inspect.iscoroutinefunction(call)


def _is_plain_callable(target: object) -> bool:
    return inspect.isroutine(target) or isinstance(target, type)


def _check_fn(fn: object) -> None:
    if inspect.iscoroutine(fn) or inspect.isgenerator(fn) or inspect.isasyncgen(fn):
        raise TypeError(
            f"{_STEP}: fn must be callable, got {shown(fn)}; steps call plain or async "
            f"functions, so pass the function itself instead of calling it, {_EXAMPLE}"
        )
    if not callable(fn):
        raise TypeError(
            f"{_STEP}: fn must be callable, got {shown(fn)}; pass the function itself, {_EXAMPLE}"
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


class Step(Frozen):
    """Call `fn(*args)` once per run and record its outcome under `key`.

    `fn` is a plain function (run in a worker thread) or an `async def` function (run on
    the engine's loop). Keyword arguments for `fn` go through `functools.partial`.
    Two steps are equal when their key, function (partials unwrapped), positional and
    keyword arguments, retry, timeout, name and purity are; so
    ``Step("k", partial(f, 1))`` equals ``Step("k", f, 1)``.

    A `pure` step promises to be a deterministic computation with no outside effect
    (a parse, a transformation of earlier values): called again with the same
    arguments, it returns an equal value and changes nothing in the world. The
    workflow then continues without waiting for its outcome to be committed: the
    outcome rides the run's next commit, and if the process dies first the step simply
    runs again. A sync pure function runs on the engine's loop, not in a worker
    thread, so it must be quick. See docs/concepts.md, "Pure steps", for what goes
    wrong when a step marked pure is not.

    Args:
        key: The step's identity inside its run, e.g. ``"charge:v1"``.
        fn: The function to call; never called by the constructor.
        *args: Positional arguments for `fn`.
        retry: The retry policy; None uses the engine's default.
        timeout: Limit of one attempt, in seconds or as a `timedelta`; stored in seconds.
        name: The recorded name; defaults to ``f"{fn.__module__}.{fn.__qualname__}"``.
        pure: Whether `fn` is a deterministic computation with no outside effect (see
            above); it then takes no `timeout`.

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
            `timeout`, `name` or `pure` has the wrong type.
        ValueError: `key` or `name` is empty; `timeout` is not a finite duration > 0 of
            at most 100 years, or is given with ``pure=True``.
    """

    # Five slots, not one per attribute: a Step is built at every `yield` of every run,
    # replays included, and each slot set on a frozen object costs a call. What the
    # function is (`_facts`) is shared by every Step of that function; the options are
    # None unless one is given.
    __slots__ = ("_facts", "_options", "args", "fn", "key")
    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    _facts: _Facts
    _options: tuple[Retry | None, float | None, str | None, bool] | None

    def __init__(
        self,
        key: str,
        fn: Callable[..., Any],
        *args: Any,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
        name: str | None = None,
        pure: bool = False,
    ) -> None:
        check_key(_STEP, key)
        facts = _FUNCTION_FACTS.get(fn) if type(fn) is FunctionType else None
        if facts is None:
            facts = _facts_of(fn)
            if type(fn) is FunctionType:
                if len(_FUNCTION_FACTS) >= _FACTS_KEPT:
                    _FUNCTION_FACTS.clear()
                _FUNCTION_FACTS[fn] = facts
        if retry is None and timeout is None and name is None and pure is False:
            options = None
        else:
            options = _checked_options(retry, timeout, name, pure)
        _set_key(self, key)
        _set_fn(self, fn)
        _set_args(self, args)
        _set_facts(self, facts)
        _set_options(self, options)

    @property
    def retry(self) -> Retry | None:
        """The step's `Retry` policy, or None for the engine's default."""
        options = self._options
        return None if options is None else options[0]

    @property
    def timeout(self) -> float | None:
        """Seconds each attempt may take, or None for no limit."""
        options = self._options
        return None if options is None else options[1]

    @property
    def name(self) -> str:
        """The name shown in the history: the one given, or the function's own."""
        options = self._options
        if options is not None and options[2] is not None:
            return options[2]
        return self._facts[3]

    @property
    def pure(self) -> bool:
        """Whether the step was declared deterministic and free of outside effects."""
        options = self._options
        return False if options is None else options[3]

    @property
    def is_async(self) -> bool:
        """Whether the function is an ``async def`` function (or its ``__call__`` is)."""
        return self._facts[4]

    @property
    def _target(self) -> Any:
        return self._facts[0]

    @property
    def _all_args(self) -> tuple[Any, ...]:
        bound = self._facts[1]
        return bound + self.args if bound else self.args

    @property
    def _keywords(self) -> tuple[tuple[str, Any], ...]:
        return self._facts[2]

    def _value(self) -> tuple[Any, ...]:
        return (self.key, self._target, self._all_args, self._keywords, self.retry,
                self.timeout, self.name, self.pure)

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
        if self.pure:
            parts.append("pure=True")
        return f"Step({', '.join(parts)})"


def _checked_options(
    retry: object, timeout: object, name: object, pure: object
) -> tuple[Retry | None, float | None, str | None, bool]:
    """Check a Step's options and return them as stored: (retry, timeout, name, pure)."""
    if retry is not None and not isinstance(retry, Retry):
        raise TypeError(
            f"Step(key, fn, *args, retry=...): retry must be a replay.Retry or None, "
            f"got {shown(retry)}; e.g. retry=Retry(attempts=3)"
        )
    seconds = None
    if timeout is not None:
        sig = "Step(key, fn, *args, timeout=...)"
        seconds = checked_duration(sig, "timeout", timeout, positive=True).total_seconds()
    if name is not None and (not isinstance(name, str) or not name):
        error = ValueError if isinstance(name, str) else TypeError
        raise error(f"Step(key, fn, *args, name=...): name must be a non-empty string or "
                    f"None, got {shown(name)}")
    if pure is not False:
        _check_pure(pure, seconds)
    return retry, seconds, name, bool(pure)


# A Step sets its slots past its own refusing __setattr__, each with its own setter:
# `object.__setattr__` looks the name up on the class first, a fifth of building a Step.
_set_key, _set_fn, _set_args, _set_facts, _set_options = (
    Step.__dict__[slot].__set__ for slot in ("key", "fn", "args", "_facts", "_options"))


def _check_pure(pure: object, timeout: float | None) -> None:
    if not isinstance(pure, bool):
        raise TypeError(f"Step(key, fn, *args, pure=...): pure must be True or False, "
                        f"got {shown(pure)}")
    if timeout is not None:
        raise ValueError(
            "Step(key, fn, *args, pure=True, timeout=...): a pure step is a quick "
            "computation and takes no timeout; drop timeout=, or make it an ordinary step")


class Sleep(Frozen):
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
        check_key("Sleep(key, duration)", key)
        if (duration is None) == (until is None):
            raise TypeError(
                "Sleep(key, duration) or Sleep(key, until=datetime): pass exactly one of "
                f"duration or until, got duration={duration!r} and until={until!r}"
            )
        sig = "Sleep(key, until=datetime)"
        if until is not None and not isinstance(until, datetime):
            raise TypeError(f"{sig}: until must be an aware datetime, got {shown(until)}")
        if until is not None and until.utcoffset() is None:
            raise ValueError(
                f"{sig}: until must be an aware datetime, got naive {shown(until)}; "
                "add a timezone, e.g. datetime(2030, 1, 1, tzinfo=timezone.utc)"
            )
        if until is not None and until >= _LATEST:
            raise ValueError(f"{sig}: until must be before the year 9000, got {shown(until)}")
        if duration is not None:
            duration = checked_duration("Sleep(key, duration)", "duration", duration,
                                        positive=False)
        self._set(key=key, duration=duration, until=until)

    def _value(self) -> tuple[Any, ...]:
        return (self.key, self.duration, self.until)

    def __repr__(self) -> str:
        if self.until is not None:
            return f"Sleep({self.key!r}, until={self.until!r})"
        return f"Sleep({self.key!r}, {self.duration!r})"


class Suspend(Frozen):
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
        check_key("Suspend(key)", key)
        if status is not None and not isinstance(status, str):
            raise TypeError(
                f"Suspend(key, status=...): status must be a string or None, got {shown(status)}"
            )
        if timeout is not None:
            timeout = checked_duration("Suspend(key, timeout=...)", "timeout", timeout,
                                       positive=True)
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
    raise TypeError(f"command_kind(cmd): cmd must be a Step, Sleep or Suspend, got {shown(cmd)}")
