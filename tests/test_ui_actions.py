"""The web view's actions and SQL page over a running engine (issue 17).

Signal, resume and cancel each go through a form with the server's token and end in a
redirect to the run's page with a one-time message; every refused request (malformed
JSON, no or a stale token, a request from another site, a finished run, a query that
is not read-only) answers with a clear message and leaves the events as they were. The
SQL page offers the cookbook's queries in the dialect of the store it reads, and each
store refuses what it refuses in its own way.
"""

from __future__ import annotations

import html
import re

import httpx
import pytest
from test_cookbook import recipes
from test_ui_app import events_of, message, served, token

from replay._engine._ui_backend import EngineBackend
from replay._pg._url import is_postgres_url
from replay._ui import App
from replay._ui._examples import DUCKDB, POSTGRES, examples

pytestmark = pytest.mark.both_stores


async def form(client: httpx.AsyncClient, path: str, run_id: str, **fields: str
               ) -> httpx.Response:
    """Post an action's form with the token of the run's page."""
    page = (await client.get("/run", params={"id": run_id})).text
    return await client.post(path, data={"csrf": token(page), "id": run_id, **fields})


async def test_ui_signal_resumes_a_suspended_run_and_flashes_once(db: str) -> None:
    async with served(db) as (engine, client, _app):
        answer = await form(client, "/run/signal", "a1", key="approval:v1",
                            payload='{"approved": true, "by": "maria"}')
        assert answer.status_code == 303
        location = answer.headers["location"]
        assert re.fullmatch(r"/run\?id=a1&flash=[\w-]+", location)
        assert await engine.get_run("a1").result() == {
            "n": 1, "approved": {"approved": True, "by": "maria"}}
        shown = (await client.get(location)).text
        kind, text = message(shown)
        assert kind == "ok" and text.startswith(
            "signal for 'approval:v1' recorded in run 'a1' by the engine in process ")
        assert 'data-state="completed"' in shown
        again = (await client.get(location)).text  # a reload does not show it again
        assert '<div id="message" hidden></div>' in again


async def test_ui_signal_for_another_key_warns(db: str) -> None:
    async with served(db) as (_, client, _app):
        answer = await form(client, "/run/signal", "a1", key="aproval:v1", payload="true")
        kind, text = message((await client.get(answer.headers["location"])).text)
        assert kind == "ok" and "warning: run 'a1' waits for a signal for 'approval:v1', " \
            "not 'aproval:v1'" in text


async def test_ui_signal_with_malformed_json_changes_nothing(db: str) -> None:
    async with served(db) as (engine, client, _app):
        before = await events_of(engine, "a1")
        answer = await form(client, "/run/signal", "a1", key="approval:v1",
                            payload="{approved: yes}")
        assert answer.status_code == 400
        kind, text = message(answer.text)
        assert kind == "error" and text.startswith("the payload is not JSON (")
        assert text.endswith('write JSON such as true, 42, "text" or {"approved": true}; '
                             "nothing was sent")
        assert "{approved: yes}</textarea>" in answer.text  # the form keeps what was typed
        deep = await form(client, "/run/signal", "a1", key="approval:v1",
                          payload="[" * 200 + "]" * 200)
        assert deep.status_code == 400
        assert "nests more than" in message(deep.text)[1]
        empty_key = await form(client, "/run/signal", "a1", key=" ", payload="true")
        assert empty_key.status_code == 400
        assert await events_of(engine, "a1") == before


async def test_ui_actions_refuse_a_missing_stale_or_foreign_token(db: str) -> None:
    async with served(db) as (engine, client, _app):
        before = await events_of(engine, "a1")
        missing = await client.post("/run/cancel", data={"id": "a1"})
        assert missing.status_code == 403
        assert message(missing.text) == ("error", "the form has no token, so nothing was "
                                         "done: reload the page and submit the form again")
        # A token of another server (an earlier run of it): stale.
        other = App(EngineBackend(engine)).guard.token()
        stale = await client.post("/run/cancel", data={"id": "a1", "csrf": other})
        assert stale.status_code == 403
        assert message(stale.text)[1].startswith("the form's token is stale")
        page = (await client.get("/run", params={"id": "a1"})).text
        foreign = await client.post("/run/cancel", data={"id": "a1", "csrf": token(page)},
                                    headers={"origin": "http://evil.example"})
        assert foreign.status_code == 403
        assert message(foreign.text)[1] == ("the form was sent from http://evil.example, not "
                                            "from this page, so nothing was done")
        cross = await client.post("/run/cancel", data={"id": "a1", "csrf": token(page)},
                                  headers={"sec-fetch-site": "cross-site"})
        assert cross.status_code == 403
        sandboxed = await client.post("/run/cancel", data={"id": "a1", "csrf": token(page)},
                                      headers={"origin": "null"})
        assert sandboxed.status_code == 403
        assert await events_of(engine, "a1") == before
        assert engine.status("a1").state.value == "suspended"


