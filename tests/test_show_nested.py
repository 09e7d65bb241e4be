"""`replay show` draws groups and child runs nested, on real files.

The file is built once, in virtual time from a fixed start: an `All` with a limit, an
`All` that fails fast, races of a `Suspend` against a `Sleep` (each side winning once),
nested groups, a parent with two child runs in a `Gather`, a run parked in a group, a
cancelled run that compensates, and a terminated one. No engine holds the file when
the command reads it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
import trio.testing

import replay
from replay import All, Child, Gather, Race, Sleep, Step, Suspend
from replay._cli import _format as fmt
from replay._cli import main
from replay._cli._children import load_children
from replay._cli._source import open_source
from replay._engine._clock import set_virtual_start

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
Flow = Any


async def work(name: str, ms: int) -> str:
    await trio.sleep(ms / 1000)
    return f"did-{name}"


async def broken(name: str, ms: int) -> str:
    await trio.sleep(ms / 1000)
    raise ValueError(f"{name} broke")


@replay.workflow(name="fan:v1")
def fan() -> Flow:
    return (yield All("fetch:v1", [Step(f"fetch:{i}", work, f"f{i}", 10 * (i + 1))
                                   for i in range(4)], limit=2))


@replay.workflow(name="failfast:v1")
def failfast() -> Flow:
    try:
        yield All("all:v1", [Step("a", work, "a", 50), Step("b", broken, "b", 10),
                             Step("c", work, "c", 100), Step("d", work, "d", 5)], limit=3)
    except replay.StepFailed as failure:
        return f"caught {failure.error_type}"


@replay.workflow(name="pay:v1")
def pay() -> Flow:
    name, value = yield Race("pay-or-expire:v1", {
        "paid": Suspend("paid:v1", status="waiting for payment"),
        "late": Sleep("deadline:v1", timedelta(hours=1))})
    return [name, value]


@replay.workflow(name="nested:v1")
def nested() -> Flow:
    return (yield All("outer:v1", [
        Step("x", work, "x", 1),
        Race("inner:v1", {"fast": Step("fast", work, "fast", 5),
                          "slow": Step("slow", work, "slow", 500)})]))


@replay.workflow(name="ship:v1")
def ship(item: str) -> Flow:
    yield Sleep("pack:v1", timedelta(seconds=5))
    if item == "bad":
        raise RuntimeError("cannot ship bad")
    return (yield Step("label:v1", work, item, 5))


@replay.workflow(name="parent:v1")
def parent() -> Flow:
    shipped = yield Gather("ship-all:v1", [Child("ship:a", ship, "a"),
                                           Child("ship:bad", ship, "bad")])
    return len(shipped.failures)


@replay.workflow(name="parked:v1")
def parked() -> Flow:
    return (yield All("both:v1", [Suspend("sig:v1", status="wait a",
                                          timeout=timedelta(hours=2)),
                                  Sleep("nap:v1", timedelta(hours=1))]))


@replay.workflow(name="booking:v1")
def booking() -> Flow:
    yield Step("reserve:v1", work, "r", 5)
    try:
        yield Suspend("confirm:v1", status="waiting for confirmation")
    except replay.Cancelled:
        yield Step("release:v1", work, "release", 5)
        raise
    return "booked"


@replay.workflow(name="plain:v1")
def plain() -> Flow:
    yield Step("one:v1", work, "one", 5)
    return (yield Sleep("rest:v1", timedelta(minutes=1)))


WORKFLOWS = [fan, failfast, pay, nested, ship, parent, parked, booking, plain]


async def build(db: str) -> None:
    set_virtual_start(START)
    async with replay.open_engine(db, workflows=WORKFLOWS, durability="none",
                                  serve_cli=False) as engine:
        for workflow, run_id in ((fan, "fan-1"), (failfast, "ff-1"), (nested, "nest-1"),
                                 (parent, "par-1"), (plain, "plain-1")):
            await (await engine.start(workflow, run_id=run_id)).result()
        late = await engine.start(pay, run_id="pay-late")
        await late.result()
        paid = await engine.start(pay, run_id="pay-paid")
        await paid.wait()
        await trio.sleep(60)
        await engine.signal("pay-paid", "paid:v1", {"amount": 12})
        await paid.result()
        for run_id, how in (("book-1", engine.cancel), ("book-2", engine.terminate)):
            run = await engine.start(booking, run_id=run_id)
            await run.wait()
            await trio.sleep(30)
            await how(run_id, "customer left")
            with pytest.raises(replay.WorkflowFailed):
                await run.result()
        await (await engine.start(parked, run_id="parked-1")).wait()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("nested") / "app.duckdb")
    trio.run(build, path, clock=trio.testing.MockClock(autojump_threshold=0))
    return path


class Shown:
    """`replay show DB RUN_ID`'s output, its timeline cut into cells."""

    def __init__(self, out: str) -> None:
        self.out = out
        head, timeline, *self.rest = out.split("\n\n")
        self.head = head.splitlines()
        header, *self.lines = timeline.splitlines()
        self._event = header.index("EVENT")
        self._key = header.index("KEY")
        self._detail = header.index("DETAIL")

    def event(self, line: str) -> str:
        """The EVENT cell: the guides that nest it, then ``kind/event``."""
        return line[self._event:self._key].rstrip()

    def events(self) -> list[str]:
        return [self.event(line) for line in self.lines]

    def row(self, event: str, key: str = "") -> tuple[str, str]:
        """The EVENT and DETAIL cells of the one line of `event` for `key`."""
        found = [line for line in self.lines if self.event(line).endswith(event)
                 and line[self._key:].split(" ")[0] == key]
        assert len(found) == 1, (event, key, self.out)
        return self.event(found[0]), found[0][self._detail:]


