"""The web view end to end: headless Chromium on the pages served over loopback HTTP.

The shop of examples/stuck_orders.py is the data: 40 orders (and their payment child
runs), four waiting for a manager's approval, one failed. Its engine runs in another
process with ``--ui 0`` (``open_engine(ui=("127.0.0.1", 0))``) and serves the page;
``replay ui`` serves it too, through that engine's live channel, and from a second
file with the same orders that no engine holds. The tests act as a user would (clicks, forms, the
confirmation dialog) and check the outcome in the page and in the engine, which they
reach through ``replay.connect``. Each waiting order serves one test, so that the
tests do not depend on each other's order:

* order-1012 is approved from the page;
* order-1019 is approved from the page ``replay ui`` serves through the live channel;
* order-1026 is approved from outside while its page is open (the live update);
* order-1033 is cancelled from the page, and releases the hold on the card;
* order-1024, the failed one, is resumed from the page and fails again;
* order-1038 never changes: the bad input and the screenshots.

Nothing sleeps: the tests wait for the servers' lines, for the browser through
Playwright's expectations, and for the engine through its client.

With ``REPLAY_SCREENSHOTS=1`` the screenshots are also written to docs/images/.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import duckdb
import pytest
import trio
import trio.testing
from ui_browser import (
    EXAMPLE,
    Server,
    browser_context,
    chromium,
    hang_guard,
    replay_ui,
    screenshot,
    serve_example,
)

import replay

try:
    from playwright.sync_api import expect
except ImportError:
    if os.environ.get("CI"):  # CI must run these tests: a missing Playwright fails it
        raise
    pytest.skip('Playwright is not installed: pip install -e ".[dev]"',
                allow_module_level=True)

pytestmark = pytest.mark.slow

APPROVE = '{"approved": true, "by": "maria"}'
HANG_SECONDS = 90  # a test takes a few seconds; one that hangs is stopped after this
SERVERS: list[Server] = []  # what the hang guard stops, besides the browser


@dataclass
class Shop:
    """The shop's two files, and the servers started on them (not waited for yet)."""

    live: Path  # held by the example's engine, which serves the page
    offline: Path  # held by nobody; replay ui reads it
    runs: list[tuple[str, str, str, datetime]]  # offline's run_id, workflow, state, created_at
    engine: Server
    offline_ui: Server


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_stuck_orders_ui", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chromium()  # skip (or fail under CI) before building anything
    return tmp_path_factory.mktemp("ui")


@pytest.fixture(scope="module")
def context(shop: Shop) -> Iterator[Any]:  # the servers start while the browser does
    with browser_context() as browser:
        yield browser


@pytest.fixture(autouse=True)
def hangs_fail() -> Iterator[None]:
    with hang_guard(HANG_SECONDS, SERVERS):
        yield


@contextmanager
def serving(server: Server) -> Iterator[Server]:
    """Yield the server, then stop it and check that it stopped cleanly."""
    SERVERS.append(server)
    try:
        yield server
    finally:
        SERVERS.remove(server)
        assert server.stop() == 0, server.stderr


@pytest.fixture
def page(context: Any) -> Iterator[Any]:
    page = context.new_page()
    yield page
    page.close()


@pytest.fixture(scope="module")
def shop(folder: Path) -> Iterator[Shop]:
    live, offline = folder / "shop.duckdb", folder / "offline.duckdb"
    # The example places the morning's orders in its file, then serves it; meanwhile
    # this process places the same orders, in virtual time, in a file for replay ui.
    with serving(serve_example(live, folder / "engine.stderr")) as engine:
        trio.run(load_example().main, str(offline),
                 clock=trio.testing.MockClock(autojump_threshold=0))
        with duckdb.connect(str(offline), read_only=True) as con:
            runs = con.execute("SELECT run_id, workflow, state, created_at FROM replay_runs "
                               "ORDER BY created_at DESC, run_id").fetchall()
        with serving(replay_ui(offline, folder / "offline-ui.stderr")) as offline_ui:
            yield Shop(live, offline, runs, engine, offline_ui)
    assert engine.lines[-1] == "stopped"


@pytest.fixture(scope="module")
def engine(shop: Shop) -> Server:
    return shop.engine.ready()


@pytest.fixture(scope="module")
def offline_ui(shop: Shop) -> Server:
    return shop.offline_ui.ready()


@pytest.fixture(scope="module")
def client(engine: Server, shop: Shop) -> Iterator[replay.Client]:
    with replay.connect(shop.live) as client:
        yield client


