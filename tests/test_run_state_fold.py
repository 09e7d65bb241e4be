"""The `replay_runs` view agrees with the run-state fold (`replay._core._state.fold`).

Both derive a run's state from its newest state-carrying record: the fold in Python
(the engine, the command line, the history checker), the view in SQL (what users
query). Here the golden histories under ``tests/histories`` and hand-written ones are
written into real database files through the store's writer, and the view is read back
and compared with the fold of the same records. The session-wide hook in ``conftest.py``
makes the same comparison for every file any test closes; the next tests check that
the hook is in place and that it catches a view that disagrees. The last ones check the
store's own fold of one run (`Store.run_row`, in Python) against the SQL aggregate the
read-only access uses (``ONE_RUN``), and that a resume reads a run once.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import _fold_disagreements, _fold_lock, view_disagreements
from stores import memo_state

from replay._codec import CODEC
from replay._codec._export import read_history
from replay._core._history import RunHistory
from replay._core._records import Encoded, ErrorText, Record, Run
from replay._core._state import RunStatus, fold
from replay._store import Store, record_row, utc_or_none
from replay._store._rows import RunRow, run_row
from replay._store._schema import ONE_RUN, TABLE_COLUMNS
from replay._types import RunState

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
T0 = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def enc(value: object) -> Encoded:
    return Encoded(CODEC.encode(value, key="value"), CODEC.to_json(value))


def write_file(path: str, records: list[Record]) -> None:
    """Commit `records` into a new database file the way the engine does (one batch)."""
    store = Store(path, "none")
    store.start_writer()
    committed = threading.Event()
    outcome: list[BaseException | None] = []

    def done(error: BaseException | None) -> None:
        outcome.append(error)
        committed.set()

    try:
        store.submit([record_row(record) for record in records], done)
        assert committed.wait(30)
    finally:
        store.close()
    assert outcome == [None]


def view_rows(path: str) -> dict[str, dict[str, Any]]:
    """``SELECT * FROM replay_runs``, by run id."""
    con = duckdb.connect(path, read_only=True)
    try:
        cursor = con.execute("SELECT * FROM replay_runs")
        names = [column[0] for column in cursor.description or ()]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()
    by_run = {row["run_id"]: row for row in rows}
    assert len(by_run) == len(rows), "one row per run"
    return by_run


def check_agreement(row: dict[str, Any], records: list[Record]) -> RunStatus:
    """Assert that the view's row for a run says what the fold of its records says."""
    status = fold(records)
    assert status is not None
    assert row["state"] == status.state.value
    assert row["waiting_for"] == status.waiting_for
    assert utc_or_none(row["wake_at"]) == status.wake_at
    assert row["status_text"] == status.status_text
    assert row["error_type"] == status.error_type
    assert row["error"] == status.error
    if status.output is None:
        assert row["output_json"] is None
    elif row["output_json"] is not None:  # NULL: the value was too large to render
        assert json.loads(row["output_json"]) == json.loads(
            CODEC.to_json(CODEC.decode(status.output)) or "null")
    # Beyond the fold: the columns the view takes from the run's other records.
    first = records[0]
    assert (first.kind, first.event) == ("run", "started")
    assert row["workflow"] == first.workflow
    assert json.loads(row["input_json"]) == json.loads(
        CODEC.to_json(CODEC.decode(first.value or b"")) or "null")
    assert utc_or_none(row["created_at"]) == first.recorded_at
    assert utc_or_none(row["updated_at"]) == max(
        record.recorded_at for record in records if record.recorded_at is not None)
    return status


# -- (a) the golden histories --


def test_there_are_golden_histories() -> None:
    assert len(HISTORIES) >= 5


@pytest.mark.parametrize("history", HISTORIES, ids=[path.stem for path in HISTORIES])
def test_the_view_agrees_with_the_fold_of_a_golden_history(history: Path,
                                                           tmp_path: Path) -> None:
    run_id, _, records = read_history(history)
    path = str(tmp_path / "golden.duckdb")
    write_file(path, records)
    rows = view_rows(path)
    assert set(rows) == {run_id}
    check_agreement(rows[run_id], records)
    con = duckdb.connect(path, read_only=True)
    try:
        assert view_disagreements(con, path) == (1, [])
    finally:
        con.close()


def test_the_golden_histories_cover_each_ending() -> None:
    states = set()
    for history in HISTORIES:
        status = fold(read_history(history)[2])
        assert status is not None
        states.add(status.state)
    assert {RunState.COMPLETED, RunState.FAILED, RunState.SUSPENDED} <= states


