"""`engine.watch()` on a PostgreSQL schema shared by several engines (`replay._engine._feed`).

An engine-wide watch sees the runs every engine executes: this engine's from memory,
the others' read from the schema every `poll_interval`, each event once, in each run's
`seq` order, with the state it left the run in. The looks themselves (which blocks of
`seq` they read) are tested on the store; the engines' tests run in real time (leases
and blocks age by the server's clock).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import trio
import trio.testing

import replay
from replay import RunUpdate, Step, Suspend
from replay._pg import _leases
from replay._pg._schema import LOG_COLUMNS, PG_SCHEMA_VERSION
from replay._pg._store import PgStore
from replay._store import SEQ_BLOCK, WorkerOptions
from replay._store._protocol import Marks
from replay._types import FINISHED


def double(value: int) -> int:
    return value * 2


def doubled(value: int) -> Generator[Any, Any, int]:
    return int((yield Step("double", double, value)))


def approval() -> Generator[Any, Any, str]:
    answer = yield Suspend("approval")
    return f"approved by {answer}"


def two_approvals() -> Generator[Any, Any, str]:
    first = yield Suspend("first")
    yield Step("note", double, 1)
    second = yield Suspend("second")
    return f"{first}, {second}"


WORKFLOWS = [doubled, approval, two_approvals]
FAST = {"poll_interval": 0.05}


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Real time: the engines' leases and blocks age by the server's clock."""
    return trio.testing.MockClock(rate=1.0)


def admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


async def take_until(updates: Any, done: Callable[[list[RunUpdate]], bool],
                     seconds: float = 20) -> list[RunUpdate]:
    """Read updates until `done` says so (failing after `seconds`)."""
    seen: list[RunUpdate] = []
    with trio.fail_after(seconds):
        while not done(seen):
            seen.append(await updates.__anext__())
    return seen


def finished(*run_ids: str) -> Callable[[list[RunUpdate]], bool]:
    """Whether each of `run_ids` has had the event that finished it."""
    def done(seen: list[RunUpdate]) -> bool:
        ended = {u.run_id for u in seen if u.kind == "event" and u.info is not None
                 and u.info.state in FINISHED}
        return ended >= set(run_ids)
    return done


def check_events(url: str, seen: list[RunUpdate], run_id: str, after: int = 0) -> None:
    """The run's events after `after` were each seen once, in order, with their state."""
    with admin(url) as con:
        rows = con.execute("SELECT seq, run_state FROM replay_event_log WHERE run_id = %s "
                           "ORDER BY seq", [run_id]).fetchall()
    expected, state = [], "running"
    for seq, run_state in rows:
        state = run_state or state
        if seq > after:
            expected.append((seq, state))
    events = [(u.seq, u.info.state.value if u.info else None)
              for u in seen if u.kind == "event" and u.run_id == run_id]
    assert events == expected


async def test_an_engine_wide_watch_sees_the_runs_another_engine_executes(
        pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="a", **FAST) as a, \
            replay.open_engine(pg_url, workflows=WORKFLOWS, worker="b", max_runs=0,
                               **FAST) as b:
        parked = await a.start(approval, run_id="p1")
        await parked.wait(replay.RunState.SUSPENDED)
        async with b.watch() as updates:
            first = await updates.__anext__()
            assert (first.kind, first.run_id) == ("snapshot", "p1")
            assert first.info is not None and first.info.state is replay.RunState.SUSPENDED
            # These start and finish while b does not look: its next look finds them.
            for value in range(3):
                assert await (await a.start(doubled, value, run_id=f"d{value}")).result() == (
                    2 * value)
            await a.signal("p1", "approval", "ann")
            seen = await take_until(updates, finished("p1", "d0", "d1", "d2"))
    assert not [u for u in seen if u.kind != "event"]
    check_events(pg_url, seen, "p1", after=first.seq)
    for value in range(3):
        check_events(pg_url, seen, f"d{value}")
    assert seen[-1].info is not None and seen[-1].info.state is replay.RunState.COMPLETED


