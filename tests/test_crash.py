"""Crash safety: SIGKILL a process running many runs, reopen, and check nothing is lost.

A child process (`crash_child.py`) runs many concurrent multi-step runs against one
database file. The parent kills it with SIGKILL after a seeded-random number of step
executions (counted from the child's progress lines, so no real-time sleeping), several
rounds on the same file, then lets a last round finish. Step functions append a line to
a side file each time they execute, so the test can see which steps ran again.

Between rounds the parent reads the file directly (read-only; the child is dead, so
there is no lock) and checks SPEC §4.3/§4.4 and §2 rule 6:

* a step whose completion was recorded never runs again (its execution count in the
  side file never changes after the snapshot that first saw it completed);
* every recorded value is the right one, and a run's recorded steps are a prefix of its
  chain (nothing of step j+1 is durable before step j's completion);
* event `seq`s are unique, each run was started once (idempotent `start`), and
  `replay_runs` agrees with the events;
* an attempt with a recorded start and no end (``step/started`` alone) is recorded at
  the next open as ``step/interrupted`` (``replay.StepInterrupted``), charged to that
  step's interruption budget only, never to its retry budget.

Both stores: a DuckDB file, and a PostgreSQL schema (the same child, given a URL).

Set REPLAY_CRASH_SEED to vary where the kills land.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from childproc import ChildProcess, executions
from stores import reading

CHILD = Path(__file__).with_name("crash_child.py")
SEED = int(os.environ.get("REPLAY_CRASH_SEED", "20250601"))
MODULUS = 1_000_003
INTERRUPTED = "replay.StepInterrupted"

pytestmark = [pytest.mark.slow, pytest.mark.both_stores]


# -- the oracle: what the child's workflow must produce (independent of the child) --


def expected_trail(index: int, nsteps: int) -> list[int]:
    value, trail = index * 1000 + 1, []
    for j in range(nsteps):
        value = (value * 31 + j * 7 + 1) % MODULUS
        trail.append(value)
    return trail


def expected_output(index: int, nsteps: int) -> dict[str, Any]:
    trail = expected_trail(index, nsteps)
    return {"index": index, "value": trail[-1], "trail": trail}


# -- the child process --


class Child(ChildProcess):
    """A running `crash_child.py`."""

    def __init__(self, args: list[str], stderr_path: Path) -> None:
        super().__init__(CHILD, args, stderr_path)


@contextmanager
def child(tmp_path: Path, *args: object) -> Iterator[Child]:
    """Launch the child; it is killed and reaped however the block ends.

    The child must write nothing to stderr (no traceback, no logged warning).
    """
    process = Child([str(arg) for arg in args], tmp_path / "child-stderr.txt")
    try:
        yield process
    finally:
        process.close()
    assert process.stderr_path.read_text() == "", process.stderr()


def run_until(process: Child, kill_after: int) -> bool:
    """Read progress lines; SIGKILL after `kill_after` step lines (0: right after open).

    Returns:
        True if the child was killed, False if it finished first (and exited 0).
    """
    steps = 0
    while True:
        line = process.line()
        if line is None or line.startswith("done "):
            status = process.exited()
            assert status == 0, f"the child exited with status {status}; {process.stderr()}"
            return False
        if line.startswith(("step ", "blocked ")):
            steps += 1
        elif line != "open":
            pytest.fail(f"unexpected line from the child: {line!r}")
        if steps >= kill_after:
            process.kill()
            return True


def run_to_end(process: Child) -> dict[str, Any]:
    """Read until the child's final line and return the outputs it printed."""
    while True:
        line = process.line()
        if line is None:
            pytest.fail(f"the child exited without a result (status {process.exited()}); "
                        f"{process.stderr()}")
        if line.startswith("done "):
            status = process.exited()
            assert status == 0, f"the child exited with status {status}; {process.stderr()}"
            outputs: dict[str, Any] = json.loads(line[len("done "):])
            return outputs


def read_until_blocked(process: Child, count: int) -> list[tuple[str, str, int]]:
    """Read lines until `count` steps reported that they block; return them."""
    blocked = []
    while len(blocked) < count:
        line = process.line()
        if line is None or line.startswith("done "):
            pytest.fail(f"the child stopped before {count} steps blocked; {process.stderr()}")
        if line.startswith("blocked "):
            _, run_id, key, attempt = line.split()
            blocked.append((run_id, key, int(attempt)))
    return blocked


# -- reading and checking the file between rounds --