async def test_ui_actions_take_a_browsers_own_form(db: str) -> None:
    async with served(db) as (_, client, _app):
        page = await client.get("/run", params={"id": "a1"})
        assert page.headers["referrer-policy"] == "same-origin"
        for n, headers in enumerate((
                {"origin": "http://127.0.0.1", "sec-fetch-site": "same-origin"},
                {"origin": "null", "sec-fetch-site": "same-origin"})):
            answer = await client.post("/run/signal", headers=headers, data={
                "csrf": token(page.text), "id": "a1", "key": f"other:{n}", "payload": "1"})
            assert answer.status_code == 303, message(answer.text)


async def test_ui_resume_retries_a_failed_run(db: str) -> None:
    async with served(db) as (engine, client, _app):
        answer = await form(client, "/run/resume", "f1")
        assert answer.status_code == 303
        assert await engine.get_run("f1").result() == "charged"
        kind, text = message((await client.get(answer.headers["location"])).text)
        assert (kind, text) == ("ok", "resumed run 'f1' (failed -> running)")


async def test_ui_cancel_cancels_and_a_finished_run_refuses(db: str) -> None:
    async with served(db) as (engine, client, _app):
        answer = await form(client, "/run/cancel", "a1", reason="customer left")
        assert answer.status_code == 303
        info = await engine.get_run("a1").wait()
        assert info.state.value == "cancelled"
        kind, text = message((await client.get(answer.headers["location"])).text)
        assert kind == "ok" and text.startswith("cancellation of run 'a1' recorded by the "
                                                "engine in process ")
        before = await events_of(engine, "q1")
        page = (await client.get("/sql")).text  # one token per server: any page has it
        finished = await client.post("/run/cancel", data={"id": "q1", "csrf": token(page)})
        assert finished.status_code == 409
        assert message(finished.text) == (
            "error", "run 'q1' is completed; a finished run cannot be cancelled")
        signal = await client.post("/run/signal", data={"id": "q1", "csrf": token(page),
                                                        "key": "approval:v1",
                                                        "payload": "true"})
        assert signal.status_code == 409 and "finished" in message(signal.text)[1]
        assert await events_of(engine, "q1") == before


async def test_ui_actions_on_an_unknown_run_are_404(db: str) -> None:
    async with served(db) as (_, client, _app):
        page = (await client.get("/run", params={"id": "a1"})).text
        answer = await client.post("/run/cancel", data={"id": "ghost", "csrf": token(page)})
        assert answer.status_code == 404
        assert message(answer.text)[1].startswith("run not found: there is no run with "
                                                  "run_id 'ghost'")
        not_form = await client.post("/run/cancel", content=b'{"id": "a1"}',
                                     headers={"content-type": "application/json"})
        assert not_form.status_code == 400
        assert "expected a form" in message(not_form.text)[1]


# -- SQL --


async def sql(client: httpx.AsyncClient, query: str) -> httpx.Response:
    page = (await client.get("/sql")).text
    return await client.post("/sql", data={"csrf": token(page), "query": query})


async def test_ui_sql_page_shows_the_result_table(db: str) -> None:
    async with served(db) as (_, client, _app):
        answer = await sql(client, "SELECT run_id, state FROM replay_runs ORDER BY run_id")
        assert answer.status_code == 200
        table = answer.text[answer.text.index('<table id="sql-result">'):]
        assert "<th>run_id</th><th>state</th>" in table
        assert "<tr><td>a1</td><td>suspended</td></tr>" in table
        assert '<p id="sql-count">5 rows</p>' in answer.text
        assert "SELECT run_id, state FROM replay_runs ORDER BY run_id</textarea>" in answer.text