# -- (a) hand-written histories: every state, several runs in one file --


def hand_written() -> dict[str, tuple[list[Record], RunStatus]]:
    """Histories of runs in every state, with what the fold must give for each."""
    error = ErrorText("builtins.ValueError", ("builtins.ValueError", "builtins.Exception"),
                      "bad")
    runs: dict[str, tuple[list[Record], RunStatus]] = {}

    def add(run_id: str, expected: RunStatus, *made: Record) -> None:
        run = Run(run_id, "wf")
        runs[run_id] = ([run.started(enc([run_id])), *made], expected)

    sleeping, backoff, parked = Run("sleeping", "wf"), Run("backoff", "wf"), Run("parked", "wf")
    add("sleeping", RunStatus(RunState.SLEEPING, waiting_for="nap", wake_at=at(60)),
        sleeping.step_completed("a", 1, "m.f", enc(1), 1.0, None),
        sleeping.sleep_scheduled("nap", at(60)))
    add("backoff", RunStatus(RunState.SLEEPING, waiting_for="a", wake_at=at(2)),
        backoff.step_started("a", 1, "m.f", None),
        backoff.step_retrying("a", 1, "m.f", error, 3.0, at(2)))
    add("parked", RunStatus(RunState.SUSPENDED, waiting_for="approval", wake_at=at(90),
                            status_text="waiting for a manager"),
        parked.suspended("approval", at(90), "waiting for a manager"),
        parked.signalled("elsewhere", enc(1), None),  # kept in the mailbox: no change
        parked.resumed(None, enc({"retried_step": None}), None))
    woken = Run("woken", "wf")
    add("woken", RunStatus(RunState.RUNNING),
        woken.suspended("approval", None, "waiting"),
        woken.signalled("approval", enc(True), RunState.RUNNING))
    timed_out = Run("timed-out", "wf")
    add("timed-out", RunStatus(RunState.RUNNING),
        timed_out.suspended("approval", at(5), None),
        timed_out.suspend_timed_out("approval", at(5), ErrorText("replay.SuspendTimeout", (),
                                                                 "no signal")))
    failed = Run("failed", "wf")
    failure = failed.failed("replay.StepFailed", "Traceback ...\nreplay.StepFailed: ...",
                            enc("step 'a' failed"))
    add("failed", RunStatus(RunState.FAILED, error=failure.error,
                            error_type="replay.StepFailed", message=failure.value),
        failed.step_failed("a", 1, "m.f", error, 1.0, None), failure)
    resumed = Run("resumed", "wf")
    add("resumed", RunStatus(RunState.RUNNING),
        resumed.step_failed("a", 1, "m.f", error, 1.0, None),
        resumed.failed("replay.StepFailed", "Traceback ...", enc("failed")),
        resumed.resumed("a", enc({"retried_step": "a"}), RunState.RUNNING),
        resumed.step_started("a", 2, "m.f", None))
    done = Run("completed", "wf")
    output = done.completed(enc({"ok": [1, 2]}))
    add("completed", RunStatus(RunState.COMPLETED, output=output.value),
        done.step_completed("a", 1, "m.f", enc(1), 1.0, None), output)
    big = Run("no-json", "wf")
    unrendered = big.completed(Encoded(CODEC.encode("x" * 10, key="output"), None))
    add("no-json", RunStatus(RunState.COMPLETED, output=unrendered.value), unrendered)
    again = Run("completed-again", "wf")
    add("completed-again", RunStatus(RunState.RUNNING),
        again.completed(enc(1)), again.resumed(None, enc({"retried_step": None}),
                                               RunState.RUNNING))
    cancelled = Record("cancelled", "wf", "run", "cancelled", run_state="cancelled")
    add("cancelled", RunStatus(RunState.CANCELLED), cancelled)
    return runs


def test_the_view_agrees_with_the_fold_in_every_state(tmp_path: Path) -> None:
    runs = hand_written()
    # Interleave the runs' records and give them increasing seqs, then write them in
    # reverse order: the view must order by seq, not by where the rows are stored.
    interleaved: list[Record] = []
    longest = max(len(records) for records, _ in runs.values())
    for index in range(longest):
        interleaved += [records[index] for records, _ in runs.values() if index < len(records)]
    for seq, record in enumerate(interleaved, start=1):
        record.seq, record.recorded_at = seq, at(seq)
    path = str(tmp_path / "states.duckdb")
    write_file(path, interleaved[::-1])
    rows = view_rows(path)
    assert set(rows) == set(runs)
    for run_id, (records, expected) in runs.items():
        assert fold(records) == expected, run_id
        check_agreement(rows[run_id], records)
    assert rows["no-json"]["output_json"] is None
    con = duckdb.connect(path, read_only=True)
    try:
        assert view_disagreements(con, path) == (len(runs), [])
    finally:
        con.close()


