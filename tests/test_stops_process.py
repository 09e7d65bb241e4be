"""Ctrl-C, SIGTERM and an interrupted `replay.run` charge nothing (issue 10).

A child process runs one run whose second step blocks; the test stops the process
from outside while the step runs: SIGINT (KeyboardInterrupt out of an ``async with
open_engine`` body, or out of `replay.run`) or SIGTERM (an engine in
`serve_forever`). It does so twice in a row, the second time during the attempt the
reopened engine recovered (its start recorded), then lets the run finish. The blocked
attempts are recorded as abandoned, never as interruptions or failures, and the step
that completed never runs again.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from childproc import ChildProcess

CHILD = Path(__file__).with_name("stop_child.py")

pytestmark = pytest.mark.slow

STOPS = {
    "body": (signal.SIGINT, ["stopped by KeyboardInterrupt"], 3),
    "run": (signal.SIGINT, ["stopped by KeyboardInterrupt"], 3),
    "serve": (signal.SIGTERM, ["stopping on SIGTERM"], 0),
}


def start(tmp_path: Path, db: Path, mode: str, block: bool) -> ChildProcess:
    return ChildProcess(CHILD, [str(db), mode, "block" if block else "pass"],
                        tmp_path / "child.stderr")


def stop_while_blocked(tmp_path: Path, db: Path, mode: str, attempt: int) -> None:
    number, last_lines, status = STOPS[mode]
    process = start(tmp_path, db, mode, block=True)
    try:
        assert process.line() == f"blocked {attempt}", process.stderr()
        process.proc.send_signal(number)
        assert [process.line()] == last_lines, process.stderr()
        assert process.exited() == status, process.stderr()
    finally:
        process.close()


def block_events(db: Path) -> list[tuple[str, str, int | None, str | None]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "select key, event, attempt, error_type from replay_events "
            "where run_id = 's' and kind = 'step' order by seq").fetchall()


@pytest.mark.parametrize("mode", sorted(STOPS))
def test_a_stop_twice_in_a_row_charges_nothing(tmp_path: Path, mode: str) -> None:
    db = tmp_path / "stops.duckdb"
    stop_while_blocked(tmp_path, db, mode, attempt=1)  # the run's own first attempt
    stop_while_blocked(tmp_path, db, mode, attempt=2)  # the recovered attempt

    process = start(tmp_path, db, mode, block=False)
    try:
        assert process.line() == "output 20", process.stderr()
        if mode == "serve":
            process.proc.send_signal(signal.SIGTERM)
            assert process.line() == "stopping on SIGTERM"
        assert process.exited() == 0, process.stderr()
    finally:
        process.close()

    assert block_events(db) == [
        ("quick:v1", "completed", 1, None),
        ("block:v1", "abandoned", 1, None),
        ("block:v1", "started", 2, None),
        ("block:v1", "abandoned", 2, None),
        ("block:v1", "started", 3, None),
        ("block:v1", "completed", 3, None),
    ]
    executed = Counter(line.split()[0] for line in
                       (tmp_path / "stops.duckdb.executions").read_text().splitlines())
    assert executed == Counter({"quick:v1": 1, "block:v1": 3})
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select state, error_type from replay_runs").fetchall() == [
            ("completed", None)]
