"""The `replay` command's source when an engine serves the file: its live channel."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from replay._channel._client import ChannelError, Connection, connect
from replay._channel._protocol import WireError, from_wire
from replay._cli._answers import CliError, Result


class LiveSource:
    """A running engine, reached over its socket (one connection per request)."""

    live = True
    queued = False
    noun = "file"

    def __init__(self, path: str, pid: int, now: datetime) -> None:
        self.path = path
        self.description = f"the engine in process {pid}"
        self._now = now

    def now(self) -> datetime:
        """Return the engine clock's time when the command reached the engine."""
        return self._now

    def _connect(self) -> Connection:
        try:
            connection = connect(self.path)
        except ChannelError as error:
            raise CliError(error.message) from None
        if connection is None:
            raise CliError(f"the engine serving {self.path!r} stopped during the command; "
                           "run it again")
        return connection

    def query(self, sql: str, params: Any = None, timeout: float | None = None) -> Result:
        """Run one read-only query in the engine (under its query_timeout by default)."""
        connection = self._connect()
        try:
            header = connection.request("query", sql=sql, params=params, timeout=timeout)
        except BaseException:
            connection.close()
            raise
        return Result(header["columns"], header["types"], _closing(connection.rows(), connection))

    def signal(self, run_id: str, key: str, payload: Any) -> tuple[str, str | None]:
        """Signal a run through the engine, which wakes it if it waits on `key`."""
        with self._connect() as connection:
            answer = connection.request("signal", run_id=run_id, key=key, payload=payload)
        warning = answer.get("warning")
        return str(answer["state"]), None if warning is None else str(warning)

    def resume(self, run_id: str) -> tuple[str, str]:
        """Resume a run through the engine (which has the workflow code)."""
        with self._connect() as connection:
            answer = connection.request("resume", run_id=run_id)
        return str(answer["before"]), str(answer["state"])

    def cancel(self, run_id: str, reason: str | None) -> tuple[str, bool]:
        """Cancel a run through the engine, which wakes it if it is parked."""
        with self._connect() as connection:
            answer = connection.request("cancel", run_id=run_id, reason=reason)
        return str(answer["state"]), bool(answer["requested"])

    def terminate(self, run_id: str, reason: str | None) -> str:
        """End a run ``cancelled`` through the engine (which stops its task)."""
        with self._connect() as connection:
            answer = connection.request("terminate", run_id=run_id, reason=reason)
        return str(answer["state"])

    def purge(self, request: dict[str, Any]) -> dict[str, Any]:
        """Purge through the engine, which reports after each batch; return its report.

        No time limit: a large purge reads its plan and writes its archive before the
        first batch. Ctrl-C stops it after the batch under way.
        """
        report: dict[str, Any] = {}
        with self._connect() as connection:
            connection.request("purge", **request)
            while not (message := connection.receive(timeout=None)).get("end"):
                report = message["progress"][-1]
        try:
            return {name: from_wire(item) for name, item in report.items()}
        except WireError as error:
            raise CliError(f"malformed answer from the engine: {error}") from None

    def close(self) -> None:
        """Nothing to let go of: every request had its own connection."""


def _closing(chunks: Iterator[list[tuple[Any, ...]]], connection: Connection
             ) -> Iterator[list[tuple[Any, ...]]]:
    try:
        yield from chunks
    finally:
        connection.close()
