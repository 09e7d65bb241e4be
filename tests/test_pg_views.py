"""The PostgreSQL schema (`replay._pg._schema`) says what DuckDB's says, row for row.

A varied history (completed, failed, cancelled, terminated, sleeping, suspended and
backing-off runs, child runs, notes, continue-as-new generations, two code versions,
binary values, unicode ids, a NUL inside a value, a value too big for JSON) is made
once by the real engine on a DuckDB file, in virtual time. Each test copies every row
of its `replay_event_all` into a fresh Postgres schema with `pg_row` and COPY, and
compares: the public views row for row, and each `replay._pg._reads` function with the
DuckDB `Store` method of the same name. Then `prepare_schema` on new, existing,
newer, damaged, foreign and concurrently created schemas, and `pg_row` with NUL.

Needs a server: REPLAY_TEST_POSTGRES (see `pg_url` in conftest.py); skipped without.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import duckdb
import pytest
import trio
import trio.testing
from stores import memo_state

import replay
from replay import Child, ContinueAsNew, Note, Retry, Sleep, Step, Suspend
from replay._core._history import RunHistory
from replay._core._records import Record, started_record
from replay._engine._slots import RunSlot
from replay._errors import DatabaseError
from replay._store import Store
from replay._store._rows import from_epoch_us, record_row, row_record
from replay._store._schema import COLUMNS as DUCK_COLUMNS
from replay.testing import wait_for_state

psycopg = pytest.importorskip("psycopg")

from psycopg.types.string import TextLoader  # noqa: E402

from replay._pg import _reads  # noqa: E402
from replay._pg._rows import COPY_COLUMNS, pg_row  # noqa: E402
from replay._pg._schema import _VIEWS, PG_SCHEMA_VERSION, prepare_schema  # noqa: E402
from replay._pg._sql import ONE_RUN, OPEN_RUN_ROWS  # noqa: E402

Flow = Generator[Any, Any, Any]
YEAR = 365 * 86400.0
BIG = "x" * 70_000  # its JSON is over 64 KiB: value_json is NULL


# -- the workflows --


def ident(value: Any) -> Any:
    return value


def boom(message: str) -> None:
    raise ValueError(message)


@replay.workflow(name="pgv_done")
def done(name: str) -> Flow:
    blob = yield Step("blob:v1", ident, b"\x00\x01\xfe\xff")
    text = yield Step("text:ü✓", ident, f"héllo {name} ✓ 🚀 nul\x00inside")
    yield Step("big:v1", ident, BIG)
    yield Note("progress:1", {"done": 1, "név": "ü", "ratio": 0.1}, text="half way ½")
    yield Sleep("nap:v1", 5)
    return {"blob": blob, "text": text, "n": 1.5}


@replay.workflow(name="pgv_fails")
def fails() -> Flow:
    yield Step("flaky:v1", boom, "nope ✗", retry=Retry(attempts=2, initial=1))
    return "unreachable"


@replay.workflow(name="pgv_backoff")
def backoff() -> Flow:
    yield Step("always:v1", boom, "again", retry=Retry(attempts=3, initial=YEAR))
    return "unreachable"


@replay.workflow(name="pgv_waits")
def waits(tag: str) -> Flow:
    yield Note("waiting:v1", tag)
    decision = yield Suspend("approve:v1", status=f"waiting for {tag} ✓")
    yield Step("after:v1", ident, decision)
    return decision


@replay.workflow(name="pgv_sleeps")
def sleeps() -> Flow:
    yield Sleep("long:v1", YEAR)
    return "woke"


@replay.workflow(name="pgv_kid")
def kid(n: int) -> Flow:
    value = yield Step("kid:v1", ident, n * 2)
    return value


@replay.workflow(name="pgv_parent")
def parent(n: int) -> Flow:
    got = yield Child("kid:v1", kid, n)
    return {"child": got}


@replay.workflow(name="pgv_parent_waits")
def parent_waits() -> Flow:
    got = yield Child("waiter:v1", waits, "a child")
    return got


@replay.workflow(name="pgv_loop")
def loop(n: int) -> Flow:
    total = yield Step(f"s:{n}", ident, n)
    yield Note(f"n:{n}", {"generation": n})
    if n < 2:
        return ContinueAsNew(n + 1)
    return total


@replay.workflow(name="pgv_loop_sleeps")
def loop_sleeps(n: int) -> Flow:
    if n < 1:
        return ContinueAsNew(n + 1)
    yield Sleep("later:v1", YEAR)
    return n


WORKFLOWS = [done, fails, backoff, waits, sleeps, kid, parent, parent_waits, loop,
             loop_sleeps]


async def _first_session(path: str) -> None:
    async with replay.open_engine(path, workflows=WORKFLOWS, code_version="v1 ✓") as engine:
        for run_id in ("Zed-done", "alpha-done", "ünï-✓-🚀"):
            await (await engine.start(done, run_id, run_id=run_id)).result()
        await engine.start(fails, run_id="failing")
        await wait_for_state(engine, "failing", "failed")
        await (await engine.start(parent, 4, run_id="parent-1")).result()
        await (await engine.start(loop, 0, run_id="looper")).result()
        for run_id in ("cancel-me", "terminate-me"):
            await engine.start(waits, run_id, run_id=run_id)
            await wait_for_state(engine, run_id, "suspended")
        await engine.cancel("cancel-me", {"why": "a test ✓"})
        await wait_for_state(engine, "cancel-me", "cancelled")
        await engine.terminate("terminate-me", "enough")
        await wait_for_state(engine, "terminate-me", "cancelled")
        # Left open: they park until years from now, and the engine closes.
        for run_id in ("suspended-1", "later-signalled"):
            await engine.start(waits, run_id, run_id=run_id)
            await wait_for_state(engine, run_id, "suspended")
        await engine.start(waits, "deadline", run_id="deadline", timeout=2 * YEAR)
        await wait_for_state(engine, "deadline", "suspended")
        await engine.start(parent_waits, run_id="parent-2")
        await wait_for_state(engine, "parent-2", "suspended")
        await wait_for_state(engine, "parent-2/waiter:v1", "suspended")
        await engine.start(sleeps, run_id="sleeper")
        await wait_for_state(engine, "sleeper", "sleeping")
        await engine.start(backoff, run_id="backoff")
        await wait_for_state(engine, "backoff", "sleeping")
        await engine.start(loop_sleeps, 0, run_id="loop-sleeper")
        await wait_for_state(engine, "loop-sleeper", "sleeping")


async def _second_session(path: str) -> None:
    async with replay.open_engine(path, workflows=WORKFLOWS, code_version="v2") as engine:
        await engine.signal("later-signalled", "approve:v1", {"ok": True, "by": "Zoë"})
        await engine.get_run("later-signalled").result()
        await (await engine.start(done, "fresh", run_id="fresh")).result()


# -- the history, made once --


@dataclass(frozen=True)
class History:
    path: str
    records: list[Record]  # every row of replay_event_all, in seq order
    events: tuple[list[str], list[str], list[tuple[Any, ...]]]  # names, types, rows
    runs: tuple[list[str], list[str], list[tuple[Any, ...]]]
    run_ids: list[str]


def _duck_view(con: duckdb.DuckDBPyConnection, query: str
               ) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
    cursor = con.execute(query)
    description = cursor.description or []
    return ([column[0] for column in description], [str(column[1]) for column in description],
            cursor.fetchall())


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    path = str(tmp_path_factory.mktemp("pg_views") / "history.duckdb")
    trio.run(_first_session, path, clock=trio.testing.MockClock(autojump_threshold=0))
    trio.run(_second_session, path, clock=trio.testing.MockClock(autojump_threshold=0))
    con = duckdb.connect(path, read_only=True)
    try:
        rows = con.execute(
            f"SELECT {DUCK_COLUMNS} FROM replay_event_all ORDER BY seq").fetchall()
        events = _duck_view(con, "SELECT * FROM replay_events ORDER BY seq")
        runs = _duck_view(con, "SELECT * FROM replay_runs ORDER BY run_id")
    finally:
        con.close()
    states = {row[0]: row[2] for row in runs[2]}
    # The variety the comparisons rely on is there.
    assert set(states.values()) == {"completed", "failed", "cancelled", "sleeping",
                                    "suspended"}, states
    assert states["later-signalled"] == "completed" and states["parent-2/waiter:v1"] == "suspended"
    records = [row_record(row) for row in rows]
    assert {r.generation for r in records} == {0, 1, 2}
    assert any(r.event == "code_changed" for r in records)
    assert any(r.value_json is None and r.value is not None for r in records)
    assert any(r.value_json is not None and "\\u0000" in r.value_json for r in records)
    return History(path, records, events, runs, sorted(states))


# -- Postgres: a schema holding the history --


def pg_connect(url: str) -> Any:
    """An autocommit connection that reads json and jsonb as text, as the store's does."""
    con = psycopg.connect(url, autocommit=True)
    con.adapters.register_loader("json", TextLoader)
    con.adapters.register_loader("jsonb", TextLoader)
    return con


