"""PostgreSQL retention (`replay._pg._purge`) agrees with the DuckDB store's.

A real engine on DuckDB writes varied histories once per module: finished runs of
several workflows and states, unfinished ones, parents with children (one tree with
an unfinished child, one child that outlived its parent and finished later, children
whose parent is gone), and runs that continued as new (one of them finished). Every
row of its ``replay_event_all`` is copied into a fresh PostgreSQL schema, and both
stores are asked the same thing: the same plan for many cutoffs, states and
workflows, the same rows left after the deletes, the same runs kept when they changed
between the plan and the delete, and the same archive.

Needs a PostgreSQL server (conftest's `pg_url`: REPLAY_TEST_POSTGRES); skipped without.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Generator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
import trio
import trio.testing
from psycopg.types.string import TextLoader
from test_retention import BROKEN, fails, finish, ident, leaves, other, parent, quick, waits

import replay
from replay import ContinueAsNew, Note, Sleep, Step, Suspend
from replay._pg import _purge as pg_purge
from replay._pg._schema import prepare_schema
from replay._store import _purge as duck_purge
from replay._store._hot import settle
from replay._store._schema import TABLE_COLUMNS

Flow = Generator[Any, Any, Any]
DAY = timedelta(days=1)
US = timedelta(microseconds=1)
HOUR = 3600
FINISHED = duck_purge.FINISHED
COLUMNS = [name.strip() for name in TABLE_COLUMNS.split(",")]


@replay.workflow(name="renew")
def renew(month: int) -> Flow:
    yield Note(f"month:{month}", {"month": month})
    yield Step(f"charge:{month}", ident, month)
    if month == 0:
        yield Suspend("approve")
    if month < 3:
        yield Sleep(f"wait:{month}", 30 * DAY)
        return ContinueAsNew(month + 1)
    yield Sleep("grace", 30 * DAY)
    return (yield Suspend("stop"))


WORKFLOWS = [quick, other, fails, waits, parent, leaves, renew]


async def build(db: str) -> None:
    BROKEN["flaky"] = True
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none") as engine:
        # Ended at one instant, with ids that sort differently by bytes and by locale.
        for run_id in ("old0", "Zed", "alpha", "_under", "Éclair"):
            await finish(engine, quick, 1, run_id=run_id)
        await trio.sleep(HOUR)  # from here on, each run ends at an instant of its own
        await finish(engine, fails, run_id="failed")
        await trio.sleep(HOUR)
        await finish(engine, other, 1, run_id="o")
        await trio.sleep(HOUR)
        await engine.start(waits, run_id="c")
        await engine.cancel("c", "no longer needed")
        await engine.get_run("c").wait()
        await engine.start(waits, run_id="waiting")
        await trio.sleep(HOUR)
        await finish(engine, parent, 1, run_id="p")
        await trio.sleep(HOUR)
        await finish(engine, parent, 5, run_id="gone")  # its records are deleted below
        for run_id in ("l", "l2"):  # terminated, their child outlives them
            await trio.sleep(HOUR)
            await (await engine.start(leaves, run_id=run_id)).wait()
            await engine.get_run(f"{run_id}/kid").wait()
            await engine.terminate(run_id)
        for run_id in ("renewB", "renew_a", "renew_done"):
            await trio.sleep(HOUR)
            await engine.start(renew, 0, run_id=run_id)
            await engine.signal(run_id, "approve", "yes")
        await engine.signal("renew_done", "stop", "please")
        await trio.sleep(10 * 86400)
        await finish(engine, quick, 9, run_id="new")
        await engine.signal("l2/kid", "go:v1", "late")
        await engine.get_run("l2/kid").result()
        await trio.sleep(120 * 86400)  # three generations replaced, "renew_done" done
        await finish(engine, other, 2, run_id="newest")
    with duckdb.connect(db) as con:
        settle(con)  # the deletes work on the table alone, as the engine's
        con.execute("DELETE FROM replay_event_log WHERE run_id = 'gone'")  # orphans


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A DuckDB file of every history above (build it once, copy it per test)."""
    db = str(tmp_path_factory.mktemp("pg_purge") / "history.duckdb")
    trio.run(build, db, clock=trio.testing.MockClock(autojump_threshold=0))
    return db


