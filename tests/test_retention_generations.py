"""Purging earlier generations: what is left folds into the same run state.

A run that continued as new keeps, of its replaced generations, only what its state
still reads. These tests write random histories of such runs (records made by the
core's vocabulary, stamped and stored as the engine stores them), purge their earlier
generations with the store's own deletes, and check that folding what is left gives
exactly what folding everything gave: the mailbox, the current generation's memo and
arguments, the code version, the cancellation and the run's status (its newest note).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pytest

import replay
from replay._codec import encode, to_json
from replay._core._history import RunHistory
from replay._core._records import Encoded, ErrorText, Record, Run
from replay._core._state import fold
from replay._store import FINISHED, Store, delete_generations
from replay._store._purge import plan
from replay._store._rows import history_records, record_row
from replay._store._schema import COLUMNS

pytestmark = pytest.mark.both_stores

START = datetime(2026, 1, 1, tzinfo=UTC)
KEYS = "abcde"


def enc(value: Any) -> Encoded:
    return Encoded(encode(value, key="value"), to_json(value))


def random_history(rng: random.Random, run_id: str) -> list[Record]:
    """A run of 1 to 5 generations, ten days each, of random keyed records."""
    run = Run(run_id, "loop")
    records = [run.started(enc(0), code_version="v1")]
    generations = rng.randint(1, 5)
    for generation in range(generations):
        if generation:
            records.append(run.continued(enc(generation), generation))
        for _ in range(rng.randint(0, 7)):
            records.extend(_random_records(rng, run, generation))
        for record in records:
            if record.recorded_at is None:
                record.generation = generation
                record.recorded_at = START + timedelta(days=10 * generation,
                                                       seconds=len(records))
    return records


def _random_records(rng: random.Random, run: Run, generation: int) -> list[Record]:
    key = rng.choice(KEYS)
    choice = rng.random()
    if choice < 0.25:
        return [run.signalled(key, enc(f"signal {key} in {generation}"), None)]
    if choice < 0.45:
        return [run.step_completed(key, 1, "f", enc(key), 1.0, None)]
    if choice < 0.6:
        return [run.suspended(key, None, None), run.signal_taken(key, None)]
    if choice < 0.75:
        return [run.note(key, enc({"g": generation, "key": key}), f"{key} {generation}")]
    if choice < 0.85:
        return [run.step_late(key, 2, "f", enc("late"), None, 1.0)]
    if choice < 0.95:
        version = f"v{generation + 2}"
        return [run.code_changed("v1", version, enc({"from": "v1", "to": version}))]
    if choice < 0.97:
        return [run.cancel_requested(enc("stop"), None)]
    return [run.step_failed(key, 1, "f", ErrorText("builtins.ValueError",
                                                   ("builtins.ValueError",), "no"),
                            1.0, None)]


def state(records: list[Record]) -> tuple[Any, ...]:
    """Everything a run's state reads from its records."""
    history = RunHistory(records)
    return (history.signals, history.generation, history.arguments, history.code_version,
            history.cancel_reason, history.cancel_pending, history.keys,
            history.unhandled_failure(), fold(records))


def store(db: str, runs: list[list[Record]]) -> None:
    seq = 0
    rows = []
    for records in runs:
        for record in records:
            seq += 1
            record.seq = seq
            rows.append(record_row(record))
    Store(db, "none").close()  # a new file, with the schema an engine creates
    with duckdb.connect(db) as con, con.appender("replay_event_log") as appender:
        appender.append_rows(rows)


def left(db: str) -> dict[str, list[Record]]:
    """Every run's records left in the file, in order."""
    with duckdb.connect(db, read_only=True) as con:
        rows = con.execute(f"SELECT {COLUMNS} FROM replay_event_log ORDER BY seq").fetchall()
    runs: dict[str, list[Record]] = {}
    for record in history_records(rows, db):
        runs.setdefault(record.run_id, []).append(record)
    return runs


@pytest.mark.parametrize("seed", range(8))
def test_what_is_left_folds_into_the_same_state(tmp_path: Any, seed: int) -> None:
    rng = random.Random(seed)
    runs = [random_history(rng, f"r{n}") for n in range(150)]
    db = str(tmp_path / "generations.duckdb")
    store(db, runs)
    before = {records[0].run_id: state(records) for records in runs}
    cutoff = START + timedelta(days=rng.choice([15, 25, 35, 45, 60]))
    with duckdb.connect(db) as con:
        planned = plan(con, cutoff, FINISHED, None)
        assert planned.trees == []  # none of them finished
        generations, deleted = delete_generations(con, planned.generations, cutoff)
    assert (generations, deleted) == (planned.generation_count, planned.generation_events)
    assert deleted > 0
    after = left(db)
    for records in runs:
        run_id = records[0].run_id
        kept = after[run_id]
        assert state(kept) == before[run_id], run_id
        newest = max(r.generation for r in records)
        replaced = max((r.generation for r in records if r.event == "continued"
                        and r.recorded_at is not None and r.recorded_at < cutoff), default=0)
        # Generations not yet replaced before the cutoff are kept whole.
        assert [r for r in kept if r.generation >= replaced] == \
            [r for r in records if r.generation >= replaced]
        assert kept[0].event == "started" and newest == max(r.generation for r in kept)


def test_nothing_of_a_run_that_never_continued_is_deleted(tmp_path: Any) -> None:
    rng = random.Random(99)
    runs = [random_history(rng, f"r{n}") for n in range(50)]
    single = [records for records in runs if max(r.generation for r in records) == 0]
    assert single
    db = str(tmp_path / "generations.duckdb")
    store(db, single)
    with duckdb.connect(db) as con:
        planned = plan(con, START + timedelta(days=1000), FINISHED, None)
    assert planned.generations == []


def test_the_public_report_type() -> None:
    assert replay.PurgeReport(1, 2, 3, None, START).generations_purged == 3
