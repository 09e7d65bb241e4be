"""The SPEC §2 checkout example runs in full: in virtual time, and in real time on a file."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import trio
import trio.testing

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "checkout.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("checkout_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_spec_example_runs_in_virtual_time(tmp_path: Path) -> None:
    example = load_example()
    result = trio.run(example.main, str(tmp_path / "shop.duckdb"), 1800,
                      clock=trio.testing.MockClock(autojump_threshold=0))
    assert result["outputs"] == {
        "order-17": {"order": "order-17", "receipt": "receipt-order-17-1"},
        "order-18": {"order": "order-18", "state": "rejected"},
    }
    assert result["elapsed"] == timedelta(minutes=30)
    assert result["ledger"] == ["reserved order-17", "reserved order-18",
                                "charged 4200 for order-17 (attempt 1)"]
    fired = [at for _, key, event, at in result["events"] if event == "sleep/fired"]
    scheduled = [at for _, key, event, at in result["events"] if event == "sleep/scheduled"]
    assert [f - s for f, s in zip(fired, scheduled, strict=True)] == [timedelta(minutes=30)] * 2


def test_the_spec_example_runs_in_real_time_against_a_file(tmp_path: Path) -> None:
    db = tmp_path / "shop.duckdb"
    command = [sys.executable, str(EXAMPLE), str(db), "--cool-off", "0.2"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "order-17: {'order': 'order-17', 'receipt': 'receipt-order-17-1'}" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "the outside world saw: nothing new (all recorded)" in again.stdout
