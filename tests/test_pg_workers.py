"""Many engine processes on one PostgreSQL schema, each with its own `worker=` name.

Every test runs real engine processes (tests/_pg_worker_proc.py, started with
`sys.executable`) on the `pg_url` schema, and starts runs from this process through an
engine that executes nothing (``worker="submitter", max_runs=0``). Each step execution
appends ``run_id key pid`` to a side file (one ``O_APPEND`` write) and returns the pid,
so the history says which process executed each recorded step and the side file says
which processes executed it at all, recorded or not.

- Two and four workers share 1,000 runs: each run completes once, each step is recorded
  once and executed once, and more than one worker did the work.
- A worker SIGKILLed mid-work: the others take its runs once its lease expires and
  finish them all; a step runs twice only if the killed worker ran it without
  recording it.
- A worker SIGSTOPped past its lease in the middle of long steps: the other takes its
  runs and finishes them; resumed, the stopped worker records nothing (the history is
  unchanged) and stops with `LeaseLost`.
- The same for a worker paused inside its commit (its transaction open, its leases'
  rows locked): the other still takes its runs over.
- A backlog of runs started while no worker ran is claimed as fast as the worker has
  room, not one claim per safety poll.
- A signal (and a cancel) sent through one engine to a run parked in another; and a
  signal to a run no worker holds yet, delivered by the worker that claims it.
- Four engines opening the schema at the same moment, eight times: all open.
- The server restarted under two workers: they reconnect, every run completes once.

The test never sleeps a fixed time to wait for the engines: it polls the database or
the side file with a deadline (`wait_until`), and kills every child it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from _pg_worker_proc import URL_ENV, WORKFLOWS, chain, parked, slow_chain
from childproc import ChildProcess

import replay

SCRIPT = Path(__file__).with_name("_pg_worker_proc.py")
CLUSTER = Path(__file__).resolve().parent.parent / "scripts" / "postgres-cluster"


# -- the worker processes --

class Worker:
    """One engine process: `worker=name` on the schema in $REPLAY_WORKER_URL."""

    def __init__(self, directory: Path, name: str, side: Path, *, lease: float,
                 poll: float, max_runs: int | None, durability: str,
                 pause_trigger: Path | None = None) -> None:
        self.name = name
        self.stop_file = directory / f"{name}.stop"
        pause = [] if pause_trigger is None else [str(pause_trigger)]
        self.child = ChildProcess(
            SCRIPT, [name, str(side), str(self.stop_file), str(lease), str(poll),
                     "none" if max_runs is None else str(max_runs), durability, *pause],
            directory / f"{name}.stderr")
        self.pid = self.child.proc.pid

    def opened(self) -> None:
        line = self.child.line()
        assert line == f"open {self.pid}", f"worker {self.name}: {line!r}; {self.stderr()}"

    def stop(self) -> None:
        """Ask it to close its engine; it must exit 0."""
        self.stop_file.touch()
        code = self.child.exited()
        assert code == 0, f"worker {self.name} exited {code}; {self.stderr()}"

    def running(self) -> bool:
        return self.child.proc.poll() is None

    def stderr(self) -> str:
        return f"[{self.name}, pid {self.pid}] {self.child.stderr()}"


@dataclass
class Setup:
    """What a test works with: the schema, the side file, and a way to start workers."""

    url: str
    side: Path
    directory: Path
    workers: list[Worker]
    durability: str = "none"

    def worker(self, name: str, *, lease: float, poll: float = 0.2,
               max_runs: int | None = None, pause_trigger: Path | None = None) -> Worker:
        started = Worker(self.directory, name, self.side, lease=lease, poll=poll,
                         max_runs=max_runs, durability=self.durability,
                         pause_trigger=pause_trigger)
        self.workers.append(started)
        return started

    def context(self) -> str:
        return "\n".join(worker.stderr() for worker in self.workers)


@pytest.fixture
def setup(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    # The URL through the environment, not the command line (it may hold a password).
    monkeypatch.setenv(URL_ENV, pg_url)
    made = Setup(pg_url, tmp_path / "executions", tmp_path, [])
    try:
        yield made
    finally:
        for worker in made.workers:
            worker.child.close()  # SIGKILL: stopped (SIGSTOP) or not


# -- starting runs, polling, reading what happened --

def submit(url: str, starts: Sequence[tuple[Callable[..., Any], tuple[Any, ...], str]],
           durability: str = "none") -> None:
    """Start every run through a pure client engine (it executes none of them)."""

    async def main() -> None:
        async with replay.open_engine(url, workflows=WORKFLOWS, worker="submitter",
                                      max_runs=0, durability=durability,
                                      serve_cli=False) as engine:
            limiter = trio.CapacityLimiter(100)

            async def one(workflow: Callable[..., Any], args: tuple[Any, ...],
                          run_id: str) -> None:
                async with limiter:
                    await engine.start(workflow, *args, run_id=run_id)

            async with trio.open_nursery() as nursery:
                for workflow, args, run_id in starts:
                    nursery.start_soon(one, workflow, args, run_id)

    trio.run(main)


def query(url: str, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as con:
        return con.execute(text, params).fetchall()


def states(url: str) -> dict[str, int]:
    return dict(query(url, "SELECT state, count(*) FROM replay_runs GROUP BY state"))


def wait_until(condition: Callable[[], Any], seconds: float, what: str, setup: Setup,
               watched: Sequence[Worker] | None = None) -> Any:
    """Poll `condition` until it is true; fail after `seconds`, or when a watched worker
    exits, with the workers' stderr."""
    deadline = time.monotonic() + seconds
    watched = [w for w in setup.workers if w.running()] if watched is None else watched
    while True:
        found = condition()
        if found:
            return found
        dead = [w.name for w in watched if not w.running()]
        if dead or time.monotonic() > deadline:
            why = f"workers {dead} exited" if dead else f"not within {seconds:g}s"
            pytest.fail(f"{what}: {why}; runs by state: {states(setup.url)}\n"
                        f"{setup.context()}", pytrace=False)
        time.sleep(0.05)


