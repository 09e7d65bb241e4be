"""Test configuration: `async def` tests run under trio with a virtual clock.

Every coroutine test function runs in its own `trio.run` with
`MockClock(autojump_threshold=0)`, so sleeps, back-offs and timeouts take no real
time. The clock is available to the test through the `clock` fixture.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator

import pytest
import trio
import trio.testing


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """The virtual clock the test's trio run uses."""
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    run_clock = pyfuncitem.funcargs.get("clock") or trio.testing.MockClock(autojump_threshold=0)
    trio.run(functools.partial(pyfuncitem.obj, **kwargs), clock=run_clock)
    return True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Coroutine tests need the clock fixture even when they do not ask for it.
    for item in items:
        is_async = isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj)
        if is_async and "clock" not in item.fixturenames:
            item.fixturenames.append("clock")


@pytest.fixture
def db(tmp_path: object) -> Iterator[str]:
    """A path for a fresh database file."""
    yield str(tmp_path / "test.duckdb")  # type: ignore[operator]
