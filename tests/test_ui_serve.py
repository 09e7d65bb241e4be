"""Serving the web view over real sockets (issue 17): `replay ui` and `open_engine(ui=)`.

``replay ui`` runs as a process of its own, against a file no engine holds (it opens
the file per request, so an engine may open it meanwhile), against an engine in a
third process (tests/cli_engine_child.py), reached over the live channel, and against
a PostgreSQL database, which it reads directly whether or not an engine runs on it.
Nothing here sleeps: the tests wait for the lines the processes print, and for HTTP
answers.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from test_cli_live import Live, live  # noqa: F401  (the engine in another process)
from test_ui_app import message, token

import replay
import replay.aio
import replay.sync
from replay import Step, Suspend
from replay._cli import main
from replay._engine._clock import in_thread
from replay._ui._examples import POSTGRES_EXAMPLES

LINE = re.compile(r"^replay ui: serving (\S+) at (http://127\.0\.0\.1:\d+/) "
                  r"\((live: engine pid \d+|file: no engine is running|"
                  r"database: read directly, no live updates)\)$")


def fetch(n: int) -> dict[str, int]:
    return {"n": n}


@replay.workflow(name="approval")
def approval(n: int) -> Generator[Any, Any, Any]:
    yield Step("fetch:v1", fetch, n)
    decision = yield Suspend("approval:v1", status="waiting for a manager")
    return {"n": n, "approved": decision}


def make_file(db: str) -> None:
    async def fill() -> None:
        async with replay.open_engine(db, workflows=[approval], durability="none") as engine:
            for run_id in ("o-1", "o-2"):
                await (await engine.start(approval, 1, run_id=run_id)).wait()
    trio.run(fill)


class Server:
    """A `replay ui` process and the URL it printed."""

    def __init__(self, db: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "replay", "ui", db, "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        assert ready, "replay ui printed nothing within 60 s"
        self.line = self.process.stdout.readline().rstrip("\n")
        match = LINE.match(self.line)
        assert match is not None, (self.line, self.process.stderr.read() if
                                   self.process.poll() is not None else "")
        self.url = match.group(2)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def stop(self, how: int = signal.SIGTERM) -> int:
        self.client.close()
        self.process.send_signal(how)
        return self.process.wait(timeout=60)


@pytest.fixture
def server_of() -> Iterator[Any]:
    started: list[Server] = []

    def start(db: str) -> Server:
        started.append(Server(db))
        return started[-1]

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        for stream in (server.process.stdout, server.process.stderr):
            if stream is not None:
                stream.close()


def test_ui_command_serves_a_file_no_engine_holds(db: str, server_of: Any) -> None:
    make_file(db)
    server = server_of(db)
    assert server.line.startswith(f"replay ui: serving {db} at http://127.0.0.1:")
    assert server.line.endswith("(file: no engine is running)")
    runs = server.client.get("/").text
    assert re.findall(r'<tr data-run-id="([^"]+)"', runs) == ["o-2", "o-1"]
    assert 'id="live" data-live="off"' in runs
    page = server.client.get("/run", params={"id": "o-1"}).text
    assert 'data-state="suspended"' in page
    assert server.client.get("/run/events", params={"id": "o-1"}).status_code == 204
    # A signal is stored in the run's mailbox, as `replay signal` stores it.
    stored = server.client.post("/run/signal", data={"csrf": token(page), "id": "o-1",
                                                     "key": "approval:v1", "payload": "true"})
    assert stored.status_code == 303
    shown = server.client.get(stored.headers["location"]).text
    assert message(shown) == ("ok", "signal for 'approval:v1' stored in run 'o-1''s mailbox; "
                              "no engine holds the file, so the run takes it when an engine "
                              "next opens the file")
    refused = server.client.post("/run/resume", data={"csrf": token(page), "id": "o-2"})
    assert refused.status_code == 409
    assert message(refused.text)[1].startswith("resume needs the workflow code, and no "
                                               "engine holds")
    refused_sql = server.client.post("/sql", data={"csrf": token(page),
                                                   "query": "DELETE FROM replay_event_log"})
    assert refused_sql.status_code == 400
    assert "the SQL page only reads" in message(refused_sql.text)[1]

    # The file is not held between requests: an engine opens it and takes the signal.
    async def take() -> Any:
        async with replay.open_engine(db, workflows=[approval], durability="none") as engine:
            return await engine.get_run("o-1").result()
    assert trio.run(take) == {"n": 1, "approved": True}
    assert 'data-state="completed"' in server.client.get("/run", params={"id": "o-1"}).text
    assert server.stop(signal.SIGINT) == 0


def test_ui_command_reads_a_postgres_database_directly(pg_url: str, server_of: Any) -> None:
    make_file(pg_url)
    server = server_of(pg_url)
    assert server.line.startswith(f"replay ui: serving {pg_url} at http://127.0.0.1:")
    assert server.line.endswith("(database: read directly, no live updates)")
    runs = server.client.get("/").text
    assert re.findall(r'<tr data-run-id="([^"]+)"', runs) == ["o-2", "o-1"]
    assert 'id="live" data-live="off"' in runs
    assert "read directly: reload the page to see what changed" in runs
    page = server.client.get("/run", params={"id": "o-1"}).text
    assert 'data-state="suspended"' in page
    assert server.client.get("/run/events", params={"id": "o-1"}).status_code == 204
    # The SQL page offers, and runs, PostgreSQL's versions of the cookbook's queries.
    sql_page = server.client.get("/sql").text
    assert 'data-dialect="postgres"' in sql_page
    for title, query in POSTGRES_EXAMPLES:
        answer = server.client.post("/sql", data={"csrf": token(page), "query": query})
        assert answer.status_code == 200, (title, message(answer.text))
    refused_sql = server.client.post("/sql", data={"csrf": token(page),
                                                   "query": "SELECT * FROM replay_event_log"})
    assert refused_sql.status_code == 400
    assert "the SQL page only reads the views" in message(refused_sql.text)[1]
    # With no engine on it, a signal is stored for the next engine, as `replay signal`
    # stores it; resuming needs an engine, which this page cannot reach.
    stored = server.client.post("/run/signal", data={"csrf": token(page), "id": "o-1",
                                                     "key": "approval:v1", "payload": "true"})
    assert stored.status_code == 303
    shown = server.client.get(stored.headers["location"]).text
    assert message(shown) == ("ok", "signal for 'approval:v1' stored in run 'o-1''s mailbox; "
                              "no engine runs on the database, so the run takes it when an "
                              "engine next opens the database")
    refused = server.client.post("/run/resume", data={"csrf": token(page), "id": "o-2"})
    assert refused.status_code == 409
    assert message(refused.text)[1].startswith("resume needs the workflow code, and this "
                                               "page reads the PostgreSQL database")

    # While an engine runs on the database, the page still reads it (what it shows is
    # what the engine recorded), and queues signals and cancellations for the engine.
    async def beside_an_engine() -> None:
        async with replay.open_engine(pg_url, workflows=[approval],
                                      durability="none") as engine:
            assert await engine.get_run("o-1").result() == {"n": 1, "approved": True}
            seen = await in_thread(server.client.get, "/run?id=o-1")
            assert 'data-state="completed"' in seen.text
            await (await engine.start(approval, 3, run_id="o-3")).wait()
            for run_id, action, fields in (
                    ("o-2", "signal", {"key": "approval:v1", "payload": "1"}),
                    ("o-3", "cancel", {"reason": "no"})):
                answer = await in_thread(functools.partial(
                    server.client.post, f"/run/{action}",
                    data={"csrf": token(page), "id": run_id, **fields}))
                assert answer.status_code == 303, action
                said = await in_thread(server.client.get, answer.headers["location"])
                assert message(said.text)[0] == "ok", action
                assert " queued " in message(said.text)[1], action
                assert "an engine runs on the database" in message(said.text)[1], action
            with trio.fail_after(30):
                assert await engine.get_run("o-2").result() == {"n": 1, "approved": 1}
                await engine.get_run("o-3").wait(replay.RunState.CANCELLED)
    trio.run(beside_an_engine)
    assert server.stop(signal.SIGINT) == 0


def test_ui_command_works_through_an_engine_in_another_process(
        live: Live, server_of: Any) -> None:  # noqa: F811
    server = server_of(live.db)
    assert re.search(r"\(live: engine pid \d+\)$", server.line)
    runs = server.client.get("/").text
    assert 'id="live" data-live="on"' in runs
    assert set(re.findall(r'<tr data-run-id="([^"]+)"', runs)) >= {"a1", "a2", "f1", "n1",
                                                                   "c1"}
    page = server.client.get("/run", params={"id": "a2"}).text
    after = re.search(r'data-last-seq="(\d+)"', page).group(1)
    with httpx.Client(base_url=server.url, timeout=60) as watcher, watcher.stream(
            "GET", "/run/events", params={"id": "a2", "after": after}) as stream:
        lines = stream.iter_lines()
        assert next(lines) == ": watching"
        sent = server.client.post("/run/signal", data={"csrf": token(page), "id": "a2",
                                                       "key": "approval:v1",
                                                       "payload": '"yes"'})
        assert sent.status_code == 303
        seen = []
        for line in lines:
            seen.append(line)
            if line == "event: end":
                break
    ids = [int(line[4:]) for line in seen if line.startswith("id: ")]
    assert ids == sorted(ids) and ids[0] > int(after)
    assert any('"run/completed"' in line for line in seen)
    resumed = server.client.post("/run/resume", data={"csrf": token(page), "id": "f1"})
    assert resumed.status_code == 303
    said = message(server.client.get(resumed.headers["location"]).text)
    assert said[0] == "ok" and said[1].startswith("resumed run 'f1' (failed -> ")
    live.say("wait f1")
    live.expect("done f1 completed")
    assert server.stop() == 0


async def test_open_engine_serves_the_web_view(db: str) -> None:
    async with replay.open_engine(db, workflows=[approval], durability="none",
                                  ui=("127.0.0.1", 0)) as engine:
        assert engine.ui_url is not None
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", engine.ui_url)
        await (await engine.start(approval, 3, run_id="o-3")).wait()
        answer = await in_thread(lambda: httpx.get(engine.ui_url + "run?id=o-3", timeout=60))
        assert answer.status_code == 200 and 'data-state="suspended"' in answer.text
        assert 'id="live" data-live="on"' in answer.text
    async with replay.open_engine(db, workflows=[approval], durability="none") as engine:
        assert engine.ui_url is None


async def test_open_engine_checks_the_ui_address(db: str) -> None:
    for bad, kind in ((8077, TypeError), (("127.0.0.1", "8077"), TypeError),
                      (("", 8077), ValueError), (("127.0.0.1", 70000), ValueError)):
        with pytest.raises(kind, match=r"^ui must "):
            async with replay.open_engine(db, workflows=[approval], ui=bad):
                pass
    assert not os.path.exists(db)


def test_sync_engine_forwards_ui(db: str) -> None:
    with replay.sync.open_engine(db, workflows=[approval], durability="none",
                                 ui=("127.0.0.1", 0)) as engine:
        assert engine.ui_url is not None
        assert httpx.get(engine.ui_url, timeout=60).status_code == 200


def test_aio_engine_forwards_ui(db: str) -> None:
    async def main() -> int:
        async with replay.aio.open_engine(db, workflows=[approval], durability="none",
                                          ui=("127.0.0.1", 0)) as engine:
            assert engine.ui_url is not None
            async with httpx.AsyncClient(timeout=60) as client:
                return (await client.get(engine.ui_url + "sql")).status_code
    assert asyncio.run(main()) == 200


@pytest.fixture
def no_hypercorn(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "hypercorn" or name.startswith("hypercorn."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "hypercorn", None)  # import hypercorn fails


async def test_open_engine_without_hypercorn_says_what_to_install(
        db: str, no_hypercorn: None) -> None:
    with pytest.raises(ModuleNotFoundError, match=r'install the ui extra: pip install '
                       r'"replay-workflows\[ui\]"$'):
        async with replay.open_engine(db, workflows=[approval], ui=("127.0.0.1", 0)):
            pass
    assert not os.path.exists(db)  # refused before the file was opened
    async with replay.open_engine(db, workflows=[approval], durability="none") as engine:
        assert engine.ui_url is None  # everything else works without it


def test_ui_command_without_hypercorn_says_what_to_install(
        db: str, no_hypercorn: None, capsys: pytest.CaptureFixture[str]) -> None:
    make_file(db)
    assert main(["ui", db, "--port", "0"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("replay ui: the web view needs hypercorn, which is not installed")
    assert err.endswith('install the ui extra: pip install "replay-workflows[ui]"\n')


def test_ui_command_without_a_database(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nothing.duckdb")
    assert main(["ui", missing, "--port", "0"]) == 1
    assert capsys.readouterr().err.startswith(f"replay ui: no database at {missing!r}")
    assert main(["ui", missing, "--port", "99999"]) == 2


def test_ui_command_on_a_taken_port_says_so_in_one_line(
        db: str, capsys: pytest.CaptureFixture[str]) -> None:
    make_file(db)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", db, "--port", str(port)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"replay ui: cannot serve at 127.0.0.1:{port}: ")
    assert err.endswith("pick another --port (0: any free one)\n")
    assert err.count("\n") == 1


async def test_open_engine_on_a_taken_port_raises_os_error(db: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            async with replay.open_engine(db, workflows=[approval], ui=("127.0.0.1", port)):
                pass
