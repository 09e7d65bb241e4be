"""`fold_rows` folds a run's stored rows into the memo that its records make.

A store reads a run's rows and, for a replay, folds them with `fold_rows`: a step's first
outcome straight from its fields, any other row made a record and applied. Whatever
the history (retries, failures, signals, cancellations, new generations, sleeps,
suspends, groups, children, resumes), the memo must be the one `RunHistory(records)`
makes, and `RunHistory.input` the current generation's input.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from stores import memo_state

from replay._codec import CODEC
from replay._core._history import RunHistory, fold_rows
from replay._core._records import Encoded, ErrorText, Record, Run
from replay._types import RunState

RUN = Run("r1", "wf")
AT = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
ERROR = ErrorText("builtins.ValueError", ("builtins.ValueError",), "no")
KEYS = ("a", "b", "c")
# Rows in a layout of their own: (key, kind, event, attempt, name, value, the record).
FIELDS = (0, 1, 2, 3, 4, 5)


def enc(value: object) -> Encoded:
    return Encoded(CODEC.encode(value, key="v"), None)


def row_of(record: Record) -> tuple[Any, ...]:
    return (record.key, record.kind, record.event, record.attempt, record.name, record.value,
            record)


def record_of(row: tuple[Any, ...]) -> Record:
    record = row[6]
    assert isinstance(record, Record)
    return record


# One record a run may have, made from a key and an attempt number.
MAKERS = [
    lambda key, n: RUN.step_completed(key, n, "m.f", enc(n), 1.0, None),
    lambda key, n: RUN.step_started(key, n, "m.f", None),
    lambda key, n: RUN.step_retrying(key, n, "m.f", ERROR, 1.0, AT, RunState.SLEEPING),
    lambda key, n: RUN.step_failed(key, n, "m.f", ERROR, 1.0, None),
    lambda key, n: RUN.step_abandoned(key, n, "m.f"),
    lambda key, n: RUN.step_interrupted(key, n, "m.f", 1, 3, "replay.ProcessDied"),
    lambda key, n: RUN.step_late(key, n, "m.f", enc(n), None, 1.0),
    lambda key, n: RUN.step_cancelled(key, n, "m.f", "cancelled", None),
    lambda key, n: RUN.step_renamed(key, "m.f", "m.g", enc(["m.f", "m.g"]), "renamed"),
    lambda key, n: RUN.sleep_scheduled(key, AT),
    lambda key, n: RUN.sleep_fired(key, AT),
    lambda key, n: RUN.suspended(key, AT, "waiting", None),
    lambda key, n: RUN.signalled(key, enc(n), None),
    lambda key, n: RUN.resumed(key, enc(None), None),
    lambda key, n: RUN.cancel_requested(enc("stop"), None),
    lambda key, n: RUN.continued(enc([n]), n),
    lambda key, n: RUN.note(key, enc(n), "noted"),
    lambda key, n: RUN.group_started(key, "all", enc(["a", "b"])),
    lambda key, n: RUN.group_completed(key, "all", enc([1, 2]), None),
    lambda key, n: RUN.child_started(key, "wf.child", enc({"run_id": "c"}), None),
    lambda key, n: RUN.child_completed(key, CODEC.encode(n, key="v"), None, None),
]


@st.composite
def histories(draw: st.DrawFn) -> list[Record]:
    records = [RUN.started(enc([1, 2]))]
    for maker, key, number in draw(st.lists(st.tuples(
            st.sampled_from(MAKERS), st.sampled_from(KEYS), st.integers(1, 3)), max_size=40)):
        records.append(maker(key, number))
    for seq, record in enumerate(records, start=1):
        record.seq = seq
    return records


@settings(max_examples=300, deadline=None)
@given(histories())
def test_rows_fold_into_the_memo_their_records_make(records: list[Record]) -> None:
    folded = fold_rows([row_of(record) for record in records], FIELDS, record_of)
    assert memo_state(folded) == memo_state(RunHistory(records))


def test_the_input_is_the_newest_generations() -> None:
    started = RUN.started(enc([1, 2]))
    first = RunHistory([started, RUN.step_completed("a", 1, "m.f", enc(3), 1.0, None)])
    assert first.input() == started.value
    continued = RUN.continued(enc([5]), 1)
    later = RunHistory([started, continued, RUN.step_completed("a", 1, "m.f", enc(3), 1.0,
                                                               None)])
    assert later.input() == continued.value
    assert RunHistory().input() is None


def test_only_a_keys_first_outcome_is_folded_from_its_fields() -> None:
    history = RunHistory()
    assert history.first_outcome("a", 1, "m.f", b"\x01")
    assert not history.first_outcome("a", 2, "m.f", b"\x02")  # the key has a record
    assert not history.first_outcome(None, 1, "m.f", b"\x01")  # a run-level event
    entry = history.get("a")
    assert entry is not None and (entry.attempts, entry.done, entry.value) == (1, True, b"\x01")