async def test_the_filters_of_an_engine_wide_watch_apply_to_other_engines_runs(
        pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="a", **FAST) as a, \
            replay.open_engine(pg_url, workflows=WORKFLOWS, worker="b", max_runs=0,
                               **FAST) as b, b.watch(workflow=approval) as of_approval, \
            b.watch(states=("suspended", "completed")) as of_states:
        await (await a.start(approval, run_id="p0")).wait(replay.RunState.SUSPENDED)
        for updates in (of_approval, of_states):  # each starts with its snapshot
            first = await updates.__anext__()
            assert (first.kind, first.run_id) == ("snapshot", "p0")
        assert await (await a.start(doubled, 4, run_id="d1")).result() == 8
        await (await a.start(approval, run_id="p1")).wait(replay.RunState.SUSPENDED)
        await a.signal("p0", "approval", "bo")
        await a.signal("p1", "approval", "bo")
        approval_seen = await take_until(of_approval, finished("p0", "p1"))
        states_seen = await take_until(of_states, finished("p0", "p1", "d1"))
    assert {u.run_id for u in approval_seen} == {"p0", "p1"}
    check_events(pg_url, approval_seen, "p0", after=first.seq)
    check_events(pg_url, approval_seen, "p1")
    assert [(u.run_id, u.info.state.value) for u in states_seen if u.info] == [
        ("d1", "completed"), ("p1", "suspended"), ("p0", "completed"), ("p1", "completed")]


def copy_run(url: str, source: str, run_id: str, block: int) -> None:
    """Write `source`'s records again as run `run_id`, numbered from `block` (by hand)."""
    others = [name for name, _ in LOG_COLUMNS if name not in ("seq", "run_id")]
    with admin(url) as con:
        con.execute(f"INSERT INTO replay_event_log (seq, run_id, {', '.join(others)}) "
                    f"SELECT %s + row_number() OVER (ORDER BY seq), %s, {', '.join(others)} "
                    "FROM replay_event_log WHERE run_id = %s", [block, run_id, source])


async def test_records_an_older_block_gets_after_a_newer_one_are_not_missed(
        pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="a", **FAST) as a, \
            replay.open_engine(pg_url, workflows=WORKFLOWS, worker="b", max_runs=0,
                               **FAST) as b:
        assert await (await a.start(doubled, 3, run_id="source")).result() == 6
        await (await a.start(approval, run_id="p0")).wait(replay.RunState.SUSPENDED)
        async with b.watch() as updates:
            assert (await updates.__anext__()).kind == "snapshot"  # the watch has started
            with admin(pg_url) as con:  # a worker "z" that claimed runs between batches
                older = _leases.seq_block(con, "z")
                newer = _leases.seq_block(con, "z")
            copy_run(pg_url, "source", "late", newer)
            seen = await take_until(updates, finished("late"))
            # A batch numbered from the older block, committed after the newer one's.
            copy_run(pg_url, "source", "early", older)
            seen += await take_until(updates, finished("early"))
    assert older < newer
    check_events(pg_url, seen, "late")
    check_events(pg_url, seen, "early")


async def test_a_run_that_moves_to_the_watching_engine_shows_each_event_once(
        pg_url: str) -> None:
    # The watching engine looks at the schema only every 30 s: what it yields before
    # then, it found by the look its own first event of the run (claimed) called for.
    seen: list[RunUpdate] = []
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="b",
                                  poll_interval=30) as b, \
            b.watch() as updates, trio.open_nursery() as nursery:
        async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="a",
                                      **FAST) as a:
            run = await a.start(two_approvals, run_id="m1")
            await run.wait(replay.RunState.SUSPENDED)
            first = await updates.__anext__()
            assert (first.kind, first.run_id) == ("snapshot", "m1")

            async def consume() -> None:
                seen.extend(await take_until(updates, finished("m1")))

            nursery.start_soon(consume)
            with trio.fail_after(10):  # its first look done, it waits 30 s for the next
                while updates._feed._next_look < trio.current_time() + 20:
                    await trio.sleep(0.01)
            await a.signal("m1", "first", "ann")  # recorded by a: not looked at
            await run.wait(until=lambda info: info.waiting_for == "second")
        # a closed and freed the run: b claims it, and numbers its records from a fresh block.
        await b.signal("m1", "second", "bob")
    assert seen[-1].info is not None and seen[-1].info.output == "ann, bob"
    check_events(pg_url, seen, "m1", after=first.seq)
    with admin(pg_url) as con:  # the run moved: records of both workers
        workers = con.execute(
            "SELECT DISTINCT b.worker FROM replay_event_log e JOIN replay_block b "
            "ON e.seq > b.block AND e.seq <= b.block + %s WHERE e.run_id = 'm1'",
            [SEQ_BLOCK]).fetchall()
    assert sorted(workers) == [("a",), ("b",)]


