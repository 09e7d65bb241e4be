"""replay.testing.check_history (issue 5, item 4): new code against recorded histories.

Each test changes the SPEC checkout of `test_testing_histories` in one way and replays
it against the golden histories in tests/histories/, executing no step.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_testing_histories import HISTORIES, charge_card, release_stock, reserve_stock

import replay
from replay import Sleep, Step, Suspend
from replay.testing import HistoryReport, check_history

COMPLETED = HISTORIES / "checkout-completed.json"
FAILED = HISTORIES / "checkout-charge-failed.json"
WAITING = HISTORIES / "checkout-waiting.json"
REMEDY = "if the change is intended, export the history again with engine.export_history"

executed: list[str] = []


def spy(name: str) -> Any:
    executed.append(name)
    return name


def at(path: Path) -> str:
    return re.escape(f" in history {str(path)!r}")


@pytest.fixture(autouse=True)
def _steps_never_run() -> Any:
    executed.clear()
    yield
    assert executed == []


def test_nothing_executes_while_checking() -> None:
    @replay.workflow(name="checkout")
    def checkout(order_id: str, cents: int):  # type: ignore[no-untyped-def]
        reservation = yield Step("reserve:v1", spy, "reserve")
        yield Sleep("cool-off:v1", timedelta(minutes=30))
        approved = yield Suspend("approval:v1")
        receipt = yield Step("charge:v1", spy, "charge")
        return {"order": order_id, "receipt": receipt} if approved else reservation

    report = check_history(checkout, COMPLETED)
    assert isinstance(report, HistoryReport)
    assert report.output == {"order": "order-1", "receipt": "receipt-order-1"}
    assert report.renamed_steps == (
        ("reserve:v1", "test_testing_histories.reserve_stock", "test_testing_check.spy"),
        ("charge:v1", "test_testing_histories.charge_card", "test_testing_check.spy"),
    )


# -- a finished run must end the same way from its recorded outcomes alone --


@replay.workflow(name="checkout")
def with_a_new_step(order_id: str, cents: int):  # type: ignore[no-untyped-def]
    yield Step("reserve:v1", reserve_stock, order_id)
    yield Sleep("cool-off:v1", timedelta(minutes=30))
    yield Step("fraud-check:v1", spy, order_id)  # new
    approved = yield Suspend("approval:v1", status="waiting for a manager")
    if not approved:
        return {"order": order_id, "state": "rejected"}
    receipt = yield Step("charge:v1", charge_card, order_id, cents)
    return {"order": order_id, "receipt": receipt}


def test_a_new_step_in_a_completed_run_is_drift() -> None:
    with pytest.raises(replay.NondeterminismError, match=(
        rf"^run 'order-1' of workflow 'checkout' completed{at(COMPLETED)}, but the new code "
        r"yields Step\('fraud-check:v1', test_testing_check\.spy, 'order-1'\), which is not "
        r"recorded: with the same recorded outcomes it takes another path; "
        rf"{re.escape(REMEDY)}$"
    )) as caught:
        check_history(with_a_new_step, COMPLETED)
    assert (caught.value.run_id, caught.value.key) == ("order-1", "fraud-check:v1")


def test_a_new_step_in_a_waiting_run_is_allowed_and_comes_next() -> None:
    report = check_history(with_a_new_step, WAITING)
    assert report.recorded_state == "suspended"
    assert report.next_command == Step("fraud-check:v1", spy, "order-4")
    assert report.reached_keys == ("reserve:v1", "cool-off:v1", "fraud-check:v1")
    assert report.unreached_keys == ("approval:v1",)


@replay.workflow(name="checkout")
def with_another_output(order_id: str, cents: int):  # type: ignore[no-untyped-def]
    yield Step("reserve:v1", reserve_stock, order_id)
    yield Sleep("cool-off:v1", timedelta(minutes=30))
    yield Suspend("approval:v1")
    receipt = yield Step("charge:v1", charge_card, order_id, cents)
    return {"order": order_id, "receipt": receipt, "currency": "EUR"}


def test_another_output_for_a_completed_run_is_drift() -> None:
    with pytest.raises(replay.NondeterminismError, match=(
        rf"^run 'order-1' of workflow 'checkout' completed{at(COMPLETED)}, but the new code "
        r"returns \{'order': 'order-1', 'receipt': 'receipt-order-1', 'currency': 'EUR'\} "
        r"instead of \{'order': 'order-1', 'receipt': 'receipt-order-1'\}; "
        rf"{re.escape(REMEDY)}$"
    )) as caught:
        check_history(with_another_output, COMPLETED)
    assert caught.value.key is None


@replay.workflow(name="checkout")
def reads_a_new_field(order_id: str, cents: int):  # type: ignore[no-untyped-def]
    reservation = yield Step("reserve:v1", reserve_stock, order_id)
    warehouse = reservation["warehouse"]  # recorded reservations have no such field
    yield Sleep("cool-off:v1", timedelta(minutes=30))
    yield Suspend("approval:v1")
    receipt = yield Step("charge:v1", charge_card, order_id, cents)
    return {"order": order_id, "receipt": receipt, "from": warehouse}


def test_code_that_raises_on_a_recorded_value_is_drift_for_a_completed_run() -> None:
    with pytest.raises(replay.NondeterminismError, match=(
        rf"^run 'order-1' of workflow 'checkout' completed{at(COMPLETED)}, but the new code "
        rf"raises builtins\.KeyError: 'warehouse'; {re.escape(REMEDY)}$"
    )) as caught:
        check_history(reads_a_new_field, COMPLETED)
    assert isinstance(caught.value.__cause__, KeyError)


def test_code_that_raises_on_a_recorded_value_is_drift_for_a_waiting_run() -> None:
    with pytest.raises(replay.NondeterminismError, match=(
        rf"^run 'order-4' of workflow 'checkout' is suspended on 'approval:v1'{at(WAITING)}, "
        r"but the new code raises builtins\.KeyError: 'warehouse', so the run would fail "
        rf"when it continues; {re.escape(REMEDY)}$"
    )):
        check_history(reads_a_new_field, WAITING)


@replay.workflow(name="checkout")
def without_the_cool_off(order_id: str, cents: int):  # type: ignore[no-untyped-def]
    yield Step("reserve:v1", reserve_stock, order_id)
    approved = yield Suspend("approval:v1", status="waiting for a manager")
    if not approved:
        return {"order": order_id, "state": "rejected"}
    receipt = yield Step("charge:v1", charge_card, order_id, cents)
    return {"order": order_id, "receipt": receipt}


def test_a_removed_step_is_reported_not_refused() -> None:
    report = check_history(without_the_cool_off, COMPLETED)
    assert report.output == {"order": "order-1", "receipt": "receipt-order-1"}
    assert report.unreached_keys == ("cool-off:v1",)
    assert report.reached_keys == ("reserve:v1", "approval:v1", "charge:v1")


@replay.workflow(name="checkout")
def swallows_the_failure(order_id: str, cents: int):  # type: ignore[no-untyped-def]
    reservation = yield Step("reserve:v1", reserve_stock, order_id)
    yield Sleep("cool-off:v1", timedelta(minutes=30))
    yield Suspend("approval:v1")
    try:
        receipt = yield Step("charge:v1", charge_card, order_id, cents)
    except replay.StepFailed as failure:
        yield Step("release:v1", release_stock, reservation)
        return {"order": order_id, "state": "declined", "why": failure.message}
    return {"order": order_id, "receipt": receipt}


def test_completing_where_the_recorded_run_failed_is_drift() -> None:
    with pytest.raises(replay.NondeterminismError, match=(
        rf"^run 'order-3' of workflow 'checkout' failed with replay\.StepFailed{at(FAILED)}, "
        r"but the new code returns \{'order': 'order-3', 'state': 'declined', 'why': 'card "
        rf"declined for 2500\.00 EUR'\}}; {re.escape(REMEDY)}$"
    )):
        check_history(swallows_the_failure, FAILED)


@replay.workflow(name="checkout")
def raises_another_error(order_id: str, cents: int):  # type: ignore[no-untyped-def]
    reservation = yield Step("reserve:v1", reserve_stock, order_id)
    yield Sleep("cool-off:v1", timedelta(minutes=30))
    yield Suspend("approval:v1")
    try:
        yield Step("charge:v1", charge_card, order_id, cents)
    except replay.StepFailed:
        yield Step("release:v1", release_stock, reservation)
        raise RuntimeError("payment failed") from None


def test_failing_with_another_error_type_is_drift() -> None:
    with pytest.raises(replay.NondeterminismError, match=(
        rf"^run 'order-3' of workflow 'checkout' failed with replay\.StepFailed{at(FAILED)}, "
        rf"but the new code raises builtins\.RuntimeError: payment failed; "
        rf"{re.escape(REMEDY)}$"
    )):
        check_history(raises_another_error, FAILED)


@replay.workflow(name="checkout")
def with_a_new_argument(order_id: str, cents: int, currency: str):  # type: ignore[no-untyped-def]
    receipt = yield Step("charge:v1", charge_card, order_id, cents)
    return receipt


def test_code_that_cannot_take_the_recorded_input_is_drift() -> None:
    with pytest.raises(replay.NondeterminismError, match=(
        rf"^run 'order-1' of workflow 'checkout' completed{at(COMPLETED)}, but the new code "
        r"raises builtins\.TypeError: with_a_new_argument\(\) missing 1 required positional "
        rf"argument: 'currency'; {re.escape(REMEDY)}$"
    )):
        check_history(with_a_new_argument, COMPLETED)


# -- rules that hold for every run --


@replay.workflow(name="checkout")
def approval_became_a_step(order_id: str, cents: int):  # type: ignore[no-untyped-def]
    yield Step("reserve:v1", reserve_stock, order_id)
    yield Sleep("cool-off:v1", timedelta(minutes=30))
    yield Step("approval:v1", spy, "auto-approve")


@pytest.mark.parametrize("path", [COMPLETED, WAITING])
def test_a_recorded_key_of_another_kind_is_drift(path: Path) -> None:
    run_id = json.loads(path.read_text())["run_id"]
    with pytest.raises(replay.NondeterminismError, match=(
        rf"^run '{run_id}' of workflow 'checkout' recorded key 'approval:v1' as a suspend but "
        r"the workflow now yields Step\('approval:v1', test_testing_check\.spy, "
        r"'auto-approve'\); restore the code that recorded it, or give the new command a new "
        r"key \(e\.g\. bump ':v1' to ':v2'\) and resume the run$"
    )) as caught:
        check_history(approval_became_a_step, path)
    assert caught.value.key == "approval:v1"
    assert 'yield Step("approval:v1"' in str(caught.value.__cause__)


@replay.workflow(name="checkout")
def yields_a_key_twice(order_id: str, cents: int):  # type: ignore[no-untyped-def]
    yield Step("reserve:v1", reserve_stock, order_id)
    yield Step("reserve:v1", reserve_stock, order_id)


def test_a_duplicate_key_is_raised_as_itself() -> None:
    with pytest.raises(replay.DuplicateKeyError, match=r"^workflow 'checkout' yielded key "
                                                       r"'reserve:v1' twice in one execution"):
        check_history(yields_a_key_twice, COMPLETED)


@replay.workflow(name="checkout-v2")
def renamed_workflow(order_id: str, cents: int):  # type: ignore[no-untyped-def]
    yield Step("reserve:v1", reserve_stock, order_id)


def test_a_workflow_with_another_name_is_drift() -> None:
    with pytest.raises(replay.NondeterminismError, match=(
        rf"^history {re.escape(repr(str(COMPLETED)))} was recorded by workflow 'checkout', but "
        r"check_history got workflow 'checkout-v2'; runs recorded under 'checkout' are not "
        r"picked up by a workflow with another name: pass the workflow that recorded it, or "
        r"keep its name with @replay\.workflow\(name='checkout'\)$"
    )):
        check_history(renamed_workflow, COMPLETED)


def test_only_a_generator_function_can_be_checked() -> None:
    with pytest.raises(TypeError, match=r"^a workflow must be a generator function"):
        check_history(spy, COMPLETED)


def test_a_history_without_its_start_cannot_be_replayed(tmp_path: Path) -> None:
    document = json.loads(COMPLETED.read_text())
    document["records"] = document["records"][1:]
    path = tmp_path / "headless.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=(
        r"^the history of run 'order-1' has no run/started record with the run's input; "
        r"export the whole history with engine\.export_history$"
    )):
        check_history(with_a_new_step, path)


def test_a_file_that_is_not_a_history_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"hello": "world"}')
    with pytest.raises(ValueError, match=r"is not a replay history"):
        check_history(with_a_new_step, path)


def test_check_history_takes_a_str_path() -> None:
    assert check_history(without_the_cool_off, str(COMPLETED)).recorded_state == "completed"