@pytest.fixture(scope="module")
def live_ui(engine: Server, shop: Shop, folder: Path) -> Iterator[Server]:
    with serving(replay_ui(shop.live, folder / "live-ui.stderr")) as server:
        yield server.ready()


# -- helpers --


def run_page(server: Server, run_id: str) -> str:
    return server.url + "run?" + urlencode({"id": run_id})


def shown_runs(page: Any) -> list[str]:
    return page.locator("table#runs tr[data-run-id]").evaluate_all(
        "rows => rows.map(row => row.dataset.runId)")


def shown_counts(page: Any) -> dict[str, int]:
    """The counts per state the page shows (the states with runs), checked to add up."""
    counts = {link.get_attribute("data-state"): int(link.locator(".count").inner_text())
              for link in page.locator("#counts a[data-state]").all()}
    everything = counts.pop("", None)  # the "all" link, when the page has one
    assert everything in (None, sum(counts.values()))
    return {state: n for state, n in counts.items() if n}


def choose(page: Any, form: str, name: str, value: str) -> None:
    """Set a filter field, whether the page made it a <select> or an <input>."""
    field = page.locator(f"{form} [name={name}]")
    if field.evaluate("field => field.tagName") == "SELECT":
        field.select_option(value)
    else:
        field.fill(value)


def events_of(client: replay.Client, run_id: str) -> list[tuple[Any, ...]]:
    return client.sql("SELECT kind || '/' || event, key, attempt, value_json FROM replay_events "
                      "WHERE run_id = ? ORDER BY seq", [run_id])


def outcomes(page: Any, lane: str, wait: bool = False) -> list[str]:
    """The data-outcome of a lane's attempt segments (or of its waits)."""
    which = ".segment.wait" if wait else ".segment:not(.wait):not(.point)"
    return page.locator(f'#timeline .lane[data-key="{lane}"] {which}').evaluate_all(
        "segments => segments.map(s => s.dataset.outcome)")


def colour(page: Any, selector: str) -> str:
    return page.locator(selector).first.evaluate("e => getComputedStyle(e).backgroundColor")


def send_signal(page: Any, payload: str, key: str = "approval:v1") -> list[str]:
    """Fill the page's signal form, accept the confirmation, submit; return the dialogs."""
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.accept()

    page.locator("form#signal [name=key]").fill(key)
    page.locator("form#signal [name=payload]").fill(payload)
    page.once("dialog", accept)
    with page.expect_navigation():
        page.locator("#signal-submit").click()
    return dialogs


# -- the runs list --


def test_the_runs_list_counts_filters_and_links_to_a_run(page: Any, engine: Server,
                                                         client: replay.Client,
                                                         folder: Path) -> None:
    page.goto(engine.url)
    expect(page.locator("#live")).to_have_attribute("data-live", "on")
    counted = dict(client.sql("SELECT state, count(*) FROM replay_runs GROUP BY state"))
    assert shown_counts(page) == counted
    newest = [info.run_id for info in client.runs(limit=50)]
    assert shown_runs(page) == newest  # newest first, 50 a page
    expect(page.locator("a#next-page")).to_be_visible()
    screenshot(page, "ui-runs.png", folder)

    choose(page, "form#filters", "state", "suspended")
    page.locator("#filter-submit").click()
    expect(page).to_have_url(re.compile(r"[?&]state=suspended(&|$)"))
    waiting = {info.run_id for info in client.runs(state="suspended")}
    assert "order-1038" in waiting
    assert set(shown_runs(page)) == waiting

    choose(page, "form#filters", "state", "")
    page.locator("form#filters [name=q]").fill("1024")
    page.locator("#filter-submit").click()
    expect(page.locator("table#runs tr[data-run-id]")).to_have_count(1)
    row = page.locator('table#runs tr[data-run-id="order-1024"]')
    expect(row).to_contain_text("failed")
    row.locator('a[href^="/run?id="]').first.click()
    expect(page).to_have_url(run_page(engine, "order-1024"))
    expect(page.locator("#run-state")).to_have_text("failed")


# -- a run's page --


