"""Replaying a group: its value from its records, and its members checked against them.

A decided group (``group/completed`` or ``group/failed``) is answered from the history
alone: an `All`'s member values in order, a `Gather`'s outcomes, a race's winner and its
value, or the failure of the member that decided it. Nothing here depends on timing,
so a group replays to the same result in any process.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from replay._commands import Suspend
from replay._core._history import KeyRecord, RunHistory, outcome_failure, step_failed
from replay._errors import NondeterminismError, ReplayError, SuspendTimeout
from replay._parallel import GROUP_TYPES, Gathered, Group, Member, Race, kind_of, walk

# Recorded as the public name (`replay.SuspendTimeout`), as `qualified_name` gives it once
# `replay` has been imported.
TIMED_OUT = "replay.SuspendTimeout"


def recorded_outcome(group: Group, history: RunHistory, decode: Callable[[bytes], Any],
                     run_id: str) -> tuple[bool, Any] | None:
    """Return ``(ok, value)`` of a decided group from its records, or None if undecided.

    ``ok`` False: `value` is the failure to throw in (the deciding member's).
    """
    record = history.get(group.key)
    if record is None or not record.done or record.cancelled:
        return None
    if record.failure is not None:
        return False, _member_failure_from(group.key, record, history, run_id)
    if isinstance(group, Race):
        detail = decode(record.value) if record.value is not None else {}
        name = detail.get("winner")
        member = group.members[group.names.index(name)]
        ok, value = _member_outcome(member, history, decode, run_id)
        return (True, (name, value)) if ok else (False, value)
    outcomes = [_member_outcome(m, history, decode, run_id) for m in group.members]
    if group.kind == "gather":
        return True, Gathered(value for _, value in outcomes)
    return True, [value for _, value in outcomes]


def _member_outcome(member: Member, history: RunHistory, decode: Callable[[bytes], Any],
                    run_id: str) -> tuple[bool, Any]:
    record = history.get(member.key)
    if isinstance(member, GROUP_TYPES):
        outcome = recorded_outcome(member, history, decode, run_id)
        assert outcome is not None, f"group {member.key!r} is not decided"
        return outcome
    if isinstance(member, Suspend):
        if record is not None and record.timed_out:
            return False, SuspendTimeout(run_id, member.key)
        data = history.signals.get(member.key)
        return True, None if data is None else decode(data)
    assert record is not None, f"member {member.key!r} has no outcome"
    if record.failure is not None:
        return False, outcome_failure(run_id, member.key, record, history.generation)
    return True, None if record.value is None else decode(record.value)


def _member_failure_from(key: str, record: KeyRecord, history: RunHistory,
                         run_id: str) -> ReplayError:
    leaf = record.failed_member or key
    failure = record.failure
    assert failure is not None
    if failure.error_type == TIMED_OUT:
        return SuspendTimeout(run_id, leaf)
    leaf_record = history.get(leaf)
    if leaf_record is not None and leaf_record.kind == "child":
        return outcome_failure(run_id, leaf, leaf_record, history.generation)
    return step_failed(run_id, leaf, failure)


def check_members(group: Group, history: RunHistory, decode: Callable[[bytes], Any],
                  run_id: str, workflow: str) -> NondeterminismError | None:
    """Check a group against its records: the same members, each of the same kind."""
    record = history.get(group.key)
    if record is None:
        return None
    detail = decode(record.detail) if record.detail is not None else {}
    if not isinstance(detail, dict):
        detail = {}
    shape = shape_of(group)
    recorded = {name: detail.get(name) for name in shape}
    if any(value is not None and value != shape[name] for name, value in recorded.items()):
        return NondeterminismError(
            f"run {run_id!r} of workflow {workflow!r} recorded group {group.key!r} as "
            f"{_shown(recorded)} but the workflow now yields it as {_shown(shape)}; restore "
            "the code that recorded it, or give the group a new key (e.g. bump ':v1' to "
            "':v2') and resume the run", run_id=run_id, key=group.key)
    for member in walk(group.members):
        entry = history.get(member.key)
        kind = kind_of(member)
        if entry is not None and entry.kind != kind:
            return NondeterminismError(
                f"run {run_id!r} of workflow {workflow!r} recorded key {member.key!r} as "
                f"a {entry.kind} but group {group.key!r} now has it as a {kind}; restore "
                "the code that recorded it, or give the member a new key and resume the "
                "run", run_id=run_id, key=member.key)
    return None


def shape_of(group: Group) -> dict[str, Any]:
    """What a group's ``group/started`` record says about it: its kind and members."""
    shape: dict[str, Any] = {"group": group.kind, "members": group.keys()}
    if isinstance(group, Race):
        shape["names"] = list(group.names)
    return shape


def _shown(shape: dict[str, Any]) -> str:
    names = f" named {shape['names']!r}" if shape.get("names") is not None else ""
    return f"{shape.get('group')} of members {shape.get('members')!r}{names}"
