"""Engines for tests: an in-memory database on trio's virtual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import trio
import trio.testing

from replay._checks import checked_state
from replay._engine._clock import set_virtual_start as _anchor
from replay._engine._facade import Engine, internals
from replay._engine._lifecycle import open_engine
from replay._retry import Retry
from replay._types import RunInfo, RunState


def set_virtual_start(start: datetime) -> None:
    """Make engines opened later in this trio run start their clock at `start`.

    Call it inside ``trio.run`` before `replay.open_engine`: recorded timestamps and
    deadlines then read the same in every test run. An engine already open keeps its
    clock.

    Args:
        start: An aware datetime.

    Raises:
        TypeError: `start` is not a datetime.
        ValueError: `start` is naive.
        RuntimeError: Called outside ``trio.run``.
    """
    if not isinstance(start, datetime):
        raise TypeError(
            f"set_virtual_start(start): start must be an aware datetime, got {start!r} "
            f"({type(start).__name__})"
        )
    _anchor(start)


def require_virtual_clock(caller: str) -> None:
    """Check that the current trio run uses `trio.testing.MockClock`.

    Raises:
        RuntimeError: It does not, or this is not inside ``trio.run``; the message
            says how to run under the virtual clock.
    """
    try:
        clock = trio.lowlevel.current_clock()
    except RuntimeError:
        raise RuntimeError(
            f"{caller} must run inside trio.run (replay is built on trio); call it from "
            "an async test run by trio, or use replay.testing.run_workflow"
        ) from None
    if not isinstance(clock, trio.testing.MockClock):
        raise RuntimeError(
            f"{caller} needs trio's virtual clock, but this trio run uses "
            f"{type(clock).__name__}; run it under trio.testing.MockClock("
            "autojump_threshold=0) (the replay_clock fixture, or pytest-trio's "
            "autojump_clock), or use replay.testing.run_workflow, which sets one up"
        )


@asynccontextmanager
async def open_test_engine(
    workflows: Sequence[Callable[..., Any]],
    *,
    start: datetime | None = None,
    always_replay: bool = True,
    default_retry: Retry | None = None,
    cache_size: int = 1000,
    max_threads: int = 40,
    shutdown_timeout: float = 30.0,
) -> AsyncIterator[Engine]:
    """Open an engine on an in-memory database, for a test on trio's virtual clock.

    The same as `replay.open_engine(":memory:", durability="none", ...)`, except that
    `always_replay` is on by default (every wake-up replays the workflow from the top
    and fails the run with `NondeterminismError` if it takes another path) and that the
    engine's clock can start at a chosen datetime.

    Args:
        workflows: The workflow functions the engine can run.
        start: The engine clock's reading when the engine opens (aware); None keeps
            the anchor of this trio run (the wall-clock time of its first engine).
        always_replay: Replay every wake-up from the top (a determinism check).
        default_retry: Retry policy for steps without `retry=`.
        cache_size: Parked generators kept when `always_replay` is off.
        max_threads: How many sync step functions may run at once.
        shutdown_timeout: Virtual seconds running steps get to finish on exit.

    Yields:
        The open `Engine`.

    Raises:
        RuntimeError: Not inside a trio run on `trio.testing.MockClock`.
        TypeError: An option has the wrong type, or a workflow is not a generator
            function.
        ValueError: An option has a wrong value, `start` is naive, or two workflows
            share a name.
    """
    require_virtual_clock("replay.testing.open_test_engine()")
    if start is not None:
        set_virtual_start(start)
    async with open_engine(
        ":memory:", workflows=workflows, durability="none", always_replay=always_replay,
        default_retry=default_retry, cache_size=cache_size, max_threads=max_threads,
        shutdown_timeout=shutdown_timeout,
    ) as engine:
        yield engine


async def wait_for_state(engine: Engine, run_id: str, *states: RunState | str) -> RunInfo:
    """Wait until the run is in one of `states` (e.g. ``"sleeping"``), and return its info.

    `Run.wait()` waits through sleeps; this stops at any state, which lets a test move
    a clock by hand (``replay_clock.jump(...)``) once a run has parked. A run that is
    suspended counts only once it has stopped executing.

    Args:
        engine: The engine running the run.
        run_id: The run's id.
        *states: One or more `RunState`s or their names.

    Returns:
        The run's `RunInfo` in that state.

    Raises:
        RunNotFound: No such run.
        EngineClosed: The engine closed first.
        TypeError: No state is given.
        ValueError: A state is not a run state.
    """
    if not states:
        raise TypeError("wait_for_state(engine, run_id, *states): give at least one state, "
                        "e.g. 'sleeping'")
    wanted = frozenset(checked_state(state) for state in states)
    return await internals(engine).scheduler.wait_for(run_id, wanted)
