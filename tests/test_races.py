"""Races: one run executes in one place at a time (SPEC §4.6, §2 rules 9 and 13).

`resume`, a signal and a timer firing at once must never execute two copies of one run.
The workflows here are instrumented: a generator counts itself live from its first line
to its `finally`, a step counts itself while it executes, and the code after a wait
counts how often it runs. Each scenario is repeated over many interleavings: the racing
calls start in one scheduling round, one of them after a number of checkpoints, or once
every other task is blocked (e.g. on a commit in the writer thread), or with virtual
time moved by hand while a call is in flight (as real time moves during a commit). Every
scenario runs under each way of keeping parked runs: cached generators, an evicted one
(`cache_size=1` and a second parked run), none kept (`cache_size=0`), `always_replay`.

Two bugs of ea911b3 these tests caught: a signal that found the run parked started a
second copy of it when a timer or `resume` had started one while the signal was being
committed; and a history loaded without the run's lock (by `resume`, or by a woken run
replaying from the top) could miss a signal committed meanwhile, so the run parked on a
key whose signal was in its mailbox, or took the timeout of a Suspend whose signal had
been accepted.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
import trio.testing
from spinning import spin_until

import replay
from replay import RunState, SignalRejected, Sleep, Step, Suspend, SuspendTimeout
from replay._engine._facade import internals

pytestmark = pytest.mark.both_stores

# How long a test waits for a run before calling it lost (virtual time: instant).
PATIENCE = 3600.0
BLOCKED = "blocked"  # a pause that lasts until every other task is blocked
Pause = int | str

# Pauses (checkpoints, or BLOCKED) before each of two racing calls.
PAIRS: list[tuple[Pause, Pause]] = [
    (0, 0), (0, 0),
    *((k, 0) for k in (1, 2, 3, 4, 6, 9)),
    *((0, k) for k in (1, 2, 3, 4, 6, 9)),
    (BLOCKED, 0), (0, BLOCKED),
]
# Checkpoints before a single call that races the engine's own tasks.
SOLO: list[Pause] = [0, 0, 1, 2, 3, 4, 5, 6, 8, 10, 13, BLOCKED]
ROUNDS = 4

OPTIONS = [
    pytest.param({}, id="cached"),
    pytest.param({"cache_size": 1}, id="cache_size=1"),
    pytest.param({"cache_size": 0}, id="cache_size=0"),
    pytest.param({"always_replay": True}, id="always_replay"),
]

CACHE_MISS = [p for p in OPTIONS if p.id != "cached"]  # a woken run replays from the top
STEPS = {"sleep": ("after:v1",), "timeout": ("before:v1", "after:v1")}


class Probe:
    """What the instrumented workflows saw, per run."""

    def __init__(self) -> None:
        self.live: Counter[str] = Counter()  # generators of the run alive now
        self.max_live: Counter[str] = Counter()
        self.created: Counter[str] = Counter()  # generators created (executions)
        self.closed: Counter[str] = Counter()  # of them, finished or closed
        self.executing: Counter[str] = Counter()  # steps of the run executing now
        self.max_executing: Counter[str] = Counter()
        self.calls: Counter[tuple[str, str]] = Counter()  # step calls by (run_id, key)
        self.after: Counter[str] = Counter()  # the code after the run's wait ran
        self.gates: dict[tuple[str, str], trio.Event] = {}  # steps held until set
        self.broken = False  # `fragile` steps fail while set


PROBE = Probe()


@pytest.fixture(autouse=True)
def _fresh_probe() -> Iterator[None]:
    global PROBE
    PROBE = Probe()
    yield


@contextmanager
def execution(run_id: str) -> Iterator[None]:
    """Count a workflow generator as live from its first line to its end or close."""
    PROBE.created[run_id] += 1
    PROBE.live[run_id] += 1
    PROBE.max_live[run_id] = max(PROBE.max_live[run_id], PROBE.live[run_id])
    try:
        yield
    finally:
        PROBE.live[run_id] -= 1
        PROBE.closed[run_id] += 1


async def probe(tag: str) -> str:
    """An async step that counts its executions and stays a few checkpoints."""
    run_id, key, _ = replay.current_step()
    PROBE.calls[run_id, key] += 1
    PROBE.executing[run_id] += 1
    PROBE.max_executing[run_id] = max(PROBE.max_executing[run_id], PROBE.executing[run_id])
    try:
        gate = PROBE.gates.get((run_id, key))
        if gate is not None:
            await gate.wait()
        for _ in range(3):
            await trio.sleep(0)
    finally:
        PROBE.executing[run_id] -= 1
    return tag


async def fragile(tag: str) -> str:
    await probe(tag)
    if PROBE.broken:
        raise RuntimeError("the service is down")
    return tag


@replay.workflow(name="races.approval")
def approval(run_id: str, timeout: float | None = None):  # type: ignore[no-untyped-def]
    with execution(run_id):
        yield Step("before:v1", probe, "before")
        try:
            value = yield Suspend("approval:v1", timeout=timeout)
        except SuspendTimeout:
            value = "timed out"
        PROBE.after[run_id] += 1
        yield Step("after:v1", probe, "after")
        return value


@replay.workflow(name="races.nap")
def nap(run_id: str):  # type: ignore[no-untyped-def]
    with execution(run_id):
        yield Step("before:v1", probe, "before")
        yield Sleep("nap:v1", 60)
        PROBE.after[run_id] += 1
        yield Step("after:v1", probe, "after")
        return "rested"


@replay.workflow(name="races.nap_then_approval")
def nap_then_approval(run_id: str):  # type: ignore[no-untyped-def]
    with execution(run_id):
        yield Sleep("nap:v1", 60)
        value = yield Suspend("approval:v1")
        PROBE.after[run_id] += 1
        yield Step("after:v1", probe, "after")
        return value


@replay.workflow(name="races.flaky")
def flaky(run_id: str):  # type: ignore[no-untyped-def]
    with execution(run_id):
        value = yield Step("flaky:v1", fragile, "fixed")
        PROBE.after[run_id] += 1
        return value


@replay.workflow(name="races.cleanup")
def cleanup(run_id: str):  # type: ignore[no-untyped-def]
    PROBE.created[run_id] += 1
    try:
        yield Step("before:v1", probe, "before")
        yield Sleep("nap:v1", 60)
        value = yield Suspend("approval:v1")
        yield Sleep("nap:v2", 60)
        return value
    finally:
        PROBE.closed[run_id] += 1
        # A command yielded while the engine closes a dropped generator is ignored.
        yield Step("cleanup:v1", probe, "cleanup")


@replay.workflow(name="races.bystander")
def bystander():  # type: ignore[no-untyped-def]
    yield Suspend("never:v1")


WORKFLOWS = [approval, nap, nap_then_approval, flaky, cleanup, bystander]


def engine_for(db: str, options: dict[str, Any]) -> Any:
    return replay.open_engine(db, workflows=WORKFLOWS, durability="none", **options)


async def pause(delay: Pause) -> None:
    if delay == BLOCKED:
        await trio.testing.wait_all_tasks_blocked()
    else:
        for _ in range(int(delay)):
            await trio.sleep(0)


async def at_once(*calls: tuple[Pause, Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Start every call in one scheduling round, each after its pause.

    Returns each call's value, or the `ReplayError` it raised.
    """
    outcomes: list[Any] = [None] * len(calls)

    async def one(index: int, delay: Pause, call: Callable[[], Awaitable[Any]]) -> None:
        await pause(delay)
        try:
            outcomes[index] = await call()
        except replay.ReplayError as error:
            outcomes[index] = error

    async with trio.open_nursery() as nursery:
        for index, (delay, call) in enumerate(calls):
            nursery.start_soon(one, index, delay, call)
    return outcomes


