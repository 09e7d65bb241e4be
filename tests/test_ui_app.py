"""The web view's ASGI app over a running engine (issue 17): pages, actions, SQL, errors.

The app is called directly (httpx's ASGI transport) in the engine's own trio run, on
real DuckDB files, in virtual time. Pages are checked by the ids and attributes the
browser tests and the page's script rely on; every refused request is checked to
leave the database as it was.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
import trio

import replay
from replay import All, Child, Note, Retry, Sleep, Step, Suspend
from replay._engine._ui_backend import EngineBackend
from replay._ui import App

pytestmark = pytest.mark.both_stores

CALLS: dict[str, int] = {}


def fetch(n: int) -> dict[str, int]:
    return {"n": n, "cents": 100 * n}


def flaky_charge(run_id: str) -> str:
    CALLS[run_id] = CALLS.get(run_id, 0) + 1
    if CALLS[run_id] <= 2:
        raise ConnectionError("card service unreachable")
    return "charged"


@replay.workflow(name="approval")
def approval(n: int) -> Generator[Any, Any, Any]:
    yield Step("fetch:v1", fetch, n)
    yield Note("note:v1", {"stage": "waiting"}, text="checked")
    decision = yield Suspend("approval:v1", status="waiting for a manager",
                             timeout=timedelta(days=2))
    return {"n": n, "approved": decision}


@replay.workflow(name="flaky")
def flaky(run_id: str) -> Generator[Any, Any, Any]:
    receipt = yield Step("charge:v1", flaky_charge, run_id,
                         retry=Retry(attempts=2, backoff=5.0))
    return receipt


@replay.workflow(name="kid")
def kid(n: int) -> Generator[Any, Any, Any]:
    yield Step("kid-step:v1", fetch, n)
    return n


@replay.workflow(name="parent")
def parent(n: int) -> Generator[Any, Any, Any]:
    yield All("both:v1", [Step("left:v1", fetch, 1), Step("right:v1", fetch, 2)])
    yield Child("kid:v1", kid, n)
    yield Sleep("nap:v1", timedelta(hours=3))
    return "done"


@replay.workflow(name="quick")
def quick(n: int) -> Generator[Any, Any, Any]:
    yield Step("one:v1", fetch, n)
    return n


WORKFLOWS = [approval, flaky, kid, parent, quick]


@asynccontextmanager
async def served(db: str) -> AsyncIterator[tuple[replay.Engine, httpx.AsyncClient, App]]:
    """An engine on `db` with runs a1 (suspended), f1 (failed), p1 (sleeping), q1."""
    CALLS.clear()
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none",
                                  shutdown_timeout=0) as engine:
        await (await engine.start(approval, 1, run_id="a1")).wait()
        await trio.sleep(1)
        await (await engine.start(flaky, "f1", run_id="f1")).wait()
        await trio.sleep(1)
        await engine.start(parent, 7, run_id="p1")
        await engine.get_run("p1").wait(until="sleeping")
        await trio.sleep(1)
        await (await engine.start(quick, 1, run_id="q1")).wait()
        app = App(EngineBackend(engine))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                                     follow_redirects=False) as client:
            yield engine, client, app


def element(html: str, ident: str) -> str:
    """Return the opening tag and text of the element with id `ident`."""
    match = re.search(rf'<(\w+)[^>]*\bid="{re.escape(ident)}"[^>]*>(.*?)</\1>', html, re.S)
    assert match is not None, f"no #{ident} in the page"
    return match.group(0)


def text_of(html: str, ident: str) -> str:
    return re.sub(r"<[^>]+>", "", element(html, ident).split(">", 1)[1]).rsplit("<", 1)[0]


def message(page: str) -> tuple[str, str]:
    """Return the kind (ok, error) and the text of the page's #message."""
    match = re.search(r'<div id="message" class="(ok|error)"[^>]*>(.*?)</div>', page, re.S)
    assert match is not None, "no #message on the page"
    return match.group(1), html.unescape(match.group(2))


def timeline_of(page: str) -> str:
    return page[page.index('<div id="timeline">'):page.index("<h2>Input")]


def token(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


def run_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-run-id="([^"]+)"', html)


async def events_of(engine: replay.Engine, run_id: str) -> list[tuple[Any, ...]]:
    return await engine.sql("SELECT seq, kind, event FROM replay_events WHERE run_id = ? "
                            "ORDER BY seq", [run_id])


# -- the runs list --


