"""Pure steps (`Step(..., pure=True)`): no commit of their own.

A pure step is a deterministic computation with no outside effect, so the workflow
goes on at once and its outcome rides the run's next commit; an ordinary step still
waits for its own. Commits are counted where they happen (`Store.submit` for the
writer thread, `Store.commit_now` for the engine's own thread: one transaction per
batch) on real DuckDB files; a SIGKILL inside a pure step shows
that a crash re-runs exactly the uncommitted pure steps and no ordinary step. A long
streak of pure steps lets the engine's other tasks run every few dozen steps.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import trio
from childproc import ChildProcess

import replay
from replay import Retry, Step
from replay._engine._driver import PURE_STEPS_PER_YIELD
from replay._pg._store import PgStore
from replay._store import Store

pytestmark = pytest.mark.both_stores

CHILD = Path(__file__).with_name("pure_crash_child.py")
calls: Counter[str] = Counter()
threads: list[int] = []


@pytest.fixture(autouse=True)
def _clear() -> None:
    calls.clear()
    threads.clear()


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many batches the engine committed (one transaction each, on either thread)."""
    counted = [0]
    for store in (Store, PgStore):
        monkeypatch.setattr(store, "submit", _counting(store.submit, counted))
        monkeypatch.setattr(store, "commit_now", _counting_now(store.commit_now, counted))
    yield counted


def _counting(submit: Any, counted: list[int]) -> Any:
    def counting(self: Any, rows: list[tuple[Any, ...]], done: Any, lone: bool = False) -> None:
        counted[0] += 1
        submit(self, rows, done, lone)

    return counting


def _counting_now(commit_now: Any, counted: list[int]) -> Any:
    def counting(self: Any, rows: list[tuple[Any, ...]], wait: bool = False) -> bool:
        committed = bool(commit_now(self, rows, wait))
        counted[0] += committed
        return committed

    return counting


def double(value: int) -> int:
    calls["double"] += 1
    threads.append(threading.get_ident())
    return value * 2


async def adouble(value: int) -> int:
    calls["adouble"] += 1
    return value * 2


def effect(value: int) -> int:
    calls["effect"] += 1
    return value + 1


@replay.workflow(name="pure_pipeline")
def pipeline(value: int, steps: int, use_async: bool) -> Generator[Any, Any, int]:
    for i in range(steps):
        value = yield Step(f"p{i}", adouble if use_async else double, value % 1_000_003,
                           pure=True)
    return (yield Step("effect", effect, value))


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
async def test_a_pure_pipeline_costs_two_commits(db: str, commits: list[int],
                                                 use_async: bool) -> None:
    async with replay.open_engine(db, workflows=[pipeline]) as engine:
        before = commits[0]
        run = await engine.start(pipeline, 1, 100, use_async, run_id="pipe")
        waited = commits[0]
        result = await run.result()
        # The start, then one commit with the 100 pure outcomes, the ordinary step's
        # and the run's end: the pure outcomes start no commit of their own.
        assert waited - before == 1
        assert commits[0] - waited == 1
        rows = await engine.sql("SELECT key, event FROM replay_events WHERE run_id = 'pipe' "
                                "AND kind = 'step' ORDER BY seq")
    expected = 1
    for _ in range(100):
        expected = expected % 1_000_003 * 2
    assert result == expected + 1
    assert rows == [(f"p{i}", "completed") for i in range(100)] + [("effect", "completed")]


async def test_sync_pure_steps_run_on_the_engine_thread(db: str) -> None:
    async with replay.open_engine(db, workflows=[pipeline]) as engine:
        await (await engine.start(pipeline, 1, 3, False)).result()
    assert threads == [threading.get_ident()] * 3


@replay.workflow(name="pure_sleepy")
def sleepy(value: int) -> Generator[Any, Any, int]:
    for i in range(10):
        value = yield Step(f"p{i}", double, value, pure=True)
    yield replay.Sleep("nap", 60)
    return (yield Step("effect", effect, value))


