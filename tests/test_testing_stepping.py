"""Stepping a workflow by hand (issue 5, item 5): commands compare by value, no helper needed."""

from __future__ import annotations

import functools
from datetime import timedelta

import pytest
from test_testing_histories import (
    charge_card,
    checkout,
    notify_cool_off,
    release_stock,
    reserve_stock,
)

import replay
from replay import Retry, Sleep, Step, Suspend

CHARGE = Step("charge:v1", charge_card, "o-1", 4200,
              retry=Retry(attempts=5, initial=1.0, backoff=2.0), timeout=30)


def test_the_approved_path_step_by_step() -> None:
    gen = checkout("o-1", 4200)
    assert next(gen) == Step("reserve:v1", reserve_stock, "o-1")
    assert gen.send({"order": "o-1"}) == Sleep("cool-off:v1", timedelta(minutes=30))
    assert gen.send(None) == Suspend("approval:v1", status="waiting for a manager")
    assert gen.send(True) == CHARGE
    with pytest.raises(StopIteration) as done:
        gen.send("receipt-1")
    assert done.value.value == {"order": "o-1", "receipt": "receipt-1"}


def test_a_failed_charge_is_thrown_in_and_compensated() -> None:
    gen = checkout("o-1", 4200)
    reservation = {"order": "o-1"}
    next(gen)
    gen.send(reservation)
    gen.send(None)
    gen.send(True)
    failure = replay.StepFailed("run-1", "charge:v1", "builtins.ValueError", "declined", 5)
    assert gen.throw(failure) == Step("release:v1", release_stock, reservation)
    with pytest.raises(replay.StepFailed) as raised:
        gen.send(None)
    assert raised.value is failure


def test_every_part_of_a_command_takes_part_in_equality() -> None:
    policy = Retry(attempts=5, initial=1.0, backoff=2.0)
    assert Step("charge:v1", charge_card, "o-1", 4201, retry=policy, timeout=30) != CHARGE
    assert Step("charge:v1", charge_card, "o-1", 4200, timeout=30) != CHARGE
    assert Step("charge:v1", charge_card, "o-1", 4200, retry=policy, timeout=60) != CHARGE
    assert Step("charge:v2", charge_card, "o-1", 4200, retry=policy, timeout=30) != CHARGE
    assert Step("charge:v1", charge_card, "o-1", 4200, retry=policy, timeout=30) == CHARGE
    assert Step("k", functools.partial(reserve_stock, "o-1")) == Step("k", reserve_stock, "o-1")
    assert Step("k", notify_cool_off, "o-1") != Step("k", reserve_stock, "o-1")
    assert Sleep("s", 60) == Sleep("s", timedelta(minutes=1))
    assert Suspend("a", status="x") != Suspend("a")


def test_a_mismatch_shows_both_commands() -> None:
    with pytest.raises(AssertionError) as failed:
        assert next(checkout("o-1", 4200)) == Step("reserve:v1", reserve_stock, "o-2")
    assert "Step('reserve:v1', test_testing_histories.reserve_stock, 'o-1')" in str(failed.value)
    assert "Step('reserve:v1', test_testing_histories.reserve_stock, 'o-2')" in str(failed.value)
