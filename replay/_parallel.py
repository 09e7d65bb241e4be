"""Commands that run other things: groups (`All`, `Gather`, `Race`) and `Child` runs.

A group has its own key, and every member keeps its own: members are recorded like any
command, and the group records when it started (with its members' keys) and how it
was decided. Building a group executes nothing; it checks its members, so a mistake
(a member that is not a command, two members with one key, `limit < 1`) raises at
the `yield` that made it.

`Gathered` is what a `Gather` returns: one outcome per member, each a value or the
member's failure.

Pure: standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeAlias

from replay._checks import Frozen, check_key, shown
from replay._commands import Sleep, Step, Suspend, command_kind
from replay._errors import DuplicateKeyError, ReplayError, StepFailed, SuspendTimeout
from replay._flow import Note
from replay._workflows import workflow_name

Member: TypeAlias = "Step | Sleep | Suspend | Child | All | Gather | Race"
_ON_PARENT_CLOSE = ("cancel", "abandon")
# What a member's failure is in a `Gather` (a step ran out of attempts, a suspend timed out).
MemberFailure = (StepFailed, SuspendTimeout)


class Child(Frozen):
    """Run a registered workflow as a child run; the `yield` returns its output.

    The child is a run of its own, with the id ``f"{parent_run_id}/{key}"`` (so starting
    it is idempotent): listed by `runs()`, signalled, resumed and cancelled like any
    run, and shown with its parent (``parent_run_id`` in ``replay_runs``). Its start is
    committed with the parent's record of it, and its end with the parent's record of
    its outcome. If it fails (or is cancelled), a `ChildFailed` (a `StepFailed`
    carrying the child's `error_type` and run id) is thrown in at the `yield`.

    Args:
        key: The child's identity inside the parent, e.g. ``"ship:v1"``.
        workflow: The registered workflow function, or its name.
        *args: The child's input.
        on_parent_close: What happens to the child if the parent ends (or is
            cancelled) first: ``"cancel"`` (the default) cancels it, ``"abandon"``
            lets it run on.

    Raises:
        TypeError: `key` or `workflow` has the wrong type.
        ValueError: `key` is empty; `on_parent_close` is neither ``"cancel"`` nor
            ``"abandon"``.
    """

    __slots__ = ("args", "key", "on_parent_close", "workflow")
    key: str
    workflow: str
    args: tuple[Any, ...]
    on_parent_close: str

    def __init__(self, key: str, workflow: Callable[..., Any] | str, *args: Any,
                 on_parent_close: str = "cancel") -> None:
        sig = "Child(key, workflow, *args)"
        check_key(sig, key)
        if isinstance(workflow, str):
            name = workflow
        elif callable(workflow):
            name = workflow_name(workflow)
        else:
            raise TypeError(f"{sig}: workflow must be a workflow function or its name, got "
                            f"{shown(workflow)}")
        if not name:
            raise ValueError(f"{sig}: workflow must be a non-empty name")
        if on_parent_close not in _ON_PARENT_CLOSE:
            raise ValueError(f"{sig}: on_parent_close must be 'cancel' or 'abandon', got "
                             f"{on_parent_close!r}")
        self._set(key=key, workflow=name, args=args, on_parent_close=on_parent_close)

    def _value(self) -> tuple[Any, ...]:
        return (self.key, self.workflow, self.args, self.on_parent_close)

    def __hash__(self) -> int:
        try:
            return hash((Child, self._value()))
        except TypeError:  # unhashable arguments
            return hash((Child, self.key, self.workflow))

    def __repr__(self) -> str:
        parts = [repr(self.key), repr(self.workflow), *map(repr, self.args)]
        if self.on_parent_close != "cancel":
            parts.append(f"on_parent_close={self.on_parent_close!r}")
        return f"Child({', '.join(parts)})"


class _Group(Frozen):
    """What the three groups share: a key, members in order, an optional limit."""

    __slots__ = ("key", "limit", "members")
    key: str
    members: tuple[Member, ...]
    limit: int | None
    kind: str = ""

    def _build(self, key: str, members: tuple[Any, ...], limit: int | None) -> None:
        sig = f"{type(self).__name__}(key, members)"
        check_key(sig, key)
        for index, member in enumerate(members):
            if isinstance(member, Note):
                raise TypeError(
                    f"{sig}: member {index} of group {key!r} is {shown(member)}; a Note "
                    "records the run's status at once and is not a group member: yield it "
                    "before or after the group")
            if not isinstance(member, MEMBER_TYPES):
                raise TypeError(
                    f"{sig}: member {index} of group {key!r} is {shown(member)}; members "
                    "must be commands: Step, Sleep, Suspend, Child, All, Gather or Race")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int):
                raise TypeError(f"{sig}: limit must be an int or None, got {shown(limit)}")
            if limit < 1:
                raise ValueError(f"{sig}: limit must be at least 1, got {limit}; use None "
                                 "to start every member at once")
        _check_unique(key, members)
        self._set(key=key, members=members, limit=limit)

    def _value(self) -> tuple[Any, ...]:
        return (self.key, self.members, self.limit)

    def keys(self) -> list[str]:
        """Return the members' keys, in order."""
        return [member.key for member in self.members]

    def __repr__(self) -> str:
        limit = "" if self.limit is None else f", limit={self.limit}"
        return f"{type(self).__name__}({self.key!r}, {list(self.members)!r}{limit})"


class All(_Group):
    """Run every member, at most `limit` at once; the `yield` returns their values in order.

    Members start in list order. The first member to fail fails the group
    (fail-fast): its `StepFailed` (or `SuspendTimeout`) is thrown into the workflow at
    the group's `yield`, members not started never start, and members under way are
    cancelled (recorded as ``cancelled``).

    Args:
        key: The group's identity inside its run, e.g. ``"fetch-all:v1"``.
        members: Commands (`Step`, `Sleep`, `Suspend`, `Child` or nested groups), each
            with its own key.
        limit: How many members may be under way at once; None: all of them.

    Raises:
        TypeError: `key` is not a string; a member is not a command; `limit` is not an
            int.
        ValueError: `key` is empty; `limit` is below 1.
        DuplicateKeyError: Two members (nested ones included) share a key, or one
            has the group's key.
    """

    __slots__ = ()
    kind = "all"

    def __init__(self, key: str, members: Iterable[Member], *, limit: int | None = None
                 ) -> None:
        self._build(key, _listed(type(self).__name__, members), limit)


class Gather(_Group):
    """Run every member to its end, at most `limit` at once; returns a `Gathered`.

    No member's failure stops the others: the `yield` returns one outcome per member,
    in order, each the member's value or its failure (`StepFailed`, `SuspendTimeout`).

    Args:
        key: The group's identity inside its run, e.g. ``"notify:v1"``.
        members: Commands, each with its own key.
        limit: How many members may be under way at once; None: all of them.

    Raises:
        TypeError: `key` is not a string; a member is not a command; `limit` is not an
            int.
        ValueError: `key` is empty; `limit` is below 1.
        DuplicateKeyError: Two members share a key, or one has the group's key.
    """

    __slots__ = ()
    kind = "gather"

    def __init__(self, key: str, members: Iterable[Member], *, limit: int | None = None
                 ) -> None:
        self._build(key, _listed(type(self).__name__, members), limit)


class Race(Frozen):
    """Start every member; the first to reach an outcome wins, the others are cancelled.

    The `yield` returns ``(name, value)`` of the winner, or throws its failure
    (`StepFailed`, `SuspendTimeout`). Losers are cancelled: an async step's scope is
    cancelled, a sync step's thread is abandoned (its late outcome is recorded as
    ``step/late``, never delivered), a sleep's timer is dropped, and a suspend is closed
    (a later signal for it is rejected).

    Args:
        key: The race's identity inside its run, e.g. ``"pay-or-expire:v1"``.
        members: Names mapped to commands, e.g. ``{"paid": Suspend("paid:v1"),
            "late": Sleep("deadline:v1", timedelta(days=3))}``.

    Raises:
        TypeError: `key` is not a string; `members` is not a mapping of names to
            commands.
        ValueError: `key` is empty, or `members` is empty (a race needs a member).
        DuplicateKeyError: Two members share a key, or one has the race's key.
    """

    __slots__ = ("key", "limit", "members", "names")
    key: str
    members: tuple[Member, ...]
    names: tuple[str, ...]
    limit: int | None
    kind = "race"

    def __init__(self, key: str, members: Mapping[str, Member]) -> None:
        sig = "Race(key, {name: command})"
        check_key(sig, key)
        if not isinstance(members, Mapping):
            raise TypeError(f"{sig}: members must be a dict of names to commands, got "
                            f"{shown(members)}")
        if not members:
            raise ValueError(f"{sig}: race {key!r} has no members; a race needs at least "
                             "one command to wait for")
        for name in members:
            if not isinstance(name, str):
                raise TypeError(f"{sig}: member names must be strings, got {shown(name)}")
        group = All(key, list(members.values()))  # the same member checks
        self._set(key=key, members=group.members, names=tuple(members), limit=None)

    def _value(self) -> tuple[Any, ...]:
        return (self.key, self.names, self.members)

    def keys(self) -> list[str]:
        """Return the members' keys, in order."""
        return [member.key for member in self.members]

    def __repr__(self) -> str:
        shown_members = ", ".join(f"{n!r}: {m!r}" for n, m in zip(self.names, self.members,
                                                                  strict=True))
        return f"Race({self.key!r}, {{{shown_members}}})"


Group: TypeAlias = All | Gather | Race
GROUP_TYPES = (All, Gather, Race)
MEMBER_TYPES = (Step, Sleep, Suspend, Child, All, Gather, Race)


class Gathered(list[Any]):
    """What a `Gather` returns: each member's value, or its failure, in member order.

    A failure is a `StepFailed` (or `SuspendTimeout`) instance; a value never is.
    """

    @property
    def failures(self) -> list[tuple[int, ReplayError]]:
        """Return ``(index, failure)`` of every member that failed, in order."""
        return [(i, item) for i, item in enumerate(self) if isinstance(item, MemberFailure)]

    @property
    def ok(self) -> bool:
        """Whether every member succeeded."""
        return not self.failures

    def values(self) -> list[Any]:
        """Return the values of the members that succeeded, in order."""
        return [item for item in self if not isinstance(item, MemberFailure)]

    def raise_first(self) -> None:
        """Raise the first member's failure, if any member failed.

        Raises:
            StepFailed: The first failure, if a step's.
            SuspendTimeout: The first failure, if a suspend's.
        """
        for _, failure in self.failures[:1]:
            raise failure


def _listed(name: str, members: Iterable[Member]) -> tuple[Any, ...]:
    if isinstance(members, str | bytes | Mapping) or not isinstance(members, Iterable):
        raise TypeError(f"{name}(key, members): members must be a list of commands, got "
                        f"{shown(members)}")
    return tuple(members)


def kind_of(command: Member | Note) -> str:
    """Return the recorded kind of a command or group (``"group"`` for a group)."""
    if isinstance(command, GROUP_TYPES):
        return "group"
    if isinstance(command, Note):
        return "note"
    return "child" if isinstance(command, Child) else command_kind(command)


def walk(members: Iterable[Member]) -> Iterator[Member]:
    """Yield every member, nested groups' members included (depth first)."""
    for member in members:
        yield member
        if isinstance(member, GROUP_TYPES):
            yield from walk(member.members)


def _check_unique(key: str, members: tuple[Member, ...]) -> None:
    seen = {key}
    for member in walk(members):
        if member.key in seen:
            where = "the group's own key" if member.key == key else "another member's key"
            raise DuplicateKeyError(
                f"group {key!r} has a member with key {member.key!r}, which is {where}; "
                f"every member needs its own key, e.g. f\"{member.key}:{{i}}\" for the "
                "i-th one", key=member.key)
        seen.add(member.key)
