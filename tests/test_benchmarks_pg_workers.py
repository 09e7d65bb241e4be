"""`benchmarks/pg_workers.py --quick` runs: 1, 2 and 4 engine processes on one schema.

It asserts nothing about speed (the sizes are far too small to mean anything): every
figure is reported, each step was executed once over the workers, and every schema the
script made is gone. It needs a server: it runs on the one REPLAY_TEST_POSTGRES names,
and skips without it (as every PostgreSQL test, through `pg_url`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.usefixtures("pg_url")  # skips without REPLAY_TEST_POSTGRES (fails under CI)
def test_pg_workers_quick_measures_every_process_count() -> None:
    import psycopg

    server = os.environ["REPLAY_TEST_POSTGRES"]
    # The URL through the environment, not the command line (it may hold a password).
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "pg_workers.py"), "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
        env={**os.environ, "REPLAY_BENCH_POSTGRES": server},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["quick"] is True and result["processes"] == [1, 2, 4]
    figures = result["figures"]
    assert set(figures) == {"floor", "sequential", "processes_1", "processes_2",
                            "processes_4"}
    for key, figure in figures.items():
        assert figure["value"] > 0, (key, figure)
        assert figure["pass"] is None, key  # no targets
    assert figures["sequential"]["floor"] > 0 and figures["sequential"]["ratio"] > 0
    total = result["runs"] * result["steps"]
    for count in result["processes"]:
        detail = figures[f"processes_{count}"]["detail"]
        assert detail["efficiency"] > 0 and detail["commits_per_second"] > 0, detail
        for sample in detail["samples"]:
            # Every step executed once, over the workers.
            assert len(sample["executed"]) == count and sum(sample["executed"]) == total
    assert "| engine processes |" in done.stdout and "scaling efficiency" in done.stdout
    # Every schema it made is gone.
    assert result["schemas"]
    with psycopg.connect(server, autocommit=True) as con:
        left = con.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)",
                           (result["schemas"],)).fetchall()
    assert left == []