@pytest.fixture
def duck(history: str, tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A private copy of the history's DuckDB file."""
    copy = str(tmp_path / "copy.duckdb")
    shutil.copy(history, copy)
    with duckdb.connect(copy) as con:
        yield con


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    con = psycopg.connect(url, autocommit=autocommit)
    for name in ("json", "jsonb"):  # value_json as the text written, as DuckDB reads it
        con.adapters.register_loader(name, TextLoader)
    return con


@pytest.fixture
def pg(pg_url: str, duck: duckdb.DuckDBPyConnection) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to a fresh schema holding every row of `duck`."""
    with connect(pg_url) as con:
        prepare_schema(con, "test")
        rows = duck.execute(f"SELECT {TABLE_COLUMNS} FROM replay_event_all").fetchall()
        insert(con, rows)
        yield con


def insert(con: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
    with con.cursor() as cursor, \
            cursor.copy(f"COPY replay_event_log ({TABLE_COLUMNS}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    if not con.autocommit:
        con.commit()


def left(duck: duckdb.DuckDBPyConnection, pg: psycopg.Connection[Any]
         ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every row left in both stores, in order."""
    query = f"SELECT {TABLE_COLUMNS} FROM replay_event_all ORDER BY seq"
    return duck.execute(query).fetchall(), pg.execute(query).fetchall()


def cutoffs(duck: duckdb.DuckDBPyConnection) -> list[datetime]:
    """Every instant a run changed state or generation, and a microsecond after each."""
    times = duck.execute("SELECT DISTINCT recorded_at FROM replay_event_all WHERE "
                         "run_state IS NOT NULL OR event = 'continued' ORDER BY 1").fetchall()
    return [time + offset for (time,) in times for offset in (timedelta(0), US)]


def test_both_stores_plan_the_same(duck: duckdb.DuckDBPyConnection,
                                   pg: psycopg.Connection[Any]) -> None:
    everything = cutoffs(duck)
    assert len(everything) > 20
    seen = {"trees": 0, "generations": 0, "children": 0}
    for cutoff in everything:
        planned = pg_purge.plan(pg, cutoff, FINISHED, None)
        assert planned == duck_purge.plan(duck, cutoff, FINISHED, None), cutoff
        seen["trees"] = max(seen["trees"], len(planned.trees))
        seen["generations"] = max(seen["generations"], planned.generation_count)
        seen["children"] = max(seen["children"], planned.runs - len(planned.trees))
    assert seen["trees"] > 10 and seen["generations"] >= 6 and seen["children"] == 3
    for cutoff in everything[len(everything) // 3::len(everything) // 6]:
        for states in (("completed",), ("failed", "cancelled"), FINISHED):
            for workflow in (None, "quick", "parent", "leaves", "renew", "nothing"):
                assert pg_purge.plan(pg, cutoff, states, workflow) == \
                    duck_purge.plan(duck, cutoff, states, workflow), (cutoff, states, workflow)
    assert pg.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_the_plan_takes_whole_trees_and_orphans(duck: duckdb.DuckDBPyConnection,
                                                pg: psycopg.Connection[Any]) -> None:
    planned = pg_purge.plan(pg, cutoffs(duck)[-1] + DAY, FINISHED, None)
    roots = {tree[0]: tree for tree in planned.trees}
    assert roots["p"] == ("p", "p/first", "p/second")
    assert roots["gone/first"] == ("gone/first",)  # its parent no longer exists
    assert roots["l2"] == ("l2", "l2/kid")
    assert "l" not in roots and "waiting" not in roots  # a run not finished in each
    # Same instant: ordered by bytes, as DuckDB orders them.
    same = [tree[0] for tree in planned.trees
            if tree[0] in {"old0", "Zed", "alpha", "_under", "Éclair"}]
    assert same == ["Zed", "_under", "alpha", "old0", "Éclair"]
    assert [rows.run_id for rows in planned.generations] == ["renewB", "renew_a"]


@pytest.mark.parametrize(("where", "states", "workflow"), [
    (-1, FINISHED, None), (-1, ("completed",), None), (-1, FINISHED, "quick"),
    (0.5, FINISHED, None), (0.3, ("failed", "cancelled"), "waits")])
def test_the_deletes_leave_the_same_rows(duck: duckdb.DuckDBPyConnection,
                                         pg: psycopg.Connection[Any], pg_url: str,
                                         where: float, states: tuple[str, ...],
                                         workflow: str | None) -> None:
    everything = cutoffs(duck)
    cutoff = everything[-1] + DAY if where < 0 else everything[int(len(everything) * where)]
    planned = duck_purge.plan(duck, cutoff, states, workflow)
    assert pg_purge.plan(pg, cutoff, states, workflow) == planned
    with connect(pg_url, autocommit=False) as writer:  # as the store's writer connection
        for start in range(0, len(planned.trees), 2):  # batches of two trees
            batch = planned.trees[start:start + 2]
            assert pg_purge.delete_runs(writer, batch, states, cutoff) == \
                duck_purge.delete_runs(duck, batch, states, cutoff)
        assert pg_purge.delete_generations(writer, planned.generations, cutoff) == \
            duck_purge.delete_generations(duck, planned.generations, cutoff) == \
            (planned.generation_count, planned.generation_events)
        assert writer.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    kept_duck, kept_pg = left(duck, pg)
    assert kept_pg == kept_duck
    assert pg_purge.plan(pg, cutoff, states, workflow) == duck_purge.PurgePlan()


def _appended(duck: duckdb.DuckDBPyConnection, pg: psycopg.Connection[Any],
              source: str, **changes: Any) -> None:
    """Append a copy of `source`'s newest record, changed, to both stores."""
    row = list(duck.execute(f"SELECT {TABLE_COLUMNS} FROM replay_event_all WHERE run_id = ? "
                            "ORDER BY seq DESC LIMIT 1", [source]).fetchall()[0])
    row[0] = duck.execute("SELECT max(seq) + 1 FROM replay_event_all").fetchall()[0][0]
    for name, value in changes.items():
        row[COLUMNS.index(name)] = value
    duck.execute(f"INSERT INTO replay_event_log ({TABLE_COLUMNS}) VALUES "
                 f"({', '.join('?' * len(row))})", row)
    insert(pg, [tuple(row)])


def test_what_changed_since_the_plan_is_kept(duck: duckdb.DuckDBPyConnection,
                                             pg: psycopg.Connection[Any], pg_url: str) -> None:
    cutoff = cutoffs(duck)[-1] + DAY
    states = ("completed", "cancelled")
    planned = pg_purge.plan(pg, cutoff, states, None)
    assert planned == duck_purge.plan(duck, cutoff, states, None)
    later = cutoff + DAY
    _appended(duck, pg, "old0", run_state="running", recorded_at=later)  # resumed
    _appended(duck, pg, "alpha", run_state="completed", recorded_at=later)  # ended again
    _appended(duck, pg, "Zed", run_state="failed")  # a state not asked for
    _appended(duck, pg, "p/first", run_state="suspended")  # a child not finished
    _appended(duck, pg, "o", run_id="o/new", kind="run", event="started", name="o",
              run_state="running")  # a child started since
    _appended(duck, pg, "renewB", kind="run", event="cancel_requested", generation=0,
              run_state=None)  # kept whole now
    with connect(pg_url, autocommit=False) as writer:
        deleted, events = pg_purge.delete_runs(writer, planned.trees, states, cutoff)
        assert (deleted, events) == duck_purge.delete_runs(duck, planned.trees, states,
                                                           cutoff)
        gens = pg_purge.delete_generations(writer, planned.generations, cutoff)
        assert gens == duck_purge.delete_generations(duck, planned.generations, cutoff)
        # An earlier cutoff than the plan's: the re-check deletes nothing replaced later.
        early = pg_purge.delete_generations(writer, planned.generations, cutoff - 400 * DAY)
    assert early == (0, 0)
    spared = {"old0", "alpha", "Zed", "p", "p/first", "p/second", "o"}
    assert spared <= {run_id for tree in planned.trees for run_id in tree}
    assert not spared & deleted and len(deleted) == planned.runs - len(spared)
    assert 0 < gens[1] < planned.generation_events  # "renewB" kept its generations
    kept_duck, kept_pg = left(duck, pg)
    assert kept_pg == kept_duck
    assert {row[1] for row in kept_pg} >= spared | {"renewB", "o/new"}


def test_the_archive_is_the_same_file(duck: duckdb.DuckDBPyConnection,
                                      pg: psycopg.Connection[Any], tmp_path: Path) -> None:
    cutoff = cutoffs(duck)[-1]  # "newest" stays
    planned = pg_purge.plan(pg, cutoff, FINISHED, None)
    assert planned == duck_purge.plan(duck, cutoff, FINISHED, None)
    from_pg, from_duck = str(tmp_path / "pg.parquet"), str(tmp_path / "duck.parquet")
    written = pg_purge.write_archive(pg, from_pg, planned)
    assert written == duck_purge.write_archive(duck, from_duck, planned)
    assert written == planned.events + planned.generation_events > 0
    assert stat.S_IMODE(os.stat(from_pg).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["copy.duckdb", "duck.parquet", "pg.parquet"]
    with duckdb.connect() as con:
        def read(query: str, path: str) -> list[tuple[Any, ...]]:
            return con.execute(query, [path]).fetchall()

        schema = ("SELECT name, type, converted_type, logical_type, repetition_type "
                  "FROM parquet_schema(?)")
        assert read(schema, from_pg) == read(schema, from_duck)
        described = "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet(?))"
        assert read(described, from_pg) == read(described, from_duck)
        assert [name for name, _ in read(described, from_pg)] == [
            "seq", "run_id", "workflow", "key", "kind", "event", "attempt", "value",
            "value_json", "error_type", "error", "recorded_at", "duration_ms", "wake_at",
            "generation"]
        rows = "SELECT * FROM read_parquet(?) ORDER BY seq"
        assert read(rows, from_pg) == read(rows, from_duck)
    with pytest.raises(FileExistsError):  # never replaces a file
        pg_purge.write_archive(pg, from_pg, planned)


def test_a_connection_inside_a_transaction_is_refused(pg_url: str,
                                                      pg: psycopg.Connection[Any]) -> None:
    with connect(pg_url, autocommit=False) as con:
        con.execute("SELECT 1")  # opens a transaction, as psycopg does outside autocommit
        before = con.execute("SELECT count(*) FROM replay_event_all").fetchone()
        with pytest.raises(RuntimeError, match="inside a transaction"):
            pg_purge.delete_runs(con, [("old0",)], FINISHED, datetime.now().astimezone())
        with pytest.raises(RuntimeError, match="commit or roll it back"):
            pg_purge.plan(con, datetime.now().astimezone(), FINISHED, None)
        con.rollback()
        assert con.execute("SELECT count(*) FROM replay_event_all").fetchone() == before
