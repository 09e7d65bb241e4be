"""`replay.run(..., resume=True)`: a script resumes its failed run after a fix (issue 10, item 5).

The flow is a script's, run twice: the first `replay.run` fails because a step raises;
the step is "fixed" (a module-level flag) and `replay.run(..., resume=True)` returns the
output, running the failed step once more and none of the completed ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import replay
from replay import Step, Suspend

pytestmark = pytest.mark.both_stores

CALLS: dict[str, int] = {}
FIXED = False


def reserve(order_id: str) -> str:
    CALLS["reserve"] += 1
    return f"reservation for {order_id}"


def charge(order_id: str) -> str:
    CALLS["charge"] += 1
    if not FIXED:
        raise ValueError("the card service said no")
    return f"charged {order_id}"


@replay.workflow(name="order")
def order(order_id: str):
    reservation = yield Step("reserve:v1", reserve, order_id)
    receipt = yield Step("charge:v1", charge, order_id)
    return [reservation, receipt]


@replay.workflow(name="approval")
def approval(order_id: str):
    return (yield Suspend("approval:v1"))


@pytest.fixture(autouse=True)
def broken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(globals(), "FIXED", False)
    CALLS.update(reserve=0, charge=0)


def test_run_resume_retries_the_failed_step_after_a_fix(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "shop.duckdb"
    with pytest.raises(replay.WorkflowFailed, match=r"^run 'o-1' failed: replay\.StepFailed: "):
        replay.run(order, "o-1", db=db, run_id="o-1")
    assert CALLS == {"reserve": 1, "charge": 1}
    # Without resume, the failed run stays failed: run returns its recorded end.
    with pytest.raises(replay.WorkflowFailed):
        replay.run(order, "o-1", db=db, run_id="o-1")
    assert CALLS == {"reserve": 1, "charge": 1}

    monkeypatch.setitem(globals(), "FIXED", True)
    output = replay.run(order, "o-1", db=db, run_id="o-1", resume=True)

    assert output == ["reservation for o-1", "charged o-1"]
    assert CALLS == {"reserve": 1, "charge": 2}
    # Resuming a completed run changes nothing and returns its output.
    assert replay.run(order, "o-1", db=db, run_id="o-1", resume=True) == output
    assert CALLS == {"reserve": 1, "charge": 2}


def test_run_resume_starts_a_run_that_does_not_exist(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(globals(), "FIXED", True)
    output = replay.run(order, "o-2", db=tmp_path / "shop.duckdb", run_id="o-2", resume=True)
    assert output == ["reservation for o-2", "charged o-2"]
    assert CALLS == {"reserve": 1, "charge": 1}


def test_run_resume_needs_a_run_id() -> None:
    with pytest.raises(ValueError, match=(
            r"^replay\.run\(workflow, \*args, resume=True\): resume needs the run_id of "
            r"the run to resume; pass run_id=\.\.\.$")):
        replay.run(order, "o-3", resume=True)
    assert CALLS == {"reserve": 0, "charge": 0}


def test_run_resume_of_a_suspended_run_replays_and_suspends_again(tmp_path: Path) -> None:
    db = tmp_path / "approvals.duckdb"
    message = (r"^run 'a-1' is suspended waiting for a signal for 'approval:v1'; replay\.run "
               r"cannot deliver signals: use replay\.open_engine and engine\.signal$")
    with pytest.raises(replay.RunSuspended, match=message):
        replay.run(approval, "a-1", db=db, run_id="a-1")
    with pytest.raises(replay.RunSuspended, match=message):
        replay.run(approval, "a-1", db=db, run_id="a-1", resume=True)


def test_run_resume_of_another_workflows_run_is_a_conflict(tmp_path: Path) -> None:
    db = tmp_path / "shop.duckdb"
    with pytest.raises(replay.RunSuspended):
        replay.run(approval, "x-1", db=db, run_id="x-1")
    with pytest.raises(replay.RunIdConflict, match=(
            r"^run_id 'x-1' is already used by a run of workflow 'approval', not 'order'; "
            r"choose another run_id$")):
        replay.run(order, "x-1", db=db, run_id="x-1", resume=True)
    assert CALLS == {"reserve": 0, "charge": 0}
