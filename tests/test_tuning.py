"""While engines are open, the collector runs less often and threads take turns sooner.

Both are process-wide interpreter settings (the cyclic collector's first threshold,
the GIL's switch interval); the last engine to close puts back what it found, and a
value the process chose, better than replay's or changed while an engine is open, is
kept. The threshold adapts to what the collections cost and find: they are real
collections here, timed by a scripted clock.
"""

from __future__ import annotations

import gc
import itertools
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

import replay
from replay import Step
from replay._engine._tuning import (
    _COLLECTOR,
    COLLECTOR_SHARE,
    MOST_THRESHOLD,
    SWITCH_INTERVAL,
    THRESHOLD,
    _Collector,
    next_threshold,
)


def double(x: int) -> int:
    return 2 * x


@replay.workflow(name="collector.flow")
def flow(x: int) -> Generator[Any, Any, Any]:
    return (yield Step("double", double, x))


@pytest.fixture(autouse=True)
def thresholds() -> Iterator[tuple[int, ...]]:
    found = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    gc.set_threshold(*found)


@pytest.fixture(autouse=True)
def switch_interval() -> Iterator[None]:
    found = sys.getswitchinterval()
    sys.setswitchinterval(0.005)  # CPython's default
    yield
    sys.setswitchinterval(found)


def observing() -> bool:
    """Whether replay's observer of collections is installed."""
    return any(getattr(callback, "__self__", None) is _COLLECTOR for callback in gc.callbacks)


async def test_the_first_threshold_is_raised_while_engines_are_open(tmp_path: Path) -> None:
    assert not observing()
    async with replay.open_engine(tmp_path / "a.duckdb", workflows=[flow]) as first:
        assert gc.get_threshold() == (THRESHOLD, 10, 10)
        assert observing()  # and adapted to what collections find
        async with replay.open_engine(tmp_path / "b.duckdb", workflows=[flow]) as second:
            assert await (await second.start(flow, 2)).result() == 4
        assert gc.get_threshold() == (THRESHOLD, 10, 10)  # the first is still open
        assert await (await first.start(flow, 3)).result() == 6
    assert gc.get_threshold() == (700, 10, 10)
    assert not observing()


async def test_a_threshold_set_by_the_process_is_left_alone(tmp_path: Path) -> None:
    gc.set_threshold(2 * THRESHOLD, 5, 5)
    async with replay.open_engine(tmp_path / "a.duckdb", workflows=[flow]):
        assert gc.get_threshold() == (2 * THRESHOLD, 5, 5)
    assert gc.get_threshold() == (2 * THRESHOLD, 5, 5)
    gc.set_threshold(700, 10, 10)
    async with replay.open_engine(tmp_path / "a.duckdb", workflows=[flow]):
        gc.set_threshold(1234, 10, 10)  # changed while the engine is open: kept
    assert gc.get_threshold() == (1234, 10, 10)


class ScriptedClock:
    """Each collection seems to take `pause` seconds after `interval` seconds of work."""

    def __init__(self, interval: float, pause: float) -> None:
        self.now = 0.0
        self.steps = itertools.cycle([pause, interval])  # read first when a hold begins

    def __call__(self) -> float:
        self.now += next(self.steps)
        return self.now


def collect_young() -> None:
    gc.collect(0)


def test_the_threshold_doubles_while_young_collections_are_costly_and_find_no_garbage() -> None:
    gc.collect()  # nothing left over for the young collections below to find
    collector = _Collector(ScriptedClock(interval=1.0, pause=0.1))  # 10 % of the time
    with collector.held():
        assert gc.get_threshold()[0] == THRESHOLD
        collect_young()
        assert gc.get_threshold()[0] == 2 * THRESHOLD
        for _ in range(10):
            collect_young()
        assert gc.get_threshold()[0] == MOST_THRESHOLD
    assert gc.get_threshold() == (700, 10, 10)  # put back, adapted or not
    assert collector._observe not in gc.callbacks