def test_a_waiting_run_shows_why_on_its_timeline(page: Any, engine: Server,
                                                 client: replay.Client, folder: Path) -> None:
    info = client.status("order-1038")
    page.goto(run_page(engine, "order-1038"))
    expect(page.locator("#run-state")).to_have_text("suspended")
    expect(page.locator("#run-state")).to_have_attribute("data-state", "suspended")
    waiting = page.locator("#waiting")
    expect(waiting).to_contain_text("approval:v1")
    assert info.wake_at is not None
    expect(waiting).to_contain_text(f"{info.wake_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}")
    expect(page.locator("#status-note")).to_contain_text(
        "waiting for a manager: 899.00 EUR is over the limit")
    expect(page.locator("#input")).to_contain_text('"order-1038"')
    # The actions a waiting run allows: signal and cancel, not resume.
    expect(page.locator("form#signal")).to_have_count(1)
    expect(page.locator("form#cancel")).to_have_count(1)
    expect(page.locator("form#resume")).to_have_count(0)

    # One lane per key, the group's members nested in it, each attempt a segment.
    lanes = page.locator("#timeline .lane[data-key]").evaluate_all(
        "lanes => lanes.map(lane => lane.dataset.key)")
    assert sorted(lanes) == sorted(["reserve:v1", "checks:v1", "fraud:v1", "address:v1",
                                    "payment:v1", "approval:v1"])
    group = page.locator('#timeline .group[data-key="checks:v1"]')
    for member in ("fraud:v1", "address:v1"):
        expect(group.locator(f'.lane[data-key="{member}"]')).to_have_count(1)
    expect(page.locator('#timeline .group .lane[data-key="reserve:v1"]')).to_have_count(0)
    for key in ("reserve:v1", "fraud:v1", "address:v1"):
        assert outcomes(page, key) == ["completed"]
    assert outcomes(page, "approval:v1", wait=True) == ["waiting"]
    # The events table: every recorded event, with its value.
    expect(page.locator("table#events tr[data-seq]")).to_have_count(
        len(events_of(client, "order-1038")))
    expect(page.locator("table#events")).to_contain_text('"rsv-order-1038"')
    screenshot(page, "ui-run.png", folder)

    # The payment child run is linked; its page shows the retried card hold.
    link = page.locator('#timeline .lane[data-key="payment:v1"] a.child-link')
    href = urlsplit(link.get_attribute("href"))
    assert (href.path, parse_qs(href.query)) == ("/run", {"id": ["order-1038/payment:v1"]})
    link.click()
    expect(page.locator("#run-state")).to_have_text("completed")
    assert outcomes(page, "hold:v1") == ["failed", "completed"]
    failed = colour(page, '.lane[data-key="hold:v1"] .segment[data-outcome=failed]')
    completed = colour(page, '.lane[data-key="hold:v1"] .segment[data-outcome=completed]')
    assert failed != completed
    assert "rgba(0, 0, 0, 0)" not in (failed, completed)  # both drawn in a colour
    expect(page.locator("form#signal, form#resume, form#cancel")).to_have_count(0)


def test_a_failed_run_shows_the_failed_attempt(page: Any, engine: Server) -> None:
    page.goto(run_page(engine, "order-1024"))
    expect(page.locator("#run-state")).to_have_text("failed")
    assert set(outcomes(page, "address:v1")) == {"failed"}  # once, or again if resumed
    assert outcomes(page, "reserve:v1") == ["completed"]
    expect(page.locator('#timeline .lane[data-key="payment:v1"]')).to_have_count(0)
    expect(page.locator("form#resume")).to_have_count(1)


# -- live updates and actions --


def test_a_live_update_arrives_while_the_run_executes(page: Any, engine: Server,
                                                      client: replay.Client) -> None:
    page.goto(run_page(engine, "order-1026"))
    expect(page.locator("#live")).to_have_attribute("data-live", "on")
    expect(page.locator("#run-state")).to_have_text("suspended")
    rows = page.locator("table#events tr[data-seq]").count()
    # Every state the page shows from now on, and a mark a reload would wipe out.
    page.evaluate("""() => {
        window.kept = true; window.states = [];
        new MutationObserver(() => {
            const state = document.querySelector('#run-state').textContent.trim();
            if (window.states[window.states.length - 1] !== state) window.states.push(state);
        }).observe(document.body, {subtree: true, childList: true, characterData: true,
                                   attributes: true});
    }""")

    client.signal("order-1026", "approval:v1", {"approved": True, "by": "dario"})

    expect(page.locator("#run-state")).to_have_text("completed", timeout=30_000)
    expect(page.locator("#run-state")).to_have_attribute("data-state", "completed")
    assert page.evaluate("window.kept") is True  # updated in place, not reloaded
    states = page.evaluate("window.states")
    assert states[-1] == "completed"
    assert "running" in states, states  # seen while the capture and the shipping ran
    recorded = events_of(client, "order-1026")
    expect(page.locator("table#events tr[data-seq]")).to_have_count(len(recorded))
    assert len(recorded) > rows
    expect(page.locator("table#events")).to_contain_text('"trk-order-1026"')
    # A finished run takes no signal and no cancellation: the page drops those forms.
    expect(page.locator("form#signal")).to_have_count(0)
    expect(page.locator("form#cancel")).to_have_count(0)
    assert client.result("order-1026", timeout=30)["state"] == "shipped"


