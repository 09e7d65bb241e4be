"""The example programs run and do what their comments claim."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio
import trio.testing

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(module: ModuleType, db: Path) -> dict:
    # Virtual time: the examples' retry back-offs take no real time.
    return trio.run(module.main, str(db), clock=trio.testing.MockClock(autojump_threshold=0))


def test_order_pipeline_outcomes_and_memoisation(tmp_path: Path) -> None:
    example = load_example("order_pipeline")
    db = tmp_path / "orders.duckdb"

    first = run_main(example, db)
    assert first["states"] == {"order-1001": "completed", "order-1002": "completed"}
    shipped, cancelled = first["outputs"]["order-1001"], first["outputs"]["order-1002"]
    assert shipped == {"order": "1001", "state": "shipped", "receipt": "ch-order-1001:charge:v1",
                       "tracking": "trk-1001-book-42"}
    assert cancelled["state"] == "cancelled"
    assert "declined" in cancelled["reason"]
    # Charge: 3 attempts for order-1001 (two timeouts), 1 for order-1002 (declined,
    # not retried); the compensation ran once, only the good order shipped.
    assert first["executed"] == {"reserve_stock": 2, "charge_card": 4, "ship": 1,
                                 "release_stock": 1}
    steps = [(run_id, key, event, attempt) for run_id, key, event, attempt, *_ in
             first["history"] if event.startswith("step/")]
    assert steps == [
        ("order-1001", "reserve:v1", "step/completed", 1),
        ("order-1001", "charge:v1", "step/retrying", 1),
        ("order-1001", "charge:v1", "step/retrying", 2),
        ("order-1001", "charge:v1", "step/completed", 3),
        ("order-1001", "ship:v1", "step/completed", 1),
        ("order-1002", "reserve:v1", "step/completed", 1),
        ("order-1002", "charge:v1", "step/failed", 1),
        ("order-1002", "release:v1", "step/completed", 1),
    ]
    declined = [row for row in first["history"] if row[2] == "step/failed"]
    assert declined[0][5].endswith(".CardDeclined")

    # Same file again: the recorded results come back and no step function runs.
    second = run_main(example, db)
    assert second["outputs"] == first["outputs"]
    assert second["states"] == first["states"]
    assert second["executed"] == {}
    assert second["history"] == first["history"]


def test_data_pipeline_resume_skips_finished_steps(tmp_path: Path) -> None:
    example = load_example("data_pipeline")
    db = tmp_path / "etl.duckdb"

    result = run_main(example, db)
    assert result["failure"] == "replay.StepFailed"
    assert result["state"] == "completed"
    assert result["output"] == {"day": "2024-06-01", "rows": 3, "total_eur": 317.8}
    # Across the failure and the resume, only the failed step ran twice.
    assert result["executed"] == {"extract": 1, "transform": 1, "convert": 2, "load": 1}
    assert example.WAREHOUSE["2024-06-01"] == [
        {"store": "paris", "eur": 120.5},
        {"store": "london", "eur": 94.4},
        {"store": "zurich", "eur": 102.9},
    ]

    # Same file again: the run is complete, nothing fails or runs.
    again = run_main(example, db)
    assert again == {"output": result["output"], "state": "completed", "failure": None,
                     "executed": {}}


# What each script prints when run again on the same file: nothing executes.
SECOND_RUN = {
    "order_pipeline": "step functions executed this time: 0 {}",
    "data_pipeline": "executed in all: {}",
}


@pytest.mark.parametrize("name", sorted(SECOND_RUN))
def test_example_runs_as_a_script(name: str, tmp_path: Path) -> None:
    db = tmp_path / f"{name}.duckdb"
    outputs = []
    for _ in range(2):  # a fresh file, then the same file again
        done = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), str(db)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert db.exists()
    assert "completed" in outputs[0]
    assert SECOND_RUN[name] not in outputs[0]
    assert SECOND_RUN[name] in outputs[1]