async def test_a_look_that_finds_more_than_the_buffer_says_missed_then_snapshots(
        pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="a", **FAST) as a, \
            replay.open_engine(pg_url, workflows=WORKFLOWS, worker="b", max_runs=0,
                               **FAST) as b:
        await (await a.start(approval, run_id="p1")).wait(replay.RunState.SUSPENDED)
        async with b.watch(buffer=3) as updates:
            assert (await updates.__anext__()).kind == "snapshot"
            for value in range(3):
                await (await a.start(doubled, value, run_id=f"d{value}")).result()
            missed = await updates.__anext__()
            snap = await updates.__anext__()
            await a.signal("p1", "approval", "cy")
            seen = await take_until(updates, finished("p1"))
    with admin(pg_url) as con:
        events = con.execute("SELECT count(*) FROM replay_event_log "
                             "WHERE run_id LIKE 'd%'").fetchone()
    assert (missed.kind, missed.info, missed.missed) == ("missed", None, events[0] if events
                                                         else None)
    assert (snap.kind, snap.run_id) == ("snapshot", "p1")
    assert snap.info is not None and snap.info.state is replay.RunState.SUSPENDED
    check_events(pg_url, seen, "p1", after=snap.seq)


async def test_a_version_2_schema_is_upgraded_to_3_and_watched(pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="a") as engine:
        await (await engine.start(approval, run_id="p1")).wait(replay.RunState.SUSPENDED)
    with admin(pg_url) as con:  # what a version-2 schema had
        con.execute("DROP TABLE replay_block; "
                    "UPDATE replay_meta SET value = '2' WHERE name = 'schema_version'")
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="a", **FAST) as a, \
            replay.open_engine(pg_url, workflows=WORKFLOWS, worker="b", max_runs=0,
                               **FAST) as b, b.watch() as updates:
        first = await updates.__anext__()
        assert (first.kind, first.run_id) == ("snapshot", "p1")
        await a.signal("p1", "approval", "dee")
        seen = await take_until(updates, finished("p1"))
    check_events(pg_url, seen, "p1", after=first.seq)
    with admin(pg_url) as con:
        assert con.execute("SELECT value FROM replay_meta WHERE name = 'schema_version'"
                           ).fetchone() == (str(PG_SCHEMA_VERSION),) == ("3",)
        assert {row[0] for row in con.execute("SELECT worker FROM replay_block")} >= {"a", "b"}


async def test_a_version_1_schema_is_upgraded_to_3(pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS) as engine:
        await (await engine.start(approval, run_id="p1")).wait(replay.RunState.SUSPENDED)
    with admin(pg_url) as con:  # what a version-1 schema had
        con.execute("DROP TABLE replay_lease, replay_member, replay_inbox, replay_block; "
                    "DROP SEQUENCE replay_seq_block, replay_lease_token; "
                    "UPDATE replay_meta SET value = '1' WHERE name = 'schema_version'")
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, **FAST) as engine:
        await engine.signal("p1", "approval", "eve")
        assert await engine.get_run("p1").result() == "approved by eve"
    with admin(pg_url) as con:
        assert con.execute("SELECT value FROM replay_meta WHERE name = 'schema_version'"
                           ).fetchone() == ("3",)


