"""Watching runs (issue 13, part 2): `Run.watch`, `Engine.watch`, `Run.wait(until=)`,
`StepContext.progress`.

A run's watch yields a snapshot, then one update per recorded event (and the progress
its steps publish), in order, and ends after the event that finishes the run; a
watcher that falls behind its buffer gets a snapshot saying how many it missed; a
reconnect with `after_seq` yields exactly the recorded events after it. Virtual time
only (MockClock, autojump), real DuckDB files.
"""

from __future__ import annotations

import functools
from collections.abc import Generator
from typing import Any

import pytest
import trio
import trio.testing

import replay
from replay import Note, RunUpdate, Sleep, Step, Suspend
from replay._engine._facade import internals
from replay.testing import wait_for_state

pytestmark = pytest.mark.both_stores

progress_seen: list[Any] = []
outcomes: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _clear() -> None:
    progress_seen.clear()
    outcomes.clear()
    flaky_state["fail"] = True


def add(a: int, b: int) -> int:
    return a + b


@replay.workflow(name="watch_chain")
def chain(n: int) -> Generator[Any, Any, int]:
    total = 0
    for i in range(n):
        total = yield Step(f"add:{i}", add, total, i)
        yield Note(f"note:{i}", {"i": i})
    yield Sleep("rest:v1", 60)
    return total


@replay.workflow(name="watch_twice")
def twice() -> Generator[Any, Any, list[Any]]:
    first = yield Suspend("first:v1", status="first approval")
    yield Step("between:v1", add, 1, 1)
    second = yield Suspend("second:v1", status="second approval")
    return [first, second]


@replay.workflow(name="watch_long")
def long_one(n: int) -> Generator[Any, Any, Any]:
    for i in range(n):
        yield Step(f"s:{i}", add, i, 0)
    decision = yield Suspend("go:v1")
    for i in range(3):
        yield Step(f"t:{i}", add, i, 0)
    return decision


def sync_reporter(n: int) -> str:
    step = replay.current_step()
    for i in range(n):
        step.progress({"done": i + 1, "of": n})
    return "sync done"


async def async_reporter(n: int) -> str:
    step = replay.current_step()
    for i in range(n):
        step.progress({"done": i + 1, "of": n})
        await trio.sleep(1)
    return "async done"


class Opaque:
    """Not encodable."""


def bad_reporter() -> str:
    try:
        replay.current_step().progress(Opaque())
    except replay.EncodingError as error:
        return f"caught {type(error).__name__}"
    return "not raised"


kept: list[replay.StepContext] = []


def keep_context() -> str:
    kept.append(replay.current_step())
    return "kept"


@replay.workflow(name="watch_progress")
def reporting(n: int) -> Generator[Any, Any, list[str]]:
    a = yield Step("sync:v1", sync_reporter, n)
    b = yield Step("async:v1", async_reporter, n)
    c = yield Step("bad:v1", bad_reporter)
    d = yield Step("keep:v1", keep_context)
    return [a, b, c, d]


flaky_state = {"fail": True}


def flaky() -> str:
    if flaky_state["fail"]:
        raise ValueError("not yet")
    return "fixed"


@replay.workflow(name="watch_flaky")
def flaky_flow() -> Generator[Any, Any, str]:
    yield Step("before:v1", add, 1, 2)
    result = yield Step("flaky:v1", flaky)
    return result


WORKFLOWS = [chain, twice, long_one, reporting, flaky_flow]


async def collect(updates: Any, limit: int = 1000) -> list[RunUpdate]:
    got = []
    async for update in updates:
        got.append(update)
        assert len(got) <= limit, got
    return got


def summary(updates: list[RunUpdate]) -> list[tuple[Any, ...]]:
    """(kind, event kind/event, key, state) of each update."""
    rows = []
    for u in updates:
        what = None if u.event is None else f"{u.event.kind}/{u.event.event}"
        key = u.key if u.kind == "progress" else (None if u.event is None else u.event.key)
        rows.append((u.kind, what, key, None if u.info is None else u.info.state.value))
    return rows


# -- a run's watch --


