"""Bad input: every mistake a user can make gets a clear error from replay's hierarchy.

Wrong types, unencodable values, unknown runs, duplicate keys, corrupted or locked
database files: each gets a `replay.ReplayError` subclass (or a `TypeError` /
`ValueError` for argument validation at call sites, SPEC §8) whose exact message says
what is wrong and what to do instead. None of them disturbs other runs: wherever a
mistake happens in an engine that serves other runs, a *bystander* run, started
before the mistake and still running while it happens, must finish normally after it.

"""

from __future__ import annotations

import inspect
import math
import os
import random
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest
import trio

import replay
import replay.testing
from replay import (
    DatabaseError,
    DatabaseLocked,
    DuplicateKeyError,
    EncodingError,
    EngineClosed,
    QueryError,
    ReplayError,
    Retry,
    RunIdConflict,
    RunNotFound,
    RunState,
    Step,
    StepFailed,
    WorkflowFailed,
    WorkflowNotRegistered,
)
from replay._store import SCHEMA_VERSION

pytestmark = pytest.mark.both_stores

HERE = Path(__file__).parent
MIB = 1024 * 1024


# ----------------------------------------------------------------------------- helpers


def msg(text: str) -> str:
    """Anchor an exact error message for pytest.raises(match=...)."""
    return "^" + re.escape(text) + "$"


def msg_around(prefix: str, suffix: str = "") -> str:
    """Match a message made of `prefix`, any text (e.g. DuckDB's own), and `suffix`."""
    return "(?s)^" + re.escape(prefix) + ".+" + re.escape(suffix) + "$"


def qualified(cls: type) -> str:
    """The recorded `error_type` of an exception class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def line_of(marker: str) -> int:
    """Return the number of the line of this file that ends with ``# <marker>``."""
    lines = Path(__file__).read_text().splitlines()
    found = [n for n, line in enumerate(lines, 1) if line.rstrip().endswith(f"# {marker}")]
    assert len(found) == 1, marker
    return found[0]


_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<name>\S+)$', re.M)


def frames(traceback_text: str) -> list[tuple[str, int, str]]:
    """The (file name, line, function) of every frame of a traceback text."""
    return [(Path(m["file"]).name, int(m["line"]), m["name"])
            for m in _FRAME.finditer(traceback_text)]


def here(marker: str, function: str) -> tuple[str, int, str]:
    """The frame of the line of this file marked with `marker`."""
    return (Path(__file__).name, line_of(marker), function)


class Opaque:
    """A class replay cannot encode: never registered."""


def double(i: int) -> int:
    return 2 * i


def identity(value: Any) -> Any:
    return value


@replay.workflow
def echo(value: Any) -> Generator[Any, Any, Any]:
    """Return the input after one step."""
    return (yield Step("echo:v1", identity, value))


@replay.workflow
def not_registered(value: Any) -> Generator[Any, Any, Any]:
    """A workflow no engine in this file registers."""
    return (yield Step("echo:v1", identity, value))


class Bystander:
    """A run of another workflow that must finish normally whatever else happens.

    It runs three sync steps and then waits, still running, in an async step for
    `gate`: it is active while the test's mistake happens, and `check` lets it finish.
    """

    RUN_ID = "bystander"

    def __init__(self) -> None:
        self.gate = trio.Event()
        gate = self.gate

        async def wait_for_gate() -> str:
            await gate.wait()
            return "through"

        @replay.workflow(name="bystander")
        def bystander(n: int) -> Generator[Any, Any, Any]:
            total = 0
            for i in range(n):
                total += yield Step(f"add:{i}", double, i)
            passed = yield Step("gate:v1", wait_for_gate)
            return {"total": total, "gate": passed}

        self.workflow = bystander
        self.run: replay.Run | None = None

    async def start(self, engine: replay.Engine) -> None:
        self.run = await engine.start(self.workflow, 3, run_id=self.RUN_ID)

    async def check(self, engine: replay.Engine) -> None:
        """Assert the bystander was still running, then that it finishes normally."""
        assert self.run is not None
        assert engine.status(self.RUN_ID).state is RunState.RUNNING
        self.gate.set()
        assert await self.run.result() == {"total": 6, "gate": "through"}


@asynccontextmanager
async def serving(
    path: str | Path, *workflows: Callable[..., Any], **options: Any
) -> AsyncIterator[tuple[replay.Engine, Bystander]]:
    """Open an engine with `workflows` and a bystander run already going."""
    bystander = Bystander()
    async with replay.open_engine(
        path, workflows=[bystander.workflow, *workflows], durability="none", **options
    ) as engine:
        await bystander.start(engine)
        yield engine, bystander


async def events_of(engine: replay.Engine, run_id: str) -> int:
    rows = await engine.sql("SELECT count(*) FROM replay_events WHERE run_id = ?", [run_id])
    return int(rows[0][0])


# ------------------------------------------------------------- yielding a non-command


def non_command(which: str) -> object:
    steps = [Step("a:v1", double, 1), Step("b:v1", double, 2)]
    return {"int": 42, "none": None, "list": steps, "tuple": tuple(steps)}[which]


def non_command_message(workflow: str, which: str) -> str:
    value = non_command(which)
    shown = f"workflow {workflow!r} yielded {value!r} ({type(value).__name__})"
    if which in ("list", "tuple"):
        return (f"{shown}; to run commands at once, yield a group with its own key, e.g. "
                "All('fetch-all:v1', [...], limit=8)")
    return f"{shown}; expected a command such as Step, Sleep or Suspend"


NON_COMMAND_KINDS = ["int", "none", "list", "tuple"]


@replay.workflow
def catches_non_command(which: str) -> Generator[Any, Any, Any]:
    try:
        yield non_command(which)
    except TypeError as error:
        caught = str(error)
    return (yield Step("after:v1", identity, caught))


@replay.workflow
def yields_non_command(which: str) -> Generator[Any, Any, Any]:
    yield non_command(which)  # non-command-yield


def test_non_command_message_matches_spec_example() -> None:
    assert non_command_message("checkout", "int") == (
        "workflow 'checkout' yielded 42 (int); expected a command such as Step, Sleep or Suspend"
    )


