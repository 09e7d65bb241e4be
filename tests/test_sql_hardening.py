"""Issue 18 (hardening): `engine.sql` and `replay sql` change nothing and cannot run away.

Side-effecting table functions are refused from DuckDB's own plan of the query; a query
has a time limit, stops when its task is cancelled or the engine closes, and runs in
threads of its own so that workflows' reads never queue behind it.

Runaway queries are real DuckDB work in real threads, so these tests turn autojump off
(virtual time stands still) and move the clock by hand; none waits on the wall clock.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import replay
from replay import EngineClosed, QueryError, Step, Suspend
from replay._cli import main
from replay._engine._facade import internals
from replay._store._readers import QUERY_THREADS

# 1e18 rows: it never ends by itself. `sleep_ms` makes one that waits without using CPU.
RUNAWAY = ("SELECT count(*) FROM range(1000000000) a, range(1000000000) b "
           "WHERE (a.range * 7 + b.range) % 1000003 = 17")
SLEEPER = "SELECT max(sleep_ms(1)) FROM range(1000000000)"


def msg(text: str) -> str:
    return "^" + re.escape(text) + "$"


def refused(name: str) -> str:
    return msg(f"engine.sql() only reads: the table function {name}() is not allowed (it may "
               "change the database or the engine, or read outside the database); query the "
               "replay_events and replay_runs views")


def timed_out(seconds: str) -> str:
    return msg(f"query exceeded its time limit of {seconds} s and was stopped; pass a larger "
               "timeout= to engine.sql(), or set query_timeout= in replay.open_engine()")


def one(value: int) -> int:
    return value


@replay.workflow(name="echo")
def echo(value: Any) -> Generator[Any, Any, Any]:
    result = yield Step("one:v1", one, value)
    return result


@replay.workflow(name="waiter")
def waiter() -> Generator[Any, Any, Any]:
    answer = yield Suspend("go:v1")
    seen = yield Step("one:v1", one, answer)
    return seen


def open_engine(db: str, **options: Any) -> Any:
    return replay.open_engine(db, workflows=[echo, waiter], durability="none", **options)


async def busy_queries(engine: replay.Engine, count: int) -> None:
    """Return once `count` user queries are inside a DuckDB call (spinning on checkpoints)."""
    opened = internals(engine).store._queries._open
    while sum(not query._idle.is_set() for query in list(opened)) < count:
        await trio.lowlevel.checkpoint()


# ----------------------------------------------------------- side-effecting table functions


@pytest.mark.parametrize(("query", "name"), [
    ("SELECT * FROM checkpoint()", "checkpoint"),
    ("SELECT * FROM force_checkpoint()", "force_checkpoint"),
    ("SELECT * FROM checkpoint() WHERE false", "checkpoint"),
    ("SELECT (SELECT count(*) FROM force_checkpoint())", "force_checkpoint"),
    ("SELECT * FROM query('SELECT * FROM checkpoint()')", "checkpoint"),
    ("WITH c AS MATERIALIZED (SELECT * FROM checkpoint()) SELECT * FROM c", "checkpoint"),
    ("EXPLAIN ANALYZE SELECT * FROM checkpoint()", "checkpoint"),
    ("SELECT * FROM enable_logging()", "enable_logging"),
    ("SELECT * FROM enable_profiling()", "enable_profiling"),
    ("SELECT * FROM truncate_duckdb_logs()", "truncate_duckdb_logs"),
    ("SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
     "json_execute_serialized_sql"),
])
async def test_sql_refuses_side_effecting_table_functions(db: str, query: str, name: str) -> None:
    async with open_engine(db) as engine:
        await (await engine.start(echo, 1, run_id="r")).result()
        wal = Path(f"{db}.wal")
        size = wal.stat().st_size
        setting = await engine.sql("SELECT current_setting('enable_logging')")
        with pytest.raises(QueryError, match=refused(name)):
            await engine.sql(query)
        # A checkpoint would have folded the WAL into the file and deleted it.
        assert wal.stat().st_size == size
        assert await engine.sql("SELECT current_setting('enable_logging')") == setting


@pytest.mark.parametrize("query", [
    "SELECT count(*) FROM range(3)",
    "SELECT count(*) FROM generate_series(1, 3), unnest([1, 2])",
    "SELECT count(*) >= 2 FROM duckdb_views() WHERE view_name LIKE 'replay_%'",
    "SELECT count(*) > 0 FROM information_schema.columns",
    "SELECT count(*) FROM (SHOW TABLES)",
    "SELECT count(*) FROM (DESCRIBE replay_events)",
    "SELECT count(*) FROM pragma_table_info('replay_runs')",
    "SELECT count(*) FROM json_each('[1, 2]')",
])
async def test_sql_allows_read_only_table_functions(db: str, query: str) -> None:
    async with open_engine(db) as engine:
        rows = await engine.sql(query)
        assert len(rows) == 1 and rows[0][0]


async def test_a_bind_error_quotes_the_query_not_the_check(db: str) -> None:
    async with open_engine(db) as engine:
        with pytest.raises(QueryError, match=r"^query failed: Catalog Error: Table with name "
                           r"nope does not exist!") as raised:
            await engine.sql("SELECT * FROM nope")
        assert "EXPLAIN" not in str(raised.value)


def test_replay_sql_refuses_checkpoint_on_a_file(
        db: str, capsys: pytest.CaptureFixture[str]) -> None:
    trio.run(_make, db)
    size = os.path.getsize(db)
    code = main(["sql", db, "SELECT * FROM checkpoint()"])
    assert (code, capsys.readouterr().err) == (1, (
        "replay sql: replay sql only reads: the table function checkpoint() is not allowed "
        "(it may change the database or the engine, or read outside the database); query "
        "the replay_events and replay_runs views\n"))
    assert os.path.getsize(db) == size


async def _make(db: str) -> None:
    async with open_engine(db) as engine:
        await (await engine.start(echo, 1, run_id="r")).result()


# ------------------------------------------------------------------------- time limits


@pytest.mark.parametrize(("value", "error", "message"), [
    ("30", TypeError, "query_timeout must be a number of seconds or None, got '30' (str)"),
    (True, TypeError, "query_timeout must be a number of seconds or None, got True (bool)"),
    (0, ValueError, "query_timeout must be > 0 seconds, got 0"),
    (-1.5, ValueError, "query_timeout must be > 0 seconds, got -1.5"),
    (math.nan, ValueError, "query_timeout must be > 0 seconds, got nan"),
])
async def test_query_timeout_option_is_checked(
        db: str, value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=msg(message)):
        async with open_engine(db, query_timeout=value):
            pytest.fail("the engine opened")
    assert not os.path.exists(db)


async def test_per_call_timeout_is_checked(db: str) -> None:
    async with open_engine(db) as engine:
        with pytest.raises(ValueError, match=msg("timeout must be > 0 seconds, got -1")):
            await engine.sql("SELECT 1", timeout=-1)
        with pytest.raises(TypeError, match=msg(
                "timeout must be a number of seconds or None, got '1' (str)")):
            await engine.sql("SELECT 1", timeout="1")  # type: ignore[arg-type]
        assert await engine.sql("SELECT 1", timeout=math.inf) == [(1,)]


@pytest.mark.parametrize(("option", "call", "shown"), [
    (5.0, None, "5"), (None, 2.5, "2.5"), (60.0, 0.5, "0.5")])
async def test_a_query_over_its_time_limit_is_stopped(
        db: str, clock: trio.testing.MockClock, option: float | None, call: float | None,
        shown: str) -> None:
    clock.autojump_threshold = math.inf
    async with open_engine(db, query_timeout=option) as engine:
        outcome: list[str] = []

        async def query() -> None:
            with pytest.raises(QueryError, match=timed_out(shown)):
                await engine.sql(RUNAWAY, timeout=call)
            outcome.append("stopped")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(query)
            await busy_queries(engine, 1)
            clock.jump(float(shown))
        assert outcome == ["stopped"]
        assert await engine.sql("SELECT 42") == [(42,)]


async def test_cancelled_queries_are_interrupted_and_free_their_threads(
        db: str, clock: trio.testing.MockClock) -> None:
    clock.autojump_threshold = math.inf
    async with open_engine(db) as engine:
        with trio.move_on_after(1) as scope:
            async with trio.open_nursery() as nursery:
                for _ in range(QUERY_THREADS):
                    nursery.start_soon(engine.sql, RUNAWAY)
                await busy_queries(engine, QUERY_THREADS)
                clock.jump(1)
        assert scope.cancelled_caught
        # Only interrupted queries give their threads back to the next one.
        assert await engine.sql("SELECT 42") == [(42,)]


async def test_a_runaway_query_does_not_hold_a_clean_shutdown(
        db: str, clock: trio.testing.MockClock) -> None:
    clock.autojump_threshold = math.inf
    outcome: list[str] = []

    async def query(engine: replay.Engine) -> None:
        with pytest.raises(EngineClosed, match=msg(
                "the engine closed while the query ran; run it again on an open engine "
                "(replay.open_engine())")):
            await engine.sql(RUNAWAY)
        outcome.append("closed")

    async with trio.open_nursery() as nursery, open_engine(db, query_timeout=None) as engine:
        nursery.start_soon(query, engine)
        await busy_queries(engine, 1)
    assert outcome == ["closed"]


async def test_user_queries_do_not_starve_workflow_reads(
        db: str, clock: trio.testing.MockClock) -> None:
    clock.autojump_threshold = math.inf
    async with open_engine(db, query_timeout=None) as engine:
        await (await engine.start(echo, 1, run_id="done")).result()
        parked = await engine.start(waiter, run_id="parked")
        await parked.wait()
        # Its next wake-up loads its history from the file.
        internals(engine).scheduler.tasks.parked.clear()
        async with trio.open_nursery() as nursery:
            for _ in range(60):
                nursery.start_soon(engine.sql, SLEEPER)
            await busy_queries(engine, QUERY_THREADS)
            assert len(await engine.history("done")) == 3
            await engine.signal("parked", "go:v1", 7)
            assert await parked.result() == 7
            assert await (await engine.start(echo, 2)).result() == 2
            nursery.cancel_scope.cancel()


async def test_user_queries_have_a_memory_limit(db: str) -> None:
    async with open_engine(db) as engine:
        assert await engine.sql("SELECT current_setting('operator_memory_limit')") == [
            ("256.0 MiB",)]


def test_replay_sql_timeout_stops_a_query_on_a_file(
        db: str, capsys: pytest.CaptureFixture[str]) -> None:
    trio.run(_make, db)
    code = main(["sql", db, RUNAWAY, "--timeout", "0.01"])
    assert (code, capsys.readouterr().err) == (1, (
        "replay sql: query exceeded its time limit of 0.01 s and was stopped; pass a larger "
        "--timeout SECONDS to replay sql\n"))


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan"])
def test_replay_sql_timeout_must_be_positive(
        db: str, capsys: pytest.CaptureFixture[str], value: str) -> None:
    assert main(["sql", db, "SELECT 1", "--timeout", value]) == 2
    assert (f"argument --timeout: expected a number of seconds > 0, got {value!r}"
            in capsys.readouterr().err)


async def test_replay_sql_timeout_through_the_engine(
        db: str, clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]) -> None:
    clock.autojump_threshold = math.inf
    codes: list[int] = []

    async def command() -> None:
        codes.append(await trio.to_thread.run_sync(main, ["sql", db, RUNAWAY, "--timeout", "3"]))

    async with open_engine(db) as engine, trio.open_nursery() as nursery:
        nursery.start_soon(command)
        await busy_queries(engine, 1)
        clock.jump(3)
    assert codes == [1]
    assert capsys.readouterr().err == (
        "replay sql: query exceeded its time limit of 3 s and was stopped; pass a larger "
        "--timeout SECONDS to replay sql\n")