async def test_ui_runs_list_counts_each_state_and_lists_newest_first(db: str) -> None:
    async with served(db) as (_, client, _app):
        page = (await client.get("/")).text
        counts = dict(re.findall(r'data-state="(\w*)"[^>]*>\w+<span class="count">(\d+)', page))
        assert counts == {"": "5", "running": "0", "sleeping": "1", "suspended": "1",
                          "completed": "2", "failed": "1", "cancelled": "0"}
        assert run_ids(page) == ["q1", "p1", "p1/kid:v1", "f1", "a1"]  # ties: by run id
        assert '<a href="/run?id=p1%2Fkid%3Av1">p1/kid:v1</a>' in page
        assert 'id="filters"' in page and 'id="filter-submit"' in page


async def test_ui_runs_list_filters_by_state_workflow_search_and_time(db: str) -> None:
    async with served(db) as (engine, client, _app):
        assert run_ids((await client.get("/?state=suspended")).text) == ["a1"]
        assert run_ids((await client.get("/?workflow=parent")).text) == ["p1"]
        assert run_ids((await client.get("/?q=kid")).text) == ["p1/kid:v1"]
        created = (await engine.sql("SELECT created_at FROM replay_runs WHERE run_id = 'p1'"
                                    ))[0][0]
        since = (await client.get("/", params={"since": created.isoformat()})).text
        assert run_ids(since) == ["q1", "p1", "p1/kid:v1"]
        # The counts follow the other filters, the list the state too.
        both = (await client.get("/?workflow=approval&state=completed")).text
        assert run_ids(both) == [] and "no runs match" in both
        assert re.search(r'data-state="suspended"[^>]*>suspended<span class="count">1', both)


async def test_ui_runs_list_refuses_a_bad_filter_with_a_message(db: str) -> None:
    async with served(db) as (_, client, _app):
        for query, said in (("state=stuck", "unknown state 'stuck'"),
                            ("since=yesterday", "since must be a date or time"),
                            ("page=0", "page must be a whole number from 1")):
            answer = await client.get("/?" + query)
            assert answer.status_code == 400
            kind, text = message(answer.text)
            assert kind == "error" and said in text


async def test_ui_runs_list_pages_by_fifty(db: str) -> None:
    async with served(db) as (engine, client, _app):
        for i in range(55):
            await (await engine.start(quick, i, run_id=f"bulk-{i:02d}")).wait()
            await trio.sleep(1)
        first = (await client.get("/?q=bulk")).text
        assert run_ids(first)[:2] == ["bulk-54", "bulk-53"] and len(run_ids(first)) == 50
        assert re.search(r'id="next-page" href="/\?[^"]*page=2', first)
        assert 'id="prev-page"' not in first
        second = (await client.get("/?q=bulk&page=2")).text
        assert run_ids(second) == [f"bulk-{i:02d}" for i in range(4, -1, -1)]
        assert 'id="prev-page"' in second and 'id="next-page"' not in second


# -- a run's page --


async def test_ui_run_page_shows_state_wait_note_input_and_output(db: str) -> None:
    async with served(db) as (_, client, _app):
        page = (await client.get("/run", params={"id": "a1"})).text
        assert element(page, "run-state") == (
            '<span class="state" id="run-state" data-state="suspended">suspended</span>')
        assert text_of(page, "waiting").startswith("approval:v1 timing out at ")
        assert text_of(page, "status-note") == "waiting for a manager"
        assert text_of(page, "input") == "[\n  1\n]"
        assert text_of(page, "output") == ""
        done = (await client.get("/run", params={"id": "q1"})).text
        assert text_of(done, "output") == "1" and text_of(done, "waiting") == ""


async def test_ui_run_page_events_table_has_every_event_with_its_value(db: str) -> None:
    async with served(db) as (engine, client, _app):
        page = (await client.get("/run", params={"id": "a1"})).text
        seqs = [int(s) for s in re.findall(r'<tr data-seq="(\d+)"', page)]
        assert seqs == [row[0] for row in await events_of(engine, "a1")]
        assert "<code>{&quot;n&quot;:1,&quot;cents&quot;:100}</code>" in page
        assert f'data-last-seq="{seqs[-1]}"' in page