async def test_yield_non_command_throws_type_error_the_workflow_can_catch(db: str) -> None:
    async with serving(db, catches_non_command) as (engine, bystander):
        runs = {which: await engine.start(catches_non_command, which, run_id=which)
                for which in NON_COMMAND_KINDS}
        for which, run in runs.items():
            assert await run.result() == non_command_message("catches_non_command", which)
            assert engine.status(which).state is RunState.COMPLETED
        await bystander.check(engine)


async def test_yield_non_command_uncaught_fails_the_run(db: str) -> None:
    async with serving(db, yields_non_command) as (engine, bystander):
        runs = {which: await engine.start(yields_non_command, which, run_id=which)
                for which in NON_COMMAND_KINDS}
        for which, run in runs.items():
            message = non_command_message("yields_non_command", which)
            with pytest.raises(WorkflowFailed, match=msg(
                    f"run {which!r} failed: builtins.TypeError: {message}")) as failed:
                await run.result()
            assert failed.value.error_type == "builtins.TypeError"
            assert failed.value.message == message
            info = engine.status(which)
            assert info.state is RunState.FAILED
            assert info.error_type == "builtins.TypeError"
            assert info.error is not None
            assert info.error.endswith(f"TypeError: {message}\n")
            assert frames(info.error)[-1] == here("non-command-yield", "yields_non_command")
        await bystander.check(engine)


# ------------------------------------------------- bad command construction at a yield


BAD_STEPS: dict[str, tuple[Callable[[], Step], type[Exception], str]] = {
    "empty key": (
        lambda: Step("", identity),
        ValueError,
        "Step(key, fn, *args): key must be a non-empty string, got '' (str)",
    ),
    "int key": (
        lambda: Step(42, identity),  # type: ignore[arg-type]
        TypeError,
        "Step(key, fn, *args): key must be a string, got 42 (int); the key comes first and "
        "names the command, e.g. 'reserve:v1'",
    ),
    "surrogate key": (
        lambda: Step("key:\ud800", identity),
        ValueError,
        "Step(key, fn, *args): key must be valid unicode text (no lone surrogates), "
        "got 'key:\\ud800'",
    ),
    "int fn": (
        lambda: Step("k", 42),  # type: ignore[arg-type]
        TypeError,
        "Step(key, fn, *args): fn must be callable, got 42 (int); pass the function itself, "
        "e.g. Step('charge:v1', charge_card, order_id)",
    ),
}


@replay.workflow
def catches_bad_step(which: str) -> Generator[Any, Any, Any]:
    try:
        yield BAD_STEPS[which][0]()
    except (TypeError, ValueError) as error:
        return [type(error).__name__, str(error)]


@replay.workflow
def builds_bad_step(which: str) -> Generator[Any, Any, Any]:
    yield BAD_STEPS[which][0]()  # bad-step-yield


async def test_bad_step_raises_at_the_yield_where_the_workflow_can_catch_it(db: str) -> None:
    async with serving(db, catches_bad_step) as (engine, bystander):
        runs = {which: await engine.start(catches_bad_step, which) for which in BAD_STEPS}
        for which, run in runs.items():
            _, error, message = BAD_STEPS[which]
            assert await run.result() == [error.__name__, message]
        await bystander.check(engine)


async def test_bad_step_uncaught_fails_the_run(db: str) -> None:
    async with serving(db, builds_bad_step) as (engine, bystander):
        runs = {which: await engine.start(builds_bad_step, which) for which in BAD_STEPS}
        for which, run in runs.items():
            _, error, message = BAD_STEPS[which]
            with pytest.raises(WorkflowFailed) as failed:
                await run.result()
            assert failed.value.error_type == qualified(error)
            assert failed.value.message == message
            info = engine.status(run.run_id)
            assert info.state is RunState.FAILED
            assert info.error is not None
            assert here("bad-step-yield", "builds_bad_step") in frames(info.error)
            assert not [e for e in await engine.history(run.run_id) if e.kind == "step"]
        await bystander.check(engine)


# ----------------------------------------------------------- non-generator workflows


def plain_function(order_id: str) -> str:
    return order_id


async def async_function(order_id: str) -> str:
    return order_id


async def async_generator_function(order_id: str) -> Any:
    yield order_id


lambda_function = lambda order_id: order_id  # noqa: E731

NOT_GENERATOR_FUNCTIONS = pytest.mark.parametrize(
    "function",
    [plain_function, async_function, async_generator_function, lambda_function, 42],
    ids=["plain def", "async def", "async generator", "lambda", "int"],
)


def not_a_workflow_message(function: object) -> str:
    hint = ""
    if function in (async_function, async_generator_function):
        hint = (" (async workflows are not supported: make it a plain def that yields "
                "Step(...) for async work)")
    return ("a workflow must be a generator function (a def that yields commands such as "
            f"Step), got {function!r} ({type(function).__name__}){hint}")


@NOT_GENERATOR_FUNCTIONS
def test_workflow_decorator_rejects_non_generator_function(function: Any) -> None:
    with pytest.raises(TypeError, match=msg(not_a_workflow_message(function))):
        replay.workflow(function)
    with pytest.raises(TypeError, match=msg(not_a_workflow_message(function))):
        replay.workflow(name="named")(function)


@NOT_GENERATOR_FUNCTIONS
async def test_open_engine_rejects_non_generator_workflow(db: str, function: Any) -> None:
    with pytest.raises(TypeError, match=msg(not_a_workflow_message(function))):
        async with replay.open_engine(db, workflows=[echo, function], durability="none"):
            pytest.fail("the engine opened")
    assert not os.path.exists(db)


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        (42, TypeError, "workflow(name=...): name must be a str, got 42 (int)"),
        ("", ValueError, "workflow(name=...): name must be a non-empty string, got ''"),
    ],
    ids=["int", "empty"],
)
def test_workflow_decorator_rejects_bad_name(name: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=msg(message)):
        replay.workflow(name=name)


async def test_open_engine_rejects_two_workflows_with_one_name(db: str) -> None:
    @replay.workflow(name="echo")
    def echo_twin(value: Any) -> Generator[Any, Any, Any]:
        return (yield Step("echo:v1", identity, value))

    message = (f"two workflows are named 'echo': {echo!r} and {echo_twin!r}; give one "
               "another name with @replay.workflow(name=...)")
    with pytest.raises(ValueError, match=msg(message)):
        async with replay.open_engine(db, workflows=[echo, echo_twin], durability="none"):
            pytest.fail("the engine opened")
    assert not os.path.exists(db)


# ------------------------------------------- wrong arguments, unregistered workflows


