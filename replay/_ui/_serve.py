"""Serving the web view on trio with hypercorn, the optional ``ui`` extra.

hypercorn is imported here only, when a server starts, so that ``import replay`` and
every other command work without it; `require_hypercorn` lets callers fail before
they open anything. The server logs to the ``replay.ui`` logger, not to the terminal.
"""

from __future__ import annotations

import functools
import importlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from replay._ui._app import App
from replay._ui._backend import Backend

log = logging.getLogger("replay.ui")
INSTALL = 'pip install "replay-workflows[ui]"'


def require_hypercorn() -> Any:
    """Return the ``hypercorn.trio`` module.

    Raises:
        ModuleNotFoundError: hypercorn (with its trio worker) is not installed.
    """
    try:
        return importlib.import_module("hypercorn.trio")
    except ImportError as error:
        raise ModuleNotFoundError(
            f"the web view needs hypercorn, which is not installed ({error}); "
            f"install the ui extra: {INSTALL}", name="hypercorn") from None


def checked_address(address: object) -> tuple[str, int]:
    """Return a ``(host, port)`` pair to listen on.

    Raises:
        TypeError: It is not a (str, int) pair.
        ValueError: The host is empty or the port is outside 0-65535.
    """
    if (not isinstance(address, tuple) or len(address) != 2
            or not isinstance(address[0], str) or isinstance(address[1], bool)
            or not isinstance(address[1], int)):
        raise TypeError(f'ui must be a (host, port) pair such as ("127.0.0.1", 8077), or '
                        f"None, got {address!r}")
    host, port = address
    if not host or not 0 <= port <= 65535:
        raise ValueError(f"ui must name a host and a port from 0 to 65535 (0: any free "
                         f"port), got {address!r}")
    return host, port


async def serve(backend: Backend, host: str, port: int, *,
                shutdown: Callable[[], Awaitable[object]] | None = None,
                task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the web view of `backend` on `host`:`port` until cancelled or `shutdown`.

    Args:
        backend: Where the pages read and act.
        host: The address to listen on (``127.0.0.1``: this machine only).
        port: The port (0: any free one).
        shutdown: Returns when the server should stop (open pages' live streams end
            at once, other requests get a moment to finish).
        task_status: Given the page's URL, with the real port, once it listens.

    Raises:
        ModuleNotFoundError: hypercorn is not installed.
        OSError: The address cannot be listened on (the port is taken, ...).
    """
    hypercorn_trio = require_hypercorn()
    if port:
        _check_free(host, port)
    config_module = importlib.import_module("hypercorn.config")
    config = config_module.Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = 2.0
    app = App(backend, host)

    async def stop() -> None:
        if shutdown is None:
            await trio.sleep_forever()
        else:
            await shutdown()
        app.stopping.set()

    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                functools.partial(hypercorn_trio.serve, app, config, shutdown_trigger=stop))
            address = binds[0]  # http://HOST:PORT, with the port it listens on
            app.guard.port = int(address.rsplit(":", 1)[1])
            task_status.started(address.rstrip("/") + "/")
    except BaseExceptionGroup as group:
        # hypercorn's nurseries wrap a failed bind (the port is taken) in groups.
        error = bind_error(group)
        if error is None:
            raise
        raise error from None


def _check_free(host: str, port: int) -> None:
    """Raise the `OSError` of a taken address before hypercorn tries it.

    hypercorn leaves the socket of a failed bind open (a ResourceWarning later).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as hypercorn binds
        probe.bind((host, port))


def bind_error(error: BaseException) -> OSError | None:
    """Return the `OSError` that `error` is, or that is all a (nested) group holds."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error if isinstance(error, OSError) else None
