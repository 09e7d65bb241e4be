"""Hostile values cannot crash or stall the engine (issue 18, "Hardening").

* Nesting: a value nested ~195 levels deep (tuples, or a linked list of registered
  dataclasses) encoded fine, and then every decode overflowed the C stack (SIGSEGV) in
  msgpack's nested calls, at every open of the file. `encode` now refuses more than
  `MAX_DEPTH` levels, and `decode` refuses such data (however it got there) with an
  error that fails only the run holding it. Decoding hostile bytes runs in a child
  process, so that a regression kills the child, not the test session.
* Work on the loop: the JSON rendering of a huge integer or dict stops as soon as its
  text is certainly over 64 KiB; a workflow that catches the `TypeError` of a
  non-command and yields again fails after `MAX_NON_COMMANDS` instead of spinning.
* Bad data is not a bug: a recorded value whose class is not registered fails its run
  with a clear `EncodingError`, not a `ReplayInternalError`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import duckdb
import msgpack
import pytest
import trio
import trio.testing
from hostile_child import holds

import replay
from replay import EncodingError, ReplayError, RunState, WorkflowFailed
from replay._codec import MAX_DEPTH, _json, _unregister, decode, encode, to_json
from replay._core._history import RunHistory
from replay._core._interpreter import Fail, Interpreter, Pending
from replay._core._replay_rules import MAX_NON_COMMANDS

pytestmark = pytest.mark.both_stores

CHILD = Path(__file__).with_name("hostile_child.py")
TOO_DEEP = ("cannot encode value of {key!r}: it nests more than 100 levels of containers "
            "(lists, tuples, dicts, sets, registered classes) or contains itself; record a "
            "flatter value without cycles")
DECODED_TOO_DEEP = ("cannot decode value: it nests more than 100 levels of containers, "
                    "deeper than replay records; the data is corrupted or was recorded by "
                    "an older replay")


def msg(text: str) -> str:
    return "^" + re.escape(text) + "$"


def nested_tuple(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = (value,)
    return value


@dataclasses.dataclass
class Link:
    next: Link | None


@pytest.fixture
def link_type() -> Iterator[None]:
    replay.register_type(Link, tag="test.hostile.Link")
    yield
    _unregister("test.hostile.Link")


def chain(length: int) -> Link | None:
    head: Link | None = None
    for _ in range(length):
        head = Link(head)
    return head


# ----------------------------------------------------------------- nesting: encoding


def test_encode_accepts_100_levels_and_refuses_101() -> None:
    assert MAX_DEPTH == 100
    assert decode(encode(nested_tuple(100))) == nested_tuple(100)
    deepest: object = [nested_tuple(99)]
    assert decode(encode(deepest)) == deepest
    for value in (nested_tuple(101), [nested_tuple(100)], {"k": [nested_tuple(99)]},
                  nested_tuple(195)):
        with pytest.raises(EncodingError, match=msg(TOO_DEEP.format(key="step:v1"))) as info:
            encode(value, key="step:v1")
        assert info.value.key == "step:v1"


def test_encode_refuses_a_chain_of_200_registered_dataclasses(link_type: None) -> None:
    assert decode(encode(chain(100))) == chain(100)
    with pytest.raises(EncodingError, match=msg(TOO_DEEP.format(key="input"))):
        encode(chain(200), key="input")


def test_encode_refuses_native_nesting_inside_ext_payloads_that_used_to_crash() -> None:
    # 50 tuples each holding 500 nested lists overflowed the C stack in msgpack's packer.
    value: object = 1
    for _ in range(50):
        for _ in range(500):
            value = [value]
        value = (value,)
    with pytest.raises(EncodingError, match=msg(TOO_DEEP.format(key="value"))):
        encode(value)


def test_encode_stops_early_on_shared_references_that_would_explode() -> None:
    # 2**40 items once every shared list is expanded: refused after about 4 Mi of them.
    value: list[Any] = [1]
    for _ in range(40):
        value = [value, value]
    with pytest.raises(EncodingError, match=(
            r"^value of 'value' is more than 4194304 bytes encoded; the limit is 4194304 "
            r"bytes \(4 MiB\); store large data elsewhere and record a reference$")):
        encode(value)


async def test_start_with_too_deep_input_records_nothing(db: str) -> None:
    async with replay.open_engine(db, workflows=[holds], durability="none") as engine:
        with pytest.raises(EncodingError, match=msg(TOO_DEEP.format(key="input"))):
            await engine.start(holds, nested_tuple(150), run_id="deep")
        rows = await engine.sql("SELECT count(*) FROM replay_events")
        assert rows == [(0,)]


# ----------------------------------------------------------------- nesting: decoding


def tampered_tuples(depth: int) -> bytes:
    payload = msgpack.packb([1])
    for _ in range(depth - 1):
        payload = msgpack.packb([msgpack.ExtType(1, payload)])
    return b"\x01" + msgpack.packb(msgpack.ExtType(1, payload))


def tampered_chain(length: int) -> bytes:
    payload = msgpack.packb(["test.hostile.Link", {"next": None}])
    for _ in range(length - 1):
        payload = msgpack.packb(["test.hostile.Link", {"next": msgpack.ExtType(11, payload)}])
    return b"\x01" + msgpack.packb(msgpack.ExtType(11, payload))


DECODE_IN_CHILD = """
import sys, dataclasses, replay
from replay._codec import decode