async def parked(engine: replay.Engine, workflow: Any, run_id: str, *args: Any) -> replay.Run:
    """Start a run and return once it is parked, with a second run parked after it.

    The second run evicts the first from a one-generator cache.
    """
    run = await engine.start(workflow, run_id, *args, run_id=run_id)
    await until_parked(engine, run_id)
    await (await engine.start(bystander, run_id=f"{run_id}-bystander")).wait()
    return run


async def until_parked(engine: replay.Engine, run_id: str) -> None:
    with trio.fail_after(PATIENCE):
        while engine.status(run_id).state not in (RunState.SUSPENDED, RunState.SLEEPING):
            await trio.sleep(0.001)


async def finished(engine: replay.Engine, run: replay.Run, label: str) -> Any:
    """Return the run's output; fail if it never finishes (a lost wake-up)."""
    with trio.move_on_after(PATIENCE):
        output = await run.result()
        # Let a stray second copy of the run, if any, do what it would do.
        await trio.sleep(1)
        return output
    info = engine.status(run.run_id)
    pytest.fail(f"{label}: run {run.run_id!r} never finished: {info.state} "
                f"waiting for {info.waiting_for!r}; history: {await events_of(engine, run)}")


async def events_of(engine: replay.Engine, run: replay.Run) -> list[tuple[Any, ...]]:
    return [(e.kind, e.event, e.key) for e in await engine.history(run.run_id)]


