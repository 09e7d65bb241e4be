"""replay.testing.run_workflow (issue 5, items 1 and 3): one call, virtual time, signals."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
import trio.testing

import replay
from replay import Retry, RunState, Sleep, Step, Suspend
from replay.testing import RunResult, run_workflow, run_workflow_async
from replay.testing._run_workflow import _key_in

ledger: list[str] = []


@pytest.fixture(autouse=True)
def _clear_ledger() -> None:
    ledger.clear()


class CardDeclined(Exception):
    """The bank said no."""


def reserve_stock(order_id: str) -> dict[str, Any]:
    ledger.append(f"reserve {order_id}")
    return {"order": order_id}


async def charge_card(order_id: str, cents: int) -> str:
    ledger.append(f"charge {order_id}")
    if cents > 100_000:
        raise CardDeclined(f"card declined for {cents} cents")
    return f"receipt-{order_id}"


def release_stock(reservation: dict[str, Any]) -> None:
    ledger.append(f"release {reservation['order']}")


CHARGE_RETRY = Retry(attempts=5, initial=1.0, backoff=2.0)


@replay.workflow(name="checkout")
def checkout(order_id: str, cents: int):  # type: ignore[no-untyped-def]
    reservation = yield Step("reserve:v1", reserve_stock, order_id)
    yield Sleep("cool-off:v1", timedelta(minutes=30))
    approved = yield Suspend("approval:v1", status="waiting for a manager")
    if not approved:
        return {"order": order_id, "state": "rejected"}
    try:
        receipt = yield Step("charge:v1", charge_card, order_id, cents, retry=CHARGE_RETRY,
                             timeout=30)
    except replay.StepFailed:
        yield Step("release:v1", release_stock, reservation)  # compensation
        raise
    return {"order": order_id, "receipt": receipt}


# -- the SPEC §2 example --


def test_spec_example_completes_after_the_cool_off_and_the_approval() -> None:
    result = run_workflow(checkout, "o-1", 4200, signals={"approval:v1": True})
    assert result.state is RunState.COMPLETED
    assert result.output == {"order": "o-1", "receipt": "receipt-o-1"}
    assert result.error is None
    assert result.executions == {"reserve:v1": 1, "charge:v1": 1}
    assert result.signalled == ("approval:v1",)
    assert result.elapsed == timedelta(minutes=30)
    assert ledger == ["reserve o-1", "charge o-1"]


def test_spec_example_rejected_by_the_manager() -> None:
    result = run_workflow(checkout, "o-2", 4200, signals={"approval:v1": False})
    assert result.output == {"order": "o-2", "state": "rejected"}
    assert result.executions == {"reserve:v1": 1}


def test_spec_example_failing_charge_is_retried_then_compensated() -> None:
    result = run_workflow(checkout, "o-3", 250_000, signals={"approval:v1": True})
    assert result.state is RunState.FAILED and result.output is None
    assert isinstance(result.error, replay.WorkflowFailed)
    assert result.error.error_type == "replay.StepFailed"
    assert result.error.message == (
        "step 'charge:v1' of run 'test-run' failed after 5 attempts: "
        "test_testing_runner.CardDeclined: card declined for 250000 cents")
    assert result.executions == {"reserve:v1": 1, "charge:v1": 5, "release:v1": 1}
    assert ledger == ["reserve o-3", *["charge o-3"] * 5, "release o-3"]
    back_offs = sum(CHARGE_RETRY.delay("test-run", "charge:v1", n) for n in range(1, 5))
    expected = timedelta(minutes=30, seconds=back_offs)
    assert abs(result.elapsed - expected) <= timedelta(microseconds=4)


def test_history_is_every_event_in_order() -> None:
    result = run_workflow(checkout, "o-5", 4200, signals={"approval:v1": True})
    assert [(e.kind, e.event, e.key) for e in result.history] == [
        ("run", "started", None),
        ("step", "completed", "reserve:v1"),
        ("sleep", "scheduled", "cool-off:v1"),
        ("sleep", "fired", "cool-off:v1"),
        ("suspend", "suspended", "approval:v1"),
        ("signal", "signalled", "approval:v1"),
        ("step", "completed", "charge:v1"),
        ("run", "completed", None),
    ]
    assert result.history[1].value == {"order": "o-5"}
    assert result.info.output == result.output


def test_start_sets_the_virtual_datetime_of_the_run() -> None:
    start = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    result = run_workflow(checkout, "o-6", 4200, signals={"approval:v1": True}, start=start)
    assert result.info.created_at == start
    assert result.info.updated_at == start + timedelta(minutes=30)
    fired = [e.recorded_at for e in result.history if e.event == "fired"]
    assert fired == [start + timedelta(minutes=30)]


# -- signals --


def test_a_signal_may_be_a_function_of_the_run_info() -> None:
    seen: list[replay.RunInfo] = []

    def approve(info: replay.RunInfo) -> bool:
        seen.append(info)
        return info.status_text == "waiting for a manager"

    result = run_workflow(checkout, "o-7", 4200, signals={"approval:v1": approve})
    assert result.output == {"order": "o-7", "receipt": "receipt-o-7"}
    [info] = seen
    assert (info.state, info.waiting_for, info.run_id) == ("suspended", "approval:v1", "test-run")


def test_a_run_suspended_on_a_key_without_a_scripted_signal_is_returned_as_it_is() -> None:
    result = run_workflow(checkout, "o-8", 4200, signals={"approval:v2": True})
    assert result.state is RunState.SUSPENDED
    assert (result.info.waiting_for, result.info.status_text) == (
        "approval:v1", "waiting for a manager")
    assert result.output is None and result.error is None
    assert result.signalled == ()
    assert result.elapsed == timedelta(minutes=30)


@replay.workflow(name="escalation")
def escalation():  # type: ignore[no-untyped-def]
    try:
        answer = yield Suspend("manager:v1", timeout=timedelta(days=2))
        who = "manager"
    except replay.SuspendTimeout:
        answer = yield Suspend("director:v1", timeout=timedelta(days=3))
        who = "director"
    return {"by": who, "answer": answer}


def test_a_suspend_timeout_fires_in_virtual_time_when_no_signal_is_scripted() -> None:
    result = run_workflow(escalation, signals={"director:v1": "yes"})
    assert result.output == {"by": "director", "answer": "yes"}
    assert result.elapsed == timedelta(days=2)
    assert result.signalled == ("director:v1",)


def test_a_scripted_signal_beats_the_timeout() -> None:
    result = run_workflow(escalation, signals={"manager:v1": "ok"})
    assert result.output == {"by": "manager", "answer": "ok"}
    assert result.elapsed == timedelta(0)


def test_both_timeouts_pass_when_nobody_answers() -> None:
    result = run_workflow(escalation)
    assert result.state is RunState.FAILED
    assert result.error is not None and result.error.error_type == "replay.SuspendTimeout"
    assert result.elapsed == timedelta(days=5)


@replay.workflow(name="forever")
def forever():  # type: ignore[no-untyped-def]
    day = 0
    while True:
        yield Sleep(f"day:{day}", timedelta(days=1))
        day += 1


def test_max_virtual_stops_a_run_that_never_ends() -> None:
    result = run_workflow(forever, max_virtual=timedelta(days=3, hours=1))
    assert result.state is RunState.SLEEPING
    assert result.info.waiting_for == "day:3"
    assert result.elapsed == timedelta(days=3)


async def wait_forever() -> None:
    await trio.sleep_forever()


@replay.workflow(name="stuck")
def stuck():  # type: ignore[no-untyped-def]
    yield Step("first:v1", count_call, "first")
    yield Step("forever:v1", wait_forever)


def test_max_virtual_stops_a_step_that_never_returns() -> None:
    result = run_workflow(stuck, max_virtual=timedelta(hours=1))
    assert result.state is RunState.RUNNING
    assert result.executions == {"first:v1": 1}
    assert result.elapsed == timedelta(0)


def test_max_virtual_may_be_seconds() -> None:
    result = run_workflow(forever, max_virtual=36 * 3600)
    assert result.info.waiting_for == "day:1"


# -- steps --


@replay.workflow(name="flaky")
def flaky_pipeline():  # type: ignore[no-untyped-def]
    first = yield Step("first:v1", count_call, "first")
    second = yield Step("second:v1", fail_twice)
    return [first, second]


calls: dict[str, int] = {}


def count_call(name: str) -> int:
    calls[name] = calls.get(name, 0) + 1
    return calls[name]


def fail_twice() -> str:
    if count_call("second") < 3:
        raise ConnectionError("try again")
    return "third time lucky"


def test_executions_count_attempts_and_default_retry_applies() -> None:
    calls.clear()
    result = run_workflow(flaky_pipeline, default_retry=Retry(attempts=3, initial=60))
    assert result.output == [1, "third time lucky"]
    assert result.executions == {"first:v1": 1, "second:v1": 3}
    # Two back-offs of about a minute, in virtual time.
    assert timedelta(minutes=1.5) < result.elapsed < timedelta(minutes=3.5)


def test_without_default_retry_a_step_gets_one_attempt() -> None:
    calls.clear()
    result = run_workflow(flaky_pipeline)
    assert result.error is not None
    assert result.error.message == ("step 'second:v1' of run 'test-run' failed after 1 "
                                    "attempt: builtins.ConnectionError: try again")
    assert result.executions == {"first:v1": 1, "second:v1": 1}


@replay.workflow(name="raises")
def raises_in_workflow_code():  # type: ignore[no-untyped-def]
    value = yield Step("value:v1", count_call, "raises")
    raise LookupError(f"no such thing: {value}")


def test_an_exception_in_workflow_code_is_a_failed_result() -> None:
    calls.clear()
    result = run_workflow(raises_in_workflow_code, run_id="r-9")
    assert result.run_id == "r-9"
    assert result.error is not None
    assert (result.error.run_id, result.error.error_type, result.error.message) == (
        "r-9", "builtins.LookupError", "no such thing: 1")
    assert "raise LookupError" in result.error.traceback


def unencodable() -> object:
    return object()


@replay.workflow(name="bad-output")
def bad_output():  # type: ignore[no-untyped-def]
    yield Sleep("pause:v1", 1)
    return {"thing": unencodable()}


def test_an_unencodable_output_fails_the_run_and_the_replay_agrees() -> None:
    result = run_workflow(bad_output)
    assert result.error is not None and result.error.error_type == "replay.EncodingError"


def test_an_unencodable_input_is_an_encoding_error() -> None:
    with pytest.raises(replay.EncodingError):
        run_workflow(checkout, object(), 1)


def test_an_unencodable_signal_is_an_encoding_error() -> None:
    with pytest.raises(replay.EncodingError):
        run_workflow(checkout, "o-10", 1, signals={"approval:v1": {1, object}})


# -- determinism (item 3) --

counter = {"executions": 0}


@replay.workflow(name="reads-a-global")
def reads_a_global():  # type: ignore[no-untyped-def]
    counter["executions"] += 1  # outside a step: differs on every execution
    if counter["executions"] == 1:
        yield Step("fast-path:v1", count_call, "fast")
    else:
        yield Step("slow-path:v1", count_call, "slow")
    yield Sleep("wait:v1", timedelta(hours=1))
    return "done"


def test_a_workflow_reading_a_global_outside_a_step_is_caught() -> None:
    counter["executions"] = 0
    with pytest.raises(replay.NondeterminismError, match=(
        r"^run 'test-run' of workflow 'reads-a-global' took another path on replay: it "
        r"yielded Step\('slow-path:v1', test_testing_runner\.count_call, 'slow'\), which is "
        r"not recorded, before reaching 'wait:v1', where its last execution stopped; code "
        r"outside steps must be deterministic: read the time, random numbers and globals "
        r"inside steps$"
    )) as caught:
        run_workflow(reads_a_global)
    assert (caught.value.run_id, caught.value.key) == ("test-run", "slow-path:v1")
    assert 'yield Step("slow-path:v1"' in str(caught.value.__cause__)


def test_without_always_replay_the_same_workflow_passes_by_luck() -> None:
    counter["executions"] = 0
    assert run_workflow(reads_a_global, always_replay=False).output == "done"


@replay.workflow(name="coin-flip")
def coin_flip():  # type: ignore[no-untyped-def]
    side = "heads" if random.random() < 0.5 else "tails"  # outside a step
    yield Step(f"{side}:v1", count_call, side)
    return side


def test_a_random_path_is_caught_even_when_the_run_never_parks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([0.1, 0.9])
    monkeypatch.setattr(random, "random", lambda: next(draws))
    with pytest.raises(replay.NondeterminismError, match=(
        r"^run 'test-run' of workflow 'coin-flip' completed, but its replay yields "
        r"Step\('tails:v1', test_testing_runner\.count_call, 'tails'\), which is not "
        r"recorded: with the same recorded outcomes it takes another path; code outside "
        r"steps must be deterministic: read the time, random numbers and globals inside "
        r"steps$"
    )) as caught:
        run_workflow(coin_flip)
    assert caught.value.key == "tails:v1"


@replay.workflow(name="counts-executions")
def counts_executions():  # type: ignore[no-untyped-def]
    counter["executions"] += 1  # outside a step
    yield Step("work:v1", count_call, "work")
    return {"executions": counter["executions"]}


def test_an_output_that_differs_on_replay_is_caught() -> None:
    counter["executions"] = 0
    with pytest.raises(replay.NondeterminismError, match=(
        r"^run 'test-run' of workflow 'counts-executions' completed, but its replay returns "
        r"\{'executions': 2\} instead of \{'executions': 1\}; code outside steps must be "
        r"deterministic: read the time, random numbers and globals inside steps$"
    )) as caught:
        run_workflow(counts_executions)
    assert caught.value.key is None


@replay.workflow(name="twice")
def yields_a_key_twice():  # type: ignore[no-untyped-def]
    for _ in range(2):
        yield Step("fetch", count_call, "fetch")


def test_a_duplicate_key_is_raised_as_itself() -> None:
    with pytest.raises(replay.DuplicateKeyError, match=(
        r"^workflow 'twice' yielded key 'fetch' twice in one execution of run 'test-run'; "
        r"a key may be yielded once per execution: make it unique, e\.g\. "
        r"f\"fetch:\{i\}\" for the i-th item$"
    )) as caught:
        run_workflow(yields_a_key_twice)
    assert caught.value.key == "fetch"


@pytest.mark.parametrize(("message", "key"), [
    ("workflow 'w' yielded key 'a\\'b' twice in one execution", "a'b"),
    ("run 'r' of workflow 'w' recorded key \"k:1\" as a sleep but", "k:1"),
    ("it yielded Sleep('nap', datetime.timedelta(seconds=1)), which is", "nap"),
    ("it yielded Suspend('ask'), which is not recorded", "ask"),
    ("something else entirely", None),
])
def test_the_key_is_read_back_from_a_recorded_rule_error(message: str, key: str | None) -> None:
    assert _key_in(message) == key


# -- the async variant and misuse --


async def test_run_workflow_async_runs_inside_a_virtual_time_trio_run() -> None:
    before = trio.current_time()
    result = await run_workflow_async(checkout, "o-11", 4200, signals={"approval:v1": True})
    assert result.output == {"order": "o-11", "receipt": "receipt-o-11"}
    assert trio.current_time() - before == pytest.approx(1800, abs=0.01)


async def test_run_workflow_inside_a_trio_run_says_to_await_the_async_variant() -> None:
    with pytest.raises(RuntimeError, match=(
        r"^replay\.testing\.run_workflow\(\) starts its own trio run, so it cannot be called "
        r"inside one; use `await replay\.testing\.run_workflow_async\(\.\.\.\)`$"
    )):
        run_workflow(checkout, "o-12", 1)


def test_run_workflow_async_refuses_the_real_clock() -> None:
    with pytest.raises(RuntimeError, match=(
        r"^replay\.testing\.run_workflow_async\(\) needs trio's virtual clock, but this trio "
        r"run uses SystemClock; run it under trio\.testing\.MockClock\(autojump_threshold=0\) "
        r"\(the replay_clock fixture, or pytest-trio's autojump_clock\), or use "
        r"replay\.testing\.run_workflow, which sets one up$"
    )):
        trio.run(run_workflow_async, checkout, "o-13", 1)


def test_run_workflow_async_outside_trio_says_so() -> None:
    coroutine = run_workflow_async(checkout, "o-14", 1)
    with pytest.raises(RuntimeError, match=r"^replay\.testing\.run_workflow_async\(\) must "
                                           r"run inside trio\.run \(replay is built on trio\)"):
        coroutine.send(None)
    coroutine.close()


def not_a_generator(order_id: str) -> str:
    return order_id


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"signals": [("approval:v1", True)]}, TypeError,
     r"^signals must be a mapping of key to payload \(or to a function of the run's "
     r"RunInfo\), got \[\('approval:v1', True\)\] \(list\)$"),
    ({"signals": {1: True}}, TypeError,
     r"^signals: every key must be a str \(a Suspend's key\), got 1 \(int\)$"),
    ({"max_virtual": "1 day"}, TypeError,
     r"^max_virtual must be a timedelta, a number of seconds or None, got '1 day' \(str\)$"),
    ({"max_virtual": -1}, ValueError, r"^max_virtual must be >= 0, got -1$"),
    ({"start": datetime(2030, 1, 1)}, ValueError,
     r"^virtual start must be an aware datetime, got datetime\.datetime\(2030, 1, 1, 0, 0\)$"),
    ({"start": "2030-01-01"}, TypeError,
     r"^set_virtual_start\(start\): start must be an aware datetime, got '2030-01-01' "
     r"\(str\)$"),
    ({"always_replay": 1}, TypeError, r"^always_replay must be a bool, got 1 \(int\)$"),
])
def test_bad_options_are_refused(options: dict[str, Any], error: type[Exception],
                                 message: str) -> None:
    with pytest.raises(error, match=message):
        run_workflow(checkout, "o-15", 1, **options)


def test_a_workflow_must_be_a_generator_function() -> None:
    with pytest.raises(TypeError, match=r"^a workflow must be a generator function"):
        run_workflow(not_a_generator, "o-16")


def test_the_result_is_frozen_and_its_repr_is_short() -> None:
    result = run_workflow(checkout, "o-17", 4200)
    assert repr(result) == (
        "RunResult(run_id='test-run', state='suspended', waiting_for='approval:v1', "
        "executions={'reserve:v1': 1}, elapsed=datetime.timedelta(seconds=1800))")
    with pytest.raises(AttributeError):
        result.output = 1  # type: ignore[misc]
    assert isinstance(result, RunResult)
    done = run_workflow(checkout, "o-18", 4200, signals={"approval:v1": True})
    assert repr(done).startswith(
        "RunResult(run_id='test-run', state='completed', output={'order': 'o-18', "
        "'receipt': 'receipt-o-18'}, executions=")
