"""Schema version 2 (issue 13): files written by version 1 are upgraded.

Version 2 appended `generation` and `code_version` to ``replay_event_log``. A file of
version 1 (the old table, its old views, ``schema_version`` '1', rows as version 1
wrote them) is upgraded when an engine opens it, and when the `replay` command opens
it read-only; its runs continue and the views gain the new columns (generation 0). A
file another process holds is not upgraded behind its back.
"""

from __future__ import annotations

import json
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
from replay import Sleep, Step, Suspend
from replay._cli import _source as _cli_source
from replay._cli._main import main
from replay._store import SCHEMA_VERSION
from replay.testing import wait_for_state

HERE = Path(__file__).parent

V1_TABLES = """
CREATE TABLE replay_meta (name VARCHAR, value VARCHAR);
CREATE TABLE replay_event_log (
    seq BIGINT, run_id VARCHAR, workflow VARCHAR, key VARCHAR, kind VARCHAR,
    event VARCHAR, attempt INTEGER, value BLOB, value_json JSON, error_type VARCHAR,
    error VARCHAR, recorded_at TIMESTAMPTZ, duration_ms DOUBLE, wake_at TIMESTAMPTZ,
    name VARCHAR, error_types VARCHAR, run_state VARCHAR, status_text VARCHAR
);
CREATE INDEX replay_event_log_run_id ON replay_event_log (run_id);
INSERT INTO replay_meta VALUES ('schema_version', '1');
"""

V1_VIEWS = """
CREATE OR REPLACE VIEW replay_events AS
    SELECT seq, run_id, workflow, key, kind, event, attempt, value, value_json,
           error_type, error, recorded_at, duration_ms, wake_at
    FROM replay_event_log;
CREATE OR REPLACE VIEW replay_runs AS
    WITH latest AS (
        SELECT run_id, run_state, key, wake_at, status_text, error_type, error, value_json
        FROM replay_event_log WHERE run_state IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1
    ), started AS (
        SELECT run_id, workflow, recorded_at, value_json, name AS parent_run_id
        FROM replay_event_log WHERE kind = 'run' AND event = 'started'
    ), touched AS (
        SELECT run_id, max(recorded_at) AS updated_at FROM replay_event_log GROUP BY run_id
    )
    SELECT s.run_id, s.workflow, l.run_state AS state, s.recorded_at AS created_at,
           t.updated_at, s.value_json AS input_json,
           CASE WHEN l.run_state = 'completed' THEN l.value_json END AS output_json,
           CASE WHEN l.run_state IN ('failed', 'cancelled') THEN l.error_type END AS error_type,
           CASE WHEN l.run_state IN ('failed', 'cancelled') THEN l.error END AS error,
           CASE WHEN l.run_state IN ('sleeping', 'suspended') THEN l.key END AS waiting_for,
           CASE WHEN l.run_state IN ('sleeping', 'suspended') THEN l.wake_at END AS wake_at,
           CASE WHEN l.run_state = 'suspended' THEN l.status_text END AS status_text,
           s.parent_run_id
    FROM started s JOIN latest l USING (run_id) JOIN touched t USING (run_id);
"""

V1_COLUMNS = ("seq, run_id, workflow, key, kind, event, attempt, value, value_json, "
              "error_type, error, recorded_at, duration_ms, wake_at, name, error_types, "
              "run_state, status_text")


def double(n: int) -> int:
    return n * 2


@replay.workflow(name="up_order")
def order(n: int) -> Generator[Any, Any, Any]:
    doubled = yield Step("double:v1", double, n)
    approved = yield Suspend("approve:v1", status="waiting for approval")
    return {"doubled": doubled, "approved": approved}


@replay.workflow(name="up_nap")
def nap() -> Generator[Any, Any, str]:
    yield Sleep("nap:v1", 3600)
    return "rested"


WORKFLOWS = [order, nap]