async def assert_executed_once(
    engine: replay.Engine, run: replay.Run, output: Any, label: str,
    steps: tuple[str, ...] = ("before:v1", "after:v1"),
) -> list[tuple[Any, ...]]:
    """Check the run finished once, one execution at a time, each step executed once."""
    run_id = run.run_id
    info = engine.status(run_id)
    events = await events_of(engine, run)
    where = f"{label}: {run_id} {events}"
    assert (info.state, info.output) == (RunState.COMPLETED, output), where
    assert PROBE.max_live[run_id] == 1, f"{where}: two generators of one run were alive"
    assert PROBE.max_executing[run_id] == 1, f"{where}: two steps of one run ran at once"
    assert PROBE.live[run_id] == 0 and PROBE.created[run_id] == PROBE.closed[run_id], where
    assert PROBE.after[run_id] == 1, f"{where}: the code after the wait ran {PROBE.after}"
    for key in steps:
        assert PROBE.calls[run_id, key] == 1, f"{where}: {key} executed {PROBE.calls}"
        assert events.count(("step", "completed", key)) == 1, where
    assert events.count(("run", "started", None)) == 1, where
    assert events.count(("run", "completed", None)) == 1, where
    assert events[-1] == ("run", "completed", None), where
    return events


def assert_one_outcome(events: list[tuple[Any, ...]], key: str, where: str) -> None:
    """A suspend key got exactly one value: one signal or one timeout."""
    taken = (("signal", "signalled", key), ("suspend", "timed_out", key))
    outcomes = [e for e in events if e in taken]
    assert len(outcomes) == 1, f"{where}: {events}"


# -- a signal and resume() at once --


@pytest.mark.parametrize("options", OPTIONS)
async def test_a_signal_and_resume_at_once_execute_the_run_once(
    db: str, options: dict[str, Any]
) -> None:
    async with engine_for(db, options) as engine:
        for i, (signal_after, resume_after) in enumerate(PAIRS):
            label = f"signal after {signal_after}, resume after {resume_after}"
            run = await parked(engine, approval, f"sr{i}")
            sent, resumed = await at_once(
                (signal_after, lambda r=run: engine.signal(r.run_id, "approval:v1", "yes")),
                (resume_after, lambda r=run: engine.resume(r.run_id)),
            )
            assert isinstance(sent, replay.Run) and isinstance(resumed, replay.Run), label
            assert await finished(engine, run, label) == "yes"
            events = await assert_executed_once(engine, run, "yes", label)
            assert_one_outcome(events, "approval:v1", label)


