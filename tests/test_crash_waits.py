"""Crash safety of parked runs: SIGKILL while runs sleep, are suspended, or are signalled.

A child process (`crash_waits_child.py`) runs sleeper and waiter workflows against one
database file in virtual time (`MockClock(autojump_threshold=0)`, its start anchored
with `set_virtual_start` to a time the parent picks), so no test waits in real time for
a deadline. The parent SIGKILLs it

* once every run is parked (sleeping on ``nap:v1`` or suspended on ``approval:v1``),
* at a seeded-random progress line while runs start,
* right after it printed that some `engine.signal` calls returned,

and then reopens the file at a virtual time before the recorded deadlines, between
them, or after them. It checks (SPEC §2 rules 8-9, §4.3-4.4, §4.8, §6):

* a sleeper wakes exactly at its recorded deadline when that is still ahead at the
  open, and exactly at the open time when it passed while no process ran
  (``sleep/fired`` ``recorded_at``), and a suspend timeout likewise;
* the deadline recorded when a `Sleep`/`Suspend` was first reached survives restarts;
* a signal acknowledged before the kill is durable, delivered after reopening (the run
  completes with that payload), and signalling that key again is `SignalRejected`;
* a timed-out `Suspend` threw `SuspendTimeout` exactly once (one ``timed_out`` event,
  the handler step ran once), and no key has both a signal and a timeout;
* no step whose completion was recorded runs again (a side file counts executions);
* ``replay_runs`` (state, waiting_for, wake_at, status_text, output) agrees with
  ``replay_events``, seqs are unique and ``recorded_at`` never goes back;
* a signal sent right after reopening, while a run whose deadline passed meanwhile
  reads its history, is delivered (a regression test, with the read held back).

Set REPLAY_CRASH_SEED to vary where the random kills land.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import pytest
from childproc import LINE_TIMEOUT, ChildProcess, executions

CHILD = Path(__file__).with_name("crash_waits_child.py")
SEED = int(os.environ.get("REPLAY_CRASH_SEED", "20250601"))
KEY = "approval:v1"
T0 = datetime(2030, 1, 1, 0, 0, 0, 123457, tzinfo=UTC)
HOUR, MINUTE, ODD = timedelta(hours=1), timedelta(minutes=1), timedelta(microseconds=333_667)
NPER = 4  # runs of each kind: sleepers, waiters without timeout, waiters with timeout

pytestmark = pytest.mark.slow


def make_plan() -> dict[str, list[Any]]:
    """Sleepers nap 1h+10i min (even: a duration, odd: until T0+1h+10i min); waiters
    ``wait-i`` have no timeout, ``timed-i`` one of 70+20i min. Deadlines differ."""
    plan: dict[str, list[Any]] = {}
    for i in range(NPER):
        # Odd microseconds everywhere: "exactly at the deadline" is checked to the µs.
        nap = HOUR + 10 * i * MINUTE + (2 * i + 1) * ODD
        plan[f"sleep-{i}"] = ["sleeper", {"seconds": nap.total_seconds()} if i % 2 == 0
                              else {"until": (T0 + nap).isoformat()}]
        plan[f"wait-{i}"] = ["waiter", {"timeout": None}]
        timeout = (70 + 20 * i) * MINUTE + (2 * i + 1) * ODD
        plan[f"timed-{i}"] = ["waiter", {"timeout": timeout.total_seconds()}]
    return plan


PLAN = make_plan()
SLEEPERS = [r for r, (w, _) in PLAN.items() if w == "sleeper"]
WAITERS = [r for r, (w, _) in PLAN.items() if w == "waiter"]


# -- the child process --


class Child(ChildProcess):
    """A running `crash_waits_child.py`, given its configuration as JSON."""

    def __init__(self, config: dict[str, Any], stderr_path: Path) -> None:
        super().__init__(CHILD, [json.dumps(config)], stderr_path)

    def expect(self, prefix: str) -> str:
        """Read lines (skipping progress lines) until one starting with `prefix`."""
        while True:
            line = self.line()
            if line is None:
                pytest.fail(f"the child exited (status {self.proc.wait()}) before "
                            f"{prefix!r}; {self.stderr()}")
            if line.startswith(prefix):
                return line
            check_progress(line)


def check_progress(line: str) -> None:
    words = line.split()
    known = {"open": 2, "started": 2, "step": 4, "parked": 1, "acked": 2, "all-acked": 1}
    if not words or known.get(words[0]) != len(words):
        pytest.fail(f"unexpected line from the child: {line!r}")


@dataclass
class Files:
    db: Path
    side: Path
    tmp: Path


@contextmanager
def child(files: Files, mode: str, start: datetime, signals: list[str] | tuple[()] = (),
          plan: dict[str, list[Any]] = PLAN) -> Iterator[Child]:
    """Launch the child; it is killed and reaped however the block ends.

    The child must write nothing to stderr (no traceback, no logged warning).
    """
    config = {"mode": mode, "db": str(files.db), "side": str(files.side),
              "start": start.isoformat(), "plan": plan, "signals": list(signals),
              "round": mode}
    process = Child(config, files.tmp / "child-stderr.txt")
    try:
        yield process
    finally:
        process.close()
    assert process.stderr_path.read_text() == "", process.stderr()


def opened_at(process: Child) -> datetime:
    return datetime.fromisoformat(process.expect("open ").split()[1])


def run_to_parked(files: Files, start: datetime) -> datetime:
    """A `start` round that ends (SIGKILL) once every run is parked; returns its open."""
    with child(files, "start", start) as process:
        opened = opened_at(process)
        process.expect("parked")
        process.kill()
    return opened


def run_to_end(process: Child) -> dict[str, Any]:
    """Read until the child's final line and return the summary it printed."""
    line = process.expect("done ")
    status = process.proc.wait(timeout=LINE_TIMEOUT)
    assert status == 0, f"the child exited with status {status}; {process.stderr()}"
    summary: dict[str, Any] = json.loads(line[len("done "):])
    return summary


