"""The engine clock: exact microseconds, virtual time, a floor, and a wall clock that jumps.

The clock keeps its anchor in integer microseconds and turns readings into datetimes
through a float of seconds where that is exact (1970-2106), with `replay._epoch`,
which the store's rows use too; these tests hold it to plain datetime arithmetic, at
the edges of that range, across it and beyond it.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
import trio
import trio.testing

from replay._engine._clock import EngineClock, set_virtual_start
from replay._epoch import micros, moment
from replay._store._rows import epoch_us, from_epoch_us

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("us", [
    0, 1, 999_999, 1_796_000_000_123_457, 2**32 * 10**6 - 1, 2**32 * 10**6,
    -1, -62_135_596_800 * 10**6, 253_402_300_799_999_999,
])
def test_a_moment_and_its_microseconds_agree_with_datetime_arithmetic(us: int) -> None:
    assert moment(us) == EPOCH + timedelta(microseconds=us)
    assert micros(moment(us)) == us
    assert moment(us).tzinfo is UTC


def test_every_microsecond_of_the_float_range_comes_back_exactly() -> None:
    rng = random.Random(7)
    for _ in range(200_000):
        us = rng.randrange(0, 2**32 * 10**6)
        assert moment(us) == EPOCH + timedelta(microseconds=us), us


def test_the_stores_conversions_pass_none_and_stay_exact_past_the_float_range() -> None:
    assert epoch_us(None) is None and from_epoch_us(None) is None
    # Year 3000: beyond 2**53 microseconds a float of seconds would lose one.
    at = datetime(3000, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC)
    assert epoch_us(at) == (at - EPOCH) // timedelta(microseconds=1)
    assert from_epoch_us(epoch_us(at)) == at


def test_microseconds_of_a_moment_in_another_zone() -> None:
    plus_two = datetime(2026, 12, 7, 17, 0, 0, 1, tzinfo=timezone(timedelta(hours=2)))
    assert moment(micros(plus_two)) == plus_two


async def test_virtual_time_moves_the_clock_by_exact_microseconds(
        clock: trio.testing.MockClock) -> None:
    set_virtual_start(datetime(2031, 3, 4, 5, 6, 7, 891_011, tzinfo=UTC))
    engine_clock = EngineClock()
    began = engine_clock.now()
    assert began == datetime(2031, 3, 4, 5, 6, 7, 891_011, tzinfo=UTC)
    await trio.sleep(3600.000_001)
    assert engine_clock.now() - began == timedelta(hours=1, microseconds=1)
    later = began + timedelta(days=3, microseconds=5)
    await engine_clock.sleep_until(later)
    assert engine_clock.now() == later


async def test_the_clock_never_reads_below_its_floor(clock: trio.testing.MockClock) -> None:
    set_virtual_start(datetime(2030, 1, 1, tzinfo=UTC))
    floor = datetime(2030, 1, 2, 0, 0, 0, 7, tzinfo=UTC)
    assert EngineClock(floor).now() == floor
    # The anchor is shared: a clock made later in the run reads the same time.
    assert EngineClock().now() == floor
    assert EngineClock(datetime(2029, 1, 1, tzinfo=UTC)).now() == floor


def test_a_wall_clock_that_jumps_ahead_is_caught_up_at_once() -> None:
    async def jumped() -> tuple[datetime, datetime, datetime]:
        engine_clock = EngineClock()
        # As if the machine slept for a minute while trio's monotonic clock stood still.
        engine_clock._anchor.wall_us -= 60_000_000
        before = datetime.now(UTC)
        caught_up = engine_clock.now()
        return before, caught_up, engine_clock.now()

    before, caught_up, after = trio.run(jumped)
    assert before - timedelta(seconds=1) <= caught_up <= datetime.now(UTC)
    assert after >= caught_up


def test_a_small_lag_of_the_wall_clock_is_not_a_jump() -> None:
    async def lagging() -> timedelta:
        engine_clock = EngineClock()
        engine_clock._anchor.wall_us -= 500_000  # within the second it may drift
        return datetime.now(UTC) - engine_clock.now()

    lag = trio.run(lagging)
    assert timedelta(seconds=0.45) < lag < timedelta(seconds=0.55)
