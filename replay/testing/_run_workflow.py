"""The one-call runner: a workflow, an in-memory engine, a virtual clock, scripted signals.

`run_workflow_async` opens a test engine, starts one run and drives it: each time the
run is suspended on a key with a scripted signal, the signal is sent; a run suspended
with a timeout and no scripted signal waits (virtually) for the timeout; a run
suspended with neither is returned as it is. Sleeps and retry back-offs pass in
virtual time. Then the run's history is read and, with `always_replay`, replayed once
more against the code (`replay_records`) so a workflow that took its path by luck
fails even when it never parked.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import trio
import trio.testing

from replay._codec._export import event_of
from replay._core._records import Record
from replay._engine._clock import in_thread
from replay._engine._facade import Engine, internals
from replay._engine._handle import Run
from replay._errors import (
    DuplicateKeyError,
    NondeterminismError,
    ReplayInternalError,
    WorkflowFailed,
    safe_repr,
)
from replay._retry import Retry
from replay._types import Event, RunInfo, RunState
from replay._workflows import check_workflow, workflow_name
from replay.testing._engines import open_test_engine, require_virtual_clock
from replay.testing._replaying import Source, replay_records, yielded_here

DEFAULT_RUN_ID = "test-run"
DEFAULT_MAX_VIRTUAL = timedelta(days=3653)  # ten years of virtual time

_EXECUTED = frozenset({"completed", "retrying", "failed"})


@dataclass(frozen=True, slots=True, repr=False)
class RunResult:
    """How a run driven by `run_workflow` ended.

    Attributes:
        run_id: The run's id.
        workflow: The workflow's registered name.
        state: The run's final `RunState`: ``completed``, ``failed``, or, if it was
            left unfinished, ``suspended`` (no scripted signal for its key),
            ``sleeping`` or ``running`` (`max_virtual` passed first).
        output: The workflow's return value, if it completed; else None.
        error: The `WorkflowFailed` that `Run.result()` raises, if it failed.
        info: The run's final `RunInfo` (``waiting_for``, ``status_text`` ...).
        history: Every event of the run, in order, values decoded.
        executions: How many attempts of each step (by key) executed; a step whose
            outcome was replayed or that never ran is absent.
        signalled: The keys whose scripted signal was sent, in order.
        elapsed: Virtual time from the run's start to its last event.
    """

    run_id: str
    workflow: str
    state: RunState
    output: Any
    error: WorkflowFailed | None
    info: RunInfo
    history: list[Event]
    executions: dict[str, int]
    signalled: tuple[str, ...]
    elapsed: timedelta

    def __repr__(self) -> str:
        parts = [f"run_id={self.run_id!r}", f"state={self.state.value!r}"]
        if self.state is RunState.COMPLETED:
            parts.append(f"output={safe_repr(self.output)}")
        if self.error is not None:
            parts.append(f"error={safe_repr(self.error, limit=1000)}")
        if self.info.waiting_for is not None:
            parts.append(f"waiting_for={self.info.waiting_for!r}")
        parts += [f"executions={self.executions!r}", f"elapsed={self.elapsed!r}"]
        return f"RunResult({', '.join(parts)})"


def run_workflow(
    workflow: Callable[..., Any],
    *args: Any,
    signals: Mapping[str, Any] | None = None,
    start: datetime | None = None,
    run_id: str = DEFAULT_RUN_ID,
    always_replay: bool = True,
    default_retry: Retry | None = None,
    max_virtual: timedelta | float | None = DEFAULT_MAX_VIRTUAL,
) -> RunResult:
    """Run `workflow(*args)` to its end on an in-memory engine under a virtual clock.

    Starts its own ``trio.run`` with ``trio.testing.MockClock(autojump_threshold=0)``,
    so sleeps, retry back-offs and suspend timeouts take no real time. Inside an
    async test, ``await run_workflow_async(...)`` instead.

    Args:
        workflow: A workflow (generator) function.
        *args: The run's input.
        signals: Scripted signals by key: when the run is suspended on a key, its
            value is sent as the signal's payload; a callable is called with the
            run's `RunInfo` at that moment and its result is sent.
        start: The virtual datetime (aware) at which the run starts; None: now.
        run_id: The run's id.
        always_replay: Replay the workflow from the top at every wake-up, and once
            more at the end, failing with `NondeterminismError` if it takes another
            path; pass False to test with the engine's defaults.
        default_retry: Retry policy for steps without `retry=`.
        max_virtual: Stop waiting after this much virtual time (a `timedelta` or
            seconds; None: no limit) and return the run as it stands.

    Returns:
        A `RunResult`. A failed run is a result too (``error`` is set).

    Raises:
        NondeterminismError: The workflow took another path on a replay, or yielded
            a recorded key as another kind of command.
        DuplicateKeyError: The workflow yielded one key twice in one execution.
        EncodingError: An argument or a scripted signal cannot be recorded.
        RuntimeError: Called inside a trio run.
        TypeError: `workflow` is not a generator function, or an option has the
            wrong type.
        ValueError: An option has a wrong value (a naive `start`, a negative
            `max_virtual`).
    """
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "replay.testing.run_workflow() starts its own trio run, so it cannot be "
            "called inside one; use `await replay.testing.run_workflow_async(...)`"
        )
    call = functools.partial(
        run_workflow_async, workflow, *args, signals=signals, start=start, run_id=run_id,
        always_replay=always_replay, default_retry=default_retry, max_virtual=max_virtual)
    result: RunResult = trio.run(call, clock=trio.testing.MockClock(autojump_threshold=0))
    return result


async def run_workflow_async(
    workflow: Callable[..., Any],
    *args: Any,
    signals: Mapping[str, Any] | None = None,
    start: datetime | None = None,
    run_id: str = DEFAULT_RUN_ID,
    always_replay: bool = True,
    default_retry: Retry | None = None,
    max_virtual: timedelta | float | None = DEFAULT_MAX_VIRTUAL,
) -> RunResult:
    """Like `run_workflow`, inside a trio run on `trio.testing.MockClock`.

    Opens its own in-memory engine (see `open_test_engine`) for the one run.

    Returns:
        A `RunResult`.

    Raises:
        NondeterminismError: As `run_workflow`.
        DuplicateKeyError: As `run_workflow`.
        EncodingError: An argument or a scripted signal cannot be recorded.
        RuntimeError: The trio run does not use `trio.testing.MockClock`.
        TypeError: As `run_workflow`.
        ValueError: As `run_workflow`.
    """
    require_virtual_clock("replay.testing.run_workflow_async()")
    check_workflow(workflow)
    scripted = _checked_signals(signals)
    limit = _limit(max_virtual)
    async with open_test_engine([workflow], start=start, always_replay=always_replay,
                                default_retry=default_retry) as engine:
        run = await engine.start(workflow, *args, run_id=run_id)
        signalled: list[str] = []
        with trio.move_on_after(limit):
            await _drive(engine, run, scripted, signalled)
        records = await in_thread(internals(engine).store.load_history, run.run_id)
        result = await _result(engine, run, tuple(signalled), records)
    _raise_rule_error(result)
    if always_replay:
        replay_records(workflow, run.run_id, workflow_name(workflow), records,
                       Source.just_recorded())
    return result


async def _drive(engine: Engine, run: Run, scripted: Mapping[str, Any],
                 signalled: list[str]) -> None:
    """Wait for the run's end, sending scripted signals and waiting out timeouts."""
    waited: set[tuple[str | None, datetime]] = set()
    while True:
        info = await run.wait()
        if info.state is not RunState.SUSPENDED:
            return
        key = info.waiting_for
        if key is not None and key in scripted and key not in signalled:
            value = scripted[key]
            payload = value(info) if callable(value) else value
            signalled.append(key)
            await engine.signal(run.run_id, key, payload)
        elif info.wake_at is not None:
            # A Suspend with a timeout and no scripted signal: let time run to it.
            if (key, info.wake_at) in waited:
                raise ReplayInternalError(
                    f"run {run.run_id!r} is still suspended on {key!r} after its timeout "
                    f"at {info.wake_at}; this is a bug in replay; please report it")
            waited.add((key, info.wake_at))
            await _reach(engine, info.wake_at)
        else:
            return  # nothing will ever wake it


