"""The live channel under overload (issue 18, "Hardening").

Out of file descriptors, the engine keeps its channel and accepts again once some are
released; many commands at once all get answers; a command that cannot get an answer
says why, not that the holder "does not serve the replay command". The engine runs in
this process under the virtual clock; nothing sleeps in real time to wait for it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import replay
from replay import Step
from replay._channel import _client as client
from replay._channel._protocol import dump_message, load_message, short_address, socket_path
from replay._cli import main
from replay._cli._source import open_source
from replay._engine import _channel_server as server

HERE = Path(__file__).resolve().parent
HELLO = dump_message({"protocol": 1, "op": "hello"})


def double(x: int) -> int:
    return 2 * x


@replay.workflow(name="doubler")
def doubler(x: int):  # type: ignore[no-untyped-def]
    doubled = yield Step("double:v1", double, x)
    return doubled


@contextlib.contextmanager
def descriptors_used_up() -> Iterator[None]:
    """Leave this process no free file descriptor, then give them all back."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, highest + 8), hard))
    held: list[int] = []
    try:
        with contextlib.suppress(OSError):
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def connected(db: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with short_address(socket_path(db)) as address:
        sock.connect(address)
    return sock


def answer_line(sock: socket.socket) -> dict[str, Any]:
    sock.settimeout(30)
    with sock.makefile("rb") as answer:
        return load_message(answer.readline())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc/self/fd")
async def test_the_channel_accepts_again_once_file_descriptors_are_released(
        db: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    sock = socket_path(db)
    async with replay.open_engine(db, workflows=[doubler], durability="none") as engine:
        await (await engine.start(doubler, 21, run_id="d1")).result()
        waiting = connected(db)  # in the backlog: the engine needs a descriptor to accept it
        waiting.sendall(HELLO)
        caplog.set_level(logging.INFO, logger="replay")
        with descriptors_used_up():
            for _ in range(100):  # virtual time: the engine retries every 0.1 s
                if caplog.records:
                    break
                await trio.sleep(0.1)
            with pytest.raises(BlockingIOError):
                waiting.recv(1, socket.MSG_DONTWAIT)
        assert (await trio.to_thread.run_sync(answer_line, waiting))["ok"] is True
        waiting.close()
        code = await trio.to_thread.run_sync(main, ["runs", db, "--json"])
        assert (code, json.loads(capsys.readouterr().out)[0]["run_id"]) == (0, "d1")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"the replay command's channel {sock} cannot accept connections: "
                    "[Errno 24] Too many open files; retrying every 0.1 s until some are "
                    "released"),
        ("INFO", f"the replay command's channel {sock} accepts connections again")]


