"""Waiting in a test for what a thread or another task does, without hanging the suite.

Virtual time cannot wait for a worker thread's work (no virtual time passes while a
thread runs), so such a test lets the other tasks run turn after turn until the thing
has happened. Should it never happen (a change that stops the engine from doing it),
the test fails after a limit in real time instead of spinning forever: the limit is a
guard against a hang, never a wait the test relies on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import trio

# Far beyond the milliseconds a thread's read or a replay's first turn takes.
SPIN_LIMIT_SECONDS = 60.0


async def spin_until(happened: Callable[[], bool], what: str) -> None:
    """Let other tasks run until `happened()` is true; fail the test if it never is."""
    deadline = time.monotonic() + SPIN_LIMIT_SECONDS
    while not happened():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {SPIN_LIMIT_SECONDS:.0f} s")
        await trio.sleep(0)
