"""`replay.run`: the synchronous one-call convenience for scripts.

A run on ``":memory:"`` gets an engine of its own in a `trio.run` in the calling
thread. Runs on a file share the file: the first `replay.run` on it opens one engine
on a thread of its own (`_SharedFile`), and every `replay.run` on the same file that
comes while it is open starts its run there, from whatever thread, instead of failing
with `DatabaseLocked` (only one engine may hold a file). The engine closes when its
last caller is done, before that caller returns, so the file is free afterwards as it
was with an engine per call. An engine knows only the workflows it was opened with:
a caller with a workflow it does not know waits for it to close, and the next engine
on the file is opened with the workflows of every caller who waited.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from os import PathLike
from typing import Any

import trio

from replay._engine._facade import Engine
from replay._engine._handle import Run
from replay._engine._lifecycle import open_engine
from replay._engine._options import database_path
from replay._engine._steps import current_step
from replay._errors import (
    DatabaseLocked,
    EngineClosed,
    ReplayError,
    RunNotFound,
    RunSuspended,
)
from replay._types import RunState
from replay._workflows import check_workflow, workflow_name


def run(
    workflow: Callable[..., Any],
    *args: Any,
    db: str | PathLike[str] = ":memory:",
    run_id: str | None = None,
    resume: bool = False,
) -> Any:
    """Run `workflow` to completion and return its output.

    An existing `run_id` in `db` continues (or returns the output of) that run, and
    its recorded input is used (`args` are ignored). With ``resume=True`` an existing
    run is resumed first, as by `Engine.resume`: a failed run runs its unhandled step
    failure again with a fresh retry budget (after a fix), a parked run replays now.
    A `run_id` that does not exist yet is simply started.

    Several threads may call `run` on the same file at once: they share one engine,
    which closes when the last of them returns. Ctrl-C while `run` waits stops that
    engine at once, for every thread using it (their calls raise `EngineClosed`);
    running steps are recorded as abandoned and run again at the next open. To call
    replay from threads in any other way (signals, status, several runs per call), use
    `replay.sync.open_engine`.

    Args:
        workflow: A workflow (generator) function.
        *args: Its input.
        db: The database file, or ``":memory:"`` (a new database for each call).
        run_id: The run's id; generated when omitted.
        resume: Resume the existing run `run_id` (which must be given).

    Returns:
        The workflow's output.

    Raises:
        ValueError: `resume` is true and `run_id` is not given.
        TypeError: `workflow` is not a generator function.
        WorkflowFailed: The run failed.
        RunSuspended: The run waits for a signal, which `run` cannot deliver.
        RunIdConflict: `run_id` belongs to a run of another workflow.
        EncodingError: An argument cannot be recorded.
        DatabaseLocked: Another process, or an engine of this process not opened by
            `run`, holds the file.
        EngineClosed: Ctrl-C in another thread stopped the engine this call shared.
    """
    if resume and run_id is None:
        raise ValueError(
            "replay.run(workflow, *args, resume=True): resume needs the run_id of the run "
            "to resume; pass run_id=...")
    path = database_path(db)
    if path == ":memory:":

        async def main() -> Any:
            async with open_engine(path, workflows=[workflow]) as engine:
                return await _run_to_end(engine, workflow, args, run_id, resume)

        return trio.run(main)
    # Checked before the engine is shared: a bad workflow must fail its own call only,
    # not the open of an engine other callers wait for.
    check_workflow(workflow)
    _not_inside_trio()
    shared = _join(path, workflow)
    try:
        return shared.call(_run_to_end, workflow, args, run_id, resume)
    finally:
        _leave(shared)


async def _run_to_end(engine: Engine, workflow: Callable[..., Any], args: tuple[Any, ...],
                      run_id: str | None, resume: bool) -> Any:
    """Start (or take) the run, wait for its end and return its output.

    Raises:
        RunSuspended: The run waits for a signal.
        WorkflowFailed: The run failed.
    """
    handle = await _start(engine, workflow, args, run_id, resume)
    info = await handle.wait()
    if info.state is RunState.SUSPENDED:
        raise RunSuspended(
            f"run {info.run_id!r} is suspended waiting for a signal for "
            f"{info.waiting_for!r}; replay.run cannot deliver signals: use "
            "replay.open_engine and engine.signal",
            run_id=info.run_id,
            key=info.waiting_for,
        )
    return await handle.result()


async def _start(engine: Engine, workflow: Callable[..., Any], args: tuple[Any, ...],
                 run_id: str | None, resume: bool) -> Run:
    """Start the run, or take the existing one (resumed if asked).

    Raises:
        RunIdConflict: `run_id` belongs to a run of another workflow.
        EncodingError: An argument of a new run cannot be recorded.
    """
    existed = False
    if resume and run_id is not None:
        try:
            engine.get_run(run_id)
            existed = True
        except RunNotFound:
            pass  # a new run: resume=True just starts it
    handle = await engine.start(workflow, *args, run_id=run_id)  # checks the workflow
    if existed:
        handle = await engine.resume(handle.run_id)
    return handle


def _not_inside_trio() -> None:
    """Refuse a call from async code, which the blocking wait would freeze.

    Raises:
        RuntimeError: Called from inside a trio run.
    """
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return
    raise RuntimeError(
        "replay.run blocks until the run ends, so it cannot be called from inside a trio "
        "run: use `async with replay.open_engine(...)` there")


# -- one engine per file, shared by the replay.run calls on it --

_LOCK = threading.Lock()  # guards everything below and the fields of every _SharedFile
_OPEN: dict[str, _SharedFile] = {}  # by resolved path: the engine of that file, if any
# Workflows of callers waiting for the open engine of a file to close (it does not
# know them): the next engine on that file is opened with them.
_WANTED: dict[str, dict[str, Callable[..., Any]]] = {}


class _SharedFile:
    """One engine on one file, in a trio run on a thread of its own, for `replay.run`."""

    def __init__(self, path: str, key: str, workflows: dict[str, Callable[..., Any]]) -> None:
        self.path = path
        self.key = key
        self.workflows = workflows
        self.users = 0
        self.accepting = True  # False once it is closing or must close for another workflow
        self.opened = threading.Event()  # the open succeeded or failed
        self.finished = threading.Event()  # the engine is closed and its thread done
        self.engine: Engine | None = None
        self.error: BaseException | None = None
        self.aborted = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._scope: trio.CancelScope | None = None
        self._request: str | None = None  # None, "clean" or "abort"
        self._thread = threading.Thread(target=self._main, daemon=True,
                                        name=f"replay.run engine {path}")

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as error:
            self.error = error
        finally:
            with _LOCK:
                self.accepting = False
                if _OPEN.get(self.key) is self:
                    del _OPEN[self.key]
            self.opened.set()
            self.finished.set()

    async def _serve(self) -> None:
        stop = trio.Event()
        with trio.CancelScope() as scope:
            with _LOCK:
                self._token, self._stop, self._scope = (
                    trio.lowlevel.current_trio_token(), stop, scope)
                request = self._request
            if request == "abort":
                scope.cancel()
            elif request == "clean":
                stop.set()
            async with open_engine(self.path, workflows=list(self.workflows.values())) as engine:
                self.engine = engine
                self.opened.set()
                await stop.wait()
        # An abort cancels the `async with` body: running steps stop at once, as when
        # Ctrl-C reached the body of an engine run in the caller's own thread.

    def stop(self, *, abort: bool) -> None:
        """Ask the engine to close, cleanly or at once; returns at once."""
        with _LOCK:
            self.accepting = False
            if abort:
                self._request = "abort"
                self.aborted = True
            elif self._request is None:
                self._request = "clean"
            token, stop, scope = self._token, self._stop, self._scope
        if token is None or stop is None or scope is None:
            return  # `_serve` has not begun: it reads the request itself
        with contextlib.suppress(trio.RunFinishedError):  # it has stopped already
            token.run_sync_soon(scope.cancel if abort else stop.set)

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``await function(engine, *args)`` in the engine's trio run; wait for it.

        Ctrl-C while it waits stops the engine at once and waits until it is closed
        (so the abandoned steps are recorded), then raises `KeyboardInterrupt`.

        Raises:
            DatabaseLocked: The file is held by an engine `run` did not open.
            EngineClosed: Ctrl-C in another thread stopped the engine.
            BaseException: Whatever `function` raised, or the error that stopped the
                engine, as itself.
        """
        try:
            self.opened.wait()
            if self.engine is None:
                raise self._failure()
            try:
                return trio.from_thread.run(function, self.engine, *args,
                                            trio_token=self._token)
            except (trio.RunFinishedError, trio.Cancelled, EngineClosed):
                # The engine stopped under this call: say why, once it has.
                self.finished.wait()
                raise self._failure() from None
        except KeyboardInterrupt:
            self.stop(abort=True)
            self.finished.wait()
            raise

    def _failure(self) -> BaseException:
        """The error for a call the engine could not serve (it failed or was stopped)."""
        error = self.error
        if isinstance(error, DatabaseLocked) and error.pid == os.getpid():
            return DatabaseLocked(
                f"{error}. replay.run shares a file only with other replay.run calls; to "
                "run workflows from several threads next to an engine of your own, open "
                "it with replay.sync.open_engine(...) and call engine.start(...).result()",
                pid=error.pid)
        if error is not None:
            return error
        return EngineClosed(
            f"the engine replay.run opened on {self.path!r} was stopped (Ctrl-C in another "
            "thread); the run continues when an engine opens the file again")


