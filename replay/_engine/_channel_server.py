"""The engine's side of the live channel: the `replay` command reaches a running engine.

`open_engine` starts a `ChannelServer` in its services nursery (unless told not to):
it binds ``<database>.sock`` with mode 0600 (bound inside a fresh private directory,
then renamed into place, so it is never reachable with wider permissions), serves
each connection in its own task, refuses peers of another user id, and removes the
socket when the engine closes. What it may do is what the engine's API allows: read
only queries (the same check as `engine.sql`), `signal`, `resume`, `cancel` and
`terminate` for the `replay` command, and the ``call`` operation of `replay.connect`
clients (start, status, wait, result, runs, signal, resume, cancel, terminate:
`_channel_calls`), ``watch`` (`_channel_watch`) and ``purge`` (`_channel_purge`), for
both. The protocol is in `replay._channel._protocol`.

Handlers never time out: under a mock clock a timeout would fire at once (autojump),
and a connection costs only a task, open to the engine's own user only.

Overload never stops the channel: when ``accept`` fails for want of descriptors or
memory (EMFILE, ENFILE, ENOMEM, ENOBUFS), the server logs one warning, waits
`ACCEPT_RETRY_SECONDS` and accepts again, as trio's ``serve_listeners`` does; the
connections wait in the listen backlog meanwhile. A bad request, a malformed or too
deeply nested value included, gets an error answer and the server goes on serving.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import tempfile
from typing import TYPE_CHECKING, Any

import trio

from replay._channel._protocol import (
    ACCEPTED_PROTOCOLS,
    PROTOCOL,
    dump_message,
    load_message,
    peer_uid,
    short_address,
    short_repr,
    socket_path,
    to_wire,
)
from replay._core._history import RunHistory
from replay._core._signals import misdirected_signal
from replay._engine._channel_calls import BadRequest as _BadRequest
from replay._engine._channel_calls import send as _send
from replay._engine._channel_calls import send_error as _send_error
from replay._engine._channel_calls import serve_call
from replay._engine._channel_calls import text as _text
from replay._engine._channel_calls import value as _value
from replay._engine._channel_purge import serve_purge
from replay._engine._channel_watch import serve_watch
from replay._engine._clock import in_thread
from replay._errors import ReplayError
from replay._store import CLI_ADVICE, EngineStore, UserQuery
from replay._version import __version__

if TYPE_CHECKING:
    from replay._engine._facade import Engine

log = logging.getLogger("replay")

CHUNK_ROWS = 500
MAX_REQUEST_BYTES = 16 * 1024 * 1024
# As many pending connections as the kernel allows (it caps this at net.core.somaxconn),
# so that many commands at once wait to be accepted rather than fail with EAGAIN.
BACKLOG = 0xFFFF
# accept(2) errors that mean "overloaded for now" (the list trio's serve_listeners uses).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_SECONDS = 0.1


class ChannelServer:
    """Serves the `replay` command for one engine over a Unix socket next to its file.

    Args:
        engine: The engine to serve.
        store: Its open store (queries run on cursors of it).
    """

    def __init__(self, engine: Engine, store: EngineStore) -> None:
        self._engine = engine
        self._store = store
        self.path = socket_path(store.path)
        self._inode: tuple[int, int] | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the socket and serve connections until cancelled; then remove it.

        If the socket cannot be created (a read-only directory, a name taken by a file
        that is not a socket), a warning is logged and the engine runs without it. If
        accepting fails for good, a warning is logged and connections are refused (the
        socket stays until the engine closes, so the command says the channel refused).
        """
        try:
            sock = self._bind()
        except OSError as error:
            log.warning("the replay command cannot reach this engine while it runs: cannot "
                        "create %s (%s); it can still read the file once the engine stops",
                        self.path, error)
            task_status.started()
            return
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        try:
            async with trio.open_nursery() as handlers:
                task_status.started()
                await self._accept(listener, handlers)
            await listener.aclose()
            await trio.sleep_forever()
        finally:
            self._remove()
            with trio.CancelScope(shield=True):
                await listener.aclose()

    async def _accept(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        """Accept connections; return only if accepting fails for good.

        Out of descriptors or memory, it warns once, then retries until it succeeds.
        """
        overloaded = False
        while True:
            try:
                stream = await listener.accept()
            except OSError as error:  # never fail the engine for its channel
                if error.errno not in ACCEPT_CAPACITY_ERRNOS:
                    log.warning("the replay command's channel %s stopped: %s", self.path, error)
                    return
                if not overloaded:
                    log.warning("the replay command's channel %s cannot accept connections: "
                                "%s; retrying every %s s until some are released", self.path,
                                error, ACCEPT_RETRY_SECONDS)
                overloaded = True
                await trio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            if overloaded:
                log.info("the replay command's channel %s accepts connections again",
                         self.path)
                overloaded = False
            handlers.start_soon(self._handle, stream)

    # -- the socket --

    def _bind(self) -> socket.socket:
        with contextlib.suppress(FileNotFoundError):
            # This engine holds the database's lock, so a socket there is a stale one.
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise OSError(f"{self.path!r} exists and is not a socket")
        private = tempfile.mkdtemp(prefix=".replay-", dir=os.path.dirname(self.path))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            bound = os.path.join(private, "s")
            with short_address(bound) as address:
                sock.bind(address)
            os.chmod(bound, 0o600)
            os.replace(bound, self.path)
            info = os.stat(self.path)
            self._inode = (info.st_dev, info.st_ino)
            sock.listen(BACKLOG)
        except BaseException:
            sock.close()
            raise
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(private)
        return sock

    def _remove(self) -> None:
        """Remove the socket, unless another engine has replaced it since."""
        with contextlib.suppress(OSError):
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._inode:
                os.unlink(self.path)

    # -- one connection --

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                await self._serve_one(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the command went away
            except Exception:
                log.exception("the replay command's request failed inside the engine")
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await _send_error(stream, "ReplayInternalError",
                                      "the engine failed to answer; this is a bug in replay; "
                                      "please report it (the engine's log has the traceback)")

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        uid, mine = peer_uid(stream.socket), os.geteuid()
        if uid != mine:
            await _send_error(stream, "PermissionError",
                              f"refused: this engine serves only its own user (uid {mine}), "
                              f"not uid {uid}; run replay as the user that runs the engine")
            return
        try:
            request = await _receive(stream)
            if request.get("protocol") not in ACCEPTED_PROTOCOLS:
                raise _BadRequest(
                    f"this engine speaks channel protocol {PROTOCOL}, the command sent "
                    f"{short_repr(request.get('protocol'))}; use the same version of "
                    f"replay-workflows ({__version__}) for both")
            await self._dispatch(stream, request)
        except _BadRequest as error:
            await _send_error(stream, "ProtocolError", str(error))
        except (ReplayError, TypeError, ValueError, KeyError) as error:
            await _send_error(stream, error)

    async def _dispatch(self, stream: trio.SocketStream, request: dict[str, Any]) -> None:
        op = request.get("op")
        engine = self._engine
        if op == "hello":
            await _send(stream, {"ok": True, "protocol": PROTOCOL, "version": __version__,
                                 "pid": os.getpid(), "now": to_wire(engine.now())})
        elif op == "query":
            await self._query(stream, _text(request, "sql"), _value(request, "params"),
                              _value(request, "timeout"))
        elif op == "signal":
            run_id, key = _text(request, "run_id"), _text(request, "key")
            await engine.signal(run_id, key, _value(request, "payload"))
            info = engine.status(run_id)
            await _send(stream, {"ok": True, "state": info.state.value,
                                 "warning": misdirected_signal(info, key)})
        elif op == "call":
            await serve_call(engine, stream, request, self._store.path)
        elif op == "watch":
            await serve_watch(engine, stream, request, self._store.path)
        elif op == "purge":
            await serve_purge(engine, stream, request)
        elif op == "resume":
            run_id = _text(request, "run_id")
            before = engine.status(run_id).state.value
            await engine.resume(run_id)
            await _send(stream, {"ok": True, "before": before,
                                 "state": engine.status(run_id).state.value})
        elif op == "cancel":
            run_id = _text(request, "run_id")
            # Whether this request is the one that counts: a second cancel changes
            # nothing, and the command says so. (Two cancels at the same moment may
            # both be told that theirs counted; the run takes one.)
            requested_before = await self._cancel_requested(run_id)
            await engine.cancel(run_id, _value(request, "reason"))
            await _send(stream, {"ok": True, "requested": not requested_before,
                                 "state": engine.status(run_id).state.value})
        elif op == "terminate":
            run_id = _text(request, "run_id")
            await engine.terminate(run_id, _value(request, "reason"))
            await _send(stream, {"ok": True, "state": engine.status(run_id).state.value})
        else:
            raise _BadRequest(f"unknown operation {short_repr(op)}")

    async def _cancel_requested(self, run_id: str) -> bool:
        """Whether the run's cancellation is recorded already (False: no such run)."""
        records = await in_thread(self._store.load_history, run_id)
        return RunHistory(records).cancel_reason is not None

    async def _query(self, stream: trio.SocketStream, sql: str, params: Any,
                     timeout: object) -> None:
        # In the engine's query threads, under its time limit (or the command's).
        timed = self._engine.open_query(sql, params, timeout, CLI_ADVICE)
        query = timed.query
        try:
            await timed.call(_start)
            await _send(stream, {"ok": True, "columns": list(query.columns),
                                 "types": list(query.types)})
            total = 0
            while (chunk := await timed.call(_next_chunk)) is not None:
                count, data = chunk
                total += count
                await stream.send_all(data)
            await _send(stream, {"end": True, "rows": total})
        except ReplayError as error:  # the query failed half-way
            await _send_error(stream, error)
        finally:
            with trio.CancelScope(shield=True):
                await in_thread(query.close)


def _start(query: UserQuery) -> None:
    query.start()


def _next_chunk(query: UserQuery) -> tuple[int, bytes] | None:
    """Fetch and encode the next rows in a worker thread (never on the engine's loop)."""
    rows = query.fetch(CHUNK_ROWS)
    if not rows:
        return None
    return len(rows), dump_message({"rows": [to_wire(list(row)) for row in rows]})


async def _receive(stream: trio.SocketStream) -> dict[str, Any]:
    buffer = bytearray()
    while b"\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            raise _BadRequest("the connection closed before a whole request arrived")
        buffer += data
        if len(buffer) > MAX_REQUEST_BYTES:
            raise _BadRequest(f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        return load_message(bytes(buffer[: buffer.index(b"\n")]))
    except ValueError as error:
        raise _BadRequest(f"malformed request: {error}") from None