@dataclass
class Snapshot:
    """What one inspection of the database found."""

    completed: set[tuple[str, str]] = field(default_factory=set)
    finished_runs: set[str] = field(default_factory=set)
    run_count: int = 0
    started: list[tuple[str, str, int]] = field(default_factory=list)
    pending_started: list[tuple[str, str, int]] = field(default_factory=list)
    interrupted: list[tuple[str, str, int]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)


def inspect_db(db: str, nruns: int, nsteps: int) -> Snapshot:
    """Read the database (the child is dead), check every invariant after any crash."""
    with reading(db) as con:
        events = con.execute(
            "SELECT seq, run_id, workflow, key, kind, event, attempt, value_json, error_type "
            "FROM replay_events ORDER BY seq"
        ).fetchall()
        runs = con.execute(
            "SELECT run_id, workflow, state, output_json, error_type, waiting_for "
            "FROM replay_runs"
        ).fetchall()
        unique = con.execute(
            "SELECT count(*), count(DISTINCT seq), count(seq) FROM replay_events"
        ).fetchone()
        # Time only moves forward (SPEC §4.8), across restarts too.
        backwards = con.execute(
            "SELECT seq, recorded_at, previous FROM (SELECT seq, recorded_at, "
            "lag(recorded_at) OVER (ORDER BY seq) AS previous FROM replay_events) AS timed "
            "WHERE recorded_at < previous OR recorded_at IS NULL"
        ).fetchall()
        untimed = con.execute(
            "SELECT seq FROM replay_events WHERE kind = 'step' AND event = 'completed' "
            "AND NOT duration_ms >= 0"
        ).fetchall()
    assert unique is not None and unique[0] == unique[1] == unique[2], (
        f"event seqs are not unique: {unique}"
    )
    assert not backwards, f"recorded_at goes backwards: {backwards[:5]}"
    assert not untimed, f"completed attempts without a duration: {untimed[:5]}"
    snapshot = Snapshot(events=events)
    by_run: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for event in events:
        by_run[event[1]].append(event)
    assert set(by_run) <= {f"run-{i}" for i in range(nruns)}, sorted(by_run)
    for run_id, run_events in by_run.items():
        _check_run(run_id, run_events, nsteps, snapshot)
    _check_runs_view(runs, by_run, nsteps, snapshot)
    return snapshot


def _check_run(run_id: str, events: list[tuple[Any, ...]], nsteps: int,
               snapshot: Snapshot) -> None:
    index = int(run_id.removeprefix("run-"))
    trail = expected_trail(index, nsteps)
    kinds = [(e[4], e[5]) for e in events]
    assert kinds[0] == ("run", "started"), f"{run_id}: first event is {kinds[0]}"
    assert kinds.count(("run", "started")) == 1, f"{run_id}: started more than once"
    assert all(e[2] == "crash_chain" for e in events), f"{run_id}: workflow changed"
    unexpected = [e for e in events if e[5] in ("failed", "renamed") or e[4] not in
                  ("run", "step")]
    assert not unexpected, f"{run_id}: unexpected events {unexpected}"
    done_at: dict[str, int] = {}
    started_at: dict[tuple[str, int], int] = {}
    for seq, _, _, key, kind, event, attempt, value_json, error_type in events:
        if kind != "step":
            continue
        j = int(key.removeprefix("s").removesuffix(":v1"))
        assert key == f"s{j}:v1" and 0 <= j < nsteps, f"{run_id}: unexpected key {key!r}"
        # The workflow is sequential: nothing of step j is durable before step j-1 is.
        if j > 0:
            assert f"s{j - 1}:v1" in done_at, (
                f"{run_id}: {event} of {key} recorded before s{j - 1}:v1 completed"
            )
        assert key not in done_at, f"{run_id}: {key} has an event after its completion"
        if event == "completed":
            assert json.loads(value_json) == trail[j], f"{run_id}: wrong value for {key}"
            done_at[key] = seq
            snapshot.completed.add((run_id, key))
        elif event == "started":
            assert (key, attempt) not in started_at, f"{run_id}: {key} #{attempt} restarted"
            started_at[key, attempt] = seq
            snapshot.started.append((run_id, key, attempt))
        else:
            # Our steps never raise: the only attempts without a value are interrupted.
            assert event == "interrupted" and error_type == INTERRUPTED, (
                f"{run_id}: unexpected {event} of {key} ({error_type})"
            )
            assert (key, attempt) in started_at, (
                f"{run_id}: {key} attempt {attempt} interrupted without a recorded start"
            )
            snapshot.interrupted.append((run_id, key, attempt))
        if event in ("completed", "interrupted") and (key, attempt) in started_at:
            del started_at[key, attempt]
    snapshot.pending_started.extend((run_id, k, a) for (k, a) in started_at)
    finished = [e for e in events if e[4] == "run" and e[5] == "completed"]
    if finished:
        assert len(finished) == 1 and finished[0] is events[-1], (
            f"{run_id}: run/completed is not the run's single last event"
        )
        assert len(done_at) == nsteps, f"{run_id}: completed with steps missing"
        assert json.loads(finished[0][7]) == expected_output(index, nsteps), run_id
        snapshot.finished_runs.add(run_id)