# -- (b) the session-wide hook --


def test_every_store_close_is_checked_in_this_session() -> None:
    assert Store.close.__qualname__.startswith("_checked_close")


def test_the_check_catches_a_view_that_disagrees(tmp_path: Path) -> None:
    run = Run("r1", "wf")
    records = [run.started(enc([])), run.sleep_scheduled("nap", at(60))]
    for seq, record in enumerate(records, start=1):
        record.seq, record.recorded_at = seq, at(seq)
    path = str(tmp_path / "wrong.duckdb")
    write_file(path, records)
    con = duckdb.connect(path)
    try:
        # A view that forgets the deadline of a sleeping run.
        con.execute("CREATE OR REPLACE VIEW replay_runs AS SELECT run_id, workflow, "
                    "'sleeping' AS state, NULL AS created_at, NULL AS updated_at, "
                    "NULL AS input_json, NULL AS output_json, NULL AS error_type, "
                    "NULL AS error, 'nap' AS waiting_for, NULL::TIMESTAMPTZ AS wake_at, "
                    "NULL AS status_text, NULL AS status_json, 0 AS generation "
                    "FROM replay_event_log WHERE event = 'started'")
        compared, problems = view_disagreements(con, path)
    finally:
        con.close()
    assert compared == 1
    (problem,) = problems
    assert problem == (
        f"{path}: run 'r1': replay_runs has (state, waiting_for, wake_at, status_text, "
        "error_type, error, output_json, status_json, generation) = ('sleeping', 'nap', "
        "None, None, None, None, None, None, 0), the fold of its 2 records gives "
        f"('sleeping', 'nap', {at(60)!r}, None, None, None, None, None, 0)")


def test_the_hook_records_a_disagreement_when_a_store_closes(tmp_path: Path) -> None:
    path = str(tmp_path / "hooked.duckdb")
    store = Store(path, "none")
    con: duckdb.DuckDBPyConnection = store._con
    run = Run("r1", "wf")
    started = run.started(enc([]))
    started.seq, started.recorded_at = 1, T0
    marks = ", ".join("?" * len(TABLE_COLUMNS.split(",")))
    con.execute(f"INSERT INTO replay_event_log ({TABLE_COLUMNS}) VALUES ({marks})",
                list(record_row(started)))
    # A view that calls every run completed.
    con.execute("CREATE OR REPLACE VIEW replay_runs AS SELECT run_id, 'completed' AS state, "
                "NULL AS waiting_for, NULL::TIMESTAMPTZ AS wake_at, NULL AS status_text, "
                "NULL AS error_type, NULL AS error, NULL AS output_json, NULL AS status_json, "
                "0 AS generation FROM replay_event_log")
    store.close()
    with _fold_lock:
        found = list(_fold_disagreements)
        _fold_disagreements.clear()  # this test made them on purpose
    (problem,) = found
    assert problem.startswith(f"{path}: run 'r1': replay_runs has (state, ")
    assert problem.endswith("= ('completed', None, None, None, None, None, None, None, 0), the "
                            "fold of its 1 records gives ('running', None, None, None, None, "
                            "None, None, None, 0)")


# -- (c) the store's fold of one run agrees with the query the read-only access uses --


def more_runs() -> list[Record]:
    """Runs beyond `hand_written`: notes, a child, a new generation, a deadline."""
    noted, child, renewed = Run("noted", "wf"), Run("child", "wf"), Run("renewed", "wf")
    again = renewed.suspended("s", None, "again")
    again.generation = 1
    return [
        noted.started(enc([]), deadline=at(500)), noted.note("n1", enc(1), "first"),
        noted.sleep_scheduled("nap", at(60)), noted.note("n2", enc({"a": 2}), "second"),
        child.started(enc([]), parent=("noted", "kid")),
        child.step_completed("a", 1, "m.f", enc(1), 1.0, None),
        renewed.started(enc([])), renewed.completed(enc(1)),
        renewed.continued(enc([2]), 1), again,
        Run("no-start", "wf").step_completed("a", 1, "m.f", enc(1), 1.0, None),
    ]


def _one_run(store: Store, run_id: str) -> RunRow | None:
    rows = store._read(ONE_RUN, [run_id])
    return run_row(rows[0], store.path) if rows else None