# -- a Suspend timeout and a signal at once --


def assert_signal_or_timeout(sent: Any, output: Any, events: list[Any], where: str) -> None:
    """Exactly one of the signal and the timeout won, and the other left no trace."""
    if isinstance(sent, replay.Run):
        assert output == "yes", where
        assert ("signal", "signalled", "approval:v1") in events, where
        assert ("suspend", "timed_out", "approval:v1") not in events, where
    else:
        assert isinstance(sent, SignalRejected), where
        assert output == "timed out", where
        assert ("suspend", "timed_out", "approval:v1") in events, where
        assert ("signal", "signalled", "approval:v1") not in events, where
    assert_one_outcome(events, "approval:v1", where)


@pytest.mark.parametrize("options", OPTIONS)
async def test_a_signal_at_the_suspend_deadline_either_wins_or_is_rejected(
    db: str, options: dict[str, Any]
) -> None:
    winners = Counter[str]()  # either may win, depending on the interleaving
    async with engine_for(db, options) as engine:
        for round_ in range(ROUNDS):
            # One run per pause, all started at once: they share one deadline.
            ids = [f"st{round_}-{j}" for j in range(len(SOLO))]
            runs = await at_once(*((0, lambda r=r: engine.start(approval, r, 60, run_id=r))
                                   for r in ids))
            for run_id in ids:
                await until_parked(engine, run_id)
            await (await engine.start(bystander, run_id=f"st{round_}-bystander")).wait()
            deadline = engine.status(ids[0]).wake_at
            assert deadline is not None
            assert all(engine.status(r).wake_at == deadline for r in ids)
            await trio.sleep((deadline - engine.now()).total_seconds())
            sent = await at_once(
                *((after, lambda r=r: engine.signal(r, "approval:v1", "yes"))
                  for after, r in zip(SOLO, ids, strict=True)))
            for run, outcome, after in zip(runs, sent, SOLO, strict=True):
                label = f"signal {after} checkpoints after the deadline"
                output = await finished(engine, run, label)
                events = await assert_executed_once(engine, run, output, label)
                assert_signal_or_timeout(outcome, output, events, f"{label}: {events}")
                winners[type(outcome).__name__] += 1
    assert sum(winners.values()) == ROUNDS * len(SOLO)


@pytest.mark.parametrize("options", OPTIONS)
async def test_a_deadline_passing_while_a_signal_is_recorded_runs_the_run_once(
    db: str, options: dict[str, Any], clock: trio.testing.MockClock
) -> None:
    async with engine_for(db, options) as engine:
        for i, (signal_after, jump_after) in enumerate(PAIRS):
            label = f"signal after {signal_after}, deadline after {jump_after}"
            run = await parked(engine, approval, f"sj{i}", 60)
            deadline = engine.status(run.run_id).wake_at
            assert deadline is not None
            await trio.sleep((deadline - engine.now()).total_seconds() - 1.0)

            async def deadline_passes() -> None:
                clock.jump(1.0)  # as real time moves on during the signal's commit

            (sent, _) = await at_once(
                (signal_after, lambda r=run: engine.signal(r.run_id, "approval:v1", "yes")),
                (jump_after, deadline_passes),
            )
            output = await finished(engine, run, label)
            events = await assert_executed_once(engine, run, output, label)
            assert_signal_or_timeout(sent, output, events, f"{label}: {events}")