async def test_start_with_wrong_number_of_arguments_fails_the_run(db: str) -> None:
    with pytest.raises(TypeError) as called:
        echo(1, 2, 3)  # type: ignore[call-arg]
    expected = str(called.value)
    async with serving(db, echo) as (engine, bystander):
        run = await engine.start(echo, 1, 2, 3, run_id="r")
        with pytest.raises(WorkflowFailed, match=msg(f"run 'r' failed: builtins.TypeError: "
                                                      f"{expected}")) as failed:
            await run.result()
        assert failed.value.error_type == "builtins.TypeError"
        assert failed.value.message == expected
        info = engine.status("r")
        assert info.state is RunState.FAILED
        assert info.error is not None
        assert info.error.endswith(f"TypeError: {expected}\n")
        await bystander.check(engine)


def not_registered_message(shown: str, registered: str) -> str:
    return (f"workflow {shown!r} is not registered with this engine (registered: "
            f"{registered}); pass it in open_engine(..., workflows=[...])")


async def test_start_unregistered_workflow_raises_workflow_not_registered(db: str) -> None:
    cases = [(not_registered, "not_registered"), ("not_registered", "not_registered"),
             ("", "")]
    async with serving(db, echo) as (engine, bystander):
        for workflow, shown in cases:
            message = not_registered_message(shown, "'bystander', 'echo'")
            with pytest.raises(WorkflowNotRegistered, match=msg(message)):
                await engine.start(workflow, 1, run_id="r")
        with pytest.raises(RunNotFound):
            engine.status("r")
        assert await events_of(engine, "r") == 0
        await bystander.check(engine)


async def test_start_with_a_non_workflow_object_raises_type_error(db: str) -> None:
    async with serving(db, echo) as (engine, bystander):
        message = ("engine.start(workflow, *args): workflow must be a workflow function or "
                   "its registered name, got 42 (int)")
        with pytest.raises(TypeError, match=msg(message)):
            await engine.start(42, 1)  # type: ignore[arg-type]
        await bystander.check(engine)


async def test_start_with_an_unregistered_function_of_a_registered_name_says_so(
    db: str,
) -> None:
    @replay.workflow(name="echo")
    def impostor(value: Any) -> Generator[Any, Any, Any]:
        return (yield Step("echo:v1", identity, value))

    async with serving(db, echo) as (engine, bystander):
        with pytest.raises(WorkflowNotRegistered) as raised:
            await engine.start(impostor, 1)
        assert repr(impostor) in str(raised.value)
        assert repr(echo) in str(raised.value)
        await bystander.check(engine)


@pytest.mark.duckdb_only  # on PostgreSQL such runs stay free for a worker that runs them
async def test_runs_of_unregistered_workflow_are_left_alone_on_open(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(db, shutdown_timeout=0):
        pass  # the bystander is still running when the engine closes
    async with replay.open_engine(db, workflows=[echo], durability="none") as engine:
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
            "run 'bystander' of workflow 'bystander' is left as it is: the workflow is not "
            "registered with this engine"
        ]
        assert engine.status("bystander").state is RunState.RUNNING
        message = not_registered_message("bystander", "'echo'")
        with pytest.raises(WorkflowNotRegistered, match=msg(message)):
            await engine.resume("bystander")
        with pytest.raises(WorkflowNotRegistered, match=msg(message)):
            await engine.start("bystander", 3, run_id="bystander")
        with pytest.raises(RunIdConflict):
            await engine.start(echo, 1, run_id="bystander")
        assert await (await engine.start(echo, "other")).result() == "other"
        assert engine.status("bystander").state is RunState.RUNNING
    bystander = Bystander()
    bystander.gate.set()
    async with replay.open_engine(db, workflows=[bystander.workflow], durability="none") as engine:
        result = await engine.get_run("bystander").result()
        assert result == {"total": 6, "gate": "through"}


# ----------------------------------------------------------------- unencodable values


def cannot_encode(key: str, where: str = "") -> str:
    return (f"cannot encode value of {key!r}: object of type 'Opaque'{where} is not "
            "supported; use plain data (dict, list, str, bytes, int, ...) or register the "
            "class with replay.register_type(Opaque, tag=...)")


def too_big(key: str, size: int) -> str:
    return (f"value of {key!r} is {size} bytes encoded; the limit is 4194304 bytes (4 MiB); "
            "store large data elsewhere and record a reference")


async def test_start_with_unencodable_input_records_nothing(db: str) -> None:
    async with serving(db, echo) as (engine, bystander):
        with pytest.raises(EncodingError, match=msg(cannot_encode("input", " at [1]"))) as raised:
            await engine.start(echo, "fine", Opaque(), run_id="bad")
        assert raised.value.key == "input"
        assert isinstance(raised.value, TypeError)
        assert await events_of(engine, "bad") == 0
        assert [info.run_id for info in await engine.runs()] == ["bystander"]
        with pytest.raises(RunNotFound):
            engine.status("bad")
        # The id was not taken: it can be used for a good start.
        assert await (await engine.start(echo, "good", run_id="bad")).result() == "good"
        await bystander.check(engine)


async def test_start_with_input_over_4_mib_records_nothing(db: str) -> None:
    payload = b"x" * (4 * MIB)
    # 1 version byte + the args tuple's ext32 header (6) + fixarray (1) + bin32 header (5).
    size = len(payload) + 13
    async with serving(db, echo) as (engine, bystander):
        with pytest.raises(EncodingError, match=msg(too_big("input", size))):
            await engine.start(echo, payload, run_id="big")
        assert await events_of(engine, "big") == 0
        with pytest.raises(RunNotFound):
            engine.status("big")
        await bystander.check(engine)


def step_value_workflow(
    name: str, value: Callable[[], Any], calls: list[str]
) -> Callable[..., Any]:
    def make() -> Any:
        calls.append(name)
        return value()

    @replay.workflow(name=name)
    def makes() -> Generator[Any, Any, Any]:
        try:
            yield Step("make:v1", make, retry=Retry(attempts=5, initial=0.0))
        except StepFailed as failure:
            return {"key": failure.key, "error_type": failure.error_type,
                    "message": failure.message, "attempts": failure.attempts,
                    "is_encoding_error": failure.is_a(EncodingError)}
        return "not reached"

    return makes


