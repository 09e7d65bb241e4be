"""The example workflows, tested with replay.testing (issue 5, item 6: dogfooding).

tests/test_examples.py runs each example's `main` as a script would; here each
example's *workflow* is tested the way the testing guide recommends: one call of
`run_workflow` per scenario, in virtual time, with always_replay on and signals
scripted by key. The examples' histories are also checked against their own code.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest
import trio
import trio.testing

from replay import RunState
from replay.testing import check_history, open_test_engine, run_workflow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"toolkit_example_{name}",
                                                  EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkout() -> ModuleType:
    return load("checkout")


@pytest.fixture(scope="module")
def approval() -> ModuleType:
    return load("approval")


@pytest.fixture(scope="module")
def orders() -> ModuleType:
    return load("order_pipeline")


@pytest.fixture(scope="module")
def reminders() -> ModuleType:
    return load("reminders")


@pytest.fixture(scope="module")
def pipeline() -> ModuleType:
    return load("data_pipeline")


@pytest.fixture(autouse=True)
def _fresh_examples(request: pytest.FixtureRequest) -> Iterator[None]:
    for name in ("checkout", "approval", "orders", "reminders", "pipeline"):
        if name in request.fixturenames:
            module = request.getfixturevalue(name)
            for attribute in ("ledger", "EXECUTED", "WAREHOUSE"):
                if hasattr(module, attribute):
                    getattr(module, attribute).clear()
    yield


# -- checkout.py: the SPEC §2 example --


def test_checkout_approved(checkout: ModuleType) -> None:
    result = run_workflow(checkout.checkout, "order-17", 4200,
                          signals={"approval:v1": True}, run_id="order-17")
    assert result.output == {"order": "order-17", "receipt": "receipt-order-17-1"}
    assert result.elapsed == timedelta(minutes=30)
    assert checkout.ledger == ["reserved order-17", "charged 4200 for order-17 (attempt 1)"]


def test_checkout_rejected(checkout: ModuleType) -> None:
    result = run_workflow(checkout.checkout, "order-18", 990, signals={"approval:v1": False})
    assert result.output == {"order": "order-18", "state": "rejected"}
    assert result.executions == {"reserve:v1": 1}


def test_checkout_waits_for_its_manager(checkout: ModuleType) -> None:
    result = run_workflow(checkout.checkout, "order-19", 990)
    assert (result.state, result.info.status_text) == ("suspended", "waiting for a manager")


# -- approval.py: suspensions with timeouts --


def test_approval_by_the_manager(approval: ModuleType) -> None:
    result = run_workflow(approval.expense_approval, "exp-1", "ana", 12_000, run_id="exp-1",
                          signals={approval.MANAGER: {"approved": True, "by": "maria"}})
    assert result.output == {"expense": "exp-1", "state": "paid", "approved_by": "maria",
                             "payment": "pay-exp-1-pay:v1"}
    assert result.elapsed == timedelta(0)


def test_approval_escalates_to_the_director_after_two_days(approval: ModuleType) -> None:
    result = run_workflow(approval.expense_approval, "exp-2", "ben", 250_000,
                          signals={approval.DIRECTOR: {"approved": True, "by": "dario"}})
    assert result.output["approved_by"] == "dario"
    assert result.elapsed == approval.MANAGER_TIMEOUT
    assert result.executions == {"record:v1": 1, "escalate:v1": 1, "pay:v1": 1}


def test_approval_rejected_when_nobody_answers(approval: ModuleType) -> None:
    result = run_workflow(approval.expense_approval, "exp-9", "dee", 5_000)
    assert result.output["reason"] == "no decision within 5 days"
    assert result.elapsed == approval.MANAGER_TIMEOUT + approval.DIRECTOR_TIMEOUT
    assert dict(approval.EXECUTED) == {"record_request": 1, "notify_director": 1,
                                       "notify_rejection": 1}


# -- order_pipeline.py: retries and a compensation --


def test_order_shipped_after_two_gateway_timeouts(orders: ModuleType) -> None:
    result = run_workflow(orders.order, "1001", "book-42", 4_200, run_id="order-1001")
    assert result.output == {"order": "1001", "state": "shipped",
                             "receipt": "ch-order-1001:charge:v1", "tracking": "trk-1001-book-42"}
    assert result.executions == {"reserve:v1": 1, "charge:v1": 3, "ship:v1": 1}
    assert [e.event for e in result.history if e.key == "charge:v1"] == [
        "retrying", "retrying", "completed"]


def test_order_cancelled_when_the_card_is_declined(orders: ModuleType) -> None:
    result = run_workflow(orders.order, "1002", "piano-7", 950_000)
    assert result.output["state"] == "cancelled"
    assert result.executions == {"reserve:v1": 1, "charge:v1": 1, "release:v1": 1}


# -- reminders.py: days of sleeping --


def test_reminders_over_ten_days(reminders: ModuleType) -> None:
    start = datetime(2030, 3, 1, 9, 0, tzinfo=UTC)
    result = run_workflow(reminders.reminder_campaign, "ada", start=start)
    assert result.output == ["msg-ada-welcome", "msg-ada-reminder", "msg-ada-last-nudge"]
    sent = {e.key: e.recorded_at for e in result.history if e.event == "completed"
            and e.key in ("welcome:v1", "reminder:v1", "nudge:v1")}
    assert sent == {"welcome:v1": start, "reminder:v1": start + timedelta(days=3),
                    "nudge:v1": start + timedelta(days=10)}


# -- data_pipeline.py: a failed step ends the run; the guide's resume is engine work --


def test_pipeline_fails_while_the_rates_service_is_down(pipeline: ModuleType) -> None:
    pipeline.RATES_SERVICE_UP = False
    result = run_workflow(pipeline.daily_sales, "2024-06-01")
    assert result.state is RunState.FAILED
    assert result.error is not None and result.error.error_type == "replay.StepFailed"
    assert result.executions == {"extract:v1": 1, "transform:v1": 1, "convert:v1": 1}


def test_pipeline_loads_once_the_service_is_up(pipeline: ModuleType) -> None:
    pipeline.RATES_SERVICE_UP = True
    result = run_workflow(pipeline.daily_sales, "2024-06-01")
    assert result.output == {"day": "2024-06-01", "rows": 3, "total_eur": 317.8}


# -- each example's history replays against its own code --


def test_example_histories_replay_against_their_code(
        tmp_path: Path, approval: ModuleType, orders: ModuleType) -> None:
    async def record() -> None:
        async with open_test_engine([approval.expense_approval, orders.order]) as engine:
            expense = await engine.start(approval.expense_approval, "exp-2", "ben", 250_000,
                                         run_id="exp-2")
            await expense.wait()  # suspended on the manager
            await engine.export_history("exp-2", tmp_path / "expense-waiting.json")
            order = await engine.start(orders.order, "1001", "book-42", 4_200, run_id="o")
            await order.result()
            await engine.export_history("o", tmp_path / "order-shipped.json")

    trio.run(record, clock=trio.testing.MockClock(autojump_threshold=0))
    waiting = check_history(approval.expense_approval, tmp_path / "expense-waiting.json")
    assert waiting.next_command is not None and waiting.next_command.key == approval.MANAGER
    shipped = check_history(orders.order, tmp_path / "order-shipped.json")
    assert shipped.output["state"] == "shipped"