# -- two signals for one key --


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("where", ["parked", "executing"])
async def test_two_signals_for_one_key_exactly_one_wins(
    db: str, options: dict[str, Any], where: str
) -> None:
    async with engine_for(db, options) as engine:
        for i, (first_after, second_after) in enumerate(PAIRS):
            label = f"{where}: first after {first_after}, second after {second_after}"
            run_id = f"ss{i}"
            if where == "parked":
                run = await parked(engine, approval, run_id)
            else:
                gate = PROBE.gates[run_id, "before:v1"] = trio.Event()
                run = await engine.start(approval, run_id, run_id=run_id)
                await trio.testing.wait_all_tasks_blocked()
                assert PROBE.executing[run_id] == 1
            outcomes = await at_once(
                (first_after, lambda r=run_id: engine.signal(r, "approval:v1", "first")),
                (second_after, lambda r=run_id: engine.signal(r, "approval:v1", "second")),
            )
            if where == "executing":
                gate.set()
            won = [o for o in outcomes if isinstance(o, replay.Run)]
            lost = [o for o in outcomes if isinstance(o, SignalRejected)]
            assert (len(won), len(lost)) == (1, 1), f"{label}: {outcomes}"
            winner = "first" if isinstance(outcomes[0], replay.Run) else "second"
            assert await finished(engine, run, label) == winner
            events = await assert_executed_once(engine, run, winner, label)
            assert events.count(("signal", "signalled", "approval:v1")) == 1, label
            history = await engine.history(run_id)
            assert [e.value for e in history if e.kind == "signal"] == [winner], label


# -- a signal to a run that is executing steps --


@pytest.mark.parametrize("options", OPTIONS)
async def test_a_signal_to_an_executing_run_waits_in_the_mailbox(
    db: str, options: dict[str, Any]
) -> None:
    async with engine_for(db, options) as engine:
        # In order: the signal is durable while the step still runs, and the run takes it
        # at its Suspend without parking.
        gate = PROBE.gates["sm", "before:v1"] = trio.Event()
        run = await engine.start(approval, "sm", run_id="sm")
        await trio.testing.wait_all_tasks_blocked()
        await engine.signal("sm", "approval:v1", "early")
        assert engine.status("sm").state is RunState.RUNNING
        assert PROBE.executing["sm"] == 1 and PROBE.after["sm"] == 0
        gate.set()
        assert await finished(engine, run, "in order") == "early"
        events = await assert_executed_once(engine, run, "early", "in order")
        assert ("suspend", "suspended", "approval:v1") not in events

        # Raced with the step's end: the signal lands while the step's outcome is
        # committed, while the run takes its lock at the Suspend, or after it parked.
        for i, (signal_after, release_after) in enumerate(PAIRS):
            label = f"signal after {signal_after}, step ends after {release_after}"
            gate = PROBE.gates[f"sm{i}", "before:v1"] = trio.Event()
            run = await engine.start(approval, f"sm{i}", run_id=f"sm{i}")
            await trio.testing.wait_all_tasks_blocked()

            async def release(gate: trio.Event = gate) -> None:
                gate.set()

            (sent, _) = await at_once(
                (signal_after, lambda r=run: engine.signal(r.run_id, "approval:v1", "yes")),
                (release_after, release),
            )
            assert isinstance(sent, replay.Run), label
            assert await finished(engine, run, label) == "yes"
            events = await assert_executed_once(engine, run, "yes", label)
            assert_one_outcome(events, "approval:v1", label)


