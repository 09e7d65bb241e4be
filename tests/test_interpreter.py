"""The sans-IO interpreter, driven with literal histories: no trio, no database."""

from __future__ import annotations

import re

import pytest

from replay import DuplicateKeyError, NondeterminismError, Sleep, Step, StepFailed
from replay._codec import decode, encode
from replay._core._history import RunHistory
from replay._core._interpreter import (
    REPLAYED_PER_TURN,
    Fail,
    Finish,
    Interpreter,
    Paused,
    Pending,
)
from replay._core._records import Record


def fetch(n: int) -> int:
    return n


def other(n: int) -> int:
    return n


def completed(key: str, value: object, attempt: int = 1, name: str | None = None) -> Record:
    return Record("r1", "wf", "step", "completed", key=key, attempt=attempt,
                  value=encode(value), name=name or f"{__name__}.fetch")


def failed(key: str, attempt: int = 1) -> Record:
    return Record("r1", "wf", "step", "failed", key=key, attempt=attempt,
                  error_type="builtins.ValueError", error="bad input",
                  error_types=("builtins.ValueError", "builtins.Exception",
                               "builtins.BaseException"), name=f"{__name__}.fetch")


def interpreter(gen: object, *records: Record) -> Interpreter:
    return Interpreter("r1", "wf", gen, RunHistory(list(records)), decode)  # type: ignore[arg-type]


def two_steps():  # type: ignore[no-untyped-def]
    a = yield Step("a:v1", fetch, 1)
    b = yield Step("b:v1", fetch, 2)
    return [a, b]


def test_interpreter_replays_recorded_steps_without_io() -> None:
    decision = interpreter(two_steps(), completed("a:v1", 10), completed("b:v1", 20)).start()
    assert decision == Finish([10, 20])


def test_interpreter_stops_at_the_first_unrecorded_command() -> None:
    machine = interpreter(two_steps(), completed("a:v1", 10))
    decision = machine.start()
    assert decision == Pending(Step("b:v1", fetch, 2), None)
    assert machine.send(7) == Finish([10, 7])


def test_interpreter_sends_a_fresh_copy_of_each_recorded_value() -> None:
    seen: list[object] = []

    def keeps():  # type: ignore[no-untyped-def]
        value = yield Step("a:v1", fetch, 1)
        seen.append(value)
        value.append("mutated")

    history = RunHistory([completed("a:v1", [1])])
    for _ in range(2):
        assert Interpreter("r1", "wf", keeps(), history, decode).start() == Finish(None)
    assert seen == [[1, "mutated"], [1, "mutated"]]
    assert seen[0] is not seen[1]


def test_interpreter_rethrows_a_recorded_failure_identically() -> None:
    caught: list[StepFailed] = []

    def handles():  # type: ignore[no-untyped-def]
        try:
            yield Step("a:v1", fetch, 1)
        except StepFailed as failure:
            caught.append(failure)
            return "compensated"

    assert interpreter(handles(), failed("a:v1", attempt=3)).start() == Finish("compensated")
    (failure,) = caught
    assert (failure.run_id, failure.key, failure.error_type, failure.message, failure.attempts) \
        == ("r1", "a:v1", "builtins.ValueError", "bad input", 3)
    assert failure.is_a(ValueError) and failure.is_a(Exception) and not failure.is_a(KeyError)
    assert failure.__cause__ is None


def test_interpreter_throws_type_error_for_a_non_command() -> None:
    def confused():  # type: ignore[no-untyped-def]
        try:
            yield 42
        except TypeError as error:
            return str(error)

    decision = interpreter(confused()).start()
    assert decision == Finish(
        "workflow 'wf' yielded 42 (int); expected a command such as Step, Sleep or Suspend"
    )


def test_interpreter_points_a_list_of_commands_to_groups() -> None:
    def parallel():  # type: ignore[no-untyped-def]
        yield [Step("a:v1", fetch, 1), Step("b:v1", fetch, 2)]

    decision = interpreter(parallel()).start()
    assert isinstance(decision, Fail)
    assert isinstance(decision.error, TypeError)
    assert re.fullmatch(
        r"workflow 'wf' yielded \[.*\] \(list\); to run commands at once, yield a group "
        r"with its own key, e\.g\. All\('fetch-all:v1', \[\.\.\.\], limit=8\)",
        str(decision.error),
    )


