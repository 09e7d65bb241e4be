"""The example programs run and do what their comments claim."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType

import duckdb
import pytest
import trio
import trio.testing
from childproc import ChildProcess

import replay

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(module: ModuleType, db: Path) -> dict:
    # Virtual time: the examples' retry back-offs take no real time.
    return trio.run(module.main, str(db), clock=trio.testing.MockClock(autojump_threshold=0))


def test_order_pipeline_outcomes_and_memoisation(tmp_path: Path) -> None:
    example = load_example("order_pipeline")
    db = tmp_path / "orders.duckdb"

    first = run_main(example, db)
    assert first["states"] == {"order-1001": "completed", "order-1002": "completed"}
    shipped, cancelled = first["outputs"]["order-1001"], first["outputs"]["order-1002"]
    assert shipped == {"order": "1001", "state": "shipped", "receipt": "ch-order-1001:charge:v1",
                       "tracking": "trk-1001-book-42"}
    assert cancelled["state"] == "cancelled"
    assert "declined" in cancelled["reason"]
    # Charge: 3 attempts for order-1001 (two timeouts), 1 for order-1002 (declined,
    # not retried); the compensation ran once, only the good order shipped.
    assert first["executed"] == {"reserve_stock": 2, "charge_card": 4, "ship": 1,
                                 "release_stock": 1}
    steps = [(run_id, key, event, attempt) for run_id, key, event, attempt, *_ in
             first["history"] if event.startswith("step/")]
    assert steps == [
        ("order-1001", "reserve:v1", "step/completed", 1),
        ("order-1001", "charge:v1", "step/retrying", 1),
        ("order-1001", "charge:v1", "step/retrying", 2),
        ("order-1001", "charge:v1", "step/completed", 3),
        ("order-1001", "ship:v1", "step/completed", 1),
        ("order-1002", "reserve:v1", "step/completed", 1),
        ("order-1002", "charge:v1", "step/failed", 1),
        ("order-1002", "release:v1", "step/completed", 1),
    ]
    declined = [row for row in first["history"] if row[2] == "step/failed"]
    assert declined[0][5].endswith(".CardDeclined")

    # Same file again: the recorded results come back and no step function runs.
    second = run_main(example, db)
    assert second["outputs"] == first["outputs"]
    assert second["states"] == first["states"]
    assert second["executed"] == {}
    assert second["history"] == first["history"]


def test_data_pipeline_resume_skips_finished_steps(tmp_path: Path) -> None:
    example = load_example("data_pipeline")
    db = tmp_path / "etl.duckdb"

    result = run_main(example, db)
    assert result["failure"] == "replay.StepFailed"
    assert result["state"] == "completed"
    assert result["output"] == {"day": "2024-06-01", "rows": 3, "total_eur": 317.8}
    # Across the failure and the resume, only the failed step ran twice.
    assert result["executed"] == {"extract": 1, "transform": 1, "convert": 2, "load": 1}
    assert example.WAREHOUSE["2024-06-01"] == [
        {"store": "paris", "eur": 120.5},
        {"store": "london", "eur": 94.4},
        {"store": "zurich", "eur": 102.9},
    ]

    # Same file again: the run is complete, nothing fails or runs.
    again = run_main(example, db)
    assert again == {"output": result["output"], "state": "completed", "failure": None,
                     "executed": {}}


def test_approval_escalates_after_the_manager_timeout(tmp_path: Path) -> None:
    example = load_example("approval")
    db = tmp_path / "approval.duckdb"
    manager, director = "manager-approval:v1", "director-approval:v1"

    result = run_main(example, db)
    assert result["states"] == dict.fromkeys(["exp-1", "exp-2", "exp-3"], "completed")
    assert result["outputs"] == {
        "exp-1": {"expense": "exp-1", "state": "paid", "approved_by": "maria",
                  "payment": "pay-exp-1-pay:v1"},
        "exp-2": {"expense": "exp-2", "state": "paid", "approved_by": "dario",
                  "payment": "pay-exp-2-pay:v1"},
        "exp-3": {"expense": "exp-3", "state": "rejected", "rejected_by": "maria",
                  "reason": "not a business expense"},
    }
    # Only exp-2 escalated; the double click and the manager's late answer were rejected.
    assert result["executed"] == {"record_request": 3, "notify_director": 1, "pay_out": 2,
                                  "notify_rejection": 1}
    assert result["rejected_signals"] == ["exp-1", "exp-2"]
    # (run, key, event, at, deadline), times from the first record, in virtual time:
    # the manager timeout fired exactly two days in, by itself, and only once. (Runs
    # step concurrently: only events of one run keep their order at the same instant.)
    days, hours = timedelta(days=1), timedelta(hours=1)
    assert sorted(result["events"], key=lambda e: (e[3], e[0])) == [
        ("exp-1", manager, "suspend/suspended", timedelta(0), 2 * days),
        ("exp-2", manager, "suspend/suspended", timedelta(0), 2 * days),
        ("exp-3", manager, "suspend/suspended", timedelta(0), 2 * days),
        ("exp-1", manager, "signal/signalled", 3 * hours, None),
        ("exp-3", manager, "signal/signalled", 3 * hours, None),
        ("exp-2", manager, "suspend/timed_out", 2 * days, 2 * days),
        ("exp-2", director, "suspend/suspended", 2 * days, 5 * days),
        ("exp-2", director, "signal/signalled", 2 * days + 8 * hours, None),
    ]

    # Same file again: the runs are decided, nothing runs and nothing is answered.
    again = run_main(example, db)
    assert again["outputs"] == result["outputs"]
    assert again["executed"] == {}
    assert again["rejected_signals"] == []
    assert again["events"] == result["events"]


def test_approval_rejects_when_nobody_answers(tmp_path: Path) -> None:
    example = load_example("approval")
    example.EXECUTED.clear()

    async def nobody_answers() -> tuple[dict, list[tuple]]:
        async with replay.open_engine(tmp_path / "quiet.duckdb", durability="none",
                                      workflows=[example.expense_approval]) as engine:
            run = await engine.start(example.expense_approval, "exp-9", "dee", 5_000)
            output = await run.result()  # waits through both timeouts: 2 + 3 days
            rows = await engine.sql(
                "SELECT key, recorded_at - min(recorded_at) OVER () FROM replay_events "
                "WHERE event = 'timed_out' ORDER BY seq")
            return output, rows

    output, timeouts = trio.run(nobody_answers, clock=trio.testing.MockClock(autojump_threshold=0))
    assert output == {"expense": "exp-9", "state": "rejected", "rejected_by": None,
                      "reason": "no decision within 5 days"}
    assert [key for key, _ in timeouts] == ["manager-approval:v1", "director-approval:v1"]
    assert timeouts[1][1] - timeouts[0][1] == timedelta(days=3)
    assert example.EXECUTED == {"record_request": 1, "notify_director": 1,
                                "notify_rejection": 1}


def test_reminders_sleep_for_days_and_survive_a_restart(tmp_path: Path) -> None:
    example = load_example("reminders")
    db = tmp_path / "reminders.duckdb"

    result = run_main(example, db)
    run_ids = ["campaign-ada", "campaign-bea", "campaign-cyd"]
    assert result["states"] == dict.fromkeys(run_ids, "completed")
    assert result["outputs"] == {
        "campaign-ada": ["msg-ada-welcome", "msg-ada-reminder", "msg-ada-last-nudge"],
        "campaign-bea": ["msg-bea-welcome", "msg-bea-last-nudge"],  # active: no reminder
        "campaign-cyd": ["msg-cyd-welcome", "msg-cyd-reminder", "msg-cyd-last-nudge"],
    }
    # When the first engine closed, every run slept on its second timer (day 3 + 7).
    for info in result["before_restart"].values():
        assert (info.state, info.waiting_for) == ("sleeping", "wait-2:v1")
        assert info.wake_at - info.created_at == timedelta(days=10)
    # Each engine executed only its own share; no email went out twice.
    assert result["executed_before"] == {"send welcome": 3, "is_active": 3,
                                         "send reminder": 2}
    assert result["executed_after"] == {"send last-nudge": 3}
    assert len(result["outbox"]) == len(set(result["outbox"])) == 8

    # The recorded send times are days apart, to the microsecond.
    sent_at: dict[str, dict[str, datetime]] = {}
    for run_id, key, recorded_at, since_welcome in result["sends"]:
        sent_at.setdefault(run_id, {})[key] = recorded_at
        assert since_welcome == recorded_at - sent_at[run_id]["welcome:v1"]
    for run_id in ("campaign-ada", "campaign-cyd"):
        times = sent_at[run_id]
        assert times["reminder:v1"] - times["welcome:v1"] == timedelta(days=3)
        assert times["nudge:v1"] - times["reminder:v1"] == timedelta(days=7)
    assert set(sent_at["campaign-bea"]) == {"welcome:v1", "nudge:v1"}
    assert sent_at["campaign-bea"]["nudge:v1"] - sent_at["campaign-bea"]["welcome:v1"] == \
        timedelta(days=10)
    assert result["wall_seconds"] < 5  # ten virtual days; in fact some milliseconds

    # Same file again: everything is recorded, nothing is sent.
    again = run_main(example, db)
    assert again["outputs"] == result["outputs"]
    assert again["executed_before"] == again["executed_after"] == {}
    assert again["outbox"] == []
    assert again["sends"] == result["sends"]


def test_parallel_fetch_caps_concurrency_and_keeps_order(tmp_path: Path) -> None:
    example = load_example("parallel_fetch")
    db = tmp_path / "fetch.duckdb"

    result = run_main(example, db)
    assert result["state"] == "completed"
    assert result["executed"] == {"fetch": 40, "summarise": 1}
    # Eight at once, never more; they finished out of order, the values came in order.
    assert result["most_in_flight"] == example.LIMIT == 8
    assert sorted(result["finished"]) == example.URLS
    assert result["finished"] != example.URLS
    prices = {url: example.price(url) for url in example.URLS}
    assert result["output"] == {
        "pages": 40, "cheapest": min(prices, key=prices.__getitem__),
        "mean_cents": sum(prices.values()) // 40}
    rows = {(key, event): (count, first, last)
            for key, event, count, first, last in result["events"]}
    assert [(key, event) for key, event, *_ in result["events"]] == [
        ("", "run/started"), ("fetch-pages:v1", "group/started"),
        ("fetch:<url>", "step/completed"), ("fetch-pages:v1", "group/completed"),
        ("summarise:v1", "step/completed"), ("", "run/completed")]
    count, first, last = rows[("fetch:<url>", "step/completed")]
    assert count == 40
    assert first == min(example.latency(url) for url in example.URLS[:8])
    # In virtual time: eight fetches at once take at least 1/8 of one-at-a-time.
    one_by_one = sum(example.latency(url) for url in example.URLS)
    assert one_by_one / 8 <= last < one_by_one / 6

    # Same file again: every page is recorded, nothing is fetched.
    again = run_main(example, db)
    assert again["output"] == result["output"]
    assert again["executed"] == {}
    assert again["most_in_flight"] == 0
    assert again["events"] == result["events"]


def test_order_saga_cancelled_mid_way_compensates_in_reverse(tmp_path: Path) -> None:
    example = load_example("order_saga")
    db = tmp_path / "saga.duckdb"
    approval = "shipping-approval:v1"
    reason = "the customer changed their mind"

    result = run_main(example, db)
    assert result["states"] == {"order-2001": "completed", "order-2002": "cancelled"}
    assert result["outcomes"] == {
        "order-2001": {"order": "2001", "state": "shipped",
                       "charge": "ch-order-2001-charge:v1", "tracking": "trk-2001"},
        "order-2002": "replay.Cancelled",
    }
    # Only the cancelled order was refunded and released, once each; it never shipped.
    assert result["executed"] == {"reserve_stock": 2, "charge_card": 2, "ship": 1,
                                  "refund": 1, "release_stock": 1}
    assert result["rejected"] == ["order-2002"]  # the warehouse's late approval
    hour = timedelta(hours=1)
    assert result["history"] == [
        (None, "run/started", timedelta(0), ("2002", "chair-9", 12_500)),
        ("reserve:v1", "step/completed", timedelta(0), "rsv-2002-chair-9"),
        ("charge:v1", "step/completed", timedelta(0), "ch-order-2002-charge:v1"),
        (approval, "suspend/suspended", timedelta(0), None),
        (None, "run/cancel_requested", hour, reason),
        (approval, "suspend/cancelled", hour, reason),
        # The compensations, newest first.
        ("refund:v1", "step/completed", hour, "rf-ch-order-2002-charge:v1"),
        ("release:v1", "step/completed", hour, True),
        (None, "run/cancelled", hour, reason),
    ]

    # Same file again: both runs are finished; nothing runs, nothing is cancelled.
    again = run_main(example, db)
    assert again["outcomes"] == result["outcomes"]
    assert again["states"] == result["states"]
    assert again["executed"] == {}
    assert again["rejected"] == []
    assert again["history"] == result["history"]


def test_batch_children_gathers_failures_of_child_runs(tmp_path: Path) -> None:
    example = load_example("batch_children")
    db = tmp_path / "batch.duckdb"

    result = run_main(example, db)
    assert result["state"] == "completed"
    output = result["output"]
    assert output["failed"] == ["INV-104", "INV-107"]
    assert output["booked"] == [invoice["id"] for invoice in example.INVOICES
                                if invoice["id"] not in output["failed"]]
    assert output["report"].splitlines() == [
        "batch-2024-06: 8 booked, 2 failed",
        "  INV-104: step 'parse:v1' of run 'batch-2024-06/item:3' failed after 1 attempt: "
        "builtins.ValueError: invoice INV-104 has no amount",
        "  INV-107: step 'convert:v1' of run 'batch-2024-06/item:6' failed after 1 attempt: "
        "builtins.LookupError: no exchange rate for XXX",
    ]
    # INV-104 stopped at parse, INV-107 at convert; the others were booked.
    assert result["executed"] == {"parse": 10, "to_euro_cents": 9, "book": 8,
                                  "send_report": 1}
    failed = {"batch-2024-06/item:3", "batch-2024-06/item:6"}
    assert sorted(result["children"]) == sorted(
        (f"batch-2024-06/item:{i}", "process-item:v1",
         "failed" if f"batch-2024-06/item:{i}" in failed else "completed", "batch-2024-06",
         "replay.StepFailed" if f"batch-2024-06/item:{i}" in failed else None)
        for i in range(10))
    assert result["most_under_way"] == example.LIMIT == 4

    # Same file again: the batch and its children are recorded; nothing runs.
    again = run_main(example, db)
    assert again["output"] == output
    assert again["executed"] == {}
    assert again["children"] == result["children"]


def test_progress_batch_watches_notes_and_progress(tmp_path: Path) -> None:
    example = load_example("progress_batch")
    db = tmp_path / "import.duckdb"

    result = run_main(example, db)
    assert result["output"] == {"files": 6, "rows": sum(example.FILES.values())}
    assert result["executed"] == {"import_file": 6}
    updates = result["updates"]
    # A snapshot first, the run's end last, every recorded event in seq order between.
    assert updates[0].kind == "snapshot" and updates[0].info.state == "running"
    assert updates[-1].kind == "event" and updates[-1].event.event == "completed"
    events = [u for u in updates if u.kind == "event"]
    assert [u.seq for u in events] == sorted(u.seq for u in events)
    assert [f"{u.event.kind}/{u.event.event}" for u in events] == [
        "step/completed", "note/recorded"] * 6 + ["run/completed"]
    # One progress update per chunk of 500 rows, each with the step's key.
    progress = [(u.key, u.progress["rows"]) for u in updates if u.kind == "progress"]
    assert progress == [(f"import:{name}", min(rows, done))
                        for name, rows in example.FILES.items()
                        for done in range(500, rows + 500, 500)]
    # A note is the run's status from the event that records it on.
    for update in events:
        if update.event.kind == "note":
            done = update.event.value["done"]
            assert update.info.status_value == {"done": done, "of": 6}
            assert update.info.status_text == f"{done} of 6 files imported"
    assert result["notes"] == [(f"progress:{i}", f'{{"done":{i},"of":6}}') for i in range(1, 7)]
    assert result["status"] == ("completed", "6 of 6 files imported", '{"done":6,"of":6}')

    # Same file again: one snapshot of the finished run, nothing executed or recorded.
    again = run_main(example, db)
    assert [u.kind for u in again["updates"]] == ["snapshot"]
    assert again["updates"][0].info.status_value == {"done": 6, "of": 6}
    assert again["executed"] == {}
    assert again["notes"] == result["notes"]


def test_subscription_renews_for_a_year_then_cancels(tmp_path: Path) -> None:
    example = load_example("subscription")
    db = tmp_path / "subscription.duckdb"

    result = run_main(example, db)
    assert result["output"] == {"customer": "ada", "months": 13, "reason": "moving abroad"}
    assert result["info"].generation == 12
    assert result["executed"] == {"bill": 13, "say_goodbye": 1}
    # One renewal per generation, thirty days apart, from the virtual start.
    assert [(g, invoice) for g, _, invoice in result["renewals"]] == [
        (g, f"inv-ada-{g + 1:02d}") for g in range(13)]
    assert [at - example.START for _, at, _ in result["renewals"]] == [
        g * example.MONTH for g in range(13)]
    # Every generation records the same ten events; the last adds the signal and goodbye.
    assert result["per_generation"] == [(g, 10) for g in range(12)] + [(12, 12)]
    assert result["wall_seconds"] < 5  # a year of virtual time; in fact well under a second

    # Same file again: the run is finished; nothing runs, nothing is signalled.
    again = run_main(example, db)
    assert again["output"] == result["output"]
    assert again["executed"] == {}
    assert again["per_generation"] == result["per_generation"]


def test_stuck_orders_leaves_the_big_orders_waiting_for_a_manager(tmp_path: Path) -> None:
    example = load_example("stuck_orders")
    db = tmp_path / "shop.duckdb"

    result = run_main(example, db)
    big, failed = sorted(example.BIG), example.NO_POSTCODE
    assert result["states"] == {order_id: "suspended" if order_id in big else
                                "failed" if order_id == failed else "completed"
                                for order_id, _, _ in example.orders()}
    status = "waiting for a manager: {:.2f} EUR is over the limit"
    assert result["waiting"] == [(order_id, "approval:v1", status.format(cents / 100))
                                 for order_id, cents in sorted(example.BIG.items())]
    # Every order but the failed one has its payment child; two holds were retried once.
    assert result["children"] == 39
    assert result["executed"] == {"reserve_stock": 40, "fraud_score": 40, "check_address": 40,
                                  "hold_card": 41, "capture": 34, "ship": 34}

    with duckdb.connect(str(db), read_only=True) as con:
        retried = con.execute("SELECT run_id FROM replay_events WHERE event = 'retrying'"
                              " ORDER BY run_id").fetchall()
        deadlines = con.execute("SELECT wake_at - created_at FROM replay_runs "
                                "WHERE state = 'suspended'").fetchall()
    assert retried == [(f"{order_id}/payment:v1",) for order_id in sorted(example.FLAKY_HOLDS)]
    # Each waits two days from its suspension, a few virtual seconds after it was placed.
    assert all(example.APPROVAL_TIMEOUT < wait < example.APPROVAL_TIMEOUT + timedelta(seconds=10)
               for (wait,) in deadlines)

    # Same file again: every order is recorded; nothing runs and nothing changes.
    again = run_main(example, db)
    assert again["states"] == result["states"]
    assert again["waiting"] == result["waiting"]
    assert again["executed"] == {}


# What each script prints when run again on the same file: nothing executes.
SECOND_RUN = {
    "order_pipeline": "step functions executed this time: 0 {}",
    "data_pipeline": "executed in all: {}",
    "approval": "step functions executed this time: {}",
    "reminders": "emails sent by this process: 0",
    "threads_app": "step functions executed this time: {}",
    "parallel_fetch": "step functions executed this time: {}",
    "order_saga": "step functions executed this time: {}",
    "batch_children": "step functions executed this time: {}",
    "progress_batch": "step functions executed this time: {}",
    "subscription": "step functions executed this time: {}",
    "stuck_orders": "step functions executed this time: {}",
}
# What the first run prints besides its states (the virtual-time examples' timelines).
FIRST_RUN = {
    "order_pipeline": "step/completed",
    "data_pipeline": "step/failed",
    "approval": "exp-2   manager-approval:v1   suspend/timed_out +2d 00:00",
    "reminders": "10 days, 0:00:00 of campaign",
    "threads_app": "16 threads filed 16 requests: {'suspended': 16}",
    "parallel_fetch": "fetches under way at once: at most 8 (limit=8)",
    "order_saga": "order-2002: signal rejected",
    "batch_children": "10 child runs, at most 4 under way at once (limit=4)",
    "progress_batch": "event     note/recorded progress:6  status: 6 of 6 files imported",
    "subscription": "sub-ada: completed after 13 generations",
    "stuck_orders": "order-1026: suspended on approval:v1 (waiting for a manager: 1200.00 EUR",
}


@pytest.mark.parametrize("name", sorted(SECOND_RUN))
def test_example_runs_as_a_script(name: str, tmp_path: Path) -> None:
    db = tmp_path / f"{name}.duckdb"
    outputs = []
    for _ in range(2):  # a fresh file, then the same file again
        done = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), str(db)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert db.exists()
    assert "completed" in outputs[0]
    assert FIRST_RUN[name] in outputs[0]
    assert SECOND_RUN[name] not in outputs[0]
    assert SECOND_RUN[name] in outputs[1]


def serve_until_sigterm(tmp_path: Path, db: Path, attempt: int) -> list[str]:
    """Run examples/service.py until it serves with its transcode step running, then
    SIGTERM it; return everything it printed."""
    service = ChildProcess(EXAMPLES / "service.py", [str(db), "0"], tmp_path / "service.stderr")
    try:
        expected = {f"serving {db} (pid {service.proc.pid}); stop with Ctrl-C or "
                    f"kill -TERM {service.proc.pid}",
                    f"transcode-cat: transcode:v1 running (attempt {attempt})",
                    "thumbnail-cat: completed -> ['https://cdn.example.com/cat.jpg']"}
        lines: list[str] = []
        while not expected <= set(lines):  # the three lines come in any order
            line = service.line()
            assert line is not None, service.stderr()
            lines.append(line)
        service.proc.send_signal(signal.SIGTERM)
        while (line := service.line()) is not None:
            lines.append(line)
        assert service.exited() == 0, service.stderr()
        assert lines[-2:] == ["SIGTERM: stopping; running steps get 0s to finish",
                              "stopped cleanly"]
        return lines
    finally:
        service.close()


@pytest.mark.slow
def test_service_stops_cleanly_on_sigterm_and_charges_nothing(tmp_path: Path) -> None:
    db = tmp_path / "service.duckdb"
    serve_until_sigterm(tmp_path, db, attempt=1)
    serve_until_sigterm(tmp_path, db, attempt=2)  # the abandoned attempt runs again

    with duckdb.connect(str(db), read_only=True) as con:
        steps = con.execute("SELECT run_id, key, event, attempt, error_type FROM replay_events "
                            "WHERE kind = 'step' ORDER BY run_id, seq").fetchall()
        states = con.execute("SELECT run_id, state FROM replay_runs ORDER BY run_id").fetchall()
    # Twice stopped in a step with a one-attempt budget, and still running: a clean stop
    # charged nothing. The thumbnail completed in the first process and never ran again.
    assert steps == [
        ("thumbnail-cat", "fetch:v1", "completed", 1, None),
        ("thumbnail-cat", "render:v1", "completed", 1, None),
        ("thumbnail-cat", "publish:v1", "completed", 1, None),
        ("transcode-cat", "fetch:v1", "completed", 1, None),
        ("transcode-cat", "transcode:v1", "abandoned", 1, None),
        ("transcode-cat", "transcode:v1", "started", 2, None),
        ("transcode-cat", "transcode:v1", "abandoned", 2, None),
    ]
    assert states == [("thumbnail-cat", "completed"), ("transcode-cat", "running")]
