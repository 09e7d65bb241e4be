"""The engine's side of the live channel, in one process under the virtual clock.

`open_engine` serves the `replay` command on ``<db>.sock`` by default (`serve_cli`),
replaces a stale socket, removes its own on close, and runs without one when it cannot
create it. The command runs in a worker thread here, as it would in another process.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import replay
from replay import Step
from replay._channel import _client as client
from replay._channel._protocol import short_address, socket_path
from replay._cli import main


def double(x: int) -> int:
    return 2 * x


@replay.workflow(name="doubler")
def doubler(x: int):  # type: ignore[no-untyped-def]
    doubled = yield Step("double:v1", double, x)
    return doubled


async def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = await trio.to_thread.run_sync(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


async def test_the_engine_serves_the_command_while_it_holds_the_file(
        db: str, capsys: pytest.CaptureFixture[str]) -> None:
    sock = socket_path(db)
    async with replay.open_engine(db, workflows=[doubler], durability="none") as engine:
        assert os.path.exists(sock)
        await (await engine.start(doubler, 21, run_id="d1")).result()
        code, out, err = await run_cli(capsys, "sql", db, "SELECT run_id, output_json "
                                       "FROM replay_runs", "--json")
        assert (code, err) == (0, "")
        assert json.loads(out) == [{"run_id": "d1", "output_json": 42}]
        # Answers come in chunks of a few hundred rows.
        code, out, _ = await run_cli(capsys, "sql", db, "SELECT range AS i FROM range(1234)",
                                     "--json")
        assert [row["i"] for row in json.loads(out)] == list(range(1234))
    assert not os.path.exists(sock)


async def test_serve_cli_false_serves_nothing(db: str) -> None:
    async with replay.open_engine(db, workflows=[doubler], serve_cli=False):
        assert not os.path.lexists(socket_path(db))


async def test_serve_cli_must_be_a_bool(db: str) -> None:
    with pytest.raises(TypeError, match=r"^serve_cli must be a bool, got 'yes' \(str\)$"):
        async with replay.open_engine(db, workflows=[doubler], serve_cli="yes"):  # type: ignore[arg-type]
            pass


async def test_a_stale_socket_is_replaced(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    stale = socket.socket(socket.AF_UNIX)
    with short_address(socket_path(db)) as address:  # tmp paths can be long
        stale.bind(address)
    stale.close()
    async with replay.open_engine(db, workflows=[doubler], durability="none") as engine:
        await engine.start(doubler, 1, run_id="d1")
        code, out, _ = await run_cli(capsys, "runs", db, "--json")
        assert code == 0 and json.loads(out)[0]["run_id"] == "d1"
    assert not os.path.lexists(socket_path(db))


async def test_without_a_socket_the_engine_runs_and_says_why(
        db: str, caplog: pytest.LogCaptureFixture) -> None:
    Path(socket_path(db)).write_text("not a socket")
    with caplog.at_level(logging.WARNING, logger="replay"):
        async with replay.open_engine(db, workflows=[doubler], durability="none") as engine:
            assert await (await engine.start(doubler, 2)).result() == 4
    assert Path(socket_path(db)).read_text() == "not a socket"
    assert [record.getMessage() for record in caplog.records] == [
        f"the replay command cannot reach this engine while it runs: cannot create "
        f"{socket_path(db)} ({socket_path(db)!r} exists and is not a socket); it can still "
        "read the file once the engine stops"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc/self/fd")
async def test_a_socket_path_longer_than_a_unix_address_works(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    db = str(deep / "long.duckdb")
    async with replay.open_engine(db, workflows=[doubler], durability="none") as engine:
        await engine.start(doubler, 3, run_id="long")
        code, out, _ = await run_cli(capsys, "runs", db)
        assert code == 0 and out.splitlines()[1].startswith("long")


def test_the_command_refuses_a_socket_it_may_not_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "x.duckdb")
    Path(socket_path(db)).touch()

    def denied(self: socket.socket, address: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket.socket, "connect", denied)
    with pytest.raises(client.ChannelError, match=(
            r"^cannot use the engine's channel '.*x.duckdb.sock': permission denied; it "
            r"serves only the user that runs the engine: run replay as that user$")):
        client.connect(db)


async def test_the_command_refuses_an_engine_of_another_user(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "peer_uid", lambda sock: 4242)
    async with replay.open_engine(db, workflows=[doubler], durability="none"):
        with pytest.raises(client.ChannelError, match=(
                rf"^'.*test.duckdb.sock' is served by uid 4242, not by you \(uid "
                rf"{os.geteuid()}\); refusing to talk to it: run replay as the user that "
                r"runs the engine$")):
            await trio.to_thread.run_sync(client.connect, db)


async def test_sql_arrow_returns_an_arrow_table(db: str) -> None:
    pytest.importorskip("pyarrow")
    async with replay.open_engine(db, workflows=[doubler], durability="none") as engine:
        await (await engine.start(doubler, 5, run_id="d5")).result()
        table = await engine.sql_arrow(
            "SELECT run_id, output_json, created_at FROM replay_runs WHERE run_id = ?", ["d5"])
        assert table.column_names == ["run_id", "output_json", "created_at"]
        assert table.to_pylist()[0]["output_json"] == "10"
        assert str(table.schema.field("created_at").type).startswith("timestamp[us, tz=")
        with pytest.raises(replay.QueryError, match=r"^engine.sql\(\) only reads: DELETE"):
            await engine.sql_arrow("DELETE FROM replay_event_log")


async def test_sql_arrow_without_pyarrow_says_what_to_install(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyarrow" else real(name, *a))
    async with replay.open_engine(db, workflows=[doubler], durability="none") as engine:
        with pytest.raises(ModuleNotFoundError, match=(
                r"^engine.sql_arrow\(\) needs pyarrow, which is not installed; pip install "
                r"pyarrow \(or replay-workflows\[arrow\]\), or use engine.sql\(\)$")):
            await engine.sql_arrow("SELECT 1")