def show(capsys: pytest.CaptureFixture[str], db: str, run_id: str) -> Shown:
    code = main(["show", db, run_id])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    return Shown(out)


def test_an_all_with_a_limit_nests_its_members(capsys: pytest.CaptureFixture[str],
                                               db: str) -> None:
    shown = show(capsys, db, "fan-1")
    assert shown.events() == ["run/started", "group/started", *["│ step/completed"] * 4,
                              "group/completed", "run/completed"]
    assert shown.row("group/started", "fetch:v1") == (
        "group/started", "all of 4: fetch:0, fetch:1, fetch:2, fetch:3")
    assert shown.row("step/completed", "fetch:2")[1] == '"did-f2"'
    assert shown.row("group/completed", "fetch:v1")[1] == "every member completed (4)"


def test_fail_fast_names_the_member_marks_the_cancelled_and_the_never_started(
        capsys: pytest.CaptureFixture[str], db: str) -> None:
    shown = show(capsys, db, "ff-1")
    assert shown.row("step/failed", "b") == ("│ step/failed",
                                             "builtins.ValueError: b broke")
    for member in ("a", "c"):  # under way when b failed; d never started (limit=3)
        assert shown.row("step/cancelled", member) == (
            "│ step/cancelled", "✗ cancelled: group 'all:v1' was decided by 'b'")
    assert shown.row("group/failed", "all:v1") == (
        "group/failed",
        "fail-fast: b failed: builtins.ValueError: b broke; never started: d")
    assert not any(" d " in line for line in shown.lines)


def test_a_race_says_who_won_and_marks_the_loser(capsys: pytest.CaptureFixture[str],
                                                  db: str) -> None:
    late = show(capsys, db, "pay-late")
    assert late.row("group/started", "pay-or-expire:v1")[1] == (
        "race of 2: paid=paid:v1, late=deadline:v1")
    assert late.row("group/waiting", "pay-or-expire:v1")[1] == (
        "the run waits for its members; next deadline +1h00m")
    assert late.row("sleep/fired", "deadline:v1") == ("│ sleep/fired", "woke after 1h00m")
    assert late.row("suspend/cancelled", "paid:v1") == (
        "│ suspend/cancelled",
        "✗ cancelled: group 'pay-or-expire:v1' was decided by 'deadline:v1'")
    assert late.row("group/completed", "pay-or-expire:v1")[1] == "won by late (deadline:v1)"

    paid = show(capsys, db, "pay-paid")
    assert paid.row("signal/signalled", "paid:v1") == (
        "│ signal/signalled", '{"amount":12} (delivered after 1m00s)')
    assert paid.row("sleep/cancelled", "deadline:v1")[0] == "│ sleep/cancelled"
    assert paid.row("group/completed", "pay-or-expire:v1")[1] == "won by paid (paid:v1)"


def test_nested_groups_nest_twice(capsys: pytest.CaptureFixture[str], db: str) -> None:
    shown = show(capsys, db, "nest-1")
    assert shown.events() == [
        "run/started", "group/started", "│ group/started", "│ step/completed",
        "│ │ step/completed", "│ │ step/cancelled", "│ group/completed", "group/completed",
        "run/completed"]
    assert shown.row("group/started", "inner:v1")[1] == "race of 2: fast=fast, slow=slow"
    assert shown.row("group/completed", "inner:v1")[1] == "won by fast (fast)"


