"""A long history's replay lets the engine do other work every few hundred outcomes.

Replaying sends recorded outcomes straight back with no I/O, so a run of many
thousand recorded steps would hold the engine's loop for its whole replay (about half
a second for 100,000 steps): other runs, timers, signals and `terminate` waited. The
replay pauses every `REPLAYED_PER_TURN` outcomes for one scheduling round. The
workflow below notes, before each `yield`, how often a ticker task has run. A long
history read from the file is folded into the run's memo where it is read, in a worker
thread, not on the loop.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import Any

import pytest
import trio
from spinning import spin_until

import replay
from replay import RunState, Step, Suspend, WorkflowFailed
from replay._core._history import RunHistory, fold_rows
from replay._core._interpreter import REPLAYED_PER_TURN
from replay._engine._facade import internals
from replay._engine._loading import FOLDED_ON_LOOP
from replay._store import _memo_reads

STEPS = 3 * REPLAYED_PER_TURN + 10
ticks = [0]
seen: list[int] = []  # the ticker's count before each yield


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    ticks[0] = 0
    seen.clear()
    yield


def double(i: int) -> int:
    return 2 * i


@replay.workflow(name="long.history")
def long_history(count: int) -> Generator[Any, Any, int]:
    total = 0
    for i in range(count):
        seen.append(ticks[0])
        # Pure: recording the history takes one commit instead of hundreds.
        total += yield Step(f"s{i}", double, i, pure=True)
    seen.append(ticks[0])
    yield Suspend("go")
    return total


async def ticker() -> None:
    while True:
        ticks[0] += 1
        await trio.lowlevel.checkpoint()


async def parked_long_run(engine: replay.Engine) -> str:
    """Start a run that records `STEPS` steps and parks; forget what it saw live."""
    run = await engine.start(long_history, STEPS)
    assert (await run.wait()).state is RunState.SUSPENDED
    seen.clear()
    return run.run_id


async def test_a_long_replay_gives_other_tasks_a_turn(db: str) -> None:
    # cache_size=0: the parked run keeps no generator, so the signal replays it whole.
    async with replay.open_engine(db, workflows=[long_history], cache_size=0) as engine:
        run_id = await parked_long_run(engine)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            run = await engine.signal(run_id, "go")
            assert await run.result() == sum(2 * i for i in range(STEPS))
            nursery.cancel_scope.cancel()
    assert len(seen) == STEPS + 1
    # The ticker runs once per scheduling round, before or after the run's task (trio
    # orders each round at random): at most two turns of the replay see one count.
    longest = max(len(list(same)) for _, same in itertools.groupby(seen))
    assert longest <= 2 * REPLAYED_PER_TURN
    assert seen[-1] - seen[0] >= STEPS // REPLAYED_PER_TURN - 1


async def test_terminate_stops_a_long_replay_between_two_turns(db: str) -> None:
    async with replay.open_engine(db, workflows=[long_history], cache_size=0) as engine:
        run_id = await parked_long_run(engine)
        run = await engine.signal(run_id, "go")
        # The replay has begun: it is between two turns now.
        await spin_until(lambda: bool(seen), "the replay's first turn")
        await engine.terminate(run_id, "enough")
        info = engine.status(run_id)
        assert (info.state, info.error_type) == (RunState.CANCELLED, "replay.Cancelled")
        with pytest.raises(WorkflowFailed, match=r"replay\.Cancelled"):
            await run.result()
    # The replay stopped at a pause: the rest of the workflow code never ran.
    assert REPLAYED_PER_TURN <= len(seen) < STEPS


async def test_closing_the_engine_mid_replay_leaves_the_run_to_the_next_open(db: str) -> None:
    async with replay.open_engine(db, workflows=[long_history], cache_size=0) as engine:
        run_id = await parked_long_run(engine)
        await engine.signal(run_id, "go")
        await spin_until(lambda: bool(seen), "the replay's first turn")
    stopped_after = len(seen)
    assert stopped_after < STEPS
    async with replay.open_engine(db, workflows=[long_history]) as engine:
        run = engine.get_run(run_id)
        assert await run.result() == sum(2 * i for i in range(STEPS))


async def test_a_long_history_is_folded_off_the_loop(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # More rows than the loop folds itself: after a reopen the history is read from the
    # file, and folded in the worker thread that read it.
    steps = FOLDED_ON_LOOP + 10
    async with replay.open_engine(db, workflows=[long_history], cache_size=0) as engine:
        run = await engine.start(long_history, steps)
        assert (await run.wait()).state is RunState.SUSPENDED
    folded_on: list[threading.Thread] = []

    def watched(rows: Any, at: Any, record: Any) -> RunHistory:
        folded_on.append(threading.current_thread())
        return fold_rows(rows, at, record)

    monkeypatch.setattr(_memo_reads, "fold_rows", watched)
    async with replay.open_engine(db, workflows=[long_history], cache_size=0) as engine:
        store = internals(engine).store
        assert store.memo_at_hand(run.run_id, "long.history", FOLDED_ON_LOOP) is None
        folded_on.clear()
        woken = await engine.signal(run.run_id, "go")
        assert await woken.result() == sum(2 * i for i in range(steps))
    assert folded_on and threading.main_thread() not in folded_on


async def resumed_while(engine: replay.Engine, run_id: str,
                        act: Callable[[], Awaitable[Any]]) -> tuple[replay.Run, int]:
    """`resume` the parked run and `act` between two turns of its replay.

    Returns the run and how many of its `yield`s the replay had reached by then.
    """
    begun: list[int] = []

    async def meanwhile() -> None:
        # The replay has begun: it is between two turns now.
        await spin_until(lambda: bool(seen), "the replay's first turn")
        begun.append(len(seen))
        await act()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(meanwhile)
        run = await engine.resume(run_id)
    return run, begun[0]


async def test_a_signal_during_a_long_replay_reaches_the_run(db: str) -> None:
    # The signal commits while the replay goes on, and the run takes it whether or not
    # the replay had reached its Suspend by then (mailbox, or a wake-up there).
    async with replay.open_engine(db, workflows=[long_history], cache_size=0) as engine:
        run_id = await parked_long_run(engine)
        run, begun = await resumed_while(engine, run_id,
                                         lambda: engine.signal(run_id, "go"))
        assert await run.result() == sum(2 * i for i in range(STEPS))
        history = [(e.kind, e.event, e.key) for e in await engine.history(run_id)]
    assert begun < STEPS
    assert ("signal", "signalled", "go") in history
    assert history[-1] == ("run", "completed", None)


async def test_a_cancel_during_a_long_replay_cancels_the_run(db: str) -> None:
    async with replay.open_engine(db, workflows=[long_history], cache_size=0) as engine:
        run_id = await parked_long_run(engine)
        run, begun = await resumed_while(engine, run_id,
                                         lambda: engine.cancel(run_id, "stop"))
        with pytest.raises(WorkflowFailed, match=r"replay\.Cancelled"):
            await run.result()
        info = engine.status(run_id)
    assert begun < STEPS
    assert (info.state, info.error_type) == (RunState.CANCELLED, "replay.Cancelled")
    assert len(seen) == STEPS + 1  # the replay went on to the Suspend, which took it
