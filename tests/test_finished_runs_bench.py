"""`benchmarks/finished_runs.py --smoke` runs and reports every figure, with no problems.

The smoke sizes are far too small to judge the targets (finished runs cost no memory,
an open loads only unfinished runs), so this asserts nothing about memory or speed;
it checks that the script works, including the file of finished and suspended runs it
builds and the answers the engine gives on it (which the script reports as problems).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FIGURES = {"finished_heap", "finished_rss_ratio", "open_finished", "status_finished",
           "get_run_finished"}
TARGETED = {"finished_heap", "finished_rss_ratio", "open_finished"}


def test_finished_runs_smoke_reports_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "finished_runs.py"), "--smoke"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["smoke"] is True
    assert result["problems"] == [], result["problems"]
    assert set(result["figures"]) == FIGURES
    for key, figure in result["figures"].items():
        assert isinstance(figure["value"], float), (key, figure)
        assert figure["value"] > 0, (key, figure)
        assert (figure["target"] is not None) == (key in TARGETED), key
        assert figure["pass"] is None, key  # smoke sizes are never judged