def test_the_threshold_comes_back_down_once_collections_are_cheap() -> None:
    clock = ScriptedClock(interval=1.0, pause=0.1)
    collector = _Collector(clock)
    with collector.held():
        collect_young()
        collect_young()
        assert gc.get_threshold()[0] == 4 * THRESHOLD
        clock.steps = itertools.cycle([10.0, 0.001])  # 0.01 % of the time
        collect_young()
        assert gc.get_threshold()[0] == 2 * THRESHOLD
        collect_young()
        collect_young()
        assert gc.get_threshold()[0] == THRESHOLD  # never below


def test_the_threshold_falls_back_when_a_collection_finds_garbage() -> None:
    collector = _Collector(ScriptedClock(interval=1.0, pause=0.1))
    with collector.held():
        collect_young()
        assert gc.get_threshold()[0] == 2 * THRESHOLD
        for _ in range(THRESHOLD // 5):  # cyclic garbage: a fifth of the threshold
            cycle: list[Any] = []
            cycle.append(cycle)
        del cycle
        collect_young()
        assert gc.get_threshold()[0] == THRESHOLD


def test_a_threshold_changed_while_open_is_not_adapted() -> None:
    collector = _Collector(ScriptedClock(interval=1.0, pause=0.1))
    with collector.held():
        gc.set_threshold(5000, 10, 10)
        collect_young()
        assert gc.get_threshold()[0] == 5000
    assert gc.get_threshold()[0] == 5000


def test_a_higher_threshold_of_the_process_does_not_adapt() -> None:
    gc.set_threshold(2 * THRESHOLD, 10, 10)
    collector = _Collector(ScriptedClock(interval=1.0, pause=0.1))
    with collector.held():
        collect_young()
        assert gc.get_threshold()[0] == 2 * THRESHOLD
        assert collector._observe not in gc.callbacks


@pytest.mark.parametrize(("first", "collected", "pause", "interval", "wanted"), [
    (THRESHOLD, 0, 2 * COLLECTOR_SHARE, 1.0, 2 * THRESHOLD),  # costly, no garbage
    (MOST_THRESHOLD, 0, 1.0, 1.0, MOST_THRESHOLD),  # at most
    (4 * THRESHOLD, 0, COLLECTOR_SHARE / 8, 1.0, 2 * THRESHOLD),  # cheap
    (THRESHOLD, 0, 0.0, 1.0, THRESHOLD),  # at least
    (4 * THRESHOLD, 0, COLLECTOR_SHARE / 2, 1.0, 4 * THRESHOLD),  # in between: kept
    (4 * THRESHOLD, 4 * THRESHOLD // 10, 1.0, 1.0, THRESHOLD),  # garbage found
])
def test_next_threshold(first: int, collected: int, pause: float, interval: float,
                        wanted: int) -> None:
    assert next_threshold(first, collected, pause, interval) == wanted


async def test_the_collector_is_running_again_after_an_open(tmp_path: Path) -> None:
    async with replay.open_engine(tmp_path / "a.duckdb", workflows=[flow]) as engine:
        await (await engine.start(flow, 1)).result()
    async with replay.open_engine(tmp_path / "a.duckdb", workflows=[flow]):
        assert gc.isenabled()  # paused only while the open read and held the runs
    assert gc.isenabled()


async def test_threads_take_turns_sooner_while_engines_are_open(tmp_path: Path) -> None:
    async with replay.open_engine(tmp_path / "a.duckdb", workflows=[flow]) as first:
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        async with replay.open_engine(tmp_path / "b.duckdb", workflows=[flow]):
            pass
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)  # first still open
        assert await (await first.start(flow, 3)).result() == 6
    assert sys.getswitchinterval() == pytest.approx(0.005)


async def test_a_switch_interval_set_by_the_process_is_left_alone(tmp_path: Path) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL / 5)  # shorter than replay's: kept
    async with replay.open_engine(tmp_path / "a.duckdb", workflows=[flow]):
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL / 5)
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL / 5)
    sys.setswitchinterval(0.005)
    async with replay.open_engine(tmp_path / "a.duckdb", workflows=[flow]):
        sys.setswitchinterval(0.002)  # changed while the engine is open: kept
    assert sys.getswitchinterval() == pytest.approx(0.002)

