"""`replay resume DB RUN_ID --workflows MODULE` with no engine running (issue 10, item 5).

A user's module (``resume_flows.py``, written under the test's directory, which is the
current directory of the command) defines the workflows. The database file is built
once by `replay.run`: ``o-1`` failed in step ``charge:v1``, ``a-1`` is suspended on
``approval:v1``, ``p-1`` (a plain, unmarked generator function) completed, and ``e-1`` is
suspended in a workflow the module does not define.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
import trio

import replay
from replay import Suspend
from replay._cli import main

MODULE = "resume_flows"
SOURCE = '''
from pathlib import Path

import replay
from replay import Step, Suspend

HERE = Path(__file__).parent


def note(name):
    with open(HERE / "calls.txt", "a") as calls:
        calls.write(name + "\\n")


def reserve(order_id):
    note("reserve")
    return f"reservation for {order_id}"


def charge(order_id):
    note("charge")
    if not (HERE / "fixed").exists():
        raise ValueError("the card service said no")
    return f"charged {order_id}"


@replay.workflow(name="order:v1")
def order(order_id):
    reservation = yield Step("reserve:v1", reserve, order_id)
    receipt = yield Step("charge:v1", charge, order_id)
    return [reservation, receipt]


@replay.workflow(name="approval:v1")
def approval(expense_id):
    return (yield Suspend("approval:v1"))


def plain(order_id):  # a generator function, but not marked: not collected
    yield Step("reserve:v1", reserve, order_id)
    return "plain"
'''


@replay.workflow(name="elsewhere")
def elsewhere():
    return (yield Suspend("never:v1"))


@pytest.fixture(autouse=True)
def clean_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in (MODULE, "dup_flows", "broken"):
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("built")
    (directory / f"{MODULE}.py").write_text(SOURCE)
    db = str(directory / "app.duckdb")
    sys.path.insert(0, str(directory))
    try:
        flows = __import__(MODULE)
        with pytest.raises(replay.WorkflowFailed):
            replay.run(flows.order, "o-1", db=db, run_id="o-1")
        with pytest.raises(replay.RunSuspended):
            replay.run(flows.approval, "a-1", db=db, run_id="a-1")
        assert replay.run(flows.plain, "p-1", db=db, run_id="p-1") == "plain"
        with pytest.raises(replay.RunSuspended):
            replay.run(elsewhere, db=db, run_id="e-1")
    finally:
        sys.path.remove(str(directory))
        sys.modules.pop(MODULE, None)
    (directory / "calls.txt").unlink()
    return directory


@pytest.fixture
def app(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the built directory, as the command's current directory."""
    directory = tmp_path / "app"
    shutil.copytree(built, directory)
    monkeypatch.chdir(directory)
    return directory


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def calls(app: Path) -> list[str]:
    path = app / "calls.txt"
    return path.read_text().split() if path.exists() else []


def events(app: Path, run_id: str) -> list[tuple[str | None, str]]:
    with duckdb.connect(str(app / "app.duckdb"), read_only=True) as con:
        return con.execute("SELECT key, kind || '/' || event FROM replay_events "
                           "WHERE run_id = ? ORDER BY seq", [run_id]).fetchall()


def test_resume_with_workflows_retries_the_failed_step_in_the_command(
        capsys: pytest.CaptureFixture[str], app: Path) -> None:
    (app / "fixed").touch()
    assert cli(capsys, "resume", "app.duckdb", "o-1", "--workflows", MODULE) == (
        0, "resumed run 'o-1' (failed -> completed)\n", "")
    assert calls(app) == ["charge"]  # the failed step once more; reserve:v1 replayed
    assert events(app, "o-1") == [
        (None, "run/started"), ("reserve:v1", "step/completed"),
        ("charge:v1", "step/failed"), (None, "run/failed"), (None, "run/resumed"),
        ("charge:v1", "step/started"),  # the first attempt after an open: see Concepts
        ("charge:v1", "step/completed"), (None, "run/completed")]
    # Nothing else ran: the other module's suspended run stayed as it was.
    assert events(app, "e-1")[-1] == ("never:v1", "suspend/suspended")
    assert cli(capsys, "resume", "app.duckdb", "o-1", "--workflows", MODULE) == (
        0, "run 'o-1' is completed; resume changes nothing\n", "")


def test_resume_with_workflows_prints_json(capsys: pytest.CaptureFixture[str],
                                           app: Path) -> None:
    code, out, err = cli(capsys, "resume", "app.duckdb", "o-1", "--json",
                         "--workflows", f"{MODULE},json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {"run_id": "o-1", "resumed": True, "before": "failed",
                               "state": "failed"}  # not fixed: the step failed again
    assert calls(app) == ["charge"]


def test_resume_with_workflows_replays_a_suspended_run(capsys: pytest.CaptureFixture[str],
                                                       app: Path) -> None:
    assert cli(capsys, "resume", "app.duckdb", "a-1", "--workflows", MODULE) == (
        0, "resumed run 'a-1' (suspended -> suspended)\n", "")
    # It replayed to the same Suspend, which is recorded already.
    assert events(app, "a-1")[-2:] == [("approval:v1", "suspend/suspended"),
                                       (None, "run/resumed")]


def test_resume_workflows_option_repeats_and_takes_commas(
        capsys: pytest.CaptureFixture[str], app: Path) -> None:
    (app / "fixed").touch()
    assert cli(capsys, "resume", "app.duckdb", "o-1", "--workflows", "json, email",
               "--workflows", MODULE) == (0, "resumed run 'o-1' (failed -> completed)\n", "")