# -- reading and checking the file between rounds --


class Ev(NamedTuple):
    seq: int
    run_id: str
    workflow: str
    key: str | None
    kind: str
    event: str
    attempt: int | None
    value_json: str | None
    error_type: str | None
    recorded_at: datetime
    wake_at: datetime | None


@dataclass
class RunFacts:
    """What the events of one run say about its sleep or suspend."""

    events: list[Ev]
    completed_steps: set[str] = field(default_factory=set)
    scheduled: Ev | None = None  # sleep/scheduled, or suspend/suspended
    fired: Ev | None = None  # sleep/fired, or suspend/timed_out
    signal: Ev | None = None
    finished: Ev | None = None

    @property
    def payload(self) -> Any:
        return None if self.signal is None else json.loads(self.signal.value_json or "null")


@dataclass
class Snapshot:
    runs: dict[str, RunFacts]
    last_recorded_at: datetime

    def durable_signals(self) -> set[str]:
        return {r for r, facts in self.runs.items() if facts.signal is not None}

    def completed(self) -> set[tuple[str, str]]:
        return {(r, key) for r, facts in self.runs.items() for key in facts.completed_steps}


def inspect_db(path: Path) -> Snapshot:
    """Open the file read-only and check every invariant that holds after any crash."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute(
            "SELECT seq, run_id, workflow, key, kind, event, attempt, value_json, error_type, "
            "recorded_at, wake_at FROM replay_events ORDER BY seq"
        ).fetchall()
        view = con.execute(
            "SELECT run_id, workflow, state, output_json, error_type, waiting_for, wake_at, "
            "status_text FROM replay_runs"
        ).fetchall()
    finally:
        con.close()
    events = [Ev(*row[:9], utc(row[9]), None if row[10] is None else utc(row[10]))
              for row in rows]
    seqs = [e.seq for e in events]
    assert len(seqs) == len(set(seqs)), "event seqs are not unique"
    backwards = [(a.seq, b.seq) for a, b in itertools.pairwise(events)
                 if b.recorded_at < a.recorded_at]
    assert not backwards, f"recorded_at goes backwards (SPEC §4.8): {backwards[:5]}"
    by_run: dict[str, list[Ev]] = defaultdict(list)
    for event in events:
        by_run[event.run_id].append(event)
    assert set(by_run) <= set(PLAN), sorted(by_run)
    runs = {run_id: check_run(run_id, run_events) for run_id, run_events in by_run.items()}
    check_runs_view(view, runs)
    last = max(e.recorded_at for e in events) if events else T0
    return Snapshot(runs, last)


def utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def check_run(run_id: str, events: list[Ev]) -> RunFacts:
    workflow, spec = PLAN[run_id]
    facts = RunFacts(events)
    assert (events[0].kind, events[0].event) == ("run", "started"), f"{run_id}: {events[0]}"
    assert sum(e.kind == "run" and e.event == "started" for e in events) == 1, run_id
    assert all(e.workflow == workflow for e in events), f"{run_id}: workflow changed"
    for e in events[1:]:
        assert e.event not in ("failed", "renamed", "resumed", "cancelled"), f"{run_id}: {e}"
        assert facts.finished is None, f"{run_id}: {e.kind}/{e.event} after run/completed"
        if e.kind == "step":
            check_step_event(run_id, facts, e)
        elif e.kind in ("sleep", "suspend"):
            check_wait_event(run_id, facts, e, workflow, spec)
        elif e.kind == "signal":
            assert workflow == "waiter" and e.key == KEY, f"{run_id}: {e}"
            assert facts.signal is None, f"{run_id}: two signals for {KEY} were taken"
            assert facts.fired is None, f"{run_id}: a signal was taken after the timeout"
            assert facts.scheduled is not None, f"{run_id}: signalled before suspending"
            facts.signal = e
        else:
            assert (e.kind, e.event) == ("run", "completed"), f"{run_id}: {e}"
            assert json.loads(e.value_json or "null") == expected_output(run_id, facts), run_id
            facts.finished = e
    return facts


def check_step_event(run_id: str, facts: RunFacts, e: Ev) -> None:
    key = e.key or ""
    assert key not in facts.completed_steps, f"{run_id}: {key} has an event after completing"
    # A step after the wait only runs once the wait is over (its record is durable).
    if key == "before:v1":
        assert facts.scheduled is None, f"{run_id}: before:v1 after the wait began"
    elif key == "timeout:v1":
        assert facts.fired is not None and facts.fired.event == "timed_out", (run_id, e)
    else:
        assert key == "after:v1", f"{run_id}: unexpected step {key!r}"
        over = facts.signal if PLAN[run_id][0] == "waiter" else facts.fired
        assert over is not None, f"{run_id}: after:v1 ran before the wait was over"
    if e.event == "completed":
        assert json.loads(e.value_json or "null") == step_value(run_id, key, facts), (run_id, e)
        facts.completed_steps.add(key)
    else:
        # Our steps never raise: the only attempts without a value are interrupted.
        assert e.event in ("started", "interrupted"), f"{run_id}: {e}"
        assert e.event == "started" or e.error_type == "replay.StepInterrupted", (run_id, e)


def check_wait_event(run_id: str, facts: RunFacts, e: Ev, workflow: str,
                     spec: dict[str, Any]) -> None:
    assert e.key == ("nap:v1" if workflow == "sleeper" else KEY), f"{run_id}: {e}"
    assert "before:v1" in facts.completed_steps, f"{run_id}: waits before before:v1"
    if (e.kind, e.event) == ("suspend", "signalled"):
        # The Suspend took a signal that was in the mailbox before it was reached.
        assert facts.signal is not None and facts.scheduled is None, f"{run_id}: {e}"
        return
    if e.event in ("scheduled", "suspended"):
        assert (e.kind, e.event) in (("sleep", "scheduled"), ("suspend", "suspended")), e
        assert facts.scheduled is None, f"{run_id}: its wait began twice: {e}"
        assert e.wake_at == deadline(run_id, spec, e.recorded_at), (
            f"{run_id}: recorded deadline {e.wake_at} is not the planned one"
        )
        facts.scheduled = e
        return
    assert (e.kind, e.event) in (("sleep", "fired"), ("suspend", "timed_out")), e
    assert facts.scheduled is not None and facts.fired is None, f"{run_id}: {e}"
    assert facts.signal is None, f"{run_id}: timed out although a signal was taken"
    # The deadline recorded when the wait was first reached is the one that fires.
    assert e.wake_at == facts.scheduled.wake_at is not None, f"{run_id}: deadline moved"
    assert e.recorded_at >= e.wake_at, f"{run_id}: fired before its deadline"
    facts.fired = e


def deadline(run_id: str, spec: dict[str, Any], reached_at: datetime) -> datetime | None:
    if "until" in spec:
        return datetime.fromisoformat(spec["until"])
    seconds = spec.get("seconds", spec.get("timeout"))
    return None if seconds is None else reached_at + timedelta(seconds=seconds)


def step_value(run_id: str, key: str, facts: RunFacts) -> str:
    if key == "after:v1" and PLAN[run_id][0] == "waiter":
        return f"{key}:{run_id}:{facts.payload['by']}"
    return f"{key}:{run_id}"


def expected_output(run_id: str, facts: RunFacts) -> dict[str, Any]:
    output: dict[str, Any] = {"run": run_id, "before": f"before:v1:{run_id}"}
    if PLAN[run_id][0] == "sleeper":
        return {**output, "after": f"after:v1:{run_id}"}
    if facts.signal is None:
        return {**output, "timed_out": KEY, "handled": f"timeout:v1:{run_id}"}
    return {**output, "payload": facts.payload, "after": step_value(run_id, "after:v1", facts)}


def derived_state(facts: RunFacts) -> tuple[str, str | None, datetime | None]:
    """The state, waiting_for and wake_at that the events imply (SPEC §3, §6)."""
    state: tuple[str, str | None, datetime | None] = ("running", None, None)
    for e in facts.events:
        if (e.kind, e.event) in (("step", "retrying"), ("sleep", "scheduled")):
            state = ("sleeping", e.key, e.wake_at)
        elif (e.kind, e.event) == ("suspend", "suspended"):
            state = ("suspended", e.key, e.wake_at)
        elif (e.kind == "signal" and state[:2] == ("suspended", e.key)) or (
                e.kind != "run" and e.event in ("completed", "fired", "timed_out")):
            # A signal wakes the run parked on its key; an outcome lets it continue.
            state = ("running", None, None)
        elif (e.kind, e.event) == ("run", "completed"):
            state = ("completed", None, None)
    return state


def check_runs_view(view: list[tuple[Any, ...]], runs: dict[str, RunFacts]) -> None:
    assert sorted(row[0] for row in view) == sorted(runs), "replay_runs lists other runs"
    for run_id, workflow, state, output_json, error_type, waiting_for, wake_at, text in view:
        facts = runs[run_id]
        assert workflow == PLAN[run_id][0] and error_type is None, run_id
        expected = derived_state(facts)
        got = (state, waiting_for, None if wake_at is None else utc(wake_at))
        assert got == expected, f"{run_id}: replay_runs says {got}, the events {expected}"
        assert text == (f"approve {run_id}" if state == "suspended" else None), (run_id, text)
        if state == "completed":
            assert json.loads(output_json) == expected_output(run_id, facts), run_id
        else:
            assert output_json is None, run_id


def check_nothing_completed_ran_again(
    frozen: dict[tuple[str, str], int], snapshot: Snapshot, counts: Counter[tuple[str, str]]
) -> None:
    """Compare with earlier snapshots, then freeze the counts of newly completed steps."""
    again = {step: (count, counts[step]) for step, count in frozen.items()
             if counts[step] != count}
    assert not again, f"completed steps executed again (count at snapshot, now): {again}"
    completed = snapshot.completed()
    assert frozen.keys() <= completed, "a completed step lost its completion"
    never_ran = [step for step in completed if counts[step] < 1]
    assert not never_ran, f"steps recorded as completed never executed: {never_ran}"
    for step in completed:
        frozen.setdefault(step, counts[step])


def check_parked(snapshot: Snapshot, opened: datetime) -> None:
    """Every run is parked, on the deadline recorded in that round or an earlier one."""
    assert sorted(snapshot.runs) == sorted(PLAN)
    for run_id, facts in snapshot.runs.items():
        state, waiting_for, _ = derived_state(facts)
        assert state == ("sleeping" if run_id in SLEEPERS else "suspended"), (run_id, state)
        assert waiting_for == ("nap:v1" if run_id in SLEEPERS else KEY), run_id
        assert facts.scheduled is not None and facts.scheduled.recorded_at <= opened, run_id


def finish(files: Files, start: datetime, signals: list[str], before: Snapshot,
           frozen: dict[tuple[str, str], int]) -> tuple[dict[str, Any], Snapshot]:
    """Reopen at `start`, signal `signals`, let everything finish; check the outcome."""
    earlier = executions(files.side)
    with child(files, "finish", start, signals) as process:
        opened = opened_at(process)
        summary = run_to_end(process)
    # The clock is anchored at `start`, never below what the file recorded (SPEC §4.8).
    assert opened == max(start, before.last_recorded_at)
    after = inspect_db(files.db)
    counts = executions(files.side)
    check_nothing_completed_ran_again(frozen, after, counts)
    assert all(facts.finished is not None for facts in after.runs.values())
    assert summary["outputs"] == {
        run_id: expected_output(run_id, facts) for run_id, facts in after.runs.items()
    }
    # Finished runs take no signal (SPEC §2 rule 9).
    assert summary["late"] == dict.fromkeys(WAITERS, "rejected")
    check_signals_at_open(summary["signals"], before, after, opened)
    check_deadlines(before, after, opened)
    # Nothing killed the finish round: each step not completed before ran once in it.
    assert counts - earlier == Counter(after.completed() - before.completed())
    return summary, after


def check_signals_at_open(outcomes: dict[str, str], before: Snapshot, after: Snapshot,
                          opened: datetime) -> None:
    for run_id, outcome in outcomes.items():
        old, new = before.runs[run_id], after.runs[run_id]
        if old.signal is not None or old.fired is not None:
            # A signal acknowledged in an earlier process (or a timeout) settled the key.
            assert outcome == "rejected", f"{run_id}: a second signal was {outcome}"
            assert new.signal == old.signal, f"{run_id}: the durable signal changed"
        elif outcome == "accepted":
            assert new.signal is not None and new.payload["by"] == "manager-finish", run_id
        else:
            # Only a timeout that was due at the open may beat a signal sent right then.
            assert new.fired is not None and new.fired.event == "timed_out", run_id
            assert old.scheduled is not None and old.scheduled.wake_at is not None
            assert old.scheduled.wake_at <= opened, f"{run_id}: signal rejected for nothing"


def check_deadlines(before: Snapshot, after: Snapshot, opened: datetime) -> None:
    """Deadlines ahead at the open fire exactly on time; passed ones right at the open."""
    for run_id, facts in after.runs.items():
        old = before.runs[run_id]
        assert old.scheduled is not None and facts.scheduled == old.scheduled, run_id
        if facts.fired is None:
            assert facts.signal is not None, f"{run_id}: neither fired nor signalled"
            continue
        assert old.fired is None, f"{run_id}: fired in a round that was frozen"
        wake_at = facts.scheduled.wake_at
        assert wake_at is not None
        assert facts.fired.recorded_at == max(wake_at, opened), (
            f"{run_id}: {facts.fired.kind}/{facts.fired.event} at {facts.fired.recorded_at}, "
            f"deadline {wake_at}, engine opened at {opened}"
        )
        if facts.fired.event == "timed_out":
            # SuspendTimeout was thrown once: one timeout, its handler ran once.
            assert [e.event for e in facts.events].count("timed_out") == 1, run_id
            assert "timeout:v1" in facts.completed_steps, run_id


def signal_round(files: Files, start: datetime, signals: list[str],
                 kill_after: int) -> tuple[list[str], datetime]:
    """Signal `signals` in order; SIGKILL right after reading `kill_after` acks."""
    acked: list[str] = []
    with child(files, "signal", start, signals) as process:
        opened = opened_at(process)
        while len(acked) < kill_after:
            acked.append(process.expect("acked ").split()[1])
        process.kill()
    assert acked == signals[:kill_after]
    return acked, opened


def check_acked_are_durable(snapshot: Snapshot, acked: list[str], signals: list[str],
                            opened: datetime) -> None:
    durable = snapshot.durable_signals()
    # SPEC §2 rule 9 / §4.4: `signal` returned, so the signal survives the SIGKILL.
    assert set(acked) <= durable, f"acknowledged signals lost: {set(acked) - durable}"
    assert durable <= set(signals), durable
    for run_id in durable:
        facts = snapshot.runs[run_id]
        assert facts.payload == {"by": "manager-signal", "run": run_id}, run_id
        assert facts.signal is not None and facts.signal.recorded_at == opened, run_id
        assert facts.fired is None, f"{run_id}: timed out in a frozen round"
    # One signal is sent after the other returned: the durable ones are a prefix.
    assert durable == set(signals[:len(durable)]), (signals, sorted(durable))


# -- the tests --


def make_files(tmp_path: Path) -> Files:
    return Files(tmp_path / "waits.duckdb", tmp_path / "executions.txt", tmp_path)


def test_sigkill_while_parked_and_while_signalling_then_deadlines_ahead(
        tmp_path: Path) -> None:
    files, frozen = make_files(tmp_path), {}
    began = time.monotonic()

    # Round 1: start everything at T0; SIGKILL once every run is parked.
    opened = run_to_parked(files, T0)
    assert opened == T0
    parked = inspect_db(files.db)
    check_parked(parked, T0)
    counts = executions(files.side)
    assert counts == Counter({(r, "before:v1"): 1 for r in PLAN})
    check_nothing_completed_ran_again(frozen, parked, counts)
    for run_id, facts in parked.runs.items():
        assert facts.scheduled is not None and facts.scheduled.recorded_at == T0, run_id

    # Round 2: signal some waiters; SIGKILL right after the third ack. Its virtual
    # start is a day before T0: the clock never reads below the file's records.
    signals = ["wait-0", "timed-0", "wait-1", "timed-1", "wait-2"]
    acked, opened = signal_round(files, T0 - 24 * HOUR, signals, kill_after=3)
    assert opened == T0
    signalled = inspect_db(files.db)
    check_acked_are_durable(signalled, acked, signals, opened)
    check_nothing_completed_ran_again(frozen, signalled, executions(files.side))

    # Round 3 (T0+30min, every deadline ahead): signal every untimed waiter (the acked
    # ones must be rejected) and leave the timed ones that got no signal to time out.
    rest = [r for r in WAITERS if r.startswith("wait-") or r in signalled.durable_signals()]
    summary, final = finish(files, T0 + 30 * MINUTE + ODD, rest, signalled, frozen)
    for run_id in acked:
        assert summary["signals"][run_id] == "rejected", run_id
        assert summary["outputs"][run_id]["payload"] == {"by": "manager-signal", "run": run_id}
    # Nothing was due at the open: each wait ended exactly at its planned deadline.
    fired = {r: f.fired.recorded_at for r, f in final.runs.items() if f.fired is not None}
    assert fired == {r: deadline(r, PLAN[r][1], T0) for r in PLAN
                     if r not in final.durable_signals()}
    assert summary["end"] == max(fired.values()).isoformat()
    print(f"acked {acked}, durable {sorted(signalled.durable_signals())}, "
          f"{time.monotonic() - began:.1f}s")


def test_deadlines_that_passed_while_no_process_ran_fire_right_after_open(
        tmp_path: Path) -> None:
    files, frozen = make_files(tmp_path), {}
    run_to_parked(files, T0)
    parked = inspect_db(files.db)
    check_parked(parked, T0)
    check_nothing_completed_ran_again(frozen, parked, executions(files.side))

    # Reopen at T0+5h, after every deadline: sleepers fire at the open, not at their
    # (past) deadlines; every waiter is signalled at once, racing the due timeouts.
    summary, final = finish(files, T0 + 5 * HOUR, WAITERS, parked, frozen)
    for run_id in SLEEPERS:
        fired = final.runs[run_id].fired
        assert fired is not None and fired.recorded_at == T0 + 5 * HOUR, run_id
    for run_id in WAITERS:
        if run_id.startswith("wait-"):
            assert summary["signals"][run_id] == "accepted", run_id


def test_sigkill_at_random_progress_lines(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    files, frozen = make_files(tmp_path), {}
    log = []
    # Two start rounds killed at a random progress line (runs half started, steps in
    # flight, sleeps and suspends half recorded), at T0 and a few minutes later.
    for number, start in enumerate((T0, T0 + 3 * MINUTE + ODD)):
        kill_after = rng.randint(0, 3 * len(PLAN))
        lines = 0
        with child(files, "start", start) as process:
            opened_at(process)
            while lines < kill_after:
                line = process.line()
                if line is None or line == "parked":
                    break
                check_progress(line)
                lines += 1
            process.kill()
        snapshot = inspect_db(files.db)
        check_nothing_completed_ran_again(frozen, snapshot, executions(files.side))
        log.append(f"start round {number}: killed after {lines} lines, "
                   f"{len(snapshot.runs)} runs, "
                   f"{sum(f.scheduled is not None for f in snapshot.runs.values())} parked")

    opened = run_to_parked(files, T0 + 5 * MINUTE + 2 * ODD)
    parked = inspect_db(files.db)
    check_parked(parked, opened)
    check_nothing_completed_ran_again(frozen, parked, executions(files.side))

    signals = rng.sample(WAITERS, k=len(WAITERS) // 2)
    kill_after = rng.randint(0, len(signals))
    acked, opened = signal_round(files, T0 + 20 * MINUTE, signals, kill_after)
    signalled = inspect_db(files.db)
    check_acked_are_durable(signalled, acked, signals, opened)
    check_nothing_completed_ran_again(frozen, signalled, executions(files.side))
    log.append(f"signal round: {signals}, killed after acks {acked}, durable "
               f"{sorted(signalled.durable_signals())}")

    # Reopen between the deadlines: some passed while no process ran, some are ahead.
    # (sleep-0 at most 1h05 and sleep-1 1h10 passed, sleep-2 from 1h20 and sleep-3 ahead;
    # timed-0 at most 1h15 passed, the other timeouts ahead.)
    start = T0 + HOUR + 17 * MINUTE + 3 * ODD
    rest = [r for r in WAITERS if r.startswith("wait-") or r in signals]
    summary, final = finish(files, start, rest, signalled, frozen)
    wake = {r: f.scheduled.wake_at for r, f in final.runs.items() if f.scheduled}
    passed = sorted(r for r, at in wake.items() if at is not None and at <= start)
    ahead = sorted(r for r, at in wake.items() if at is not None and at > start)
    assert any(r in SLEEPERS for r in passed) and any(r in SLEEPERS for r in ahead), wake
    for run_id in acked:
        assert summary["signals"][run_id] == "rejected", run_id
    log.append(f"finish at {start:%H:%M:%S}: deadlines passed {passed}, ahead {ahead}, "
               f"seed {SEED}")
    print("\n".join(log))


def test_a_signal_sent_while_a_woken_run_reloads_its_history_is_delivered(
        tmp_path: Path) -> None:
    """Regression: the signal used to be lost (SPEC §2 rule 9).

    The engine took the signal into the mailbox while the woken run's task was still
    reading its history; the task then installed that older read as its memo, parked
    on the `Suspend` for ever (until the next open) and took a second signal for the
    key. The read is held back here to make the interleaving certain.
    """
    files = make_files(tmp_path)
    plan = {"race-0": ["nap_then_wait", {"seconds": HOUR.total_seconds()}]}
    with child(files, "start", T0, plan=plan) as process:
        process.expect("parked")
        process.kill()
    # Reopen after the nap's deadline: its timer wakes the run at once, and the run
    # reads its history while the signal is sent.
    with child(files, "race", T0 + 2 * HOUR, ["race-0"], plan=plan) as process:
        opened_at(process)
        summary = run_to_end(process)
    con = duckdb.connect(str(files.db), read_only=True)
    try:
        events = con.execute("SELECT kind, event FROM replay_events WHERE run_id = 'race-0' "
                             "ORDER BY seq").fetchall()
    finally:
        con.close()
    assert summary["signal"] == "accepted", summary
    assert summary == {"signal": "accepted", "state": "completed", "again": "rejected",
                       "output": {"by": "manager-race", "run": "race-0"}}, (summary, events)
    assert events.count(("signal", "signalled")) == 1, events
    assert ("suspend", "suspended") not in events, events