async def test_a_replay_answers_pure_steps_from_the_file(db: str) -> None:
    # always_replay: the wake-up after the sleep replays the workflow from the top.
    async with replay.open_engine(db, workflows=[sleepy], always_replay=True) as engine:
        result = await (await engine.start(sleepy, 1)).result()
    assert result == 2**10 + 1
    assert calls == {"double": 10, "effect": 1}


flaky = {"left": 0}


def sometimes(value: int) -> int:
    calls["sometimes"] += 1
    if flaky["left"] > 0:
        flaky["left"] -= 1
        raise ValueError("not yet")
    return value


@replay.workflow(name="pure_retry")
def retried(value: int) -> Generator[Any, Any, int]:
    value = yield Step("p", sometimes, value, pure=True,
                       retry=Retry(attempts=3, initial=1.0))
    return (yield Step("effect", effect, value))


async def test_a_failing_pure_step_is_retried_durably(db: str) -> None:
    flaky["left"] = 2
    async with replay.open_engine(db, workflows=[retried]) as engine:
        assert await (await engine.start(retried, 7, run_id="r")).result() == 8
        events = await engine.sql("SELECT key, event, attempt FROM replay_events "
                                  "WHERE kind = 'step' ORDER BY seq")
    assert events == [("p", "retrying", 1), ("p", "retrying", 2), ("p", "completed", 3),
                      ("effect", "completed", 1)]


async def before(engine: replay.Engine) -> int:
    rows = await engine.sql("SELECT count(*) FROM replay_events WHERE key = 'first' "
                            "AND event = 'completed'")
    return int(rows[0][0])


seen_durable: list[int] = []
engines: list[replay.Engine] = []


async def checks_first_is_durable() -> str:
    seen_durable.append(await before(engines[0]))
    return "checked"


@replay.workflow(name="pure_order")
def order() -> Generator[Any, Any, str]:
    value = yield Step("first", effect, 1)
    value = yield Step("p", double, value, pure=True)
    return (yield Step("second", checks_first_is_durable))


async def test_an_ordinary_outcome_is_durable_before_the_next_ordinary_step(db: str) -> None:
    seen_durable.clear()
    async with replay.open_engine(db, workflows=[order]) as engine:
        engines[:] = [engine]
        assert await (await engine.start(order)).result() == "checked"
    assert seen_durable == [1]


def test_pure_steps_in_equality_and_repr() -> None:
    assert Step("k", double, 1, pure=True) != Step("k", double, 1)
    assert Step("k", double, 1, pure=True) == Step("k", double, 1, pure=True)
    assert repr(Step("k", double, 1, pure=True)).endswith("pure=True)")
    assert Step("k", double, 1).pure is False


def test_bad_pure_arguments() -> None:
    with pytest.raises(TypeError, match="pure must be True or False, got 'yes'"):
        Step("k", double, 1, pure="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a pure step is a quick computation and takes no "
                                         "timeout"):
        Step("k", double, 1, pure=True, timeout=5)


@pytest.mark.slow
def test_a_crash_reruns_exactly_the_uncommitted_pure_steps(tmp_path: Path) -> None:
    db, side = tmp_path / "pure.duckdb", tmp_path / "side"
    child = ChildProcess(CHILD, [str(db), str(side)], tmp_path / "stderr")
    try:
        assert child.line() is None  # SIGKILLed inside `boom`
        assert child.proc.wait() == -9
    finally:
        child.close()
    with duckdb.connect(str(db), read_only=True) as con:
        durable = [key for (key,) in con.execute(
            "SELECT key FROM replay_events WHERE kind = 'step' ORDER BY seq").fetchall()]
    assert durable == ["a", "p0", "b"]
    child = ChildProcess(CHILD, [str(db), str(side)], tmp_path / "stderr")
    try:
        line = child.line()
        assert line is not None and line.startswith("done "), child.stderr()
        assert json.loads(line[5:]) == (((((1 + 1) * 2 + 1) * 32) * 1) + 1)
    finally:
        child.close()
    ran = Counter(side.read_text().split())
    assert ran == {"a": 1, "p0": 1, "b": 1, "p1": 2, "p2": 2, "p3": 2, "p4": 2, "p5": 2,
                   "boom": 2, "z": 1}


