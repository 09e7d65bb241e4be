"""`replay.connect` and `replay.connect_async`: other processes use the engine of a file.

One `replay serve` process (tests/served.py) runs the engine for the whole module with
the workflows of tests/connect_flows.py; the test process, four client processes
(tests/connect_child.py) and their threads start, signal and wait for runs through it.
The last tests run an engine in this process under the virtual clock, to watch the
server side of a wait. Nothing here sleeps to wait for the engine: waits are answered
by the engine when runs settle.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import trio
import trio.testing
from connect_flows import Money, approval, echo
from served import HERE, LINE_TIMEOUT, Served, in_thread

import replay
from replay import RunState
from replay._channel import _transport
from replay._channel._protocol import PROTOCOL, dump_message, load_message, socket_path
from replay._engine import _channel_calls

NOBODY = 65534


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tempfile.mkdtemp(prefix="replay-connect-")
    os.chmod(directory, 0o755)  # another user may reach the socket: see the uid test
    server = Served(os.path.join(directory, "shop.duckdb"),
                    tmp_path_factory.mktemp("serve") / "stderr.txt")
    try:
        yield server.ready()
    finally:
        server.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def client(served: Served) -> Iterator[replay.Client]:
    with replay.connect(served.db) as connected:
        yield connected


def test_a_client_gets_what_the_engine_records(served: Served, client: replay.Client) -> None:
    assert (client.pid, client.database) == (served.pid, served.db)
    assert "replay serve" in (client.command or "")
    money = Money(Decimal("9.99"), "EUR")
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    run = client.start(echo, (1, "a"), {2, 3}, money, when, b"\x00", run_id="values-1")
    assert repr(run) == "RemoteRun(run_id='values-1', workflow='echo')"
    # Tuples, sets, registered types and datetimes come back as themselves, as in-process.
    assert run.result() == {"values": ((1, "a"), {2, 3}, money, when, b"\x00"),
                            "pid": served.pid}
    info = client.status("values-1")
    assert (info.run_id, info.workflow, info.state) == ("values-1", "echo", RunState.COMPLETED)
    assert info.output["pid"] == served.pid and info.created_at <= info.updated_at
    assert client.get_run("values-1").workflow == "echo"
    # Starting again with the run id returns the same run (idempotent), by name too.
    assert client.start("echo", "ignored", run_id="values-1").result() == info.output


def test_wait_returns_at_a_suspension_and_result_after_the_signal(
        served: Served, client: replay.Client) -> None:
    run = client.start(approval, "o-1", run_id="o-1")
    info = run.wait()
    assert (info.state, info.waiting_for, info.status_text) == (
        RunState.SUSPENDED, "decision:v1", "waiting for a decision")
    result = in_thread(run.result)  # waits in the engine, through the suspension
    signalled = client.signal("o-1", "decision:v1", {"by": "ana", "at": Decimal("1.5")})
    assert signalled.run_id == "o-1" and signalled.workflow == "approval"
    assert result() == {"order": "o-1", "decision": {"by": "ana", "at": Decimal("1.5")},
                        "pid": served.pid}


def test_errors_come_back_as_the_same_classes(served: Served, client: replay.Client) -> None:
    with pytest.raises(replay.WorkflowNotRegistered) as unknown:
        client.start("refund", 1)
    message = str(unknown.value)
    assert message.startswith("workflow 'refund' is not registered with this engine "
                              "(registered: 'approval', 'echo', 'gated')")
    assert f"process {served.pid} (" in message and "replay serve" in message
    assert "--workflows connect_flows" in message
    with pytest.raises(replay.RunNotFound) as missing:
        client.status("nope")
    assert missing.value.run_id == "nope"
    client.start(approval, "o-2", run_id="o-2").wait()
    client.signal("o-2", "decision:v1", "refuse")
    with pytest.raises(replay.WorkflowFailed) as failed:
        client.result("o-2")
    assert (failed.value.run_id, failed.value.error_type, failed.value.message) == (
        "o-2", "builtins.ValueError", "order o-2 refused")
    assert "raise ValueError" in failed.value.traceback
    with pytest.raises(replay.SignalRejected, match="finished") as rejected:
        client.signal("o-2", "decision:v1", "again")
    assert (rejected.value.run_id, rejected.value.key) == ("o-2", "decision:v1")
    with pytest.raises(replay.RunIdConflict, match="already used by a run of workflow"):
        client.start(echo, run_id="o-2")
    with pytest.raises(replay.QueryError, match="only reads"):
        client.sql("DELETE FROM replay_runs")
    with pytest.raises(ValueError, match="state"):
        client.runs(state="asleep")


def test_resume_and_a_misdirected_signal(client: replay.Client,
                                         caplog: pytest.LogCaptureFixture) -> None:
    run = client.start(approval, "o-4", run_id="o-4")
    run.wait()
    resumed = client.resume("o-4")  # replays the parked run now; it parks again
    assert (resumed.run_id, resumed.workflow) == ("o-4", "approval")
    assert resumed.wait().waiting_for == "decision:v1"
    with pytest.raises(replay.RunNotFound):
        client.resume("nope")
    with caplog.at_level("WARNING", logger="replay"):
        client.signal("o-4", "other:v1", 1)  # kept in the mailbox, with a warning
    assert "other:v1" in caplog.text and "decision:v1" in caplog.text
    client.signal("o-4", "decision:v1", "accept")
    assert run.result()["decision"] == "accept"


def test_bad_arguments_fail_before_anything_is_sent(client: replay.Client) -> None:
    with pytest.raises(replay.EncodingError, match="input"):
        client.start(echo, object(), run_id="never")
    with pytest.raises(replay.RunNotFound):
        client.status("never")
    with pytest.raises(TypeError, match="run_id must be a str"):
        client.status(17)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="workflow must be a workflow function"):
        client.start(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="above 0"):
        client.wait("o-1", timeout=0)
    with pytest.raises(ValueError, match="above 0"):
        replay.connect("x.duckdb", timeout=-1)


def test_runs_and_sql(client: replay.Client) -> None:
    client.start(echo, 1, run_id="listed-1").result()
    listed = client.runs(workflow="echo", limit=1000)
    assert "listed-1" in {info.run_id for info in listed}
    assert all(info.workflow == "echo" for info in listed)
    assert [info.run_id for info in client.runs(state="completed", limit=1)] != []
    rows = client.sql("SELECT run_id, state, output_json FROM replay_runs WHERE run_id = ?",
                      ["listed-1"])
    assert rows[0][:2] == ("listed-1", "completed")
    assert client.sql("SELECT range FROM range(1234)") == [(i,) for i in range(1234)]


def test_a_wait_with_a_timeout_gives_up_and_the_run_goes_on(client: replay.Client) -> None:
    run = client.start(approval, "o-3", run_id="o-3")
    with pytest.raises(TimeoutError, match=r"took longer than 0\.05 s; the run goes on"):
        run.result(timeout=0.05)
    client.signal("o-3", "decision:v1", "accept")
    assert run.result()["decision"] == "accept"


def test_four_processes_and_many_threads_share_one_engine(
        served: Served, client: replay.Client) -> None:
    children = [subprocess.Popen([sys.executable, str(HERE / "connect_child.py"), served.db,
                                  f"p{n}", "4", "5"], stdout=subprocess.PIPE, text=True)
                for n in range(4)]
    # Meanwhile, 16 threads of this process start and signal runs on one client.
    def one(n: int) -> object:
        run = client.start(approval, f"local-{n}", run_id=f"local-{n}")
        run.wait()
        client.signal(run.run_id, "decision:v1", "accept")
        return run.result()["pid"]

    joins = [in_thread(one, n) for n in range(16)]
    assert {join() for join in joins} == {served.pid}
    reports = []
    for child in children:
        out, _ = child.communicate(timeout=LINE_TIMEOUT)
        assert child.returncode == 0
        reports.append(json.loads(out))
    assert all(report["pids"] == [served.pid] for report in reports)
    done = {run_id for report in reports for run_id in report["done"]}
    assert len(done) == 4 * 4 * (5 + 1)
    counted = client.sql("SELECT count(*) FROM replay_runs WHERE state = 'completed' AND "
                         "regexp_matches(run_id, '^p[0-3]-t[0-3]-')")
    assert counted == [(len(done),)]


def test_the_asyncio_client(served: Served) -> None:
    async def main() -> None:
        async with replay.connect_async(served.db) as client:
            assert client.pid == served.pid
            run = await client.start(approval, "a-1", run_id="a-1")
            assert (await run.wait()).state == RunState.SUSPENDED
            # Many waits at once, no thread each: the engine answers them all.
            waiting = [asyncio.create_task(client.result("a-1")) for _ in range(200)]
            await client.signal("a-1", "decision:v1", "accept")
            outputs = await asyncio.gather(*waiting)
            assert {output["pid"] for output in outputs} == {served.pid}
            with pytest.raises(replay.WorkflowNotRegistered, match=f"process {served.pid}"):
                await client.start("refund")
            with pytest.raises(TimeoutError, match="took longer than"):
                await client.result((await client.start(approval, "a-2")).run_id,
                                    timeout=0.05)
            assert [row[0] for row in await client.sql("SELECT 41 + 1")] == [42]
            assert "a-1" in {info.run_id for info in await client.runs()}
        with pytest.raises(replay.EngineClosed, match="this client is closed"):
            await client.status("a-1")
        again = await replay.connect_async(served.db)
        assert (await again.get_run("a-1")).workflow == "approval"

    asyncio.run(main())


def test_without_an_engine_a_client_says_to_start_one(tmp_path: Path) -> None:
    db = str(tmp_path / "none.duckdb")
    with pytest.raises(replay.EngineClosed, match=(
            r"^no engine serves '.*none.duckdb': there is no socket '.*none.duckdb.sock'; "
            r"start one with `replay serve .*none.duckdb --workflows MODULE`")):
        replay.connect(db)
    # A socket left by an engine that died refuses connections.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(socket_path(db))
    stale.close()
    with pytest.raises(replay.EngineClosed, match="refuses connections"):
        replay.connect(db)
    with pytest.raises(replay.EngineClosed, match="refuses connections"):
        asyncio.run(_connect_async(db))


async def _connect_async(db: str) -> replay.AsyncClient:
    return await replay.connect_async(db)


def test_a_closed_client_refuses_calls(served: Served) -> None:
    client = replay.connect(served.db)
    client.close()
    with pytest.raises(replay.EngineClosed, match="this client is closed"):
        client.status("o-1")


def test_a_client_refuses_an_engine_of_another_user(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_transport, "peer_uid", lambda sock: 4242)
    with pytest.raises(PermissionError, match=(
            rf"is served by uid 4242, not by you \(uid {os.geteuid()}\); refusing to talk "
            "to it: connect as the user that runs the engine")):
        replay.connect(served.db)


OTHER_USER = """
import sys
import replay
try:
    replay.connect(sys.argv[1])
