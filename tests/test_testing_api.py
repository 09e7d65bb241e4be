"""The public surface of replay.testing, and that `import replay` does not load it."""

from __future__ import annotations

import inspect
import subprocess
import sys

import replay.testing

PUBLIC = {
    "HistoryReport", "RunResult", "check_history", "open_test_engine", "run_workflow",
    "run_workflow_async", "set_virtual_start", "wait_for_state",
}


def test_the_public_names_are_pinned() -> None:
    assert set(replay.testing.__all__) == PUBLIC
    # pytest rewrites the asserts of a plugin's distribution and leaves "@..." helpers.
    names = {name for name in dir(replay.testing) if not name.startswith(("_", "@"))}
    assert names == PUBLIC


def test_public_objects_report_the_public_module() -> None:
    for name in PUBLIC:
        assert getattr(replay.testing, name).__module__ == "replay.testing", name


def test_every_public_function_documents_what_it_raises() -> None:
    for name in PUBLIC:
        obj = getattr(replay.testing, name)
        if inspect.isfunction(obj):
            assert "Raises:" in (obj.__doc__ or ""), name


def test_import_replay_does_not_import_replay_testing() -> None:
    code = "import sys, replay; print('replay.testing' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
