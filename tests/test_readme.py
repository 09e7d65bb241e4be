"""README.md's and docs/getting-started.md's code works when copied (issue 10, item 5).

The README's fenced python blocks run in order, in one namespace, in an empty directory,
as a user would paste them; then every `replay ...` command and the `replay.run(...)`
call the text quotes runs against the file the example created. The getting-started
script runs in a child process that gets Ctrl-C (SIGINT) during part 3, then again to
its end, and what it prints and records is what the guide shows.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import replay
from replay._cli import main

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
COMMAND = re.compile(r"`(?P<command>replay (?:runs|show|sql|signal|resume|export) [^`]+)`")
CALL = re.compile(r"`(?P<call>replay\.run\([^`]+\))`")


def run_blocks(namespace: dict[str, Any]) -> None:
    for number, match in enumerate(BLOCK.finditer(README.read_text()), 1):
        exec(compile(match["body"], f"README.md python block {number}", "exec"), namespace)


def test_readme_blocks_run_and_the_commands_work_on_what_they_create(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    output = {"order": "o-17", "receipt": "charged 4200 for o-17 as o-17/charge:v1"}
    namespace: dict[str, Any] = {"__name__": "readme"}
    run_blocks(namespace)  # the example, then the run_workflow test
    assert capsys.readouterr().out == f"{output}\n"
    run_blocks({"__name__": "readme"})  # "Run it twice": the recorded output
    assert capsys.readouterr().out == f"{output}\n"

    commands = [match["command"] for match in COMMAND.finditer(README.read_text())]
    assert len(commands) == 3
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command
        out, err = capsys.readouterr()
        assert err == "", command
        assert "o-17" in out or "charge:v1" in out, command

    calls = [match["call"] for match in CALL.finditer(README.read_text())]
    assert calls == ['replay.run(checkout, "o-17", db="shop.duckdb", run_id="o-17", '
                     'resume=True)']
    assert eval(calls[0], {"replay": replay, "checkout": namespace["checkout"]}) == output


# -- docs/getting-started.md: Ctrl-C, run again, look at the history --

GUIDE = README.parent / "docs" / "getting-started.md"
TEXT = re.compile(r"^```text\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)


def guide_blocks(pattern: re.Pattern[str]) -> list[str]:
    return [match["body"] for match in pattern.finditer(GUIDE.read_text())]


def shown(text: str) -> list[tuple[str, ...]]:
    """The EVENT, KEY and ATTEMPT columns of `replay show`'s timeline (not the times)."""
    rows = text.split("\nAT ")[1].splitlines()[1:]
    return [tuple(row.split()[1:4]) for row in rows]


def test_getting_started_ctrl_c_story_is_what_happens(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    first, look = guide_blocks(BLOCK)[:2]
    assert "time.sleep(1)" in first
    script = tmp_path / "first_workflow.py"
    script.write_text(first.replace("time.sleep(1)", "time.sleep(0.5)"))
    child = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    lines = [child.stdout.readline() for _ in range(4)]
    child.send_signal(signal.SIGINT)  # during part 3
    assert child.wait(30) != 0
    assert child.stderr.read().endswith("\nKeyboardInterrupt\n")
    child.stdout.close()
    child.stderr.close()
    texts = guide_blocks(TEXT)
    assert "".join(lines) == texts[0].split("\n", 1)[1].split("^C")[0]

    again = subprocess.run([sys.executable, str(script)], cwd=tmp_path, text=True,
                           capture_output=True, timeout=60)
    assert (again.returncode, again.stderr) == (0, "")
    assert again.stdout == texts[1].split("\n", 1)[1]

    monkeypatch.chdir(tmp_path)
    assert main(["show", "first.duckdb", "assemble-1"]) == 0
    show = next(text for text in texts if text.startswith("$ replay show first.duckdb"))
    assert shown(capsys.readouterr().out) == shown(show)

    exec(compile(look, "getting-started.md python block 2", "exec"), {"__name__": "look"})
    printed = capsys.readouterr().out.splitlines()[1:]
    documented = next(text for text in texts if text.startswith("RunInfo(")).splitlines()[1:]
    assert [eval(line)[:-1] for line in printed] == [eval(line)[:-1] for line in documented]