async def test_step_value_that_cannot_be_recorded_fails_the_step_without_retry(
    db: str,
) -> None:
    calls: list[str] = []
    cases = {
        "unencodable": (lambda: {"ok": 1, "bad": Opaque()},
                        cannot_encode("make:v1", " at ['bad']")),
        # 1 version byte + a bin32 header (5) + the bytes.
        "too-big": (lambda: b"x" * (4 * MIB), too_big("make:v1", 4 * MIB + 6)),
    }
    workflows = [step_value_workflow(name, value, calls) for name, (value, _) in cases.items()]
    async with serving(db, *workflows) as (engine, bystander):
        for workflow, (name, (_, message)) in zip(workflows, cases.items(), strict=True):
            run = await engine.start(workflow, run_id=name)
            assert await run.result() == {
                "key": "make:v1", "error_type": "replay.EncodingError", "message": message,
                "attempts": 1, "is_encoding_error": True,
            }
            step_events = [(e.key, e.event, e.attempt, e.error_type, e.error)
                           for e in await engine.history(name) if e.kind == "step"]
            assert step_events == [("make:v1", "failed", 1, "replay.EncodingError", message)]
        assert calls == list(cases)
        await bystander.check(engine)


@replay.workflow
def returns_unencodable() -> Generator[Any, Any, Any]:
    yield Step("one:v1", double, 1)
    return {"x": [Opaque()]}


async def test_unencodable_output_fails_the_run(db: str) -> None:
    message = cannot_encode("output", " at ['x'][0]")
    async with serving(db, returns_unencodable) as (engine, bystander):
        run = await engine.start(returns_unencodable, run_id="r")
        with pytest.raises(WorkflowFailed, match=msg(f"run 'r' failed: replay.EncodingError: "
                                                      f"{message}")) as failed:
            await run.result()
        assert failed.value.error_type == "replay.EncodingError"
        assert failed.value.message == message
        info = engine.status("r")
        assert info.state is RunState.FAILED
        assert info.output is None
        assert info.error is not None
        assert info.error.endswith(f"replay.EncodingError: {message}\n")
        await bystander.check(engine)


# ------------------------------------------------------------------------------ run ids


async def test_run_id_reused_for_another_workflow_raises_run_id_conflict(db: str) -> None:
    message = ("run_id 'r' is already used by a run of workflow 'echo', not 'bystander'; "
               "choose another run_id")
    async with serving(db, echo) as (engine, bystander):
        run = await engine.start(echo, "first", run_id="r")
        with pytest.raises(RunIdConflict, match=msg(message)) as raised:
            await engine.start("bystander", 3, run_id="r")
        assert raised.value.run_id == "r"
        assert await run.result() == "first"
        await bystander.check(engine)
    async with replay.open_engine(db, workflows=[echo, Bystander().workflow],
                                  durability="none") as engine:
        with pytest.raises(RunIdConflict, match=msg(message)):
            await engine.start("bystander", 3, run_id="r")
        assert engine.status("r").output == "first"


async def test_run_id_reused_for_the_same_workflow_returns_the_existing_run(db: str) -> None:
    async with serving(db, echo) as (engine, bystander):
        first = await engine.start(echo, "first", run_id="r")
        again = await engine.start(echo, "second", run_id="r")
        assert (again.run_id, again.workflow) == ("r", "echo")
        assert await again.result() == "first"
        assert await first.result() == "first"
        again = await engine.start(echo, "third", run_id="r")
        assert await again.result() == "first"
        started = [e for e in await engine.history("r") if (e.kind, e.event) == ("run", "started")]
        assert len(started) == 1
        assert started[0].value == ("first",)
        await bystander.check(engine)


async def test_start_with_bad_run_id_raises_at_the_call(db: str) -> None:
    cases: list[tuple[Any, type[Exception], str]] = [
        ("", ValueError, "run_id must be a non-empty string, got ''"),
        (42, TypeError, "run_id must be a str, got 42 (int)"),
        ("r\ud800", ValueError, "run_id must be valid unicode text, got 'r\\ud800'"),
    ]
    async with serving(db, echo) as (engine, bystander):
        for run_id, error, message in cases:
            with pytest.raises(error, match=msg(message)):
                await engine.start(echo, 1, run_id=run_id)
        assert [info.run_id for info in await engine.runs()] == ["bystander"]
        await bystander.check(engine)


# --------------------------------------------------------------------- duplicate keys


async def test_duplicate_key_fails_the_run_without_entering_except(db: str) -> None:
    side: list[str] = []

    def fetch_again() -> Generator[Any, Any, Any]:
        side.append("fetching again")
        yield Step("fetch:v1", double, 2)  # duplicate-yield

    @replay.workflow(name="dup")
    def dup() -> Generator[Any, Any, Any]:
        try:
            yield Step("fetch:v1", double, 1)
            yield from fetch_again()  # duplicate-delegation
        except Exception:
            side.append("except")
        finally:
            side.append("finally")
        side.append("after")

    message = ("workflow 'dup' yielded key 'fetch:v1' twice in one execution of run 'r'; a "
               "key may be yielded once per execution: make it unique, e.g. "
               'f"fetch:v1:{i}" for the i-th item')
    async with serving(db, dup) as (engine, bystander):
        run = await engine.start(dup, run_id="r")
        with pytest.raises(WorkflowFailed, match=msg(f"run 'r' failed: "
                                                      f"replay.DuplicateKeyError: {message}")):
            await run.result()
        assert side == ["fetching again", "finally"]
        info = engine.status("r")
        assert info.state is RunState.FAILED
        assert info.error_type == qualified(DuplicateKeyError) == "replay.DuplicateKeyError"
        assert info.error is not None
        assert info.error.startswith("Traceback (most recent call last):\n")
        assert info.error.endswith(f"replay.DuplicateKeyError: {message}\n")
        assert frames(info.error) == [here("duplicate-delegation", "dup"),
                                      here("duplicate-yield", "fetch_again")]
        failed = [e for e in await engine.history("r") if (e.kind, e.event) == ("run", "failed")]
        assert [(e.error_type, e.error) for e in failed] == [(info.error_type, info.error)]
        await bystander.check(engine)