def copy_records(con: Any, records: list[Record]) -> None:
    with con.cursor() as cursor, cursor.copy(
            f"COPY replay_event_log ({COPY_COLUMNS}) FROM STDIN") as copy:
        for record in records:
            copy.write_row(pg_row(record))


@pytest.fixture
def pg(pg_url: str) -> Iterator[Any]:
    """A connection to a fresh schema prepared by `prepare_schema`."""
    con = pg_connect(pg_url)
    try:
        prepare_schema(con, "the test schema")
        yield con
    finally:
        con.close()


@pytest.fixture
def loaded(pg: Any, history: History) -> Any:
    """`pg` with every record of the history copied in."""
    copy_records(pg, history.records)
    return pg


@pytest.fixture
def duck_store(history: History) -> Iterator[Store]:
    store = Store(history.path, "none")
    try:
        yield store
    finally:
        store.close()


def normal(value: Any) -> Any:
    """A value as both databases should agree on it (instants in UTC, bytes as bytes)."""
    if isinstance(value, datetime):
        assert value.tzinfo is not None
        return value.astimezone(UTC)
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def normal_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(normal(value) for value in row) for row in rows]


# DuckDB's type names and the Postgres types the same column has.
PG_TYPES = {"BIGINT": "int8", "VARCHAR": "text", "INTEGER": "int4", "BLOB": "bytea",
            "JSON": "json", "TIMESTAMP WITH TIME ZONE": "timestamptz", "DOUBLE": "float8"}


