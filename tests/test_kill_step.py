"""A step that kills its process ends its run after a bounded number of restarts.

Only a process death is an interruption: an attempt whose start is recorded and which
has no end at the next open. The first attempt of each run after every open, whatever
starts it (recovery, a retry back-off timer), runs alone with its start recorded, so
the death is charged to that step, against `max_interruptions`, never to its `Retry`
budget. The calm run beside it completes (regression test for issue 10: with a back-off
the loop used to restart for ever). A run parked on a signal when an engine opens takes
its first step unmarked (the signal records it as running first), so its first death is
not charged and the next open marks it.
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


def run_child(db: Path, mode: str, max_interruptions: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHILD), str(db), mode, str(max_interruptions)],
                          capture_output=True, text=True, timeout=120)


def boom_events(db: Path) -> list[tuple[str, int, str | None]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "select event, attempt, error_type from replay_events "
            "where run_id = 'boom' and key = 'boom:v1' order by seq").fetchall()


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "limit"),
                         [("plain", 3), ("backoff", 3), ("plain", 1), ("signal", 2)])
def test_a_step_that_kills_the_process_fails_after_bounded_restarts(
        tmp_path: Path, mode: str, limit: int) -> None:
    db = tmp_path / "kill.duckdb"
    if mode == "signal":
        parked = run_child(db, mode, limit)  # the run waits for its signal
        assert parked.returncode == 0 and parked.stdout.strip() == "parked", parked.stderr
    # The run's own engine, or the first after it parked (a signal wakes it): no start
    # mark, it just dies.
    first = run_child(db, mode, limit)
    assert first.returncode == -signal.SIGKILL, first.stderr
    restarts = 0
    while True:
        restarts += 1
        assert restarts <= limit + 1, f"still restarting: {boom_events(db)}"
        done = run_child(db, mode, limit)
        if done.returncode != -signal.SIGKILL:
            break
    assert done.returncode == 0, done.stderr
    assert restarts == limit + 1
    states = json.loads(done.stdout.strip().splitlines()[-1])
    assert states == {"boom": ["failed", None, "replay.StepFailed"],
                      "calm": ["completed", 5, None]}

    interrupted = "replay.StepInterrupted"
    first_attempt = [("retrying", 1, "builtins.ValueError")] if mode == "backoff" else []
    n = len(first_attempt)  # attempts numbered after the ordinary failure
    expected = [*first_attempt, ("started", n + 1, None)]
    for attempt in range(n + 1, n + limit):
        expected += [("interrupted", attempt, interrupted), ("started", attempt + 1, None)]
    expected.append(("failed", n + limit, interrupted))
    assert boom_events(db) == expected
    with duckdb.connect(str(db), read_only=True) as con:
        calm_charged = con.execute(
            "select count(*) from replay_events where run_id = 'calm' "
            "and error_type is not null").fetchall()
        error = con.execute("select error from replay_runs where run_id = 'boom'").fetchall()
    assert calm_charged == [(0,)]
    assert f"max_interruptions={limit}" in error[0][0]