# What every store refuses, in the same words: writes, scripts, typos, nothing.
REFUSED_BY_BOTH = (
    ("DELETE FROM replay_event_log", "the SQL page only reads"),
    ("SELECT 1; SELECT 2", "the SQL page runs exactly one"),
    ("COPY replay_runs TO '/tmp/x.csv'", "the SQL page only reads"),
    ("SELEC 1", "query failed"),
    ("  ", "the query is empty"),
)
# DuckDB refuses the table functions that act on the database by name.
REFUSED_BY_DUCKDB = (
    ("SELECT * FROM checkpoint()", "checkpoint() is not allowed"),
)
# PostgreSQL refuses by its own guards: a read-only transaction, and the role
# replay_reader, which may read the two views and nothing else (not the event table,
# not another session, not the server's files).
VIEWS_ONLY = "the SQL page only reads the views replay_events and replay_runs"
REFUSED_BY_POSTGRES = (
    ("SELECT * FROM replay_event_log", VIEWS_ONLY),
    ("UPDATE replay_events SET key = 'x'", "the SQL page only reads: UPDATE statements"),
    ("SELECT set_config('role', 'none', true), count(*) FROM replay_events",
     "set_config() is not allowed"),
    ("SELECT pg_terminate_backend(pg_backend_pid())", VIEWS_ONLY),
    ("SELECT pg_read_file('/etc/hostname')", VIEWS_ONLY),
    ("CREATE TABLE stolen AS SELECT * FROM replay_events", "the SQL page only reads"),
    ("WITH gone AS (DELETE FROM replay_event_log RETURNING seq) SELECT * FROM gone",
     "the SQL page only reads"),
)


async def test_ui_sql_refuses_what_is_not_one_read_only_query(db: str) -> None:
    refused = REFUSED_BY_BOTH + (REFUSED_BY_POSTGRES if is_postgres_url(db)
                                 else REFUSED_BY_DUCKDB)
    async with served(db) as (engine, client, _app):
        count = await engine.sql("SELECT count(*) FROM replay_events")
        runs = await engine.sql("SELECT run_id, state FROM replay_runs ORDER BY run_id")
        for query, said in refused:
            answer = await sql(client, query)
            assert answer.status_code == 400, query
            kind, text = message(answer.text)
            assert kind == "error" and said in text, (query, text)
            assert 'id="sql-result"' not in answer.text
        assert await engine.sql("SELECT count(*) FROM replay_events") == count
        assert await engine.sql("SELECT run_id, state FROM replay_runs "
                                "ORDER BY run_id") == runs
        if is_postgres_url(db):  # the failed CREATE TABLE left nothing behind
            assert await engine.sql("SELECT count(*) FROM information_schema.tables "
                                    "WHERE table_name = 'stolen'") == [(0,)]
        no_token = await client.post("/sql", data={"query": "SELECT 1"})
        assert no_token.status_code == 403 and 'id="sql-result"' not in no_token.text
        # The engine still works: its own sessions were not touched.
        await engine.signal("a1", "approval:v1", True)
        assert (await engine.get_run("a1").result())["approved"] is True


def test_ui_sql_examples_are_the_cookbook_queries_word_for_word() -> None:
    for dialect in (DUCKDB, POSTGRES):
        cookbook = recipes(dialect)
        for title, query in examples(dialect):
            assert cookbook[title].rstrip("\n") == query, (dialect, title)
    # Same recipes, same order: only the dialect differs.
    assert [title for title, _ in examples(DUCKDB)] == [
        title for title, _ in examples(POSTGRES)]
    assert examples(DUCKDB) != examples(POSTGRES)


async def test_ui_sql_examples_are_the_cookbook_queries_and_run(db: str) -> None:
    dialect = POSTGRES if is_postgres_url(db) else DUCKDB
    async with served(db) as (_, client, _app):
        page = (await client.get("/sql")).text
        shown = [html.unescape(query) for query in
                 re.findall(r'<a class="example" href="#" data-query="([^"]*)"', page)]
        assert shown == [query for _, query in examples(dialect)]
        assert f'data-dialect="{dialect}"' in page
        for title, query in examples(dialect):
            answer = await sql(client, query)
            assert answer.status_code == 200, (title, message(answer.text))
            assert 'id="sql-result"' in answer.text