def pg_view(con: Any, query: str) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
    cursor = con.execute(query)
    names = [column.name for column in cursor.description]
    types = [con.adapters.types.get(column.type_code).name for column in cursor.description]
    return names, types, cursor.fetchall()


# -- the views --


def test_replay_events_agrees_with_duckdb(loaded: Any, history: History) -> None:
    names, types, rows = pg_view(loaded, "SELECT * FROM replay_events ORDER BY seq")
    duck_names, duck_types, duck_rows = history.events
    assert names == duck_names
    assert types == [PG_TYPES[t] for t in duck_types]
    assert len(rows) == len(history.records) > 50
    assert normal_rows(rows) == normal_rows(duck_rows)


def test_replay_runs_agrees_with_duckdb(loaded: Any, history: History) -> None:
    names, types, rows = pg_view(loaded, "SELECT * FROM replay_runs")
    duck_names, duck_types, duck_rows = history.runs
    assert names == duck_names
    assert types == [PG_TYPES[t] for t in duck_types]
    assert len(rows) == len(history.run_ids)
    # Sorted here: the two databases may collate run ids differently.
    assert sorted(normal_rows(rows)) == sorted(normal_rows(duck_rows))


def test_replay_event_all_is_the_table(loaded: Any, history: History) -> None:
    rows = loaded.execute(f"SELECT {COPY_COLUMNS} FROM replay_event_all ORDER BY seq").fetchall()
    assert normal_rows(rows) == [record_row(record) for record in history.records]


