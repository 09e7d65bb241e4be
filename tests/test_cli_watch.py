"""`replay watch`: a run's updates printed live from another terminal.

The engine runs in a child process (tests/watch_engine_child.py) in real time, and
`replay watch` in another (``python -m replay watch``), so Ctrl-C and the exit status
are real. Nothing sleeps: the tests wait for the lines each process prints.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from replay._cli import main

HERE = Path(__file__).resolve().parent
LINE_TIMEOUT = 30.0


_LINES: dict[int, queue.Queue[str]] = {}
_PUMPS: dict[int, threading.Thread] = {}


def next_line(process: subprocess.Popen[str]) -> str:
    """The process's next stdout line (read by a thread: lines may arrive together)."""
    if process.pid not in _LINES:
        lines = _LINES[process.pid] = queue.Queue()
        stdout = process.stdout
        assert stdout is not None

        def pump() -> None:
            for line in iter(stdout.readline, ""):
                lines.put(line)
            lines.put("")  # the end of its output

        _PUMPS[process.pid] = threading.Thread(target=pump, daemon=True)
        _PUMPS[process.pid].start()
    try:
        return _LINES[process.pid].get(timeout=LINE_TIMEOUT).rstrip("\n")
    except queue.Empty:
        pytest.fail(f"nothing printed within {LINE_TIMEOUT} s")


@dataclass
class Engine:
    db: str
    process: subprocess.Popen[str]

    def ask(self, command: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return next_line(self.process)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    db = str(tmp_path / "app.duckdb")
    process = subprocess.Popen([sys.executable, str(HERE / "watch_engine_child.py"), db],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert next_line(process) == "ready"
        yield Engine(db, process)
    finally:
        process.kill()
        process.wait()
        close(process)


def watching(db: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "replay", "watch", db, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait for `replay watch` to end: its status, the lines not read yet, its stderr."""
    assert process.stderr is not None
    try:  # before reading stderr, which would wait for ever for a process that goes on
        code = process.wait(timeout=LINE_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        close(process)
        pytest.fail(f"replay watch did not end within {LINE_TIMEOUT} s")
    err = process.stderr.read()  # its few lines fit the pipe: the process did not wait on it
    rest = []
    while (line := next_line(process)) != "":
        rest.append(line)
    close(process)
    return code, "".join(f"{line}\n" for line in rest), err


def close(process: subprocess.Popen[str]) -> None:
    """Close the pipes of an ended process, once its stdout's reader is done."""
    if process.pid in _PUMPS:
        _PUMPS.pop(process.pid).join(LINE_TIMEOUT)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_watched_run_suspends_is_signalled_by_another_client_and_completes(
        capsys: pytest.CaptureFixture[str], engine: Engine) -> None:
    assert engine.ask("start w1 2") == "started w1"
    watch = watching(engine.db, "w1")
    first = next_line(watch)
    assert first.split("  ")[1:] == ["w1", "now", "suspended on approval:v1",
                                      '"waiting for a manager"']
    assert cli(capsys, "signal", engine.db, "w1", "approval:v1", '"yes"')[0] == 0
    code, out, err = finish(watch)
    lines = [line.split("  ")[1:] for line in out.splitlines()]
    assert lines == [["w1", "signal/signalled approval:v1", "running", '"2 of 2"'],
                     ["w1", "run/completed", 'completed → "yes"', '"2 of 2"']]
    assert (code, err) == (0, "")


def test_json_lines_from_the_first_event_resume_exactly_after_a_seq(
        capsys: pytest.CaptureFixture[str], engine: Engine) -> None:
    assert engine.ask("start w1 2") == "started w1"
    watch = watching(engine.db, "w1", "--after-seq", "0", "--json")
    seen = [json.loads(next_line(watch)) for _ in range(6)]  # started, 2 x (step, note), suspended
    assert [u["seq"] for u in seen] == list(range(1, 7))
    assert seen[2]["event"]["kind"] == "note"
    assert seen[2]["info"]["status_value"] == {"done": 1, "of": 2}
    assert seen[2]["info"]["status_text"] == "1 of 2"
    assert seen[-1]["info"]["state"] == "suspended"
    assert cli(capsys, "signal", engine.db, "w1", "approval:v1", '{"ok": 1}')[0] == 0
    code, out, err = finish(watch)
    rest = [json.loads(line) for line in out.splitlines()]
    assert (code, err) == (0, "")
    assert rest[-1]["info"]["output"] == {"ok": 1} and rest[-1]["event"]["event"] == "completed"
    everything = seen + rest
    code, shown, _ = cli(capsys, "show", engine.db, "w1", "--json")
    assert [u["seq"] for u in everything] == [e["seq"] for e in json.loads(shown)["events"]]
    # Resuming after event 4 gives exactly the events after it, live from the engine.
    code, out, err = cli(capsys, "watch", engine.db, "w1", "--after-seq", "4", "--json")
    assert (code, err) == (0, "")
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [
        u["seq"] for u in everything[4:]]


def test_ctrl_c_hangs_up_and_leaves_no_watcher(engine: Engine) -> None:
    assert engine.ask("start w1 1") == "started w1"
    watch = watching(engine.db, "w1")
    assert "now  suspended on approval:v1" in next_line(watch)
    assert engine.ask("watchers") == "watchers 1"
    watch.send_signal(signal.SIGINT)
    code, _, _ = finish(watch)
    assert code == 130
    assert engine.ask("watchers") == "watchers 0"


def test_the_engine_closing_ends_the_watch(engine: Engine) -> None:
    assert engine.ask("start w1 1") == "started w1"
    watch = watching(engine.db, "w1")
    assert "suspended" in next_line(watch)
    assert engine.ask("quit") == "closed"
    code, out, err = finish(watch)
    assert (code, out) == (1, "")
    assert err.startswith(f"replay watch: the engine serving {engine.db!r} stopped; nothing "
                          "more comes from it")
    assert "--after-seq" in err


def test_unknown_run_live_and_offline(capsys: pytest.CaptureFixture[str],
                                      engine: Engine) -> None:
    expected = (1, "", f"replay watch: no run with run_id 'zz' in {engine.db!r}; list the "
                       f"runs with: replay runs {engine.db}\n")
    assert cli(capsys, "watch", engine.db, "zz") == expected
    assert engine.ask("quit") == "closed"
    engine.process.wait()
    assert cli(capsys, "watch", engine.db, "zz") == expected


def test_offline_it_prints_what_the_file_holds_and_says_nothing_will_change(
        capsys: pytest.CaptureFixture[str], engine: Engine) -> None:
    assert engine.ask("start w1 1") == "started w1"
    assert engine.ask("quit") == "closed"
    engine.process.wait()
    code, out, err = cli(capsys, "watch", engine.db, "w1")
    assert code == 0
    assert out.splitlines()[0].split("  ")[1:] == [
        "w1", "now", "suspended on approval:v1", '"waiting for a manager"']
    assert "no engine serves" in err and "nothing will change" in err
    code, out, err = cli(capsys, "watch", engine.db, "w1", "--after-seq", "2", "--json")
    updates = [json.loads(line) for line in out.splitlines()]
    assert [u["kind"] for u in updates] == ["event", "event", "snapshot"]
    assert [u["seq"] for u in updates[:2]] == [3, 4]
    assert updates[-1]["info"]["state"] == "suspended"
    assert cli(capsys, "watch", engine.db, "--after-seq", "2")[0] == 2
