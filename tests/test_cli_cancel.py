"""`replay cancel` and `replay terminate`, offline and through a running engine.

Offline, no engine holds the file: `cancel` appends ``run/cancel_requested`` as an
engine does (without a run state), and the next engine to open the file wakes the run,
which compensates and ends ``cancelled``. `terminate` needs the engine. Live, an engine
in this process holds the file under the virtual clock and the command runs in a
worker thread (as it would in another process), talking to it over the channel.
Nothing sleeps to wait for the engine.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import trio
import trio.testing

import replay
from replay import RunState, Sleep, Step, Suspend
from replay._cli import main
from replay._engine._clock import in_thread, set_virtual_start

COMPENSATED: list[str] = []


def charge(order: str) -> str:
    return f"charged {order}"


def refund(order: str, reason: Any) -> str:
    COMPENSATED.append(order)
    return f"refunded {order}: {reason}"


@replay.workflow(name="order")
def order(order_id: str):  # type: ignore[no-untyped-def]
    yield Step("charge:v1", charge, order_id)
    try:
        shipped = yield Suspend("ship:v1", status="waiting for the warehouse")
    except replay.Cancelled as cancelled:
        yield Step("refund:v1", refund, order_id, cancelled.reason)
        raise
    return {"order": order_id, "shipped": shipped}


@replay.workflow(name="napper")
def napper(name: str):  # type: ignore[no-untyped-def]
    yield Step("charge:v1", charge, name)
    try:
        yield Sleep("nap:v1", timedelta(days=1))
    except replay.Cancelled as cancelled:
        yield Step("refund:v1", refund, name, cancelled.reason)
        raise
    return "rested"


@replay.workflow(name="patient")
def patient(name: str):  # type: ignore[no-untyped-def]
    """Its compensation waits for a signal: a run whose cancellation was taken, parked."""
    try:
        yield Suspend("go:v1")
    except replay.Cancelled:
        yield Suspend("undo:v1", status="waiting for an undo")
        raise
    return "done"


WORKFLOWS = [order, napper, patient]


@pytest.fixture(autouse=True)
def _fresh() -> None:
    COMPENSATED.clear()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


async def live_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The command in a worker thread (virtual time stands still meanwhile)."""
    code = await in_thread(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def rows(db: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Read the file directly (no engine holds it): the internal columns too."""
    with duckdb.connect(db, read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


# -- a stopped file, built in virtual time --


async def build(db: str) -> None:
    set_virtual_start(datetime.now(UTC) - timedelta(hours=2))
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none",
                                  serve_cli=False, shutdown_timeout=0) as engine:
        await (await engine.start(order, "o-1", run_id="o1")).wait()
        await (await engine.start(order, "o-2", run_id="o2")).wait()
        await engine.signal("o2", "ship:v1", "by truck")
        await engine.get_run("o2").result()
        await engine.start(napper, "n-1", run_id="n1")
        while engine.status("n1").state is not RunState.SLEEPING:
            await trio.sleep(0.001)  # a sleeping run does not settle for Run.wait()


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> str:
    db = str(tmp_path_factory.mktemp("stopped") / "shop.duckdb")
    trio.run(build, db, clock=trio.testing.MockClock(autojump_threshold=0))
    return db


@pytest.fixture
def copy(stopped: str, tmp_path: Path) -> str:
    db = str(tmp_path / "copy.duckdb")
    shutil.copy(stopped, db)
    return db


def reopen(db: str, run_ids: list[str]) -> dict[str, tuple[RunState, str, str]]:
    """Open an engine on `db` in virtual time; return each run's end once it finished."""
    async def main() -> dict[str, tuple[RunState, str, str]]:
        ended = {}
        async with replay.open_engine(db, workflows=WORKFLOWS, durability="none",
                                      serve_cli=False) as engine:
            for run_id in run_ids:
                with pytest.raises(replay.WorkflowFailed) as failed:
                    await engine.get_run(run_id).result()
                ended[run_id] = (engine.status(run_id).state, failed.value.error_type,
                                 failed.value.message)
        return ended

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- offline --


def test_cancel_is_stored_and_the_next_engine_compensates(
        capsys: pytest.CaptureFixture[str], copy: str) -> None:
    ((last,),) = rows(copy, "SELECT max(seq) FROM replay_event_log")
    assert cli(capsys, "cancel", copy, "o1", "--reason", "customer asked") == (
        0, f"cancellation of run 'o1' stored in {copy!r}; no engine holds the file, so the "
           "run takes it when an engine next opens the file (it is suspended until then)\n",
        "")
    code, out, err = cli(capsys, "cancel", copy, "n1", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {"run_id": "n1", "live": False, "requested": True,
                               "state": "sleeping"}
    # Recorded exactly as an engine records a cancellation it cannot act on at once: no
    # run state (the run stays parked until an engine opens the file).
    assert rows(copy, "SELECT run_id, workflow, key, kind, event, value_json, error_type, "
                      "run_state, seq FROM replay_event_log WHERE event = 'cancel_requested' "
                      "ORDER BY seq") == [
        ("o1", "order", None, "run", "cancel_requested", '"customer asked"', None, None,
         last + 1),
        ("n1", "napper", None, "run", "cancel_requested", "null", None, None, last + 2)]
    assert rows(copy, "SELECT run_id, state FROM replay_runs WHERE run_id IN ('o1', 'n1') "
                      "ORDER BY run_id") == [("n1", "sleeping"), ("o1", "suspended")]
    assert COMPENSATED == []

    # The next engine wakes both at once (the sleep does not wait its day out): each
    # takes Cancelled at the command it waits on, compensates and ends cancelled.
    assert reopen(copy, ["o1", "n1"]) == {
        "o1": (RunState.CANCELLED, "replay.Cancelled", "customer asked"),
        "n1": (RunState.CANCELLED, "replay.Cancelled",
               "the run was cancelled (no reason given)")}
    assert sorted(COMPENSATED) == ["n-1", "o-1"]
    assert rows(copy, "SELECT key, kind, event, value_json FROM replay_events "
                      "WHERE run_id = 'n1' AND seq > ? ORDER BY seq", last + 2) == [
        ("nap:v1", "sleep", "cancelled", "null"),
        ("refund:v1", "step", "started", None),
        ("refund:v1", "step", "completed", '"refunded n-1: None"'),
        (None, "run", "cancelled", "null")]
    assert rows(copy, "SELECT output_json FROM replay_runs WHERE run_id = 'o2'") == [
        ('{"order":"o-2","shipped":"by truck"}',)]  # the finished run is untouched


def test_a_second_cancel_changes_nothing_and_says_so(capsys: pytest.CaptureFixture[str],
                                                     copy: str) -> None:
    assert cli(capsys, "cancel", copy, "o1", "--reason", "first")[0] == 0
    assert cli(capsys, "cancel", copy, "o1", "--reason", "second") == (
        0, "run 'o1' was already asked to cancel; cancel changes nothing (the run is "
           "suspended)\n", "")
    code, out, _ = cli(capsys, "cancel", copy, "o1", "--json")
    assert code == 0
    assert json.loads(out) == {"run_id": "o1", "live": False, "requested": False,
                               "state": "suspended"}
    assert rows(copy, "SELECT value_json FROM replay_events "
                      "WHERE event = 'cancel_requested'") == [('"first"',)]
    assert reopen(copy, ["o1"])["o1"] == (RunState.CANCELLED, "replay.Cancelled", "first")


def test_cancel_errors_exit_1(capsys: pytest.CaptureFixture[str], copy: str) -> None:
    assert cli(capsys, "cancel", copy, "zz") == (
        1, "", f"replay cancel: no run with run_id 'zz' in {copy!r}; list the runs with: "
               f"replay runs {copy}\n")
    assert cli(capsys, "cancel", copy, "o2") == (
        1, "", "replay cancel: run 'o2' is completed; a finished run cannot be cancelled\n")
    assert cli(capsys, "cancel", str(Path(copy).parent / "none.duckdb"), "o1")[0] == 1
    assert rows(copy, "SELECT count(*) FROM replay_events "
                      "WHERE event = 'cancel_requested'") == [(0,)]


def test_terminate_needs_the_engine(capsys: pytest.CaptureFixture[str], copy: str) -> None:
    assert cli(capsys, "terminate", copy, "o1", "--reason", "stuck") == (
        1, "", f"replay terminate: terminate needs the engine, and no engine holds {copy!r}: "
               "ending a run at once must stop whatever of it still runs and tell its "
               "parent and child runs, which only the engine can do; run the command while "
               f"an engine holds the file, or use `replay cancel {copy} o1`, which is stored "
               "in the file and taken when an engine next opens it\n")
    assert cli(capsys, "terminate", copy, "zz")[2].startswith(
        "replay terminate: no run with run_id 'zz'")
    assert cli(capsys, "terminate", copy, "o2") == (
        1, "", "replay terminate: run 'o2' is completed; a finished run cannot be "
               "terminated\n")
    assert rows(copy, "SELECT count(*) FROM replay_events WHERE kind = 'run' "
                      "AND event NOT IN ('started', 'completed')") == [(0,)]


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], copy: str) -> None:
    assert cli(capsys, "cancel", copy)[0] == 2
    assert cli(capsys, "terminate", copy)[0] == 2
    assert cli(capsys, "cancel", copy, "o1", "--reason")[0] == 2


# -- through a running engine --


async def parked(engine: replay.Engine, workflow: Callable[..., Any], run_id: str) -> None:
    assert (await (await engine.start(workflow, run_id, run_id=run_id)).wait()).state is (
        RunState.SUSPENDED)


async def test_cancel_through_the_engine_wakes_the_run(
        db: str, capsys: pytest.CaptureFixture[str]) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none") as engine:
        await parked(engine, order, "o1")
        assert await live_cli(capsys, "cancel", db, "o1", "--reason", "out of stock") == (
            0, f"cancellation of run 'o1' recorded by the engine in process {os.getpid()}; "
               "the run is running\n", "")
        with pytest.raises(replay.WorkflowFailed) as failed:
            await engine.get_run("o1").result()
        assert (failed.value.error_type, failed.value.message) == (
            "replay.Cancelled", "out of stock")
        assert COMPENSATED == ["o1"]
        requested = [e for e in await engine.history("o1") if e.event == "cancel_requested"]
        assert [(e.kind, e.key, e.value) for e in requested] == [
            ("run", None, "out of stock")]
        # A finished run, an unknown one: the engine's errors, as the command says them.
        assert await live_cli(capsys, "cancel", db, "o1") == (
            1, "", "replay cancel: run 'o1' is cancelled; a finished run cannot be "
                   "cancelled\n")
        assert await live_cli(capsys, "cancel", db, "zz") == (
            1, "", f"replay cancel: no run with run_id 'zz' in {db!r}; list the runs with: "
                   f"replay runs {db}\n")
    # The engine wrote its parked run's wake into the record (the file is free now).
    assert rows(db, "SELECT run_state FROM replay_event_log "
                    "WHERE event = 'cancel_requested'") == [("running",)]


async def test_second_cancel_and_terminate_through_the_engine(
        db: str, capsys: pytest.CaptureFixture[str]) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none") as engine:
        await parked(engine, patient, "p1")
        code, out, err = await live_cli(capsys, "cancel", db, "p1", "--json")
        assert (code, err) == (0, "")
        assert json.loads(out) == {"run_id": "p1", "live": True, "requested": True,
                                   "state": "running"}
        # It took Cancelled and parked again in its compensation.
        info = await engine.get_run("p1").wait()
        assert (info.state, info.waiting_for) == (RunState.SUSPENDED, "undo:v1")
        assert await live_cli(capsys, "cancel", db, "p1", "--reason", "again") == (
            0, "run 'p1' was already asked to cancel; cancel changes nothing (the run is "
               "suspended)\n", "")
        code, out, _ = await live_cli(capsys, "cancel", db, "p1", "--json")
        assert json.loads(out) == {"run_id": "p1", "live": True, "requested": False,
                                   "state": "suspended"}
        # Its compensation hangs: terminate ends it without running its code.
        assert await live_cli(capsys, "terminate", db, "p1", "--reason", "hung") == (
            0, f"run 'p1' terminated by the engine in process {os.getpid()}; it is "
               "cancelled\n", "")
        info = engine.status("p1")
        assert (info.state, info.error_type) == (RunState.CANCELLED, "replay.Cancelled")
        ends = [(e.event, e.value) for e in await engine.history("p1") if e.kind == "run"]
        assert ends == [("started", ("p1",)), ("cancel_requested", None),
                        ("cancelled", "hung")]
        assert await live_cli(capsys, "terminate", db, "p1") == (
            1, "", "replay terminate: run 'p1' is cancelled; a finished run cannot be "
                   "terminated\n")
        assert (await live_cli(capsys, "terminate", db, "zz"))[2].startswith(
            "replay terminate: no run with run_id 'zz'")


async def test_terminate_through_the_engine_json(db: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none") as engine:
        await parked(engine, order, "o1")
        code, out, err = await live_cli(capsys, "terminate", db, "o1", "--json")
        assert (code, err) == (0, "")
        assert json.loads(out) == {"run_id": "o1", "live": True, "state": "cancelled"}
        assert COMPENSATED == []  # no workflow code ran
        with pytest.raises(replay.WorkflowFailed, match=r"replay\.Cancelled"):
            await engine.get_run("o1").result()
