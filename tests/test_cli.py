"""The `replay` command against a stopped database file (SPEC §6 "The replay command").

No engine holds the file here, so the command opens it itself for one command. The
file is built once, in virtual time, by the same workflows the live tests' child runs
(tests/cli_engine_child.py), two days in the past: ``a1``/``a2`` suspended on
``approval:v1``, ``c1`` completed, ``f1`` failed in step ``charge:v1``, ``n1`` sleeping
on ``nap:v1``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cli_engine_child as child
import duckdb
import pytest
import trio
import trio.testing

import replay
from replay._channel._protocol import from_wire, short_address, socket_path, to_wire
from replay._cli import _source as _cli_source
from replay._cli import main
from replay._cli._format import number, span, took
from replay._engine._clock import set_virtual_start
from replay._store import SCHEMA_VERSION

HERE = Path(__file__).resolve().parent
WORKFLOWS = [child.approval, child.flaky, child.napper]


async def build(db: str) -> None:
    set_virtual_start(datetime.now(UTC) - timedelta(days=2))
    child.CALLS["charge"] = 0
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none",
                                  serve_cli=False, shutdown_timeout=0) as engine:
        await child.settle(engine, pause=60)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> str:
    db = str(tmp_path_factory.mktemp("stopped") / "app.duckdb")
    trio.run(build, db, clock=trio.testing.MockClock(autojump_threshold=0))
    return db


@pytest.fixture
def copy(stopped: str, tmp_path: Path) -> str:
    """A copy of the stopped file, for tests that change it."""
    db = str(tmp_path / "copy.duckdb")
    shutil.copy(stopped, db)
    return db


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], *args: str) -> object:
    code, out, err = cli(capsys, *args, "--json")
    assert (code, err) == (0, "")
    return json.loads(out)


# -- runs --


def test_runs_lists_every_run_newest_first(capsys: pytest.CaptureFixture[str],
                                           stopped: str) -> None:
    code, out, err = cli(capsys, "runs", stopped)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["RUN_ID", "WORKFLOW", "STATE", "CREATED", "(UTC)", "UPDATED",
                                "(UTC)", "DETAIL"]
    assert [line.split()[0] for line in lines[1:]] == ["n1", "f1", "c1", "a2", "a1"]
    a1 = lines[-1]
    assert "suspended" in a1 and a1.endswith("approval:v1: waiting for a manager")
    assert "nap:v1 (until " in lines[1]
    assert "builtins.ConnectionError: card service unreachable" in lines[2]
    assert lines[3].endswith('→ {"n":3,"approved":"yes"}')


def test_runs_filters_by_state_workflow_and_time(capsys: pytest.CaptureFixture[str],
                                                 stopped: str) -> None:
    def ids(*args: str) -> list[str]:
        rows = as_json(capsys, "runs", stopped, *args)
        assert isinstance(rows, list)
        return [row["run_id"] for row in rows]

    assert ids("--state", "suspended") == ["a2", "a1"]
    assert ids("--workflow", "flaky") == ["f1"]
    assert ids("--workflow", "approval", "--state", "completed") == ["c1"]
    # The runs were created two days ago (engine clock).
    assert ids("--since", "1d") == []
    assert ids("--since", "47h") == []
    assert ids("--since", "3d") == ["n1", "f1", "c1", "a2", "a1"]
    assert ids("--since", "3000m", "--state", "failed") == ["f1"]


def test_runs_json_has_the_view_columns_with_json_embedded(
        capsys: pytest.CaptureFixture[str], stopped: str) -> None:
    rows = as_json(capsys, "runs", stopped, "--state", "completed")
    assert isinstance(rows, list)
    (c1,) = rows
    assert list(c1) == ["run_id", "workflow", "state", "created_at", "updated_at",
                        "input_json", "output_json", "error_type", "error", "waiting_for",
                        "wake_at", "status_text", "parent_run_id", "status_json",
                        "generation", "code_version", "last_code_version"]
    assert c1["input_json"] == [3]
    assert c1["output_json"] == {"n": 3, "approved": "yes"}
    assert datetime.fromisoformat(c1["created_at"]).tzinfo is not None


def test_runs_limit_keeps_the_newest_and_says_so(capsys: pytest.CaptureFixture[str],
                                                 stopped: str) -> None:
    code, out, err = cli(capsys, "runs", stopped, "--limit", "2")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["n1", "f1"]
    assert err == "(the newest 2 runs; see more with --limit)\n"


def test_runs_with_nothing_to_show(capsys: pytest.CaptureFixture[str], stopped: str) -> None:
    assert cli(capsys, "runs", stopped, "--workflow", "nope") == (0, "no runs match\n", "")
    assert as_json(capsys, "runs", stopped, "--workflow", "nope") == []


@pytest.mark.parametrize(("args", "complaint"), [
    (["--since", "3 hours"],
     "argument --since: expected a duration such as 30s, 15m, 2h or 7d, got '3 hours'"),
    (["--since", "2w"], "argument --since: expected a duration such as 30s, 15m, 2h or 7d, "
                        "got '2w'"),
    (["--state", "asleep"], "argument --state: invalid choice: 'asleep'"),
    (["--limit", "0"], "argument --limit: expected a whole number >= 1, got '0'"),
])
def test_runs_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], stopped: str,
                                  args: list[str], complaint: str) -> None:
    code, out, err = cli(capsys, "runs", stopped, *args)
    assert (code, out) == (2, "")
    assert f"replay runs: error: {complaint}" in err


# -- show --


def test_show_prints_the_timeline_of_a_suspended_run(capsys: pytest.CaptureFixture[str],
                                                     stopped: str) -> None:
    code, out, err = cli(capsys, "show", stopped, "a1")
    assert (code, err) == (0, "")
    head, timeline = out.split("\n\n")
    assert head.splitlines()[:3] == [
        "run       a1", "workflow  approval",
        "state     suspended on approval:v1 (waiting for a manager)"]
    assert "input     [1]" in head
    rows = [line.split() for line in timeline.splitlines()]
    assert rows[0] == ["AT", "EVENT", "KEY", "ATTEMPT", "TOOK", "DETAIL"]
    assert [row[1] for row in rows[1:]] == ["run/started", "step/completed",
                                            "suspend/suspended"]
    assert rows[2][2:4] == ["fetch:v1", "1"] and rows[2][-1] == '{"n":1,"cents":100}'
    assert timeline.splitlines()[3].endswith("waits for a signal")


def test_show_prints_errors_waits_and_the_traceback(capsys: pytest.CaptureFixture[str],
                                                    stopped: str) -> None:
    out = cli(capsys, "show", stopped, "f1")[1]
    assert "state     failed: replay.StepFailed" in out
    assert re.search(r"step/failed\s+charge:v1\s+1\s+[\d.]+ms\s+builtins.ConnectionError: "
                     r"card service unreachable", out)
    assert out.rstrip().endswith("replay.StepFailed: step 'charge:v1' of run 'f1' failed "
                                 "after 1 attempt: builtins.ConnectionError: card service "
                                 "unreachable")
    assert "\nerror:\n  Traceback (most recent call last):" in out
    nap = cli(capsys, "show", stopped, "n1")[1]
    assert "state     sleeping on nap:v1, wakes at +1d00h" in nap
    assert re.search(r"sleep/scheduled\s+nap:v1\s+sleeps until \+1d00h", nap)
    signalled = cli(capsys, "show", stopped, "c1")[1]
    assert re.search(r'signal/signalled\s+approval:v1\s+"yes" \(delivered after 1m00s\)',
                     signalled)


def test_show_json_has_the_run_and_its_events(capsys: pytest.CaptureFixture[str],
                                              stopped: str) -> None:
    shown = as_json(capsys, "show", stopped, "c1")
    assert isinstance(shown, dict)
    assert shown["run"]["state"] == "completed"
    events = shown["events"]
    assert [f"{e['kind']}/{e['event']}" for e in events] == [
        "run/started", "step/completed", "suspend/suspended", "signal/signalled",
        "step/completed", "run/completed"]
    assert "value" not in events[0]  # the msgpack bytes; value_json carries the value
    assert events[3]["value_json"] == "yes"
    assert events[-1]["value_json"] == {"n": 3, "approved": "yes"}
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


def test_show_of_an_unknown_run_exits_1(capsys: pytest.CaptureFixture[str],
                                        stopped: str) -> None:
    assert cli(capsys, "show", stopped, "nope") == (
        1, "", f"replay show: no run with run_id 'nope' in {stopped!r}; list the runs with: "
               f"replay runs {stopped}\n")


# -- sql --


def test_sql_prints_a_table(capsys: pytest.CaptureFixture[str], stopped: str) -> None:
    code, out, err = cli(capsys, "sql", stopped,
                         "SELECT state, count(*) AS runs FROM replay_runs GROUP BY state "
                         "ORDER BY state")
    assert (code, err) == (0, "")
    assert out == ("state      runs\n"
                   "completed     1\n"
                   "failed        1\n"
                   "sleeping      1\n"
                   "suspended     2\n"
                   "(4 rows)\n")


def test_sql_json_and_parameters(capsys: pytest.CaptureFixture[str], stopped: str) -> None:
    rows = as_json(capsys, "sql", stopped,
                   "SELECT run_id, input_json, ? AS tag, ? AS n FROM replay_runs "
                   "WHERE run_id = ?", "-p", "hello", "-p", "42", "-p", '"a1"')
    assert rows == [{"run_id": "a1", "input_json": [1], "tag": "hello", "n": 42}]


def test_sql_reads_values_as_json(capsys: pytest.CaptureFixture[str], stopped: str) -> None:
    rows = as_json(capsys, "sql", stopped,
                   "SELECT value_json->>'$.cents' AS cents FROM replay_events "
                   "WHERE key = 'fetch:v1' ORDER BY seq")
    assert rows == [{"cents": "100"}, {"cents": "200"}, {"cents": "300"}]


@pytest.mark.parametrize(("query", "message"), [
    ("DELETE FROM replay_event_log",
     "replay sql only reads: DELETE statements are not allowed; use SELECT, WITH ... SELECT "
     "or EXPLAIN"),
    ("COPY replay_event_log TO 'x.csv'",
     "replay sql only reads: COPY statements are not allowed; use SELECT, WITH ... SELECT "
     "or EXPLAIN"),
    ("SELECT 1; SELECT 2",
     "replay sql runs exactly one query, got 2 statements; send them one at a time"),
])
def test_sql_refuses_anything_but_one_query(capsys: pytest.CaptureFixture[str], stopped: str,
                                            query: str, message: str) -> None:
    assert cli(capsys, "sql", stopped, query) == (1, "", f"replay sql: {message}\n")


def test_sql_reads_nothing_but_the_database(capsys: pytest.CaptureFixture[str],
                                            stopped: str) -> None:
    code, out, err = cli(capsys, "sql", stopped, "SELECT * FROM read_text('/etc/hostname')")
    assert (code, out) == (1, "")
    assert err.startswith("replay sql: query failed: Permission Error")


# -- signal --


def test_signal_is_stored_in_the_mailbox_and_delivered_at_the_next_open(
        capsys: pytest.CaptureFixture[str], copy: str) -> None:
    code, out, err = cli(capsys, "signal", copy, "a1", "approval:v1", '{"by": "maria"}')
    assert (code, err) == (0, "")
    assert out == (f"signal for 'approval:v1' stored in run 'a1''s mailbox; no engine holds "
                   f"{copy!r}, so the run takes it when an engine next opens the file\n")
    # Recorded exactly as the engine records one (compare with c1's).
    rows = as_json(capsys, "sql", copy,
                   "SELECT run_id, kind, event, key, attempt, value_json, error_type "
                   "FROM replay_events WHERE kind = 'signal' ORDER BY seq")
    assert rows == [
        {"run_id": "c1", "kind": "signal", "event": "signalled", "key": "approval:v1",
         "attempt": None, "value_json": "yes", "error_type": None},
        {"run_id": "a1", "kind": "signal", "event": "signalled", "key": "approval:v1",
         "attempt": None, "value_json": {"by": "maria"}, "error_type": None},
    ]
    assert as_json(capsys, "runs", copy, "--state", "suspended")[0]["run_id"] == "a2"  # type: ignore[index]

    async def reopen() -> object:
        async with replay.open_engine(copy, workflows=WORKFLOWS, durability="none",
                                      serve_cli=False) as engine:
            return await engine.get_run("a1").result()

    clock = trio.testing.MockClock(autojump_threshold=0)
    assert trio.run(reopen, clock=clock) == {"n": 1, "approved": {"by": "maria"}}


def test_signal_rejections_exit_1(capsys: pytest.CaptureFixture[str], copy: str) -> None:
    assert cli(capsys, "signal", copy, "a2", "approval:v1", "true")[0] == 0
    assert cli(capsys, "signal", copy, "a2", "approval:v1", "false") == (
        1, "", "replay signal: key 'approval:v1' of run 'a2' already has a signal; a Suspend "
               "takes one value, so this signal is rejected\n")
    assert cli(capsys, "signal", copy, "c1", "approval:v1", "true") == (
        1, "", "replay signal: run 'c1' is completed; signals to finished runs are "
               "rejected\n")
    assert cli(capsys, "signal", copy, "a2", "fetch:v1", "true") == (
        1, "", "replay signal: run 'a2' recorded key 'fetch:v1' as a step, not a Suspend; a "
               "signal can only answer a Suspend\n")
    assert cli(capsys, "signal", copy, "zz", "approval:v1", "true") == (
        1, "", f"replay signal: no run with run_id 'zz' in {copy!r}; list the runs with: "
               f"replay runs {copy}\n")


def test_signal_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], copy: str) -> None:
    assert cli(capsys, "signal", copy, "a1", "approval:v1", "yes") == (
        2, "", "replay signal: error: JSON_VALUE must be JSON, such as true, 42, null, "
               "'\"text\"' or '{\"approved\": true}'; got 'yes' (to send it as text, quote "
               "it: '\"yes\"')\n")
    assert cli(capsys, "signal", copy, "a1", "", "1")[0] == 2
    assert cli(capsys, "signal", copy, "a1")[0] == 2
    assert cli(capsys, "sql", copy, "SELECT count(*) FROM replay_events "
                                    "WHERE kind = 'signal'") == (0, "count_star()\n"
                                                                    "           1\n"
                                                                    "(1 row)\n", "")


# -- resume --


def test_resume_needs_the_engine(capsys: pytest.CaptureFixture[str], stopped: str) -> None:
    assert cli(capsys, "resume", stopped, "f1") == (
        1, "", f"replay resume: resume needs the workflow code, and no engine holds "
               f"{stopped!r}: pass the modules that define workflow 'flaky' with --workflows "
               "MODULE[,MODULE...] to resume the run in this command, or run the command "
               "while your application's engine holds the file, or call "
               "engine.resume(run_id) in it\n")
    assert cli(capsys, "resume", stopped, "zz")[0] == 1


# -- export --


@pytest.mark.parametrize("file_format", ["parquet", "csv", "json"])
def test_export_writes_both_views(capsys: pytest.CaptureFixture[str], stopped: str,
                                  tmp_path: Path, file_format: str) -> None:
    out_dir = tmp_path / "out" / "nested"
    written = as_json(capsys, "export", stopped, "--format", file_format, "--out",
                      str(out_dir))
    extension = {"parquet": "parquet", "csv": "csv", "json": "jsonl"}[file_format]
    events_count = as_json(capsys, "sql", stopped, "SELECT count(*) AS n FROM replay_events")
    assert written == [
        {"view": "replay_runs", "path": str(out_dir / f"replay_runs.{extension}"), "rows": 5},
        {"view": "replay_events", "path": str(out_dir / f"replay_events.{extension}"),
         "rows": events_count[0]["n"]},  # type: ignore[index]
    ]
    assert sorted(os.listdir(out_dir)) == [f"replay_events.{extension}",
                                           f"replay_runs.{extension}"]
    con = duckdb.connect()
    events = str(out_dir / f"replay_events.{extension}")
    columns = {row[0]: row[1] for row in con.execute(
        f"DESCRIBE SELECT * FROM '{events}'").fetchall()}
    assert ("value" in columns) == (file_format == "parquet")
    cents = con.execute(f"SELECT value_json->>'$.cents' FROM '{events}' "
                        "WHERE key = 'fetch:v1' ORDER BY seq").fetchall()
    assert cents == [("100",), ("200",), ("300",)]
    if file_format == "parquet":
        assert columns["value_json"] == "JSON"
        assert columns["recorded_at"] == "TIMESTAMP WITH TIME ZONE"


def test_export_usage(capsys: pytest.CaptureFixture[str], stopped: str) -> None:
    code, _, err = cli(capsys, "export", stopped, "--format", "xml", "--out", "x")
    assert code == 2 and "argument --format: invalid choice: 'xml'" in err
    assert cli(capsys, "export", stopped, "--format", "csv")[0] == 2


# -- the file itself --


def test_a_missing_database_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.duckdb")
    assert cli(capsys, "runs", missing) == (
        1, "", f"replay runs: no database at {missing!r}; pass the path your application "
               "gives replay.open_engine()\n")
    assert not os.path.exists(missing)


def test_a_file_that_is_not_a_replay_database_exits_1(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    other = str(tmp_path / "other.duckdb")
    duckdb.connect(other).close()
    assert cli(capsys, "runs", other) == (
        1, "", f"replay runs: {other!r} is a DuckDB file but not a replay database (it has no "
               "replay tables); pass the path your application gives replay.open_engine()\n")


def test_a_newer_schema_exits_1(capsys: pytest.CaptureFixture[str], copy: str) -> None:
    con = duckdb.connect(copy)
    con.execute("UPDATE replay_meta SET value = '99' WHERE name = 'schema_version'")
    con.close()
    assert cli(capsys, "show", copy, "a1") == (
        1, "", f"replay show: database {copy!r} has replay schema version '99', but this "
               f"version of replay reads schema version {SCHEMA_VERSION}; upgrade "
               "replay-workflows to open it\n")


def test_a_stale_socket_is_ignored(capsys: pytest.CaptureFixture[str], copy: str) -> None:
    stale = socket.socket(socket.AF_UNIX)
    with short_address(socket_path(copy)) as address:  # tmp paths can be long
        stale.bind(address)
    stale.close()  # the socket file stays, with nobody listening: a crashed engine's
    code, out, _ = cli(capsys, "runs", copy, "--state", "failed")
    assert code == 0 and out.splitlines()[1].startswith("f1")


def test_a_file_held_by_a_process_that_does_not_serve_exits_1(
        capsys: pytest.CaptureFixture[str], copy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cli_source, "LOCKED_GRACE_SECONDS", 0.0)
    holder = subprocess.Popen([sys.executable, str(HERE / "lock_holder.py"), copy],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        assert cli(capsys, "runs", copy) == (
            1, "", f"replay runs: database {copy!r} is held by process {holder.pid}, which "
                   "does not serve the replay command (an engine opened with "
                   "serve_cli=False, or not a replay engine); use engine.sql() inside that "
                   "application, or run the command once it stops\n")
    finally:
        holder.kill()
        holder.wait()
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()


# -- the command itself --


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys)
    assert (code, out) == (2, "") and err.startswith("usage: replay")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "--version") == (0, f"replay {replay.__version__}\n", "")


def test_python_dash_m_replay_runs_the_command(stopped: str) -> None:
    done = subprocess.run([sys.executable, "-m", "replay", "runs", stopped, "--json",
                           "--state", "sleeping"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert [run["run_id"] for run in json.loads(done.stdout)] == ["n1"]
    bad = subprocess.run([sys.executable, "-m", "replay", "show", stopped, "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "no run with run_id 'nope'" in bad.stderr


# -- pieces --


def test_wire_values_round_trip() -> None:
    from decimal import Decimal
    from uuid import UUID

    values = [None, True, 3, 2**80, 1.5, float("inf"), "text", b"\x00\xff",
              datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), datetime(2026, 1, 2).date(),
              timedelta(days=2, seconds=3, microseconds=4), Decimal("1.25"),
              UUID(int=7), [1, [2]], {"a": {1: b"x"}}]
    wired = json.loads(json.dumps(to_wire(values), allow_nan=False))
    assert from_wire(wired) == values
    nan = from_wire(json.loads(json.dumps(to_wire(float("nan")))))
    assert nan != nan
    with pytest.raises(ValueError, match=r"^unknown wire value tag '\$pickle'$"):
        from_wire({"$pickle": "x"})


def test_human_durations() -> None:
    assert [span(s) for s in (0.0123, 12.34, 303, 3 * 3600 + 300, 2 * 86400 + 3 * 3600)] == [
        "0.012s", "12.3s", "5m03s", "3h05m", "2d03h"]
    assert [took(ms) for ms in (None, 0.42, 10.25, 1530.0)] == ["", "0.4ms", "10.2ms",
                                                                "1.530s"]
    assert [number(x) for x in (1.0, 2.5, 102.39999999, 1e-9, 0.0)] == [
        "1", "2.5", "102.4", "1e-09", "0.0"]