async def _reach(engine: Engine, moment: datetime) -> None:
    """Sleep until the engine clock reads `moment` and every task due then has run."""
    # The deadline the engine's timer task computes for `moment`, to the last bit:
    # both tasks wake together, and the timer wakes the run before this task looks.
    await trio.sleep_until(internals(engine).scheduler.trio_deadline(moment))
    await trio.testing.wait_all_tasks_blocked()


async def _result(engine: Engine, run: Run, signalled: tuple[str, ...],
                  records: list[Record]) -> RunResult:
    info = engine.status(run.run_id)
    error = None
    if info.state is RunState.FAILED:
        try:
            await run.result()
        except WorkflowFailed as failed:
            error = failed
    history = [event_of(record) for record in records]
    return RunResult(
        run_id=run.run_id, workflow=run.workflow, state=info.state,
        output=info.output if info.state is RunState.COMPLETED else None, error=error,
        info=info, history=history, executions=_executions(history), signalled=signalled,
        elapsed=info.updated_at - info.created_at,
    )


def _executions(history: list[Event]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for event in history:
        if (event.kind == "step" and event.event in _EXECUTED and event.key is not None
                and event.error_type != "replay.StepInterrupted"):
            counts[event.key] += 1
    return dict(counts)


_RULE_ERRORS: dict[str, type[NondeterminismError | DuplicateKeyError]] = {
    "replay.NondeterminismError": NondeterminismError,
    "replay.DuplicateKeyError": DuplicateKeyError,
}
_STRING = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_KEY_PATTERNS = (
    re.compile(rf"yielded key (?P<key>{_STRING}) twice"),
    re.compile(rf"recorded key (?P<key>{_STRING}) as a"),
    re.compile(rf"it yielded (?:Step|Sleep|Suspend)\((?P<key>{_STRING})[,)]"),
)


def _raise_rule_error(result: RunResult) -> None:
    """Raise the error of a run failed for breaking a rule of replay, as itself.

    Such a run failed because the workflow's code is wrong, never because a test
    scenario expects it: the test must fail, with the engine's message.
    """
    failed = result.error
    if failed is None or failed.error_type not in _RULE_ERRORS:
        return
    error = _RULE_ERRORS[failed.error_type](
        failed.message, run_id=result.run_id, key=_key_in(failed.message))
    raise error from yielded_here(failed.traceback)


def _key_in(message: str) -> str | None:
    """Return the key named by a rule error's message (the engine records no column)."""
    for pattern in _KEY_PATTERNS:
        found = pattern.search(message)
        if found:
            key = ast.literal_eval(found["key"])
            return key if isinstance(key, str) else None
    return None


def _checked_signals(signals: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if signals is None:
        return {}
    if not isinstance(signals, Mapping):
        raise TypeError(
            f"signals must be a mapping of key to payload (or to a function of the run's "
            f"RunInfo), got {safe_repr(signals)} ({type(signals).__name__})"
        )
    for key in signals:
        if not isinstance(key, str):
            raise TypeError(f"signals: every key must be a str (a Suspend's key), got "
                            f"{safe_repr(key)} ({type(key).__name__})")
    return signals


def _limit(max_virtual: timedelta | float | None) -> float:
    if max_virtual is None:
        return math.inf
    if isinstance(max_virtual, timedelta):
        seconds = max_virtual.total_seconds()
    elif isinstance(max_virtual, int | float) and not isinstance(max_virtual, bool):
        seconds = float(max_virtual)
    else:
        raise TypeError(f"max_virtual must be a timedelta, a number of seconds or None, got "
                        f"{safe_repr(max_virtual)} ({type(max_virtual).__name__})")
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"max_virtual must be >= 0, got {max_virtual!r}")
    return seconds
