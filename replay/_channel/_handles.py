"""Handles to one run of the engine a client talks to: `RemoteRun` and `AsyncRemoteRun`.

`Client` (`_connect`) and `AsyncClient` (`_aio`) return them from `start`, `signal`,
`get_run` and the other calls on one run. A handle holds only its client, the run's
id and its workflow's name, and asks its client for the rest, so it costs nothing to
keep; its one call of its own is ``wait(until=...)``, which checks every change of the
run through a watch (`_watching`), as `Run.wait` does inside the engine. The blocking
and the asyncio handle sit side by side, as the two watches do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from replay._channel import _calls as calls
from replay._channel import _watching as watching
from replay._channel._watching import AsyncRemoteWatch, RemoteWatch
from replay._checks import checked_condition
from replay._types import RunInfo, RunState

if TYPE_CHECKING:
    from replay._channel._aio import AsyncClient
    from replay._channel._connect import Client


class RemoteRun:
    """A handle to one run of the engine a `Client` talks to.

    Attributes:
        run_id: The run's id.
        workflow: The run's workflow name.
    """

    __slots__ = ("_client", "run_id", "workflow")

    def __init__(self, client: Client, run_id: str, workflow: str) -> None:
        self._client = client
        self.run_id = run_id
        self.workflow = workflow

    def __repr__(self) -> str:
        return f"RemoteRun(run_id={self.run_id!r}, workflow={self.workflow!r})"

    def status(self) -> RunInfo:
        """Return the run's current durable state (see `Client.status`).

        Raises:
            EngineClosed: No engine serves the file.
        """
        return self._client.status(self.run_id)

    def wait(self, timeout: float | None = None, *,
             until: Callable[[RunInfo], bool] | RunState | str | None = None) -> RunInfo:
        """Wait until the run settles (see `Client.wait`), or until `until` holds.

        With `until` (a condition on `RunInfo`, or a state such as ``"suspended"``),
        wait for the first state, present or coming, that satisfies it, as
        `Run.wait` does: every change is checked, through a watch.

        Raises:
            RunFinished: With `until`, the run finished without the condition holding.
            TimeoutError: `timeout` passed first.
            TypeError: `until` is neither callable nor a state.
            ValueError: `until` is a string that is not a state's name.
            EngineClosed: No engine serves the file, or it stopped or died meanwhile.
        """
        if until is None:
            return self._client.wait(self.run_id, timeout)
        holds = checked_condition(until)
        limit = None if timeout is None else calls.checked_timeout(timeout)
        last = None
        call = watching.request(self.run_id, None, None, None, watching.DEFAULT_BUFFER)
        with RemoteWatch(self._client, call, limit) as updates:
            for update in updates:
                last = update.info or last
                if update.info is not None and holds(update.info):
                    return update.info
        raise watching.not_reached(self.run_id, last)

    def watch(self, after_seq: int | None = None, buffer: int = watching.DEFAULT_BUFFER
              ) -> RemoteWatch:
        """Watch the run until it finishes (see `Client.watch`).

        Raises:
            RunNotFound: No such run (raised by the first ``next``).
            EngineClosed: No engine serves the file, or it stopped while watching.
        """
        return self._client.watch(self.run_id, after_seq=after_seq, buffer=buffer)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to finish and return its output (see `Client.result`).

        Raises:
            WorkflowFailed: The run failed, or was cancelled (its `error_type` is then
                ``"replay.Cancelled"`` and its message is the reason).
            TimeoutError: `timeout` passed first.
            EngineClosed: No engine serves the file, or it stopped or died meanwhile.
        """
        return self._client.result(self.run_id, timeout)


class AsyncRemoteRun:
    """A handle to one run of the engine an `AsyncClient` talks to.

    Attributes:
        run_id: The run's id.
        workflow: The run's workflow name.
    """

    __slots__ = ("_client", "run_id", "workflow")

    def __init__(self, client: AsyncClient, run_id: str, workflow: str) -> None:
        self._client = client
        self.run_id = run_id
        self.workflow = workflow

    def __repr__(self) -> str:
        return f"AsyncRemoteRun(run_id={self.run_id!r}, workflow={self.workflow!r})"

    async def status(self) -> RunInfo:
        """Return the run's current durable state.

        Raises:
            EngineClosed: No engine serves the file.
        """
        return await self._client.status(self.run_id)

    async def wait(self, timeout: float | None = None, *,
                   until: Callable[[RunInfo], bool] | RunState | str | None = None
                   ) -> RunInfo:
        """Wait until the run settles, or until `until` holds (see `RemoteRun.wait`).

        Raises:
            RunFinished: With `until`, the run finished without the condition holding.
            TimeoutError: `timeout` passed first.
            TypeError: `until` is neither callable nor a state.
            ValueError: `until` is a string that is not a state's name.
            EngineClosed: No engine serves the file, or it stopped or died meanwhile.
        """
        if until is None:
            return await self._client.wait(self.run_id, timeout)
        holds = checked_condition(until)
        limit = None if timeout is None else calls.checked_timeout(timeout)
        last = None
        try:
            async with asyncio.timeout(limit), self.watch() as updates:
                async for update in updates:
                    last = update.info or last
                    if update.info is not None and holds(update.info):
                        return update.info
        except TimeoutError:
            raise calls.no_answer(self._client.database, f"waiting for run {self.run_id!r}",
                                  limit or 0.0) from None
        raise watching.not_reached(self.run_id, last)

    def watch(self, after_seq: int | None = None, buffer: int = watching.DEFAULT_BUFFER
              ) -> AsyncRemoteWatch:
        """Watch the run until it finishes (see `AsyncClient.watch`).

        Raises:
            RunNotFound: No such run (raised by the first step).
            EngineClosed: No engine serves the file, or it stopped while watching.
        """
        return self._client.watch(self.run_id, after_seq=after_seq, buffer=buffer)

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to finish and return its output (see `Client.result`).

        Raises:
            WorkflowFailed: The run failed, or was cancelled (its `error_type` is then
                ``"replay.Cancelled"`` and its message is the reason).
            TimeoutError: `timeout` passed first.
            EngineClosed: No engine serves the file, or it stopped or died meanwhile.
        """
        return await self._client.result(self.run_id, timeout)
