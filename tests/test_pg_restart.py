"""A PostgreSQL server restarted under an engine: it reconnects, and loses nothing.

The test starts a cluster of its own (scripts/postgres-cluster), since it restarts it.
A step of the run restarts the server, so the next commit meets a dead connection: the
writer reconnects, takes the schema's lock again and commits the batch once.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import replay
from replay import Step

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "postgres-cluster"
STEPS = 60
RESTART_AT = {20, 40}

executed: Counter[int] = Counter()
restarted: set[int] = set()
lock = threading.Lock()
restarting = threading.Lock()
cluster: dict[str, str] = {}


@pytest.fixture
def own_server(pg_url: str) -> Iterator[str]:
    """A throwaway cluster of this test's own (it needs `pg_url`'s server to exist)."""
    directory = tempfile.mkdtemp(prefix="replay-restart-")
    os.rmdir(directory)
    url = subprocess.run([SCRIPT, "start", directory], check=True, capture_output=True,
                         text=True).stdout.strip()
    cluster["dir"] = directory
    try:
        with psycopg.connect(url, autocommit=True) as con:
            con.execute("CREATE SCHEMA restarted")
        yield f"{url}?options=-csearch_path%3Drestarted"
    finally:
        subprocess.run([SCRIPT, "stop", directory], check=False)


def tick(index: int) -> int:
    with lock:  # the three runs' steps run in threads at once: one restart per index
        executed[index] += 1
        restart = index in RESTART_AT and index not in restarted
        restarted.add(index)
    if restart:
        with restarting:  # another run's step may reach the next index meanwhile
            done = subprocess.run([SCRIPT, "restart", cluster["dir"]], capture_output=True,
                                  text=True)
        assert done.returncode == 0, done.stderr + done.stdout
    return index


def ticking() -> Generator[Any, Any, int]:
    total = 0
    for index in range(STEPS):
        total += yield Step(f"tick:{index}", tick, index)
    return total


async def test_a_server_restart_under_load_loses_and_repeats_nothing(own_server: str) -> None:
    executed.clear()
    restarted.clear()
    async with replay.open_engine(own_server, workflows=[ticking]) as engine:
        runs = [await engine.start(ticking, run_id=f"r{n}") for n in range(3)]
        assert [await run.result() for run in runs] == [sum(range(STEPS))] * 3
        # Readers reconnect too.
        assert await engine.sql("SELECT count(*) FROM replay_runs WHERE state = ?",
                                ["completed"]) == [(3,)]
    assert all(count == 3 for count in executed.values()), executed
    with psycopg.connect(own_server, autocommit=True) as con:
        steps = con.execute("SELECT run_id, key, count(*) FROM replay_event_log "
                            "WHERE kind = 'step' AND event = 'completed' "
                            "GROUP BY run_id, key").fetchall()
        seqs = con.execute("SELECT count(*), count(DISTINCT seq) FROM replay_event_log"
                           ).fetchone()
    assert len(steps) == 3 * STEPS and {count for _, _, count in steps} == {1}
    assert seqs is not None and seqs[0] == seqs[1]
