"""Calls on a run that is parking are never lost (issue 19).

Between the record that parks a run (or ends it) and the end of its task, the run is
still owned by that task while its state already says ``suspended`` or ``sleeping``.
`resume` used to treat that as "executing right now: nothing to do", and `signal` as
"busy: keep it in the mailbox", so a deploy followed at once by `resume` kept the old
code, and a signal sent at once waited for ever. Each call is made as soon as
`engine.status` shows the parked state: under the fake clock (where the window is
certain) and in real time, many times over.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import trio

import replay
from replay import RunState, Sleep, Step, Suspend
from replay._engine._facade import internals

pytestmark = pytest.mark.both_stores

LOST = 30  # seconds (virtual or real) after which a call counts as lost
DEPLOYED: set[str] = set()  # run ids whose workflow code is "the new version"


@pytest.fixture(autouse=True)
def _old_code_again() -> None:
    """Each test (and each store's run of it) starts with every run on the old code."""
    DEPLOYED.clear()


def new_step(run_id: str) -> str:
    return f"new code for {run_id}"


@replay.workflow(name="gated")
def gated(run_id: str):  # type: ignore[no-untyped-def]
    if run_id not in DEPLOYED:
        yield Suspend("gate:v1")
        return "old"
    return (yield Step("new:v1", new_step, run_id))


@replay.workflow(name="napping")
def napping(run_id: str):  # type: ignore[no-untyped-def]
    if run_id not in DEPLOYED:
        yield Sleep("nap:v1", timedelta(days=30))
        return "old"
    return (yield Step("new:v1", new_step, run_id))


@replay.workflow(name="waiting")
def waiting():  # type: ignore[no-untyped-def]
    return (yield Suspend("gate:v1"))


async def shows(engine: replay.Engine, run_id: str, state: RunState) -> bool:
    """Return as soon as the run's status shows `state` (checking every scheduling turn).

    Returns whether the run's task still owned the run at that moment (the window
    this file is about; read from the engine's internals only to prove that the
    tests really exercise it).
    """
    while engine.status(run_id).state is not state:
        await trio.lowlevel.checkpoint()
    return internals(engine).scheduler.runs.find(run_id).active


async def deploy_then_resume(engine: replay.Engine, workflow: Callable[..., Any],
                             run_id: str, parked: RunState) -> tuple[Any, bool]:
    run = await engine.start(workflow, run_id, run_id=run_id)
    in_window = await shows(engine, run_id, parked)
    DEPLOYED.add(run_id)
    await engine.resume(run_id)
    with trio.fail_after(LOST):
        return await run.result(), in_window


async def signal_at_once(engine: replay.Engine, run_id: str) -> tuple[Any, bool]:
    run = await engine.start(waiting, run_id=run_id)
    in_window = await shows(engine, run_id, RunState.SUSPENDED)
    await engine.signal(run_id, "gate:v1", run_id)
    with trio.fail_after(LOST):
        return await run.result(), in_window


ROUNDS = 20  # the window is hit in about half of the rounds, whatever the clock


async def test_resume_right_after_a_suspend_runs_the_new_code(db: str) -> None:
    async with replay.open_engine(db, workflows=[gated]) as engine:
        done = [await deploy_then_resume(engine, gated, f"g-{n}", RunState.SUSPENDED)
                for n in range(ROUNDS)]
    assert [output for output, _ in done] == [f"new code for g-{n}" for n in range(ROUNDS)]
    assert any(in_window for _, in_window in done)


async def test_resume_right_after_a_long_sleep_runs_the_new_code_now(db: str) -> None:
    async with replay.open_engine(db, workflows=[napping]) as engine:
        began = engine.now()
        done = [await deploy_then_resume(engine, napping, f"n-{n}", RunState.SLEEPING)
                for n in range(ROUNDS)]
        assert engine.now() - began < timedelta(days=1)
    assert [output for output, _ in done] == [f"new code for n-{n}" for n in range(ROUNDS)]
    assert any(in_window for _, in_window in done)


async def test_a_signal_right_after_a_suspend_wakes_the_run(db: str) -> None:
    async with replay.open_engine(db, workflows=[waiting]) as engine:
        done = [await signal_at_once(engine, f"w-{n}") for n in range(ROUNDS)]
    assert [output for output, _ in done] == [f"w-{n}" for n in range(ROUNDS)]
    assert any(in_window for _, in_window in done)


async def test_a_signal_during_a_step_still_waits_in_the_mailbox(db: str) -> None:
    # The rule waits only for a run that is letting go: a run executing a step is not
    # waited for; the signal is kept and its Suspend takes it later.
    release = trio.Event()

    async def slow() -> str:
        await release.wait()
        return "done"

    @replay.workflow(name="busy")
    def busy():  # type: ignore[no-untyped-def]
        yield Step("slow:v1", slow)
        return (yield Suspend("gate:v1"))

    async with replay.open_engine(db, workflows=[busy]) as engine:
        run = await engine.start(busy, run_id="b-1")
        await engine.signal("b-1", "gate:v1", "early")
        assert engine.status("b-1").state is RunState.RUNNING
        release.set()
        assert await run.result() == "early"


async def test_calls_do_not_wait_for_a_resumed_run_executing_new_steps(db: str) -> None:
    # After `resume`, a parked run replays with the new code; while it executes a new
    # step its state still says `suspended`, but it is not parking: a signal and a
    # second `resume` answer at once instead of waiting for the step.
    release = trio.Event()

    async def long_step() -> str:
        await release.wait()
        return "done"

    @replay.workflow(name="redeployed")
    def redeployed(run_id: str):  # type: ignore[no-untyped-def]
        if run_id not in DEPLOYED:
            return (yield Suspend("old-gate:v1"))
        yield Step("long:v1", long_step)
        return (yield Suspend("new-gate:v1"))

    async with replay.open_engine(db, workflows=[redeployed]) as engine:
        run = await engine.start(redeployed, "rd-1", run_id="rd-1")
        await run.wait()
        DEPLOYED.add("rd-1")
        await engine.resume("rd-1")
        with trio.fail_after(LOST):
            await engine.signal("rd-1", "new-gate:v1", "early")
            await engine.resume("rd-1")
        release.set()
        assert await run.result() == "early"


@pytest.mark.slow
def test_in_real_time_no_call_on_a_parking_run_is_lost() -> None:
    rounds = 100  # 300 calls

    async def main() -> list[tuple[Any, bool]]:
        done = []
        async with replay.open_engine(":memory:", workflows=[gated, napping, waiting],
                                      durability="none") as engine:
            for n in range(rounds):
                done.append(await deploy_then_resume(engine, gated, f"rg-{n}",
                                                     RunState.SUSPENDED))
                done.append(await deploy_then_resume(engine, napping, f"rn-{n}",
                                                     RunState.SLEEPING))
                done.append(await signal_at_once(engine, f"rw-{n}"))
        return done

    done = trio.run(main)
    expected = []
    for n in range(rounds):
        expected += [f"new code for rg-{n}", f"new code for rn-{n}", f"rw-{n}"]
    assert [output for output, _ in done] == expected
    assert any(in_window for _, in_window in done)
