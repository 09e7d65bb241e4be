"""SPEC §2 rule 6: an attempt that crashes the process counts against its own budget.

A step that SIGKILLs its own process would otherwise restart forever. After a crash,
the first fresh attempt of each recovered run runs alone with its start recorded, so
at the next open the engine knows which step was running and charges only that one.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

CHILD = Path(__file__).with_name("kill_step_child.py")


def run_child(db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHILD), str(db)], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_a_step_that_kills_the_process_fails_instead_of_looping(tmp_path: Path) -> None:
    db = tmp_path / "kill.duckdb"
    first = run_child(db)  # the step kills the process: no start was recorded
    assert first.returncode == -signal.SIGKILL, first.stderr
    second = run_child(db)  # recovery records the start, then the step kills again
    assert second.returncode == -signal.SIGKILL, second.stderr
    third = run_child(db)  # the interrupted attempt is charged: StepFailed, no restart
    assert third.returncode == 0, third.stderr
    states = json.loads(third.stdout.strip().splitlines()[-1])
    assert states == {"boom": ["failed", None, "replay.StepFailed"], "calm": ["completed", 5, None]}

    with duckdb.connect(str(db), read_only=True) as con:
        boom = con.execute(
            "select event, attempt, error_type from replay_events "
            "where run_id = 'boom' and key = 'boom:v1' order by seq").fetchall()
        calm_charged = con.execute(
            "select count(*) from replay_events where run_id = 'calm' "
            "and (event = 'failed' or error_type is not null)").fetchall()
        error = con.execute(
            "select error from replay_runs where run_id = 'boom'").fetchall()[0][0]
    assert boom == [("started", 1, None), ("failed", 1, "replay.StepInterrupted")]
    assert calm_charged == [(0,)]
    assert "replay.StepInterrupted" in error