def test_value_json_keeps_the_text_as_written(loaded: Any, history: History) -> None:
    rows = loaded.execute("SELECT seq, value_json FROM replay_events ORDER BY seq").fetchall()
    assert rows == [(r.seq, r.value_json) for r in history.records]
    nul = next(r for r in history.records if r.value_json and "\\u0000" in r.value_json)
    assert loaded.execute("SELECT value_json::text FROM replay_events WHERE seq = %s",
                          [nul.seq]).fetchone() == (nul.value_json,)


# -- the engine's reads --


def test_reads_agree_with_the_duckdb_store(loaded: Any, history: History,
                                           duck_store: Store) -> None:
    shown = history.path  # messages name the database; here both name the same file
    assert _reads.last_seq_and_time(loaded) == duck_store.last_seq_and_time()
    assert _reads.generations(loaded) == duck_store.generations() == {
        "looper": 2, "loop-sleeper": 1}
    ids = [*history.run_ids, "no-such-run"]
    assert _reads.existing(loaded, ids) == duck_store.existing(ids) == set(history.run_ids)
    assert _reads.existing(loaded, []) == duck_store.existing([]) == set()
    for run_id in ids:
        assert _reads.workflow_of(loaded, run_id) == duck_store.workflow_of(run_id), run_id
        assert _reads.run_row(loaded, run_id, shown) == duck_store.run_row(run_id), run_id
        assert _reads.load_history(loaded, run_id, shown) == duck_store.load_history(run_id)
        workflow = _reads.workflow_of(loaded, run_id) or "pgv_done"
        assert (memo_state(RunHistory(_reads.load_memo(loaded, run_id, workflow)))
                == memo_state(duck_store.fold_memo(run_id, workflow))), run_id


def test_load_open_runs_agrees(loaded: Any, duck_store: Store) -> None:
    def by_run(runs: list[list[Record]]) -> dict[str, list[Record]]:
        return {records[0].run_id: records for records in runs}

    found = by_run(_reads.load_open_runs(loaded))
    opened = duck_store.load_open_runs()
    assert set(found) == {"suspended-1", "deadline", "parent-2", "parent-2/waiter:v1",
                          "sleeper", "backoff", "loop-sleeper"}
    # DuckDB reads the quiet parked runs' state instead of their records: the same
    # slot as the fold of those records.
    quiet = {row[0]: row for row in opened.parked}
    assert quiet and set(quiet) < set(found)
    assert by_run(opened.records) == {run_id: records for run_id, records in found.items()
                                      if run_id not in quiet}
    for run_id, row in quiet.items():
        folded = RunSlot.folded(found[run_id], "f", 0)
        assert folded is not None
        parked = RunSlot.parked(row, 0, {})
        assert (parked.status, parked.workflow, parked.parent, parked.generation, parked.seq,
                parked.created_at, parked.updated_at, parked.needs_start_mark) == (
            folded.status, folded.workflow, folded.parent, folded.generation, folded.seq,
            folded.created_at, folded.updated_at, folded.needs_start_mark), run_id
        started = started_record(found[run_id])
        assert started is not None and from_epoch_us(row[15]) == started.wake_at, run_id


def test_load_memos_agrees(loaded: Any, history: History, duck_store: Store) -> None:
    workflows = {run_id: _reads.workflow_of(loaded, run_id) or "" for run_id in history.run_ids}
    for runs in (workflows, {"looper": "pgv_loop"}, {"looper": "pgv_loop", "none": "x"}, {}):
        # A run with no record has no records, and an empty memo.
        records = _reads.load_memos(loaded, runs)
        assert {run_id: memo_state(RunHistory(records.get(run_id, []))) for run_id in runs} == {
            run_id: memo_state(memo) for run_id, memo in duck_store.fold_memos(runs).items()}


