"""`Retry`: a durable retry policy, pure and deterministic.

Retry jitter is a hash of ``(run_id, key, attempt)``, so every process, and every replay,
computes the same delay. Pure: standard library only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from replay._checks import (
    Frozen,
    checked_number,
    checked_seconds,
    class_name,
    exception_classes,
    shown,
)
from replay._errors import qualified_name


def _unit(run_id: str, key: str, attempt: int) -> float:
    """Return a number in [-1, 1) fixed by the inputs (blake2b, not the salted `hash()`)."""
    payload = json.dumps([run_id, key, attempt]).encode("ascii")
    digest = hashlib.blake2b(payload, digest_size=8, person=b"replay.retry").digest()
    return (int.from_bytes(digest, "big") >> 11) / 2**53 * 2.0 - 1.0


class Retry(Frozen):
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
            raise TypeError(f"Retry(attempts=...): attempts must be an int, got {shown(attempts)}")
        if attempts < 1:
            raise ValueError(
                f"Retry(attempts=...): attempts must be >= 1 (it counts the first attempt), "
                f"got {shown(attempts)}; use attempts=1 for no retries"
            )
        self._set(
            attempts=attempts,
            initial=checked_seconds("initial", initial),
            backoff=checked_number("backoff", backoff, 1.0),
            max_delay=checked_seconds("max_delay", max_delay),
            jitter=checked_number("jitter", jitter, 0.0, 1.0),
            retry_on=exception_classes("retry_on", retry_on),
            give_up_on=exception_classes("give_up_on", give_up_on),
        )

    def _value(self) -> tuple[Any, ...]:
        return tuple(getattr(self, field) for field in self._FIELDS)

    def __repr__(self) -> str:
        parts = []
        for name, default in zip(self._FIELDS, _DEFAULT_RETRY_VALUE, strict=True):
            value = getattr(self, name)
            if value != default:
                if isinstance(value, tuple):
                    names = [class_name(cls) for cls in value]
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
                             f"got {shown(attempt)}")
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
