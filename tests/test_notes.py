"""Status notes (`replay.Note`): a recorded status, replayed silently (issue 13, part 1).

A workflow yields `Note(key, value, text=...)`; the engine records ``note/recorded``
(the value, and the text in ``status_text``) and sends None back. The run's
`RunInfo.status_text` is the status of the `Suspend` it waits on, else the newest
note's text; `status_value` is the newest note's value, kept after the run finishes.
A replay (always_replay, a reopen, a cache eviction) meets the note recorded and
records nothing new. Everything in virtual time, on real DuckDB files.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import pytest
import trio
from stores import reading

import replay
from replay import Note, Sleep, Step, Suspend
from replay._cli._main import main
from replay.testing import check_history, run_workflow, wait_for_state

pytestmark = pytest.mark.both_stores


def double(n: int) -> int:
    return n * 2


def ident(value: Any) -> Any:
    return value


@replay.workflow(name="notes_batch")
def batch(n: int) -> Generator[Any, Any, str]:
    total = 0
    for i in range(n):
        total += yield Step(f"work:{i}", double, i)
        yield Note(f"progress:{i}", {"done": i + 1, "of": n})
    return f"total {total}"


@replay.workflow(name="notes_texts")
def texts() -> Generator[Any, Any, str]:
    got = yield Note("plain:v1", "warming up")
    assert got is None
    yield Note("explicit:v1", {"phase": 2}, text="phase two")
    yield Note("number:v1", 42)
    return "ok"


@replay.workflow(name="notes_approval")
def approval() -> Generator[Any, Any, Any]:
    yield Note("phase:v1", {"phase": "preparing"}, text="preparing the order")
    decision = yield Suspend("approve:v1", status="waiting for a manager")
    yield Sleep("settle:v1", 60)
    yield Note("phase:v2", {"phase": "done"}, text="finished")
    return decision


@replay.workflow(name="notes_sleepy")
def sleepy() -> Generator[Any, Any, str]:
    yield Note("before:v1", "before the nap")
    yield Sleep("nap:v1", 3600)
    yield Note("after:v1", "after the nap")
    decision = yield Suspend("go:v1")
    yield Note("decided:v1", f"decided {decision}")
    return "slept"


class Opaque:
    """A value replay cannot encode."""


@replay.workflow(name="notes_unencodable")
def unencodable() -> Generator[Any, Any, str]:
    try:
        yield Note("bad:v1", Opaque())
    except replay.EncodingError as error:
        yield Note("caught:v1", type(error).__name__)
        return "caught"
    return "not raised"


@replay.workflow(name="notes_unencodable_uncaught")
def unencodable_uncaught() -> Generator[Any, Any, str]:
    yield Note("bad:v1", Opaque())
    return "unreachable"


@replay.workflow(name="notes_duplicate")
def duplicate() -> Generator[Any, Any, str]:
    yield Step("same:v1", ident, 1)
    yield Note("same:v1", "again")
    return "unreachable"


@replay.workflow(name="notes_in_group")
def in_group() -> Generator[Any, Any, Any]:
    return (yield replay.All("both:v1", [Step("a:v1", ident, 1), Note("n:v1", "x")]))  # type: ignore[list-item]


WORKFLOWS = [batch, texts, approval, sleepy, unencodable, unencodable_uncaught, duplicate,
             in_group]


def note_rows(db: str, run_id: str) -> list[tuple[Any, ...]]:
    with reading(db) as con:
        return con.execute(
            "SELECT key, value_json, l.status_text FROM replay_event_log l "
            "WHERE run_id = ? AND kind = 'note' ORDER BY seq", [run_id]).fetchall()


def runs_row(db: str, run_id: str) -> tuple[Any, ...]:
    with reading(db) as con:
        row = con.execute("SELECT state, status_text, status_json FROM replay_runs "
                          "WHERE run_id = ?", [run_id]).fetchone()
    assert row is not None
    return row


# -- notes become the status --


async def test_notes_become_the_status_and_stay_after_the_run_finishes(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(batch, 3, run_id="b")
        assert await run.result() == "total 6"
        info = engine.status("b")
        assert info.status_value == {"done": 3, "of": 3}
        assert json.loads(info.status_text or "") == {"done": 3, "of": 3}
        events = [(e.kind, e.event, e.key, e.value) for e in await engine.history("b")
                  if e.kind == "note"]
        assert events == [("note", "recorded", f"progress:{i}", {"done": i + 1, "of": 3})
                          for i in range(3)]
    state, text, status_json = runs_row(db, "b")
    assert state == "completed"
    assert json.loads(text) == {"done": 3, "of": 3}
    assert json.loads(status_json) == {"done": 3, "of": 3}
    # Reopened: the status is read back from the file.
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        info = engine.status("b")
        assert info.status_value == {"done": 3, "of": 3}
        assert json.loads(info.status_text or "") == {"done": 3, "of": 3}
        listed = [i for i in await engine.runs() if i.run_id == "b"]
        assert listed[0].status_value == {"done": 3, "of": 3}


async def test_the_text_is_the_string_the_explicit_text_or_the_json(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        await (await engine.start(texts, run_id="t")).result()
        info = engine.status("t")
        assert (info.status_text, info.status_value) == ("42", 42)
    rows = note_rows(db, "t")
    assert [(key, text) for key, _, text in rows] == [
        ("plain:v1", "warming up"), ("explicit:v1", "phase two"), ("number:v1", "42")]
    assert [json.loads(value) for _, value, _ in rows] == ["warming up", {"phase": 2}, 42]


async def test_a_suspend_status_wins_while_suspended_then_the_note_shows_again(
        db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(approval, run_id="a")
        info = await run.wait()
        assert info.state == "suspended"
        assert info.status_text == "waiting for a manager"
        assert info.status_value == {"phase": "preparing"}
        assert runs_row_live(await engine.sql(
            "SELECT state, status_text, status_json FROM replay_runs WHERE run_id = 'a'")) == (
            "suspended", "waiting for a manager", {"phase": "preparing"})
        await engine.signal("a", "approve:v1", "yes")
        info = await wait_for_state(engine, "a", "sleeping")
        assert info.status_text == "preparing the order"  # the note again
        assert info.status_value == {"phase": "preparing"}
        assert runs_row_live(await engine.sql(
            "SELECT state, status_text, status_json FROM replay_runs WHERE run_id = 'a'")) == (
            "sleeping", "preparing the order", {"phase": "preparing"})
        assert await run.result() == "yes"
        info = engine.status("a")
        assert (info.status_text, info.status_value) == ("finished", {"phase": "done"})


def runs_row_live(rows: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    (row,) = rows
    state, text, status_json = row
    return state, text, json.loads(status_json)


# -- replay records no new note --


async def test_always_replay_records_each_note_once(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, always_replay=True) as engine:
        run = await engine.start(sleepy, run_id="s")
        await run.wait()
        await engine.signal("s", "go:v1", "yes")
        assert await run.result() == "slept"
        assert engine.status("s").status_value == "decided yes"
    assert [key for key, _, _ in note_rows(db, "s")] == [
        "before:v1", "after:v1", "decided:v1"]


async def test_a_reopen_replays_notes_without_recording_them_again(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        await engine.start(sleepy, run_id="s")
        info = await wait_for_state(engine, "s", "sleeping")
        assert (info.status_text, info.status_value) == ("before the nap", "before the nap")
    assert len(note_rows(db, "s")) == 1
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        info = engine.status("s")
        assert (info.state, info.status_text) == ("sleeping", "before the nap")
        run = engine.get_run("s")
        info = await run.wait()
        assert (info.state, info.status_value) == ("suspended", "after the nap")
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        await engine.signal("s", "go:v1", 7)
        assert await engine.get_run("s").result() == "slept"
    assert [key for key, _, _ in note_rows(db, "s")] == [
        "before:v1", "after:v1", "decided:v1"]


async def test_a_cache_eviction_replays_notes_without_recording_them_again(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, cache_size=1) as engine:
        runs = [await engine.start(sleepy, run_id=f"s{i}") for i in range(4)]
        for run in runs:
            assert (await run.wait()).state == "suspended"
        for i, run in enumerate(runs):
            await engine.signal(run.run_id, "go:v1", i)
        for run in runs:
            assert await run.result() == "slept"
    for i in range(4):
        assert [key for key, _, _ in note_rows(db, f"s{i}")] == [
            "before:v1", "after:v1", "decided:v1"]
        assert runs_row(db, f"s{i}")[1] == f"decided {i}"


# -- values that cannot be recorded, bad input --


async def test_an_unencodable_note_throws_encoding_error_at_the_yield(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        assert await (await engine.start(unencodable, run_id="u")).result() == "caught"
        assert engine.status("u").status_value == "EncodingError"
        run = await engine.start(unencodable_uncaught, run_id="v")
        with pytest.raises(replay.WorkflowFailed) as failed:
            await run.result()
        assert failed.value.error_type == "replay.EncodingError"
        assert engine.status("v").status_value is None
    assert [key for key, _, _ in note_rows(db, "u")] == ["caught:v1"]
    assert note_rows(db, "v") == []


def test_bad_note_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="key"):
        Note(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key"):
        Note("")
    with pytest.raises(TypeError, match="text must be a string"):
        Note("k:v1", "value", text=5)  # type: ignore[arg-type]
    assert Note("k:v1", [1], text="t") == Note("k:v1", [1], text="t")
    assert Note("k:v1", [1]) != Note("k:v1", [2])
    assert repr(Note("k:v1", 1, text="t")) == "Note('k:v1', 1, text='t')"
    hash(Note("k:v1", [1]))  # an unhashable value still hashes


async def test_a_note_reusing_a_step_key_fails_the_run_with_duplicate_key(db: str) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(duplicate, run_id="d")
        with pytest.raises(replay.WorkflowFailed) as failed:
            await run.result()
        assert failed.value.error_type == "replay.DuplicateKeyError"
        assert "same:v1" in str(failed.value)
    assert note_rows(db, "d") == []


async def test_a_note_inside_a_group_is_refused_clearly(db: str) -> None:
    with pytest.raises((TypeError, replay.ReplayError)) as refused:
        replay.All("both:v1", [Step("a:v1", ident, 1), Note("n:v1", "x")])  # type: ignore[list-item]
    assert "Note" in str(refused.value)
    assert "a Note records the run's status at once and is not a group member" in str(refused.value)
    async with replay.open_engine(db, workflows=WORKFLOWS) as engine:
        run = await engine.start(in_group, run_id="g")
        with pytest.raises(replay.WorkflowFailed) as failed:
            await run.result()
        assert failed.value.error_type == "builtins.TypeError"
        assert "Note('n:v1', 'x')" in str(failed.value)


# -- replay.testing and the replay command --


def test_run_workflow_and_check_history_handle_notes(tmp_path: Any) -> None:
    result = run_workflow(batch, 2)
    assert result.output == "total 2"
    assert result.info.status_value == {"done": 2, "of": 2}
    assert [e.key for e in result.history if e.kind == "note"] == ["progress:0", "progress:1"]

    path = tmp_path / "approval.json"

    async def record() -> None:
        async with replay.testing.open_test_engine([approval]) as engine:
            run = await engine.start(approval, run_id="a")
            await run.wait()
            await engine.signal("a", "approve:v1", "ok")
            await run.result()
            await engine.export_history("a", path)

    trio.run(record, clock=trio.testing.MockClock(autojump_threshold=0))
    report = check_history(approval, path)
    assert report.output == "ok"
    assert report.unreached_keys == ()
    # A note changed into a step under the same key is caught.

    @replay.workflow(name="notes_approval")
    def changed() -> Generator[Any, Any, Any]:
        yield Step("phase:v1", ident, 1)
        decision = yield Suspend("approve:v1", status="waiting for a manager")
        yield Sleep("settle:v1", 60)
        yield Note("phase:v2", {"phase": "done"}, text="finished")
        return decision

    with pytest.raises(replay.NondeterminismError):
        check_history(changed, path)


async def test_replay_show_prints_note_lines(db: str, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    async with replay.open_engine(db, workflows=WORKFLOWS, serve_cli=False) as engine:
        await (await engine.start(texts, run_id="t")).result()
    capsys.readouterr()
    code = await trio.to_thread.run_sync(main, ["show", db, "t"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    lines = [line for line in out.splitlines() if "note/recorded" in line]
    assert len(lines) == 3, out
    assert "plain:v1" in lines[0] and "warming up" in lines[0]
    assert "explicit:v1" in lines[1]
    assert "number:v1" in lines[2]