async def test_duplicate_key_executes_nothing_yielded_while_closing(db: str) -> None:
    cleanups: list[int] = []

    def cleanup() -> None:
        cleanups.append(1)

    @replay.workflow(name="dup")
    def dup() -> Generator[Any, Any, Any]:
        try:
            yield Step("fetch:v1", double, 1)
            yield Step("fetch:v1", double, 2)
        finally:
            yield Step("cleanup:v1", cleanup)

    async with serving(db, dup) as (engine, bystander):
        run = await engine.start(dup, run_id="r")
        with pytest.raises(WorkflowFailed) as failed:
            await run.result()
        assert failed.value.error_type == "replay.DuplicateKeyError"
        assert cleanups == []
        keys = [e.key for e in await engine.history("r") if e.kind == "step"]
        assert keys == ["fetch:v1"]
        await bystander.check(engine)


# ------------------------------------------------------ unknown runs, closed engines


def unknown_run_message(run_id: str) -> str:
    return (f"no run with run_id {run_id!r} in this database; "
            "list existing runs with engine.runs()")


async def test_unknown_run_id_raises_run_not_found(db: str) -> None:
    async with serving(db, echo) as (engine, bystander):
        for operation in ["status", "get_run", "history", "resume"]:
            with pytest.raises(RunNotFound, match=msg(unknown_run_message("nope"))) as raised:
                outcome = getattr(engine, operation)("nope")
                if inspect.iscoroutine(outcome):
                    await outcome
            assert raised.value.run_id == "nope"
        await bystander.check(engine)


CLOSED = "the engine is closed; open a new one with replay.open_engine()"


async def test_engine_used_after_close_raises_engine_closed(db: str) -> None:
    async with replay.open_engine(db, workflows=[echo], durability="none") as engine:
        await (await engine.start(echo, 1, run_id="r")).result()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: engine.start(echo, 1), lambda: engine.resume("r"),
        lambda: engine.sql("SELECT 1"), lambda: engine.history("r"),
    ]
    for call in calls:
        with pytest.raises(EngineClosed, match=msg(CLOSED)):
            await call()
    assert engine.status("r").output == 1
    assert [info.run_id for info in await engine.runs()] == ["r"]


async def test_waiting_on_a_run_when_the_engine_closes_raises_engine_closed(db: str) -> None:
    message = ("the engine closed while waiting for run 'bystander'; it continues when an "
               "engine opens the database again")
    waited: list[BaseException] = []

    async def wait(run: replay.Run) -> None:
        try:
            await run.result()
        except EngineClosed as error:
            waited.append(error)

    async with trio.open_nursery() as nursery, serving(db, shutdown_timeout=1) as (_, bystander):
        assert bystander.run is not None
        nursery.start_soon(wait, bystander.run)
        await trio.sleep(0.5)
    assert [str(error) for error in waited] == [message]
    with pytest.raises(EngineClosed, match=msg(message)):
        await bystander.run.wait()


# ------------------------------------------------------------------- locked databases


def locked_here(path: str) -> str:
    return (f"database {path!r} is already open by another engine in this process "
            f"(PID {os.getpid()}); use that engine, or close it before opening another")


@pytest.mark.duckdb_only  # file locks; PostgreSQL locks worker names (test_pg_sharing)
async def test_second_engine_in_the_same_process_raises_database_locked_at_once(
    db: str,
) -> None:
    async with serving(db, echo) as (engine, bystander):
        began = trio.current_time()
        with pytest.raises(DatabaseLocked, match=msg(locked_here(db))) as raised:
            async with replay.open_engine(db, workflows=[echo], durability="none"):
                pytest.fail("a second engine opened the file")
        assert trio.current_time() == began  # at once: no (virtual) time passed
        assert raised.value.pid == os.getpid()
        assert isinstance(raised.value, DatabaseError)
        assert await (await engine.start(echo, "still serving")).result() == "still serving"
        await bystander.check(engine)
    async with replay.open_engine(db, workflows=[echo], durability="none") as engine:
        assert engine.status("bystander").state is RunState.COMPLETED


@pytest.mark.duckdb_only  # file locks
async def test_second_engine_through_a_symlink_raises_database_locked(
    db: str, tmp_path: Path
) -> None:
    link = tmp_path / "link.duckdb"
    async with serving(db, echo) as (engine, bystander):
        link.symlink_to(db)
        with pytest.raises(DatabaseLocked, match=msg(locked_here(str(link)))):
            async with replay.open_engine(link, workflows=[echo], durability="none"):
                pytest.fail("a second engine opened the file")
        await bystander.check(engine)


@pytest.mark.duckdb_only  # file locks
async def test_second_engine_through_a_hard_link_raises_database_locked(
    db: str, tmp_path: Path
) -> None:
    link = tmp_path / "hard.duckdb"
    async with serving(db, echo) as (engine, bystander):
        os.link(db, link)
        with pytest.raises(DatabaseLocked, match=msg(locked_here(str(link)))):
            async with replay.open_engine(link, workflows=[echo], durability="none"):
                pytest.fail("a second engine opened the file")
        await bystander.check(engine)


async def test_lock_timeout_waits_until_the_other_engine_closes(db: str) -> None:
    holding = trio.Event()
    closed_at: list[float] = []
    # Enough data that closing the first engine (a checkpoint) takes real time.
    value = random.Random(1).randbytes(MIB)

    async def hold() -> None:
        async with replay.open_engine(db, workflows=[echo], durability="none") as first:
            assert await (await first.start(echo, value, run_id="a")).result() == value
            holding.set()
            await trio.sleep(2)
        closed_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        await holding.wait()
        began = trio.current_time()
        async with replay.open_engine(db, workflows=[echo], durability="none",
                                      lock_timeout=3) as second:
            opened_at = trio.current_time()
            assert second.status("a").output == value
    assert closed_at
    assert closed_at[0] <= opened_at < began + 3
    assert opened_at >= began + 1.9


@pytest.mark.duckdb_only  # file locks; PostgreSQL locks worker names (test_pg_sharing)
async def test_lock_timeout_expires_with_database_locked(db: str) -> None:
    async with serving(db, echo) as (engine, bystander):
        began = trio.current_time()
        with pytest.raises(DatabaseLocked, match=msg(locked_here(db))):
            async with replay.open_engine(db, workflows=[echo], durability="none",
                                          lock_timeout=1):
                pytest.fail("a second engine opened the file")
        assert 1 <= trio.current_time() - began < 1.5
        await bystander.check(engine)


