"""A year of daily runs, kept to 30 days of history by `open_engine(retention=...)`.

The engine runs for 365 days of virtual time (trio's MockClock, autojump) on a real
DuckDB file: every day one new run imports a batch and finishes, and one subscription
renews daily forever with `ContinueAsNew`. With ``retention=timedelta(days=30)`` the
engine never stops, every daily run completes, and at the end the file holds about
30 days of daily runs and about 30 generations of the subscription.

The engine purges hourly; here it purges daily (the module's period, patched), so a
year of virtual time takes seconds rather than 8,760 purges. The hourly period itself
is tested in test_retention.py.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

import replay
from replay import ContinueAsNew, Note, Sleep, Step
from replay._engine import _retention

Flow = Generator[Any, Any, Any]
DAY = timedelta(days=1)
RETENTION = timedelta(days=30)


def imported(day: int) -> int:
    return day * 10


@replay.workflow(name="daily_import")
def daily_import(day: int) -> Flow:
    rows = yield Step("import:v1", imported, day)
    yield Note("done:v1", {"day": day, "rows": rows})
    yield Sleep("settle:v1", timedelta(hours=1))
    return rows


@replay.workflow(name="daily_renewal")
def daily_renewal(day: int) -> Flow:
    yield Step("renew:v1", imported, day)
    yield Sleep("next:v1", DAY)
    return ContinueAsNew(day + 1)


async def test_a_year_of_daily_runs_stays_at_30_days_of_history(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_retention, "PURGE_PERIOD_SECONDS", DAY.total_seconds())
    path = tmp_path / "year.duckdb"
    async with replay.open_engine(path, workflows=[daily_import, daily_renewal],
                                  durability="none", retention=RETENTION) as engine:
        subscription = await engine.start(daily_renewal, 0, run_id="subscription")
        for day in range(365):
            run = await engine.start(daily_import, day, run_id=f"import-{day:03}")
            assert await run.result() == day * 10
            await trio.sleep(DAY.total_seconds() - 3600)
        runs = await engine.sql(
            "SELECT count(*), min(run_id), max(run_id) FROM replay_runs "
            "WHERE workflow = 'daily_import'")
        (count, oldest, newest), = runs
        assert 30 <= count <= 32, runs
        assert newest == "import-364" and oldest >= "import-332"
        info = engine.status("subscription")
        assert info.state is replay.RunState.SLEEPING and info.generation >= 364
        generations = await engine.sql(
            "SELECT count(DISTINCT generation) FROM replay_events "
            "WHERE run_id = 'subscription'")
        # Its start (generation 0) stays, and about 30 days of generations.
        assert 30 <= generations[0][0] <= 34, generations
        events = await engine.sql("SELECT count(*) FROM replay_events")
        assert events[0][0] < 40 * 8, events
        assert subscription.run_id == "subscription"
