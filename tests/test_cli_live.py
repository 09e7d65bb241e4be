"""The `replay` command against a live engine in another process (SPEC §6, issue 7).

The child (tests/cli_engine_child.py) holds the database in real time; the command
cannot open the file and talks to the engine over the socket next to it. Nothing here
sleeps: the test waits for the child's lines (``ready``, ``done RUN_ID STATE``,
``closed``).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from replay._channel._protocol import socket_path
from replay._cli import main

HERE = Path(__file__).resolve().parent
NOBODY = 65534


@dataclass
class Live:
    db: str
    process: subprocess.Popen[str]

    def say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def expect(self, line: str, timeout: float = 30.0) -> None:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, f"the child said nothing within {timeout} s; expected {line!r}"
        assert self.process.stdout.readline() == line + "\n"


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    directory = tempfile.mkdtemp(prefix="replay-cli-")
    os.chmod(directory, 0o755)  # another user may reach the socket: see the uid tests
    db = os.path.join(directory, "app.duckdb")
    process = subprocess.Popen([sys.executable, str(HERE / "cli_engine_child.py"), db],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        child = Live(db, process)
        child.expect("ready")
        yield child
    finally:
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        shutil.rmtree(directory, ignore_errors=True)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], *args: str) -> object:
    code, out, err = cli(capsys, *args, "--json")
    assert (code, err) == (0, "")
    return json.loads(out)


def request(db: str, message: dict[str, object]) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(socket_path(db))
        sock.sendall(json.dumps(message).encode() + b"\n")
        answer: dict[str, object] = json.loads(sock.makefile("rb").readline())
        return answer


def test_the_socket_sits_next_to_the_database_with_mode_0600(live: Live) -> None:
    info = os.lstat(live.db + ".sock")
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()
    # DuckDB refuses a second process, even read-only: hence the channel.
    with pytest.raises(duckdb.IOException, match="Could not set lock on file"):
        duckdb.connect(live.db, read_only=True)


def test_runs_while_the_engine_holds_the_file(capsys: pytest.CaptureFixture[str],
                                              live: Live) -> None:
    code, out, err = cli(capsys, "runs", live.db)
    assert (code, err) == (0, "")
    rows = [line.split()[:3] for line in out.splitlines()[1:]]
    assert {run_id: state for run_id, _, state in rows} == {
        "a1": "suspended", "a2": "suspended", "c1": "completed", "f1": "failed",
        "n1": "sleeping"}
    suspended = as_json(capsys, "runs", live.db, "--state", "suspended", "--since", "1h")
    assert [run["run_id"] for run in suspended] == ["a2", "a1"]  # type: ignore[index]
    assert as_json(capsys, "runs", live.db, "--workflow", "napper")[0]["waiting_for"] == (  # type: ignore[index]
        "nap:v1")


def test_show_while_the_engine_holds_the_file(capsys: pytest.CaptureFixture[str],
                                              live: Live) -> None:
    code, out, err = cli(capsys, "show", live.db, "a2")
    assert (code, err) == (0, "")
    assert "state     suspended on approval:v1 (waiting for a manager)" in out
    assert re.search(r"step/completed\s+fetch:v1\s+1\s+[\d.]+ms\s+\{\"n\":2,\"cents\":200\}",
                     out)
    assert cli(capsys, "show", live.db, "zz") == (
        1, "", f"replay show: no run with run_id 'zz' in {live.db!r}; list the runs with: "
               f"replay runs {live.db}\n")


def test_sql_while_the_engine_holds_the_file(capsys: pytest.CaptureFixture[str],
                                             live: Live) -> None:
    p95 = as_json(capsys, "sql", live.db,
                  "SELECT key, count(*) AS attempts, quantile_cont(duration_ms, 0.95) AS p95_ms "
                  "FROM replay_events WHERE kind = 'step' AND duration_ms IS NOT NULL "
                  "GROUP BY key ORDER BY key")
    assert isinstance(p95, list)
    assert [(row["key"], row["attempts"]) for row in p95] == [
        ("after:v1", 1), ("charge:v1", 1), ("fetch:v1", 3), ("one:v1", 1)]
    assert all(row["p95_ms"] >= 0 for row in p95)
    rows = as_json(capsys, "sql", live.db, "SELECT value_json->>'$.n' AS n FROM replay_events "
                   "WHERE key = ? AND run_id = ?", "-p", "fetch:v1", "-p", "a2")
    assert rows == [{"n": "2"}]
    assert cli(capsys, "sql", live.db, "DELETE FROM replay_event_log") == (
        1, "", "replay sql: replay sql only reads: DELETE statements are not allowed; use "
               "SELECT, WITH ... SELECT or EXPLAIN\n")
    code, out, _ = cli(capsys, "sql", live.db, "EXPLAIN SELECT * FROM replay_runs")
    assert code == 0 and "explain_key" in out
    code, _, err = cli(capsys, "sql", live.db, "SELECT * FROM nowhere")
    assert code == 1 and err.startswith("replay sql: query failed: Catalog Error")


def test_signal_through_the_engine_wakes_the_run(capsys: pytest.CaptureFixture[str],
                                                 live: Live) -> None:
    code, out, err = cli(capsys, "signal", live.db, "a1", "approval:v1", '{"by": "maria"}')
    assert (code, err) == (0, "")
    assert out == (f"signal for 'approval:v1' recorded in run 'a1' by the engine in process "
                   f"{live.process.pid}; the run is running\n")
    live.say("wait a1")
    live.expect("done a1 completed")
    shown = as_json(capsys, "show", live.db, "a1")
    assert shown["run"]["output_json"] == {"n": 1, "approved": {"by": "maria"}}  # type: ignore[index]
    assert cli(capsys, "signal", live.db, "a1", "approval:v1", "true") == (
        1, "", "replay signal: run 'a1' is completed; signals to finished runs are rejected\n")
    assert cli(capsys, "signal", live.db, "a2", "fetch:v1", "true") == (
        1, "", "replay signal: run 'a2' recorded key 'fetch:v1' as a step, not a Suspend; a "
               "signal can only answer a Suspend\n")
    assert cli(capsys, "signal", live.db, "zz", "approval:v1", "1") == (
        1, "", f"replay signal: no run with run_id 'zz' in {live.db!r}; list the runs with: "
               f"replay runs {live.db}\n")
    # A key the suspended run does not wait on is kept, with a warning (issue 10).
    hint = ("run 'a2' waits for a signal for 'approval:v1', not '{key}'; the signal for "
            "'{key}' is kept in its mailbox until the run suspends on '{key}'. Did you "
            "mean 'approval:v1'?")
    assert as_json(capsys, "signal", live.db, "a2", "later:v1", "null") == {
        "run_id": "a2", "key": "later:v1", "live": True, "state": "suspended",
        "warning": hint.format(key="later:v1")}
    assert cli(capsys, "signal", live.db, "a2", "approval", "true") == (
        0, f"signal for 'approval' recorded in run 'a2' by the engine in process "
           f"{live.process.pid}; the run is suspended\n",
        f"replay signal: warning: {hint.format(key='approval')}\n")


def test_resume_through_the_engine_retries_the_failed_step(
        capsys: pytest.CaptureFixture[str], live: Live) -> None:
    assert cli(capsys, "resume", live.db, "f1") == (
        0, "resumed run 'f1' (failed -> running)\n", "")
    live.say("wait f1")
    live.expect("done f1 completed")
    shown = as_json(capsys, "show", live.db, "f1")
    assert [(e["event"], e["attempt"]) for e in shown["events"]] == [  # type: ignore[index]
        ("started", None), ("failed", 1), ("failed", None), ("resumed", None),
        ("completed", 2), ("completed", None)]
    assert cli(capsys, "resume", live.db, "c1") == (
        0, "run 'c1' is completed; resume changes nothing\n", "")
    assert cli(capsys, "resume", live.db, "zz")[0] == 1


def test_export_while_the_engine_holds_the_file(capsys: pytest.CaptureFixture[str],
                                                live: Live, tmp_path: Path) -> None:
    written = as_json(capsys, "export", live.db, "--format", "parquet", "--out",
                      str(tmp_path))
    counted = as_json(capsys, "sql", live.db, "SELECT count(*) AS n FROM replay_events")
    assert [item["rows"] for item in written] == [5, counted[0]["n"]]  # type: ignore[index]
    con = duckdb.connect()
    assert con.execute(f"SELECT count(*) FROM '{tmp_path}/replay_runs.parquet' "
                       "WHERE state = 'suspended'").fetchall() == [(1,)]


def test_the_protocol_refuses_what_it_does_not_know(live: Live) -> None:
    hello = request(live.db, {"protocol": 1, "op": "hello"})
    assert hello["ok"] is True and hello["pid"] == live.process.pid
    assert request(live.db, {"protocol": 2, "op": "hello"})["ok"] is True  # with watch
    assert request(live.db, {"protocol": 3, "op": "hello"})["error"] == {
        "type": "ProtocolError",
        "message": "this engine speaks channel protocol 2, the command sent 3; use the same "
                   f"version of replay-workflows ({hello['version']}) for both"}
    assert request(live.db, {"protocol": 1, "op": "drop"})["error"] == {
        "type": "ProtocolError", "message": "unknown operation 'drop'"}
    assert request(live.db, {"protocol": 1, "op": "query", "sql": "DROP VIEW replay_runs"}
                   )["error"] == {
        "type": "QueryError", "message": "engine.sql() only reads: DROP statements are not "
                                         "allowed; use SELECT, WITH ... SELECT or EXPLAIN"}


# Connects as another user; prints EACCES when the socket's mode keeps it out, else what
# the engine says at once (it refuses a peer of another uid before reading anything).
CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES")
else:
    print(s.makefile().readline(), end="")
"""