def _commit(store: Store, records: list[Record]) -> None:
    committed = threading.Event()
    store.submit([record_row(record) for record in records], lambda _: committed.set())
    assert committed.wait(30)


def test_the_store_folds_a_run_as_the_one_run_query_does(tmp_path: Path) -> None:
    records = [record for made, _ in hand_written().values() for record in made]
    records += more_runs()
    for seq, record in enumerate(records, start=1):
        record.seq, record.recorded_at = seq, at(seq)
    run_ids = sorted({record.run_id for record in records} | {"unknown"})
    path = str(tmp_path / "fold.duckdb")
    store = Store(path, "none")
    store.start_writer()
    try:
        for begin in range(0, len(records), 4):  # small batches: rows in the hot log
            _commit(store, records[begin:begin + 4])
        for run_id in run_ids:
            assert store.run_row(run_id) == _one_run(store, run_id), run_id
    finally:
        store.close()
    con = duckdb.connect(path)  # settled by the close; then damaged by hand
    con.execute("UPDATE replay_event_log SET workflow = NULL "
                "WHERE run_id = 'sleeping' AND event = 'started'")
    con.execute("UPDATE replay_event_log SET run_state = 'bogus' "
                "WHERE run_id = 'completed' AND event = 'completed'")
    con.execute("UPDATE replay_event_log SET recorded_at = NULL "
                "WHERE run_id = 'failed' AND event = 'started'")
    # No record with a state (and no time, so the session's view check skips it).
    con.execute("UPDATE replay_event_log SET run_state = NULL, recorded_at = NULL "
                "WHERE run_id = 'cancelled' AND event = 'cancelled'")
    con.execute("UPDATE replay_event_log SET run_state = NULL WHERE run_id = 'cancelled'")
    con.close()
    store = Store(path, "none")
    store.start_writer()
    try:
        for run_id in run_ids:  # every row in the table
            assert store.run_row(run_id) == _one_run(store, run_id), run_id
        later = Run("noted", "wf").note("n3", enc(3), "third")
        later.seq, later.recorded_at = len(records) + 1, at(len(records) + 1)
        _commit(store, [later])  # rows in both
        assert store.run_row("noted") == _one_run(store, "noted")
        assert store.run_row("noted").note_text == "third"  # type: ignore[union-attr]
        assert store.run_row("completed").state == "failed"  # type: ignore[union-attr]
        assert store.run_row("cancelled") is None
        assert store.run_row("no-start") is None
    finally:
        store.close()


def test_a_resume_reads_a_run_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `run_row` keeps the rows it read for the memo load that follows; a commit in
    # between (here another run's) makes that load read again.
    run, other = Run("r1", "wf"), Run("r2", "wf")
    records = [run.started(enc([])), run.step_completed("a", 1, "m.f", enc(1), 1.0, None),
               run.suspended("s", None, None), other.started(enc([]))]
    for seq, record in enumerate(records, start=1):
        record.seq, record.recorded_at = seq, at(seq)
    path = str(tmp_path / "once.duckdb")
    write_file(path, records)
    reads: list[str] = []
    read = Store._read

    def counted(self: Store, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        reads.append(sql)
        return read(self, sql, params)

    monkeypatch.setattr(Store, "_read", counted)
    store = Store(path, "none")
    store.start_writer()
    try:
        memo = memo_state(RunHistory(records[:3]))  # the memo r1's records make
        assert memo_state(store.fold_memo("r1", "wf")) == memo
        reads.clear()
        assert store.run_row("r1") is not None
        assert memo_state(store.fold_memo("r1", "wf")) == memo
        assert len(reads) == 1
        assert store.run_row("r1") is not None
        _commit(store, [Record("r2", "wf", "run", "completed", seq=5, recorded_at=at(5),
                               run_state="completed")])
        assert memo_state(store.fold_memo("r1", "wf")) == memo
        assert len(reads) == 3
        # The memo of the rows just read for the state is folded from them at hand,
        # unless they are more than the caller folds in one piece: then `fold_memo` (in
        # a worker thread) takes them, still with no read.
        assert store.run_row("r1") is not None
        assert store.memo_at_hand("r1", "wf", 1) is None
        assert memo_state(store.fold_memo("r1", "wf")) == memo
        assert store.run_row("r1") is not None
        folded = store.memo_at_hand("r1", "wf", 100)
        assert folded is not None and memo_state(folded) == memo
        assert folded.input() is not None
        assert len(reads) == 5
    finally:
        store.close()
