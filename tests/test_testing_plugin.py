"""replay's pytest plugin (issue 5, item 2), run in isolated pytest sessions (`pytester`).

The sub-sessions load plugins as a user's session would (entry points), but not this
project's tests/conftest.py. pytest-trio and anyio are disabled unless a test is
about them; those tests run only where the plugins are installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest

pytest_plugins = ["pytester"]

PLAIN = ("-p", "no:trio", "-p", "no:anyio")  # nothing but pytest and replay's plugin

SHOP = '''
from datetime import timedelta

import replay
from replay import Sleep, Step, Suspend


def reserve_stock(order_id):
    return {"order": order_id}


@replay.workflow(name="checkout")
def checkout(order_id):
    reservation = yield Step("reserve:v1", reserve_stock, order_id)
    yield Sleep("cool-off:v1", timedelta(minutes=30))
    approved = yield Suspend("approval:v1", status="waiting for a manager")
    return {"order": order_id, "approved": approved, "reservation": reservation}
'''

USES_THE_ENGINE = '''
from datetime import timedelta

from shop import checkout


async def test_engine(replay_engine):
    run = await replay_engine.start(checkout, "o-1", run_id="o-1")
    info = await run.wait()
    assert (info.state, info.waiting_for) == ("suspended", "approval:v1")
    assert info.updated_at - info.created_at == timedelta(minutes=30)
    await replay_engine.signal("o-1", "approval:v1", True)
    assert (await run.result())["approved"] is True
'''


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    found = [entry for entry in importlib.metadata.entry_points(group="pytest11")
             if entry.value == "replay.testing._plugin"]
    assert [entry.name for entry in found] == ["replay"], (
        "reinstall the project (pip install -e .) to register the entry point")


def test_fixtures_need_no_configuration(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(shop=SHOP, test_shop=USES_THE_ENGINE)
    result = pytester.runpytest(*PLAIN)
    result.assert_outcomes(passed=1)


def test_the_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*PLAIN, "--fixtures")
    for name in ("replay_clock", "replay_engine", "replay_engine_options",
                 "replay_workflows"):
        result.stdout.fnmatch_lines([f"{name} -- *replay/testing/_plugin.py:*"])


def test_the_clock_moves_by_hand(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(shop=SHOP, test_clock='''
        import math
        from datetime import timedelta

        import trio
        import trio.testing
        from replay.testing import wait_for_state

        from shop import checkout


        async def test_jump(replay_engine, replay_clock):
            replay_clock.autojump_threshold = math.inf  # time moves only by hand
            run = await replay_engine.start(checkout, "o-1", run_id="o-1")
            info = await wait_for_state(replay_engine, "o-1", "sleeping")
            assert info.waiting_for == "cool-off:v1"
            replay_clock.jump(29 * 60)
            await trio.testing.wait_all_tasks_blocked()
            assert replay_engine.status("o-1").state == "sleeping"
            replay_clock.jump(60)
            info = await run.wait()
            assert info.waiting_for == "approval:v1"


        async def test_clock_alone(replay_clock):
            before = trio.current_time()
            await trio.sleep(3600)
            assert trio.current_time() - before == 3600
            assert trio.lowlevel.current_clock() is replay_clock
    ''')
    pytester.runpytest(*PLAIN).assert_outcomes(passed=2)


def test_workflows_are_found_in_the_test_module_or_chosen_by_a_fixture(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(shop=SHOP, flows='''
        from replay import Step

        def ping():
            return "pong"

        def undecorated():
            return (yield Step("ping:v1", ping))
    ''', test_found='''
        import replay
        from shop import checkout
        from flows import undecorated


        async def test_decorated_ones_are_registered(replay_engine):
            run = await replay_engine.start(checkout, "o-1")
            assert (await run.wait()).state == "suspended"


        async def test_undecorated_ones_are_not(replay_engine):
            try:
                await replay_engine.start(undecorated)
            except replay.WorkflowNotRegistered as error:
                assert "registered: 'checkout'" in str(error)
            else:
                raise AssertionError("registered")
    ''', test_chosen='''
        import pytest
        from flows import undecorated


        @pytest.fixture
        def replay_workflows():
            return [undecorated]


        async def test_chosen(replay_engine):
            run = await replay_engine.start(undecorated)
            assert await run.result() == "pong"
    ''')
    pytester.runpytest(*PLAIN).assert_outcomes(passed=3)


def test_engine_options_come_from_a_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(shop=SHOP, test_options='''
        from datetime import datetime, timedelta, timezone

        import pytest

        START = datetime(2030, 1, 1, tzinfo=timezone.utc)


        @pytest.fixture
        def replay_engine_options():
            return {"start": START}


        async def test_start(replay_engine):
            assert replay_engine.now() == START
    ''')
    pytester.runpytest(*PLAIN).assert_outcomes(passed=1)


def test_failures_skips_and_parameters_behave_as_in_any_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(shop=SHOP, test_outcomes='''
        import pytest
        from shop import checkout


        async def test_fails(replay_engine):
            run = await replay_engine.start(checkout, "o-1")
            assert (await run.wait()).state == "completed"


        async def test_skips(replay_engine):
            pytest.skip("not today")


        @pytest.mark.parametrize("order", ["o-1", "o-2"])
        async def test_each_gets_a_fresh_engine(replay_engine, order):
            assert await replay_engine.runs() == []
            await replay_engine.start(checkout, order, run_id=order)
    ''')
    result = pytester.runpytest(*PLAIN)
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["E       AssertionError: assert <RunState.SUS*> == 'completed'",
                                 "test_outcomes.py:7: AssertionError"])


def test_a_sync_test_cannot_use_the_engine(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain='''
        def test_sync(replay_engine):
            pass
    ''')
    result = pytester.runpytest(*PLAIN)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        "E *TypeError: test_sync uses replay_engine but is not an async test: make it "
        "an `async def` (replay's plugin runs it under trio), or call "
        "replay.testing.run_workflow in a plain test"])


def test_a_fixture_cannot_use_the_engine_before_the_test_starts(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fixture='''
        import pytest


        @pytest.fixture
        def started_at(replay_engine):
            return replay_engine.now()


        async def test_uses_it(started_at):
            pass
    ''')
    result = pytester.runpytest(*PLAIN)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        "E *AttributeError: replay_engine.now: the engine opens when the async test starts, "
        "so a fixture cannot use it; use it in the test, or open an engine in an async "
        "fixture with replay.testing.open_test_engine"])


def test_other_async_tests_are_left_to_other_plugins(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_other='''
        async def test_not_ours():
            pass
    ''')
    result = pytester.runpytest(*PLAIN)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*async def functions are not natively supported*"])


# A project hook like this repository's tests/conftest.py: every async test runs under
# its own trio.run and clock, before any plugin's hook.
OWN_RUNNER = '''
import functools, inspect
import pytest, trio, trio.testing


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {n: pyfuncitem.funcargs[n] for n in pyfuncitem._fixtureinfo.argnames}
    trio.run(functools.partial(pyfuncitem.obj, **kwargs),
             clock=trio.testing.MockClock(autojump_threshold=0))
    return True
'''


def test_a_project_hook_running_all_async_tests_still_gets_an_engine(
        pytester: pytest.Pytester) -> None:
    pytester.makeconftest(OWN_RUNNER)
    pytester.makepyfile(shop=SHOP, test_shop=USES_THE_ENGINE, test_clock='''
        async def test_clock(replay_engine, replay_clock):
            pass
    ''')
    result = pytester.runpytest(*PLAIN)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "E *RuntimeError: test_clock requests replay_clock, but runs under another "
        "MockClock, so jumping replay_clock would move nothing; *"])


# -- next to pytest-trio and anyio (only where they are installed) --

needs_pytest_trio = pytest.mark.skipif(not has("pytest_trio"), reason="needs pytest-trio")
needs_anyio = pytest.mark.skipif(not has("anyio"), reason="needs anyio")


@needs_pytest_trio
def test_next_to_pytest_trio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(shop=SHOP, test_trio='''
        import pytest
        import trio
        from replay.testing import open_test_engine
        from shop import checkout

        pytestmark = pytest.mark.trio


        async def test_with_replay_clock(replay_engine, replay_clock):
            run = await replay_engine.start(checkout, "o-1")
            assert (await run.wait()).state == "suspended"
            assert trio.lowlevel.current_clock() is replay_clock


        async def test_with_autojump_clock(replay_engine, autojump_clock):
            run = await replay_engine.start(checkout, "o-1")
            assert (await run.wait()).state == "suspended"


        async def test_without_a_clock(replay_engine):
            pass


        @pytest.fixture
        async def started():
            async with open_test_engine([checkout]) as engine:
                yield await engine.start(checkout, "o-2", run_id="o-2")


        # pytest-trio takes the clock from the test's own arguments, never a fixture's.
        async def test_async_fixture_with_its_own_engine(started, replay_clock):
            assert (await started.wait()).waiting_for == "approval:v1"
    ''')
    result = pytester.runpytest("-p", "no:anyio")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "*RuntimeError: test_without_a_clock uses replay_engine, which needs trio's "
        "virtual clock, but runs under SystemClock; with pytest-trio, also request the "
        "replay_clock fixture *"])


@needs_pytest_trio
def test_next_to_pytest_trio_in_trio_mode(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(shop=SHOP, test_shop=USES_THE_ENGINE.replace(
        "(replay_engine)", "(replay_engine, replay_clock)"))
    pytester.runpytest("-p", "no:anyio").assert_outcomes(passed=1)


@needs_anyio
def test_next_to_anyio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(shop=SHOP, test_anyio='''
        import pytest
        from shop import checkout

        pytestmark = pytest.mark.anyio


        @pytest.fixture
        def anyio_backend(replay_clock):
            return ("trio", {"clock": replay_clock})


        async def test_engine(replay_engine, replay_clock):
            run = await replay_engine.start(checkout, "o-1")
            assert (await run.wait()).state == "suspended"
    ''')
    pytester.runpytest("-p", "no:trio").assert_outcomes(passed=1)


@needs_anyio
def test_next_to_anyio_with_its_default_backends(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_anyio='''
        import pytest

        pytestmark = pytest.mark.anyio


        async def test_engine(replay_engine):
            pass
    ''')
    result = pytester.runpytest("-p", "no:trio")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "E *RuntimeError: test_engine[[]asyncio[]] uses replay_engine but does not run "
        "under trio; with anyio, use the trio backend: anyio_backend = 'trio'",
        "E *RuntimeError: test_engine[[]trio[]] uses replay_engine, which needs trio's "
        "virtual clock, but runs under SystemClock; *"], consecutive=False)