def _as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, user=NOBODY,
                          cwd="/", env={"PATH": os.environ.get("PATH", "")})


def _interpreter_for_nobody() -> str | None:
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if candidate is None:
            continue
        try:
            if _as_nobody(candidate, "-c", "pass").returncode == 0:
                return candidate
        except OSError:
            continue
    return None


def test_another_user_cannot_use_the_channel(live: Live) -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to run a process as another user")
    python = _interpreter_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter that another user may run")
    path = socket_path(live.db)
    assert _as_nobody(python, "-c", CLIENT, path).stdout == "EACCES\n"  # mode 0600
    # Even with the file mode opened up, the engine checks the peer's uid.
    os.chmod(path, 0o666)
    try:
        answer = _as_nobody(python, "-c", CLIENT, path)
    finally:
        os.chmod(path, 0o600)
    assert answer.stderr == ""
    assert json.loads(answer.stdout) == {"ok": False, "error": {
        "type": "PermissionError",
        "message": f"refused: this engine serves only its own user (uid {os.geteuid()}), not "
                   f"uid {NOBODY}; run replay as the user that runs the engine"}}


def test_after_the_engine_closes_the_command_reads_the_file(
        capsys: pytest.CaptureFixture[str], live: Live) -> None:
    live.say("quit")
    live.expect("closed")
    assert live.process.wait(timeout=30) == 0
    assert not os.path.lexists(socket_path(live.db))
    rows = as_json(capsys, "runs", live.db, "--state", "completed")
    assert sorted(run["run_id"] for run in rows) == ["a1", "c1", "f1"]  # type: ignore[attr-defined]


