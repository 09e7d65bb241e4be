"""The first attempt of each run after an open records its start, whatever starts it.

That record is what lets the next open tell which step was running if the process
dies (issue 10 item 3): recovery, a retry back-off timer, `resume` and a timer that
was overdue at open all start such attempts. Runs started by the engine itself record
no start mark, and only the first attempt after an open does. Nor does a run that was
waiting for a signal when the engine opened: the signal records it as running before
any attempt, so the next open would find it running and mark it then.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import trio
import trio.testing

import replay
from replay import Retry, Sleep, Step, Suspend

pytestmark = pytest.mark.both_stores

FAIL_ONCE: set[str] = set()


def add(n: int) -> int:
    return n + 1


def flaky(key: str) -> str:
    if key not in FAIL_ONCE:
        FAIL_ONCE.add(key)
        raise ValueError("first attempt fails")
    return "ok"


@replay.workflow(name="marks")
def marks(how: str):  # type: ignore[no-untyped-def]
    if how == "signal":
        yield Suspend("go:v1")
    elif how == "sleep":
        yield Sleep("nap:v1", timedelta(hours=1))
    elif how == "backoff":
        yield Step("flaky:v1", flaky, how, retry=Retry(attempts=2, initial=3600))
    a = yield Step("a:v1", add, 1)
    return (yield Step("b:v1", add, a))


async def started_rows(engine: replay.Engine, run_id: str) -> list[Any]:
    return await engine.sql(
        "select key, attempt from replay_events where run_id = ? and event = 'started' "
        "and kind = 'step' order by seq", [run_id])


async def test_runs_started_here_record_no_start_mark(db: str) -> None:
    async with replay.open_engine(db, workflows=[marks]) as engine:
        assert await (await engine.start(marks, "plain", run_id="p")).result() == 3
        assert await started_rows(engine, "p") == []


@pytest.mark.duckdb_only  # reads run_state from replay_event_all, which engine.sql on
# PostgreSQL does not expose
async def test_a_timer_and_a_back_off_after_an_open_mark_the_first_attempt(
        db: str) -> None:
    async with replay.open_engine(db, workflows=[marks]) as engine:
        for how in ("signal", "sleep", "backoff"):
            await engine.start(marks, how, run_id=how)
        await trio.testing.wait_all_tasks_blocked()
    async with replay.open_engine(db, workflows=[marks]) as engine:
        await engine.signal("signal", "go:v1")
        results = [await engine.get_run(how).result() for how in ("signal", "sleep", "backoff")]
        assert results == [3, 3, 3]
        # Parked on its Suspend at the open: the signal records it as running first.
        assert await started_rows(engine, "signal") == []
        state_before_step = await engine.sql(
            "SELECT event, run_state FROM replay_event_all WHERE run_id = 'signal' "
            "AND kind = 'signal'")
        assert state_before_step == [("signalled", "running")]
        assert await started_rows(engine, "sleep") == [("a:v1", 1)]
        assert await started_rows(engine, "backoff") == [("flaky:v1", 2)]


async def test_resume_after_an_open_marks_the_first_attempt(db: str) -> None:
    @replay.workflow(name="broken")
    def broken():  # type: ignore[no-untyped-def]
        return (yield Step("flaky:v1", flaky, "resume"))

    FAIL_ONCE.discard("resume")
    async with replay.open_engine(db, workflows=[broken]) as engine:
        await (await engine.start(broken, run_id="r")).wait()
    async with replay.open_engine(db, workflows=[broken]) as engine:
        await engine.resume("r")
        assert await engine.get_run("r").result() == "ok"
        assert await started_rows(engine, "r") == [("flaky:v1", 2)]