def test_interpreter_fails_a_duplicate_key_without_throwing_it_in() -> None:
    events: list[str] = []

    def duplicates():  # type: ignore[no-untyped-def]
        try:
            yield Step("a:v1", fetch, 1)
            yield Step("a:v1", fetch, 2)  # the offending line
        except DuplicateKeyError:
            events.append("except")
        finally:
            events.append("finally")
            yield Step("cleanup:v1", fetch, 3)  # ignored while closing

    machine = interpreter(duplicates(), completed("a:v1", 1))
    decision = machine.start()
    assert isinstance(decision, Fail)
    assert isinstance(decision.error, DuplicateKeyError)
    assert str(decision.error) == (
        "workflow 'wf' yielded key 'a:v1' twice in one execution of run 'r1'; a key may be "
        "yielded once per execution: make it unique, e.g. f\"a:v1:{i}\" for the i-th item"
    )
    assert events == ["finally"]
    assert "yield Step(\"a:v1\", fetch, 2)  # the offending line" in decision.traceback
    assert decision.traceback.endswith("replay.DuplicateKeyError: " + str(decision.error) + "\n")


def test_interpreter_traceback_points_through_yield_from() -> None:
    def inner():  # type: ignore[no-untyped-def]
        yield Step("a:v1", fetch, 1)
        yield Step("a:v1", fetch, 1)  # inner offending yield

    def outer():  # type: ignore[no-untyped-def]
        yield from inner()

    decision = interpreter(outer()).start()
    assert isinstance(decision, Pending)
    decision = interpreter(outer(), completed("a:v1", 1)).start()
    assert isinstance(decision, Fail)
    lines = decision.traceback.splitlines()
    assert "yield from inner()" in decision.traceback
    assert lines[-2].strip() == "yield Step(\"a:v1\", fetch, 1)  # inner offending yield"


def test_interpreter_detects_a_changed_command_kind() -> None:
    def sleeps():  # type: ignore[no-untyped-def]
        yield Sleep("a:v1", 5)

    decision = interpreter(sleeps(), completed("a:v1", 1)).start()
    assert isinstance(decision, Fail)
    assert isinstance(decision.error, NondeterminismError)
    assert decision.error.key == "a:v1"
    assert str(decision.error) == (
        "run 'r1' of workflow 'wf' recorded key 'a:v1' as a step but the workflow now "
        "yields Sleep('a:v1', datetime.timedelta(seconds=5)); restore the code "
        "that recorded it, or give the new command a new key (e.g. bump ':v1' to ':v2') "
        "and resume the run"
    )


def test_interpreter_uses_the_recorded_outcome_of_a_renamed_step_and_says_so() -> None:
    def renamed():  # type: ignore[no-untyped-def]
        value = yield Step("a:v1", other, 1)
        return value

    machine = interpreter(renamed(), completed("a:v1", 99))
    assert machine.start() == Finish(99)
    (rename,) = machine.renames
    assert (rename.key, rename.recorded, rename.current) == (
        "a:v1", f"{__name__}.fetch", f"{__name__}.other")
    assert rename.message == (
        f"run 'r1': step 'a:v1' was recorded with name '{__name__}.fetch' but now calls "
        f"'{__name__}.other'; the recorded outcome is used. If the function was renamed or "
        f"moved, pass name='{__name__}.fetch' to Step; if the step's meaning changed, bump "
        "its key so that it runs again"
    )


def test_interpreter_records_a_rename_only_once() -> None:
    def renamed():  # type: ignore[no-untyped-def]
        return (yield Step("a:v1", other, 1))

    rename = Record("r1", "wf", "step", "renamed", key="a:v1", name=f"{__name__}.other")
    machine = interpreter(renamed(), completed("a:v1", 5), rename)
    assert machine.start() == Finish(5)
    assert machine.renames == []


