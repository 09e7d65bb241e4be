"""Issue 14: the DuckDB CLI users have (PyPI `duckdb-cli`, 1.4 and newer) reads the file.

replay runs on DuckDB 2.0, whose own storage format no DuckDB before 2.0 can open. New
files are created in the format of DuckDB 1.4 instead, and the public views use only
SQL that the 1.x CLIs know. These tests write a file with a real engine, close it, and
read the views with the `duckdb` binary that `pip install -e ".[dev]"` puts in the venv.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import trio
import trio.testing

import replay
from replay import Step, Suspend
from replay._store._connect import STORAGE_VERSION

CLI = Path(sys.executable).parent / "duckdb"
COMPATIBLE = f"{STORAGE_VERSION}+"  # how DuckDB tags a file of that storage version
STORAGE_QUERY = (
    "SELECT tags['storage_version'] FROM duckdb_databases() "
    "WHERE database_name = current_database()"
)

needs_cli = pytest.mark.skipif(
    not CLI.exists(),
    reason=f"no DuckDB CLI at {CLI}: install the dev extra (pip install -e '.[dev]')",
)


def shout(text: str) -> dict[str, Any]:
    return {"said": text.upper()}


def refuse() -> None:
    raise ValueError("no")


@replay.workflow(name="shout")
def shouting(text: str) -> Generator[Any, Any, Any]:
    result = yield Step("shout:v1", shout, text)
    return result


@replay.workflow(name="refuse")
def refusing() -> Generator[Any, Any, Any]:
    yield Step("refuse:v1", refuse)


@replay.workflow(name="waiter")
def waiter() -> Generator[Any, Any, Any]:
    answer = yield Suspend("go:v1")
    return answer


async def record_runs(db: str) -> None:
    """Run a completed, a failed and a suspended workflow into `db`, then close."""
    async with replay.open_engine(db, workflows=[shouting, refusing, waiter]) as engine:
        assert await (await engine.start(shouting, "hi", run_id="a")).result() == {"said": "HI"}
        with pytest.raises(replay.WorkflowFailed):
            await (await engine.start(refusing, run_id="b")).result()
        await (await engine.start(waiter, run_id="c")).wait()


def make_database(db: str) -> None:
    trio.run(record_runs, db, clock=trio.testing.MockClock(autojump_threshold=0))


def cli(db: str, query: str) -> list[list[str]]:
    """Run `query` with the DuckDB CLI on `db`, read-only; return its rows as text.

    NULL is printed as `NULL`, and `-init` keeps the user's ~/.duckdbrc out.
    """
    done = subprocess.run(
        [str(CLI), "-init", os.devnull, "-readonly", "-csv", "-noheader",
         "-nullvalue", "NULL", db, "-c", query],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, f"duckdb CLI failed: {done.stderr}"
    return list(csv.reader(done.stdout.splitlines()))


def storage_version(db: str) -> str:
    """Return the storage version DuckDB (the Python package) reads in `db`'s header."""
    con = duckdb.connect(db, read_only=True)
    try:
        row = con.execute(STORAGE_QUERY).fetchone()
    finally:
        con.close()
    assert row is not None
    return str(row[0])


@needs_cli
def test_the_cli_reads_replay_runs(db: str) -> None:
    make_database(db)
    assert cli(db, "SELECT run_id, state FROM replay_runs ORDER BY run_id") == [
        ["a", "completed"], ["b", "failed"], ["c", "suspended"],
    ]
    assert cli(db, "SELECT output_json ->> '$.said', error_type, waiting_for FROM replay_runs "
                   "ORDER BY run_id") == [
        ["HI", "NULL", "NULL"], ["NULL", "replay.StepFailed", "NULL"], ["NULL", "NULL", "go:v1"],
    ]


@needs_cli
def test_the_cli_reads_replay_events(db: str) -> None:
    make_database(db)
    assert cli(db, "SELECT run_id, kind || '/' || event, key, value_json FROM replay_events "
                   "WHERE kind <> 'run' ORDER BY seq") == [
        ["a", "step/completed", "shout:v1", '{"said":"HI"}'],
        ["b", "step/failed", "refuse:v1", "NULL"],
        ["c", "suspend/suspended", "go:v1", "NULL"],
    ]
    assert cli(db, "SELECT count(*) FROM replay_events WHERE kind = 'run'") == [["5"]]


@needs_cli
def test_the_cli_sees_the_compatible_storage_version(db: str) -> None:
    make_database(db)
    assert cli(db, STORAGE_QUERY) == [[COMPATIBLE]]
    assert storage_version(db) == COMPATIBLE


@pytest.mark.parametrize("hard_links", [True, False], ids=["hard-link", "no-hard-links"])
def test_every_new_file_gets_the_compatible_storage_version(
    db: str, hard_links: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not hard_links:  # the fallback: DuckDB creates the file in place
        def no_link(*args: object, **kwargs: object) -> None:
            raise OSError("hard links are not supported here")
        monkeypatch.setattr(os, "link", no_link)
    make_database(db)
    assert storage_version(db) == COMPATIBLE
    if CLI.exists():
        assert cli(db, "SELECT count(*) FROM replay_runs") == [["3"]]


def test_an_existing_file_keeps_its_storage_version(db: str) -> None:
    duckdb.connect(db).close()  # an empty file in DuckDB 2.0's own format, made before
    before = storage_version(db)
    assert before != COMPATIBLE
    make_database(db)
    assert storage_version(db) == before
