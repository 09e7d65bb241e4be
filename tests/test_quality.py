"""The project's own checks, run by the test suite so that one command runs them all.

Each check needs the development tools (`pip install -e ".[dev]"`); without them the
check is skipped with the reason.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_tool(module: str, *args: str) -> None:
    pytest.importorskip(module)
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_finds_nothing() -> None:
    run_tool("ruff", "check", "replay", "tests", "examples")


def test_mypy_strict_passes() -> None:
    run_tool("mypy")


def test_docs_build_strictly(tmp_path: Path) -> None:
    run_tool("mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"))