def _join(path: str, workflow: Callable[..., Any]) -> _SharedFile:
    """Return the open engine of `path` that runs `workflow`, counted as used.

    Opens one if the file has none; waits for the file's engine to close first if
    that engine does not know `workflow`.
    """
    key = os.path.realpath(path)
    name = workflow_name(workflow)
    while True:
        with _LOCK:
            shared = _OPEN.get(key)
            if shared is None:
                workflows = _WANTED.pop(key, {})
                other = workflows.get(name, workflow)
                if other is not workflow:
                    # Another function under the same name waited too: it gets the
                    # engine after this one (one engine cannot register both).
                    _WANTED[key] = {name: other}
                workflows[name] = workflow
                shared = _OPEN[key] = _SharedFile(path, key, workflows)
                shared.users += 1
                try:
                    shared.start()
                except BaseException:  # no thread: nobody would ever close it
                    del _OPEN[key]
                    raise
                return shared
            if shared.accepting and shared.workflows.get(name) is workflow:
                shared.users += 1
                return shared
            # This engine cannot take the call: it is closing, or does not know the
            # workflow. No new caller joins it then, so it closes once its callers are
            # done, and the next engine knows this workflow.
            if _in_a_step():
                # A step cannot wait for an engine to close: it may be the step's own.
                raise DatabaseLocked(
                    f"replay.run({name!r}, db={path!r}) was called inside a step while "
                    "the engine replay.run keeps on that file cannot take it (it does not "
                    "know the workflow, or is closing), and waiting for it could wait for "
                    "this very step; run the workflow from outside the step, or open one "
                    "engine for all the workflows with replay.sync.open_engine",
                    pid=os.getpid())
            shared.accepting = False
            _WANTED.setdefault(key, {}).setdefault(name, workflow)
        try:
            shared.finished.wait()
        except BaseException:
            # Ctrl-C while waiting: the next engine need not register this workflow
            # (it would pick up the workflow's pending runs for nobody).
            with _LOCK:
                if _WANTED.get(key, {}).get(name) is workflow:
                    del _WANTED[key][name]
            raise


def _in_a_step() -> bool:
    try:
        current_step()
    except ReplayError:
        return False
    return True


def _leave(shared: _SharedFile) -> None:
    """Count the caller out; the last one out closes the engine and waits for that."""
    with _LOCK:
        shared.users -= 1
        last = shared.users == 0
    if last:
        shared.stop(abort=False)
        shared.finished.wait()