except PermissionError as error:
    print(error)
"""


def _as_nobody(python: str, *args: str) -> subprocess.CompletedProcess[str]:
    # The project and its dependencies, for an interpreter that may not be this one.
    path = [str(Path(replay.__file__).resolve().parent.parent),
            *(entry for entry in sys.path if entry.endswith("site-packages"))]
    return subprocess.run([python, *args], capture_output=True, text=True, timeout=60,
                          user=NOBODY, cwd="/", env={"PATH": os.environ.get("PATH", ""),
                                                     "PYTHONPATH": os.pathsep.join(path)})


def _interpreter_for_nobody() -> str | None:
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if candidate is None:
            continue
        try:
            if _as_nobody(candidate, "-c", "import replay").returncode == 0:
                return candidate
        except OSError:
            continue
    return None


def test_another_user_cannot_connect(served: Served) -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to run a process as another user")
    python = _interpreter_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter that another user may run with replay")
    path = socket_path(served.db)
    denied = _as_nobody(python, "-c", OTHER_USER, served.db)
    assert denied.stdout == (f"cannot use the engine's channel {path!r}: permission denied; "
                             "it serves only the user that runs the engine: connect as that "
                             "user\n"), denied.stderr
    os.chmod(path, 0o666)  # even then, the client checks the engine's uid (and it, ours)
    try:
        refused = _as_nobody(python, "-c", OTHER_USER, served.db)
    finally:
        os.chmod(path, 0o600)
    assert refused.stdout == (f"{path!r} is served by uid {os.geteuid()}, not by you (uid "
                              f"{NOBODY}); refusing to talk to it: connect as the user "
                              "that runs the engine\n"), refused.stderr


# -- the server's side, in this process under the virtual clock --


def _handlers() -> int:
    """How many connections the engine's channel is serving right now."""
    count, nurseries = 0, list(trio.lowlevel.current_root_task().child_nurseries)
    while nurseries:
        for task in nurseries.pop().child_tasks:
            count += task.name.endswith("ChannelServer._handle")
            nurseries.extend(task.child_nurseries)
    return count


