"""While engines are open, the collector runs less often and threads take turns sooner.

Both are process-wide interpreter settings (the cyclic collector's first threshold,
the GIL's switch interval); the last engine to close puts back what it found, and a
value the process chose, better than replay's or changed while an engine is open, is
kept.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

import replay
from replay import Step
from replay._engine._tuning import SWITCH_INTERVAL, THRESHOLD


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


async def test_the_first_threshold_is_raised_while_engines_are_open(tmp_path: Path) -> None:
    async with replay.open_engine(tmp_path / "a.duckdb", workflows=[flow]) as first:
        assert gc.get_threshold() == (THRESHOLD, 10, 10)
        async with replay.open_engine(tmp_path / "b.duckdb", workflows=[flow]) as second:
            assert await (await second.start(flow, 2)).result() == 4
        assert gc.get_threshold() == (THRESHOLD, 10, 10)  # the first is still open
        assert await (await first.start(flow, 3)).result() == 6
    assert gc.get_threshold() == (700, 10, 10)


async def test_a_threshold_set_by_the_process_is_left_alone(tmp_path: Path) -> None:
    gc.set_threshold(2 * THRESHOLD, 5, 5)
    async with replay.open_engine(tmp_path / "a.duckdb", workflows=[flow]):
        assert gc.get_threshold() == (2 * THRESHOLD, 5, 5)
    assert gc.get_threshold() == (2 * THRESHOLD, 5, 5)
    gc.set_threshold(700, 10, 10)
    async with replay.open_engine(tmp_path / "a.duckdb", workflows=[flow]):
        gc.set_threshold(1234, 10, 10)  # changed while the engine is open: kept
    assert gc.get_threshold() == (1234, 10, 10)


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

