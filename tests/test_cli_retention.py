"""`replay purge` and `replay compact`, offline and through a running engine.

Offline, no engine holds the file: `purge` deletes in the file itself, and `compact`
rewrites it into a fresh one. Live, an engine in this process holds the file under the
virtual clock and the command runs in a worker thread (as it would in another
process), talking to it over the channel; the runs it keeps go on meanwhile. Compact
of a held file runs in another process (the lock is per process). Nothing sleeps.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import trio
import trio.testing

import replay
from replay import Step, Suspend
from replay._cli import main
from replay._engine._clock import in_thread, set_virtual_start

DAY = timedelta(days=1)


def ident(value: Any) -> Any:
    return value


@replay.workflow(name="quick")
def quick(n: int):  # type: ignore[no-untyped-def]
    return (yield Step("only:v1", ident, n))


@replay.workflow(name="other")
def other(n: int):  # type: ignore[no-untyped-def]
    return (yield Step("only:v1", ident, n))


@replay.workflow(name="waits")
def waits():  # type: ignore[no-untyped-def]
    return (yield Suspend("go:v1"))


WORKFLOWS = [quick, other, waits]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


async def live_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The command in a worker thread (virtual time stands still meanwhile)."""
    code = await in_thread(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def rows(db: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with duckdb.connect(db, read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def run_ids(db: str) -> list[str]:
    return [row[0] for row in rows(db, "SELECT run_id FROM replay_runs ORDER BY run_id")]


# -- a stopped file: runs that finished 60 and 10 days ago, and one that waits --


async def build(db: str) -> None:
    set_virtual_start(datetime.now(UTC) - 60 * DAY)
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none",
                                  serve_cli=False) as engine:
        for n in range(3):
            await (await engine.start(quick, n, run_id=f"q{n}")).result()
        await (await engine.start(other, 9, run_id="o")).result()
        await engine.start(waits, run_id="w")
        await trio.sleep(50 * 86400)
        await (await engine.start(quick, 5, run_id="recent")).result()


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> str:
    db = str(tmp_path_factory.mktemp("stopped") / "shop.duckdb")
    trio.run(build, db, clock=trio.testing.MockClock(autojump_threshold=0))
    return db


@pytest.fixture
def copy(stopped: str, tmp_path: Path) -> str:
    db = str(tmp_path / "copy.duckdb")
    shutil.copy(stopped, db)
    return db


def test_a_dry_run_counts_and_changes_nothing(capsys: pytest.CaptureFixture[str],
                                              copy: str) -> None:
    before = rows(copy, "SELECT * FROM replay_event_log ORDER BY seq")
    code, out, err = cli(capsys, "purge", copy, "--older-than", "30d", "--dry-run")
    assert (code, err) == (0, "")
    assert out.startswith("would purge 4 finished runs (12 events) from before ")
    assert out.endswith("; nothing was deleted (--dry-run)\n")
    assert rows(copy, "SELECT * FROM replay_event_log ORDER BY seq") == before
    code, out, _ = cli(capsys, "purge", copy, "--older-than", "30d", "--dry-run", "--json",
                       "--workflow", "other")
    report = json.loads(out)
    assert {k: v for k, v in report.items() if k != "cutoff"} == {
        "live": False, "dry_run": True, "runs_purged": 1, "events_deleted": 3,
        "generations_purged": 0, "archive": None}
    assert rows(copy, "SELECT * FROM replay_event_log ORDER BY seq") == before


def test_purge_in_the_file(capsys: pytest.CaptureFixture[str], copy: str,
                           tmp_path: Path) -> None:
    code, out, err = cli(capsys, "purge", copy, "--older-than", "30d", "--state",
                         "completed", "--workflow", "quick", "--archive",
                         str(tmp_path / "old.parquet"))
    assert (code, err) == (0, "")
    assert out.startswith("purged 3 finished runs (9 events) from before ")
    assert out.endswith(f", in the file {copy!r}; their events are in "
                        f"{str(tmp_path / 'old.parquet')!r}\n")
    assert run_ids(copy) == ["o", "recent", "w"]
    with duckdb.connect() as con:
        assert con.execute("SELECT count(*), count(DISTINCT run_id) FROM read_parquet(?)",
                           [str(tmp_path / "old.parquet")]).fetchall() == [(9, 3)]
    code, out, _ = cli(capsys, "purge", copy, "--older-than", "1d", "--json")
    assert json.loads(out)["runs_purged"] == 2  # "o" and "recent"; never the waiting one
    assert run_ids(copy) == ["w"]


def test_purge_errors(capsys: pytest.CaptureFixture[str], copy: str, tmp_path: Path) -> None:
    taken = tmp_path / "taken.parquet"
    taken.write_text("mine")
    assert cli(capsys, "purge", copy, "--older-than", "30d", "--archive", str(taken)) == (
        1, "", f"replay purge: --archive {str(taken)!r} already exists; purge never "
               "overwrites a file: pass a new path (or move the old archive away)\n")
    assert cli(capsys, "purge", copy, "--older-than", "30 days")[0] == 2
    assert cli(capsys, "purge", copy, "--older-than", "-3d")[0] == 2
    assert cli(capsys, "purge", copy)[0] == 2  # --older-than is required
    assert cli(capsys, "purge", copy, "--older-than", "1d", "--state", "running")[0] == 2
    assert cli(capsys, "purge", str(tmp_path / "none.duckdb"), "--older-than", "1d") == (
        1, "", f"replay purge: no database at {str(tmp_path / 'none.duckdb')!r}; pass the "
               "path your application gives replay.open_engine()\n")
    assert len(run_ids(copy)) == 6


# -- compact --


def test_compact_gives_the_space_back_and_the_runs_left_are_intact(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = str(tmp_path / "big.duckdb")

    async def fill() -> None:
        async with replay.open_engine(db, workflows=WORKFLOWS, durability="none") as engine:
            for n in range(300):
                noise = secrets.token_hex(2000)  # incompressible
                await (await engine.start(quick, noise, run_id=f"r{n:03}")).result()
            await engine.start(waits, run_id="w")
            await trio.sleep(2 * 86400)
            await (await engine.start(quick, 1, run_id="kept")).result()
            assert (await engine.purge(older_than=DAY)).runs_purged == 300

    trio.run(fill, clock=trio.testing.MockClock(autojump_threshold=0))
    left = rows(db, "SELECT * FROM replay_event_log ORDER BY seq")
    meta = rows(db, "SELECT * FROM replay_meta ORDER BY name")
    size = os.path.getsize(db)
    code, out, err = cli(capsys, "compact", db, "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["bytes_before"] == size and report["bytes_after"] < size / 2
    assert (os.path.getsize(db), os.path.exists(db + ".wal")) == (report["bytes_after"], False)
    assert oct(os.stat(db).st_mode & 0o777) == "0o600"
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".replay-")]
    assert rows(db, "SELECT * FROM replay_event_log ORDER BY seq") == left
    assert rows(db, "SELECT * FROM replay_meta ORDER BY name") == meta

    async def reopen() -> None:
        async with replay.open_engine(db, workflows=WORKFLOWS, durability="none") as engine:
            assert engine.status("kept").output == 1
            await engine.signal("w", "go:v1", "after compact")
            assert await engine.get_run("w").result() == "after compact"
            await (await engine.start(quick, 2, run_id="new")).result()

    trio.run(reopen, clock=trio.testing.MockClock(autojump_threshold=0))
    assert run_ids(db) == ["kept", "new", "w"]
    code, out, _ = cli(capsys, "compact", db)
    assert code == 0 and out.startswith(f"compacted {db!r}: ")


def test_compact_of_a_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "none.duckdb")
    assert cli(capsys, "compact", missing) == (
        1, "", f"replay compact: no database at {missing!r}; pass the path your application "
               "gives replay.open_engine()\n")


# -- through a running engine --


async def test_purge_through_the_engine_while_it_runs(
        db: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none") as engine:
        for n in range(3):
            await (await engine.start(quick, n, run_id=f"q{n}")).result()
        await engine.start(waits, run_id="w")
        await trio.sleep(40 * 86400)
        code, out, err = await live_cli(capsys, "purge", db, "--older-than", "30d",
                                        "--dry-run", "--json")
        assert (code, err) == (0, "")
        assert {k: v for k, v in json.loads(out).items() if k != "cutoff"} == {
            "live": True, "dry_run": True, "runs_purged": 3, "events_deleted": 9,
            "generations_purged": 0, "archive": None}
        assert engine.status("q0").output == 0  # nothing deleted
        archive = tmp_path / "a.parquet"
        code, out, err = await live_cli(capsys, "purge", db, "--older-than", "30d",
                                        "--archive", str(archive))
        assert (code, err) == (0, "")
        assert out.startswith("purged 3 finished runs (9 events) from before ")
        assert out.endswith(f", through the engine in process {os.getpid()}; their events "
                            f"are in {str(archive)!r}\n")
        with pytest.raises(replay.RunNotFound):
            engine.status("q0")
        # The engine goes on: the waiting run takes its signal.
        await engine.signal("w", "go:v1", "still here")
        assert await engine.get_run("w").result() == "still here"
        # The engine's own refusals, as the command says them.
        assert await live_cli(capsys, "purge", db, "--older-than", "1d", "--archive",
                              str(archive)) == (
            1, "", f"replay purge: archive_to {str(archive)!r} already exists; purge never "
                   "overwrites a file: pass a new path (or move the old archive away)\n")


async def test_compact_refuses_a_file_an_engine_holds(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none") as engine:
        await (await engine.start(quick, 1, run_id="q")).result()
        done = await in_thread(lambda: subprocess.run(
            [sys.executable, "-m", "replay", "compact", db], capture_output=True, text=True,
            timeout=60))
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith(f"replay compact: database {db!r} is locked by another "
                                      f"process (PID {os.getpid()}")
        assert done.stderr.endswith("; compact needs the file to itself: stop the engine "
                                    "first (replay purge works while it runs; compact "
                                    "afterwards)\n")
        assert engine.status("q").output == 1
        assert not [name for name in os.listdir(os.path.dirname(db))
                    if name.startswith(".replay-")]