@pytest.mark.parametrize(("state", "workflow", "limit"), [
    (None, None, 100), (None, None, 3), ("completed", None, 100), ("sleeping", None, 100),
    (None, "pgv_done", 2), ("suspended", "pgv_waits", 100), ("cancelled", "pgv_waits", 100),
    ("failed", "pgv_fails", 1), ("failed", "pgv_waits", 100), ("nothing", None, 100),
])
def test_list_runs_agrees(loaded: Any, history: History, duck_store: Store,
                          state: str | None, workflow: str | None, limit: int) -> None:
    found = _reads.list_runs(loaded, state, workflow, limit, history.path)
    assert found == duck_store.list_runs(state, workflow, limit)
    if (state, workflow) not in {("failed", "pgv_waits"), ("nothing", None)}:
        assert found


def test_a_damaged_run_reads_as_failed_naming_the_database(pg: Any, history: History) -> None:
    started = next(r for r in history.records if r.run_id == "alpha-done")
    copy_records(pg, [replace(started, run_state="exploded")])
    row = _reads.run_row(pg, "alpha-done", "postgresql://db/shown")
    assert row is not None and row.state == "failed" and row.error
    assert "postgresql://db/shown" in row.error
    pg.execute("UPDATE replay_event_log SET recorded_at = NULL")
    with pytest.raises(DatabaseError, match="postgresql://db/shown"):
        _reads.load_history(pg, "alpha-done", "postgresql://db/shown")


def test_the_engine_queries_read_one_run_by_the_index(loaded: Any) -> None:
    # With sequential scans priced out, a plan without one shows an index serves
    # every part: ONE_RUN reads one run's rows, OPEN_RUN_ROWS no finished run's rows.
    loaded.execute("SET enable_seqscan = off")
    for query, params in ((ONE_RUN, ["looper"]), (OPEN_RUN_ROWS, []),
                          (_reads._HISTORY, ["looper"]), (_reads._MEMOS, [["a", "b"]])):
        plan = "\n".join(row[0] for row in loaded.execute("EXPLAIN " + query, params))
        assert "Seq Scan" not in plan, plan
        assert "replay_event_log_" in plan, plan


# -- prepare_schema --


def _tables_and_views(con: Any) -> set[tuple[str, str]]:
    rows = con.execute("SELECT table_name, table_type FROM information_schema.tables "
                       "WHERE table_schema = current_schema()").fetchall()
    return set(rows)


