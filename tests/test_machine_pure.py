"""The run machine makes the sync pure attempts that follow a pure one, in one go.

Driven by hand, as in `test_machine.py`: after a pure attempt nothing must be durable
before the next, so `attempt_ended` with a `compute` callback makes the sync pure
attempts that follow itself (up to `more`), and returns the first decision it cannot
make, carrying every record of the streak in order.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any

from replay import Retry, Step, StepFailed
from replay._codec import CODEC
from replay._core._decisions import Action, Attempt, Ended, Outcome, Policy
from replay._core._history import RunHistory
from replay._core._machine import RunMachine
from replay._core._records import Encoded, Run
from replay._types import RunState

Workflow = Generator[Any, Any, Any]
RUN = Run("r1", "wf")
T0 = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
POLICY = Policy(default_retry=Retry(attempts=1), max_interruptions=3)


def double(value: int) -> int:
    return value * 2


def effect(value: int) -> int:
    return value + 1


async def adouble(value: int) -> int:
    return value * 2


def three_pure_then_effect() -> Workflow:
    value = 1
    for i in range(3):
        value = yield Step(f"p{i}", double, value, pure=True)
    return (yield Step("effect", effect, value))


def machine(workflow: Any) -> RunMachine:
    history = RunHistory([RUN.started(Encoded(CODEC.encode([], key="input"), "[]"))])
    return RunMachine(RUN, workflow, CODEC.encode([], key="input"), history, CODEC, POLICY,
                      state=RunState.RUNNING, mark_first_attempt=False)


class Computer:
    """The engine's side: makes each attempt it is given, and notes which."""

    def __init__(self, fail: str | None = None) -> None:
        self.made: list[tuple[str, int]] = []
        self.fail = fail

    def __call__(self, step: Step, number: int) -> Outcome:
        self.made.append((step.key, number))
        if step.key == self.fail:
            return Outcome(False, ValueError(f"{step.key} broke"), 0.1)
        return Outcome(True, step.fn(*step.args), 0.1)


def first_attempt(run: RunMachine) -> Attempt:
    action = run.start(T0)
    assert isinstance(action, Attempt), action
    return action


def made(attempt: Attempt) -> Outcome:
    return Outcome(True, attempt.step.fn(*attempt.step.args), 0.1)


def events(action: Action) -> list[tuple[str | None, str]]:
    return [(record.key, record.event) for record in action.records]


def test_the_pure_attempts_that_follow_are_made_in_one_go() -> None:
    run, compute = machine(three_pure_then_effect), Computer()
    p0 = first_attempt(run)
    action = run.attempt_ended(p0, made(p0), T0, compute, 10)
    assert isinstance(action, Attempt) and action.step.key == "effect"
    assert action.step.args == (8,)
    assert compute.made == [("p1", 1), ("p2", 1)]
    assert events(action) == [("p0", "completed"), ("p1", "completed"), ("p2", "completed")]
    assert [CODEC.decode(record.value) for record in action.records] == [2, 4, 8]


def test_more_bounds_the_attempts_made_in_one_go() -> None:
    run, compute = machine(three_pure_then_effect), Computer()
    p0 = first_attempt(run)
    action = run.attempt_ended(p0, made(p0), T0, compute, 1)
    assert isinstance(action, Attempt) and action.step.key == "p2"
    assert compute.made == [("p1", 1)]
    assert events(action) == [("p0", "completed"), ("p1", "completed")]
    # The next call goes on from there, with nothing recorded twice.
    action = run.attempt_ended(action, made(action), T0, compute, 1)
    assert isinstance(action, Attempt) and action.step.key == "effect"
    assert events(action) == [("p2", "completed")]


def test_without_compute_each_attempt_is_the_engines() -> None:
    run = machine(three_pure_then_effect)
    p0 = first_attempt(run)
    action = run.attempt_ended(p0, made(p0), T0)
    assert isinstance(action, Attempt) and action.step.key == "p1"
    assert events(action) == [("p0", "completed")]


def test_only_after_a_pure_attempt_and_only_sync_pure_ones() -> None:
    def mixed() -> Workflow:
        value = yield Step("effect", effect, 1)
        value = yield Step("p0", double, value, pure=True)
        value = yield Step("a0", adouble, value, pure=True)
        return (yield Step("p1", double, value, pure=True))

    run, compute = machine(mixed), Computer()
    first = first_attempt(run)
    # After an ordinary attempt, its outcome must be durable before the next one.
    p0 = run.attempt_ended(first, made(first), T0, compute, 10)
    assert isinstance(p0, Attempt) and p0.step.key == "p0" and compute.made == []
    # An async pure step is awaited by the engine: the machine stops before it.
    a0 = run.attempt_ended(p0, made(p0), T0, compute, 10)
    assert isinstance(a0, Attempt) and a0.step.key == "a0" and compute.made == []


def test_a_pure_attempt_made_in_one_go_fails_as_any_other() -> None:
    def compensates() -> Workflow:
        value = yield Step("p0", double, 1, pure=True)
        try:
            value = yield Step("p1", double, value, pure=True)
        except StepFailed as failure:
            return failure.attempts
        return value

    run, compute = machine(compensates), Computer(fail="p1")
    p0 = first_attempt(run)
    action = run.attempt_ended(p0, made(p0), T0, compute, 10)
    assert isinstance(action, Ended)
    assert events(action) == [("p0", "completed"), ("p1", "failed"), (None, "completed")]
    assert CODEC.decode(action.records[-1].value) == 1
