"""`purge` from every host and client: replay.aio, replay.sync, replay.connect(_async).

Each answers as `replay.Engine.purge` does, with the same report and the same errors.
The asyncio and sync engines run on the real clock: their runs finish a moment before
the purge, and ``older_than=0`` takes them (nothing sleeps). The clients talk to an
engine in this process under the virtual clock, from a worker thread.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

import replay
import replay.aio
import replay.sync
from replay import Step
from replay._engine._clock import in_thread

DAY = timedelta(days=1)


def ident(value: Any) -> Any:
    return value


@replay.workflow(name="quick")
def quick(n: int):  # type: ignore[no-untyped-def]
    return (yield Step("only:v1", ident, n))


@replay.workflow(name="other")
def other(n: int):  # type: ignore[no-untyped-def]
    return (yield Step("only:v1", ident, n))


def test_replay_sync_purges(tmp_path: Path) -> None:
    db = str(tmp_path / "sync.duckdb")
    with replay.sync.open_engine(db, workflows=[quick, other], durability="none") as engine:
        for n in range(3):
            assert engine.start(quick, n, run_id=f"q{n}").result(timeout=30) == n
        engine.start(other, 1, run_id="o").result(timeout=30)
        report = engine.purge(older_than=0, workflow=quick)
        assert (report.runs_purged, report.events_deleted) == (3, 9)
        assert [info.run_id for info in engine.runs()] == ["o"]
        with pytest.raises(ValueError, match="'running' is not a finished state"):
            engine.purge(states=("running",))
        assert engine.purge(older_than=timedelta(days=1)).runs_purged == 0


def test_replay_aio_purges(tmp_path: Path) -> None:
    db = str(tmp_path / "aio.duckdb")
    archive = tmp_path / "old.parquet"

    async def main() -> replay.PurgeReport:
        async with replay.aio.open_engine(db, workflows=[quick], durability="none",
                                          retention=DAY) as engine:
            for n in range(2):
                await (await engine.start(quick, n, run_id=f"q{n}")).result()
            with pytest.raises(TypeError, match="older_than must be a timedelta"):
                await engine.purge(older_than="1d")  # type: ignore[arg-type]
            report = await engine.purge(older_than=0, archive_to=archive)
            assert await engine.runs() == []
            return report

    report = asyncio.run(asyncio.wait_for(main(), 60))
    assert (report.runs_purged, report.archive) == (2, str(archive))
    assert archive.exists()


async def test_remote_clients_purge(db: str, tmp_path: Path) -> None:
    async with replay.open_engine(db, workflows=[quick, other], durability="none") as engine:
        for n in range(4):
            await (await engine.start(quick, n, run_id=f"q{n}")).result()
        await (await engine.start(other, 1, run_id="o")).result()
        await trio.sleep(2 * 86400)

        def blocking() -> replay.PurgeReport:
            with replay.connect(db) as client:
                with pytest.raises(ValueError, match="unknown run state 'done'"):
                    client.purge(states=["done"])
                with pytest.raises(TypeError, match="older_than must be a timedelta"):
                    client.purge(older_than="1d")  # type: ignore[arg-type]
                return client.purge(older_than=DAY, states={"completed"}, workflow=quick)

        report = await in_thread(blocking)
        assert (report.runs_purged, report.events_deleted) == (4, 12)
        assert report.cutoff == engine.now() - DAY

        async def on_asyncio() -> replay.PurgeReport:
            async with replay.connect_async(db) as client:
                return await client.purge(older_than=DAY, archive_to=tmp_path / "a.parquet")

        report = await in_thread(lambda: asyncio.run(asyncio.wait_for(on_asyncio(), 60)))
        assert (report.runs_purged, report.archive) == (1, str(tmp_path / "a.parquet"))
        assert [info.run_id for info in await engine.runs()] == []
