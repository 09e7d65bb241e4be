"""The pytest plugin of replay, registered through the ``pytest11`` entry point.

Installing replay is enough: pytest loads this module in every session, and it does
nothing until a test asks for one of its fixtures.

- ``replay_clock``: a `trio.testing.MockClock` with ``autojump_threshold=0``.
- ``replay_engine``: an engine on an in-memory database, opened in the test's own trio
  run (under ``replay_clock``) and closed after it. A fixture cannot open it (no trio
  run exists while plain pytest sets fixtures up), so the fixture returns a
  placeholder and the test function is wrapped, at collection, in an ``async def``
  that opens the engine and passes it in place of the placeholder. Whatever runs the
  coroutine then opens the engine in its own trio run: this plugin's
  `pytest_pyfunc_call`, pytest-trio, anyio's plugin on its trio backend, or a
  project's own hook.
- ``replay_workflows`` and ``replay_engine_options`` (override them like anyio's
  ``anyio_backend``): what the engine registers, and other `open_test_engine` options.

`pytest_pyfunc_call` runs an ``async def`` test that uses ``replay_engine`` or
``replay_clock`` under ``trio.run(..., clock=replay_clock)``. It leaves alone every
other test, and tests that another plugin runs: pytest-trio (its tests are no longer
coroutine functions when this hook runs) and anyio (``anyio_backend``), and it runs
after hooks marked ``tryfirst`` (a project's conftest taking all async tests).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import pytest
import trio
import trio.testing

from replay._engine._facade import Engine
from replay._workflows import _NAME_ATTRIBUTE, workflow_name
from replay.testing._engines import open_test_engine

ENGINE = "replay_engine"
CLOCK = "replay_clock"


@pytest.fixture
def replay_clock() -> trio.testing.MockClock:
    """The virtual clock an async test using replay's fixtures runs under.

    Time jumps ahead by itself whenever every task waits (``autojump_threshold=0``);
    ``replay_clock.jump(seconds)`` moves it by hand.
    """
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def replay_workflows(request: pytest.FixtureRequest) -> list[Callable[..., Any]]:
    """The workflows `replay_engine` registers.

    By default, every function marked with ``@replay.workflow`` in the test's module
    (defined or imported there). Override this fixture to choose them.
    """
    module = getattr(request, "module", None)
    return [] if module is None else module_workflows(module)


@pytest.fixture
def replay_engine_options() -> dict[str, Any]:
    """Other keyword arguments for `replay.testing.open_test_engine` (default: none).

    Override it to set ``start``, ``always_replay``, ``default_retry`` ...
    """
    return {}


@pytest.fixture
def replay_engine(request: pytest.FixtureRequest, replay_clock: trio.testing.MockClock,
                  replay_workflows: list[Callable[..., Any]],
                  replay_engine_options: dict[str, Any]) -> PendingEngine:
    """An engine on an in-memory database, open for the duration of an async test.

    Registers the `replay_workflows`, with `always_replay` on; the test runs under
    `replay_clock`.

    Raises:
        TypeError: The test is not an ``async def`` function.
    """
    if not inspect.iscoroutinefunction(getattr(request.node, "obj", None)):
        raise TypeError(
            f"{request.node.name} uses replay_engine but is not an async test: make it an "
            "`async def` (replay's plugin runs it under trio), or call "
            "replay.testing.run_workflow in a plain test"
        )
    return PendingEngine(replay_clock, list(replay_workflows), dict(replay_engine_options))


def module_workflows(module: ModuleType) -> list[Callable[..., Any]]:
    """Return the functions marked with ``@replay.workflow`` in `module`'s namespace."""
    found: list[Callable[..., Any]] = []
    for value in vars(module).values():
        if inspect.isgeneratorfunction(value) and hasattr(value, _NAME_ATTRIBUTE) and all(
                value is not seen for seen in found):
            found.append(value)
    return found


