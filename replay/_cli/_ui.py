"""``replay ui DB``: serve the web view of a database until Ctrl-C or SIGTERM.

The pages (`replay._ui`) read and act through `SourceBackend`, which asks what the
other subcommands ask: each request opens `open_source` (the engine serving the file
over the live channel, or else the file itself, opened for that request only, so
that an application may open the file in between) and closes it again. Source calls
block, so they run in worker threads. A run's live updates come from the channel's
``watch``; with no engine there is nothing to watch, and the page says so.

A ``postgresql://`` URL has no channel: every request reads the database itself
(`open_source` gives `PgAccess` behind `FileSource`), whether or not an engine runs on
it, so pages show what changed when they are reloaded and have no live updates;
signals and cancellations are stored while no engine runs on it, and queued for the
engines while they run (`replay._cli._queued`), as the command's are.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import fields
from datetime import datetime
from typing import Any, TextIO, TypeVar

import trio

from replay._channel._client import ChannelError, Connection, connect
from replay._channel._protocol import WireError, from_wire
from replay._cli import _queued
from replay._cli._answers import CliError, Source, shown
from replay._cli._source import open_source
from replay._engine._clock import in_thread
from replay._errors import QueryError, ReplayError, RunNotFound
from replay._pg._url import is_postgres_url
from replay._types import Event, RunInfo
from replay._ui import Facts, Outcome, Refused, Table, Update, require_hypercorn, serve
from replay._ui._backend import cancelled, resumed, signalled
from replay._ui._examples import DUCKDB, POSTGRES
from replay._ui._serve import bind_error

T = TypeVar("T")
_STOP = (signal.SIGINT, signal.SIGTERM)  # both stop the server cleanly
QUERY_SECONDS = 30.0  # a query of the page on the file itself (an engine has its own)
_STATUS = {"RunNotFound": 404, "RunFinished": 409, "SignalRejected": 409,
           "EncodingError": 400, "ValueError": 400, "TypeError": 400, "WireError": 400,
           "WorkflowNotRegistered": 409}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``replay ui``'s arguments."""
    parser.add_argument("db", metavar="DB",
                        help="the database file, or a postgresql:// URL")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine "
                        "only; 0.0.0.0 lets other machines in, with no password)")
    parser.add_argument("--port", type=_port, default=8077,
                        help="the port (default 8077; 0: any free port)")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def ui(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``replay ui``: print where it serves, then serve until stopped.

    Raises:
        CliError: hypercorn is not installed, the database cannot be used, or the
            address cannot be listened on.
    """
    try:
        require_hypercorn()
    except ModuleNotFoundError as error:
        raise CliError(str(error)) from None
    backend = SourceBackend(args.db)
    backend.refresh()  # no database, or one nobody may read: say so before serving
    try:
        trio.run(_serve, backend, args.host, args.port, shown(args.db), out)
    except (OSError, BaseExceptionGroup) as failure:
        bound = bind_error(failure)
        if bound is None:
            raise
        raise CliError(f"cannot serve at {args.host}:{args.port}: {bound.strerror or bound}; "
                       "pick another --port (0: any free one)") from None
    return 0


async def _serve(backend: SourceBackend, host: str, port: int, db: str, out: TextIO) -> None:
    async def stopped() -> None:
        with trio.open_signal_receiver(*_STOP) as arriving:
            async for _ in arriving:
                return

    async with trio.open_nursery() as nursery:
        address = await nursery.start(lambda task_status: serve(
            backend, host, port, shutdown=stopped, task_status=task_status))
        facts = backend.facts
        if facts.live:
            how = f"(live: {facts.description.replace('the engine in process', 'engine pid')})"
        elif backend.dialect == POSTGRES:
            how = "(database: read directly, no live updates)"
        else:
            how = "(file: no engine is running)"
        print(f"replay ui: serving {db} at {address} {how}", file=out, flush=True)


class SourceBackend:
    """The pages' view of a database through `open_source` (see `replay._ui.Backend`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.dialect = POSTGRES if is_postgres_url(path) else DUCKDB
        self.facts = Facts(False, f"the file {path!r}")

    def refresh(self) -> None:
        """Open the database once, to learn who answers (and fail early if nobody can).

        Raises:
            CliError: No database at the path, or it cannot be used.
        """
        _source_call(self.path, False, self._learn)

    def _learn(self, source: Source) -> None:
        self.facts = Facts(source.live, source.description, source.noun)

    async def _call(self, function: Callable[[Source], T], write: bool = False) -> T:
        def call(source: Source) -> T:
            self._learn(source)
            return function(source)
        return await in_thread(_source_call, self.path, write, call)

    async def now(self) -> datetime:
        """Return the engine clock's time (for a file: never before its newest event)."""
        return await self._call(lambda source: source.now())

    async def query(self, sql: str, params: Sequence[Any] | None = None, *,
                    max_rows: int = 1000) -> Table:
        """Run one read-only query (the engine's checks, or the file's); at most `max_rows`.

        Raises:
            QueryError: It is not exactly one read-only query, or it failed.
            Refused: The database cannot be reached now.
        """
        def read(source: Source) -> Table:
            result = source.query(sql, list(params) if params is not None else None,
                                  None if source.live else QUERY_SECONDS)
            rows = _first(result.chunks, max_rows + 1)
            return Table(result.columns, result.types, rows[:max_rows], len(rows) > max_rows)
        return await self._call(read)

    @asynccontextmanager
    async def watch(self, run_id: str, after_seq: int | None) -> AsyncIterator[_Updates]:
        """Watch the run through the engine's channel.

        Raises:
            RunNotFound: No such run.
            Refused: No engine serves the file, or it refused the watch.
        """
        if self.dialect == POSTGRES:  # the pages do not ask: facts.live is never set
            raise Refused(f"{self.facts.description} is read directly, with no live "
                          "updates: reload the page to see what changed", status=409)
        connection = await in_thread(_watching, self.path, run_id, after_seq)
        try:
            yield _Updates(connection)
        finally:
            connection.hang_up()

    async def signal(self, run_id: str, key: str, payload: Any) -> Outcome:
        """Signal the run as ``replay signal`` does (the engine, the mailbox, or queued).

        Raises:
            RunNotFound: No such run.
            SignalRejected: The signal cannot be taken.
            Refused: Otherwise refused.
        """
        def send(source: Source) -> Outcome:
            state, warning = source.signal(run_id, key, payload)
            if source.queued:
                return Outcome(_queued.signal_said(run_id, key, "the database", state),
                               warning)
            return signalled(run_id, key, state, self.facts, warning)
        return await self._call(send, write=True)

    async def resume(self, run_id: str) -> Outcome:
        """Resume the run through the engine serving the file, as ``replay resume`` does.

        Raises:
            RunNotFound: No such run.
            Refused: No engine holds the file (resuming runs workflow code), or the
                engine refused.
        """
        def resume(source: Source) -> Outcome:
            if self.dialect == POSTGRES:
                raise Refused(
                    f"resume needs the workflow code, and this page reads "
                    f"{source.description} directly, reaching no engine: call "
                    "engine.resume() in your application, or, while no engine runs on "
                    "the database, run `replay resume URL RUN_ID --workflows MODULE`, "
                    "which resumes the run in an engine of its own")
            if not source.live:
                raise Refused(
                    f"resume needs the workflow code, and no engine holds {self.path!r}: "
                    "start your application (its engine holds the file, and this page "
                    "resumes through it), or run `replay resume DB RUN_ID --workflows "
                    "MODULE`, which resumes the run in an engine of its own")
            before, after = source.resume(run_id)
            return resumed(run_id, before, after)
        return await self._call(resume)

    async def cancel(self, run_id: str, reason: str | None) -> Outcome:
        """Cancel the run as ``replay cancel`` does (the engine, stored, or queued).

        Raises:
            RunNotFound: No such run.
            RunFinished: The run is finished.
            Refused: Otherwise refused.
        """
        def cancel(source: Source) -> Outcome:
            state, requested = source.cancel(run_id, reason)
            if source.queued and requested:
                return Outcome(_queued.cancel_said(run_id, "the database", state))
            return cancelled(run_id, state, requested, self.facts)
        return await self._call(cancel, write=True)


def _source_call(path: str, write: bool, function: Callable[[Source], T]) -> T:
    """Open the database, call `function` with it, close it; errors in the page's terms.

    Raises:
        RunNotFound: No such run.
        QueryError: A refused or failed query.
        ReplayError: The engine's or the file's own refusal (RunFinished, ...).
        Refused: The channel's refusals and the command's errors.
    """
    try:
        source = open_source(path, write=write)
    except CliError as error:
        # A PostgreSQL database refuses a write while another command writes to it: a
        # conflict with that command, not a database that cannot be reached.
        status = 409 if write and is_postgres_url(path) else 503
        raise Refused(str(error), status=status) from None
    try:
        return function(source)
    except ChannelError as error:
        raise _refusal(error) from None
    except CliError as error:
        raise Refused(str(error)) from None
    finally:
        source.close()


def _refusal(error: ChannelError) -> ReplayError:
    """The engine's error, from the channel, as the page's error."""
    if error.kind == "QueryError":
        return QueryError(error.message)
    return Refused(error.message, status=_STATUS.get(error.kind, 503))


def _first(chunks: Iterator[list[tuple[Any, ...]]], count: int) -> list[tuple[Any, ...]]:
    """Read `count` rows at most, then let go of the rest of the answer."""
    rows: list[tuple[Any, ...]] = []
    try:
        for chunk in chunks:
            rows += chunk
            if len(rows) >= count:
                break
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return rows[:count]


# -- watching over the channel --


def _watching(path: str, run_id: str, after_seq: int | None) -> Connection:
    """Ask the engine serving `path` for a watch of the run; return the connection.

    Raises:
        RunNotFound: No such run.
        Refused: No engine serves the file, or it refused.
    """
    try:
        connection = connect(path)
    except ChannelError as error:
        raise _refusal(error) from None
    if connection is None:
        raise Refused(f"no engine holds {path!r}, so nothing changes and there is nothing "
                      "to watch", status=409)
    try:
        connection.request("watch", run_id=run_id, after_seq=after_seq, workflow=None,
                           states=None)
    except ChannelError as error:
        connection.close()
        if error.kind == "RunNotFound":
            raise RunNotFound(run_id) from None
        raise _refusal(error) from None
    return connection


class _Updates:
    """The channel's ``update`` messages as the pages' plain `Update` dicts."""

    def __init__(self, connection: Connection) -> None:
        self._messages = connection.stream()

    def __aiter__(self) -> _Updates:
        return self

    async def __anext__(self) -> Update:
        message = await trio.to_thread.run_sync(self._next, abandon_on_cancel=True)
        if message is None:
            raise StopAsyncIteration
        return message

    def _next(self) -> Update | None:
        try:
            data = next(self._messages)["update"]
            return {"kind": str(data["kind"]), "seq": int(data["seq"]),
                    "info": _fields(data.get("info"), RunInfo),
                    "event": _fields(data.get("event"), Event, skip="value")}
        except StopIteration:
            return None
        except ChannelError as error:
            raise _refusal(error) from None
        except (KeyError, TypeError, ValueError, WireError) as error:
            raise Refused(f"malformed update from the engine: {error}", status=502) from None


def _fields(data: Any, kind: type[RunInfo] | type[Event], skip: str = ""
            ) -> dict[str, Any] | None:
    if not isinstance(data, dict):
        return None
    return {field.name: from_wire(data.get(field.name)) for field in fields(kind)
            if field.name != skip}
