"""`replay.connect`: use the engine that serves a database file from any other process.

DuckDB lets one process write a file, so one process runs the engine (``replay serve``,
or an application's `open_engine`) and every other process is a client: web workers,
scripts, job runners. A `Client` sends each call over the engine's live channel, the
owner-only Unix socket next to the database, and the engine runs it with its own API
(``engine.start``, ``Run.result``, ...), so a client sees exactly what code inside the
engine's process sees, with the same errors.

Plain blocking sockets, one connection per call: a client holds no connection between
calls, so it is safe to share between threads, costs nothing while idle, and keeps
working when the engine restarts (calls in between fail with `EngineClosed`). `wait` and
`result` are waits on the engine's side: the engine answers when the run settles, and
stops waiting if the client goes away. `watch` holds one connection for as long as it
lasts (`replay._channel._watching`). Each call's connection is made and read in
`_transport`; the `RemoteRun` handles the calls return live in `_handles`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable
from datetime import timedelta
from os import PathLike
from typing import Any

from replay._channel import _calls as calls
from replay._channel import _watching as watching
from replay._channel._calls import DEFAULT_TIMEOUT, FINISHED_STATES
from replay._channel._handles import RemoteRun
from replay._channel._transport import Transport
from replay._channel._watching import RemoteWatch
from replay._types import PurgeReport, RunInfo, RunState


def connect(database: str | PathLike[str], *, timeout: float = DEFAULT_TIMEOUT) -> Client:
    """Connect to the engine that serves `database`, from another process.

    The engine is ``replay serve DATABASE --workflows MODULE`` or an application that
    holds the file with `open_engine` (its default ``serve_cli=True`` serves the
    channel). Only the user that runs the engine can connect. Use the client as a
    context manager or keep one for the life of the process; it holds no connection
    between calls and may be shared by threads.

    Args:
        database: The database file the engine holds.
        timeout: Seconds a call may wait for the engine's answer (not `wait` and
            `result`, which take their own).

    Returns:
        A `Client`.

    Raises:
        EngineClosed: No engine serves the file (the message says how to start one).
        PermissionError: The engine runs as another user.
        ReplayError: The engine's channel stayed busy, or cannot be reached.
        TypeError: `timeout` is not a number.
        ValueError: `timeout` is not above 0, or `database` is a PostgreSQL URL.
    """
    if os.fspath(database).startswith(("postgresql://", "postgres://")):
        # Not the URL itself in the message: it may hold a password.
        raise ValueError(
            "replay.connect() reaches an engine through the socket beside its DuckDB file, "
            "and a PostgreSQL database has none; open an engine on the database in this "
            "process with replay.open_engine(url, ...) (replay.sync.open_engine from "
            "threads), which reads and writes the same runs")
    client = Client(database, timeout=timeout)
    client._hello()
    return client


class Client(Transport):
    """The engine serving a database file, as seen from another process.

    Get one from `replay.connect`, which checks that an engine answers, or build one
    with ``Client(database)``, which contacts nobody until the first call (for a
    module-level client of a web application). Its methods are those of `Engine`,
    blocking: each sends one request to the engine and returns its answer. Errors are
    the engine's, raised again with their class, message and attributes; a call that
    finds no engine, or loses it, raises `EngineClosed`.

    Args:
        database: The database file the engine holds.
        timeout: Seconds a call may wait for the engine's answer (not `wait` and
            `result`, which take their own).

    Raises:
        TypeError: `timeout` is not a number.
        ValueError: `timeout` is not above 0.

    Attributes:
        database: The database file.
        pid: The engine's process id, as of the last answer.
        command: The engine process's command line.
    """

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop using the client (it holds no connection; later calls raise)."""
        self._closed = True

    def start(self, workflow: Callable[..., Any] | str, *args: Any,
              run_id: str | None = None, timeout: float | timedelta | None = None
              ) -> RemoteRun:
        """Start a run of `workflow` in the engine (idempotent by `run_id`).

        Args:
            workflow: A workflow function, or its registered name; the engine must
                have it registered.
            *args: The run's input, encoded here as the engine records it.
            run_id: The run's id; the engine generates one when omitted.
            timeout: The run's deadline, from now on the engine's clock (seconds or a
                `timedelta`): if it has not finished by then it is cancelled, as by
                `cancel` (see `Engine.start`).

        Returns:
            A handle to the run.

        Raises:
            WorkflowNotRegistered: The engine does not have `workflow` (the message
                names the engine's process and command).
            RunIdConflict: `run_id` belongs to a run of another workflow.
            EncodingError: An argument cannot be recorded; nothing is sent.
            TypeError: `workflow` or `run_id` has the wrong type, or `timeout` is not a
                duration.
            ValueError: `timeout` is not a finite duration > 0.
            EngineClosed: No engine serves the file, or it stopped.
        """
        header, _ = self._ask(calls.start(workflow, args, run_id, timeout))
        return RemoteRun(self, str(header["run_id"]), str(header["workflow"]))

    def signal(self, run_id: str, key: str, payload: Any = None) -> RemoteRun:
        """Deliver `payload` to the run's ``Suspend(key)``; return once it is durable.

        Raises:
            RunNotFound: No such run.
            SignalRejected: The engine rejects the signal (see `Engine.signal`).
            EncodingError: The payload cannot be recorded; nothing is sent.
            TypeError: `run_id` or `key` is not a str.
            EngineClosed: No engine serves the file, or it stopped.
        """
        header, _ = self._ask(calls.signal(run_id, key, payload))
        calls.warn(header)
        return RemoteRun(self, run_id, str(header["workflow"]))

    def resume(self, run_id: str) -> RemoteRun:
        """Retry a failed run, or replay a parked one now (see `Engine.resume`).

        Raises:
            RunNotFound: No such run.
            WorkflowNotRegistered: The engine does not have the run's workflow.
            EngineClosed: No engine serves the file, or it stopped.
        """
        header, _ = self._ask(calls.on_run("resume", "resuming", run_id))
        return RemoteRun(self, run_id, str(header["workflow"]))

    def cancel(self, run_id: str, reason: Any = None) -> RemoteRun:
        """Cancel the run: `Cancelled` is thrown in at the command it waits on.

        As `Engine.cancel`: the request is durable when this returns, a parked run
        wakes to take it, the workflow may catch `Cancelled` and compensate, and a
        second `cancel` changes nothing.

        Args:
            run_id: The run.
            reason: Why; any encodable value (encoded here), passed on as
                `Cancelled.reason`.

        Raises:
            RunNotFound: No such run.
            RunFinished: The run is finished.
            EncodingError: `reason` cannot be recorded; nothing is sent.
            TypeError: `run_id` is not a str.
            EngineClosed: No engine serves the file, or it stopped.
        """
        header, _ = self._ask(calls.ending("cancel", run_id, reason))
        return RemoteRun(self, run_id, str(header["workflow"]))

    def purge(self, *, older_than: timedelta | float = timedelta(days=30),
              states: Iterable[RunState | str] = FINISHED_STATES,
              workflow: Callable[..., Any] | str | None = None,
              archive_to: str | PathLike[str] | None = None) -> PurgeReport:
        """Delete finished runs that ended more than `older_than` ago, in the engine.

        As `Engine.purge`, with the same arguments, result and errors. `archive_to` is
        a path on the engine's machine (made absolute here). The answer's time limit
        counts from the engine's last message: it reports after each batch.

        Returns:
            A `PurgeReport` of what was deleted.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: An argument has a wrong value, or `archive_to` exists or cannot
                be written.
            DatabaseError: A delete failed; the batches before it stay deleted.
            ReplayError: Writing the archive failed (nothing was deleted).
            EngineClosed: No engine serves the file, or it stopped.
        """
        _, items = self._ask(calls.purge(older_than, states, workflow, archive_to))
        return calls.report_of(items, self.database)

    def terminate(self, run_id: str, reason: Any = None) -> RemoteRun:
        """End the run ``cancelled`` at once, running none of its workflow code.

        As `Engine.terminate`: for a run whose compensation hangs.

        Args:
            run_id: The run.
            reason: Why; any encodable value (encoded here), recorded with the end.

        Raises:
            RunNotFound: No such run.
            RunFinished: The run is finished.
            EncodingError: `reason` cannot be recorded; nothing is sent.
            TypeError: `run_id` is not a str.
            EngineClosed: No engine serves the file, or it stopped.
        """
        header, _ = self._ask(calls.ending("terminate", run_id, reason))
        return RemoteRun(self, run_id, str(header["workflow"]))

    def get_run(self, run_id: str) -> RemoteRun:
        """Return a handle to an existing run.

        Raises:
            RunNotFound: No such run.
            EngineClosed: No engine serves the file.
        """
        return RemoteRun(self, run_id, self.status(run_id).workflow)

    def status(self, run_id: str) -> RunInfo:
        """Return the run's current durable state.

        Raises:
            RunNotFound: No such run.
            EncodingError: Its output cannot be decoded (here or in the engine).
            EngineClosed: No engine serves the file.
        """
        header, _ = self._ask(calls.on_run("status", "asking for", run_id))
        return calls.info_of(header.get("info"), self.database)

    def wait(self, run_id: str, timeout: float | None = None) -> RunInfo:
        """Wait until the run completes, fails, is cancelled or is suspended.

        The engine waits and answers when the run settles; sleeps and retry back-offs
        are waited through.

        Args:
            run_id: The run.
            timeout: Seconds to wait at most (default: no limit).

        Raises:
            RunNotFound: No such run.
            TimeoutError: `timeout` passed first (the run goes on).
            EngineClosed: No engine serves the file, or it stopped or died meanwhile.
        """
        header, _ = self._ask(calls.on_run("wait", "waiting for", run_id, waits=True),
                              timeout)
        return calls.info_of(header.get("info"), self.database)

    def result(self, run_id: str, timeout: float | None = None) -> Any:
        """Wait for the run to finish and return its output (through suspensions too).

        Args:
            run_id: The run.
            timeout: Seconds to wait at most (default: no limit).

        Raises:
            WorkflowFailed: The run failed, or was cancelled (its `error_type` is then
                ``"replay.Cancelled"`` and its message is the reason).
            RunNotFound: No such run.
            TimeoutError: `timeout` passed first (the run goes on).
            EngineClosed: No engine serves the file, or it stopped or died meanwhile.
        """
        header, _ = self._ask(
            calls.on_run("result", "waiting for the result of", run_id, waits=True), timeout)
        return calls.recorded(header, "output", self.database)

    def runs(self, state: RunState | str | None = None, workflow: str | None = None,
             limit: int = 1000) -> list[RunInfo]:
        """List runs, newest first by `created_at` (see `Engine.runs`).

        Raises:
            ValueError: `state` is not a run state, or `limit` is negative.
            EngineClosed: No engine serves the file.
        """
        _, items = self._ask(calls.call("runs", "listing runs", chunks="runs", state=state,
                                        workflow=workflow, limit=limit))
        return calls.infos(items, self.database)

    def watch(self, run_id: str | None = None, *, after_seq: int | None = None,
              workflow: Callable[..., Any] | str | None = None,
              states: Collection[RunState | str] | None = None,
              buffer: int = watching.DEFAULT_BUFFER) -> RemoteWatch:
        """Watch one run, or every run, as `Run.watch` and `Engine.watch` do in the engine.

        ``for update in client.watch(run_id):`` blocks for each `RunUpdate`: the run's
        state first (or the events after `after_seq`), then every change, until it
        finishes. Without `run_id`, every run matching `workflow` and `states`, until
        you stop. ``with client.watch() as updates:`` hangs up when the block ends.

        Args:
            run_id: The run to watch; None for every run.
            after_seq: Start with the run's recorded events after this `seq` (an
                update's `seq`: how a watcher reconnects).
            workflow: Every run's watch: only runs of this workflow.
            states: Every run's watch: only updates leaving a run in these states.
            buffer: Updates the engine keeps for this watcher; one that falls behind
                gets a snapshot saying how many it missed.

        Returns:
            A `RemoteWatch`, a blocking iterator (it connects on the first ``next``).

        Raises:
            RunNotFound: No such run (raised by the first ``next``).
            TypeError: An argument has the wrong type.
            ValueError: `after_seq` < 0 or without `run_id`, `buffer` < 1, or a state
                is unknown.
            EngineClosed: No engine serves the file, or it stopped while watching.
        """
        return RemoteWatch(self, watching.request(run_id, after_seq, workflow, states, buffer))

    def sql(self, query: str, params: Any = None, *, timeout: float | None = None
            ) -> list[tuple[Any, ...]]:
        """Run one read-only query in the engine (see `Engine.sql`).

        Args:
            query: Exactly one ``SELECT``, ``WITH … SELECT`` or ``EXPLAIN``.
            params: Values for ``?`` or ``$name`` placeholders.
            timeout: Seconds the query may take (default: the engine's
                ``query_timeout``).

        Raises:
            QueryError: The query was refused, failed or exceeded its time limit.
            EngineClosed: No engine serves the file.
        """
        limit = self.timeout if timeout is None else self.timeout + timeout
        _, items = self._ask(calls.query(query, params, timeout), limit)
        return calls.rows(items, self.database)
