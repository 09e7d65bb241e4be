"""Workflow registration: the `@workflow` decorator and an engine's registry."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar, overload

from replay._errors import WorkflowNotRegistered

F = TypeVar("F", bound=Callable[..., Any])

_NAME_ATTRIBUTE = "__replay_workflow__"


@overload
def workflow(function: F, /) -> F: ...
@overload
def workflow(*, name: str | None = None) -> Callable[[F], F]: ...


def workflow(function: Any = None, /, *, name: str | None = None) -> Any:
    """Mark a generator function as a workflow, optionally with a stable name.

    Use as ``@replay.workflow`` or ``@replay.workflow(name="checkout")``. The function
    itself is returned. The default name is the function's ``__name__``, which changes
    when the function is renamed and strands its runs: give deployed workflows an
    explicit name.

    Raises:
        TypeError: The function is not a generator function, or `name` is not a str.
        ValueError: `name` is empty.
    """
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(
                f"workflow(name=...): name must be a str, got {name!r} ({type(name).__name__})"
            )
        if not name:
            raise ValueError("workflow(name=...): name must be a non-empty string, got ''")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"workflow(name=...): name must be valid unicode text, got {name!r}"
            ) from None

    def mark(function: F) -> F:
        check_workflow(function)
        setattr(function, _NAME_ATTRIBUTE, name or function.__name__)
        return function

    return mark if function is None else mark(function)


def check_workflow(function: object) -> None:
    """Check that `function` can be a workflow.

    Raises:
        TypeError: It is not a generator function.
    """
    if not inspect.isgeneratorfunction(function):
        what = f"{function!r} ({type(function).__name__})"
        hint = ""
        if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
            hint = " (async workflows are not supported: make it a plain def that yields "
            hint += "Step(...) for async work)"
        raise TypeError(
            f"a workflow must be a generator function (a def that yields commands such as "
            f"Step), got {what}{hint}"
        )


def workflow_name(function: Callable[..., Any]) -> str:
    """Return the registered name of a workflow function."""
    return str(getattr(function, _NAME_ATTRIBUTE, None) or function.__name__)


class Registry:
    """The workflows one engine can run, by name.

    Raises:
        TypeError: `workflows` holds something that is not a generator function.
        ValueError: Two different functions share a name.
    """

    def __init__(self, workflows: Iterable[Callable[..., Any]]) -> None:
        if isinstance(workflows, str) or not isinstance(workflows, Iterable):
            raise TypeError(
                f"workflows must be a list of workflow functions, got {workflows!r} "
                f"({type(workflows).__name__})"
            )
        self.functions: dict[str, Callable[..., Any]] = {}
        for function in workflows:
            check_workflow(function)
            name = workflow_name(function)
            other = self.functions.setdefault(name, function)
            if other is not function:
                raise ValueError(
                    f"two workflows are named {name!r}: {other!r} and {function!r}; give "
                    "one another name with @replay.workflow(name=...)"
                )

    def name_of(self, workflow: Callable[..., Any] | str) -> str:
        """Return the registered name of `workflow` (a function or a name).

        Raises:
            TypeError: `workflow` is neither a function nor a name.
            WorkflowNotRegistered: It is not registered with this engine.
        """
        if isinstance(workflow, str):
            if workflow in self.functions:
                return workflow
            return self._not_registered(repr(workflow))
        if not callable(workflow):
            raise TypeError(
                "engine.start(workflow, *args): workflow must be a workflow function or its "
                f"registered name, got {workflow!r} ({type(workflow).__name__})"
            )
        name = workflow_name(workflow)
        registered = self.functions.get(name)
        if registered is workflow:
            return name
        if registered is not None:
            raise WorkflowNotRegistered(
                f"workflow {name!r} is registered as {registered!r}, not {workflow!r}; pass "
                f"the registered function or its name {name!r}"
            )
        return self._not_registered(repr(name))

    def _not_registered(self, shown: str) -> NoReturn:
        known = ", ".join(sorted(map(repr, self.functions))) or "none"
        raise WorkflowNotRegistered(
            f"workflow {shown} is not registered with this engine (registered: {known}); "
            "pass it in open_engine(..., workflows=[...])"
        )