def test_resumed_record_voids_the_unhandled_failure() -> None:
    history = RunHistory([completed("a:v1", 1), failed("b:v1", attempt=2)])
    assert history.unhandled_failure() == "b:v1"
    history.apply(Record("r1", "wf", "run", "resumed", name="b:v1"))
    entry = history.get("b:v1")
    assert entry is not None and not entry.done and entry.failure is None
    assert (entry.attempts, entry.charged) == (2, 0)
    assert history.unhandled_failure() is None


def test_a_handled_failure_is_not_an_unhandled_one() -> None:
    history = RunHistory([failed("a:v1"), completed("compensate:v1", None)])
    assert history.unhandled_failure() is None


def test_interpreter_reports_workflow_exceptions_with_their_traceback() -> None:
    def broken():  # type: ignore[no-untyped-def]
        yield Step("a:v1", fetch, 1)
        raise KeyError("missing")

    decision = interpreter(broken(), completed("a:v1", 1)).start()
    assert isinstance(decision, Fail)
    assert isinstance(decision.error, KeyError)
    assert 'raise KeyError("missing")' in decision.traceback
    assert "_advance" not in decision.traceback


@pytest.mark.parametrize("value", [None, 0, "", [], {"a": (1, 2)}])
def test_interpreter_round_trips_recorded_values(value: object) -> None:
    def one():  # type: ignore[no-untyped-def]
        return (yield Step("a:v1", fetch, 1))

    assert interpreter(one(), completed("a:v1", value)).start() == Finish(value)


def test_names_recorded_under_main_match_the_same_code_imported() -> None:
    failure = StepFailed("r1", "a:v1", "__main__.CardDeclined", "no", 1,
                         ("__main__.CardDeclined", "builtins.Exception"))

    class CardDeclined(Exception):
        pass

    CardDeclined.__module__, CardDeclined.__qualname__ = "shop", "CardDeclined"
    assert failure.is_a(CardDeclined)
    CardDeclined.__qualname__ = "Other"
    assert not failure.is_a(CardDeclined)


def many_steps(count: int):  # type: ignore[no-untyped-def]
    total = 0
    for i in range(count):
        total += yield Step(f"s{i}", fetch, i)
    yield Sleep("nap", 1.0)
    return total


def test_a_long_replay_pauses_every_turn_and_goes_on_where_it_paused() -> None:
    # The engine's loop gets a turn between two slices of a long replay; going on
    # sends exactly the values a replay in one piece would.
    count = 2 * REPLAYED_PER_TURN + 10
    records = [completed(f"s{i}", i * 10) for i in range(count)]
    machine = interpreter(many_steps(count), *records)
    results = [machine.start()]
    while isinstance(results[-1], Paused):
        results.append(machine.go_on())
    assert results[:-1] == [Paused(), Paused()]
    assert results[-1] == Pending(Sleep("nap", 1.0), None)
    assert machine.send(None) == Finish(sum(i * 10 for i in range(count)))


def test_a_replay_pauses_between_recorded_failures_too() -> None:
    # A recorded failure thrown back counts as a replayed outcome: the pause keeps it.
    count = REPLAYED_PER_TURN

    def failing_last():  # type: ignore[no-untyped-def]
        for i in range(count - 1):
            yield Step(f"s{i}", fetch, i)
        try:
            yield Step("bad", fetch, 0)
        except StepFailed as failure:
            return failure.error_type

    records = [completed(f"s{i}", i) for i in range(count - 1)] + [failed("bad")]
    machine = interpreter(failing_last(), *records)
    assert machine.start() == Paused()
    assert machine.go_on() == Finish("builtins.ValueError")


def test_only_a_start_pauses_not_the_answer_to_an_attempt() -> None:
    # After an attempt the run is past what was recorded: its decision comes whole.
    count = 2 * REPLAYED_PER_TURN
    ahead = [completed(f"s{i}", i) for i in range(1, count)]
    machine = interpreter(many_steps(count), *ahead)
    assert machine.start() == Pending(Step("s0", fetch, 0), None)
    assert machine.send(0) == Pending(Sleep("nap", 1.0), None)
