"""A purged run gets no more rows: a lost race's sync thread that ends after the purge.

A `Race` whose sync member loses leaves that member's thread running (threads cannot be
stopped); when it ends, its outcome is normally kept as ``step/late``. If the run was
purged in between, nothing is written: a row of a run that no longer exists would be
an orphan in the file.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import trio
import trio.testing

import replay
from replay import Race, Step

STARTED = threading.Event()
RELEASE = threading.Event()
ENDED = threading.Event()


def slow() -> str:
    STARTED.set()
    RELEASE.wait(30)
    ENDED.set()
    return "late"


async def fast() -> str:
    # Win only once the slow member's thread runs: it then loses while under way.
    await trio.to_thread.run_sync(STARTED.wait, 30)
    return "fast"


def reset() -> None:
    for event in (STARTED, RELEASE, ENDED):
        event.clear()


@replay.workflow(name="late_race")
def late_race() -> Generator[Any, Any, Any]:
    return (yield Race("race:v1", {"slow": Step("slow:v1", slow),
                                   "fast": Step("fast:v1", fast)}))


async def orphans(engine: replay.Engine) -> list[tuple[Any, ...]]:
    return await engine.sql(
        "SELECT run_id, kind, event FROM replay_event_log WHERE run_id NOT IN "
        "(SELECT run_id FROM replay_event_log WHERE kind = 'run' AND event = 'started')")


async def late_events(engine: replay.Engine, run_id: str) -> int:
    rows = await engine.sql("SELECT count(*) FROM replay_events WHERE run_id = ? AND "
                            "event = 'late'", [run_id])
    return int(rows[0][0])


async def test_a_late_outcome_is_kept_for_a_run_that_still_exists(tmp_path: Path) -> None:
    reset()
    async with replay.open_engine(tmp_path / "kept.duckdb", workflows=[late_race],
                                  durability="none") as engine:
        assert await (await engine.start(late_race, run_id="r")).result() == ("fast", "fast")
        RELEASE.set()
        await trio.to_thread.run_sync(ENDED.wait)
        with trio.move_on_after(60):
            while await late_events(engine, "r") == 0:
                await trio.sleep(0.01)
        assert await late_events(engine, "r") == 1


async def test_a_purged_run_gets_no_late_row(tmp_path: Path) -> None:
    reset()
    async with replay.open_engine(tmp_path / "purged.duckdb", workflows=[late_race],
                                  durability="none") as engine:
        assert await (await engine.start(late_race, run_id="r")).result() == ("fast", "fast")
        await trio.sleep(60)
        assert (await engine.purge(older_than=1)).runs_purged == 1
        RELEASE.set()
        await trio.to_thread.run_sync(ENDED.wait)
        # The thread's outcome reaches the loop through run_sync_soon: let it arrive.
        for _ in range(100):
            await trio.lowlevel.checkpoint()
        await trio.sleep(1)
        assert await orphans(engine) == []