def all_completed(setup: Setup, runs: int) -> Callable[[], bool]:
    def check() -> bool:
        found = states(setup.url)
        unexpected = set(found) - {"running", "sleeping", "suspended", "completed"}
        assert not unexpected, f"runs by state: {found}\n{setup.context()}"
        return found.get("completed", 0) == runs
    return check


def executions(side: Path) -> dict[tuple[str, str], list[int]]:
    """The pids that executed each (run_id, key), from the side file."""
    found: dict[tuple[str, str], list[int]] = defaultdict(list)
    if side.exists():
        for line in side.read_text().splitlines():
            run_id, key, pid = line.split()
            found[run_id, key].append(int(pid))
    return found


def held_by(setup: Setup, worker: str) -> set[str]:
    """The root runs of the families `worker` holds a lease on."""
    return {row[0] for row in query(setup.url, "SELECT root_id FROM replay_lease "
                                               "WHERE owner = %s", [worker])}


def executed_by(side: Path, pid: int) -> int:
    return sum(ran.count(pid) for ran in executions(side).values())


def recorded_steps(url: str) -> dict[tuple[str, str], list[int]]:
    """The values (pids) of every completed step recorded, per (run_id, key)."""
    found: dict[tuple[str, str], list[int]] = defaultdict(list)
    for run_id, key, value in query(url, "SELECT run_id, key, value_json::text "
                                         "FROM replay_event_log WHERE kind = 'step' "
                                         "AND event = 'completed'"):
        found[run_id, key].append(int(value))
    return found