def run_trio(function: Any, *args: Any) -> Any:
    return trio.run(function, *args, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.fixture
def v1_file(tmp_path: Path) -> str:
    """A version-1 file: a completed run, a suspended one and a sleeping one."""
    source = str(tmp_path / "source.duckdb")

    async def build() -> None:
        async with replay.open_engine(source, workflows=WORKFLOWS) as engine:
            run = await engine.start(order, 1, run_id="done")
            await run.wait()
            await engine.signal("done", "approve:v1", True)
            await run.result()
            await engine.start(order, 2, run_id="waiting")
            await wait_for_state(engine, "waiting", "suspended")
            await engine.start(nap, run_id="napping")
            await wait_for_state(engine, "napping", "sleeping")

    run_trio(build)
    path = str(tmp_path / "v1.duckdb")
    with duckdb.connect(path) as con:
        con.execute(V1_TABLES)
        con.execute(f"ATTACH '{source}' AS source (READ_ONLY)")
        con.execute(f"INSERT INTO replay_event_log SELECT {V1_COLUMNS} "
                    "FROM source.replay_event_log ORDER BY seq")
        con.execute("DETACH source")
        con.execute(V1_VIEWS)
    return path


def schema_of(path: str) -> tuple[str, list[str], list[str], list[str]]:
    with duckdb.connect(path, read_only=True) as con:
        version = con.execute(
            "SELECT value FROM replay_meta WHERE name = 'schema_version'").fetchone()
        table = [row[0] for row in con.execute("DESCRIBE replay_event_log").fetchall()]
        events = [row[0] for row in con.execute("DESCRIBE replay_events").fetchall()]
        runs = [row[0] for row in con.execute("DESCRIBE replay_runs").fetchall()]
    assert version is not None
    return version[0], table, events, runs


def test_the_fixture_is_a_version_1_file(v1_file: str) -> None:
    version, table, events, runs = schema_of(v1_file)
    assert version == "1"
    assert "generation" not in table and "code_version" not in table
    assert "generation" not in events and "status_json" not in runs


def test_an_engine_upgrades_a_version_1_file_and_its_runs_continue(v1_file: str) -> None:
    async def use() -> None:
        async with replay.open_engine(v1_file, workflows=WORKFLOWS,
                                      code_version="v2") as engine:
            assert engine.status("waiting").state == "suspended"
            await engine.signal("waiting", "approve:v1", "yes")
            assert await engine.get_run("waiting").result() == {"doubled": 4,
                                                                "approved": "yes"}
            assert await engine.get_run("napping").result() == "rested"
            info = engine.status("done")
            assert (info.state, info.output, info.generation) == (
                "completed", {"doubled": 2, "approved": True}, 0)
            assert all(e.generation == 0 for e in await engine.history("waiting"))
            rows = await engine.sql("SELECT run_id, generation, code_version, "
                                    "last_code_version, status_json FROM replay_runs "
                                    "ORDER BY run_id")
            assert rows == [("done", 0, None, None, None), ("napping", 0, None, "v2", None),
                            ("waiting", 0, None, "v2", None)]

    run_trio(use)
    version, table, events, runs = schema_of(v1_file)
    assert version == str(SCHEMA_VERSION)
    assert table[-2:] == ["generation", "code_version"]
    assert "generation" in events
    assert {"status_json", "generation", "code_version", "last_code_version"} <= set(runs)
    with duckdb.connect(v1_file, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM replay_events WHERE generation IS NULL"
                           ).fetchone() == (0,)
        # The rows version 1 wrote keep NULL in the table; the view shows 0.
        assert con.execute("SELECT count(*) FROM replay_event_log WHERE generation IS NULL"
                           ).fetchone()[0] > 0  # type: ignore[index]
        # Upgraded once: opening again changes nothing.
    run_trio(_open_and_close, v1_file)
    assert schema_of(v1_file)[0] == str(SCHEMA_VERSION)


async def _open_and_close(path: str) -> None:
    async with replay.open_engine(path, workflows=WORKFLOWS):
        pass


def test_the_replay_command_upgrades_a_version_1_file_it_opens_read_only(
        v1_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["runs", v1_file, "--json"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    listed = {run["run_id"]: run for run in json.loads(out)}
    assert {run_id: run["state"] for run_id, run in listed.items()} == {
        "done": "completed", "waiting": "suspended", "napping": "sleeping"}
    assert schema_of(v1_file)[0] == str(SCHEMA_VERSION)
    code = main(["show", v1_file, "waiting"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert "suspended" in out and "approve:v1" in out and "suspend/suspended" in out
    # The views a user queries have the new columns too.
    _, _, events, runs = schema_of(v1_file)
    assert "generation" in events, events
    assert {"status_json", "generation", "code_version", "last_code_version"} <= set(runs)


def test_a_file_held_by_another_process_is_not_upgraded_behind_its_back(
        v1_file: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cli_source, "LOCKED_GRACE_SECONDS", 0.0)
    holder = subprocess.Popen([sys.executable, str(HERE / "lock_holder.py"), v1_file],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        code = main(["runs", v1_file])
        out, err = capsys.readouterr()
        assert code == 1 and "is held by process" in err, (out, err)

        async def engine_open() -> None:
            with pytest.raises(replay.DatabaseLocked):
                async with replay.open_engine(v1_file, workflows=WORKFLOWS,
                                              lock_timeout=0):
                    pass

        run_trio(engine_open)
    finally:
        holder.kill()
        holder.wait()
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()
    assert schema_of(v1_file)[0] == "1"
    assert "generation" not in schema_of(v1_file)[1]