async def test_on_a_duckdb_file_an_engine_wide_watch_never_looks_at_the_store(
        tmp_path: Any) -> None:
    async with replay.open_engine(tmp_path / "r.db", workflows=WORKFLOWS) as engine:
        assert engine.watch()._feed is None  # nothing but its own commits


# -- the looks themselves, on the store --


def insert(con: psycopg.Connection[Any], *seqs: int) -> None:
    """Commit bare records numbered `seqs` (enough for a look, which reads rows)."""
    for seq in seqs:
        con.execute("INSERT INTO replay_event_log (seq, run_id, workflow, kind, event, "
                    "recorded_at) VALUES (%s, 'x', 'w', 'note', 'noted', now())", [seq])


def looked(store: PgStore, marks: Marks, limit: int = 100) -> tuple[list[int], Marks, bool]:
    news = store.sharing.records_after(marks, None, limit)
    return [record.seq for record in news.records], news.marks, news.complete


def test_a_look_reads_each_block_that_may_still_get_records(pg_url: str) -> None:
    store = PgStore(pg_url, "none", WorkerOptions(worker="b"))
    try:
        with admin(pg_url) as con:
            marks = store.sharing.watch_marks()
            own = store.sharing.first_block
            assert (marks.read, marks.own) == ({}, own)
            first = _leases.seq_block(con, "z")
            insert(con, first + 1, own + 1)  # this engine's own records are not read
            seqs, marks, _ = looked(store, marks)
            assert seqs == [first + 1] and marks.read == {first: first + 1}
            second = _leases.seq_block(con, "z")  # z claimed: the first block is still live
            insert(con, second + 1, first + 2)
            seqs, marks, _ = looked(store, marks)
            assert seqs == [first + 2, second + 1]
            assert marks.read == {first: first + 2, second: second + 1}
            assert (marks.newest, marks.own) == (second, own)
            # Once z moved on from it long enough ago, the first block is read a last time.
            con.execute("UPDATE replay_block SET taken_at = now() - interval '1 hour' "
                        "WHERE block = %s", [second])
            insert(con, first + 3)
            seqs, marks, _ = looked(store, marks)
            assert seqs == [first + 3] and marks.read == {second: second + 1}
            insert(con, first + 4, second + 2)
            seqs, marks, complete = looked(store, marks)
            assert (seqs, complete) == ([second + 2], True)
            # More than the limit: the marks pass them all (the watch counts them missed).
            insert(con, *range(second + 3, second + 8))
            seqs, marks, _ = looked(store, marks, limit=2)
            assert seqs == [second + 3, second + 4] and marks.read == {second: second + 7}
            # A watch that did not look for long: complete unless a block was pruned since.
            stale = Marks(marks.read, marks.newest, marks.own, marks.at - timedelta(hours=1))
            assert looked(store, stale)[2] is True
            pruned = _leases.seq_block(con, "z")
            assert looked(store, stale)[2] is True
            con.execute("DELETE FROM replay_block WHERE block = %s", [pruned])
            assert looked(store, stale)[2] is False
            assert looked(store, marks)[2] is True  # a recent look: it was not lost
    finally:
        store.close()


def test_renewals_forget_the_blocks_no_look_reads_any_more(pg_url: str) -> None:
    store = PgStore(pg_url, "none", WorkerOptions(worker="b"))
    store.close()
    with admin(pg_url) as con:
        blocks = [_leases.seq_block(con, "z") for _ in range(3)]
        assert _leases.seq_block(con) > blocks[-1]  # the `replay` command's
        con.execute("UPDATE replay_block SET taken_at = now() - interval '1 hour' "
                    "WHERE block = %s", [blocks[1]])
        _leases.renew(con, "b", 15.0, [])
        kept = con.execute("SELECT block, worker FROM replay_block ORDER BY block").fetchall()
    assert [row for row in kept if row[1] == "z"] == [(blocks[1], "z"), (blocks[2], "z")]
    assert {row[1] for row in kept} == {"b", "z", "replay command"}