@dataclasses.dataclass
class Link:
    next: object

replay.register_type(Link, tag="test.hostile.Link")
for line in sys.stdin:
    try:
        decode(bytes.fromhex(line.strip()))
        print("decoded", flush=True)
    except replay.EncodingError as error:
        print(error, flush=True)
"""


def test_decode_refuses_hostile_nesting_without_crashing() -> None:
    # 195 tuples (912 bytes) or 300 (1.4 KB) crashed the process; so did 200 links. One
    # nested payload more than MAX_DEPTH is allowed: a date may sit in the innermost level.
    hostile = [tampered_tuples(102), tampered_tuples(195), tampered_tuples(300),
               tampered_tuples(20_000), tampered_chain(102), tampered_chain(200)]
    done = subprocess.run(
        [sys.executable, "-c", DECODE_IN_CHILD], input="".join(f"{b.hex()}\n" for b in
                                                              [tampered_tuples(101), *hostile]),
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["decoded"] + [DECODED_TOO_DEEP] * len(hostile)


@pytest.mark.duckdb_only
def test_a_hostile_stored_value_fails_only_its_run(db: str, tmp_path: Path) -> None:
    record_two_sleeping_runs(db)
    with duckdb.connect(db) as con:
        con.execute("UPDATE replay_event_log SET value = ? WHERE run_id = 'victim' AND "
                    "key = 'value:v1' AND event = 'completed'", [tampered_tuples(195)])
    done = subprocess.run([sys.executable, str(CHILD), db], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {
        "victim": {"error_type": "replay.EncodingError",
                   "message": f"run 'victim' cannot replay the recorded outcome of 'value:v1': "
                              f"{DECODED_TOO_DEEP}"},
        "bystander": {"label": "bystander"},
        "fresh": {"label": "fresh"},
    }


def record_two_sleeping_runs(db: str) -> None:
    """Record `victim` and `bystander`, both asleep for a year after their step."""

    async def record() -> None:
        async with replay.open_engine(db, workflows=[holds], durability="none") as engine:
            for run_id in ("victim", "bystander"):
                await engine.start(holds, run_id, run_id=run_id)
            await trio.sleep(1)  # virtual: both runs park in their year-long sleep
            for run_id in ("victim", "bystander"):
                assert engine.status(run_id).state is RunState.SLEEPING

    trio.run(record, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_an_unregistered_tag_on_replay_fails_the_run_clearly(db: str) -> None:
    replay.register_type(Link, tag="test.hostile.Link")
    try:
        async with replay.open_engine(db, workflows=[keeps_link], durability="none") as engine:
            run = await engine.start(keeps_link, run_id="link")
            await trio.sleep(1)
            assert engine.status("link").state is RunState.SLEEPING
    finally:
        _unregister("test.hostile.Link")
    async with replay.open_engine(db, workflows=[keeps_link], durability="none") as engine:
        with pytest.raises(WorkflowFailed) as failed:
            await engine.get_run("link").result()
    assert failed.value.error_type == "replay.EncodingError"
    assert failed.value.message == (
        "run 'link' cannot replay the recorded outcome of 'link:v1': cannot decode value: "
        "tag 'test.hostile.Link' is not registered in this process; call "
        "replay.register_type(cls, tag='test.hostile.Link') before reading values of that "
        "type")
    assert run.run_id == "link"


async def make_link() -> Link:
    return Link(None)


@replay.workflow(name="keeps_link")
def keeps_link() -> Generator[Any, Any, Any]:
    link = yield replay.Step("link:v1", make_link)
    yield replay.Sleep("nap:v1", 3600)
    return link is not None


# ------------------------------------------------------------ bounded JSON rendering


def test_to_json_of_a_huge_int_gives_up_without_converting_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    huge = 7 ** 1_000_000  # 351 KB: its text took seconds to build, to be thrown away
    assert decode(encode(huge)) == huge  # the recorded value stays exact

    def no_conversion(value: object) -> object:
        raise AssertionError("the integer was converted to text")

    monkeypatch.setattr(_json, "Decimal", no_conversion)
    assert to_json(huge) is None
    assert to_json([1, huge]) is None


def test_to_json_of_a_huge_dict_gives_up_before_looking_at_its_items(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rendered: list[object] = []
    render = _json._Renderer.render

    def counting(self: Any, value: object) -> object:
        rendered.append(value)
        return render(self, value)

    monkeypatch.setattr(_json._Renderer, "render", counting)
    assert to_json({f"k{i}": i for i in range(300_000)}) is None
    assert len(rendered) == 1
    rendered.clear()
    assert to_json([[1] * 40_000, ["x"] * 40_000]) is None
    assert len(rendered) == 2  # the outer list and the first inner one


def test_to_json_still_renders_everything_that_fits() -> None:
    digits = 65_534  # the largest integer whose text fits, with its quotes
    assert to_json(10 ** (digits - 1)) == f'"1{"0" * (digits - 1)}"'
    assert to_json(10 ** digits) is None
    keys = {f"{i:05}": 0 for i in range(6000)}  # 6000 * 10 + 1 characters
    assert to_json(keys) == json.dumps(keys, separators=(",", ":"))
    collide = {1: "int", "1": "str"}
    assert to_json(collide) == '[["1","int"],["1","str"]]'
    assert to_json([b"x" * 49_149]) == json.dumps(["eHh4" * 16_383], separators=(",", ":"))


# ------------------------------------------------------------ spinning on non-commands


def spin(limit: int | None = None) -> Generator[Any, Any, Any]:
    count = 0
    while limit is None or count < limit:
        try:
            yield 42
        except TypeError:
            count += 1
    return (yield replay.Step("after:v1", make_link))


def interpreter(generator: Generator[Any, Any, Any]) -> Interpreter:
    return Interpreter("r1", "spin", generator, RunHistory([]), decode)


def test_non_commands_in_a_row_are_answered_up_to_the_limit() -> None:
    decision = interpreter(spin(MAX_NON_COMMANDS - 1)).start()
    assert isinstance(decision, Pending) and decision.command.key == "after:v1"


def test_the_limit_of_non_commands_in_a_row_fails_the_run() -> None:
    assert MAX_NON_COMMANDS == 1000
    decision = interpreter(spin(MAX_NON_COMMANDS)).start()
    assert isinstance(decision, Fail)
    assert type(decision.error) is ReplayError
    assert str(decision.error) == (
        "workflow 'spin' yielded 1000 non-commands in a row in run 'r1', catching the "
        "TypeError each time (the last was 42 (int)); the run fails so that it cannot "
        "stall other runs: yield only commands such as Step, Sleep or Suspend")


@replay.workflow(name="spinner")
def spinner() -> Generator[Any, Any, Any]:
    return (yield from spin())


async def test_a_spinning_workflow_fails_while_another_run_completes(db: str) -> None:
    async with replay.open_engine(db, workflows=[spinner, holds], durability="none") as engine:
        other = await engine.start(holds, "other", run_id="other")
        spinning = await engine.start(spinner, run_id="spinning")
        with pytest.raises(WorkflowFailed, match=msg(
                "run 'spinning' failed: replay.ReplayError: workflow 'spinner' yielded 1000 "
                "non-commands in a row in run 'spinning', catching the TypeError each time "
                "(the last was 42 (int)); the run fails so that it cannot stall other runs: "
                "yield only commands such as Step, Sleep or Suspend")):
            await spinning.result()
        assert await other.result() == {"label": "other"}


@pytest.mark.duckdb_only
async def test_an_undecodable_output_fails_status_of_its_run_only(db: str) -> None:
    # A tampered output of a completed run must not stop `runs()` listing the others.
    @replay.workflow(name="finishes")
    def finishes(label: str):  # type: ignore[no-untyped-def]
        yield replay.Step("value:v1", str, label)
        return label

    async with replay.open_engine(db, workflows=[finishes]) as engine:
        for run_id in ("victim", "bystander"):
            await (await engine.start(finishes, run_id, run_id=run_id)).result()
    with duckdb.connect(db) as con:
        con.execute("UPDATE replay_event_log SET value = ? WHERE run_id = 'victim' AND "
                    "kind = 'run' AND event = 'completed'", [tampered_tuples(195)])
    async with replay.open_engine(db, workflows=[finishes]) as engine:
        listed = {info.run_id: info.output for info in await engine.runs()}
        assert listed == {"victim": None, "bystander": "bystander"}
        with pytest.raises(EncodingError, match=(
                r"^run 'victim': its recorded output cannot be decoded: ")):
            engine.status("victim")
        assert engine.status("bystander").output == "bystander"
