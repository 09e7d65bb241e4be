"""Issue 18 (hardening): damaged tables, foreign DuckDB files, owner-only files.

A damaged replay database raises `DatabaseError` saying what is wrong and what to do;
one damaged run fails alone (the others keep running). A DuckDB file that belongs to
something else is refused, untouched. The database and its WAL are owner-only (0600).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Generator
from pathlib import Path
from typing import Any

import duckdb
import pytest

import replay
from replay import DatabaseError, RunState, Step, Suspend, WorkflowFailed


def msg(text: str) -> str:
    return "^" + re.escape(text) + "$"


def one(value: Any) -> Any:
    return value


@replay.workflow(name="echo")
def echo(value: Any) -> Generator[Any, Any, Any]:
    result = yield Step("one:v1", one, value)
    return result


@replay.workflow(name="waiter")
def waiter() -> Generator[Any, Any, Any]:
    answer = yield Suspend("go:v1")
    return answer


def open_engine(db: str | Path) -> Any:
    return replay.open_engine(db, workflows=[echo, waiter], durability="none")


async def make_database(db: str) -> None:
    async with open_engine(db) as engine:
        for i in range(2):
            await (await engine.start(echo, i, run_id=f"r{i}")).result()
        await (await engine.start(waiter, run_id="w")).wait()


def tamper(db: str, sql: str) -> None:
    con = duckdb.connect(db)
    con.execute(sql)
    con.close()


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ------------------------------------------------------------------------ damaged tables


async def test_a_missing_event_table_raises_database_error(db: str) -> None:
    await make_database(db)
    tamper(db, "DROP VIEW replay_runs; DROP VIEW replay_events; DROP TABLE replay_event_log")
    with pytest.raises(DatabaseError, match=msg(
            f"database {db!r} is damaged: its table replay_event_log is missing; restore the "
            "file from a backup, or move it aside to start a new database")):
        async with open_engine(db):
            pytest.fail("the engine opened a database without its event table")


async def test_a_missing_view_raises_database_error(db: str) -> None:
    await make_database(db)
    tamper(db, "DROP VIEW replay_runs")
    with pytest.raises(DatabaseError, match=msg(
            f"database {db!r} is damaged: its view replay_runs is missing; restore the file "
            "from a backup, or move it aside to start a new database")):
        async with open_engine(db):
            pytest.fail("the engine opened a database without its views")


def damaged(db: str, run_id: str, problem: str) -> str:
    return (f"run {run_id!r} is damaged in {db!r}: {problem}; repair its rows in "
            "replay_event_log, or restore the file from a backup, and open it again")


async def check_only_r1_failed(db: str, problem: str) -> None:
    async with open_engine(db) as engine:
        info = engine.status("r1")
        assert (info.state, info.error_type) == (RunState.FAILED, "replay.DatabaseError")
        assert info.error == damaged(db, "r1", problem)
        with pytest.raises(WorkflowFailed, match=msg(
                f"run 'r1' failed: replay.DatabaseError: {damaged(db, 'r1', problem)}")):
            await engine.get_run("r1").result()
        # The other runs are untouched and keep running.
        assert engine.status("r0").state is RunState.COMPLETED
        await engine.signal("w", "go:v1", "yes")
        assert await engine.get_run("w").result() == "yes"
        assert await (await engine.start(echo, 5)).result() == 5


async def test_an_unknown_run_state_fails_only_its_run(db: str) -> None:
    await make_database(db)
    tamper(db, "UPDATE replay_event_log SET run_state = 'exploded' "
               "WHERE run_id = 'r1' AND run_state = 'completed'")
    await check_only_r1_failed(db, "its newest run state is 'exploded', which is not a run state")


async def test_a_null_recorded_at_fails_only_its_run(db: str) -> None:
    await make_database(db)
    tamper(db, "UPDATE replay_event_log SET recorded_at = NULL WHERE run_id = 'r1'")
    await check_only_r1_failed(db, "its run/started event has no recorded_at")
    async with open_engine(db) as engine:
        with pytest.raises(DatabaseError, match=msg(
                f"run 'r1' is damaged in {db!r}: its event seq 4 (run/started) has no "
                "recorded_at; repair its rows in replay_event_log, or restore the file from "
                "a backup")):
            await engine.history("r1")


async def test_a_null_recorded_at_in_a_later_event_fails_only_history(db: str) -> None:
    await make_database(db)
    tamper(db, "UPDATE replay_event_log SET recorded_at = NULL "
               "WHERE run_id = 'r1' AND kind = 'step'")
    async with open_engine(db) as engine:
        assert engine.status("r1").state is RunState.COMPLETED
        with pytest.raises(DatabaseError, match=r"^run 'r1' is damaged in .*: its event seq 5 "
                           r"\(step/completed\) has no recorded_at; "):
            await engine.history("r1")
        assert len(await engine.history("r0")) == 3


# ------------------------------------------------------------------------- foreign files


async def test_a_foreign_duckdb_file_is_refused_and_left_untouched(db: str) -> None:
    tamper(db, "CREATE TABLE orders (id INTEGER); CREATE VIEW big_orders AS SELECT * FROM orders")
    with pytest.raises(DatabaseError, match=msg(
            f"{db!r} is a DuckDB database of something else (it has 'big_orders', 'orders' "
            "and no replay tables), and replay keeps its history in a file of its own; pass "
            "replay.open_engine() a new path")):
        async with open_engine(db):
            pytest.fail("the engine opened another application's database")
    con = duckdb.connect(db, read_only=True)
    tables = con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
    con.close()
    assert tables == [("orders",)]


async def test_an_empty_duckdb_file_becomes_a_replay_database(db: str) -> None:
    duckdb.connect(db).close()
    async with open_engine(db) as engine:
        assert await (await engine.start(echo, 3)).result() == 3


# ------------------------------------------------------------------------- permissions


async def test_a_new_database_and_its_wal_are_owner_only(tmp_path: Path) -> None:
    db = str(tmp_path / "private.duckdb")
    old = os.umask(0o022)
    try:
        for round_ in range(2):  # the WAL is deleted at each close and made again
            async with open_engine(db) as engine:
                await (await engine.start(echo, round_)).result()
                assert mode(db) == 0o600
                assert mode(f"{db}.wal") == 0o600
                assert os.path.getsize(f"{db}.wal") > 0
    finally:
        os.umask(old)
    assert sorted(os.listdir(tmp_path)) == ["private.duckdb"]


async def test_an_existing_database_keeps_its_permissions(db: str) -> None:
    await make_database(db)
    os.chmod(db, 0o640)
    async with open_engine(db) as engine:
        await (await engine.start(echo, 1)).result()
    assert mode(db) == 0o640