def test_a_signal_sent_from_the_page_resumes_the_run(page: Any, engine: Server,
                                                     client: replay.Client) -> None:
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url)
            if request.method == "POST" else None)
    page.goto(run_page(engine, "order-1012"))
    expect(page.locator("#run-state")).to_have_text("suspended")

    # Dismissing the confirmation sends nothing.
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.type), dialog.dismiss()))
    page.locator("form#signal [name=key]").fill("approval:v1")
    page.locator("form#signal [name=payload]").fill(APPROVE)
    page.locator("#signal-submit").click()
    assert asked == ["confirm"]
    expect(page.locator("#run-state")).to_have_text("suspended")

    assert send_signal(page, APPROVE)[0].startswith("confirm: ")
    assert len(posts) == 1, posts
    expect(page.locator("#message.ok")).to_be_visible()
    expect(page.locator("#run-state")).to_have_text("completed", timeout=30_000)

    assert client.result("order-1012", timeout=30) == {
        "order": "order-1012", "state": "shipped", "payment": "paid-order-1012-64000",
        "tracking": "trk-order-1012"}
    signals = [row for row in events_of(client, "order-1012") if row[0].startswith("signal/")]
    assert signals == [("signal/signalled", "approval:v1", None,
                        '{"approved":true,"by":"maria"}')]


def test_resume_from_the_page_runs_the_failed_step_again(page: Any, engine: Server,
                                                         client: replay.Client) -> None:
    page.goto(run_page(engine, "order-1024"))
    expect(page.locator("#run-state")).to_have_text("failed")
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():
        page.locator("#resume-submit").click()
    expect(page.locator("#message.ok")).to_be_visible()
    # The address still has no postcode: the resumed run fails again, at attempt 2.
    assert client.wait("order-1024", timeout=30).state == "failed"
    failures = [row[2] for row in events_of(client, "order-1024")
                if row[:2] == ("step/failed", "address:v1")]
    assert failures == [1, 2]
    page.reload()
    assert outcomes(page, "address:v1") == ["failed", "failed"]


def test_cancel_from_the_page_lets_the_workflow_compensate(page: Any, engine: Server,
                                                           client: replay.Client) -> None:
    page.goto(run_page(engine, "order-1033"))
    expect(page.locator("#run-state")).to_have_text("suspended")
    page.locator("form#cancel [name=reason]").fill("the customer called to cancel")
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():
        page.locator("#cancel-submit").click()
    expect(page.locator("#message.ok")).to_be_visible()
    expect(page.locator("#run-state")).to_have_text("cancelled", timeout=30_000)

    info = client.wait("order-1033", timeout=30)
    assert (info.state, info.error_type) == ("cancelled", "replay.Cancelled")
    events = [row[:2] for row in events_of(client, "order-1033") if row[0] != "step/started"]
    assert events[-4:] == [("run/cancel_requested", None), ("suspend/cancelled", "approval:v1"),
                           ("step/completed", "release:v1"), ("run/cancelled", None)]
    page.reload()
    assert outcomes(page, "release:v1") == ["completed"]
    expect(page.locator("form#signal, form#resume, form#cancel")).to_have_count(0)


# -- bad input: a clear message, and nothing changes --


def test_an_unknown_run_is_a_404_page(page: Any, engine: Server) -> None:
    response = page.goto(run_page(engine, "order-9999"))
    assert response.status == 404
    message = page.locator("#message.error")
    expect(message).to_contain_text("order-9999")
    expect(message).to_contain_text("not found")


def test_a_malformed_payload_is_refused_and_changes_nothing(page: Any, engine: Server,
                                                           client: replay.Client) -> None:
    before = events_of(client, "order-1038")
    page.goto(run_page(engine, "order-1038"))
    send_signal(page, '{"approved": yes}')
    expect(page.locator("#message.error")).to_contain_text("JSON")
    expect(page.locator("#run-state")).to_have_text("suspended")
    assert client.status("order-1038").state == "suspended"
    assert events_of(client, "order-1038") == before  # no signal recorded