class PendingEngine:
    """What the ``replay_engine`` fixture holds until the test's trio run opens it."""

    def __init__(self, clock: trio.testing.MockClock, workflows: list[Callable[..., Any]],
                 options: dict[str, Any]) -> None:
        self.clock = clock
        self.workflows = workflows
        self.options = options

    def __repr__(self) -> str:
        names = ", ".join(workflow_name(w) for w in self.workflows)
        return f"<replay_engine, opens when the async test starts: workflows [{names}]>"

    def __getattr__(self, name: str) -> Any:
        # Only reached for what a real Engine has and this placeholder has not.
        raise AttributeError(
            f"replay_engine.{name}: the engine opens when the async test starts, so a "
            "fixture cannot use it; use it in the test, or open an engine in an async "
            "fixture with replay.testing.open_test_engine"
        )

    @asynccontextmanager
    async def open(self, test: str, clock_requested: object) -> AsyncIterator[Engine]:
        """Open the engine in the running trio run.

        Raises:
            RuntimeError: The run is not trio, not on a virtual clock, or not on the
                ``replay_clock`` the test asked for; the message says what to change.
        """
        check_clock(test, clock_requested)
        async with open_test_engine(self.workflows, **self.options) as engine:
            yield engine


def check_clock(test: str, clock_requested: object) -> None:
    """Check that `test` runs in trio on a virtual clock (`clock_requested`, if given).

    Raises:
        RuntimeError: It does not.
    """
    try:
        running = trio.lowlevel.current_clock()
    except RuntimeError:
        raise RuntimeError(
            f"{test} uses replay_engine but does not run under trio; with anyio, use the "
            "trio backend: anyio_backend = 'trio'"
        ) from None
    if not isinstance(running, trio.testing.MockClock):
        raise RuntimeError(
            f"{test} uses replay_engine, which needs trio's virtual clock, but runs under "
            f"{type(running).__name__}; with pytest-trio, also request the replay_clock "
            "fixture (pytest-trio runs a test under the clock fixture it requests); with "
            "anyio, give it the clock: anyio_backend = ('trio', {'clock': replay_clock})"
        )
    if clock_requested is not None and clock_requested is not running:
        raise RuntimeError(
            f"{test} requests replay_clock, but runs under another MockClock, so jumping "
            "replay_clock would move nothing; with anyio, give it the clock: "
            "anyio_backend = ('trio', {'clock': replay_clock}); with pytest-trio, request "
            "replay_clock instead of autojump_clock or mock_clock"
        )


def _with_engine(item: pytest.Function,
                 test: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """Wrap an async test so that it opens ``replay_engine`` in whatever trio run runs it."""

    @functools.wraps(test)
    async def run_with_engine(**kwargs: Any) -> Any:
        pending = item.funcargs.get(ENGINE)
        if not isinstance(pending, PendingEngine):  # the fixture was overridden
            return await test(**kwargs)
        async with pending.open(item.name, kwargs.get(CLOCK)) as engine:
            if ENGINE in kwargs:
                kwargs[ENGINE] = engine
            return await test(**kwargs)

    return run_with_engine


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Wrap every async test that uses ``replay_engine`` (see the module doc)."""
    for item in items:
        if (isinstance(item, pytest.Function) and ENGINE in item.fixturenames
                and inspect.iscoroutinefunction(item.obj)):
            item.obj = _with_engine(item, item.obj)


def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an async test that uses replay's fixtures under ``trio.run`` on `replay_clock`."""
    test = pyfuncitem.obj
    names = pyfuncitem.fixturenames
    if not inspect.iscoroutinefunction(test) or (ENGINE not in names and CLOCK not in names):
        return None
    if "anyio_backend" in pyfuncitem.funcargs:
        return None  # anyio's plugin runs it
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    clock = pyfuncitem.funcargs[CLOCK]
    if not isinstance(clock, trio.abc.Clock):
        raise TypeError(f"the replay_clock fixture must return a trio clock such as "
                        f"trio.testing.MockClock, got {clock!r}")
    trio.run(functools.partial(test, **kwargs), clock=clock)
    return True
