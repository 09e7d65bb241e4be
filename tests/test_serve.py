"""`replay serve DB --workflows MODULE`: the engine of a file as a service for clients.

The server runs in a child process (tests/served.py) with tests/connect_flows.py; this
process is its client. Stops: SIGTERM and SIGINT stop it cleanly (exit status 0, the
socket removed, a waiting client told); SIGKILL in the middle of a client's wait gives
the client a clear `EngineClosed`, and a new server continues the runs, a step that
was running included. Then uvicorn workers as clients. Nothing sleeps to wait for the
engine; only uvicorn's start-up is polled, with a deadline.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from served import HERE, LINE_TIMEOUT, Served, in_thread, open_gate, pass_gate

import replay
from replay import RunState
from replay._channel import _transport
from replay._channel._protocol import socket_path
from replay._cli import main


class Connections:
    """Counts the connections clients of this process open to an engine."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._opened = threading.Semaphore(0)
        connected = _transport._connected

        def counting(path: str, timeout: float) -> socket.socket:
            sock = connected(path, timeout)
            self._opened.release()
            return sock

        monkeypatch.setattr(_transport, "_connected", counting)

    def wait(self, count: int) -> None:
        """Wait until `count` more connections are open (the engine has them queued)."""
        for _ in range(count):
            assert self._opened.acquire(timeout=LINE_TIMEOUT), "a client did not connect"


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> Connections:
    return Connections(monkeypatch)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    served = Served(str(tmp_path / "shop.duckdb"), tmp_path / "stderr.txt",
                    "--shutdown-timeout", "5")
    try:
        yield served.ready()
    finally:
        served.close()


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_server_cleanly(server: Served, number: int,
                                           capsys: pytest.CaptureFixture[str],
                                           connections: Connections) -> None:
    client = replay.connect(server.db)
    client.start("approval", "o-1", run_id="o-1").wait()
    connections.wait(3)  # hello, start, wait
    waiting = in_thread(client.result, "o-1")
    connections.wait(1)  # the wait's request is on its way: the engine will see it
    assert main(["runs", server.db]) == 0  # the replay command reaches it too
    assert "o-1" in capsys.readouterr().out
    assert client.status("o-1").state == RunState.SUSPENDED
    assert server.stop(number) == 0
    with pytest.raises(replay.EngineClosed, match=(
            rf"^the engine serving '.*shop.duckdb' \(process {server.pid}\) stopped while "
            "waiting; the run is safe in the file")):
        waiting()
    name = signal.Signals(number).name
    assert server.line() == f"{name} received: stopping (running steps get 5 s)"
    assert server.line() == f"stopped; {server.db} is closed"
    assert not os.path.lexists(socket_path(server.db))
    with pytest.raises(replay.EngineClosed, match="start one with `replay serve"):
        client.status("o-1")
    # The file is free: the command reads it directly.
    assert main(["runs", server.db, "--state", "suspended"]) == 0
    assert "o-1" in capsys.readouterr().out


def test_a_killed_server_fails_the_waits_and_a_new_one_continues_the_runs(
        tmp_path: Path, connections: Connections) -> None:
    db, fifo = str(tmp_path / "shop.duckdb"), str(tmp_path / "gate")
    os.mkfifo(fifo)
    first = Served(db, tmp_path / "first.txt").ready()
    try:
        client = replay.connect(db)
        client.start("approval", "o-1", run_id="o-1").wait()
        client.start("gated", fifo, run_id="g-1")
        connections.wait(4)  # hello, start, wait, start
        gate = open_gate(fifo)()  # returns once the step reads the FIFO: it is running
        suspended = in_thread(client.result, "o-1")
        running = in_thread(client.result, "g-1")
        connections.wait(2)  # both waits' requests are on their way
        first.kill()
        os.close(gate)
    finally:
        first.close()
    for waiting in (suspended, running):
        with pytest.raises(replay.EngineClosed, match=(
                rf"^the engine serving '.*shop.duckdb' \(process {first.pid}\) went away "
                r"while waiting for the result of run '(o|g)-1'( \(.*\))?: it stopped or crashed; "
                r"runs are safe in the file and continue when an engine opens it again: "
                r"restart it \(e.g. `replay serve .*shop.duckdb --workflows MODULE`\) and "
                "call again$")):
            waiting()
    with pytest.raises(replay.EngineClosed, match="refuses connections"):
        client.status("o-1")
    second = Served(db, tmp_path / "second.txt").ready()
    try:
        # The same client works again, with the new engine.
        result = in_thread(client.result, "g-1")
        pass_gate(fifo, "open")()  # the step runs again in the new engine
        assert result() == {"gate": "open", "pid": second.pid}
        client.signal("o-1", "decision:v1", "accept")
        assert client.result("o-1") == {"order": "o-1", "decision": "accept",
                                        "pid": second.pid}
        assert client.pid == second.pid
        attempts = client.sql("SELECT attempt, event FROM replay_events WHERE run_id = 'g-1' "
                              "AND key = 'gate:v1' ORDER BY seq")
        assert attempts[-1][1] == "completed" and (attempts[-1][0], "started") in attempts
        assert second.stop() == 0
    finally:
        second.close()