def test_resume_workflow_not_in_the_modules(capsys: pytest.CaptureFixture[str],
                                            app: Path) -> None:
    assert cli(capsys, "resume", "app.duckdb", "p-1", "--workflows", MODULE) == (
        1, "", "replay resume: run 'p-1' is a run of workflow 'plain', which the "
               "--workflows modules do not define (found: 'order:v1', 'approval:v1'); pass "
               "the module that defines it\n")
    assert cli(capsys, "resume", "app.duckdb", "o-1", "--workflows", "json") == (
        1, "", "replay resume: run 'o-1' is a run of workflow 'order:v1', which the "
               "--workflows modules do not define (found: none); pass the module that "
               "defines it\n")
    assert events(app, "o-1")[-1] == (None, "run/failed")


def test_resume_module_that_cannot_be_imported(capsys: pytest.CaptureFixture[str],
                                               app: Path) -> None:
    assert cli(capsys, "resume", "app.duckdb", "o-1", "--workflows", "no_such_flows") == (
        1, "", "replay resume: cannot import --workflows module 'no_such_flows': "
               "ModuleNotFoundError: No module named 'no_such_flows'; pass a module name "
               "as for python -m, importable from the current directory or PYTHONPATH\n")
    assert cli(capsys, "resume", "app.duckdb", "o-1", "--workflows", f"{MODULE}.py") == (
        1, "", f"replay resume: cannot import --workflows module '{MODULE}.py' (a module "
               f"name, not a file name: '{MODULE}'): ModuleNotFoundError: No module named "
               f"'{MODULE}.py'; '{MODULE}' is not a package; pass a module name as for "
               "python -m, importable from the current directory or PYTHONPATH\n")
    (app / "broken.py").write_text("raise RuntimeError('no config')\n")
    assert cli(capsys, "resume", "app.duckdb", "o-1", "--workflows", "broken") == (
        1, "", "replay resume: cannot import --workflows module 'broken': RuntimeError: no "
               "config; pass a module name as for python -m, importable from the current "
               "directory or PYTHONPATH\n")


def test_resume_modules_that_define_one_name_twice(capsys: pytest.CaptureFixture[str],
                                                   app: Path) -> None:
    (app / "dup_flows.py").write_text(
        "import replay\n\n\n@replay.workflow(name='order:v1')\ndef order():\n"
        "    return (yield from ())\n")
    assert cli(capsys, "resume", "app.duckdb", "o-1", "--workflows",
               f"{MODULE},dup_flows") == (
        1, "", "replay resume: two workflows are named 'order:v1': resume_flows.order and "
               "dup_flows.order; pass only the module whose workflow the run needs\n")


def test_resume_with_workflows_of_an_unknown_run(capsys: pytest.CaptureFixture[str],
                                                 app: Path) -> None:
    assert cli(capsys, "resume", "app.duckdb", "zz", "--workflows", "no_such_flows") == (
        1, "", "replay resume: no run with run_id 'zz' in 'app.duckdb'; list the runs "
               "with: replay runs app.duckdb\n")


@pytest.mark.parametrize("value", ["", "a,,b", "my-app.flows", "flows/"])
def test_resume_workflows_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], app: Path,
                                              value: str) -> None:
    code, out, err = cli(capsys, "resume", "app.duckdb", "o-1", "--workflows", value)
    assert (code, out) == (2, "")
    assert err.endswith(f"replay resume: error: argument --workflows: expected module names "
                        f"such as myapp.flows, separated by commas, got {value!r}\n")


def test_resume_without_workflows_says_how(capsys: pytest.CaptureFixture[str],
                                           app: Path) -> None:
    assert cli(capsys, "resume", "app.duckdb", "o-1") == (
        1, "", "replay resume: resume needs the workflow code, and no engine holds "
               "'app.duckdb': pass the modules that define workflow 'order:v1' with "
               "--workflows MODULE[,MODULE...] to resume the run in this command, or run "
               "the command while your application's engine holds the file, or call "
               "engine.resume(run_id) in it\n")


def test_resume_with_workflows_as_a_command(app: Path) -> None:
    """The installed command, in a process of its own, imports from its current directory."""
    (app / "fixed").touch()
    command = Path(sys.executable).with_name("replay")
    done = subprocess.run([str(command), "resume", "app.duckdb", "o-1", "--workflows", MODULE],
                          cwd=app, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, "resumed run 'o-1' (failed -> completed)\n", "")
    assert calls(app) == ["charge"]


def test_resume_through_an_engine_ignores_workflows(capsys: pytest.CaptureFixture[str],
                                                    app: Path) -> None:
    (app / "fixed").touch()
    sys.path.insert(0, str(app))
    flows = __import__(MODULE)
    opened, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        workflows = [flows.order, flows.approval]
        async with replay.open_engine(app / "app.duckdb", workflows=workflows) as engine:
            opened.set()
            await trio.to_thread.run_sync(stop.wait)
            await engine.get_run("o-1").result()

    thread = threading.Thread(target=trio.run, args=(serve,))
    thread.start()
    try:
        assert opened.wait(30)
        code, out, err = cli(capsys, "resume", "app.duckdb", "o-1", "--workflows", "nothing")
    finally:
        stop.set()
        thread.join(30)
    assert (code, out) == (0, "resumed run 'o-1' (failed -> running)\n")
    assert err.startswith("replay resume: note: the engine in process ")
    assert err.endswith(" holds 'app.duckdb' and resumes the run with its own workflow "
                        "code; --workflows is not used\n")
    assert calls(app) == ["charge"]