def test_a_pure_step_inside_a_group_runs_on_the_loop(db: str) -> None:
    @replay.workflow(name="pure_group")
    def grouped() -> Generator[Any, Any, list[int]]:
        values = yield replay.All("both", [Step("x", double, 1, pure=True),
                                           Step("y", effect, 1)])
        return list(values)

    async def main() -> list[int]:
        async with replay.open_engine(db, workflows=[grouped]) as engine:
            return list(await (await engine.start(grouped)).result())

    assert trio.run(main) == [2, 2]
    assert threads == [threading.get_ident()]


gate: dict[str, trio.Event] = {}


async def waits_at_the_gate(value: int) -> int:
    calls["gated"] += 1
    gate["entered"].set()
    await gate["open"].wait()
    return value * 2


@replay.workflow(name="pure_gated")
def gated(value: int) -> Generator[Any, Any, int]:
    value = yield Step("p", waits_at_the_gate, value, pure=True)
    return (yield Step("effect", effect, value))


def _new_gate() -> None:
    gate.update(entered=trio.Event(), open=trio.Event())


async def test_a_cancellation_takes_effect_when_an_async_pure_step_returns(db: str) -> None:
    # A pure step is not interrupted midway by its run's cancellation: the run is
    # cancelled at its next command, and the ordinary step there never runs.
    _new_gate()
    async with replay.open_engine(db, workflows=[gated]) as engine:
        run = await engine.start(gated, 4, run_id="g")
        await gate["entered"].wait()
        await engine.cancel("g", "enough")
        gate["open"].set()
        info = await run.wait()
        steps = await engine.sql("SELECT key, event FROM replay_events "
                                 "WHERE run_id = 'g' AND kind = 'step' ORDER BY seq")
    assert info.state == "cancelled"
    assert steps == [("p", "completed"), ("effect", "cancelled")]
    assert calls == {"gated": 1}


async def test_a_stopping_engine_interrupts_an_async_pure_step(db: str) -> None:
    # The engine's stop cancels the awaiting pure step; the run goes on at the next open,
    # where the step runs again.
    _new_gate()
    async with replay.open_engine(db, workflows=[gated]) as engine:
        await engine.start(gated, 4, run_id="g")
        await gate["entered"].wait()
    assert not gate["open"].is_set()
    _new_gate()
    gate["open"].set()
    async with replay.open_engine(db, workflows=[gated]) as engine:
        assert await engine.get_run("g").result() == 9
        steps = await engine.sql("SELECT key, event FROM replay_events "
                                 "WHERE run_id = 'g' AND kind = 'step' ORDER BY seq")
    assert calls == {"gated": 2, "effect": 1}
    assert ("p", "completed") in steps and steps[-1] == ("effect", "completed")


ticks = [0]  # how often another task ran (see the test below)


def observe_ticks(value: int) -> int:
    calls["observe"] += 1
    threads.append(ticks[0])
    return value + 1


@replay.workflow(name="pure_streak")
def streak(steps: int) -> Generator[Any, Any, int]:
    value = 0
    for i in range(steps):
        value = yield Step(f"p{i}", observe_ticks, value, pure=True)
    return value


async def test_a_long_streak_of_pure_steps_lets_the_engine_do_other_work(db: str) -> None:
    # A streak of pure steps waits for nothing; it still gives the loop to the engine's
    # other tasks (other runs, timers, signals, the flusher) every few dozen steps.
    ticks[0] = 0

    async def ticker() -> None:
        while True:
            ticks[0] += 1
            await trio.lowlevel.checkpoint()

    async with replay.open_engine(db, workflows=[streak]) as engine, \
            trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        assert await (await engine.start(streak, 200)).result() == 200
        nursery.cancel_scope.cancel()
    seen = threads  # the ticker's count as each pure step ran
    assert len(seen) == 200
    # The ticker runs once per scheduling round, before or after the run's task (trio
    # orders each round at random): at most two yields' worth of steps see one count.
    longest = max(len(list(same)) for _, same in itertools.groupby(seen))
    assert longest <= 2 * PURE_STEPS_PER_YIELD
    assert seen[-1] - seen[0] >= 200 // PURE_STEPS_PER_YIELD - 1