def _request(db: str, **fields: object) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(socket_path(db))
    sock.sendall(dump_message({"protocol": PROTOCOL, "op": "call", **fields}))
    return sock


def _answer(sock: socket.socket) -> dict[str, object]:
    with sock, sock.makefile("rb") as answer:
        return load_message(answer.readline())


async def test_the_engine_stops_waiting_when_the_client_hangs_up(db: str) -> None:
    async with replay.open_engine(db, workflows=[approval], durability="none") as engine:
        await (await engine.start(approval, "x", run_id="x")).wait()
        sock = _request(db, method="result", run_id="x")
        await trio.testing.wait_all_tasks_blocked()
        assert _handlers() == 1
        sock.close()
        await trio.testing.wait_all_tasks_blocked()
        assert _handlers() == 0


async def test_an_engine_that_stops_tells_waiting_clients(db: str) -> None:
    async with replay.open_engine(db, workflows=[approval], durability="none") as engine:
        await (await engine.start(approval, "x", run_id="x")).wait()
        sock = _request(db, method="wait", run_id="x")
        result = _request(db, method="result", run_id="x")
        await trio.testing.wait_all_tasks_blocked()
        assert _handlers() == 1  # the wait answered at once: the run is suspended
    assert _answer(sock)["info"]["state"] == "suspended"  # type: ignore[index]
    error = _answer(result)["error"]
    assert error["type"] == "EngineClosed"  # type: ignore[index]
    assert "stopped while waiting; the run is safe in the file" in error["message"]  # type: ignore[index]