def test_prepare_creates_the_schema(pg: Any) -> None:
    assert _tables_and_views(pg) == {
        ("replay_meta", "BASE TABLE"), ("replay_event_log", "BASE TABLE"),
        ("replay_event_all", "VIEW"), ("replay_events", "VIEW"), ("replay_runs", "VIEW"),
        ("replay_lease", "BASE TABLE"), ("replay_member", "BASE TABLE"),
        ("replay_inbox", "BASE TABLE"), ("replay_block", "BASE TABLE")}
    assert pg.execute("SELECT * FROM replay_meta").fetchall() == [
        ("schema_version", str(PG_SCHEMA_VERSION))]
    indexes = {row[0] for row in pg.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
    assert indexes == {"replay_event_log_pkey", "replay_event_log_run",
                       "replay_event_log_state", "replay_lease_pkey", "replay_lease_free",
                       "replay_lease_owner", "replay_member_pkey", "replay_member_root",
                       "replay_inbox_pkey", "replay_inbox_run", "replay_block_pkey"}


def test_prepare_keeps_an_existing_schema(loaded: Any, history: History) -> None:
    loaded.execute("CREATE VIEW mine AS SELECT run_id FROM replay_runs")  # a user's view
    prepare_schema(loaded, "the test schema")
    prepare_schema(loaded, "the test schema")
    assert loaded.execute("SELECT count(*) FROM replay_events").fetchone() == (
        len(history.records),)
    assert loaded.execute("SELECT count(*) FROM mine").fetchone() == (len(history.run_ids),)
    assert loaded.execute("SELECT count(*) FROM replay_meta").fetchone() == (1,)


def test_prepare_refuses_another_schema_version(pg: Any) -> None:
    pg.execute("UPDATE replay_meta SET value = '99'")
    with pytest.raises(DatabaseError, match=re.escape(
            "database 'shown' has replay schema version '99', but this version of replay "
            f"reads schema version {PG_SCHEMA_VERSION}; upgrade replay-workflows")):
        prepare_schema(pg, "shown")
    pg.execute("DELETE FROM replay_meta")
    with pytest.raises(DatabaseError, match="has replay schema version None"):
        prepare_schema(pg, "shown")


@pytest.mark.parametrize("damage, problem", [
    ("DROP VIEW replay_runs", "its view replay_runs is missing"),
    ("DROP VIEW replay_events", "its view replay_events is missing"),
    ("DROP VIEW replay_runs; DROP VIEW replay_events; DROP VIEW replay_event_all; "
     "CREATE TABLE replay_event_all (seq bigint)", "its view replay_event_all is a table"),
    ("DROP TABLE replay_event_log CASCADE", "its table replay_event_log is missing"),
    ("DROP VIEW replay_runs; DROP VIEW replay_events; DROP VIEW replay_event_all; "
     "ALTER TABLE replay_event_log ALTER COLUMN value_json TYPE jsonb; " + _VIEWS,
     "its table replay_event_log lacks columns (value_json json)"),
    ("DROP VIEW replay_runs; DROP VIEW replay_events; DROP VIEW replay_event_all; "
     "ALTER TABLE replay_event_log DROP COLUMN code_version",
     "its view replay_event_all is missing"),
])
def test_prepare_refuses_a_damaged_schema(pg: Any, damage: str, problem: str) -> None:
    pg.execute(damage)
    with pytest.raises(DatabaseError, match=re.escape(
            f"database 'shown' is damaged: {problem}; restore the schema from a backup")):
        prepare_schema(pg, "shown")


def test_prepare_refuses_replay_names_without_replay_meta(pg_url: str) -> None:
    with pg_connect(pg_url) as con:
        con.execute("CREATE TABLE replay_event_log (seq bigint)")
        with pytest.raises(DatabaseError, match=re.escape(
                "database 'shown' has a table replay_event_log in schema ")) as caught:
            prepare_schema(con, "shown")
        assert "but no replay_meta table" in str(caught.value)
        assert _tables_and_views(con) == {("replay_event_log", "BASE TABLE")}
        con.execute("DROP TABLE replay_event_log")
        con.execute("CREATE VIEW replay_runs AS SELECT 1 AS one")
        with pytest.raises(DatabaseError, match="has a view replay_runs in schema"):
            prepare_schema(con, "shown")


def test_prepare_creates_beside_other_tables(pg_url: str) -> None:
    with pg_connect(pg_url) as con:
        con.execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (7)")
        prepare_schema(con, "shown")
        assert ("replay_runs", "VIEW") in _tables_and_views(con)
        assert con.execute("SELECT * FROM orders").fetchall() == [(7,)]


def test_prepare_needs_an_existing_schema(pg_url: str) -> None:
    missing = re.sub(r"csearch_path%3D\w+", "csearch_path%3Dno_such_schema_here", pg_url)
    assert missing != pg_url
    with pg_connect(missing) as con, pytest.raises(DatabaseError, match=re.escape(
            "database 'shown' has no schema to keep replay's tables in: none of the "
            "schemas on its search_path (no_such_schema_here) exists and is usable")):
        prepare_schema(con, "shown")


def _as_role(url: str, role: str) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = f"{role}@{parts.netloc.rsplit('@', 1)[-1]}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def test_prepare_says_which_privilege_is_missing(pg_url: str) -> None:
    schema = urllib.parse.unquote(pg_url).rsplit("search_path=", 1)[1]
    role = f"replay_test_{uuid.uuid4().hex[:12]}"
    with pg_connect(pg_url) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        try:
            with pg_connect(_as_role(pg_url, role)) as con:
                with pytest.raises(DatabaseError, match="is usable by the user"):
                    prepare_schema(con, "shown")  # no USAGE: the schema is not on its path
                admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
                with pytest.raises(DatabaseError, match=re.escape(
                        "database 'shown' refused to set up replay's tables: permission "
                        "denied for schema")):
                    prepare_schema(con, "shown")
                admin.execute(f'GRANT CREATE ON SCHEMA "{schema}" TO {role}')
                prepare_schema(con, "shown")
                assert con.execute("SELECT count(*) FROM replay_runs").fetchone() == (0,)
        finally:
            admin.execute(f'DROP OWNED BY {role}; DROP ROLE {role}')


def _prepare_at_once(url: str, engines: int) -> list[BaseException]:
    """Call `prepare_schema` on `engines` connections at the same moment; return errors."""
    cons = [pg_connect(url) for _ in range(engines)]
    barrier = threading.Barrier(engines)
    failures: list[BaseException] = []

    def prepare(con: Any) -> None:
        barrier.wait()
        try:
            prepare_schema(con, "shown")
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=prepare, args=(con,)) for con in cons]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for con in cons:
        con.close()
    return failures