async def test_a_watch_yields_a_snapshot_then_every_event_in_order_and_ends(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(chain, 2, run_id="c")
        updates = await collect(run.watch())
        history = await engine.history("c")
    assert updates[0].kind == "snapshot"
    events = updates[1:]
    assert all(u.kind == "event" for u in events)
    seqs = [u.seq for u in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # Everything after the snapshot, exactly once, in order, ending with the completion.
    assert seqs == [e.seq for e in history if e.seq > updates[0].seq]
    assert [u.event for u in events] == [e for e in history if e.seq > updates[0].seq]
    assert events[-1].event is not None and events[-1].event.event == "completed"
    assert events[-1].info is not None and events[-1].info.output == 1
    # The state carried by each update is the state after its event.
    states = {(u.event.kind, u.event.event): u.info.state.value  # type: ignore[union-attr]
              for u in events}
    assert states[("sleep", "scheduled")] == "sleeping"
    assert states[("run", "completed")] == "completed"
    notes = [u for u in events if u.event is not None and u.event.kind == "note"]
    assert [n.info.status_value for n in notes if n.info] == [{"i": 0}, {"i": 1}][-len(notes):]


async def test_a_finished_runs_watch_yields_one_snapshot(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(chain, 1, run_id="c")
        await run.result()
        updates = await collect(run.watch())
        assert summary(updates) == [("snapshot", None, None, "completed")]
        assert updates[0].seq == (await engine.history("c"))[-1].seq
    # Read from the file by another engine: the same.
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        updates = await collect(engine.get_run("c").watch())
        assert summary(updates) == [("snapshot", None, None, "completed")]
        assert updates[0].info is not None and updates[0].info.output == 0


# -- progress --


async def test_steps_publish_progress_to_watchers_without_recording_it(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(reporting, 3, run_id="p")
        updates = await collect(run.watch())
        history = await engine.history("p")
        assert await run.result() == ["sync done", "async done", "caught EncodingError",
                                      "kept"]
        with pytest.raises(replay.ReplayError, match="outside its step function"):
            kept[0].progress(1)
    progress = [(u.key, u.progress) for u in updates if u.kind == "progress"]
    expected = [{"done": i + 1, "of": 3} for i in range(3)]
    assert progress == [("sync:v1", v) for v in expected] + [("async:v1", v) for v in expected]
    # Each progress update comes between its step's start and its completion.
    order = [(u.kind, u.key if u.kind == "progress" else
              (u.event.key, u.event.event) if u.event else None) for u in updates]
    first_sync = order.index(("progress", "sync:v1"))
    done_sync = order.index(("event", ("sync:v1", "completed")))
    first_async = order.index(("progress", "async:v1"))
    assert first_sync < done_sync < first_async
    assert all(u.info is not None and u.info.state == "running"
               for u in updates if u.kind == "progress")
    assert not any(e.kind == "progress" for e in history)
    assert len(history) == len([u for u in updates if u.kind == "event"]) + 1  # run/started


def test_progress_outside_a_step_is_refused() -> None:
    with pytest.raises(replay.ReplayError, match="outside"):
        replay.current_step()
    with pytest.raises(replay.ReplayError, match="outside its step function"):
        replay.StepContext("r", "k:v1", 1).progress({"done": 1})


# -- falling behind --


async def test_a_lagging_watcher_gets_a_snapshot_with_the_missed_count_then_goes_on(
        db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(long_one, 10, run_id="l")
        async with run.watch(buffer=3) as updates:
            first = await updates.__anext__()
            assert first.kind == "snapshot"
            info = await wait_for_state(engine, "l", "suspended")  # not reading meanwhile
            history = await engine.history("l")
            behind = await updates.__anext__()
            assert behind.kind == "snapshot"
            assert behind.info is not None and behind.info.state == "suspended"
            assert behind.info.waiting_for == "go:v1" == info.waiting_for
            assert behind.seq == history[-1].seq
            assert behind.missed == len([e for e in history if e.seq > first.seq])
            assert behind.missed > 3
            await engine.signal("l", "go:v1", "go")
            rest = await collect(updates)
        final = await engine.history("l")
    assert [u.seq for u in rest] == [e.seq for e in final if e.seq > behind.seq]
    assert all(u.kind == "event" and u.missed == 0 for u in rest)
    assert rest[-1].info is not None and rest[-1].info.state == "completed"


async def test_a_watcher_within_its_buffer_misses_nothing(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(long_one, 2, run_id="l")
        async with run.watch(buffer=100) as updates:
            first = await updates.__anext__()
            await wait_for_state(engine, "l", "suspended")
            await engine.signal("l", "go:v1", "go")
            await run.result()
            rest = await collect(updates)
        history = await engine.history("l")
    assert all(u.kind == "event" for u in rest)
    assert [u.seq for u in rest] == [e.seq for e in history if e.seq > first.seq]


# -- reconnecting --


async def test_after_seq_yields_exactly_the_events_after_it_with_their_states(
        db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(long_one, 3, run_id="r")
        live: list[RunUpdate] = []
        async with run.watch() as updates:
            async for update in updates:
                live.append(update)
                if update.info is not None and update.info.state == "suspended":
                    break
        # Reconnect from each point so far: the recorded events after it, same states.
        for cut in live[:-1]:
            again = []
            async with run.watch(after_seq=cut.seq) as updates:
                async for update in updates:
                    again.append(update)
                    if update.seq == live[-1].seq:
                        break
            tail = [u for u in live if u.kind == "event" and u.seq > cut.seq]
            assert summary(again) == summary(tail)
            assert [u.seq for u in again] == [u.seq for u in tail]
            assert [u.info.waiting_for for u in again if u.info] == [
                u.info.waiting_for for u in tail if u.info]
        # Reconnect from the suspension, then the live events follow.
        async with trio.open_nursery() as nursery:
            got: list[RunUpdate] = []

            async def follow() -> None:
                got.extend(await collect(run.watch(after_seq=live[-1].seq)))

            nursery.start_soon(follow)
            await trio.testing.wait_all_tasks_blocked()
            await engine.signal("r", "go:v1", "yes")
        history = await engine.history("r")
    assert [u.seq for u in got] == [e.seq for e in history if e.seq > live[-1].seq]
    assert got[0].event is not None and got[0].event.kind == "signal"
    assert got[-1].info is not None and got[-1].info.state == "completed"
    # From the very start: every event but none before it.
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        everything = await collect(engine.get_run("r").watch(after_seq=0))
        assert [u.seq for u in everything] == [e.seq for e in history]
        # A seq past the end of a finished run: its snapshot, then the end.
        past = await collect(engine.get_run("r").watch(after_seq=history[-1].seq))
        assert summary(past) == [("snapshot", None, None, "completed")]


def test_bad_watch_arguments_are_refused() -> None:
    async def main() -> None:
        async with replay.open_engine(":memory:", workflows=WORKFLOWS) as engine:
            run = await engine.start(chain, 1, run_id="c")
            with pytest.raises(ValueError, match="after_seq"):
                run.watch(after_seq=-1)
            with pytest.raises(TypeError, match="after_seq"):
                run.watch(after_seq="3")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="buffer"):
                run.watch(buffer=0)
            with pytest.raises(TypeError, match="buffer"):
                run.watch(buffer=True)
            with pytest.raises(ValueError, match="unknown state"):
                engine.watch(states=["nope"])
            with pytest.raises(TypeError, match="collection"):
                engine.watch(states="running")
            with pytest.raises(replay.WorkflowNotRegistered):
                engine.watch(workflow="nope")
            await run.result()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- wait(until=) --


async def test_wait_until_the_second_suspension_after_signalling_the_first(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(twice, run_id="t")
        first = await run.wait()
        assert first.waiting_for == "first:v1"
        # Waiting for the second suspension while the run is suspended on the first.
        second: list[replay.RunInfo] = []
        async with trio.open_nursery() as nursery:
            async def waiter() -> None:
                second.append(await run.wait(
                    until=lambda info: info.waiting_for == "second:v1"))

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert second == []
            await engine.signal("t", "first:v1", "yes")
        assert second[0].state == "suspended"
        assert second[0].status_text == "second approval"
        # The condition already holds: at once.
        assert (await run.wait(until="suspended")).waiting_for == "second:v1"
        # It never holds: the run finishes first.
        async with trio.open_nursery() as nursery:
            async def never() -> None:
                with pytest.raises(replay.RunFinished) as finished:
                    await run.wait(until=lambda info: info.waiting_for == "third:v1")
                outcomes["never"] = finished.value

            nursery.start_soon(never)
            await trio.testing.wait_all_tasks_blocked()
            await engine.signal("t", "second:v1", "also")
        assert "completed" in str(outcomes["never"])
        assert await run.result() == ["yes", "also"]
        with pytest.raises(replay.RunFinished):
            await run.wait(until="sleeping")
        assert (await run.wait(until="completed")).output == ["yes", "also"]


async def test_wait_until_a_state_name_and_bad_conditions(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(chain, 2, run_id="c")
        info = await run.wait(until="sleeping")
        assert (info.state, info.waiting_for) == ("sleeping", "rest:v1")
        assert (await run.wait(until=replay.RunState.COMPLETED)).output == 1
        with pytest.raises(TypeError, match="until"):
            await run.wait(until=5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="unknown state"):
            await run.wait(until="asleep")
        assert internals(engine).scheduler.watchers.active is False


# -- resume --


async def test_watches_across_a_resume_of_a_failed_run(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        seen: list[RunUpdate] = []
        async with trio.open_nursery() as nursery:
            async def watch_all() -> None:
                async with engine.watch(workflow=flaky_flow) as updates:
                    async for update in updates:
                        seen.append(update)
                        if update.info is not None and update.info.state == "completed":
                            return

            nursery.start_soon(watch_all)
            await trio.testing.wait_all_tasks_blocked()
            run = await engine.start(flaky_flow, run_id="f")
            assert (await run.wait()).state == "failed"
            # The run's own watch of the failed run: a snapshot, and it ends.
            assert summary(await collect(run.watch())) == [
                ("snapshot", None, None, "failed")]
            failed_at = (await engine.history("f"))[-1].seq
            flaky_state["fail"] = False
            await engine.resume("f")
            assert await run.result() == "fixed"
        states = [u.info.state.value for u in seen if u.info is not None]
        assert states[0] == "running"
        i = states.index("failed")
        assert "running" in states[i + 1:] and states[-1] == "completed"
        resumed = [u for u in seen if u.event is not None and u.event.event == "resumed"]
        assert len(resumed) == 1 and resumed[0].info is not None
        assert resumed[0].info.state == "running"
        # After the resume, a reconnect from the failure sees what followed it.
        history = await engine.history("f")
        after = await collect(run.watch(after_seq=failed_at))
        assert [u.seq for u in after] == [e.seq for e in history if e.seq > failed_at]
        assert after[0].event is not None and after[0].event.event == "resumed"
        assert after[-1].info is not None and after[-1].info.state == "completed"


async def test_a_reconnect_from_before_a_failure_of_a_resumed_run_goes_on(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(flaky_flow, run_id="f")
        assert (await run.wait()).state == "failed"
        flaky_state["fail"] = False
        await engine.resume("f")
        assert await run.result() == "fixed"
        history = await engine.history("f")
        after = await collect(run.watch(after_seq=history[0].seq))
        assert [u.seq for u in after] == [e.seq for e in history[1:]]


# -- engine-wide --


async def test_engine_watch_filters_by_workflow_and_state(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        await engine.start(twice, run_id="already")  # suspended before the watch
        await wait_for_state(engine, "already", "suspended")
        by_workflow: list[RunUpdate] = []
        suspended: list[RunUpdate] = []
        everything: list[RunUpdate] = []
        async with trio.open_nursery() as nursery:
            async def watch(into: list[RunUpdate], **filters: Any) -> None:
                async with engine.watch(**filters) as updates:
                    async for update in updates:
                        into.append(update)

            nursery.start_soon(functools.partial(watch, by_workflow, workflow="watch_chain"))
            nursery.start_soon(functools.partial(watch, suspended, states=["suspended"]))
            nursery.start_soon(watch, everything)
            await trio.testing.wait_all_tasks_blocked()
            await (await engine.start(chain, 1, run_id="c")).result()
            await engine.start(twice, run_id="t")
            await wait_for_state(engine, "t", "suspended")
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert {u.run_id for u in by_workflow} == {"c"}
    assert by_workflow[-1].info is not None and by_workflow[-1].info.state == "completed"
    assert all(u.info is not None and u.info.state == "suspended" for u in suspended)
    assert [(u.kind, u.run_id) for u in suspended] == [("snapshot", "already"),
                                                      ("event", "t")]
    assert everything[0].kind == "snapshot" and everything[0].run_id == "already"
    assert {u.run_id for u in everything} == {"already", "c", "t"}
    # Per run, the events arrive in seq order.
    for run_id in ("c", "t"):
        seqs = [u.seq for u in everything if u.run_id == run_id]
        assert seqs == sorted(seqs)


async def test_a_lagging_engine_watcher_is_told_what_it_missed(db: str) -> None:
    async with (replay.open_engine(db, workflows=WORKFLOWS) as engine,
                engine.watch(buffer=2) as updates):
        await engine.start(long_one, 5, run_id="l")
        first = await updates.__anext__()  # registers: the snapshot of "l"
        await wait_for_state(engine, "l", "suspended")
        missed = await updates.__anext__()
        assert missed.kind == "missed" and missed.missed > 2 and missed.info is None
        snap = await updates.__anext__()
        assert snap.kind == "snapshot" and snap.run_id == "l"
        assert snap.info is not None and snap.info.state == "suspended"
        history = await engine.history("l")
        assert missed.missed == len([e for e in history if e.seq > first.seq])


# -- lifetime --


async def test_an_unknown_run_raises_on_the_first_iteration(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        with pytest.raises(replay.RunNotFound):
            engine.get_run("nope")
        watch = replay.Run(internals(engine).scheduler, "nope", "watch_chain").watch()
        with pytest.raises(replay.RunNotFound):
            await watch.__anext__()
        with pytest.raises(StopAsyncIteration):
            await watch.__anext__()
        assert internals(engine).scheduler.watchers.active is False


async def test_the_engine_closing_ends_watches_with_engine_closed(db: str) -> None:
    errors: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        async def reader(updates: Any) -> None:
            try:
                async for _ in updates:
                    pass
            except replay.EngineClosed as error:
                errors.append(error)

        async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
            run = await engine.start(twice, run_id="t")
            await run.wait()
            nursery.start_soon(reader, run.watch())
            nursery.start_soon(reader, engine.watch())
            await trio.testing.wait_all_tasks_blocked()
    assert len(errors) == 2
    with pytest.raises(replay.EngineClosed):
        run.watch()
    with pytest.raises(replay.EngineClosed):
        engine.watch()


async def test_leaving_an_async_with_unregisters_the_watcher(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        watchers = internals(engine).scheduler.watchers
        run = await engine.start(twice, run_id="t")
        await run.wait()
        assert watchers.active is False
        async with run.watch() as updates:
            async for _ in updates:
                assert watchers.active is True
                break
        assert watchers.active is False
        async with engine.watch() as updates:
            async for _ in updates:
                break
        assert watchers.active is False
        # A watch that ends by itself unregisters too.
        await engine.signal("t", "first:v1", 1)
        await engine.signal("t", "second:v1", 2)
        await collect(run.watch())
        assert watchers.active is False


async def test_many_watchers_of_one_run_see_the_same_updates(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(long_one, 4, run_id="m")
        await run.wait()
        results: list[list[tuple[Any, ...]]] = []
        async with trio.open_nursery() as nursery:
            async def one() -> None:
                updates = await collect(run.watch(buffer=50))
                results.append([(u.kind, u.seq, u.info.state.value if u.info else None)
                                for u in updates])

            for _ in range(50):
                nursery.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            await engine.signal("m", "go:v1", "go")
        assert len(results) == 50
        assert all(r == results[0] for r in results)
        assert results[0][0][0] == "snapshot" and results[0][-1][2] == "completed"
        history = await engine.history("m")
        assert [seq for _, seq, _ in results[0][1:]] == [
            e.seq for e in history if e.seq > results[0][0][1]]
        assert internals(engine).scheduler.watchers.active is False
