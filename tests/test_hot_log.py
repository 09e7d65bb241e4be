"""The hot log: commits write narrow rows to `replay_event_hot`, settled into the table.

Every reader reads both tables (`replay_event_all`), so where a committed record sits
never changes what a query answers: a file left by a crash with hot rows answers every
query as it is, and the next open settles them. Real DuckDB files throughout.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Generator
from datetime import timedelta
from typing import Any

import duckdb
import pytest

import replay
from replay import Note, Retry, Sleep, Step
from replay._cli._main import main
from replay._store import Store, hot_from_row, record_row
from replay._store._writer_store import SETTLE_ROWS

flaky = {"left": 0}


def wobbly(value: Any) -> Any:
    if flaky["left"] > 0:
        flaky["left"] -= 1
        raise ValueError("not yet: ünïcødé \u2603")
    return value


def broken() -> None:
    raise KeyError("missing")


@replay.workflow(name="hot_mixed")
def mixed(value: Any) -> Generator[Any, Any, Any]:
    got = yield Step("wobbly", wobbly, value, retry=Retry(attempts=3, initial=1.5))
    yield Note("status", {"got": "yes"}, text="half way \u2603")
    yield Sleep("nap", timedelta(minutes=5))
    with contextlib.suppress(replay.StepFailed):
        yield Step("broken", broken)
    return {"value": got, "bytes": b"\x00\xff", "float": 0.1}


def events(path: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(path, read_only=True) as con:
        return con.execute("SELECT * FROM replay_events ORDER BY seq").fetchall()


def runs(path: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(path, read_only=True) as con:
        return con.execute("SELECT * FROM replay_runs ORDER BY run_id").fetchall()


def count(path: str, table: str) -> int:
    with duckdb.connect(path, read_only=True) as con:
        return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])


async def test_hot_rows_read_exactly_as_settled_rows(tmp_path: Any) -> None:
    settled = str(tmp_path / "settled.duckdb")
    flaky["left"] = 1
    async with replay.open_engine(settled, workflows=[mixed]) as engine:
        for value in ("text", 7, [1.5, None, {"k": "v"}], b"\x01\x02"):
            await (await engine.start(mixed, value, run_id=f"run-{value!r}")).result()
    assert count(settled, "replay_event_hot") == 0  # the close settled everything
    run_ids = [row[0] for row in runs(settled)]
    store = Store(settled, "none")
    records = [record for run_id in run_ids for record in store.load_history(run_id)]
    store.close()
    # The same records as hot rows of a fresh file: what a crash leaves behind.
    hot = str(tmp_path / "hot.duckdb")
    Store(hot, "none").close()
    with duckdb.connect(hot) as con:
        con.executemany("INSERT INTO replay_event_hot VALUES (?, ?, ?)",
                        [list(hot_from_row(record_row(record))) for record in records])
    assert count(hot, "replay_event_log") == 0
    assert events(hot) == events(settled)
    assert runs(hot) == runs(settled)
    compacted = str(tmp_path / "compacted.duckdb")
    shutil.copy(hot, compacted)
    assert main(["compact", compacted]) == 0  # the rewrite keeps the hot rows
    assert events(compacted) == events(settled)
    assert count(compacted, "replay_event_hot") == 0
    Store(hot, "none").close()  # an open settles them
    assert count(hot, "replay_event_hot") == 0
    assert count(hot, "replay_event_log") == len(records)
    assert events(hot) == events(settled)


def noop(i: int) -> int:
    return i


@replay.workflow(name="hot_many")
def many(steps: int) -> Generator[Any, Any, int]:
    for i in range(steps):
        yield Step(f"s{i}", noop, i)
    return steps


async def test_the_writer_settles_while_the_engine_runs(db: str) -> None:
    async with replay.open_engine(db, workflows=[many], durability="none") as engine:
        await (await engine.start(many, SETTLE_ROWS + 100)).result()
        total = await engine.sql("SELECT count(*) FROM replay_events")
        in_table = await engine.sql("SELECT count(*) FROM replay_event_all")
    assert total == in_table == [(SETTLE_ROWS + 102,)]
    assert count(db, "replay_event_hot") == 0
    assert count(db, "replay_event_log") == SETTLE_ROWS + 102


async def test_a_purge_deletes_hot_rows_too(db: str, clock: Any) -> None:
    async with replay.open_engine(db, workflows=[many], durability="none") as engine:
        old = await engine.start(many, 3)
        await old.result()
        clock.jump(40 * 86400)
        new = await engine.start(many, 2)
        await new.result()
        report = await engine.purge(older_than=timedelta(days=30))
        left = await engine.sql("SELECT DISTINCT run_id FROM replay_events")
    assert report.runs_purged == 1
    assert left == [(new.run_id,)]
    assert count(db, "replay_event_all") == count(db, "replay_event_log") == 4


@pytest.mark.parametrize("table", ["replay_event_hot", "replay_event_all"])
def test_the_tables_are_required(tmp_path: Any, table: str) -> None:
    path = str(tmp_path / "damaged.duckdb")
    Store(path, "none").close()
    with duckdb.connect(path) as con:
        kind = "VIEW" if table == "replay_event_all" else "TABLE"
        con.execute(f"DROP {kind} {table} CASCADE")
    with pytest.raises(replay.DatabaseError, match=f"is damaged: its .* {table} is missing"):
        Store(path, "none")