async def test_many_commands_at_once_all_get_answers(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = 64
    real_connect = socket.socket.connect
    calls, all_tried = itertools.count(1), threading.Event()

    def counting(self: socket.socket, address: Any) -> None:
        try:
            real_connect(self, address)
        finally:
            if next(calls) >= commands:
                all_tried.set()

    def command() -> Any:
        source = open_source(db)
        try:
            return source.query("SELECT output_json FROM replay_runs").rows()
        finally:
            source.close()

    answers: list[Any] = []
    threads = [threading.Thread(target=lambda: answers.append(_outcome(command)))
               for _ in range(commands)]
    monkeypatch.setattr(socket.socket, "connect", counting)
    async with replay.open_engine(db, workflows=[doubler], durability="none") as engine:
        await (await engine.start(doubler, 21, run_id="d1")).result()
        for thread in threads:
            thread.start()
        # Block the engine's loop until every command has connected (or failed to): they
        # all wait in the listen backlog at once.
        assert all_tried.wait(timeout=60)
        for thread in threads:
            await trio.to_thread.run_sync(thread.join)
    assert answers == [[("42",)]] * commands


def _outcome(command: Any) -> Any:
    try:
        return command()
    except Exception as error:  # reported in the assertion
        return error


def test_a_full_backlog_is_retried_with_a_growing_back_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, refusals = str(tmp_path / "x.duckdb"), iter(range(2))
    pauses: list[float] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with short_address(socket_path(db)) as address:
        listener.bind(address)
    listener.listen()
    real_connect = socket.socket.connect

    def busy_twice(self: socket.socket, address: Any) -> None:
        if next(refusals, None) is not None:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", busy_twice)
    monkeypatch.setattr(client, "_sleep", pauses.append)
    connection = client.connect(db)
    assert connection is not None and pauses == [0.01, 0.02]
    connection.close()
    listener.close()


def test_a_backlog_that_stays_full_says_the_engine_is_busy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, pauses = str(tmp_path / "x.duckdb"), list[float]()
    Path(socket_path(db)).touch()

    def busy(self: socket.socket, address: Any) -> None:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(socket.socket, "connect", busy)
    monkeypatch.setattr(client, "_sleep", pauses.append)
    with pytest.raises(client.ChannelError, match=(
            r"^the engine's channel '.*x.duckdb.sock' stayed busy: 8 tries to connect found "
            r"its backlog full; the engine is overloaded or blocked: run the command again$")):
        client.connect(db)
    assert pauses == [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64]


def test_a_refusing_socket_is_tried_three_times_then_taken_for_stale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, pauses = str(tmp_path / "x.duckdb"), list[float]()
    stale = socket.socket(socket.AF_UNIX)
    with short_address(socket_path(db)) as address:
        stale.bind(address)
    stale.close()  # the socket file stays, with nobody listening
    monkeypatch.setattr(client, "_sleep", pauses.append)
    assert client.connect(db) is None
    assert pauses == [0.01, 0.02]


def test_an_engine_that_does_not_answer_in_time_says_what_may_be_wrong(
        tmp_path: Path) -> None:
    db = str(tmp_path / "x.duckdb")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with short_address(socket_path(db)) as address:
        listener.bind(address)
    listener.listen()  # and never accepts: like an engine out of descriptors for good
    connection = client.connect(db, timeout=0.001)
    assert connection is not None
    with connection, pytest.raises(client.ChannelError, match=(
            r"^the engine did not answer within 0.001 s on '.*x.duckdb.sock': it may be "
            r"blocked or out of file descriptors \(its log says which\); run the command "
            r"again$")):
        connection.request("hello")
    listener.close()


async def test_a_channel_that_fails_for_good_refuses_and_keeps_its_socket(
        db: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def broken(self: trio.SocketListener) -> trio.SocketStream:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(trio.SocketListener, "accept", broken)
    monkeypatch.setattr(client, "_sleep", lambda seconds: None)
    sock = socket_path(db)
    with caplog.at_level(logging.WARNING, logger="replay"):
        async with replay.open_engine(db, workflows=[doubler], durability="none"):
            await trio.testing.wait_all_tasks_blocked()
            assert os.path.lexists(sock)
            assert await trio.to_thread.run_sync(client.connect, db) is None  # refused
        assert not os.path.lexists(sock)
    assert [r.getMessage() for r in caplog.records] == [
        f"the replay command's channel {sock} stopped: [Errno 22] Invalid argument"]


def test_a_holder_whose_channel_refuses_is_not_said_not_to_serve(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from replay._cli import _source as _cli_source

    monkeypatch.setattr(_cli_source, "LOCKED_GRACE_SECONDS", 0.0)
    monkeypatch.setattr(client, "_sleep", lambda seconds: None)
    db = str(tmp_path / "held.duckdb")
    refusing = socket.socket(socket.AF_UNIX)
    with short_address(socket_path(db)) as address:
        refusing.bind(address)
    refusing.close()
    holder = subprocess.Popen([sys.executable, str(HERE / "lock_holder.py"), db],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        code = main(["runs", db])
        assert (code, capsys.readouterr()) == (1, ("", (
            f"replay runs: database {db!r} is held by process {holder.pid}, and its replay "
            f"channel {socket_path(db)!r} refuses connections: the engine's channel failed "
            "(its log says why) or the engine is stopping, or the socket was left by a "
            "process that died; run the command again, or once the application stops\n")))
    finally:
        holder.kill()
        holder.wait()
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()


def test_the_backlog_is_as_large_as_the_kernel_allows() -> None:
    assert server.BACKLOG >= 4096