def test_a_second_server_on_the_same_file_is_refused(
        server: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", server.db, "--workflows", "connect_flows"]) == 1
    err = capsys.readouterr().err
    assert f"is locked by another process (PID {server.pid}: " in err
    assert "stop that engine first, or pass --lock-timeout SECONDS to wait for it" in err


@pytest.mark.parametrize(("args", "status", "message"), [
    (["--workflows", "no_such_module"], 1,
     "replay serve: cannot import --workflows module 'no_such_module'"),
    (["--workflows", "served"], 1, "replay serve: the --workflows modules (served) define no "
                                   "workflows: mark the workflow functions with "
                                   "@replay.workflow"),
    ([], 2, "the following arguments are required: --workflows"),
    (["--workflows", "connect_flows", "--shutdown-timeout", "-1"], 2,
     "expected a number of seconds >= 0, got '-1'"),
])
def test_serve_refuses_what_it_cannot_serve(tmp_path: Path, args: list[str], status: int,
                                            message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(tmp_path / "x.duckdb"), *args]) == status
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.duckdb")


def test_serve_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", ":memory:", "--workflows", "connect_flows"]) == 1
    assert "replay serve needs a database file" in capsys.readouterr().err


def test_uvicorn_workers_use_the_engine_of_replay_serve(server: Served,
                                                        tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    uds = str(tmp_path / "http.sock")
    log = (tmp_path / "uvicorn.txt").open("ab")
    app = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "connect_app:app", "--uds", uds, "--workers", "2",
         "--log-level", "warning"], cwd=HERE, stdout=log, stderr=log,
        env={**os.environ, "REPLAY_TEST_DB": server.db})
    try:
        _wait_until_up(uds, app, tmp_path / "uvicorn.txt")
        http = httpx.Client(transport=httpx.HTTPTransport(uds=uds), base_url="http://app",
                            timeout=LINE_TIMEOUT)
        assert http.get("/health").json()["engine"] == server.pid
        orders = [f"web-{n}" for n in range(12)]
        with concurrent.futures.ThreadPoolExecutor(2 * len(orders)) as pool:
            started = list(pool.map(lambda order: http.post(f"/orders/{order}").json(), orders))
            assert {answer["state"] for answer in started} == {"suspended"}
            results = [pool.submit(lambda order: http.get(f"/orders/{order}").json(), order)
                       for order in orders]
            decided = list(pool.map(
                lambda order: http.post(f"/orders/{order}/decision/accept").json(), orders))
            outputs = [future.result(timeout=LINE_TIMEOUT) for future in results]
        assert [answer["output"] for answer in outputs] == [
            {"order": order, "decision": "accept", "pid": server.pid} for order in orders]
        workers = {answer["worker"] for answer in [*started, *decided, *outputs]}
        assert workers and server.pid not in workers and app.pid not in workers
        http.close()
    finally:
        app.send_signal(signal.SIGTERM)
        try:
            app.wait(timeout=LINE_TIMEOUT)
        finally:
            if app.poll() is None:
                app.kill()
            log.close()


def _wait_until_up(uds: str, app: subprocess.Popen[bytes], log: Path) -> None:
    """Poll until uvicorn listens on its socket: the one wait for a process to start."""
    deadline = time.monotonic() + LINE_TIMEOUT
    while time.monotonic() < deadline:
        if app.poll() is not None:
            pytest.fail(f"uvicorn exited with {app.returncode}: {log.read_text()[-4000:]}")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(uds)
                return  # a worker answers the requests queued on it
            except (FileNotFoundError, ConnectionRefusedError):
                pass
        time.sleep(0.05)
    pytest.fail(f"uvicorn did not listen within {LINE_TIMEOUT:g} s: {log.read_text()[-4000:]}")