async def test_ui_run_page_timeline_has_lanes_attempts_waits_groups_and_children(
        db: str) -> None:
    async with served(db) as (_, client, _app):
        flaky_page = (await client.get("/run", params={"id": "f1"})).text
        lane = re.search(r'<div class="lane" data-key="charge:v1".*?</div>', flaky_page).group(0)
        assert re.findall(r'class="(segment[^"]*)" data-outcome="(\w+)"', lane) == [
            ("segment", "failed"), ("segment wait", "backoff"), ("segment", "failed")]
        parent_page = (await client.get("/run", params={"id": "p1"})).text
        timeline = timeline_of(parent_page)
        assert re.findall(r'class="lane[^"]*" data-key="([^"]+)"', timeline) == [
            "both:v1", "left:v1", "right:v1", "kid:v1", "nap:v1"]
        group = timeline[timeline.index('<div class="group" data-key="both:v1">'):
                         timeline.index('data-key="kid:v1"')]
        assert 'data-key="left:v1"' in group and 'data-key="right:v1"' in group
        assert ('<a class="child-link" href="/run?id=p1%2Fkid%3Av1">p1/kid:v1</a> '
                '<span class="state" data-state="completed">completed</span>') in timeline
        nap = re.search(r'data-key="nap:v1".*?</div>', timeline).group(0)
        assert 'class="segment wait open" data-outcome="waiting"' in nap  # hours to go
        suspended = timeline_of((await client.get("/run", params={"id": "a1"})).text)
        assert re.search(r'data-key="approval:v1".*?class="segment wait open" '
                         r'data-outcome="waiting"', suspended)
        assert re.search(r'data-key="note:v1".*?data-outcome="note"', suspended)
        fragment = (await client.get("/run/timeline", params={"id": "p1"})).text
        assert 'data-key="kid:v1"' in fragment and "<html" not in fragment


async def test_ui_child_run_page_links_its_parent(db: str) -> None:
    async with served(db) as (_, client, _app):
        page = (await client.get("/run", params={"id": "p1/kid:v1"})).text
        assert '<a id="parent-link" href="/run?id=p1">p1</a>' in page


async def test_ui_run_page_offers_the_actions_that_apply(db: str) -> None:
    async with served(db) as (_, client, _app):
        suspended = (await client.get("/run", params={"id": "a1"})).text
        assert 'id="signal"' in suspended and 'id="cancel"' in suspended
        assert 'id="resume"' not in suspended
        assert re.search(r'name="key" value="approval:v1"', suspended)
        failed = (await client.get("/run", params={"id": "f1"})).text
        assert 'id="resume"' in failed and 'id="signal"' not in failed
        assert 'id="cancel"' not in failed
        done = (await client.get("/run", params={"id": "q1"})).text
        assert 'class="actions"' not in done
        for form in ("signal", "cancel"):
            tag = re.search(rf'<form id="{form}"[^>]*>', suspended).group(0)
            assert 'method="post"' in tag and "data-confirm=" in tag


async def test_ui_unknown_run_is_a_404_page(db: str) -> None:
    async with served(db) as (_, client, _app):
        for path in ("/run", "/run/timeline", "/run/events"):
            answer = await client.get(path, params={"id": "nope<script>"})
            assert answer.status_code == 404
            kind, text = message(answer.text)
            assert kind == "error" and text.startswith("run not found: there is no run with "
                                                       "run_id 'nope<script>'")
            assert "nope<script>" not in answer.text
        missing = await client.get("/run")
        assert missing.status_code == 400 and "no run id" in message(missing.text)[1]


async def test_ui_unknown_route_and_wrong_method(db: str) -> None:
    async with served(db) as (_, client, _app):
        answer = await client.get("/admin")
        assert answer.status_code == 404
        assert message(answer.text) == ("error", "there is no page at /admin: start from the "
                                        "runs page")
        wrong = await client.post("/run", params={"id": "a1"})
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
        assert message(wrong.text)[1] == "/run takes GET, not POST"
        assert (await client.get("/run/signal")).status_code == 405


async def test_ui_pages_escape_what_they_show_and_load_nothing_from_elsewhere(
        db: str) -> None:
    async with served(db) as (engine, client, _app):
        await (await engine.start(quick, 2, run_id='<img src=x onerror="alert(1)">')).wait()
        page = (await client.get("/")).text
        assert "<img" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
        run = await client.get("/run", params={"id": '<img src=x onerror="alert(1)">'})
        assert run.status_code == 200 and "<img" not in run.text
        for answer in (run, await client.get("/"), await client.get("/sql")):
            assert not re.search(r'(src|href)="(https?:)?//', answer.text)
            policy = answer.headers["content-security-policy"]
            assert "script-src 'nonce-" in policy and "default-src 'self'" in policy
            nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
            assert re.findall(r"<script[^>]*>", answer.text) == [f'<script nonce="{nonce}">']


async def test_ui_refuses_another_host_name(db: str) -> None:
    async with served(db) as (_, client, _app):
        answer = await client.get("/", headers={"host": "evil.example:8077"})
        assert answer.status_code == 403
        assert message(answer.text)[1] == ("this server answers to 127.0.0.1, not to "
                                           "'evil.example:8077': open the address that "
                                           "replay printed")
        assert (await client.get("/", headers={"host": "localhost"})).status_code == 200


async def test_ui_page_of_a_closed_engine_says_so(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none") as engine:
        app = App(EngineBackend(engine))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        answer = await client.get("/")
    assert answer.status_code == 503
    kind, text = message(answer.text)
    assert kind == "error" and text.endswith("; reload the page once an engine runs")
