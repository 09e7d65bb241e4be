"""Engines sharing one PostgreSQL schema, in one process (`replay._pg._sharing`).

Two engines with different worker names open the same schema: runs started without
room are claimed by the other one, signals, cancellations and waits reach runs the
other one executes, and an engine whose lease was taken records nothing more. The
tests with engine processes (killed, paused, many runs) are in test_pg_workers.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from typing import Any

import psycopg
import pytest
import trio

import replay
from replay import Step, Suspend

executed: dict[str, list[str]] = {}
gate = threading.Event()


def record(worker: str, value: int) -> int:
    executed.setdefault(worker, []).append(str(value))
    return value * 2


def wait_at_gate() -> str:
    assert gate.wait(30)
    return "through"


def doubled(value: int) -> Generator[Any, Any, int]:
    result = yield Step("double", record, "any", value)
    return int(result)


def approval() -> Generator[Any, Any, str]:
    answer = yield Suspend("approval")
    return f"approved by {answer}"


def gated() -> Generator[Any, Any, str]:
    return str((yield Step("gate", wait_at_gate)))


WORKFLOWS = [doubled, approval, gated]
FAST = {"poll_interval": 0.05}


def admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


async def test_a_run_started_without_room_is_executed_by_another_engine(pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="client",
                                  max_runs=0, **FAST) as client, \
            replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w1", **FAST):
        runs = [await client.start(doubled, value, run_id=f"r{value}") for value in range(5)]
        assert [await run.result() for run in runs] == [0, 2, 4, 6, 8]
        # Each ran once, and the client's own view of them is the database's.
        assert sorted(await client.sql(
            "SELECT run_id, state FROM replay_runs ORDER BY run_id")) == [
            (f"r{value}", "completed") for value in range(5)]
        assert client.status("r3").state is replay.RunState.COMPLETED
    with admin(pg_url) as con:  # every family ended: no lease nor member is left
        assert con.execute("SELECT count(*) FROM replay_lease").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM replay_member").fetchone() == (0,)


async def test_a_signal_through_one_engine_reaches_a_run_parked_in_another(
        pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w1",
                                  **FAST) as holder, \
            replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w2", **FAST) as other:
        run = await holder.start(approval, run_id="a1")
        await run.wait(replay.RunState.SUSPENDED)
        await other.signal("a1", "approval", "ann")
        assert await other.get_run("a1").result() == "approved by ann"
        assert await run.result() == "approved by ann"
        with pytest.raises(replay.SignalRejected, match="finished"):
            await other.signal("a1", "approval", "bob")
        with pytest.raises(replay.RunNotFound):
            await other.signal("nobody", "approval", "bob")


async def test_a_cancellation_through_one_engine_ends_a_run_parked_in_another(
        pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w1",
                                  **FAST) as holder, \
            replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w2", **FAST) as other:
        run = await holder.start(approval, run_id="a1")
        await run.wait(replay.RunState.SUSPENDED)
        await other.cancel("a1", "not needed")
        info = await other.get_run("a1").wait(replay.RunState.CANCELLED)
        assert info.state is replay.RunState.CANCELLED
        with admin(pg_url) as con:
            assert con.execute("SELECT count(*) FROM replay_inbox").fetchone() == (0,)


async def test_runs_of_an_engine_that_closed_are_taken_by_another_at_once(
        pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w1", **FAST) as first:
        await (await first.start(approval, run_id="a1")).wait(replay.RunState.SUSPENDED)
    with admin(pg_url) as con:  # closing freed the lease
        assert con.execute("SELECT owner FROM replay_lease").fetchall() == [(None,)]
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w2", **FAST) as second:
        await second.signal("a1", "approval", "cy")
        assert await second.get_run("a1").result() == "approved by cy"


async def test_an_engine_hands_back_a_run_it_cannot_run_after_a_call_on_it(
        pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w1", **FAST) as first:
        await (await first.start(approval, run_id="a1")).wait(replay.RunState.SUSPENDED)
    async with replay.open_engine(pg_url, workflows=[doubled], worker="w2", **FAST) as other:
        await other.signal("a1", "approval", "dee")  # checked and recorded here, as alone
        with pytest.raises(replay.SignalRejected, match="already"):
            await other.signal("a1", "approval", "eve")
        # w2 runs no approval: it freed the family again for one that does, at once.
        with admin(pg_url) as con:
            assert con.execute("SELECT owner FROM replay_lease").fetchall() == [(None,)]
        async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w1",
                                      **FAST) as first:
            assert await first.get_run("a1").result() == "approved by dee"
        assert await other.get_run("a1").result() == "approved by dee"


fails = {"now": True}


def maybe_fail() -> str:
    if fails["now"]:
        raise RuntimeError("not yet")
    return "ok"


def flaky() -> Generator[Any, Any, str]:
    return str((yield Step("try", maybe_fail, retry=replay.Retry(attempts=1))))


async def test_a_run_resumed_in_another_engine_numbers_its_records_after_its_end(
        pg_url: str) -> None:
    fails["now"] = True
    async with replay.open_engine(pg_url, workflows=[flaky], worker="a", **FAST) as first:
        # The second engine opened later: its block of seq is above the first's.
        async with replay.open_engine(pg_url, workflows=[flaky], worker="b",
                                      **FAST) as second:
            with pytest.raises(replay.WorkflowFailed):
                await (await second.start(flaky, run_id="f1")).result()
        fails["now"] = False
        assert await (await first.resume("f1")).result() == "ok"
    with admin(pg_url) as con:
        assert con.execute(
            "SELECT event FROM replay_events WHERE run_id = 'f1' AND kind = 'run' "
            "ORDER BY seq").fetchall() == [
            ("started",), ("failed",), ("resumed",), ("completed",)]


async def test_an_engine_whose_lease_was_taken_records_nothing_and_stops(
        pg_url: str) -> None:
    gate.clear()
    with pytest.raises(replay.LeaseLost, match="lost the lease of a run"):
        async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w1",
                                      **FAST) as engine:
            await engine.start(gated, run_id="g1")
            with admin(pg_url) as con:
                # As another engine would after the lease expired: a new owner and token.
                con.execute("UPDATE replay_lease SET owner = 'thief', token = token + 1000")
            gate.set()
            await engine.get_run("g1").result()
    with admin(pg_url) as con:
        assert con.execute(
            "SELECT count(*) FROM replay_events WHERE kind = 'step' AND event = 'completed'"
        ).fetchone() == (0,)


async def test_an_engine_that_finds_its_lease_taken_stops_without_waiting_for_a_commit(
        pg_url: str) -> None:
    gate.clear()
    try:
        with pytest.raises(replay.LeaseLost, match="lost the leases of 1 run family"):
            async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w1",
                                          lease=0.6, shutdown_timeout=0, **FAST) as engine:
                await engine.start(gated, run_id="g1")
                with admin(pg_url) as con:
                    con.execute("UPDATE replay_lease SET owner = 'thief', token = token + 1000")
                with trio.fail_after(10):  # the step never ends: the renewal notices
                    await trio.sleep_forever()
    finally:
        gate.set()
    with admin(pg_url) as con:
        assert con.execute(
            "SELECT count(*) FROM replay_events WHERE run_id = 'g1' AND kind = 'step'"
        ).fetchone() == (0,)


async def test_a_family_an_engine_owns_without_knowing_expires_for_another_engine(
        pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="client",
                                  max_runs=0, **FAST) as client, \
            replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w1", lease=0.6,
                               max_runs=0, **FAST):
        await client.start(doubled, 3, run_id="o1")  # its family is free
        with admin(pg_url) as con:  # as a claim whose commit w1 never heard of
            con.execute("UPDATE replay_lease SET owner = 'w1', token = 424242, "
                        "expires_at = now() + interval '0.6 second'")
        async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w2",
                                      **FAST) as other:
            # w1 does not renew it: it expires, and w2 takes it (real time: the lease).
            deadline = time.monotonic() + 10
            while other.status("o1").state is not replay.RunState.COMPLETED:
                assert time.monotonic() < deadline, "w2 never took the run over"
                await trio.to_thread.run_sync(time.sleep, 0.05)
            assert await other.get_run("o1").result() == 6


async def test_an_engine_takes_back_an_expired_family_it_owned_without_knowing(
        pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="client",
                                  max_runs=0, **FAST) as client:
        await client.start(approval, run_id="a3")  # its family is free
        with admin(pg_url) as con, con.transaction():
            # Locked, so that w1 does not claim it as it opens; then put in w1's name as
            # a claim whose commit w1 never heard of would leave it.
            con.execute("SELECT 1 FROM replay_lease WHERE root_id = 'a3' FOR UPDATE")
            worker = replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w1",
                                        lease=0.6, **FAST)
            await worker.__aenter__()
            con.execute("UPDATE replay_lease SET owner = 'w1', token = 424242, "
                        "expires_at = now() + interval '0.6 second'")
        try:
            # Queued for w1, which keeps it until it holds the run: once the lease has
            # expired, it claims the family it did not know it owned, and delivers it.
            await client.signal("a3", "approval", "kim")
            deadline = time.monotonic() + 10
            while client.status("a3").state is not replay.RunState.COMPLETED:
                assert time.monotonic() < deadline, "w1 never took its family back"
                await trio.to_thread.run_sync(time.sleep, 0.05)
            assert await client.get_run("a3").result() == "approved by kim"
        finally:
            await worker.__aexit__(None, None, None)


async def test_a_worker_name_is_one_engine_at_a_time(pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w1"):
        with pytest.raises(replay.DatabaseLocked, match="another engine runs as worker 'w1'"):
            async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w1"):
                pass
        async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w2"):
            pass


@pytest.mark.parametrize(("options", "error", "words"), [
    ({"worker": ""}, ValueError, "worker must be a non-empty name"),
    ({"worker": 7}, TypeError, "worker must be a str"),
    ({"lease": 0}, ValueError, "lease must be a finite number of seconds > 0"),
    ({"lease": "5"}, TypeError, "lease must be a number of seconds"),
    ({"poll_interval": float("inf")}, ValueError, "poll_interval must be a finite"),
    ({"max_runs": -1}, ValueError, "max_runs must be >= 0"),
    ({"max_runs": 2.5}, TypeError, "max_runs must be an int or None"),
])
async def test_bad_worker_options_are_refused(pg_url: str, options: dict[str, Any],
                                              error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        async with replay.open_engine(pg_url, workflows=WORKFLOWS, **options):
            pass


async def test_worker_options_on_a_duckdb_file_are_refused(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="apply to a PostgreSQL database shared"):
        async with replay.open_engine(tmp_path / "r.db", workflows=WORKFLOWS, worker="w1"):
            pass


async def test_a_version_1_schema_is_upgraded_and_its_runs_go_on(pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS) as engine:
        await (await engine.start(approval, run_id="a1")).wait(replay.RunState.SUSPENDED)
        assert await (await engine.start(doubled, 4, run_id="d1")).result() == 8
    with admin(pg_url) as con:  # what a version-1 schema had
        con.execute("DROP TABLE replay_lease, replay_member, replay_inbox, replay_block; "
                    "DROP SEQUENCE replay_seq_block, replay_lease_token; "
                    "UPDATE replay_meta SET value = '1' WHERE name = 'schema_version'")
        last = con.execute("SELECT max(seq) FROM replay_event_log").fetchone()
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, **FAST) as engine:
        await engine.signal("a1", "approval", "dee")
        assert await engine.get_run("a1").result() == "approved by dee"
    with admin(pg_url) as con:
        assert con.execute("SELECT value FROM replay_meta WHERE name = 'schema_version'"
                           ).fetchone() == ("3",)
        assert con.execute("SELECT min(seq) > %s FROM replay_event_log WHERE seq > %s",
                           [last[0] if last else 0, last[0] if last else 0]
                           ).fetchone() == (True,)


async def test_a_claim_numbers_records_after_everything_the_run_has(pg_url: str) -> None:
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w1",
                                  **FAST) as first:
        await (await first.start(approval, run_id="a1")).wait(replay.RunState.SUSPENDED)
        await first.start(approval, run_id="a2")
    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w2", **FAST) as second:
        await second.signal("a1", "approval", "eve")
        assert await second.get_run("a1").result() == "approved by eve"
        with trio.fail_after(30):
            pass
    with admin(pg_url) as con:
        seqs = [row[0] for row in con.execute(
            "SELECT seq FROM replay_event_log WHERE run_id = 'a1' ORDER BY recorded_at, seq")]
    assert seqs == sorted(seqs)


async def test_engines_purging_at_once_archive_each_run_once(pg_url: str,
                                                             tmp_path: Any) -> None:
    import duckdb

    async with replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w1",
                                  **FAST) as first, \
            replay.open_engine(pg_url, workflows=WORKFLOWS, worker="w2", **FAST) as second:
        for value in range(20):
            assert await (await first.start(doubled, value, run_id=f"p{value}")).result() == (
                2 * value)
        events = (await first.sql("SELECT count(*) FROM replay_events"))[0][0]
        await trio.sleep(60)  # virtual time: the runs finished a minute ago
        reports: list[Any] = []
        async with trio.open_nursery() as nursery:
            for engine, name in ((first, "a.parquet"), (second, "b.parquet")):
                async def purge(engine: Any = engine, name: str = name) -> None:
                    reports.append(await engine.purge(older_than=30,
                                                      archive_to=tmp_path / name))
                nursery.start_soon(purge)
        assert sorted(report.runs_purged for report in reports) == [0, 20]
        assert await first.sql("SELECT count(*) FROM replay_runs") == [(0,)]
    archived = duckdb.sql(  # one archive holds every event, the other was not written
        f"SELECT count(*), count(DISTINCT run_id) FROM '{tmp_path}/*.parquet'").fetchall()
    assert archived == [(events, 20)]
