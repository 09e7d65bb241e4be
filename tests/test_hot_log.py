"""The hot log: commits write narrow rows to `replay_event_hot`, settled into the table.

Every query reads both tables (`replay_event_all`), so where a committed record sits
never changes what it answers: a file left by a crash with hot rows answers every
query as it is, and the next open settles them. The engine's own reads of one run take
the hot rows from the store's memory instead, with the same results, and see every
record acknowledged before they began. Real DuckDB files throughout.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pytest
from stores import memo_state

import replay
from replay import Note, Retry, Sleep, Step
from replay._cli._main import main
from replay._codec import CODEC
from replay._core._history import RunHistory
from replay._core._records import Encoded, Record, Run
from replay._store import Store, hot_from_row, record_row
from replay._store._writer import SETTLE_ROWS, Writer

T0 = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
# Values whose JSON is easy to get wrong: the largest integers, extreme floats, escapes.
EDGES = {"big": 2**64 - 1, "low": -(2**63), "huge": 1e300, "tiny": 5e-324, "zero": -0.0,
         "text": 'q"uo\\te\n\t\u2603 \U0001f600 \x00 \u00e9'}
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


async def test_hot_rows_read_exactly_as_settled_rows(tmp_path: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    settled = str(tmp_path / "settled.duckdb")
    made: list[tuple[Any, ...]] = []  # every row as the engine made it, before any JSON
    commit_rows = Writer._commit_rows

    def keeping(self: Writer, rows: list[tuple[Any, ...]], lone: bool) -> None:
        commit_rows(self, rows, lone)
        made.extend(rows)

    monkeypatch.setattr(Writer, "_commit_rows", keeping)
    flaky["left"] = 1
    async with replay.open_engine(settled, workflows=[mixed]) as engine:
        for value in ("text", 7, [1.5, None, {"k": "v"}], b"\x01\x02", EDGES):
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
    # And as the engine's rows written straight to the table, with no JSON on the way.
    direct = str(tmp_path / "direct.duckdb")
    Store(direct, "none").close()
    with duckdb.connect(direct) as con:
        con.executemany("INSERT INTO replay_event_log VALUES "
                        f"({', '.join(['?'] * len(made[0]))})", [list(row) for row in made])
    assert events(direct) == events(settled)
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


def _committed(store: Store, rows: list[tuple[Any, ...]]) -> None:
    done = threading.Event()
    errors: list[BaseException | None] = []

    def told(error: BaseException | None) -> None:
        errors.append(error)
        done.set()

    store.submit(rows, told)
    assert done.wait(30) and errors == [None]


async def test_the_reads_of_a_run_read_its_recent_rows_from_memory_as_the_table_has_them(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The store keeps the rows of the hot log in memory until they are settled; a run
    # whose rows are all there is read with no query: the same records, memos and
    # states as its settled rows give.
    settled = str(tmp_path / "settled.duckdb")
    flaky["left"] = 1
    async with replay.open_engine(settled, workflows=[mixed]) as engine:
        for value in ("text \u2603", 7, [1.5, None, {"k": "v"}], b"\x01\x02"):
            await (await engine.start(mixed, value, run_id=f"run-{value!r}")).result()
    run_ids = [row[0] for row in runs(settled)]
    table = Store(settled, "none")
    hot = Store(str(tmp_path / "hot.duckdb"), "none")
    hot.start_writer()
    try:
        for run_id in run_ids:
            _committed(hot, [record_row(record) for record in table.load_history(run_id)])
        assert count_open(hot, "replay_event_hot") == count_open(table, "replay_event_log")
        queries: list[str] = []
        read = Store._read

        def counted(store: Store, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
            if store is hot:
                queries.append(sql)
            return read(store, sql, params)

        monkeypatch.setattr(Store, "_read", counted)
        wanted = {run_id: "hot_mixed" for run_id in run_ids}
        histories = {run_id: table.load_history(run_id) for run_id in run_ids}
        # The memo each run's records make, folded one record at a time.
        made = {run_id: memo_state(RunHistory(records))
                for run_id, records in histories.items()}
        for run_id in run_ids:
            assert hot.load_history(run_id) == histories[run_id]
            # Folded straight from the rows in memory: the memo the records make.
            folded = hot.memo_at_hand(run_id, "hot_mixed", 1000)
            assert folded is not None
            assert memo_state(folded) == made[run_id]
            assert hot.memo_at_hand(run_id, "hot_mixed", 1) is None  # more rows than that
            assert memo_state(hot.fold_memo(run_id, "hot_mixed")) == made[run_id]
        assert {run_id: memo_state(memo)
                for run_id, memo in hot.fold_memos(wanted).items()} == made
        assert queries == []
        # Read from the table and folded where read: one run, or several in one query.
        many = table.fold_memos({**wanted, "no-such-run": "hot_mixed"})
        assert set(many) == {*run_ids, "no-such-run"}
        for run_id in run_ids:
            assert memo_state(table.fold_memo(run_id, "hot_mixed")) == made[run_id]
            assert memo_state(many[run_id]) == made[run_id]
        assert memo_state(many["no-such-run"]) == memo_state(RunHistory())
        for run_id in run_ids:
            assert hot.run_row(run_id) == table.run_row(run_id)
            assert hot.workflow_of(run_id) == table.workflow_of(run_id) == "hot_mixed"
    finally:
        hot.close()
        table.close()


def count_open(store: Store, table: str) -> int:
    return int(store._read(f"SELECT count(*) FROM {table}", [])[0][0])


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


def test_a_read_sees_every_record_acknowledged_before_it_began(tmp_path: Any) -> None:
    # Reads of one run take its hot rows from memory and the rest from the table. The
    # writer commits single records (to the hot log) and bigger batches (to the table),
    # and settles now and then; a reader thread loads the run's history and memo over
    # and over. Every record acknowledged before a load began is in it, in order, and
    # there is no gap (a later batch read from the table, an earlier record missed).
    store = Store(str(tmp_path / "race.duckdb"), "none")
    store.start_writer()
    run = Run("racer", "wf")
    value = Encoded(CODEC.encode(1, key="value"), CODEC.to_json(1))
    acknowledged = [0]
    failures: list[str] = []
    stop = threading.Event()

    def commit(records: list[Record]) -> None:
        _committed(store, [record_row(record) for record in records])
        acknowledged[0] += len(records)

    def memo_seqs(memo: RunHistory) -> list[int]:
        # The run's records as its memo keeps them: started (seq 1), step "s<seq>".
        return ([1] if memo.started_with is not None else []) + sorted(
            int(key[1:]) for key in memo.keys)

    def read() -> None:
        while not stop.is_set():
            known = acknowledged[0]
            for seqs in ([record.seq for record in store.load_history("racer")],
                         memo_seqs(store.fold_memo("racer", "wf"))):
                if len(seqs) < known or seqs != list(range(1, len(seqs) + 1)):
                    missing = sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs))
                    failures.append(f"acknowledged {known}, read {len(seqs)} records "
                                    f"up to {max(seqs, default=0)}, missing {missing}, "
                                    f"{len(seqs) - len(set(seqs))} twice")

    def settle_now() -> None:
        done = threading.Event()
        store.submit_job(lambda cursor: None, lambda result, error: done.set())
        assert done.wait(30)

    reader = threading.Thread(target=read)
    try:
        seq = 0

        def numbered(count: int) -> list[Record]:
            nonlocal seq
            records = []
            for _ in range(count):
                seq += 1
                record = (run.started(value) if seq == 1 else
                          run.step_completed(f"s{seq}", 1, "f", value, 0.1, None))
                record.seq, record.recorded_at = seq, T0 + timedelta(seconds=seq)
                records.append(record)
            return records

        commit(numbered(1))
        reader.start()
        for round_ in range(150):
            commit(numbered(1 if round_ % 5 else 40))  # 40: past the hot log's limit
            if round_ % 7 == 0:
                settle_now()
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(30)
        store.close()
    assert failures == []
    assert acknowledged[0] == 1 + 120 + 30 * 40
