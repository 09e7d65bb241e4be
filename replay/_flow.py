"""Status notes and continue-as-new: `Note` a workflow yields, `ContinueAsNew` it returns.

A `Note` records a value that becomes the run's current status (what `status()`,
``replay_runs`` and watchers show). It is keyed like every command, so a replay meets
it recorded and records nothing new. `ContinueAsNew` ends the current generation of a
run and starts the next one with new arguments and an empty memo, under the same run
id and mailbox: the way to write a workflow that loops forever with a bounded history.

Pure: standard library only.
"""

from __future__ import annotations

from typing import Any

from replay._checks import Frozen, check_key, shown


class Note(Frozen):
    """Record `value` as the run's current status; the `yield` returns None.

    The note is recorded once per key: a replay meets it recorded and records nothing
    new, so give each update its own key (e.g. ``f"progress:{i}"``). The run's
    `RunInfo.status_value` is the newest note's value and `status_text` its text
    (while the run is suspended on a `Suspend` with a `status`, that status wins).

    Args:
        key: The note's identity inside its run, e.g. ``"progress:3"``.
        value: Any value replay can record (the structured status, e.g.
            ``{"done": 3, "of": 10}``).
        text: The human-readable status; by default `value` itself when it is a
            string, else its JSON rendering.

    Raises:
        TypeError: `key` or `text` is not a string.
        ValueError: `key` is empty.
    """

    __slots__ = ("key", "text", "value")
    key: str
    value: Any
    text: str | None

    def __init__(self, key: str, value: Any = None, *, text: str | None = None) -> None:
        check_key("Note(key)", key)
        if text is not None and not isinstance(text, str):
            raise TypeError(f"Note(key, value, text=...): text must be a string or None, "
                            f"got {shown(text)}")
        self._set(key=key, value=value, text=text)

    def _value(self) -> tuple[Any, ...]:
        return (self.key, self.text, self.value)

    def __hash__(self) -> int:
        return hash((Note, self.key, self.text))  # the value may be unhashable

    def __repr__(self) -> str:
        text = "" if self.text is None else f", text={self.text!r}"
        return f"Note({self.key!r}, {self.value!r}{text})"


class ContinueAsNew(Frozen):
    """Return this from a workflow to start the run afresh with `args`.

    The current generation ends; the next one calls the workflow function with
    `args` and an empty memo, keeping the run id, its handles and its mailbox (a
    signal that arrived and was not taken yet is still there). Earlier generations'
    events stay in the history, with their `generation` number, until purged.

    Args:
        *args: The next generation's arguments (values replay can record).
    """

    __slots__ = ("args",)
    args: tuple[Any, ...]

    def __init__(self, *args: Any) -> None:
        self._set(args=args)

    def _value(self) -> tuple[Any, ...]:
        return self.args

    def __hash__(self) -> int:
        return hash((ContinueAsNew, len(self.args)))  # the arguments may be unhashable

    def __repr__(self) -> str:
        return f"ContinueAsNew({', '.join(repr(arg) for arg in self.args)})"