@pytest.mark.parametrize("options", CACHE_MISS)
@pytest.mark.parametrize("woken_by", ["sleep", "timeout"])
async def test_a_signal_while_a_woken_run_loads_its_history_is_not_lost(
    db: str, options: dict[str, Any], woken_by: str, clock: trio.testing.MockClock
) -> None:
    async with engine_for(db, options) as engine:
        if woken_by == "sleep":
            run = await parked(engine, nap_then_approval, "sl")
        else:
            run = await parked(engine, approval, "sl", 60)
        # The woken run's history query returns late (a slow thread hand-off), after a
        # signal for its Suspend was recorded: the read saw the history before it. (Its
        # rows are in memory: the loader is told they are not, so that a thread reads.)
        store = internals(engine).store
        fold_memo = store.fold_memo
        loaded, released = threading.Event(), threading.Event()

        def late_load(run_id: str, workflow: str) -> Any:
            history = fold_memo(run_id, workflow)
            if run_id == "sl" and not loaded.is_set():
                loaded.set()
                released.wait(timeout=0.2)
            return history

        store.fold_memo = late_load  # type: ignore[method-assign]
        store.memo_at_hand = lambda run_id, workflow, most: None  # type: ignore[method-assign]
        deadline = engine.status("sl").wake_at
        assert deadline is not None
        await trio.sleep((deadline - engine.now()).total_seconds() - 0.001)
        clock.jump(0.001)
        await spin_until(loaded.is_set, "the woken run's history read")
        try:
            (sent,) = await at_once((0, lambda: engine.signal("sl", "approval:v1", "yes")))
        finally:
            released.set()
        label = f"woken by its {woken_by}"
        output = await finished(engine, run, label)
        events = await assert_executed_once(engine, run, output, label, steps=STEPS[woken_by])
        if woken_by == "sleep":
            assert output == "yes", f"{label}: {events}"
        else:
            assert_signal_or_timeout(sent, output, events, f"{label}: {events}")


# -- resume() and a Sleep timer at once --


@pytest.mark.parametrize("options", OPTIONS)
async def test_resume_while_a_sleep_timer_fires_executes_the_run_once(
    db: str, options: dict[str, Any], clock: trio.testing.MockClock
) -> None:
    async with engine_for(db, options) as engine:
        cases = [(after, "exact") for after in SOLO] + [(after, "jump") for after in SOLO]
        for i, (resume_after, how) in enumerate(cases):
            label = f"resume {resume_after} checkpoints after the deadline ({how})"
            run = await parked(engine, nap, f"rt{i}")
            deadline = engine.status(run.run_id).wake_at
            assert deadline is not None
            if how == "exact":
                await trio.sleep((deadline - engine.now()).total_seconds())
                calls = [(resume_after, lambda r=run: engine.resume(r.run_id))]
            else:
                # resume() first, and the deadline passes while it replays the run.
                await trio.sleep((deadline - engine.now()).total_seconds() - 1.0)

                async def deadline_passes() -> None:
                    clock.jump(1.0)

                calls = [(0, lambda r=run: engine.resume(r.run_id)),
                         (resume_after, deadline_passes)]
            await at_once(*calls)
            assert await finished(engine, run, label) == "rested"
            events = await assert_executed_once(engine, run, "rested", label)
            assert events.count(("sleep", "fired", "nap:v1")) == 1, label
            assert events.count(("run", "resumed", None)) <= 1, label


# -- resume() twice at once --


@pytest.mark.parametrize("options", OPTIONS)
async def test_resume_twice_at_once_of_a_suspended_run(db: str, options: dict[str, Any]) -> None:
    async with engine_for(db, options) as engine:
        for i, (first_after, second_after) in enumerate(PAIRS):
            label = f"first after {first_after}, second after {second_after}"
            run = await parked(engine, approval, f"rr{i}")
            outcomes = await at_once(
                (first_after, lambda r=run: engine.resume(r.run_id)),
                (second_after, lambda r=run: engine.resume(r.run_id)),
            )
            assert all(isinstance(o, replay.Run) for o in outcomes), label
            info = await run.wait()
            assert (info.state, info.waiting_for) == (RunState.SUSPENDED, "approval:v1"), label
            await engine.signal(run.run_id, "approval:v1", "yes")
            assert await finished(engine, run, label) == "yes"
            events = await assert_executed_once(engine, run, "yes", label)
            assert events.count(("suspend", "suspended", "approval:v1")) == 1, label
            assert 1 <= events.count(("run", "resumed", None)) <= 2, label