def test_a_stale_csrf_token_is_refused_and_changes_nothing(page: Any, engine: Server,
                                                          offline_ui: Server,
                                                          client: replay.Client) -> None:
    before = events_of(client, "order-1038")
    # A token from another server (as after a restart), then a tampered one.
    page.goto(run_page(offline_ui, "order-1038"))
    other = page.locator("form#signal input[name=csrf]").input_value()
    page.goto(run_page(engine, "order-1038"))
    own = page.locator("form#signal input[name=csrf]").input_value()
    for stale in (other, own[:-4] + ("0000" if not own.endswith("0000") else "1111")):
        page.goto(run_page(engine, "order-1038"))
        page.locator("form#signal input[name=csrf]").evaluate(
            "(field, stale) => { field.value = stale; }", stale)
        send_signal(page, APPROVE)
        expect(page.locator("#message.error")).to_contain_text(
            re.compile(r"token|csrf", re.IGNORECASE))
        expect(page.locator("#run-state")).to_have_text("suspended")
    assert client.status("order-1038").state == "suspended"
    assert events_of(client, "order-1038") == before


def test_the_sql_box_runs_examples_and_refuses_writes(page: Any, engine: Server,
                                                      client: replay.Client,
                                                      folder: Path) -> None:
    count = "SELECT count(*) FROM replay_events"
    before = client.sql(count)
    page.goto(engine.url + "sql")
    box = page.locator("textarea[name=query]")
    page.locator("a.example", has_text="Runs stuck waiting").click()
    expect(box).to_have_value(re.compile(r"^SELECT run_id,"))
    page.locator("#sql-submit").click()
    row = page.locator("table#sql-result tr", has_text="order-1038")
    expect(row).to_contain_text("approval:v1")
    expect(row).to_contain_text("waiting for a manager: 899.00 EUR is over the limit")
    expect(page.locator("#message.error")).to_have_count(0)
    screenshot(page, "ui-sql.png", folder)

    for query in ("DELETE FROM replay_events WHERE run_id = 'order-1038'",
                  "SELECT 1; DROP VIEW replay_runs"):
        page.locator("textarea[name=query]").fill(query)
        page.locator("#sql-submit").click()
        expect(page.locator("#message.error")).to_contain_text(
            re.compile(r"only reads|exactly one query"))
        expect(page.locator("table#sql-result")).to_have_count(0)
    assert client.sql(count) == before


# -- replay ui: on a file no engine holds, and through a running engine --


def test_replay_ui_reads_a_file_no_engine_holds(page: Any, offline_ui: Server,
                                                shop: Shop) -> None:
    assert offline_ui.found["db"] == str(shop.offline)
    page.goto(offline_ui.url)
    expect(page.locator("#live")).to_have_attribute("data-live", "off")
    states: dict[str, int] = {}
    for _, _, state, _ in shop.runs:
        states[state] = states.get(state, 0) + 1
    assert shown_counts(page) == states

    # Newest first, 50 a page.
    newest = [run_id for run_id, _, _, _ in shop.runs]
    assert shown_runs(page) == newest[:50]
    expect(page.locator("a#prev-page")).to_have_count(0)
    page.locator("a#next-page").click()
    expect(page.locator("table#runs tr[data-run-id]")).to_have_count(len(newest) - 50)
    assert shown_runs(page) == newest[50:]
    expect(page.locator("a#next-page")).to_have_count(0)
    page.locator("a#prev-page").click()
    assert shown_runs(page) == newest[:50]

    # By workflow, and since a time.
    choose(page, "form#filters", "workflow", "payment:v1")
    page.locator("#filter-submit").click()
    expect(page.locator("table#runs tr[data-run-id]")).to_have_count(
        sum(workflow == "payment:v1" for _, workflow, _, _ in shop.runs))
    since = next(created for run_id, _, _, created in shop.runs if run_id == "order-1030")
    page.goto(offline_ui.url + "?" + urlencode({"since": since.isoformat()}))
    assert shown_runs(page) == [run_id for run_id, _, _, created in shop.runs
                                if created >= since]

    page.goto(run_page(offline_ui, "order-1019"))
    expect(page.locator("#run-state")).to_have_text("suspended")
    expect(page.locator('#timeline .lane[data-key="approval:v1"]')).to_have_count(1)


def test_replay_ui_signals_through_the_running_engine(page: Any, live_ui: Server,
                                                      engine: Server,
                                                      client: replay.Client) -> None:
    assert live_ui.found["how"] == f"live: engine pid {engine.pid}"
    page.goto(run_page(live_ui, "order-1019"))
    expect(page.locator("#live")).to_have_attribute("data-live", "on")
    expect(page.locator("#run-state")).to_have_text("suspended")
    send_signal(page, APPROVE)
    expect(page.locator("#message.ok")).to_be_visible()
    expect(page.locator("#run-state")).to_have_text("completed", timeout=30_000)
    assert client.result("order-1019", timeout=30)["state"] == "shipped"