def _check_runs_view(runs: list[tuple[Any, ...]], by_run: dict[str, list[tuple[Any, ...]]],
                     nsteps: int, snapshot: Snapshot) -> None:
    run_ids = [row[0] for row in runs]
    assert len(run_ids) == len(set(run_ids)), "replay_runs has a run twice"
    assert set(run_ids) == set(by_run), "replay_runs does not list exactly the started runs"
    snapshot.run_count = len(run_ids)
    for run_id, workflow, state, output_json, error_type, waiting_for in runs:
        assert workflow == "crash_chain" and error_type is None, run_id
        if run_id in snapshot.finished_runs:
            assert state == "completed", f"{run_id}: state {state!r} after run/completed"
            index = int(run_id.removeprefix("run-"))
            assert json.loads(output_json) == expected_output(index, nsteps), run_id
        else:
            # `sleeping` is the (zero) back-off after an interrupted attempt.
            assert state in ("running", "sleeping"), f"{run_id}: unexpected state {state!r}"
            assert output_json is None, run_id
            assert (waiting_for is None) == (state == "running"), (run_id, state, waiting_for)


def check_nothing_completed_ran_again(
    frozen: dict[tuple[str, str], int], snapshot: Snapshot, counts: Counter[tuple[str, str]]
) -> None:
    """Compare with earlier snapshots, then freeze the counts of newly completed steps."""
    again = {step: (count, counts[step]) for step, count in frozen.items()
             if counts[step] != count}
    assert not again, f"completed steps executed again (count at snapshot, now): {again}"
    assert frozen.keys() <= snapshot.completed, "a completed step lost its completion"
    never_ran = [step for step in snapshot.completed if counts[step] < 1]
    assert not never_ran, f"steps recorded as completed never executed: {never_ran}"
    # SPEC §4.1: step j+1 can only have executed once step j's outcome was durable.
    early = [(run_id, key) for run_id, key in counts
             if key != "s0:v1" and (run_id, _previous(key)) not in snapshot.completed]
    assert not early, f"steps executed before the previous step's record was durable: {early}"
    for step in snapshot.completed:
        frozen.setdefault(step, counts[step])


def _previous(key: str) -> str:
    return f"s{int(key.removeprefix('s').removesuffix(':v1')) - 1}:v1"


# -- the tests --


