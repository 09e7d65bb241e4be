"""Bad values on the live channel are user errors, never a crash (issue 18, "Hardening").

A value that is malformed (``{"$decimal": "abc"}``), of an unknown tag, or nested
thousands of levels deep gets an error answer naming what is wrong, and the engine goes
on serving; the command refuses such JSON itself as a usage error (exit status 2).
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import pytest
import trio

import replay
from replay import Suspend
from replay._channel._protocol import (
    MAX_DEPTH,
    WireError,
    from_wire,
    load_message,
    short_address,
    socket_path,
    to_wire,
)
from replay._cli import main


@replay.workflow(name="approval")
def approval():  # type: ignore[no-untyped-def]
    decision = yield Suspend("approval:v1")
    return decision


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def ask(db: str, line: bytes) -> dict[str, Any]:
    """Send one raw request line and return the answer's first message."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        with short_address(socket_path(db)) as address:
            sock.connect(address)
        sock.sendall(line)
        with sock.makefile("rb") as answer:
            return load_message(answer.readline())


def request(**fields: Any) -> bytes:
    return json.dumps({"protocol": 1, **fields}).encode() + b"\n"


# -- the values themselves --


@pytest.mark.parametrize(("data", "message"), [
    ({"$decimal": "abc"}, r"\{'\$decimal': 'abc'\} is not a valid \$decimal: \$decimal "
                          r'takes a decimal number as text, such as "1.25"'),
    ({"$decimal": 1.5}, r"\{'\$decimal': 1.5\} is not a valid \$decimal: \$decimal takes "
                        r'a decimal number as text, such as "1.25"'),
    ({"$bytes": "!!!"}, r"\{'\$bytes': '!!!'\} is not a valid \$bytes: \$bytes takes "
                        r"base64 text"),
    ({"$float": "nan"}, r"\{'\$float': 'nan'\} is not a valid \$float: \$float takes "
                        r'"NaN", "Infinity" or "-Infinity"'),
    ({"$timedelta": [10**300, 0, 0]}, r"\{'\$timedelta': \[1000.*000, 0, 0\]\} is not a "
                                      r"valid \$timedelta: \$timedelta takes \[days, "
                                      r"seconds, microseconds\], three whole numbers"),
    ({"$map": [[{"$map": []}, 1]]}, r"\{'\$map': \[\[\{\.\.\.\}, 1\]\]\} is not a valid "
                                    r"\$map: \$map takes \[\[key, value\], \.\.\.\] pairs "
                                    r"whose keys are not lists or mappings"),
    ({"a": 1, "b": 2}, r"\{'a': 1, 'b': 2\} is not a wire value: an object carries one "
                       r'tag, such as \{"\$decimal": "1.25"\}, and a mapping travels as '
                       r'\{"\$map": \[\[key, value\], \.\.\.\]\}'),
    ({"$pickle": "x"}, r"unknown wire value tag '\$pickle'"),
])
def test_a_malformed_wire_value_says_what_its_tag_takes(data: Any, message: str) -> None:
    with pytest.raises(WireError, match=rf"^{message}$"):
        from_wire([1, data])


def test_wire_values_nest_at_most_max_depth_deep() -> None:
    too_deep = r"^the value nests more than 200 lists and mappings deep; send a flatter value$"
    assert from_wire(to_wire(nested(MAX_DEPTH))) == nested(MAX_DEPTH)
    for value, wire in ((nested(MAX_DEPTH + 1), nested(MAX_DEPTH + 1)),
                        ({"k": nested(MAX_DEPTH)}, {"$map": [["k", nested(MAX_DEPTH)]]})):
        with pytest.raises(WireError, match=too_deep):
            to_wire(value)
        with pytest.raises(WireError, match=too_deep):
            from_wire(wire)


def test_a_message_nested_thousands_deep_is_refused_not_a_crash() -> None:
    with pytest.raises(ValueError, match=r"^the JSON nests too deeply to read; send a "
                                         r"flatter value$"):
        load_message(b"[" * 10_000 + b"]" * 10_000)


# -- the engine answers them with an error, and goes on serving --


async def test_the_engine_answers_bad_values_with_an_error_and_goes_on_serving(
        db: str, caplog: pytest.LogCaptureFixture) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    cases = [
        (request(op="signal", run_id="a1", key="approval:v1", payload={"$decimal": "abc"}),
         "bad payload in the request: {'$decimal': 'abc'} is not a valid $decimal: "
         '$decimal takes a decimal number as text, such as "1.25"'),
        (request(op="signal", run_id="a1", key="approval:v1", payload={"$pickle": "x"}),
         "bad payload in the request: unknown wire value tag '$pickle'"),
        (b'{"protocol": 1, "op": "query", "sql": "SELECT ?", "params": ' + deep + b"}\n",
         "malformed request: the JSON nests too deeply to read; send a flatter value"),
        (request(op="query", sql="SELECT ?", params=[nested(300)]),
         "bad params in the request: the value nests more than 200 lists and mappings "
         "deep; send a flatter value"),
        (request(op="signal", run_id=["a1"], key="approval:v1", payload=1),
         "the request's 'run_id' must be a string, not list"),
        (request(op="pickle"),
         "unknown operation 'pickle'"),
    ]
    async with replay.open_engine(db, workflows=[approval], durability="none") as engine:
        run = await engine.start(approval, run_id="a1")
        await run.wait()
        with caplog.at_level(logging.INFO, logger="replay"):
            for line, message in cases:
                answer = await trio.to_thread.run_sync(ask, db, line)
                assert answer == {"ok": False, "error": {"type": "ProtocolError",
                                                         "message": message}}
        assert caplog.records == []  # no "bug in replay"
        answer = await trio.to_thread.run_sync(ask, db, request(
            op="signal", run_id="a1", key="approval:v1", payload={"$decimal": "1.25"}))
        assert answer == {"ok": True, "state": "running", "warning": None}
        assert str(await run.result()) == "1.25"


# -- the command refuses them itself --


@pytest.mark.parametrize("args", [
    ["signal", "DB", "a1", "approval:v1", "[" * 5000 + "]" * 5000],
    ["signal", "DB", "a1", "approval:v1", json.dumps(nested(MAX_DEPTH + 1))],
    ["sql", "DB", "SELECT ?", "-p", "[" * 5000 + "]" * 5000],
])
def test_json_nested_too_deeply_is_a_usage_error(
        args: list[str], db: str, capsys: pytest.CaptureFixture[str]) -> None:
    name = "JSON_VALUE" if args[0] == "signal" else "-p VALUE"
    code = main([db if arg == "DB" else arg for arg in args])
    assert (code, capsys.readouterr()) == (2, ("", (
        f"replay {args[0]}: error: {name} nests more than 200 arrays and objects deep; "
        "send a flatter value\n")))


async def test_a_signal_that_looks_like_a_tag_arrives_as_the_object_it_is(
        db: str, capsys: pytest.CaptureFixture[str]) -> None:
    async with replay.open_engine(db, workflows=[approval], durability="none") as engine:
        run = await engine.start(approval, run_id="a1")
        await run.wait()
        code = await trio.to_thread.run_sync(
            main, ["signal", db, "a1", "approval:v1", '{"$decimal": "abc"}'])
        assert code == 0, capsys.readouterr()
        assert await run.result() == {"$decimal": "abc"}