def hold_in_another_process(path: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, str(HERE / "lock_holder.py"), path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    return child


def stop(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait()
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            stream.close()


def locked_elsewhere(path: str, child: subprocess.Popen[str]) -> str:
    command = " ".join([sys.executable, str(HERE / "lock_holder.py"), path])[:120]
    return (f"database {path!r} is locked by another process (PID {child.pid}: {command}); "
            "stop that engine first, or pass lock_timeout= to wait for it")


@pytest.mark.duckdb_only  # file locks
async def test_database_held_by_another_process_raises_database_locked(
    db: str, tmp_path: Path
) -> None:
    child = hold_in_another_process(db)
    try:
        message = msg(locked_elsewhere(db, child))
        async with serving(tmp_path / "other.duckdb", echo) as (engine, bystander):
            began = trio.current_time()
            with pytest.raises(DatabaseLocked, match=message) as raised:
                async with replay.open_engine(db, workflows=[echo], durability="none",
                                              lock_timeout=0):
                    pytest.fail("the engine opened a file another process holds")
            assert raised.value.pid == child.pid
            assert trio.current_time() == began  # at once: no (virtual) time passed
            # With a lock_timeout, it tries until the timeout, then raises the same.
            with pytest.raises(DatabaseLocked, match=message):
                async with replay.open_engine(db, workflows=[echo], durability="none",
                                              lock_timeout=1):
                    pytest.fail("the engine opened a file another process holds")
            assert 1 <= trio.current_time() - began < 1.5
            await bystander.check(engine)
    finally:
        stop(child)
    async with replay.open_engine(db, workflows=[echo], durability="none") as engine:
        assert await engine.runs() == []


# -------------------------------------------------------- corrupted and newer databases


UNUSABLE_SUFFIX = ("; if the file is corrupted, restore it from a backup or move it aside "
                   "to start a new database")


def unusable(path: str | Path) -> str:
    return msg_around(f"cannot open {str(path)!r} as a replay database: ", UNUSABLE_SUFFIX)


async def make_database(path: Path, runs: int = 3, size: int = 10) -> None:
    """Fill a database with completed runs of `echo` holding incompressible values."""
    async with replay.open_engine(path, workflows=[echo], durability="none") as engine:
        for i in range(runs):
            value = random.Random(i).randbytes(size)
            assert await (await engine.start(echo, value, run_id=f"r{i}")).result() == value


async def test_file_that_is_not_a_database_raises_database_error(tmp_path: Path) -> None:
    contents = {"random": random.Random(7).randbytes(100_000), "text": b"hello, world\n"}
    async with serving(tmp_path / "other.duckdb", echo) as (engine, bystander):
        for name, content in contents.items():
            path = tmp_path / f"{name}.duckdb"
            path.write_bytes(content)
            with pytest.raises(DatabaseError, match=unusable(path)) as raised:
                async with replay.open_engine(path, workflows=[echo], durability="none"):
                    pytest.fail("the engine opened a corrupted file")
            assert not isinstance(raised.value, DatabaseLocked)
            assert path.read_bytes() == content
        await bystander.check(engine)


async def test_truncated_database_raises_database_error(tmp_path: Path) -> None:
    source, path = tmp_path / "source.duckdb", tmp_path / "truncated.duckdb"
    await make_database(source)
    data = source.read_bytes()
    async with serving(tmp_path / "other.duckdb", echo) as (engine, bystander):
        for cut in (len(data) // 2, 12_288, 100):
            path.write_bytes(data[:cut])
            with pytest.raises(DatabaseError, match=unusable(path)):
                async with replay.open_engine(path, workflows=[echo], durability="none"):
                    pytest.fail("the engine opened a truncated file")
        await bystander.check(engine)


async def test_corrupted_block_anywhere_raises_database_error(tmp_path: Path) -> None:
    source = tmp_path / "source.duckdb"
    await make_database(source, runs=2, size=60_000)
    data = source.read_bytes()
    noise = random.Random(3)
    problems: list[tuple[int, str]] = []
    # DuckDB: three 4 KiB header blocks, then 256 KiB blocks, each with a checksum.
    for offset in range(12_288, len(data), 262_144):
        path = tmp_path / f"corrupted-{offset}.duckdb"
        corrupted = bytearray(data)
        corrupted[offset + 16:offset + 80] = noise.randbytes(64)
        path.write_bytes(bytes(corrupted))
        try:
            async with replay.open_engine(path, workflows=[echo], durability="none") as engine:
                for info in await engine.runs():
                    await engine.history(info.run_id)
                await engine.sql("SELECT count(*), max(length(value)) FROM replay_events")
        except (DatabaseError, QueryError):
            pass
        except Exception as error:
            problems.append((offset, f"{qualified(type(error))}: {error}"))
    assert problems == []


async def test_database_with_newer_schema_raises_database_error(tmp_path: Path) -> None:
    path = tmp_path / "newer.duckdb"
    await make_database(path)
    con = duckdb.connect(str(path))
    newer = str(SCHEMA_VERSION + 1)
    con.execute("UPDATE replay_meta SET value = ? WHERE name = 'schema_version'", [newer])
    con.close()
    message = (f"database {str(path)!r} has replay schema version '{newer}', but this "
               f"version of replay reads schema version {SCHEMA_VERSION}; upgrade "
               "replay-workflows to open it")
    async with serving(tmp_path / "other.duckdb", echo) as (engine, bystander):
        with pytest.raises(DatabaseError, match=msg(message)):
            async with replay.open_engine(path, workflows=[echo], durability="none"):
                pytest.fail("the engine opened a database of a newer schema")
        await bystander.check(engine)
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT value FROM replay_meta").fetchall() == [(newer,)]
    # Three events per run: run/started, step/completed, run/completed.
    assert con.execute("SELECT count(*) FROM replay_events").fetchall() == [(9,)]
    con.close()


# ----------------------------------------------------------------- engine.sql rejections


def only_reads(kind: str) -> str:
    return msg(f"engine.sql() only reads: {kind} statements are not allowed; "
               "use SELECT, WITH ... SELECT or EXPLAIN")


SNAPSHOT = """
    SELECT (SELECT count(*) FROM replay_events WHERE run_id <> 'bystander'),
           (SELECT list(table_name ORDER BY table_name) FROM duckdb_tables()),
           (SELECT list(view_name ORDER BY view_name) FROM duckdb_views() WHERE NOT internal),
           (SELECT count(*) FROM duckdb_sequences()),
           (SELECT list(database_name ORDER BY database_name) FROM duckdb_databases()),
           current_setting('threads')
"""

TWO_STATEMENTS = msg("engine.sql() runs exactly one query, got 2 statements; send them one "
                     "at a time")
PERMISSION = msg_around("query failed: Permission Error: ")


async def assert_sql_rejects(db: str, out: Path, cases: dict[str, str]) -> None:
    """Assert each query of `cases` raises QueryError matching its pattern, changing nothing."""
    async with serving(db, echo) as (engine, bystander):
        await (await engine.start(echo, 1, run_id="r")).result()
        before = await engine.sql(SNAPSHOT)
        for query, pattern in cases.items():
            with pytest.raises(QueryError, match=pattern) as raised:
                await engine.sql(query.format(out=out))
            assert isinstance(raised.value, ReplayError)
            assert await engine.sql(SNAPSHOT) == before, query
        assert not out.exists()
        assert await (await engine.start(echo, 2)).result() == 2
        await bystander.check(engine)


@pytest.mark.duckdb_only  # DuckDB's SQL checks; PostgreSQL's are in test_pg_store
async def test_sql_rejects_writes(db: str, tmp_path: Path) -> None:
    await assert_sql_rejects(db, tmp_path / "out.csv", {
        "INSERT INTO replay_meta VALUES ('x', 'y')": only_reads("INSERT"),
        "UPDATE replay_meta SET value = '9'": only_reads("UPDATE"),
        "DELETE FROM replay_event_log": only_reads("DELETE"),
        "CREATE TABLE t (x INTEGER)": only_reads("CREATE"),
        "CREATE SEQUENCE s": only_reads("CREATE"),
        "DROP VIEW replay_events": only_reads("DROP"),
        "WITH x AS (SELECT 1) INSERT INTO replay_meta SELECT 'x', 'y'": only_reads("INSERT"),
        "EXPLAIN ANALYZE INSERT INTO replay_meta VALUES ('x', 'y')": only_reads("INSERT"),
    })


@pytest.mark.duckdb_only  # DuckDB's SQL checks; PostgreSQL's are in test_pg_store
async def test_sql_rejects_settings_and_maintenance(db: str, tmp_path: Path) -> None:
    await assert_sql_rejects(db, tmp_path / "out.csv", {
        "SET threads = 1": only_reads("SET"),
        "PRAGMA threads = 1": only_reads("SET"),
        "CHECKPOINT": only_reads("CALL"),
        "BEGIN TRANSACTION": only_reads("TRANSACTION"),
    })


@pytest.mark.duckdb_only  # DuckDB's SQL checks; PostgreSQL's are in test_pg_store
async def test_sql_rejects_files_and_other_databases(db: str, tmp_path: Path) -> None:
    await assert_sql_rejects(db, tmp_path / "out.csv", {
        "COPY replay_meta TO '{out}'": only_reads("COPY"),
        "SELECT * FROM read_csv('/etc/passwd')": PERMISSION,
        "SELECT * FROM '{out}'": PERMISSION,
        "ATTACH ':memory:' AS other": only_reads("ATTACH"),
        "INSTALL httpfs": only_reads("LOAD"),
    })


@pytest.mark.duckdb_only  # DuckDB's SQL checks; PostgreSQL's are in test_pg_store
async def test_sql_rejects_anything_but_exactly_one_query(db: str, tmp_path: Path) -> None:
    await assert_sql_rejects(db, tmp_path / "out.csv", {
        "SELECT 1; SELECT 2": TWO_STATEMENTS,
        "SELEC 1": msg_around("query failed: Parser Error: syntax error"),
    })


@pytest.mark.duckdb_only  # DuckDB's SQL checks; PostgreSQL's are in test_pg_store
async def test_sql_rejects_explain_analyze_of_set(db: str, tmp_path: Path) -> None:
    await assert_sql_rejects(db, tmp_path / "out.csv", {
        "EXPLAIN ANALYZE SET threads = 1": msg_around("engine.sql() only reads: "),
    })


@pytest.mark.duckdb_only  # DuckDB's SQL checks; PostgreSQL's are in test_pg_store
async def test_sql_rejects_explain_analyze_of_checkpoint(db: str, tmp_path: Path) -> None:
    await assert_sql_rejects(db, tmp_path / "out.csv", {
        "EXPLAIN ANALYZE CHECKPOINT": msg_around("engine.sql() only reads: "),
    })


@pytest.mark.duckdb_only  # DuckDB's SQL checks; PostgreSQL's are in test_pg_store
async def test_sql_rejects_empty_query_with_clear_message(db: str, tmp_path: Path) -> None:
    message = msg("engine.sql() runs exactly one query, got none; pass one SELECT, "
                  "WITH ... SELECT or EXPLAIN")
    await assert_sql_rejects(db, tmp_path / "out.csv", {"": message, " ;": message})


# ------------------------------------------------------------------ open_engine options


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"durability": "x"}, ValueError, "durability must be 'fsync' or 'none', got 'x' (str)"),
        ({"shutdown_timeout": -1}, ValueError, "shutdown_timeout must be >= 0 seconds, got -1"),
        ({"shutdown_timeout": math.nan}, ValueError,
         "shutdown_timeout must be >= 0 seconds, got nan"),
        ({"lock_timeout": -0.5}, ValueError, "lock_timeout must be >= 0 seconds, got -0.5"),
        ({"lock_timeout": "5"}, TypeError, "lock_timeout must be a number of seconds, got '5' "
                                           "(str)"),
        ({"max_threads": 0}, ValueError, "max_threads must be >= 1, got 0"),
        ({"max_threads": 2.5}, TypeError, "max_threads must be an int, got 2.5 (float)"),
        ({"default_retry": 3}, TypeError,
         "default_retry must be a replay.Retry or None, got 3 (int)"),
        ({"always_replay": "yes"}, TypeError, "always_replay must be a bool, got 'yes' (str)"),
        ({"workflows": "echo"}, TypeError,
         "workflows must be a list of workflow functions, got 'echo' (str)"),
    ],
    ids=["durability", "negative shutdown_timeout", "nan shutdown_timeout",
         "negative lock_timeout", "str lock_timeout", "max_threads=0", "float max_threads",
         "default_retry=3", "str always_replay", "workflows=str"],
)
async def test_open_engine_rejects_bad_option(
    db: str, options: dict[str, Any], error: type, message: str
) -> None:
    kwargs: dict[str, Any] = {"workflows": [echo], "durability": "none", **options}
    with pytest.raises(error, match=msg(message)):
        async with replay.open_engine(db, **kwargs):
            pytest.fail("the engine opened")
    assert not os.path.exists(db)