def test_sigkill_rounds_lose_nothing_and_repeat_nothing(tmp_path: Path, db: str) -> None:
    nruns, nsteps, kill_rounds = 20, 8, 5
    rng = random.Random(SEED)
    side = tmp_path / "executions.txt"
    frozen: dict[tuple[str, str], int] = {}
    total = nruns * nsteps
    began = time.monotonic()
    log = []
    for round_number in range(kill_rounds):
        remaining = total - len(frozen)
        # Some kills land at once (during recovery, where attempts record `started`),
        # the others after a random share of the remaining work.
        kill_after = (rng.randint(0, 3) if rng.random() < 0.4
                      else rng.randint(4, max(5, remaining // 3)))
        with child(tmp_path, db, side, nruns, nsteps) as process:
            killed = run_until(process, kill_after)
        snapshot = inspect_db(db, nruns, nsteps)
        check_nothing_completed_ran_again(frozen, snapshot, executions(side))
        log.append(f"round {round_number}: kill after {kill_after} steps "
                   f"({'killed' if killed else 'finished first'}), "
                   f"{len(snapshot.completed)}/{total} steps and "
                   f"{len(snapshot.finished_runs)}/{nruns} runs completed, "
                   f"{len(snapshot.pending_started)} attempt(s) started without outcome")

    with child(tmp_path, db, side, nruns, nsteps) as process:
        outputs = run_to_end(process)
    assert outputs == {f"run-{i}": expected_output(i, nsteps) for i in range(nruns)}
    final = inspect_db(db, nruns, nsteps)
    counts = executions(side)
    check_nothing_completed_ran_again(frozen, final, counts)
    assert final.run_count == nruns
    assert final.finished_runs == {f"run-{i}" for i in range(nruns)}
    completions = Counter((e[1], e[3]) for e in final.events if e[5] == "completed"
                          and e[4] == "step")
    assert completions == Counter({(f"run-{i}", f"s{j}:v1"): 1
                                   for i in range(nruns) for j in range(nsteps)})
    # Every interrupted attempt has an outcome: nothing was left pending at the end.
    assert not final.pending_started, final.pending_started
    assert len(final.interrupted) <= kill_rounds  # recovery attempts run one at a time
    repeated = sum(count - 1 for count in counts.values())
    log.append(f"final: {len(final.events)} events, {sum(counts.values())} step executions "
               f"({repeated} re-executions of unrecorded in-flight steps), "
               f"{len(final.started)} step/started events, "
               f"{len(final.interrupted)} interrupted attempts {final.interrupted}, "
               f"{time.monotonic() - began:.1f}s, seed {SEED}")
    print("\n".join(log))


def test_sigkill_with_steps_in_flight_reexecutes_only_those(tmp_path: Path, db: str) -> None:
    nruns, nsteps, slow = 6, 4, 1
    slow_key = f"s{slow}:v1"
    side, fifo = tmp_path / "executions.txt", tmp_path / "fifo"
    os.mkfifo(fifo)  # never opened for writing: a step opening it blocks for ever
    all_runs = {f"run-{i}" for i in range(nruns)}
    frozen: dict[tuple[str, str], int] = {}

    # Round 1: every run completes s0 and blocks inside the sync step s1; SIGKILL.
    with child(tmp_path, db, side, nruns, nsteps, slow, fifo) as process:
        blocked = read_until_blocked(process, nruns)
        process.kill()
    assert {run_id for run_id, _, _ in blocked} == all_runs
    snapshot = inspect_db(db, nruns, nsteps)
    counts = executions(side)
    assert snapshot.completed == {(run_id, "s0:v1") for run_id in all_runs}
    assert not snapshot.started, "fresh attempts must not record `started`"
    assert counts == Counter({(r, k): 1 for r in all_runs for k in ("s0:v1", slow_key)})
    check_nothing_completed_ran_again(frozen, snapshot, counts)

    # Round 2: recovery runs the first fresh attempt of each run alone, with a durable
    # `started`: the first one blocks again, the others wait their turn; SIGKILL.
    with child(tmp_path, db, side, nruns, nsteps, slow, fifo) as process:
        [(victim, key, attempt)] = read_until_blocked(process, 1)
        process.kill()
    assert (key, attempt) == (slow_key, 1)
    snapshot = inspect_db(db, nruns, nsteps)
    counts = executions(side)
    assert snapshot.started == snapshot.pending_started == [(victim, slow_key, 1)]
    assert snapshot.completed == {(run_id, "s0:v1") for run_id in all_runs}
    assert counts[victim, slow_key] == 2
    check_nothing_completed_ran_again(frozen, snapshot, counts)

    # Round 3: no blocking; everything finishes.
    with child(tmp_path, db, side, nruns, nsteps, slow) as process:
        outputs = run_to_end(process)
    assert outputs == {f"run-{i}": expected_output(i, nsteps) for i in range(nruns)}
    final = inspect_db(db, nruns, nsteps)
    counts = executions(side)
    check_nothing_completed_ran_again(frozen, final, counts)
    assert final.finished_runs == all_runs and not final.pending_started
    # Only the attempt that was running alone when the process died is charged.
    assert final.interrupted == [(victim, slow_key, 1)]
    attempts = {(e[1], e[3]): e[6] for e in final.events if e[5] == "completed"}
    assert attempts[victim, slow_key] == 2
    assert all(attempts[r, slow_key] == 1 for r in all_runs - {victim})
    # In-flight steps ran again (at least once), completed ones never did.
    expected_counts = {(r, f"s{j}:v1"): 1 for r in all_runs for j in range(nsteps)}
    expected_counts.update({(r, slow_key): 2 for r in all_runs})
    expected_counts[victim, slow_key] = 3
    assert counts == Counter(expected_counts)
