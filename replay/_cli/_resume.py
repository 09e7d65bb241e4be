"""`replay resume DB RUN_ID --workflows MODULE`: resume a run in the command's own engine.

Resuming runs workflow code. While no engine holds the file, the command imports the
modules the user names (as ``python -m`` would: the current directory first on
``sys.path``), collects the workflows they define (functions marked by
``@replay.workflow``), opens an engine on the file in its own process, resumes the run
and waits until the run's task lets go of it: it completed, failed, or parked (suspended,
or sleeping until a deadline). Then the engine stops as any engine does; what other runs
of those workflows still execute then is recorded as abandoned and runs again,
uncharged, when an engine next opens the file.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import trio

from replay._cli._answers import CliError, Source
from replay._cli._file_source import FileSource
from replay._engine._facade import internals
from replay._engine._lifecycle import open_engine
from replay._errors import DatabaseLocked
from replay._pg._url import is_postgres_url
from replay._workflows import _NAME_ATTRIBUTE, workflow_name

log = logging.getLogger("replay")
# The engine's warning, at open, for each pending run of a workflow the modules do not
# define: true, and beside the point of resuming one run.
_UNREGISTERED = "run %r of workflow %r is left as it is"


def resume(source: Source, run_id: str, modules: Sequence[str]) -> tuple[str, str]:
    """Resume `run_id` through the engine that holds the file, or else in this process.

    Args:
        source: The engine or the file, from `open_source`.
        run_id: The run to resume.
        modules: The ``--workflows`` modules; without them a file refuses to resume.

    Returns:
        The run's state before the resume and after it.

    Raises:
        RunNotFound: No such run.
        CliError: The run cannot be resumed (see `resume_here`).
    """
    if not modules or not isinstance(source, FileSource):
        return source.resume(run_id)  # an engine resumes it, or the file says how
    workflow = source.workflow_of(run_id)
    source.close()  # the command's engine takes the file
    return resume_here(source.path, run_id, workflow, modules)


def resume_here(path: str, run_id: str, workflow: str, modules: Sequence[str]
                ) -> tuple[str, str]:
    """Resume `run_id` of `workflow` in an engine of this process; return its states.

    Args:
        path: The database file, which no engine holds.
        run_id: The run to resume.
        workflow: The run's workflow name.
        modules: Importable names of the modules that define the workflows.

    Returns:
        The run's state before the resume and once its task let go.

    Raises:
        CliError: A module cannot be imported, defines a workflow name twice or not
            `workflow`, or an engine opened the file meanwhile.
    """
    functions = import_workflows(modules)
    if workflow not in functions:
        found = ", ".join(map(repr, functions)) or "none"
        raise CliError(
            f"run {run_id!r} is a run of workflow {workflow!r}, which the --workflows "
            f"modules do not define (found: {found}); pass the module that defines it")
    with _engine_warnings():
        return trio.run(_resume, path, run_id, list(functions.values()))


async def _resume(path: str, run_id: str, workflows: list[Callable[..., Any]]
                  ) -> tuple[str, str]:
    try:
        async with open_engine(path, workflows=workflows, shutdown_timeout=0) as engine:
            before = engine.status(run_id).state.value
            await engine.resume(run_id)
            after = await internals(engine).scheduler.wait_idle(run_id)
            return before, after.state.value
    except DatabaseLocked as locked:
        if is_postgres_url(path):  # the command cannot tell whether one ran already
            raise CliError(f"{locked}; resume the run through that engine "
                           "(engine.resume(run_id) in its application), or run the command "
                           "again once it stops") from None
        raise CliError(f"{locked}; an engine opened the file during the command: run "
                       "it again, and that engine resumes the run") from None


def import_workflows(modules: Sequence[str]) -> dict[str, Callable[..., Any]]:
    """Import `modules` and return the workflows they define, by name.

    Raises:
        CliError: A module cannot be imported, or two workflows share a name.
    """
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does
    found: dict[str, Callable[..., Any]] = {}
    for module in modules:
        for function in _workflows_of(_imported(module)):
            other = found.setdefault(workflow_name(function), function)
            if other is not function:
                raise CliError(
                    f"two workflows are named {workflow_name(function)!r}: "
                    f"{other.__module__}.{other.__qualname__} and "
                    f"{function.__module__}.{function.__qualname__}; pass only the module "
                    "whose workflow the run needs")
    return found


def _imported(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except Exception as error:  # any failure of the user's module, e.g. SyntaxError
        hint = ""
        if module.endswith(".py"):
            hint = f" (a module name, not a file name: {module.removesuffix('.py')!r})"
        raise CliError(
            f"cannot import --workflows module {module!r}{hint}: "
            f"{type(error).__name__}: {error}; pass a module name as for python -m, "
            "importable from the current directory or PYTHONPATH") from error


def _workflows_of(module: Any) -> Iterator[Callable[..., Any]]:
    for value in vars(module).values():
        if inspect.isfunction(value) and hasattr(value, _NAME_ATTRIBUTE):
            yield value


@contextmanager
def _engine_warnings() -> Iterator[None]:
    """Print the command's engine's warnings as the command's own, on standard error."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("replay resume: warning: %(message)s"))
    handler.addFilter(lambda record: not str(record.msg).startswith(_UNREGISTERED))
    propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