def check_history(setup: Setup, run_ids: Sequence[str], keys: Sequence[str],
                  killed: int | None = None) -> dict[tuple[str, str], int]:
    """Every run completed once, every step recorded once by a process that executed it,
    and executed once; or, with `killed`, at most twice, the killed process among them.

    Returns:
        The pid whose execution was recorded, per (run_id, key).
    """
    found = states(setup.url)
    assert found == {"completed": len(run_ids)}, found
    finished = query(setup.url, "SELECT run_id, count(*) FROM replay_event_log "
                                "WHERE kind = 'run' AND event = 'completed' GROUP BY run_id")
    assert sorted(finished) == [(run_id, 1) for run_id in sorted(run_ids)]
    recorded = recorded_steps(setup.url)
    expected = {(run_id, key) for run_id in run_ids for key in keys}
    assert set(recorded) == expected
    twice = {step: pids for step, pids in recorded.items() if len(pids) != 1}
    assert not twice, f"steps recorded more than once: {sorted(twice.items())[:10]}"
    ran = executions(setup.side)
    assert set(ran) == expected
    for step, pids in recorded.items():
        assert pids[0] in ran[step], (step, pids, ran[step])
    if killed is None:
        again = {step: pids for step, pids in ran.items() if len(pids) != 1}
        assert not again, f"steps executed more than once: {sorted(again.items())[:10]}"
    else:
        again = {step: pids for step, pids in ran.items()
                 if len(pids) > 2 or (len(pids) == 2 and killed not in pids)}
        assert not again, (f"steps executed twice without the killed process {killed}, "
                           f"or more: {sorted(again.items())[:10]}")
    return {step: pids[0] for step, pids in recorded.items()}


# -- the tests --

RUNS = 1000
STEPS = 3
CHAIN_KEYS = [f"s{j}" for j in range(STEPS)]


@pytest.mark.parametrize("count", [2, 4])
def test_workers_share_runs_and_run_each_step_once(setup: Setup, count: int) -> None:
    workers = [setup.worker(f"w{n}", lease=5.0, max_runs=50) for n in range(count)]
    for worker in workers:
        worker.opened()
    run_ids = [f"r{n:04d}" for n in range(RUNS)]
    submit(setup.url, [(chain, (STEPS,), run_id) for run_id in run_ids])
    wait_until(all_completed(setup, RUNS), 60, f"{RUNS} runs completed", setup)
    for worker in workers:
        worker.stop()
    by = check_history(setup, run_ids, CHAIN_KEYS)
    shares = Counter(by.values())
    assert set(shares) <= {worker.pid for worker in workers}, shares
    assert len(shares) > 1, f"one worker executed every step: {shares}"
    # Each run's output lists the pids its steps' recorded values hold.
    outputs = dict(query(setup.url, "SELECT run_id, output_json::text FROM replay_runs"))
    for run_id in run_ids:
        assert json.loads(outputs[run_id]) == [by[run_id, key] for key in CHAIN_KEYS]


def test_a_killed_worker_s_runs_are_finished_by_the_others(setup: Setup) -> None:
    lease, margin, runs = 2.0, 15.0, 300
    run_ids = [f"k{n:03d}" for n in range(runs)]
    submit(setup.url, [(chain, (STEPS,), run_id) for run_id in run_ids])
    workers = [setup.worker(f"w{n}", lease=lease, max_runs=20) for n in range(3)]
    for worker in workers:
        worker.opened()
    victim, survivors = workers[0], workers[1:]
    wait_until(lambda: executed_by(setup.side, victim.pid) >= 20 and held_by(setup, "w0"),
               20, "the victim executed 20 steps and holds runs", setup)
    victim.child.kill()
    killed_at = time.monotonic()
    held = held_by(setup, "w0")  # the families it held when it died
    assert held, "the killed worker held no run"
    wait_until(all_completed(setup, runs), lease + margin,
               f"the survivors completed every run (lease {lease:g}s + {margin:g}s)",
               setup, watched=survivors)
    took = time.monotonic() - killed_at
    for worker in survivors:
        worker.stop()
    check_history(setup, run_ids, CHAIN_KEYS, killed=victim.pid)
    # The survivors finished the runs it held (check_history: every run completed).
    assert not query(setup.url, "SELECT root_id FROM replay_lease WHERE root_id = ANY(%s) "
                                "AND owner = 'w0'", [sorted(held)])
    assert took < lease + margin


