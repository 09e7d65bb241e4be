"""The run machine, driven by hand with literal histories: no engine, no trio, no files.

Each test writes a history as the engine would have recorded it (`Run` makes the
records), builds a `RunMachine` over it, feeds it times and outcomes as the driver
would (`start`, `attempt_ended`, `wake`, `deliver`), and checks the exact decisions
and the records they carry. Everything the engine used to decide about a workflow
(retries, back-offs, interruptions, sleeps, suspends, resume) is decided here.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from replay import (
    Retry,
    SignalRejected,
    Sleep,
    Step,
    StepFailed,
    Suspend,
    SuspendTimeout,
)
from replay._codec import CODEC
from replay._core._decisions import (
    Action,
    Attempt,
    Ended,
    Outcome,
    Policy,
    WaitForSignal,
    WaitUntil,
)
from replay._core._history import RunHistory
from replay._core._machine import RunMachine
from replay._core._records import Encoded, ErrorText, Record, Run
from replay._core._resume import resumed_record
from replay._core._signals import MAX_UNDELIVERED_SIGNALS, check_signal, misdirected_signal
from replay._core._state import RunStatus, fold, status_of
from replay._errors import EncodingError, error_types_of
from replay._types import RunInfo, RunState

Workflow = Generator[Any, Any, Any]

RUN = Run("r1", "wf")
T0 = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
POLICY = Policy(default_retry=Retry(attempts=1), max_interruptions=3)
# Delays of 1, 2, 4 ... seconds, exactly (no jitter), so deadlines can be written down.
THREE = Retry(attempts=3, initial=1.0, backoff=2.0, jitter=0.0)


def fetch(n: int) -> int:
    return n


def other(n: int) -> int:
    return n


FETCH = f"{__name__}.fetch"
OTHER = f"{__name__}.other"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def enc(value: object, key: str = "value") -> Encoded:
    return Encoded(CODEC.encode(value, key=key), CODEC.to_json(value))


def error_text(error: BaseException) -> ErrorText:
    return ErrorText(f"{type(error).__module__}.{type(error).__qualname__}",
                     error_types_of(error), str(error))


def started(*arguments: object) -> Record:
    return RUN.started(enc(list(arguments), "input"))


def done(key: str, value: object, attempt: int = 1, name: str = FETCH) -> Record:
    return RUN.step_completed(key, attempt, name, enc(value, key), 1.0, None)


def machine(function: Callable[..., Any], *records: Record, arguments: tuple[Any, ...] = (),
            policy: Policy = POLICY, state: RunState = RunState.RUNNING, mark: bool = False,
            frontier: str | None = None, history: RunHistory | None = None) -> RunMachine:
    """A machine over `records` (a run/started record is added first)."""
    if history is None:
        history = RunHistory([started(*arguments), *records])
    return RunMachine(RUN, function, CODEC.encode(list(arguments), key="input"), history, CODEC,
                      policy, state=state, mark_first_attempt=mark, frontier=frontier)


def ok(value: object, duration_ms: float = 5.0) -> Outcome:
    return Outcome(True, value, duration_ms)


def raised(error: BaseException, duration_ms: float = 5.0) -> Outcome:
    return Outcome(False, error, duration_ms)


def shape(records: tuple[Record, ...]) -> list[tuple[str, str, str | None, int | None,
                                                         str | None]]:
    """The (kind, event, key, attempt, run_state) of each record."""
    return [(r.kind, r.event, r.key, r.attempt, r.run_state) for r in records]


def ended(action: Action) -> Ended:
    assert isinstance(action, Ended), action
    return action


def attempt(action: Action) -> Attempt:
    assert isinstance(action, Attempt), action
    return action


def wait_until(action: Action) -> WaitUntil:
    assert isinstance(action, WaitUntil), action
    return action


def wait_for_signal(action: Action) -> WaitForSignal:
    assert isinstance(action, WaitForSignal), action
    return action


def decoded(record: Record) -> Any:
    assert record.value is not None
    return CODEC.decode(record.value)


def completed_with(action: Action, output: object) -> None:
    """The run completed with `output`: one run/completed record, value encoded."""
    last = ended(action).records[-1]
    assert last == RUN.completed(enc(output, "output"))
    assert last.run_state == "completed"


def failed_with(action: Action, error_type: str, message: str | None = None) -> Record:
    """The run failed with `error_type`: its last record is run/failed."""
    last = ended(action).records[-1]
    assert (last.kind, last.event, last.run_state, last.error_type) == (
        "run", "failed", "failed", error_type)
    if message is not None:
        assert decoded(last) == message
    return last


# -- workflows --


def two_steps() -> Workflow:
    a = yield Step("a", fetch, 1)
    b = yield Step("b", fetch, 2)
    return [a, b]


def one_step(retry: Retry | None = None) -> Callable[[], Workflow]:
    def flow() -> Workflow:
        return (yield Step("a", fetch, 1, retry=retry))
    return flow


def catches_a() -> Workflow:
    try:
        yield Step("a", fetch, 1, retry=THREE)
    except StepFailed as failure:
        return (yield Step("compensate", fetch, failure.attempts))
    return "unreachable"


def naps() -> Workflow:
    yield Sleep("nap", 60)
    return "rested"


def waits(timeout: float | None = 60) -> Callable[[], Workflow]:
    def flow() -> Workflow:
        try:
            answer = yield Suspend("approval", status="waiting for a manager",
                                   timeout=timeout)
        except SuspendTimeout:
            return "timed out"
        return {"approved": answer}
    return flow


# -- recorded keys: answered from the history, no decision --


@pytest.mark.parametrize("attempt_number", [1, 3])
def test_a_steps_first_outcome_folds_as_it_does_after_other_records(
    attempt_number: int
) -> None:
    # A step's outcome that is its key's first record takes a short way in the fold; it
    # must give what the general way gives (here, after the attempt's start mark).
    value = Encoded(CODEC.encode(5), "5")
    completed = RUN.step_completed("k", attempt_number, "fetch", value, 1.0, None)
    started = RUN.step_started("k", attempt_number, "fetch", None)
    short, general = RunHistory([completed]), RunHistory([started, completed])
    assert vars_of(short.keys["k"]) == vars_of(general.keys["k"])
    assert (short.last_key(), short.unhandled_failure()) == ("k", None)
    assert (general.last_key(), general.unhandled_failure()) == ("k", None)


def vars_of(entry: Any) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in type(entry).__annotations__}


def test_recorded_steps_are_answered_with_no_decision() -> None:
    run = machine(two_steps, done("a", 10))
    first = attempt(run.start(T0))
    assert first == Attempt((), (), step=Step("b", fetch, 2), number=1, start=None)
    completed_with(run.attempt_ended(first, ok(20), T0), [10, 20])


def test_a_fully_recorded_run_ends_with_no_attempt() -> None:
    action = machine(two_steps, done("a", 10), done("b", 20)).start(T0)
    assert shape(ended(action).records) == [("run", "completed", None, None, "completed")]
    completed_with(action, [10, 20])


def test_a_recorded_failure_is_thrown_in_as_step_failed() -> None:
    failure = RUN.step_failed("a", 3, FETCH, error_text(ValueError("bad input")), 2.0, None)
    run = machine(catches_a, failure)
    compensate = attempt(run.start(T0))
    assert compensate.records == ()
    assert compensate.step == Step("compensate", fetch, 3)  # StepFailed.attempts is 3
    completed_with(run.attempt_ended(compensate, ok("undone"), T0), "undone")


def test_a_duplicate_key_fails_the_run() -> None:
    def twice() -> Workflow:
        yield Step("a", fetch, 1)
        yield Step("a", fetch, 2)

    action = machine(twice, done("a", 1)).start(T0)
    assert shape(ended(action).records) == [("run", "failed", None, None, "failed")]
    record = failed_with(action, "replay.DuplicateKeyError",
                         "workflow 'wf' yielded key 'a' twice in one execution of run 'r1'; "
                         "a key may be yielded once per execution: make it unique, e.g. "
                         "f\"a:{i}\" for the i-th item")
    assert record.error is not None and 'yield Step("a", fetch, 2)' in record.error


def test_a_key_recorded_as_another_kind_is_nondeterminism() -> None:
    def sleeps_instead() -> Workflow:
        yield Sleep("a", 5)

    action = machine(sleeps_instead, done("a", 1)).start(T0)
    record = failed_with(action, "replay.NondeterminismError")
    assert "recorded key 'a' as a step but the workflow now yields Sleep('a'" in decoded(record)
    assert record.error is not None and "yield Sleep(\"a\", 5)" in record.error


def test_strict_replay_fails_a_run_that_took_another_path() -> None:
    def new_path() -> Workflow:
        yield Step("a", fetch, 1)
        yield Step("detour", fetch, 2)
        yield Step("b", fetch, 3)

    action = machine(new_path, done("a", 1), frontier="b").start(T0)
    record = failed_with(action, "replay.NondeterminismError")
    assert "before reaching 'b', where its last execution stopped" in decoded(record)


# -- attempts --


def test_a_new_step_is_attempt_one() -> None:
    run = machine(one_step())
    assert run.start(T0) == Attempt((), (), step=Step("a", fetch, 1), number=1, start=None)
    assert not run.waits_for_signal


def test_the_first_attempt_since_the_open_is_marked_once() -> None:
    run = machine(two_steps, mark=True)
    first = attempt(run.start(T0))
    assert first.records == ()
    assert first.start == RUN.step_started("a", 1, FETCH, None)
    second = attempt(run.attempt_ended(first, ok(1), T0))
    assert second.start is None
    assert shape(second.records) == [("step", "completed", "a", 1, None)]


def test_a_marked_first_attempt_of_a_sleeping_run_marks_it_running() -> None:
    retrying = RUN.step_retrying("a", 1, FETCH, error_text(ValueError("x")), 1.0, at(1))
    run = machine(one_step(THREE), retrying, state=RunState.SLEEPING, mark=True)
    first = attempt(run.start(at(5)))
    assert first.number == 2
    assert first.start == RUN.step_started("a", 2, FETCH, RunState.RUNNING)
    # Already marked running by the start record: the outcome leaves the state alone.
    action = run.attempt_ended(first, ok(7), at(5))
    assert shape(ended(action).records) == [("step", "completed", "a", 2, None),
                                            ("run", "completed", None, None, "completed")]


def test_a_step_that_completes_sends_its_value_back() -> None:
    run = machine(two_steps)
    first = attempt(run.start(T0))
    second = attempt(run.attempt_ended(first, ok(10, duration_ms=3.5), T0))
    assert second.records == (RUN.step_completed("a", 1, FETCH, enc(10), 3.5, None),)
    assert second.step == Step("b", fetch, 2)
    action = run.attempt_ended(second, ok(20), T0)
    assert shape(ended(action).records) == [("step", "completed", "b", 1, None),
                                            ("run", "completed", None, None, "completed")]
    completed_with(action, [10, 20])


# -- retries --


def test_a_failed_attempt_waits_out_its_back_off_then_retries() -> None:
    run = machine(one_step(THREE))
    first = attempt(run.start(T0))
    error = ValueError("flaky")
    backoff = wait_until(run.attempt_ended(first, raised(error, 4.0), T0))
    assert backoff == WaitUntil(
        (RUN.step_retrying("a", 1, FETCH, error_text(error), 4.0, at(1)),), (),
        key="a", at=at(1))
    (retrying,) = backoff.records
    assert (retrying.run_state, retrying.wake_at) == ("sleeping", at(1))
    assert retrying.error_types[:2] == ("builtins.ValueError", "builtins.Exception")
    # Woken early (the driver decides again right after committing): still waiting.
    assert run.wake(at(0.5)) == WaitUntil((), (), key="a", at=at(1))
    second = attempt(run.wake(at(1)))
    assert (second.number, second.records, second.start) == (2, (), None)
    action = run.attempt_ended(second, ok(42), at(1))
    # The run slept: its next record marks it running again.
    assert shape(ended(action).records) == [("step", "completed", "a", 2, "running"),
                                            ("run", "completed", None, None, "completed")]
    completed_with(action, 42)


def test_back_offs_grow_and_the_spent_budget_fails_the_run() -> None:
    run = machine(one_step(THREE))
    first = attempt(run.start(T0))
    assert wait_until(run.attempt_ended(first, raised(ValueError("1")), T0)).at == at(1)
    second = attempt(run.wake(at(1)))
    assert wait_until(run.attempt_ended(second, raised(ValueError("2")), at(1))).at == at(3)
    third = attempt(run.wake(at(3)))
    assert third.number == 3
    action = run.attempt_ended(third, raised(ValueError("3"), 6.0), at(3))
    failed, last = ended(action).records
    assert failed == RUN.step_failed("a", 3, FETCH, error_text(ValueError("3")), 6.0,
                                     RunState.RUNNING)
    assert last.error_type == "replay.StepFailed"
    failed_with(action, "replay.StepFailed",
                "step 'a' of run 'r1' failed after 3 attempts: builtins.ValueError: 3")
    assert last.error is not None and "builtins.ValueError: 3" in last.error


def test_a_workflow_may_catch_the_spent_budget_and_go_on() -> None:
    run = machine(catches_a)
    first = attempt(run.start(T0))
    backoff = wait_until(run.attempt_ended(first, raised(OSError()), T0))
    second = attempt(run.wake(backoff.at))
    backoff = wait_until(run.attempt_ended(second, raised(OSError()), backoff.at))
    last_try = attempt(run.wake(backoff.at))
    assert last_try.number == 3
    compensate = attempt(run.attempt_ended(last_try, raised(OSError("down")), at(10)))
    assert compensate.step == Step("compensate", fetch, 3)
    assert shape(compensate.records) == [("step", "failed", "a", 3, "running")]
    assert compensate.records[0].error_type == "builtins.OSError"
    completed_with(run.attempt_ended(compensate, ok("undone"), at(10)), "undone")


def test_give_up_on_fails_the_step_at_once() -> None:
    retry = Retry(attempts=5, give_up_on=KeyError)
    run = machine(one_step(retry))
    first = attempt(run.start(T0))
    action = run.attempt_ended(first, raised(KeyError("gone")), T0)
    assert shape(ended(action).records) == [("step", "failed", "a", 1, None),
                                            ("run", "failed", None, None, "failed")]
    assert ended(action).records[0].error_type == "builtins.KeyError"


def test_an_error_not_in_retry_on_fails_the_step_at_once() -> None:
    retry = Retry(attempts=5, retry_on=ValueError)
    run = machine(one_step(retry))
    first = attempt(run.start(T0))
    action = run.attempt_ended(first, raised(TypeError("wrong")), T0)
    assert shape(ended(action).records)[0] == ("step", "failed", "a", 1, None)
    failed_with(action, "replay.StepFailed",
                "step 'a' of run 'r1' failed after 1 attempt: builtins.TypeError: wrong")


def test_the_default_retry_applies_to_a_step_without_one() -> None:
    policy = Policy(default_retry=Retry(attempts=2, initial=10, jitter=0), max_interruptions=3)
    run = machine(one_step(), policy=policy)
    first = attempt(run.start(T0))
    assert wait_until(run.attempt_ended(first, raised(ValueError()), T0)).at == at(10)


def test_an_unencodable_return_value_fails_the_step_without_retry() -> None:
    run = machine(one_step(THREE))
    first = attempt(run.start(T0))
    action = run.attempt_ended(first, ok(object()), T0)
    step_failed, _ = ended(action).records
    assert (step_failed.kind, step_failed.event, step_failed.attempt) == ("step", "failed", 1)
    assert step_failed.error_type == "replay.EncodingError"
    failed_with(action, "replay.StepFailed")


def test_a_back_off_pending_in_the_history_is_waited_out_at_start() -> None:
    retrying = RUN.step_retrying("a", 1, FETCH, error_text(ValueError("x")), 1.0, at(5))
    assert machine(one_step(THREE), retrying).start(T0) == WaitUntil((), (), key="a", at=at(5))
    after = machine(one_step(THREE), retrying).start(at(6))
    assert attempt(after).number == 2 and after.records == ()


def test_a_retried_step_keeps_counting_its_budget_from_the_history() -> None:
    retrying = [RUN.step_retrying("a", n, FETCH, error_text(ValueError("x")), 1.0, at(n))
                for n in (1, 2)]
    run = machine(one_step(THREE), *retrying)
    third = attempt(run.start(at(9)))
    assert third.number == 3
    action = run.attempt_ended(third, raised(ValueError("x")), at(9))
    assert shape(ended(action).records)[0] == ("step", "failed", "a", 3, None)


# -- interrupted and abandoned attempts --


def test_an_interrupted_attempt_is_recorded_and_made_again() -> None:
    run = machine(one_step(), RUN.step_started("a", 1, FETCH, None))
    action = attempt(run.start(T0))
    assert action.number == 2
    assert action.records == (RUN.step_interrupted("a", 1, FETCH, 1, 3, "replay.StepInterrupted"),)
    (interrupted,) = action.records
    assert interrupted.error == "the process died while attempt 1 ran (interruption 1 of at most 3)"
    assert interrupted.run_state is None


def test_an_interrupted_first_attempt_is_marked_again() -> None:
    run = machine(one_step(), RUN.step_started("a", 1, FETCH, None), mark=True)
    action = attempt(run.start(T0))
    assert shape(action.records) == [("step", "interrupted", "a", 1, None)]
    assert action.start == RUN.step_started("a", 2, FETCH, None)


def test_interruptions_do_not_charge_the_retry_budget() -> None:
    history = [RUN.step_started("a", 1, FETCH, None),
               RUN.step_interrupted("a", 1, FETCH, 1, 3, "replay.StepInterrupted"),
               RUN.step_started("a", 2, FETCH, None)]
    run = machine(one_step(Retry(attempts=2, initial=1, jitter=0)), *history)
    third = attempt(run.start(T0))
    assert third.number == 3
    assert wait_until(run.attempt_ended(third, raised(ValueError()), T0)).at == at(1)


def test_the_last_allowed_interruption_fails_the_step() -> None:
    history = []
    for number in (1, 2):
        history += [RUN.step_started("a", number, FETCH, None),
                    RUN.step_interrupted("a", number, FETCH, number, 3,
                                         "replay.StepInterrupted")]
    history.append(RUN.step_started("a", 3, FETCH, None))
    action = machine(one_step(THREE), *history).start(T0)
    step_failed, run_failed = ended(action).records
    assert (step_failed.kind, step_failed.event, step_failed.attempt,
            step_failed.error_type) == ("step", "failed", 3, "replay.StepInterrupted")
    assert step_failed.error is not None and "died 3 times (max_interruptions=3)" in \
        step_failed.error
    assert step_failed.duration_ms is None
    failed_with(action, "replay.StepFailed")
    assert "replay.StepInterrupted" in decoded(run_failed)


def test_max_interruptions_one_fails_at_the_first_interruption() -> None:
    policy = Policy(default_retry=Retry(attempts=1), max_interruptions=1)

    def handles() -> Workflow:
        try:
            yield Step("a", fetch, 1)
        except StepFailed as failure:
            return failure.error_type
        return None

    action = machine(handles, RUN.step_started("a", 1, FETCH, None), policy=policy).start(T0)
    assert shape(ended(action).records) == [("step", "failed", "a", 1, None),
                                            ("run", "completed", None, None, "completed")]
    completed_with(action, "replay.StepInterrupted")


def test_resume_gives_an_interrupted_step_fresh_budgets() -> None:
    records = [started()]
    for number in (1, 2, 3):
        records.append(RUN.step_started("a", number, FETCH, None))
        if number < 3:
            records.append(RUN.step_interrupted("a", number, FETCH, number, 3,
                                                "replay.StepInterrupted"))
    first = machine(one_step(), history=RunHistory(records))
    records += ended(first.start(T0)).records
    status = fold(records)
    assert status is not None and status.error_type == "replay.StepFailed"
    resumed = resumed_record(RUN, status, RunHistory(records), CODEC)
    assert (resumed.kind, resumed.event, resumed.name, resumed.run_state) == (
        "run", "resumed", "a", "running")
    assert decoded(resumed) == {"retried_step": "a"}
    records.append(resumed)
    # A process death in the fourth attempt is the first of the new budget.
    records.append(RUN.step_started("a", 4, FETCH, None))
    again = attempt(machine(one_step(), history=RunHistory(records)).start(T0))
    assert again.number == 5
    assert again.records == (RUN.step_interrupted("a", 4, FETCH, 1, 3, "replay.StepInterrupted"),)


def test_an_abandoned_attempt_is_recorded_and_charges_nothing() -> None:
    run = machine(one_step(Retry(attempts=2, initial=1, jitter=0)), mark=True)
    first = attempt(run.start(T0))
    abandoned = run.attempt_abandoned(first)
    assert abandoned == RUN.step_abandoned("a", 1, FETCH)
    assert (abandoned.run_state, abandoned.attempt) == (None, 1)
    # The next execution makes attempt 2, unmarked as interrupted, with its budget whole.
    assert first.start is not None
    again = machine(one_step(Retry(attempts=2, initial=1, jitter=0)), first.start, abandoned)
    second = attempt(again.start(T0))
    assert (second.number, second.records) == (2, ())
    assert wait_until(again.attempt_ended(second, raised(ValueError()), T0)).at == at(1)


# -- sleeps --


def test_a_new_sleep_is_scheduled_then_fires_when_due() -> None:
    run = machine(naps)
    action = run.start(T0)
    assert action == WaitUntil((RUN.sleep_scheduled("nap", at(60)),), (), key="nap", at=at(60))
    assert (action.records[0].run_state, action.records[0].wake_at) == ("sleeping", at(60))
    assert run.wake(at(59)) == WaitUntil((), (), key="nap", at=at(60))
    woken = run.wake(at(60))
    assert ended(woken).records[0] == RUN.sleep_fired("nap", at(60))
    assert shape(ended(woken).records) == [("sleep", "fired", "nap", None, "running"),
                                           ("run", "completed", None, None, "completed")]
    completed_with(woken, "rested")


def test_a_sleep_until_a_moment_waits_for_that_moment() -> None:
    def until() -> Workflow:
        yield Sleep("nap", until=at(3600))

    action = wait_until(machine(until).start(T0))
    assert (action.at, action.records[0].wake_at) == (at(3600), at(3600))


def test_a_sleep_of_zero_is_scheduled_and_fired_at_once() -> None:
    def blink() -> Workflow:
        yield Sleep("blink", 0)
        return (yield Step("a", fetch, 1))

    action = attempt(machine(blink).start(T0))
    assert shape(action.records) == [("sleep", "scheduled", "blink", None, "sleeping"),
                                     ("sleep", "fired", "blink", None, "running")]


def test_a_recorded_sleep_past_due_fires_at_start() -> None:
    action = machine(naps, RUN.sleep_scheduled("nap", at(60))).start(at(600))
    assert shape(ended(action).records) == [("sleep", "fired", "nap", None, "running"),
                                            ("run", "completed", None, None, "completed")]
    assert ended(action).records[0].wake_at == at(60)  # the recorded deadline


def test_a_recorded_sleep_not_yet_due_waits_for_its_recorded_deadline() -> None:
    action = machine(naps, RUN.sleep_scheduled("nap", at(60))).start(at(30))
    assert action == WaitUntil((), (), key="nap", at=at(60))


def test_a_fired_sleep_replays_with_no_record() -> None:
    history = [RUN.sleep_scheduled("nap", at(60)), RUN.sleep_fired("nap", at(60))]
    action = machine(naps, *history).start(at(30))
    assert shape(ended(action).records) == [("run", "completed", None, None, "completed")]


# -- suspends --


def test_a_new_suspend_is_recorded_on_wake_then_settles() -> None:
    run = machine(waits())
    first = run.start(T0)
    assert first == WaitForSignal((), (), key="approval", deadline=None, settled=False)
    assert run.waits_for_signal
    recorded = run.wake(T0)
    assert recorded == WaitForSignal(
        (RUN.suspended("approval", at(60), "waiting for a manager"),), (),
        key="approval", deadline=at(60), settled=False)
    (suspended,) = recorded.records
    assert (suspended.run_state, suspended.wake_at, suspended.status_text) == (
        "suspended", at(60), "waiting for a manager")
    assert run.wake(at(1)) == WaitForSignal((), (), key="approval", deadline=at(60),
                                            settled=True)
    assert run.waits_for_signal


def test_a_suspend_without_timeout_has_no_deadline() -> None:
    run = machine(waits(timeout=None))
    run.start(T0)
    assert wait_for_signal(run.wake(T0)).deadline is None
    assert run.wake(at(10**6)) == WaitForSignal((), (), key="approval", deadline=None,
                                                settled=True)


def test_a_signal_delivered_while_waiting_answers_the_next_wake() -> None:
    run = machine(waits())
    run.start(T0)
    run.wake(T0)
    run.wake(T0)
    run.deliver(RUN.signalled("approval", enc("yes", "approval"), RunState.RUNNING))
    action = run.wake(at(5))
    # The suspend is recorded already: no record of the signal being taken.
    assert shape(ended(action).records) == [("run", "completed", None, None, "completed")]
    completed_with(action, {"approved": "yes"})
    assert not run.waits_for_signal


def test_a_signal_delivered_before_the_first_wake_is_taken() -> None:
    run = machine(waits())
    run.start(T0)
    run.deliver(RUN.signalled("approval", enc(True, "approval"), None))
    action = run.wake(T0)
    assert ended(action).records[0] == RUN.signal_taken("approval", "waiting for a manager")
    completed_with(action, {"approved": True})


def test_an_early_signal_answers_the_suspend_and_is_recorded_as_taken() -> None:
    def waits_later() -> Workflow:
        first = yield Step("a", fetch, 1)
        answer = yield Suspend("approval", status="waiting")
        return [first, answer]

    run = machine(waits_later, RUN.signalled("approval", enc("early", "approval"), None))
    first = attempt(run.start(T0))
    action = run.attempt_ended(first, ok(1), T0)
    assert shape(ended(action).records) == [("step", "completed", "a", 1, None),
                                            ("suspend", "signalled", "approval", None, None),
                                            ("run", "completed", None, None, "completed")]
    assert ended(action).records[1] == RUN.signal_taken("approval", "waiting")
    completed_with(action, [1, "early"])


def test_a_taken_signal_replays_with_no_new_record() -> None:
    history = [RUN.signalled("approval", enc(False, "approval"), None),
               RUN.signal_taken("approval", "waiting for a manager")]
    action = machine(waits(), *history).start(T0)
    assert shape(ended(action).records) == [("run", "completed", None, None, "completed")]
    completed_with(action, {"approved": False})


def test_a_passed_deadline_times_the_suspend_out() -> None:
    run = machine(waits())
    run.start(T0)
    run.wake(T0)
    action = run.wake(at(60))
    timed_out, _ = ended(action).records
    assert timed_out == RUN.suspend_timed_out("approval", at(60), ErrorText(
        "replay.SuspendTimeout", (), str(SuspendTimeout("r1", "approval"))))
    assert (timed_out.run_state, timed_out.wake_at) == ("running", at(60))
    completed_with(action, "timed out")


def test_a_recorded_deadline_already_passed_times_out_on_the_first_wake() -> None:
    run = machine(waits(), RUN.suspended("approval", at(60), "waiting for a manager"))
    assert run.start(at(90)) == WaitForSignal((), (), key="approval", deadline=at(60),
                                              settled=False)
    action = run.wake(at(90))
    assert shape(ended(action).records)[0] == ("suspend", "timed_out", "approval", None,
                                               "running")
    completed_with(action, "timed out")


def test_an_uncaught_suspend_timeout_fails_the_run() -> None:
    def strict() -> Workflow:
        return (yield Suspend("approval", timeout=5))

    run = machine(strict, RUN.suspended("approval", at(5), None))
    run.start(at(9))
    failed_with(run.wake(at(9)), "replay.SuspendTimeout",
                "no signal for 'approval' of run 'r1' before its timeout")


def test_a_timed_out_key_ignores_a_later_signal() -> None:
    history = [RUN.suspended("approval", at(60), "waiting for a manager"),
               RUN.suspend_timed_out("approval", at(60), ErrorText(
                   "replay.SuspendTimeout", (), "no signal")),
               RUN.signalled("approval", enc("late", "approval"), None)]
    action = machine(waits(), *history).start(at(100))
    assert shape(ended(action).records) == [("run", "completed", None, None, "completed")]
    completed_with(action, "timed out")


def test_a_signal_for_a_step_key_never_answers_the_step() -> None:
    run = machine(one_step(), RUN.signalled("a", enc(99, "a"), None))
    action = attempt(run.start(T0))
    assert (action.number, action.records) == (1, ())


# -- resume --


def failed_run_history() -> list[Record]:
    """A run whose step `a` spent its three attempts and failed the run."""
    error = error_text(ValueError("x"))
    records = [started(),
               RUN.step_retrying("a", 1, FETCH, error, 1.0, at(1)),
               RUN.step_retrying("a", 2, FETCH, error, 1.0, at(3)),
               RUN.step_failed("a", 3, FETCH, error, 1.0, RunState.RUNNING)]
    action = machine(one_step(THREE), history=RunHistory(records)).start(at(5))
    return records + list(ended(action).records)


def test_resume_voids_the_unhandled_step_failure() -> None:
    records = failed_run_history()
    status = fold(records)
    assert status is not None and status.state is RunState.FAILED
    resumed = resumed_record(RUN, status, RunHistory(records), CODEC)
    assert resumed == RUN.resumed("a", enc({"retried_step": "a"}, "resumed"), RunState.RUNNING)
    assert resumed.run_state == "running"
    records.append(resumed)
    assert fold(records) == RunStatus(RunState.RUNNING)
    run = machine(one_step(THREE), history=RunHistory(records))
    fourth = attempt(run.start(at(10)))
    assert (fourth.number, fourth.records) == (4, ())  # numbering continues
    # The retry budget is whole again: attempt 4 fails into a back-off of one second.
    backoff = wait_until(run.attempt_ended(fourth, raised(ValueError("x")), at(10)))
    assert backoff.at == at(11)
    assert shape(backoff.records) == [("step", "retrying", "a", 4, "sleeping")]


def test_resume_of_a_parked_run_leaves_its_state() -> None:
    records = [started(), RUN.suspended("approval", None, "waiting")]
    status = fold(records)
    assert status is not None and status.state is RunState.SUSPENDED
    resumed = resumed_record(RUN, status, RunHistory(records), CODEC)
    assert (resumed.name, resumed.run_state) == (None, None)
    assert decoded(resumed) == {"retried_step": None}
    assert fold([*records, resumed]) == status


def test_resume_of_a_completed_run_runs_it_again_and_voids_nothing() -> None:
    records = [started(), done("a", 1), RUN.completed(enc(1, "output"))]
    status = fold(records)
    assert status is not None
    resumed = resumed_record(RUN, status, RunHistory(records), CODEC)
    assert (resumed.name, resumed.run_state) == (None, "running")
    history = RunHistory([*records, resumed])
    entry = history.get("a")
    assert entry is not None and entry.done


def test_resume_of_a_run_failed_by_its_own_exception_voids_nothing() -> None:
    def raises() -> Workflow:
        yield Step("a", fetch, 1)
        raise RuntimeError("bug")

    records = [started(), done("a", 1)]
    records += ended(machine(raises, history=RunHistory(records)).start(T0)).records
    status = fold(records)
    assert status is not None and status.error_type == "builtins.RuntimeError"
    resumed = resumed_record(RUN, status, RunHistory(records), CODEC)
    assert (resumed.name, resumed.run_state) == (None, "running")


def test_resume_does_not_void_a_failure_the_workflow_handled() -> None:
    def compensates_then_raises() -> Workflow:
        try:
            yield Step("a", fetch, 1)
        except StepFailed:
            yield Step("compensate", fetch, 2)
            raise

    error = error_text(ValueError("x"))
    records = [started(), RUN.step_failed("a", 1, FETCH, error, 1.0, None),
               done("compensate", 2)]
    run = machine(compensates_then_raises, history=RunHistory(records))
    records += ended(run.start(T0)).records
    status = fold(records)
    assert status is not None and status.error_type == "replay.StepFailed"
    resumed = resumed_record(RUN, status, RunHistory(records), CODEC)
    assert resumed.name is None
    # Replayed, the handled failure is thrown in again and the run fails the same way.
    again = machine(compensates_then_raises, history=RunHistory([*records, resumed]))
    failed_with(again.start(T0), "replay.StepFailed")


# -- renamed steps --


def test_a_renamed_step_is_recorded_and_warned_about_once() -> None:
    def renamed() -> Workflow:
        return (yield Step("a", other, 1))

    run = machine(renamed, done("a", 5, name=FETCH))
    action = ended(run.start(T0))
    rename, _ = action.records
    message = (f"run 'r1': step 'a' was recorded with name '{FETCH}' but now calls "
               f"'{OTHER}'; the recorded outcome is used. If the function was renamed or "
               f"moved, pass name='{FETCH}' to Step; if the step's meaning changed, bump its "
               "key so that it runs again")
    assert rename == RUN.step_renamed("a", FETCH, OTHER, enc(
        {"recorded": FETCH, "current": OTHER}, "a"), message)
    assert (rename.run_state, rename.name) == (None, OTHER)
    assert action.warnings == (message,)
    completed_with(action, 5)
    # The next execution, over the same memo or the reloaded records, says nothing.
    for history in (run.history, RunHistory([started(), done("a", 5), rename])):
        again = ended(machine(renamed, history=history).start(T0))
        assert again.warnings == ()
        assert shape(again.records) == [("run", "completed", None, None, "completed")]


def test_a_step_named_explicitly_after_its_recorded_name_is_no_rename() -> None:
    def pinned() -> Workflow:
        return (yield Step("a", other, 1, name=FETCH))

    action = ended(machine(pinned, done("a", 5)).start(T0))
    assert action.warnings == ()
    assert shape(action.records) == [("run", "completed", None, None, "completed")]


# -- the run's end --


def test_a_returning_workflow_completes_with_its_encoded_output() -> None:
    def returns(name: str, count: int) -> Workflow:
        if False:
            yield
        return {"name": name, "count": count}

    action = machine(returns, arguments=("x", 2)).start(T0)
    (record,) = ended(action).records
    assert record == RUN.completed(enc({"name": "x", "count": 2}, "output"))
    assert record.value_json == '{"name":"x","count":2}'
    assert ended(action).warnings == ()


def test_an_unencodable_output_fails_the_run() -> None:
    def returns_object() -> Workflow:
        if False:
            yield
        return object()

    (record,) = ended(machine(returns_object).start(T0)).records
    assert (record.kind, record.event, record.run_state, record.error_type) == (
        "run", "failed", "failed", "replay.EncodingError")
    assert "cannot encode value of 'output'" in decoded(record)


def test_a_raising_workflow_fails_the_run_with_its_traceback() -> None:
    def raises() -> Workflow:
        yield Step("a", fetch, 1)
        raise KeyError("missing")

    action = machine(raises, done("a", 1)).start(T0)
    record = failed_with(action, "builtins.KeyError", "'missing'")
    assert record.error is not None
    assert record.error.startswith("Traceback (most recent call last):")
    assert 'raise KeyError("missing")' in record.error
    assert record.error.endswith("KeyError: 'missing'\n")
    assert "_advance" not in record.error


def test_a_workflow_that_raises_before_its_first_yield_fails_the_run() -> None:
    def raises_at_once(n: int) -> Workflow:
        raise ValueError(f"bad {n}")
        yield

    failed_with(machine(raises_at_once, arguments=(3,)).start(T0), "builtins.ValueError",
                "bad 3")


def test_a_workflow_function_called_with_wrong_arguments_fails_the_run() -> None:
    def takes_one(n: int) -> Workflow:
        yield Step("a", fetch, n)

    failed_with(machine(takes_one, arguments=(1, 2)).start(T0), "builtins.TypeError")


def test_a_workflow_returning_no_generator_fails_the_run() -> None:
    def plain() -> int:
        return 3

    action = machine(plain).start(T0)
    record = failed_with(action, "builtins.TypeError",
                         "workflow 'wf' returned 3 (int) instead of a generator; a workflow "
                         "is a generator function that yields commands such as Step")
    assert record.error == f"builtins.TypeError: {decoded(record)}\n"


# -- engine failures --


def test_failed_internally_wraps_a_bug_in_replay_internal_error() -> None:
    run = machine(one_step())
    run.start(T0)
    action = run.failed_internally(RuntimeError("boom"))
    (record,) = action.records
    assert (record.kind, record.event, record.run_state, record.error_type) == (
        "run", "failed", "failed", "replay.ReplayInternalError")
    assert decoded(record) == (
        "run 'r1' hit an internal error: builtins.RuntimeError: boom; this is a bug in "
        "replay; please report it")
    assert record.error is not None and "RuntimeError: boom" in record.error


def test_failed_internally_keeps_an_encoding_error_as_itself() -> None:
    run = machine(one_step())
    run.start(T0)
    (record,) = run.failed_internally(EncodingError("damaged", key="a")).records
    assert record.error_type == "replay.EncodingError"
    assert decoded(record) == "damaged"


def test_close_closes_the_workflow() -> None:
    closed: list[str] = []

    def cleans_up() -> Workflow:
        try:
            yield Step("a", fetch, 1)
        finally:
            closed.append("finally")
            yield Step("ignored", fetch, 2)

    run = machine(cleans_up)
    attempt(run.start(T0))
    run.close()
    assert closed == ["finally"]


def test_the_machine_keeps_the_history_it_was_given_up_to_date() -> None:
    history = RunHistory([started()])
    run = machine(two_steps, history=history)
    first = attempt(run.start(T0))
    run.attempt_ended(first, ok(1), T0)
    assert run.history is history
    entry = history.get("a")
    assert entry is not None and entry.done and entry.attempts == 1


# -- signal admission (`_signals`) --


def test_check_signal_rejects_a_finished_run() -> None:
    for state in (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED):
        with pytest.raises(SignalRejected, match=f"run 'r1' is {state.value}; signals to "
                                                 "finished runs are rejected") as caught:
            check_signal("r1", state, RunHistory(), "approval", parked_here=False)
        assert (caught.value.run_id, caught.value.key) == ("r1", "approval")


def test_check_signal_rejects_a_key_recorded_as_another_kind() -> None:
    history = RunHistory([done("a", 1)])
    with pytest.raises(SignalRejected, match="recorded key 'a' as a step, not a Suspend"):
        check_signal("r1", RunState.RUNNING, history, "a", parked_here=False)


def test_check_signal_rejects_a_second_signal() -> None:
    history = RunHistory([RUN.signalled("approval", enc(1), None)])
    with pytest.raises(SignalRejected, match="key 'approval' of run 'r1' already has a signal"):
        check_signal("r1", RunState.RUNNING, history, "approval", parked_here=False)


def test_check_signal_rejects_a_timed_out_key() -> None:
    history = RunHistory([RUN.suspended("approval", at(1), None),
                          RUN.suspend_timed_out("approval", at(1), ErrorText("x", (), "y"))])
    with pytest.raises(SignalRejected, match="key 'approval' of run 'r1' timed out"):
        check_signal("r1", RunState.RUNNING, history, "approval", parked_here=False)


def test_check_signal_takes_a_signal_for_a_suspend_that_waits() -> None:
    history = RunHistory([RUN.suspended("approval", None, None)])
    check_signal("r1", RunState.SUSPENDED, history, "approval", parked_here=True)
    check_signal("r1", RunState.RUNNING, RunHistory(), "later", parked_here=False)


def test_check_signal_limits_the_undelivered_signals() -> None:
    history = RunHistory([RUN.signalled(f"k{n}", enc(n), None)
                          for n in range(MAX_UNDELIVERED_SIGNALS)])
    assert history.undelivered() == MAX_UNDELIVERED_SIGNALS
    with pytest.raises(SignalRejected, match="already holds 100 undelivered signals"):
        check_signal("r1", RunState.RUNNING, history, "one-more", parked_here=False)
    # The key the run is parked on is always taken.
    check_signal("r1", RunState.SUSPENDED, history, "one-more", parked_here=True)
    # A signal for a key the run has suspended on is no longer undelivered.
    history.apply(RUN.suspended("k0", None, None))
    check_signal("r1", RunState.RUNNING, history, "one-more", parked_here=False)


def test_misdirected_signal_warns_only_for_a_run_suspended_on_another_key() -> None:
    def info(state: RunState, waiting_for: str | None) -> RunInfo:
        return RunInfo(run_id="r1", workflow="wf", state=state, created_at=T0, updated_at=T0,
                       waiting_for=waiting_for, wake_at=None, status_text=None)

    warning = misdirected_signal(info(RunState.SUSPENDED, "approval"), "aproval")
    assert warning is not None and "Did you mean 'approval'?" in warning
    assert misdirected_signal(info(RunState.SUSPENDED, "approval"), "approval") is None
    assert misdirected_signal(info(RunState.SLEEPING, "nap"), "approval") is None


# -- the run-state fold (`_state`) --


def test_fold_of_records_that_carry_no_state_is_none() -> None:
    assert fold([]) is None
    assert fold([done("a", 1)]) is None


def test_fold_takes_the_newest_state_carrying_record() -> None:
    records = [started(), done("a", 1)]
    assert fold(records) == RunStatus(RunState.RUNNING)
    records.append(RUN.sleep_scheduled("nap", at(60)))
    assert fold(records) == RunStatus(RunState.SLEEPING, waiting_for="nap", wake_at=at(60))
    records.append(RUN.sleep_fired("nap", at(60)))
    assert fold(records) == RunStatus(RunState.RUNNING)
    records.append(RUN.suspended("approval", at(90), "waiting"))
    assert fold(records) == RunStatus(RunState.SUSPENDED, waiting_for="approval",
                                      wake_at=at(90), status_text="waiting")
    # A signal that does not wake the run (state None) changes nothing.
    records.append(RUN.signalled("other", enc(1), None))
    assert fold(records) == RunStatus(RunState.SUSPENDED, waiting_for="approval",
                                      wake_at=at(90), status_text="waiting")
    records.append(RUN.signalled("approval", enc(1), RunState.RUNNING))
    assert fold(records) == RunStatus(RunState.RUNNING)
    records.append(RUN.step_retrying("b", 1, FETCH, error_text(ValueError()), 1.0, at(100)))
    status = fold(records)
    assert status == RunStatus(RunState.SLEEPING, waiting_for="b", wake_at=at(100))
    assert status is not None and status.waiting and not status.finished


def test_fold_of_an_ended_run() -> None:
    output = RUN.completed(enc({"ok": True}, "output"))
    status = fold([started(), output])
    assert status == RunStatus(RunState.COMPLETED, output=output.value)
    assert status is not None and status.finished and not status.waiting
    failure = RUN.failed("builtins.KeyError", "Traceback ...", enc("'missing'", "error"))
    assert fold([started(), failure]) == RunStatus(
        RunState.FAILED, error="Traceback ...", error_type="builtins.KeyError",
        message=failure.value)


def test_status_after_a_record_with_no_state_is_unchanged() -> None:
    status = RunStatus(RunState.SUSPENDED, waiting_for="approval")
    assert status.after(RUN.signalled("other", enc(1), None)) is status
    assert status.after(RUN.signalled("approval", enc(1), RunState.RUNNING)) == RunStatus(
        RunState.RUNNING)


def test_status_of_a_record_with_no_state_or_an_unknown_one_is_an_error() -> None:
    with pytest.raises(ValueError, match="record step/completed carries no run state"):
        status_of(done("a", 1))
    strange = started()
    strange.run_state = "dancing"
    with pytest.raises(ValueError, match="dancing"):
        status_of(strange)
