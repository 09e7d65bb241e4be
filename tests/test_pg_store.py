"""The engine on a PostgreSQL store: opening, locking, bad input, durability, user SQL.

Behaviour shared with DuckDB is tested by the `both_stores` modules; these are the
things only a PostgreSQL database has (a server, URLs, roles, sessions, NUL).
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Generator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import trio

import replay
from replay import Step
from replay._engine._facade import internals


def double(value: int) -> int:
    return value * 2


def pipeline(value: int) -> Generator[Any, Any, int]:
    first = yield Step("first", double, value)
    second = yield Step("second", double, first)
    return int(second)


def odd_key(key: str) -> Generator[Any, Any, int]:
    return int((yield Step(key, double, 1)))


def admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


async def test_a_run_completes_and_the_views_answer(pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=[pipeline]) as engine:
        run = await engine.start(pipeline, 5, run_id="p1")
        assert await run.result() == 20
        assert await engine.sql("SELECT run_id, state, output_json FROM replay_runs") == [
            ("p1", "completed", "20")]
    async with replay.open_engine(pg_url, workflows=[pipeline]) as engine:
        assert engine.status("p1").state.value == "completed"
        assert await engine.sql(
            "SELECT key, event FROM replay_events WHERE kind = 'step' ORDER BY seq") == [
            ("first", "completed"), ("second", "completed")]


async def test_a_second_engine_on_the_schema_is_refused_until_the_first_closes(
        pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=[pipeline]):
        with pytest.raises(replay.DatabaseLocked,
                           match="another engine runs as worker 'default' on the PostgreSQL"):
            async with replay.open_engine(pg_url, workflows=[pipeline]):
                pass
    async with replay.open_engine(pg_url, workflows=[pipeline]) as engine:
        assert await engine.sql("SELECT count(*) FROM replay_runs") == [(0,)]


async def test_lock_timeout_waits_for_the_other_engine(pg_url: str) -> None:
    async with trio.open_nursery() as nursery:
        first_open, release = trio.Event(), trio.Event()

        async def holder() -> None:
            async with replay.open_engine(pg_url, workflows=[pipeline]):
                first_open.set()
                await release.wait()

        nursery.start_soon(holder)
        await first_open.wait()
        nursery.start_soon(_release_later, release)
        async with replay.open_engine(pg_url, workflows=[pipeline], lock_timeout=60) as engine:
            assert release.is_set()
            assert await engine.sql("SELECT count(*) FROM replay_runs") == [(0,)]


async def _release_later(release: trio.Event) -> None:
    await trio.sleep(5)
    release.set()


async def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    url = "postgresql://someone:s3cret@127.0.0.1:1/nowhere"
    with pytest.raises(replay.DatabaseError) as caught:
        async with replay.open_engine(url, workflows=[pipeline]):
            pass
    message = str(caught.value)
    assert "s3cret" not in message and "someone:***@127.0.0.1:1" in message
    assert "check that the server runs" in message


async def test_without_psycopg_the_error_says_what_to_install(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def missing(name: str, *args: Any) -> Any:
        return None if name == "psycopg" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", missing)
    with pytest.raises(ModuleNotFoundError, match=r'replay-workflows\[postgres\]'):
        async with replay.open_engine(pg_url, workflows=[pipeline]):
            pass


async def test_a_schema_of_another_version_is_refused_and_left_alone(pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=[pipeline]):
        pass
    with admin(pg_url) as con:
        con.execute("UPDATE replay_meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(replay.DatabaseError, match="schema version '99'"):
        async with replay.open_engine(pg_url, workflows=[pipeline]):
            pass
    with admin(pg_url) as con:
        assert con.execute("SELECT value FROM replay_meta").fetchall() == [("99",)]


async def test_a_key_with_nul_fails_its_own_run_and_no_other(pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=[odd_key, pipeline]) as engine:
        bad = await engine.start(odd_key, "a\x00b", run_id="bad")
        good = await engine.start(pipeline, 1, run_id="good")
        with pytest.raises(replay.WorkflowFailed) as caught:
            await bad.result()
        assert "NUL" in str(caught.value.__cause__ or caught.value)
        assert await good.result() == 4
        assert await engine.sql("SELECT run_id, state FROM replay_runs ORDER BY run_id") == [
            ("bad", "failed"), ("good", "completed")]


@pytest.mark.parametrize(("durability", "setting"), [("fsync", "on"), ("none", "off")])
async def test_durability_sets_synchronous_commit(pg_url: str, durability: str,
                                                  setting: str) -> None:
    async with replay.open_engine(pg_url, workflows=[pipeline], durability=durability) as engine:
        writer = internals(engine).store._writer._con  # type: ignore[attr-defined]
        assert writer.execute("SHOW synchronous_commit").fetchone() == (setting,)
        run = await engine.start(pipeline, 1)
        assert await run.result() == 4


@pytest.mark.parametrize(("query", "params", "rows"), [
    ("SELECT run_id FROM replay_runs WHERE run_id = ?", ["p1"], [("p1",)]),
    ("SELECT run_id FROM replay_runs WHERE run_id = $1", ["p1"], [("p1",)]),
    ("SELECT run_id FROM replay_runs WHERE run_id = $id AND workflow = $wf",
     {"id": "p1", "wf": "pipeline"}, [("p1",)]),
    ("SELECT 'a?b %' AS text, run_id FROM replay_runs WHERE run_id = ?", ["p1"],
     [("a?b %", "p1")]),
    ("SELECT count(*) FROM replay_events WHERE key LIKE 'fir%'", None, [(1,)]),
])
async def test_sql_takes_duckdb_placeholders(pg_url: str, query: str, params: Any,
                                             rows: list[tuple[Any, ...]]) -> None:
    async with replay.open_engine(pg_url, workflows=[pipeline]) as engine:
        await (await engine.start(pipeline, 1, run_id="p1")).result()
        assert await engine.sql(query, params) == rows


@pytest.mark.parametrize(("query", "params", "words"), [
    ("DELETE FROM replay_event_log", None, "engine.sql() only reads: DELETE statements"),
    ("WITH gone AS (DELETE FROM replay_event_log RETURNING 1) SELECT * FROM gone", None,
     "engine.sql() only reads: cannot execute"),
    ("SELECT set_config('role', 'none', true), count(*) FROM replay_events", None,
     "set_config() is not allowed"),
    ("SELECT query_to_xml('SELECT count(*) FROM replay_event_log', true, true, '')", None,
     "query_to_xml() is not allowed"),
    ('SELECT "SET_CONFIG"(\'role\', \'none\', true)', None, "query failed"),
    ('SELECT pg_catalog."set_config"(\'role\', \'none\', true)', None,
     "set_config() is not allowed"),
    ("SELECT U&\"\\0073et_config\"('role', 'none', true)", None, "Unicode escapes"),
    ("DO $$ BEGIN PERFORM 1; END $$", None, "DO statements are not allowed"),
    ("SET ROLE NONE", None, "SET statements are not allowed"),
    ("", None, "runs exactly one query, got none"),
    ("/* only */ -- comments", None, "runs exactly one query, got none"),
    ("SELECT * FROM replay_event_log", None, "only reads the views replay_events and "
                                             "replay_runs on a PostgreSQL store"),
    ("SELECT 1; DELETE FROM replay_meta", None, "engine.sql() runs exactly one query"),
    ("COMMIT", None, "COMMIT statements are not allowed"),
    ("SELEC 1", None, "query failed: a query starts with SELECT"),
    ("SELECT ?, $1", [1, 2], "mixes ? and $1"),
    ("SELECT $missing", {"other": 1}, "placeholder $missing has no value"),
])
async def test_sql_refuses_writes_the_tables_and_scripts(
        pg_url: str, query: str, params: Any, words: str) -> None:
    async with replay.open_engine(pg_url, workflows=[pipeline]) as engine:
        await (await engine.start(pipeline, 1, run_id="p1")).result()
        with pytest.raises(replay.QueryError, match=words.replace("(", r"\(").replace(
                ")", r"\)").replace("$", r"\$").replace("?", r"\?")):
            await engine.sql(query, params)
        assert await engine.sql("SELECT count(*) FROM replay_events") == [(4,)]
    with admin(pg_url) as con:
        assert con.execute("SELECT count(*) FROM replay_meta").fetchone() == (1,)


async def test_a_slow_query_is_stopped_by_its_time_limit(pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=[pipeline]) as engine:
        with pytest.raises(replay.QueryError):
            await engine.sql("SELECT pg_sleep(30)", timeout=0.2)
        assert await engine.sql("SELECT count(*) FROM replay_runs") == [(0,)]


@pytest.fixture
def limited_url(pg_url: str) -> Iterator[str]:
    """The same schema, reached as a user who may create tables but not roles."""
    name = f"replay_limited_{uuid.uuid4().hex[:8]}"
    schema = _schema_of(pg_url)
    with admin(pg_url) as con:
        con.execute(f'CREATE ROLE "{name}" LOGIN')
        con.execute(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO "{name}"')
    parts = urlsplit(pg_url)
    yield urlunsplit(parts._replace(netloc=f"{name}@{parts.netloc.rsplit('@', 1)[-1]}"))
    with admin(pg_url) as con:
        con.execute(f'DROP OWNED BY "{name}" CASCADE')
        con.execute(f'DROP ROLE "{name}"')


def _schema_of(url: str) -> str:
    query = urlsplit(url).query
    return query.split("search_path%3D", 1)[1].split("&", 1)[0]


async def test_without_the_reader_role_sql_says_what_an_administrator_runs(
        limited_url: str) -> None:
    async with replay.open_engine(limited_url, workflows=[pipeline]) as engine:
        run = await engine.start(pipeline, 3)
        assert await run.result() == 12
        user = urlsplit(limited_url).username
        with pytest.raises(replay.QueryError, match=f"GRANT replay_reader TO {user}"):
            await engine.sql("SELECT count(*) FROM replay_runs")


async def test_a_missing_schema_says_to_create_it(pg_url: str) -> None:
    url = pg_url.replace("search_path%3D", "search_path%3Dnot_there_")
    with pytest.raises(replay.DatabaseError, match=r"CREATE SCHEMA name"):
        async with replay.open_engine(url, workflows=[pipeline]):
            pass


def test_replay_connect_points_a_url_to_open_engine() -> None:
    with pytest.raises(ValueError, match=r"replay.open_engine\(url") as caught:
        replay.connect("postgresql://someone:s3cret@127.0.0.1/db")
    assert "s3cret" not in str(caught.value)