def test_a_worker_stopped_past_its_lease_loses_its_runs_and_records_nothing(
        setup: Setup) -> None:
    lease, runs = 1.5, 8
    run_ids = [f"s{n:02d}" for n in range(runs)]
    keys = ["s0", "slow", "s2"]
    submit(setup.url, [(slow_chain, (), run_id) for run_id in run_ids])
    stopped = setup.worker("a", lease=lease, max_runs=4)
    stopped.opened()
    # All its four runs in their slow step: between commits (a process paused inside a
    # transaction would hold its row locks, which nothing here is about).
    wait_until(lambda: sum(stopped.pid in pids for (_, key), pids
                           in executions(setup.side).items() if key == "slow") >= 4,
               20, "worker a in four slow steps", setup)
    os.kill(stopped.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    # Runs it holds in the middle of their slow step (started, not finished).
    held = {run_id for (run_id, key), pids in executions(setup.side).items()
            if key == "slow" and stopped.pid in pids}
    held -= {run_id for (run_id, key), pids in recorded_steps(setup.url).items()
             if key == "slow"}
    assert held
    other = setup.worker("b", lease=lease, max_runs=4)
    other.opened()
    wait_until(all_completed(setup, runs), 25, "worker b completed every run", setup,
               watched=[other])
    assert time.monotonic() - stopped_at >= lease
    before = query(setup.url, "SELECT count(*), max(seq) FROM replay_event_log")
    os.kill(stopped.pid, signal.SIGCONT)
    # Its slow steps finish now; their commits (or its next renewal) find the lease
    # gone: the engine stops with LeaseLost, having recorded nothing.
    history = "SELECT count(*), max(seq) FROM replay_event_log"
    wait_until(lambda: not stopped.running() or query(setup.url, history) != before, 20,
               "worker a stopped after its resume", setup, watched=[other])
    assert query(setup.url, history) == before, (
        f"worker a recorded after it lost its runs: (rows, max seq) {before} -> "
        f"{query(setup.url, history)}")
    code = stopped.child.exited()
    assert code != 0 and "LeaseLost" in stopped.child.stderr(), stopped.stderr()
    other.stop()
    by = check_history(setup, run_ids, keys, killed=stopped.pid)
    for run_id in held:
        assert by[run_id, "slow"] == other.pid and by[run_id, "s2"] == other.pid, run_id


@pytest.mark.parametrize("max_runs", [None, 20])
def test_a_backlog_of_free_runs_is_claimed_without_waiting_for_the_safety_poll(
        setup: Setup, max_runs: int | None) -> None:
    # Runs started while no worker ran: their notifications are gone, so only the
    # worker's own claims take them, as fast as it has room, not one claim per poll.
    poll, runs = 5.0, 200
    run_ids = [f"b{n:03d}" for n in range(runs)]
    submit(setup.url, [(chain, (1,), run_id) for run_id in run_ids])
    worker = setup.worker("w0", lease=15.0, poll=poll, max_runs=max_runs)
    worker.opened()
    wait_until(all_completed(setup, runs), poll,
               f"{runs} free runs completed within one poll_interval ({poll:g}s)", setup)
    worker.stop()
    check_history(setup, run_ids, ["s0"])


def test_a_worker_paused_inside_a_commit_loses_its_runs_and_records_nothing(
        setup: Setup) -> None:
    # Paused (or cut off) between its batch's INSERT and its COMMIT, a worker's session
    # keeps its transaction open on the server, with its locks on the batch's leases.
    lease, margin, runs = 1.5, 10.0, 8
    run_ids = [f"c{n:02d}" for n in range(runs)]
    keys = ["s0", "slow", "s2"]
    submit(setup.url, [(slow_chain, (), run_id) for run_id in run_ids])
    trigger = setup.directory / "pause"
    paused = setup.worker("a", lease=lease, max_runs=4, pause_trigger=trigger)
    paused.opened()
    wait_until(lambda: sum(paused.pid in pids for (_, key), pids
                           in executions(setup.side).items() if key == "slow") >= 4,
               20, "worker a in four slow steps", setup)
    trigger.touch()  # its slow steps' batch pauses it
    assert paused.child.line() == "paused", paused.stderr()
    wait_until(lambda: Path(f"/proc/{paused.pid}/stat").read_text().split(")")[1].split()[0]
               == "T", 10, "worker a stopped", setup, watched=[])
    assert query(setup.url, "SELECT count(*) FROM pg_stat_activity WHERE state = "
                            "'idle in transaction' AND datname = current_database()"
                 ) != [(0,)]
    other = setup.worker("b", lease=lease, max_runs=4)
    other.opened()
    wait_until(all_completed(setup, runs), lease + margin,
               f"worker b completed every run while a is paused inside its commit "
               f"(lease {lease:g}s + {margin:g}s)", setup, watched=[other])
    history = "SELECT count(*) FROM replay_event_log"
    before = query(setup.url, history)
    os.kill(paused.pid, signal.SIGCONT)
    wait_until(lambda: not paused.running() or query(setup.url, history) != before, 20,
               "worker a stopped after its resume", setup, watched=[other])
    assert query(setup.url, history) == before, "worker a recorded after it lost its runs"
    code = paused.child.exited()
    assert code != 0 and "LeaseLost" in paused.child.stderr(), paused.stderr()
    other.stop()
    check_history(setup, run_ids, keys, killed=paused.pid)


def test_a_signal_through_one_engine_reaches_a_run_parked_in_another(setup: Setup) -> None:
    workers = [setup.worker(f"w{n}", lease=5.0) for n in range(2)]
    for worker in workers:
        worker.opened()
    found: dict[str, Any] = {}

    async def main() -> None:
        async with replay.open_engine(setup.url, workflows=WORKFLOWS, worker="client",
                                      max_runs=0, durability="none",
                                      serve_cli=False) as client:
            signalled = await client.start(parked, "one", run_id="p-signal")
            cancelled = await client.start(parked, "two", run_id="p-cancel")
            deadline = trio.current_time() + 20
            while states(setup.url) != {"suspended": 2}:
                assert trio.current_time() < deadline, (states(setup.url), setup.context())
                await trio.sleep(0.05)
            await client.signal("p-signal", "approval:v1", {"approved": 42})
            await client.cancel("p-cancel", reason="no")
            with trio.fail_after(20):
                found["output"] = await signalled.result()
                with pytest.raises(replay.WorkflowFailed) as failed:
                    await cancelled.result()
                found["error_type"] = failed.value.error_type
                found["state"] = (await client.get_run("p-cancel").wait()).state

    trio.run(main)
    output = found["output"]
    assert output["tag"] == "one" and output["signalled"] == {"approved": 42}
    assert found["state"] == "cancelled"
    assert found["error_type"] == "replay.Cancelled"
    for worker in workers:
        worker.stop()
    pids = {worker.pid for worker in workers}
    assert set(output["pids"]) <= pids
    assert states(setup.url) == {"completed": 1, "cancelled": 1}
    ran = executions(setup.side)
    assert ran[("p-signal", "s1")] == output["pids"][1:]
    assert ("p-cancel", "s1") not in ran


def test_a_signal_to_a_run_no_worker_holds_is_delivered_by_the_one_that_claims_it(
        setup: Setup) -> None:
    found: dict[str, Any] = {}

    async def main() -> None:
        async with replay.open_engine(setup.url, workflows=WORKFLOWS, worker="client",
                                      max_runs=0, durability="none",
                                      serve_cli=False) as client:
            run = await client.start(parked, "early", run_id="p-early")
            # No worker yet: the client has no room, so the signal waits in the inbox.
            await client.signal("p-early", "approval:v1", "early")
            assert query(setup.url, "SELECT count(*) FROM replay_inbox") == [(1,)]
            worker = setup.worker("w0", lease=5.0)
            await trio.to_thread.run_sync(worker.opened)
            with trio.fail_after(20):
                found["output"] = await run.result()

    trio.run(main)
    assert found["output"]["signalled"] == "early"
    setup.workers[0].stop()
    assert states(setup.url) == {"completed": 1}
    assert query(setup.url, "SELECT count(*) FROM replay_inbox") == [(0,)]
    assert query(setup.url, "SELECT count(*) FROM replay_event_log WHERE kind = 'signal' "
                            "AND event = 'signalled'") == [(1,)]


def test_engines_opening_one_schema_at_the_same_moment_all_open(setup: Setup) -> None:
    # A GRANT on a view outside the schema's advisory lock, while another engine
    # re-created the view under it, failed opens with 'tuple concurrently updated'.
    rounds, count = 8, 4  # round 0 on the fresh schema, then on the existing one
    go = setup.directory / "go"
    openers = [ChildProcess(SCRIPT, ["--opens", f"w{n}", str(go), str(rounds)],
                            setup.directory / f"opener{n}.stderr") for n in range(count)]
    failures = []
    try:
        for round_ in range(rounds):
            for opener in openers:
                assert opener.line() == f"ready {round_}", opener.stderr()
            Path(f"{go}.{round_}").touch()  # all at once
            for opener in openers:
                line = opener.line()
                assert line is not None and line.startswith(("opened", "failed")), (
                    line, opener.stderr())
                if line.startswith("failed"):
                    failures.append(line)
        for opener in openers:
            assert opener.exited() == 0, opener.stderr()
    finally:
        for opener in openers:
            opener.close()
    assert not failures, "\n".join(failures)


@pytest.fixture
def own_server(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throwaway cluster of this test's own, which `setup` now names (it restarts it).

    Returns its directory (`pg_url`'s server must exist too: `setup` needs it).
    """
    directory = tempfile.mkdtemp(prefix="replay-workers-restart-")
    os.rmdir(directory)
    url = subprocess.run([CLUSTER, "start", directory], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        with psycopg.connect(url, autocommit=True) as con:
            con.execute("CREATE SCHEMA restarted")
        setup.url = f"{url}?options=-csearch_path%3Drestarted"
        setup.durability = "fsync"
        monkeypatch.setenv(URL_ENV, setup.url)
        yield directory
    finally:
        for worker in setup.workers:
            worker.child.close()
        subprocess.run([CLUSTER, "stop", directory], check=False)


def test_a_server_restart_under_two_workers_loses_and_repeats_nothing(
        setup: Setup, own_server: str) -> None:
    runs = 200
    run_ids = [f"x{n:03d}" for n in range(runs)]
    submit(setup.url, [(chain, (STEPS,), run_id) for run_id in run_ids], "fsync")
    workers = [setup.worker(f"w{n}", lease=10.0, max_runs=20) for n in range(2)]
    for worker in workers:
        worker.opened()
    wait_until(lambda: sum(map(len, executions(setup.side).values())) >= 100, 20,
               "100 steps executed", setup)
    done = subprocess.run([CLUSTER, "restart", own_server], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + done.stdout
    wait_until(all_completed(setup, runs), 30, "every run completed after the restart",
               setup)
    for worker in workers:
        worker.stop()
    check_history(setup, run_ids, CHAIN_KEYS)
