"""The `replay` command's writes on a PostgreSQL URL while engines run: queued for them.

While an engine runs on the schema, ``replay signal``, ``cancel`` and ``terminate``
(and the web view's buttons) check what the database shows, then queue the action in
``replay_inbox`` for the engine that holds the run (`replay._cli._queued`); ``purge``
stays refused. The engines run in the test's process, in real time (they wait on the
database's notifications), each test for well under a second of it; the command runs
in a worker thread, as it would run beside them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from typing import Any

import psycopg
import pytest
import trio
import trio.testing

import replay
from replay import Suspend
from replay._cli import main
from replay._cli._queued import purge_refused
from replay._cli._ui import SourceBackend
from replay._engine._clock import in_thread
from replay._pg._access import PgAccess
from replay._types import RunState

FAST = {"poll_interval": 0.05, "durability": "none", "shutdown_timeout": 0}
DELIVERY = ("an engine runs on the database, so the engine that holds the run (or the next "
            "to claim it) delivers it at once, and logs a refusal only it can see (the run "
            "is {state} until then)")


def approval() -> Generator[Any, Any, str]:
    answer = yield Suspend("approval")
    return f"approved by {answer}"


def two_keys() -> Generator[Any, Any, list[Any]]:
    first = yield Suspend("first")
    second = yield Suspend("second")
    return [first, second]


def other() -> Generator[Any, Any, str]:
    return "other"
    yield  # a generator


WORKFLOWS = [approval, two_keys, other]


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Real time: the engines deliver what the database notifies them of, as it comes."""
    return trio.testing.MockClock(rate=1.0)