def test_prepare_at_once_on_a_new_schema(pg_url: str) -> None:
    # Without the advisory lock, two of them create the tables and one fails.
    schema = urllib.parse.unquote(pg_url).rsplit("search_path=", 1)[1]
    with pg_connect(pg_url) as admin:
        for _ in range(5):
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE; CREATE SCHEMA "{schema}"')
            assert _prepare_at_once(pg_url, 4) == []
            assert admin.execute("SELECT * FROM replay_meta").fetchall() == [
                ("schema_version", str(PG_SCHEMA_VERSION))]
        assert _prepare_at_once(pg_url, 4) == []  # and on an existing one


# -- pg_row --


def _record(**fields: Any) -> Record:
    values: dict[str, Any] = {
        "run_id": "r1", "workflow": "w", "kind": "step", "event": "failed", "key": "k",
        "attempt": 1, "value": b"\x00\x80", "value_json": '"a\\u0000b"',
        "error_type": "builtins.ValueError", "error": "bad", "seq": 1,
        "recorded_at": datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        "status_text": "s", "code_version": "v1", "error_types": ("builtins.ValueError",),
    }
    return Record(**(values | fields))


def test_pg_row_is_the_duckdb_row_without_nul() -> None:
    record = _record()
    assert pg_row(record) == record_row(record)
    assert len(pg_row(record)) == len(COPY_COLUMNS.split(","))


@pytest.mark.parametrize("field", ["run_id", "workflow", "key", "name"])
def test_pg_row_refuses_nul_in_identifiers(field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(
            f"the {field} 'a\\x00b' holds a NUL character (\\x00), which PostgreSQL "
            f"text cannot hold; use a {field} without NUL characters")):
        pg_row(_record(**{field: "a\x00b"}))


def test_pg_row_replaces_nul_in_descriptive_text(pg: Any) -> None:
    record = _record(error_type="bad\x00.Type", error="line\x00two \ud800",
                     error_types=("x\x00y", "z"), status_text="\x00", code_version="v\x00")
    copy_records(pg, [record])
    row = pg.execute("SELECT error_type, error, error_types, status_text, code_version, "
                     "value, value_json FROM replay_event_log").fetchone()
    assert row == ("bad\ufffd.Type", "line\ufffdtwo \\ud800", "x\ufffdy,z", "\ufffd",
                   "v\ufffd", b"\x00\x80", '"a\\u0000b"')
    loaded = _reads.load_history(pg, "r1", "shown")
    assert loaded == [replace(record, error_type="bad\ufffd.Type", error="line\ufffdtwo \\ud800",
                              error_types=("x\ufffdy", "z"), status_text="\ufffd",
                              code_version="v\ufffd")]