async def test_runs_come_in_chunks(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_channel_calls, "RUNS_CHUNK_BYTES", 1)  # one run per message
    async with replay.open_engine(db, workflows=[echo], durability="none") as engine:
        for n in range(3):
            await (await engine.start(echo, n, run_id=f"e-{n}")).result()
        client = replay.Client(db)  # no call yet: nothing contacted
        listed = await trio.to_thread.run_sync(client.runs)
    assert sorted(info.run_id for info in listed) == ["e-0", "e-1", "e-2"]
    assert {info.output["values"] for info in listed} == {(0,), (1,), (2,)}


@pytest.mark.parametrize(("fields", "kind", "message"), [
    ({"method": "drop"}, "ProtocolError", "unknown call method 'drop'; this engine"),
    ({"method": "start", "workflow": "approval", "args": [1]}, "ProtocolError",
     "the request's 'args' must be a recorded value ($bytes)"),
    ({"method": "start", "workflow": "approval", "args": {"$bytes": "AAAA"}},
     "EncodingError", ""),
    ({"method": "status", "run_id": ["x"]}, "ProtocolError",
     "the request's 'run_id' must be a string, not list"),
])
async def test_malformed_calls_get_an_error_answer(db: str, fields: dict[str, object],
                                                   kind: str, message: str) -> None:
    async with replay.open_engine(db, workflows=[approval], durability="none"):
        sock = _request(db, **fields)
        await trio.testing.wait_all_tasks_blocked()
        error = _answer(sock)["error"]
    assert error["type"] == kind and error["message"].startswith(message)  # type: ignore[index]