def engine(url: str, worker: str = "w", workflows: list[Callable[..., Any]] | None = None
           ) -> Any:
    return replay.open_engine(url, workflows=WORKFLOWS if workflows is None else workflows,
                              worker=worker, **FAST)


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = await in_thread(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def inbox(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as con:
        return con.execute("SELECT run_id, action, key, payload_json FROM replay_inbox "
                           "ORDER BY id").fetchall()


async def parked(engine: replay.Engine, workflow: Callable[..., Any], run_id: str
                 ) -> replay.Run:
    run = await engine.start(workflow, run_id=run_id)
    await run.wait(RunState.SUSPENDED)
    return run


async def test_a_signal_is_queued_and_the_engine_wakes_the_run(
        capsys: pytest.CaptureFixture[str], pg_url: str) -> None:
    async with engine(pg_url) as holder:
        run = await parked(holder, approval, "a1")
        assert await cli(capsys, "signal", pg_url, "a1", "approval", '"ann"') == (
            0, f"signal for 'approval' queued for run 'a1' in {pg_url!r}; "
               f"{DELIVERY.format(state='suspended')}\n", "")
        with trio.fail_after(10):
            assert await run.result() == "approved by ann"
        assert inbox(pg_url) == []
        # Checked from the database as before: a finished run, an unknown one.
        assert await cli(capsys, "signal", pg_url, "a1", "approval", '"bob"') == (
            1, "", "replay signal: run 'a1' is completed; signals to finished runs are "
                   "rejected\n")
        assert await cli(capsys, "signal", pg_url, "zz", "approval", "1") == (
            1, "", f"replay signal: no run with run_id 'zz' in {pg_url!r}; list the runs "
                   f"with: replay runs '{pg_url}'\n")


async def test_a_second_signal_for_a_recorded_key_is_refused(
        capsys: pytest.CaptureFixture[str], pg_url: str) -> None:
    async with engine(pg_url) as holder:
        run = await parked(holder, two_keys, "t1")
        code, out, err = await cli(capsys, "signal", pg_url, "t1", "first", '"x"', "--json")
        assert (code, err) == (0, "")
        assert json.loads(out) == {"run_id": "t1", "key": "first", "live": False,
                                   "state": "suspended", "warning": None, "queued": True}
        with trio.fail_after(10):
            while holder.status("t1").waiting_for != "second":
                await trio.sleep(0.02)
        assert await cli(capsys, "signal", pg_url, "t1", "first", '"again"') == (
            1, "", "replay signal: key 'first' of run 't1' already has a signal; a Suspend "
                   "takes one value, so this signal is rejected\n")
        assert (await cli(capsys, "signal", pg_url, "t1", "second", '"y"'))[0] == 0
        with trio.fail_after(10):
            assert await run.result() == ["x", "y"]


async def test_cancel_and_terminate_are_queued_and_end_the_runs(
        capsys: pytest.CaptureFixture[str], pg_url: str) -> None:
    async with engine(pg_url) as holder:
        cancelled = await parked(holder, approval, "c1")
        terminated = await parked(holder, approval, "x1")
        assert await cli(capsys, "cancel", pg_url, "c1", "--reason", "not needed") == (
            0, f"cancellation of run 'c1' queued in {pg_url!r}; "
               f"{DELIVERY.format(state='suspended')}\n", "")
        code, out, err = await cli(capsys, "terminate", pg_url, "x1", "--reason", "stop",
                                   "--json")
        assert (code, err) == (0, "")
        assert json.loads(out) == {"run_id": "x1", "live": False, "state": "suspended",
                                   "queued": True}
        with trio.fail_after(10):
            await cancelled.wait(RunState.CANCELLED)
            await terminated.wait(RunState.CANCELLED)
        errors = dict(await holder.sql("SELECT run_id, error FROM replay_runs "
                                       "WHERE state = 'cancelled'"))
        assert errors["c1"].endswith("run 'c1' was cancelled: not needed\n")
        ends = [(e.event, e.value) for e in await holder.history("x1") if e.kind == "run"]
        assert ends == [("started", ()), ("cancelled", "stop")]
        for command in ("cancel", "terminate"):
            what = "cancelled" if command == "cancel" else "terminated"
            assert await cli(capsys, command, pg_url, "c1") == (
                1, "", f"replay {command}: run 'c1' is cancelled; a finished run cannot be "
                       f"{what}\n")
            assert (await cli(capsys, command, pg_url, "zz"))[2].startswith(
                f"replay {command}: no run with run_id 'zz' in ")


async def test_messages_for_a_run_no_engine_runs_wait_in_the_inbox(
        capsys: pytest.CaptureFixture[str], pg_url: str) -> None:
    async with engine(pg_url, "w1") as first:
        await parked(first, approval, "a1")
        await parked(first, approval, "a2")
    # This engine runs no approval: the families stay free, and the messages wait.
    async with engine(pg_url, "w2", [other]) as bystander:
        assert (await cli(capsys, "signal", pg_url, "a1", "approval", '"dee"'))[0] == 0
        # A second signal for the key is refused while the first waits for its engine.
        assert await cli(capsys, "signal", pg_url, "a1", "approval", '"eve"') == (
            1, "", "replay signal: key 'approval' of run 'a1' already has a signal, queued "
                   "for the engine that holds the run; a Suspend takes one value, so this "
                   "signal is rejected\n")
        code, out, err = await cli(capsys, "cancel", pg_url, "a2", "--json")
        assert (code, err, json.loads(out)) == (0, "", {
            "run_id": "a2", "live": False, "requested": True, "state": "suspended",
            "queued": True})
        assert await cli(capsys, "cancel", pg_url, "a2") == (
            0, "run 'a2' was already asked to cancel; cancel changes nothing (the run is "
               "suspended)\n", "")
        assert inbox(pg_url) == [("a1", "signal", "approval", '"dee"'),
                                 ("a2", "cancel", None, "null")]
        assert bystander.status("a1").state is RunState.SUSPENDED
        async with engine(pg_url, "w1") as runner:
            with trio.fail_after(10):
                assert await runner.get_run("a1").result() == "approved by dee"
                await runner.get_run("a2").wait(RunState.CANCELLED)
    assert inbox(pg_url) == []


async def test_purge_is_refused_while_an_engine_runs(capsys: pytest.CaptureFixture[str],
                                                     pg_url: str) -> None:
    async with engine(pg_url) as holder:
        await (await holder.start(other, run_id="o1")).result()
        assert await cli(capsys, "purge", pg_url, "--older-than", "0s") == (
            1, "", f"replay purge: {purge_refused(pg_url)}\n")
        assert purge_refused(pg_url).startswith(
            f"an engine runs on the PostgreSQL database {pg_url!r}, and the replay command "
            "purges a PostgreSQL database only while no engine runs on it")
        code, out, _ = await cli(capsys, "purge", pg_url, "--older-than", "0s", "--dry-run",
                                 "--json")
        assert (code, json.loads(out)["runs_purged"]) == (0, 1)
        assert [row[0] for row in await holder.sql("SELECT run_id FROM replay_runs")] == [
            "o1"]
    code, out, _ = await cli(capsys, "purge", pg_url, "--older-than", "0s")
    assert (code, out.startswith("purged 1 finished run")) == (0, True)


async def test_another_writing_command_still_refuses(capsys: pytest.CaptureFixture[str],
                                                     pg_url: str) -> None:
    async with engine(pg_url) as holder:
        await parked(holder, approval, "a1")
    writing = PgAccess(pg_url, write=True)  # no engine runs: it holds the schema
    try:
        assert not writing.engines_run
        code, out, err = await cli(capsys, "signal", pg_url, "a1", "approval", "1")
        assert (code, out) == (1, "")
        assert err.startswith(f"replay signal: another replay command is writing to the "
                              f"PostgreSQL database {pg_url!r} (server process ")
        assert err.endswith("); run this one again once it ends\n")
    finally:
        writing.close()
    assert inbox(pg_url) == []


async def test_the_web_view_queues_signals_and_cancellations(pg_url: str) -> None:
    backend = SourceBackend(pg_url)
    async with engine(pg_url) as holder:
        signalled = await parked(holder, approval, "u1")
        cancelled = await parked(holder, approval, "u2")
        said = await backend.signal("u1", "approval", "fay")
        assert (said.message, said.warning) == (
            "signal for 'approval' queued for run 'u1' in the database; "
            f"{DELIVERY.format(state='suspended')}", None)
        said = await backend.cancel("u2", "no")
        assert said.message == ("cancellation of run 'u2' queued in the database; "
                                f"{DELIVERY.format(state='suspended')}")
        with trio.fail_after(10):
            assert await signalled.result() == "approved by fay"
            await cancelled.wait(RunState.CANCELLED)
        with pytest.raises(replay.RunFinished, match="a finished run cannot be cancelled"):
            await backend.cancel("u2", "again")