def test_child_runs_show_their_ids_states_and_how_to_show_them(
        capsys: pytest.CaptureFixture[str], db: str) -> None:
    shown = show(capsys, db, "par-1")
    assert shown.row("child/started", "ship:a") == (
        "│ child/started", "child run par-1/ship:a (ship:v1)")
    assert shown.row("child/failed", "ship:bad") == (
        "│ child/failed", "builtins.RuntimeError: cannot ship bad")
    assert shown.row("child/completed", "ship:a")[1] == '"did-a"'
    assert shown.row("group/completed", "ship-all:v1")[1] == (
        "every member ended; 1 failed: ship:bad")
    (children,) = shown.rest
    assert [line.split() for line in children.splitlines()] == [
        ["CHILD", "RUN", "KEY", "WORKFLOW", "STATE", "SHOW", "IT", "WITH"],
        ["par-1/ship:a", "ship:a", "ship:v1", "completed", "replay", "show", db,
         "par-1/ship:a"],
        ["par-1/ship:bad", "ship:bad", "ship:v1", "failed", "replay", "show", db,
         "par-1/ship:bad"]]
    # The hint works: the child run's own timeline, which names its parent.
    child = show(capsys, db, "par-1/ship:bad")
    assert "parent    par-1" in child.head
    assert child.events() == ["run/started", "sleep/scheduled", "sleep/fired", "run/failed"]


def test_a_childs_own_lines_nest_under_its_start_when_read(db: str) -> None:
    source = open_source(db)
    try:
        run = source.query("SELECT * FROM replay_runs WHERE run_id = ?", ["par-1"])
        events = source.query("SELECT * EXCLUDE (value) FROM replay_events "
                              "WHERE run_id = ? ORDER BY seq", ["par-1"])
        run_row = dict(zip(run.columns, run.rows()[0], strict=True))
        event_rows = [dict(zip(events.columns, row, strict=True)) for row in events.rows()]
        children = load_children(source, event_rows)
        assert load_children(source, event_rows, max_runs=1).keys() == {"par-1/ship:a"}
        assert load_children(source, event_rows, max_events=4).keys() == {"par-1/ship:bad"}
    finally:
        source.close()
    assert sorted(children) == ["par-1/ship:a", "par-1/ship:bad"]
    shown = Shown(fmt.show_text(run_row, event_rows, children=children, db="my app.duckdb"))
    events_shown = shown.events()
    start = events_shown.index("│ child/started")
    assert events_shown[start:start + 6] == [
        "│ child/started", "│ ┊ run/started", "│ ┊ sleep/scheduled", "│ ┊ sleep/fired",
        "│ ┊ step/completed", "│ ┊ run/completed"]
    assert shown.row("step/completed", "label:v1") == ("│ ┊ step/completed", '"did-a"')
    assert shown.row("run/failed")[0] == "│ ┊ run/failed"  # the child's; the parent completed
    (table,) = shown.rest
    assert "replay show 'my app.duckdb' par-1/ship:bad" in table


def test_a_run_parked_in_a_group_says_so(capsys: pytest.CaptureFixture[str],
                                         db: str) -> None:
    shown = show(capsys, db, "parked-1")
    assert shown.head[2] == ("state     suspended on group both:v1 (wait a), next deadline "
                             "at +1h00m")
    assert shown.row("suspend/suspended", "sig:v1") == (
        "│ suspend/suspended", "waits for a signal, times out at +2h00m")
    assert shown.row("group/waiting", "both:v1")[1] == (
        "the run waits for its members; next deadline +1h00m")


def test_a_cancelled_run_shows_its_reason_and_its_compensation(
        capsys: pytest.CaptureFixture[str], db: str) -> None:
    shown = show(capsys, db, "book-1")
    assert shown.head[2] == "state     cancelled: replay.Cancelled"
    assert shown.events() == ["run/started", "step/completed", "suspend/suspended",
                              "run/cancel_requested", "suspend/cancelled", "step/completed",
                              "run/cancelled"]
    assert shown.row("run/cancel_requested")[1] == "cancellation requested: customer left"
    assert shown.row("suspend/cancelled", "confirm:v1")[1] == (
        "✗ cancelled: the run was cancelled (Cancelled thrown in here: customer left)")
    assert shown.row("step/completed", "release:v1")[1] == '"did-release"'
    assert shown.row("run/cancelled")[1] == "replay.Cancelled: customer left"
    assert shown.rest[-1].splitlines()[-1] == (
        "  replay.Cancelled: run 'book-1' was cancelled: customer left")

    terminated = show(capsys, db, "book-2")
    assert terminated.row("run/cancelled")[1] == (
        "replay.Cancelled: customer left; terminated: the run was ended without running "
        "its workflow code")

    code = main(["runs", db, "--state", "cancelled"])
    out = capsys.readouterr()[0]
    assert code == 0
    assert [line.split(None, 3)[0] for line in out.splitlines()[1:]] == ["book-2", "book-1"]
    assert out.splitlines()[2].endswith(
        "replay.Cancelled: run 'book-1' was cancelled: customer left")


def test_a_run_without_groups_or_children_is_drawn_as_before(
        capsys: pytest.CaptureFixture[str], db: str) -> None:
    shown = show(capsys, db, "plain-1")
    assert shown.events() == ["run/started", "step/completed", "sleep/scheduled",
                              "sleep/fired", "run/completed"]
    assert shown.rest == []  # no table of children, no error
    assert not re.search("[│┊✗]", shown.out)
