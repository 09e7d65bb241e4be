"""`replay serve DB --workflows MODULE`: run the engine of a database file as a service.

DuckDB lets one process write a file. `replay serve` is that process: it imports the
workflow modules (as ``replay resume --workflows`` does), opens an engine on the file
with them, serves its live channel, and runs until SIGTERM or SIGINT (Ctrl-C); then it
stops cleanly (`Engine.serve_forever`): running steps get ``--shutdown-timeout``
seconds, what still runs is recorded as abandoned and runs again, uncharged, at the
next start. Every other process (web workers, scripts, jobs) uses the engine through
`replay.connect(DB)`, and the `replay` command works as with any running engine.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

import trio

from replay._channel._protocol import channel_supported, socket_path
from replay._cli._answers import CliError
from replay._cli._resume import import_workflows
from replay._engine._lifecycle import open_engine
from replay._errors import DatabaseLocked
from replay._pg._url import is_postgres_url

log = logging.getLogger("replay")


def serve(path: str, modules: Sequence[str], shutdown_timeout: float, lock_timeout: float,
          out: TextIO) -> str:
    """Serve `path` with the workflows of `modules` until SIGTERM or SIGINT.

    Args:
        path: The database file (created if missing).
        modules: Importable names of the modules that define the workflows.
        shutdown_timeout: Seconds running steps get to finish when it stops.
        lock_timeout: Seconds to wait for another process to let go of the file.
        out: Where to say that it serves, and that it stopped.

    Returns:
        The name of the signal that stopped it.

    Raises:
        CliError: A module cannot be imported or defines no workflow, the path is not
            a file, this system has no Unix sockets with peer credentials, or another
            process holds the file after `lock_timeout`.
        DatabaseError: The file is not a usable replay database.
    """
    if path == ":memory:" or not path:
        raise CliError("replay serve needs a database file, not an in-memory database: "
                       "other processes reach the engine through a socket next to the file")
    if is_postgres_url(path):
        raise CliError("replay serve needs a database file: other processes reach the "
                       "engine through a socket next to the file, and a PostgreSQL database "
                       "has none; run the engine inside your application "
                       "(replay.open_engine(URL, ...)) instead")
    if not channel_supported():
        raise CliError("replay serve needs Unix sockets with peer credentials (Linux, "
                       "macOS); here, run the engine inside your application instead")
    functions = import_workflows(modules)
    if not functions:
        raise CliError(
            f"the --workflows modules ({', '.join(modules)}) define no workflows: mark the "
            "workflow functions with @replay.workflow, or pass the modules that define them")
    try:
        with _service_log():
            return trio.run(_serve, path, functions, shutdown_timeout, lock_timeout, out)
    except DatabaseLocked as locked:  # say it in the command's terms
        raise CliError(str(locked).replace("pass lock_timeout= to wait",
                                           "pass --lock-timeout SECONDS to wait")) from None


async def _serve(path: str, workflows: dict[str, Callable[..., Any]], shutdown_timeout: float,
                 lock_timeout: float, out: TextIO) -> str:
    async with open_engine(path, workflows=list(workflows.values()),
                           shutdown_timeout=shutdown_timeout,
                           lock_timeout=lock_timeout) as engine:
        sock = socket_path(path)
        if not os.path.exists(sock):  # the engine logged why; without it, serving is moot
            raise CliError(f"cannot serve {path!r}: the engine could not create its socket "
                           f"{sock!r} (see the warning above)")
        print(f"serving {path} (pid {os.getpid()}) with workflows "
              f"{', '.join(sorted(workflows))}; other "
              f"processes use it with replay.connect({path!r}); stop with Ctrl-C or "
              f"kill -TERM {os.getpid()}", file=out, flush=True)
        number = await engine.serve_forever()
        name = signal.Signals(number).name
        print(f"{name} received: stopping (running steps get {shutdown_timeout:g} s)",
              file=out, flush=True)
    print(f"stopped; {path} is closed", file=out, flush=True)
    return name


@contextmanager
def _service_log() -> Iterator[None]:
    """Log the engine's messages (info and above) on standard error, with the time."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s replay serve: %(levelname)s: "
                                           "%(message)s"))
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
