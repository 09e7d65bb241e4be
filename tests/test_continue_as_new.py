"""Continue-as-new (issue 13, part 4): `return replay.ContinueAsNew(*args)`.

The current generation ends with ``run/continued`` (the new arguments); the next one
starts in the same run with an empty memo, keeping the run id, its handles and its
mailbox: a signal the ending generation did not take is delivered to the next one,
one whose key it used is not, and one arriving during the switch is never lost. Every
event carries its generation. Virtual time, real DuckDB files; the crash test kills a
child process with SIGKILL right after the switch and reopens.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Generator
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import trio
import trio.testing

import replay
from replay import ContinueAsNew, Note, Sleep, Step, Suspend, SuspendTimeout
from replay.testing import check_history, open_test_engine, wait_for_state

pytestmark = pytest.mark.both_stores

CHILD = Path(__file__).with_name("continue_crash_child.py")
MONTH = timedelta(days=30)
executed: Counter[tuple[int, str]] = Counter()
flaky_state = {"fail": False}


@pytest.fixture(autouse=True)
def _clear() -> None:
    executed.clear()
    flaky_state["fail"] = False


def bill(customer: str, month: int) -> dict[str, Any]:
    executed[month, "bill"] += 1
    return {"customer": customer, "month": month, "amount": 10 + month}


@replay.workflow(name="cas_subscription")
def subscription(customer: str, month: int, months: int
                 ) -> Generator[Any, Any, Any]:
    invoice = yield Step("invoice:v1", bill, customer, month)
    yield Note("status:v1", {"month": month, "amount": invoice["amount"]})
    if month + 1 == months:
        return {"customer": customer, "months": months, "last": invoice}
    yield Sleep("renewal:v1", MONTH)
    return ContinueAsNew(customer, month + 1, months)


def echo(value: Any) -> Any:
    return value


@replay.workflow(name="cas_mailbox")
def mailbox(generation: int, first: Any = None) -> Generator[Any, Any, Any]:
    if generation == 0:
        first = yield Suspend("taken:v1")
        yield Sleep("pause:v1", 3600)  # signals for "later:v1" and "taken:v1" come now
        return ContinueAsNew(1, first)
    later = yield Suspend("later:v1", timeout=3600)
    try:
        again = yield Suspend("taken:v1", timeout=3600)
    except SuspendTimeout:
        again = "timed out"
    return {"later": later, "again": again}


@replay.workflow(name="cas_ticks")
def ticks(n: int, total: int) -> Generator[Any, Any, Any]:
    value = yield Suspend("tick:v1")
    logged = yield Step("log:v1", echo, [n, value])
    extra = None
    if n == total - 1:
        extra = yield Suspend("extra:v1")
        return {"last": logged, "extra": extra, "value": value}
    return ContinueAsNew(n + 1, total)


class Opaque:
    """Not encodable."""


@replay.workflow(name="cas_unencodable")
def unencodable() -> Generator[Any, Any, Any]:
    yield Step("one:v1", echo, 1)
    return ContinueAsNew(Opaque())


def flaky(generation: int) -> str:
    executed[generation, "flaky"] += 1
    if flaky_state["fail"] and generation == 1:
        raise ValueError("down")
    return f"ok in {generation}"


@replay.workflow(name="cas_flaky")
def flaky_flow(generation: int) -> Generator[Any, Any, Any]:
    result = yield Step("work:v1", flaky, generation)
    if generation < 2:
        return ContinueAsNew(generation + 1)
    return result


WORKFLOWS = [subscription, mailbox, ticks, unencodable, flaky_flow]


def per_generation(db: str, run_id: str) -> list[tuple[int, int]]:
    with duckdb.connect(db, read_only=True) as con:
        return con.execute(
            "SELECT generation, count(*) FROM replay_events WHERE run_id = ? "
            "GROUP BY generation ORDER BY generation", [run_id]).fetchall()


# -- a subscription that renews monthly --


@pytest.mark.duckdb_only  # reads the file with duckdb itself
async def test_a_subscription_renews_monthly_for_24_generations(db: str, tmp_path: Path
                                                                ) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        began = engine.now()
        run = await engine.start(subscription, "ada", 0, 24, run_id="sub")
        info = await wait_for_state(engine, "sub", "sleeping")
        assert (info.generation, info.waiting_for) == (0, "renewal:v1")
        output = await run.result()
        assert output == {"customer": "ada", "months": 24,
                          "last": {"customer": "ada", "month": 23, "amount": 33}}
        assert engine.now() - began >= 23 * MONTH
        assert engine.now() - began < 24 * MONTH
        info = engine.status("sub")
        assert info.generation == 23
        assert info.status_value == {"month": 23, "amount": 33}
        assert [r.run_id for r in await engine.runs()] == ["sub"]
        history = await engine.history("sub")
        await engine.export_history("sub", tmp_path / "sub.json")
    assert executed == Counter({(month, "bill"): 1 for month in range(24)})
    # Every generation reuses the same keys: the memo starts empty each time.
    for generation in range(24):
        keys = [e.key for e in history if e.generation == generation and e.key]
        expected = ["invoice:v1", "status:v1"]
        if generation < 23:
            expected += ["renewal:v1", "renewal:v1"]
        assert keys == expected, (generation, keys)
    continued = [e for e in history if e.event == "continued"]
    assert [e.generation for e in continued] == list(range(1, 24))
    assert [list(e.value) for e in continued] == [["ada", m, 24] for m in range(1, 24)]
    rows = per_generation(db, "sub")
    assert [g for g, _ in rows] == list(range(24))
    counts = {g: n for g, n in rows}
    # started, invoice completed, note, sleep scheduled/fired (then continued).
    assert counts[0] == 5
    assert all(counts[g] == 5 for g in range(1, 23))  # continued replaces started
    assert counts[23] == 4  # continued, invoice, note, completed
    with duckdb.connect(db, read_only=True) as con:
        assert con.execute("SELECT generation, state FROM replay_runs").fetchall() == [
            (23, "completed")]
    # The multi-generation history replays against the code.
    report = check_history(subscription, tmp_path / "sub.json")
    assert report.output == output


async def test_the_memo_resets_so_a_later_generation_runs_its_steps_again(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, always_replay=True) as engine:
        assert (await (await engine.start(subscription, "bo", 0, 3)).result())["months"] == 3
    assert executed == Counter({(0, "bill"): 1, (1, "bill"): 1, (2, "bill"): 1})


# -- the mailbox across the switch --


async def test_an_untaken_signal_crosses_the_switch_and_a_taken_key_does_not(
        db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(mailbox, 0, run_id="m")
        await run.wait()
        await engine.signal("m", "taken:v1", "first")
        await wait_for_state(engine, "m", "sleeping")
        await engine.signal("m", "later:v1", "for the next generation")
        with pytest.raises(replay.SignalRejected):
            await engine.signal("m", "taken:v1", "second")  # generation 0 took it
        assert await run.result() == {"later": "for the next generation",
                                      "again": "timed out"}
        history = await engine.history("m")
    later = [e for e in history if e.key == "later:v1"]
    assert [(e.kind, e.event, e.generation) for e in later] == [
        ("signal", "signalled", 0), ("suspend", "signalled", 1)]


async def test_a_signal_sent_after_the_switch_for_a_key_the_old_generation_took(
        db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(mailbox, 0, run_id="m")
        await run.wait()
        await engine.signal("m", "taken:v1", "first")
        await engine.signal("m", "later:v1", "later")
        info = await run.wait()  # generation 1, suspended on taken:v1
        assert (info.generation, info.waiting_for) == (1, "taken:v1")
        await engine.signal("m", "taken:v1", "again")  # a new generation: a new key
        assert await run.result() == {"later": "later", "again": "again"}


@pytest.mark.parametrize("delay", [0, 1, 2, 3, 5, 8, 13, 21, 34])
async def test_signals_arriving_during_the_switch_are_never_lost(
        db: str, delay: int, tmp_path: Path) -> None:
    """Each generation waits on the same key; a sender keeps sending the next tick.

    A tick the run cannot take yet (the generation that took the last one has not
    switched) is rejected and sent again; every tick that was accepted is taken by
    exactly one generation, in order, and the file says so after a reopen.
    """
    total = 6
    accepted: list[int] = []
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(ticks, 0, total, run_id="t")

        async def sender() -> None:
            for _ in range(delay):
                await trio.sleep(0)
            for i in range(total):
                while True:
                    try:
                        await engine.signal("t", "tick:v1", i)
                        accepted.append(i)
                        break
                    except replay.SignalRejected:
                        await trio.sleep(0)
                if i == 2:  # one for the last generation, sent during a switch
                    await engine.signal("t", "extra:v1", "extra")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
        output = await run.result()
        history = await engine.history("t")
        await engine.export_history("t", tmp_path / "t.json")
    assert accepted == list(range(total))
    assert output == {"last": [total - 1, total - 1], "extra": "extra", "value": total - 1}
    logged = [e.value for e in history if e.key == "log:v1" and e.event == "completed"]
    assert logged == [[n, n] for n in range(total)]
    # Each tick is stamped with the generation that took it.
    for e in history:
        if e.kind == "signal" and e.key == "tick:v1":
            assert e.generation == e.value, (e.seq, e.value, e.generation)
    check_history(ticks, tmp_path / "t.json")


async def test_a_signal_committed_during_the_switch_survives_a_reopen(db: str) -> None:
    """The last generation waits on a key the first one took; the file must agree."""
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        await engine.start(ticks, 0, 2, run_id="t")

        async def sender() -> None:
            for i in range(2):
                while True:
                    try:
                        await engine.signal("t", "tick:v1", i)
                        break
                    except replay.SignalRejected:
                        await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
        info = await wait_for_state(engine, "t", "suspended")
        assert (info.generation, info.waiting_for) == (1, "extra:v1")
    async with replay.open_engine(db, workflows=WORKFLOWS, always_replay=True) as engine:
        await engine.signal("t", "extra:v1", "after the reopen")
        assert await engine.get_run("t").result() == {"last": [1, 1], "value": 1,
                                                      "extra": "after the reopen"}


# -- a crash right after the switch --


@pytest.mark.slow
def test_a_crash_right_after_the_switch_continues_the_new_generation(tmp_path: Path
                                                                     ) -> None:
    db, side = tmp_path / "cas.duckdb", tmp_path / "side.txt"
    first = subprocess.run([sys.executable, str(CHILD), str(db), str(side)],
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert "killing" in first.stdout
    with duckdb.connect(str(db), read_only=True) as con:
        events = con.execute("SELECT kind, event, key, generation FROM replay_events "
                             "WHERE run_id = 'sub' ORDER BY seq").fetchall()
        assert ("run", "continued", None, 1) in events
        assert con.execute("SELECT state, generation FROM replay_runs").fetchall() == [
            ("running", 1)]
    second = subprocess.run([sys.executable, str(CHILD), str(db), str(side)],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stderr == ""
    done = [line for line in second.stdout.splitlines() if line.startswith("done ")]
    assert json.loads(done[0][5:]) == {"label": "second", "billed": "bill-second",
                                       "survived": "survived-second"}
    # Generation 0's step ran once; generation 1's bill once; boom twice (killed once).
    assert side.read_text().splitlines() == [
        "0 bill:v1 first", "1 bill:v1 second", "1 boom:v1 second", "1 boom:v1 second"]
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM replay_events WHERE event = 'continued'"
                           ).fetchone() == (1,)
        assert con.execute("SELECT state, generation FROM replay_runs").fetchall() == [
            ("completed", 1)]
        interrupted = con.execute(
            "SELECT generation FROM replay_events WHERE key = 'boom:v1' "
            "AND event = 'interrupted'").fetchall()
        assert interrupted in ([], [(1,)])


# -- failures and resume --


async def test_unencodable_continue_arguments_fail_the_run(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(unencodable, run_id="u")
        with pytest.raises(replay.WorkflowFailed) as failed:
            await run.result()
        assert failed.value.error_type == "replay.EncodingError"
        history = await engine.history("u")
        assert not any(e.event == "continued" for e in history)
        assert engine.status("u").generation == 0


async def test_resume_in_a_later_generation(db: str) -> None:
    flaky_state["fail"] = True  # generation 1's step fails
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(flaky_flow, 0, run_id="g")
        info = await run.wait()
        assert (info.state, info.generation, info.error_type) == (
            "failed", 1, "replay.StepFailed")
    flaky_state["fail"] = False
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.resume("g")
        assert await run.result() == "ok in 2"
        assert engine.status("g").generation == 2
        history = await engine.history("g")
    resumed = [e for e in history if e.event == "resumed"]
    assert [e.generation for e in resumed] == [1]
    # Generation 0 is not run again; generation 1's step runs again after the resume.
    assert executed == Counter({(0, "flaky"): 1, (1, "flaky"): 2, (2, "flaky"): 1})


def test_check_history_and_the_testing_runner_handle_generations(tmp_path: Path) -> None:
    result = replay.testing.run_workflow(subscription, "cy", 0, 3)
    assert result.output["months"] == 3
    assert result.info.generation == 2
    assert [e.generation for e in result.history if e.event == "continued"] == [1, 2]

    async def record() -> None:
        async with open_test_engine([subscription]) as engine:
            run = await engine.start(subscription, "cy", 0, 3, run_id="s")
            await wait_for_state(engine, "s", "sleeping")
            await run.wait(until=lambda info: info.generation == 1
                           and info.state == "sleeping")
            await engine.export_history("s", tmp_path / "unfinished.json")
            await run.result()
            await engine.export_history("s", tmp_path / "finished.json")

    trio.run(record, clock=trio.testing.MockClock(autojump_threshold=0))
    report = check_history(subscription, tmp_path / "unfinished.json")
    assert report.recorded_state == "sleeping"
    assert report.next_command == Sleep("renewal:v1", MONTH)
    assert check_history(subscription, tmp_path / "finished.json").output["months"] == 3

    @replay.workflow(name="cas_subscription")
    def changed(customer: str, month: int, months: int) -> Generator[Any, Any, Any]:
        invoice = yield Step("invoice:v1", bill, customer, month)
        yield Note("status:v1", {"month": month, "amount": invoice["amount"]})
        if month + 1 == months:
            return {"customer": customer, "months": months, "last": invoice}
        yield Step("renewal:v1", echo, 1)  # was a Sleep
        return ContinueAsNew(customer, month + 1, months)

    with pytest.raises(replay.NondeterminismError):
        check_history(changed, tmp_path / "unfinished.json")


@replay.workflow(name="cas_kid")
def cas_kid(month: int) -> Generator[Any, Any, Any]:
    yield Sleep("work:v1", timedelta(hours=1))
    if month == 1:
        raise ValueError("month 1 fails")
    return month * 10


@replay.workflow(name="cas_parent")
def cas_parent(month: int) -> Generator[Any, Any, Any]:
    try:
        total = yield replay.Child("month:v1", cas_kid, month)
    except replay.ChildFailed as failed:
        total = failed.child_run_id
    if month < 2:
        return ContinueAsNew(month + 1)
    return total


async def test_each_generation_starts_its_own_child_at_a_reused_key(tmp_path: Path) -> None:
    path = tmp_path / "children.duckdb"
    async with replay.open_engine(path, workflows=[cas_parent, cas_kid],
                                  durability="none") as engine:
        run = await engine.start(cas_parent, 0, run_id="p")
        assert await run.result() == 20
        children = await engine.sql(
            "SELECT run_id, state, parent_run_id, input_json FROM replay_runs "
            "WHERE parent_run_id = 'p' ORDER BY run_id")
        assert children == [("p/month:v1", "completed", "p", "[0]"),
                            ("p/month:v1@1", "failed", "p", "[1]"),
                            ("p/month:v1@2", "completed", "p", "[2]")]
        events = await engine.history("p")
        failed = [e for e in events if e.kind == "child" and e.event == "failed"]
        assert [e.generation for e in failed] == [1]
    # Reopened, a child's parent key comes from its own run/started record.
    async with replay.open_engine(path, workflows=[cas_parent, cas_kid],
                                  durability="none") as engine:
        assert engine.status("p/month:v1@2").parent_run_id == "p"