async def test_open_engine_rejects_bad_path_type() -> None:
    message = "path must be a str or pathlib.Path (or ':memory:'), got 42 (int)"
    with pytest.raises(TypeError, match=msg(message)):
        async with replay.open_engine(42, workflows=[echo]):  # type: ignore[arg-type]
            pytest.fail("the engine opened")


async def test_failed_opens_do_not_disturb_a_running_engine(db: str, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.duckdb"
    garbage.write_bytes(b"not a database")
    attempts: list[tuple[Any, dict[str, Any], type[Exception]]] = [
        (db, {}, DatabaseLocked),
        (tmp_path / "x.duckdb", {"durability": "x"}, ValueError),
        (tmp_path / "x.duckdb", {"workflows": [plain_function]}, TypeError),
        (42, {}, TypeError),
        (garbage, {}, DatabaseError),
    ]
    async with serving(db, echo) as (engine, bystander):
        for path, options, error in attempts:
            kwargs: dict[str, Any] = {"workflows": [echo], "durability": "none", **options}
            with pytest.raises(error):
                async with replay.open_engine(path, **kwargs):
                    pytest.fail("the engine opened")
        assert await (await engine.start(echo, "served")).result() == "served"
        await bystander.check(engine)
    assert not (tmp_path / "x.duckdb").exists()
    # No failed open left the file marked as open in this process.
    async with replay.open_engine(db, workflows=[echo], durability="none") as engine:
        assert engine.status("bystander").state is RunState.COMPLETED


# -------------------------------------- bad values must fail only their own run (bugs)


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


def raise_broken_str() -> None:
    raise BrokenStr


@replay.workflow
def handles_broken_step() -> Generator[Any, Any, Any]:
    try:
        yield Step("broken:v1", raise_broken_str)
    except StepFailed as failure:
        return failure.error_type
    return "not reached"


@replay.workflow
def raises_broken_str() -> Generator[Any, Any, Any]:
    yield Step("one:v1", double, 1)
    raise BrokenStr


@replay.workflow
def raises_huge_error() -> Generator[Any, Any, Any]:
    yield Step("one:v1", double, 1)
    raise ValueError("x" * (5 * MIB))


@replay.workflow
def yields_broken_repr() -> Generator[Any, Any, Any]:
    try:
        yield BrokenRepr()
    except TypeError as error:
        return str(error)
    return "not reached"


async def test_step_error_whose_str_fails_fails_only_its_step(db: str) -> None:
    async with serving(db, handles_broken_step) as (engine, bystander):
        run = await engine.start(handles_broken_step, run_id="r")
        assert await run.result() == qualified(BrokenStr)
        await bystander.check(engine)


async def test_workflow_error_whose_str_fails_fails_only_its_run(db: str) -> None:
    async with serving(db, raises_broken_str) as (engine, bystander):
        run = await engine.start(raises_broken_str, run_id="r")
        with pytest.raises(WorkflowFailed) as failed:
            await run.result()
        assert failed.value.error_type == qualified(BrokenStr)
        await bystander.check(engine)


async def test_workflow_error_with_huge_message_fails_only_its_run(db: str) -> None:
    async with serving(db, raises_huge_error) as (engine, bystander):
        run = await engine.start(raises_huge_error, run_id="r")
        with pytest.raises(WorkflowFailed) as failed:
            await run.result()
        assert failed.value.error_type == "builtins.ValueError"
        assert engine.status("r").state is RunState.FAILED
        await bystander.check(engine)


async def test_yield_value_whose_repr_fails_throws_type_error(db: str) -> None:
    async with serving(db, yields_broken_repr) as (engine, bystander):
        run = await engine.start(yields_broken_repr, run_id="r")
        message = await run.result()
        assert message.startswith("workflow 'yields_broken_repr' yielded ")
        assert message.endswith(" (BrokenRepr); expected a command such as Step, Sleep or "
                                "Suspend")
        await bystander.check(engine)


def test_workflow_name_that_cannot_be_stored_is_rejected() -> None:
    message = "workflow(name=...): name must be valid unicode text, got 'w\\ud800'"
    with pytest.raises(ValueError, match=msg(message)):
        replay.workflow(name="w\ud800")


def sub_workflow() -> Generator[Any, Any, Any]:
    return (yield Step("sub:v1", double, 1))


@replay.workflow
def yields_a_generator() -> Generator[Any, Any, Any]:
    try:
        yield sub_workflow()
    except TypeError as error:
        return str(error)
    return "not reached"


async def test_yield_generator_suggests_yield_from(db: str) -> None:
    async with serving(db, yields_a_generator) as (engine, bystander):
        message = await (await engine.start(yields_a_generator)).result()
        assert message.startswith("workflow 'yields_a_generator' yielded <generator object ")
        assert message.endswith("; to run a sub-workflow inline, write "
                                "`yield from sub_workflow(...)`")
        await bystander.check(engine)


# -- NUL characters: keys and run ids are text in every store --


@pytest.mark.parametrize("make", [
    lambda: replay.Step("a\x00b", len, "x"),
    lambda: replay.Sleep("nap\x00", 1),
    lambda: replay.Suspend("\x00"),
])
def test_a_key_with_nul_is_refused_where_the_command_is_made(make: Callable[[], Any]) -> None:
    with pytest.raises(ValueError, match=r"must not contain NUL characters"):
        make()


async def test_a_run_id_or_signal_key_with_nul_is_refused_and_records_nothing(db: str) -> None:
    def waits() -> Generator[Any, Any, Any]:
        return (yield replay.Suspend("go"))

    async with replay.open_engine(db, workflows=[waits]) as engine:
        with pytest.raises(ValueError, match=r"run_id must not contain NUL"):
            await engine.start(waits, run_id="a\x00b")
        await engine.start(waits, run_id="ok")
        await replay.testing.wait_for_state(engine, "ok", replay.RunState.SUSPENDED)
        before = await engine.sql("SELECT seq, run_id FROM replay_events")
        with pytest.raises(ValueError, match=r"key must not contain NUL"):
            await engine.signal("ok", "g\x00o", 1)
        assert await engine.sql("SELECT seq, run_id FROM replay_events") == before
        assert {run_id for _, run_id in before} == {"ok"}