@pytest.mark.parametrize("options", OPTIONS)
async def test_resume_twice_at_once_retries_a_failed_step_once(
    db: str, options: dict[str, Any]
) -> None:
    async with engine_for(db, options) as engine:
        for i, (first_after, second_after) in enumerate(PAIRS):
            label = f"first after {first_after}, second after {second_after}"
            run_id = f"rf{i}"
            PROBE.broken = True
            run = await engine.start(flaky, run_id, run_id=run_id)
            with pytest.raises(replay.WorkflowFailed):
                await run.result()
            PROBE.broken = False
            outcomes = await at_once(
                (first_after, lambda r=run_id: engine.resume(r)),
                (second_after, lambda r=run_id: engine.resume(r)),
            )
            assert all(isinstance(o, replay.Run) for o in outcomes), label
            assert await finished(engine, run, label) == "fixed"
            assert PROBE.calls[run_id, "flaky:v1"] == 2, f"{label}: {PROBE.calls}"
            events = await events_of(engine, run)
            assert events.count(("run", "resumed", None)) == 1, f"{label}: {events}"
            assert events.count(("step", "completed", "flaky:v1")) == 1, label
            assert events.count(("run", "completed", None)) == 1, label
            assert PROBE.max_live[run_id] == 1 and PROBE.after[run_id] == 1, label


# -- all three at once --


@pytest.mark.parametrize("options", OPTIONS)
async def test_resume_a_signal_and_a_timeout_at_once_execute_the_run_once(
    db: str, options: dict[str, Any], clock: trio.testing.MockClock
) -> None:
    triples = [(a, b, c) for a in (0, 2, BLOCKED) for b in (0, 3) for c in (0, 1, 4)]
    async with engine_for(db, options) as engine:
        for i, (signal_after, resume_after, jump_after) in enumerate(triples):
            label = f"signal {signal_after}, resume {resume_after}, deadline {jump_after}"
            run = await parked(engine, approval, f"all{i}", 60)
            deadline = engine.status(run.run_id).wake_at
            assert deadline is not None
            await trio.sleep((deadline - engine.now()).total_seconds() - 1.0)

            async def deadline_passes() -> None:
                clock.jump(1.0)

            sent, resumed, _ = await at_once(
                (signal_after, lambda r=run: engine.signal(r.run_id, "approval:v1", "yes")),
                (resume_after, lambda r=run: engine.resume(r.run_id)),
                (jump_after, deadline_passes),
            )
            assert isinstance(resumed, replay.Run), label
            output = await finished(engine, run, label)
            events = await assert_executed_once(engine, run, output, label)
            assert_signal_or_timeout(sent, output, events, f"{label}: {events}")


# -- dropped generators --


@pytest.mark.parametrize("options", OPTIONS)
async def test_dropped_generators_run_their_finally_but_nothing_executes_twice(
    db: str, options: dict[str, Any]
) -> None:
    async with engine_for(db, options) as engine:
        runs = [await engine.start(cleanup, f"c{i}", run_id=f"c{i}") for i in range(3)]
        await trio.sleep(61)
        for run in runs:
            assert (await run.wait()).state is RunState.SUSPENDED
        await at_once(*((0, lambda r=r: engine.signal(r.run_id, "approval:v1", r.run_id))
                        for r in runs))
        for run in runs:
            assert await finished(engine, run, "cleanup") == run.run_id
    dropped = "always_replay" in options or options.get("cache_size") == 0
    evicted = options.get("cache_size") == 1
    for run in runs:
        run_id = run.run_id
        # One generator per execution; every one was finished or closed.
        assert PROBE.created[run_id] == PROBE.closed[run_id]
        # Each park dropped the generator: its `finally` ran again, yielding a Step that
        # was not executed. Only the real end executed `cleanup:v1`.
        if evicted:
            assert 1 <= PROBE.created[run_id] <= 4
        else:
            assert PROBE.created[run_id] == (4 if dropped else 1)
        for key in ("before:v1", "cleanup:v1"):
            assert PROBE.calls[run_id, key] == 1, PROBE.calls
