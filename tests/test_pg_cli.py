"""The `replay` command on a PostgreSQL URL (`replay._pg._access`, `replay._cli._source`).

Each test gets a fresh schema (`pg_url`) whose history a real engine wrote, two days
in the past and in virtual time, with the workflows of tests/cli_engine_child.py:
``a1``/``a2`` suspended on ``approval:v1``, ``c1`` completed, ``f1`` failed in step
``charge:v1``, ``n1`` sleeping on ``nap:v1``. The engine is closed before the command
runs, except where a test checks what the command does while one runs: it reads,
queues signals for the engine, and refuses to purge (tests/test_pg_cli_inbox.py has the
rest of the queued writes).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cli_engine_child as child
import duckdb
import pytest
import trio
import trio.testing

import replay
from replay._cli import main
from replay._cli._queued import purge_refused
from replay._engine._clock import set_virtual_start
from replay._types import RunState

WORKFLOWS = [child.approval, child.flaky, child.napper]


async def build(url: str) -> None:
    set_virtual_start(datetime.now(UTC) - timedelta(days=2))
    child.CALLS["charge"] = 0
    async with replay.open_engine(url, workflows=WORKFLOWS, durability="none",
                                  serve_cli=False, shutdown_timeout=0) as engine:
        await child.settle(engine, pause=60)


@pytest.fixture
def db(pg_url: str) -> str:
    """A schema holding the five runs, no engine on it."""
    trio.run(build, pg_url, clock=trio.testing.MockClock(autojump_threshold=0))
    return pg_url


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = cli(capsys, *args, "--json")
    assert (code, err) == (0, "")
    return json.loads(out)


def reopen(url: str, run_ids: list[str]) -> dict[str, tuple[RunState, Any]]:
    """Open an engine on `url`, wait for the runs to finish; their states and results."""
    async def run() -> dict[str, tuple[RunState, Any]]:
        ended = {}
        async with replay.open_engine(url, workflows=WORKFLOWS, durability="none",
                                      serve_cli=False, shutdown_timeout=0) as engine:
            for run_id in run_ids:
                result: Any = None
                with contextlib.suppress(replay.WorkflowFailed):
                    result = await engine.get_run(run_id).result()
                ended[run_id] = (engine.status(run_id).state, result)
        return ended

    return trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))


# -- reads --


def test_runs_show_and_sql_read_the_database(capsys: pytest.CaptureFixture[str],
                                             db: str) -> None:
    code, out, err = cli(capsys, "runs", db)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["n1", "f1", "c1", "a2", "a1"]
    assert lines[-1].endswith("approval:v1: waiting for a manager")
    assert lines[3].endswith('→ {"n":3,"approved":"yes"}')
    assert [run["run_id"] for run in as_json(capsys, "runs", db, "--state", "suspended")] == [
        "a2", "a1"]
    assert as_json(capsys, "runs", db, "--since", "1d") == []

    head, timeline = cli(capsys, "show", db, "a1")[1].split("\n\n")
    assert head.splitlines()[:3] == [
        "run       a1", "workflow  approval",
        "state     suspended on approval:v1 (waiting for a manager)"]
    rows = [line.split() for line in timeline.splitlines()]
    assert [row[1] for row in rows[1:]] == ["run/started", "step/completed",
                                            "suspend/suspended"]
    assert rows[2][2:4] == ["fetch:v1", "1"] and rows[2][-1] == '{"n":1,"cents":100}'
    assert "state     failed: replay.StepFailed" in cli(capsys, "show", db, "f1")[1]
    shown = as_json(capsys, "show", db, "c1")
    assert shown["run"]["output_json"] == {"n": 3, "approved": "yes"}
    assert [f"{e['kind']}/{e['event']}" for e in shown["events"]] == [
        "run/started", "step/completed", "suspend/suspended", "signal/signalled",
        "step/completed", "run/completed"]
    assert "value" not in shown["events"][0] and shown["events"][3]["value_json"] == "yes"

    assert cli(capsys, "sql", db, "SELECT state, count(*) AS runs FROM replay_runs "
                                  "GROUP BY state ORDER BY state") == (
        0, "state      runs\ncompleted     1\nfailed        1\nsleeping      1\n"
           "suspended     2\n(4 rows)\n", "")
    assert as_json(capsys, "sql", db, "SELECT run_id, input_json, ? AS tag, ? AS n "
                   "FROM replay_runs WHERE run_id = ?", "-p", "hello", "-p", "42",
                   "-p", '"a1"') == [{"run_id": "a1", "input_json": [1], "tag": "hello",
                                      "n": 42}]
    assert as_json(capsys, "sql", db, "SELECT value_json->>'cents' AS cents, 'x%' AS p "
                   "FROM replay_events WHERE key = ? ORDER BY seq", "-p", "fetch:v1") == [
        {"cents": "100", "p": "x%"}, {"cents": "200", "p": "x%"}, {"cents": "300", "p": "x%"}]


@pytest.mark.parametrize(("query", "message"), [
    ("DELETE FROM replay_event_log",
     "replay sql only reads: DELETE statements are not allowed; use SELECT, "
     "WITH ... SELECT or EXPLAIN"),
    ("SELECT * FROM replay_event_log",
     "replay sql only reads the views replay_events and replay_runs on a PostgreSQL store: "
     "permission denied for table replay_event_log"),
    ("SELECT 1; SELECT 2",
     "replay sql runs exactly one query: cannot insert multiple commands into a prepared "
     "statement; pass one SELECT, WITH ... SELECT or EXPLAIN"),
])
def test_sql_refuses_writes_and_the_table(capsys: pytest.CaptureFixture[str], db: str,
                                          query: str, message: str) -> None:
    assert cli(capsys, "sql", db, query) == (1, "", f"replay sql: {message}\n")
    assert as_json(capsys, "sql", db, "SELECT count(*) AS n FROM replay_runs") == [{"n": 5}]


def test_sql_timeout(capsys: pytest.CaptureFixture[str], db: str) -> None:
    assert cli(capsys, "sql", db, "SELECT pg_sleep(5)", "--timeout", "0.2") == (
        1, "", "replay sql: query exceeded its time limit of 0.2 s and was stopped; pass a "
               "larger --timeout SECONDS to replay sql\n")


def test_watch_prints_what_the_database_holds(capsys: pytest.CaptureFixture[str],
                                              db: str) -> None:
    code, out, err = cli(capsys, "watch", db, "a1")
    assert code == 0
    assert out.split()[1:] == ["a1", "now", "suspended", "on", "approval:v1",
                               '"waiting', 'for', 'a', 'manager"']
    assert err == (f"replay watch: the replay command cannot watch {db!r} live (it reaches "
                   "no engine on a PostgreSQL database): this is what the database holds "
                   "now; follow updates with engine.watch() in the application whose engine "
                   "runs on it\n")
    events = [json.loads(line) for line in cli(
        capsys, "watch", db, "c1", "--after-seq", "0", "--json")[1].splitlines()]
    assert [e["event"]["event"] for e in events if e["kind"] == "event"] == [
        "started", "completed", "suspended", "signalled", "completed", "completed"]


def test_export_writes_both_views(capsys: pytest.CaptureFixture[str], db: str,
                                  tmp_path: Path) -> None:
    written = as_json(capsys, "export", db, "--format", "parquet", "--out", str(tmp_path))
    events = as_json(capsys, "sql", db, "SELECT count(*) AS n FROM replay_events")[0]["n"]
    assert [(item["view"], item["rows"]) for item in written] == [
        ("replay_runs", 5), ("replay_events", events)]
    con = duckdb.connect()
    columns = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * "
                               f"FROM '{tmp_path / 'replay_events.parquet'}')").fetchall())
    assert columns == {
        "seq": "BIGINT", "run_id": "VARCHAR", "workflow": "VARCHAR", "key": "VARCHAR",
        "kind": "VARCHAR", "event": "VARCHAR", "attempt": "INTEGER", "value": "BLOB",
        "value_json": "JSON", "error_type": "VARCHAR", "error": "VARCHAR",
        "recorded_at": "TIMESTAMP WITH TIME ZONE", "duration_ms": "DOUBLE",
        "wake_at": "TIMESTAMP WITH TIME ZONE", "generation": "INTEGER"}
    as_json(capsys, "export", db, "--format", "csv", "--out", str(tmp_path / "csv"))
    header = (tmp_path / "csv" / "replay_events.csv").read_text().split("\n")[0]
    assert "value" not in header.split(",") and "value_json" in header.split(",")


# -- writes, while no engine runs --


def test_signal_is_stored_and_wakes_the_run_at_the_next_open(
        capsys: pytest.CaptureFixture[str], db: str) -> None:
    assert cli(capsys, "signal", db, "a1", "approval:v1", '{"by": "maria"}') == (
        0, f"signal for 'approval:v1' stored in run 'a1''s mailbox; no engine holds {db!r}, "
           "so the run takes it when an engine next opens the database\n", "")
    assert cli(capsys, "signal", db, "a1", "approval:v1", "true") == (
        1, "", "replay signal: key 'approval:v1' of run 'a1' already has a signal; a Suspend "
               "takes one value, so this signal is rejected\n")
    assert cli(capsys, "signal", db, "c1", "approval:v1", "true")[0] == 1
    assert as_json(capsys, "sql", db, "SELECT run_id, value_json FROM replay_events "
                   "WHERE kind = 'signal' ORDER BY seq") == [
        {"run_id": "c1", "value_json": "yes"}, {"run_id": "a1", "value_json": {"by": "maria"}}]
    assert reopen(db, ["a1"]) == {
        "a1": (RunState.COMPLETED, {"n": 1, "approved": {"by": "maria"}})}


def test_cancel_is_stored_and_taken_at_the_next_open(capsys: pytest.CaptureFixture[str],
                                                    db: str) -> None:
    assert cli(capsys, "cancel", db, "a2", "--reason", "not needed") == (
        0, f"cancellation of run 'a2' stored in {db!r}; no engine holds the database, so "
           "the run takes it when an engine next opens the database (it is suspended until "
           "then)\n", "")
    assert cli(capsys, "cancel", db, "a2")[1] == (
        "run 'a2' was already asked to cancel; cancel changes nothing (the run is "
        "suspended)\n")
    assert cli(capsys, "cancel", db, "c1")[0] == 1
    assert reopen(db, ["a2"])["a2"][0] is RunState.CANCELLED
    assert as_json(capsys, "runs", db, "--state", "cancelled")[0]["error"].endswith(
        "replay.Cancelled: run 'a2' was cancelled: not needed\n")


def test_purge_dry_run_then_purge(capsys: pytest.CaptureFixture[str], db: str,
                                  tmp_path: Path) -> None:
    events = "SELECT count(*) AS n FROM replay_events WHERE run_id IN ('c1', 'f1')"
    gone = as_json(capsys, "sql", db, events)[0]["n"]
    dry = as_json(capsys, "purge", db, "--older-than", "1d", "--dry-run")
    assert (dry["live"], dry["dry_run"], dry["runs_purged"], dry["events_deleted"]) == (
        False, True, 2, gone)
    assert len(as_json(capsys, "runs", db)) == 5
    archive = tmp_path / "old.parquet"
    code, out, err = cli(capsys, "purge", db, "--older-than", "1d", "--archive", str(archive))
    assert (code, err) == (0, "")
    assert out.startswith(f"purged 2 finished runs ({gone} events) from before ")
    assert out.endswith(f", in the PostgreSQL database {db!r}; their events are in "
                        f"{str(archive)!r}\n")
    assert [run["run_id"] for run in as_json(capsys, "runs", db)] == ["n1", "a2", "a1"]
    count = duckdb.connect().execute(f"SELECT count(*) FROM '{archive}'").fetchone()
    assert count == (gone,)


def test_resume_with_workflows_runs_an_engine_of_the_command(
        capsys: pytest.CaptureFixture[str], db: str) -> None:
    assert cli(capsys, "resume", db, "f1", "--workflows", "cli_engine_child") == (
        0, "resumed run 'f1' (failed -> completed)\n", "")
    assert as_json(capsys, "runs", db, "--workflow", "flaky")[0]["output_json"] == "charged"


# -- while an engine runs: reads answered, signals queued, purges refused --


def test_reads_and_queued_writes_while_an_engine_runs(capsys: pytest.CaptureFixture[str],
                                                     db: str) -> None:
    async def beside_an_engine() -> None:
        async with replay.open_engine(db, workflows=WORKFLOWS, durability="none",
                                      serve_cli=False, shutdown_timeout=0):
            code, out, err = cli(capsys, "signal", db, "a1", "approval:v1", '"queued"')
            assert (code, err) == (0, "")
            assert out.startswith(f"signal for 'approval:v1' queued for run 'a1' in "
                                  f"{db!r}; an engine runs on the database")
            assert cli(capsys, "purge", db, "--older-than", "1d") == (
                1, "", f"replay purge: {purge_refused(db)}\n")
            assert as_json(capsys, "purge", db, "--older-than", "1d",
                           "--dry-run")["runs_purged"] == 2
            assert len(as_json(capsys, "runs", db)) == 5

    trio.run(beside_an_engine, clock=trio.testing.MockClock(autojump_threshold=0))
    # Taken by that engine, or else by the next (the message waits in the database).
    assert reopen(db, ["a1"]) == {
        "a1": (RunState.COMPLETED, {"n": 1, "approved": "queued"})}


# -- refusals and errors --


def test_what_the_command_refuses_on_a_url(capsys: pytest.CaptureFixture[str],
                                           db: str) -> None:
    assert cli(capsys, "compact", db)[2] == (
        f"replay compact: compact rewrites a DuckDB file, and {db!r} is a PostgreSQL "
        "database: PostgreSQL reuses the space of deleted rows itself (autovacuum); to give "
        "it back to the operating system, run VACUUM FULL on replay_event_log in that "
        "schema (it locks the table: while no engine runs on it)\n")
    assert cli(capsys, "serve", db, "--workflows", "cli_engine_child")[0] == 1
    code, _, err = cli(capsys, "terminate", db, "a1")
    assert code == 1 and err.startswith(f"replay terminate: terminate needs an engine, and "
                                        f"no engine runs on the PostgreSQL database {db!r}")
    code, _, err = cli(capsys, "resume", db, "f1")
    assert code == 1 and "--workflows MODULE[,MODULE...]" in err
    assert cli(capsys, "show", db, "zz") == (
        1, "", f"replay show: no run with run_id 'zz' in {db!r}; list the runs with: "
               f"replay runs '{db}'\n")


def test_a_schema_that_is_not_a_replay_database(capsys: pytest.CaptureFixture[str],
                                                pg_url: str) -> None:
    import psycopg

    schema = pg_url.rsplit("%3D", 1)[1]
    assert cli(capsys, "signal", pg_url, "a1", "k", "1") == (
        1, "", f"replay signal: {pg_url!r} is a PostgreSQL database but not a replay database "
               f"(its schema {schema!r} has no replay tables); pass the URL your application "
               "gives replay.open_engine(), with options=-csearch_path%3D<schema> naming the "
               "schema its engine uses\n")
    missing = pg_url.replace(schema, "no_such_schema")
    assert "(none of the schemas on its search_path (no_such_schema) exists)" in cli(
        capsys, "runs", missing)[2]
    with psycopg.connect(pg_url) as con:  # the command created nothing
        assert con.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON "
                           "n.oid = c.relnamespace WHERE n.nspname = %s",
                           [schema]).fetchone() == (0,)


def test_a_wrong_url_exits_1_without_a_traceback(db: str) -> None:
    wrong = db.replace(db.split("@", 1)[1].split("/", 1)[0], "127.0.0.1:1")
    done = subprocess.run([sys.executable, "-m", "replay", "runs", wrong],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(f"replay runs: cannot connect to the PostgreSQL database "
                                  f"{wrong!r}: connection failed: ")
    assert "Traceback" not in done.stderr
    ok = subprocess.run([sys.executable, "-m", "replay", "runs", db, "--json", "--state",
                         "sleeping"], capture_output=True, text=True, timeout=60)
    assert (ok.returncode, ok.stderr) == (0, "")
    assert [run["run_id"] for run in json.loads(ok.stdout)] == ["n1"]


def test_a_password_is_never_printed(capsys: pytest.CaptureFixture[str], db: str) -> None:
    # The test server trusts its clients: the password is sent, and not needed.
    scheme, rest = db.split("://", 1)
    user, host = rest.split("@", 1)
    secret = f"{scheme}://{user.split(':')[0]}:s3cret@{host}"
    masked = f"{scheme}://{user.split(':')[0]}:***@{host}"
    said = [cli(capsys, "runs", secret),
            cli(capsys, "show", secret, "zz"),
            cli(capsys, "signal", secret, "a1", "approval:v1", "1"),
            cli(capsys, "cancel", secret, "a2"),
            cli(capsys, "purge", secret, "--older-than", "1d"),
            cli(capsys, "terminate", secret, "a1"),
            cli(capsys, "compact", secret),
            cli(capsys, "runs", secret.replace(host.split("/")[0], "127.0.0.1:1")),
            cli(capsys, "runs", f"{scheme}://u:s3cret@[::1/x")]
    assert all("s3cret" not in out + err for _, out, err in said)
    assert said[1][2].startswith(f"replay show: no run with run_id 'zz' in {masked!r}")
    assert masked in said[2][1] and masked in said[4][1]
    assert said[-1] == (1, "", "replay runs: cannot connect to the PostgreSQL database "
                               "'postgresql://...': end of string reached when looking for "
                               "matching \"]\" in IPv6 host address in URI: "
                               "\"postgresql://...\"; check that the server runs "
                               "and that the URL's host, port, user, password and database "
                               "are right\n")
