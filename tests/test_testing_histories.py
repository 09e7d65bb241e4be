"""Golden histories (issue 5): the files in tests/histories/ and the code that made them.

Each file is one run of the SPEC §2 checkout, recorded by a real engine in virtual time
from a fixed start and exported with `engine.export_history`. `check_history` replays
today's `checkout` against them without executing a step; one file was recorded by an
older `checkout` whose "cool-off:v1" was a step, and is deliberately incompatible.

To regenerate the files after a deliberate change of these workflows:

    python tests/test_testing_histories.py
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import replay
from replay import Sleep, Step, Suspend
from replay.testing import check_history, open_test_engine

HISTORIES = Path(__file__).resolve().parent / "histories"
START = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)


class CardDeclined(Exception):
    """The bank said no."""


def reserve_stock(order_id: str) -> dict[str, Any]:
    return {"order": order_id, "sku": "tea-1kg", "quantity": 1}


async def charge_card(order_id: str, cents: int) -> str:
    if cents > 100_000:
        raise CardDeclined(f"card declined for {cents / 100:.2f} EUR")
    return f"receipt-{order_id}"


def release_stock(reservation: dict[str, Any]) -> None:
    return None


def notify_cool_off(order_id: str) -> str:
    return f"cool-off notice for {order_id}"


@replay.workflow(name="checkout")
def checkout(order_id: str, cents: int):  # type: ignore[no-untyped-def]
    reservation = yield Step("reserve:v1", reserve_stock, order_id)
    yield Sleep("cool-off:v1", timedelta(minutes=30))
    approved = yield Suspend("approval:v1", status="waiting for a manager")
    if not approved:
        return {"order": order_id, "state": "rejected"}
    try:
        receipt = yield Step("charge:v1", charge_card, order_id, cents,
                             retry=replay.Retry(attempts=5, initial=1.0, backoff=2.0),
                             timeout=30)
    except replay.StepFailed:
        yield Step("release:v1", release_stock, reservation)  # compensation
        raise
    return {"order": order_id, "receipt": receipt}


@replay.workflow(name="checkout")
def checkout_before_the_sleep(order_id: str, cents: int):  # type: ignore[no-untyped-def]
    """An older checkout: "cool-off:v1" was a step that sent a notice."""
    reservation = yield Step("reserve:v1", reserve_stock, order_id)
    yield Step("cool-off:v1", notify_cool_off, order_id)
    approved = yield Suspend("approval:v1", status="waiting for a manager")
    if not approved:
        return {"order": order_id, "state": "rejected"}
    receipt = yield Step("charge:v1", charge_card, order_id, cents)
    return {"order": order_id, "receipt": receipt, "reservation": reservation}


# file name -> (workflow, order id, cents, approval signal or None for no signal)
GOLDEN: dict[str, tuple[Any, str, int, bool | None]] = {
    "checkout-completed.json": (checkout, "order-1", 4200, True),
    "checkout-rejected.json": (checkout, "order-2", 4200, False),
    "checkout-charge-failed.json": (checkout, "order-3", 250_000, True),
    "checkout-waiting.json": (checkout, "order-4", 4200, None),
    "checkout-incompatible.json": (checkout_before_the_sleep, "order-5", 4200, True),
}


async def record_history(path: Path, workflow: Any, order_id: str, cents: int,
                         approve: bool | None) -> None:
    async with open_test_engine([workflow], start=START) as engine:
        run = await engine.start(workflow, order_id, cents, run_id=order_id)
        await run.wait()
        if approve is not None:
            await engine.signal(order_id, "approval:v1", approve)
            await run.wait()
        await engine.export_history(order_id, path)


def write_histories(directory: Path) -> None:
    """Record every golden history into `directory`, each in its own virtual-time run."""
    for name, (workflow, order_id, cents, approve) in GOLDEN.items():
        trio.run(record_history, directory / name, workflow, order_id, cents, approve,
                 clock=trio.testing.MockClock(autojump_threshold=0))


def comparable(path: Path) -> dict[str, Any]:
    """A history document without what depends on the machine: traceback text."""
    document = json.loads(path.read_text())
    for record in document["records"]:
        if record["kind"] == "run" and record["event"] == "failed":
            record["error"] = record["error"].splitlines()[-1]
    return document


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("histories")
    write_histories(directory)
    return directory


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_history_is_what_the_workflows_record_today(name: str, regenerated: Path) -> None:
    # If this fails after a deliberate change: python tests/test_testing_histories.py
    assert comparable(HISTORIES / name) == comparable(regenerated / name)


def test_the_histories_folder_holds_exactly_the_golden_files() -> None:
    assert sorted(path.name for path in HISTORIES.glob("*.json")) == sorted(GOLDEN)


def test_current_checkout_replays_the_completed_history() -> None:
    report = check_history(checkout, HISTORIES / "checkout-completed.json")
    assert report.recorded_state == "completed"
    assert report.output == {"order": "order-1", "receipt": "receipt-order-1"}
    assert report.reached_keys == ("reserve:v1", "cool-off:v1", "approval:v1", "charge:v1")
    assert report.unreached_keys == ()
    assert (report.next_command, report.error, report.renamed_steps) == (None, None, ())


def test_current_checkout_replays_the_rejected_history() -> None:
    report = check_history(checkout, HISTORIES / "checkout-rejected.json")
    assert report.output == {"order": "order-2", "state": "rejected"}
    assert report.reached_keys == ("reserve:v1", "cool-off:v1", "approval:v1")


def test_current_checkout_replays_the_failed_charge_and_its_compensation() -> None:
    report = check_history(checkout, HISTORIES / "checkout-charge-failed.json")
    assert report.recorded_state == "failed"
    assert isinstance(report.error, replay.StepFailed)
    assert report.error.attempts == 5
    assert report.error.is_a(CardDeclined)
    assert report.reached_keys[-2:] == ("charge:v1", "release:v1")


def test_current_checkout_replays_the_waiting_history_up_to_its_wait() -> None:
    report = check_history(checkout, HISTORIES / "checkout-waiting.json")
    assert report.recorded_state == "suspended"
    assert report.next_command == Suspend("approval:v1", status="waiting for a manager")
    assert report.output is None and report.error is None


def test_the_incompatible_history_is_caught() -> None:
    with pytest.raises(replay.NondeterminismError, match=(
        r"^run 'order-5' of workflow 'checkout' recorded key 'cool-off:v1' as a step but "
        r"the workflow now yields Sleep\('cool-off:v1', datetime\.timedelta\(seconds=1800\)\); "
        r"restore the code that recorded it, or give the new command a new key \(e\.g\. bump "
        r"':v1' to ':v2'\) and resume the run$"
    )) as caught:
        check_history(checkout, HISTORIES / "checkout-incompatible.json")
    assert (caught.value.run_id, caught.value.key) == ("order-5", "cool-off:v1")
    # Its cause shows the offending yield in this file.
    assert 'yield Sleep("cool-off:v1"' in str(caught.value.__cause__)


def test_the_incompatible_history_still_fits_the_code_that_recorded_it() -> None:
    report = check_history(checkout_before_the_sleep, HISTORIES / "checkout-incompatible.json")
    assert report.output == {"order": "order-5", "receipt": "receipt-order-5",
                             "reservation": {"order": "order-5", "sku": "tea-1kg",
                                             "quantity": 1}}


if __name__ == "__main__":
    # Import this file under its test-module name, so recorded step names match.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import test_testing_histories

    HISTORIES.mkdir(exist_ok=True)
    test_testing_histories.write_histories(HISTORIES)
    print(f"wrote {len(GOLDEN)} histories to {HISTORIES}")