# -- the walkthrough of docs/cli.md, as a new user would do it --

CLI_DOC = HERE.parent / "docs" / "cli.md"
COOKBOOK = HERE.parent / "docs" / "cookbook.md"


def doc_block(path: Path, language: str, after: str) -> str:
    text = path.read_text()
    found = re.search(rf"{re.escape(after)}.*?```{language}\n(.*?)```", text, flags=re.DOTALL)
    assert found is not None, f"no {language} block after {after!r} in {path.name}"
    return found[1]


def test_the_walkthrough_of_the_docs(capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    script = tmp_path / "wait_for_approval.py"
    script.write_text(doc_block(CLI_DOC, "python", "## Try it"))
    db = str(tmp_path / "expenses.duckdb")
    process = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    app = Live(db, process)
    try:
        app.expect("exp-1 is suspended; waiting for: approval:v1")
        # In a second terminal: list the runs, see the timeline, ask for p95 per key.
        code, out, _ = cli(capsys, "runs", db)
        assert code == 0 and out.splitlines()[1].split()[:3] == ["exp-1", "expense:v1",
                                                                  "suspended"]
        code, out, _ = cli(capsys, "show", db, "exp-1")
        assert code == 0 and "state     suspended on approval:v1 (waiting for a manager)" in out
        p95 = doc_block(COOKBOOK, "sql", "### p95 duration per step key")
        rows = as_json(capsys, "sql", db, p95)
        assert [(row["key"], row["attempts"]) for row in rows] == [("file:v1", 1)]  # type: ignore[index]
        code, out, _ = cli(capsys, "signal", db, "exp-1", "approval:v1", '{"approved": true}')
        assert code == 0 and out.endswith("the run is running\n")
        app.expect("result: {'expense': 'exp-1', 'entry': 'ledger-exp-1', "
                   "'paid': 'paid 120.00 EUR for exp-1'}")
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
    # Afterwards, a plain DuckDB client reads the file, values as JSON.
    con = duckdb.connect(db, read_only=True)
    try:
        assert con.execute("SELECT run_id, output_json ->> '$.paid' FROM replay_runs"
                           ).fetchall() == [("exp-1", "paid 120.00 EUR for exp-1")]
        assert con.execute("SELECT value_json ->> '$.approved' FROM replay_events "
                           "WHERE kind = 'signal'").fetchall() == [("true",)]
    finally:
        con.close()
