"""Running an engine as a service: wait for SIGTERM or SIGINT, then stop cleanly.

`Engine.serve_forever` is the last line of an ``async with open_engine(...)`` body.
While it waits, the signals it names are received by trio instead of raising
`KeyboardInterrupt`; when one arrives it returns, the body ends normally, and the
engine stops cleanly: no new command starts, running steps get `shutdown_timeout` to
finish, and whatever still runs is recorded as abandoned (it runs again at the next
open, uncharged). Once it has returned, a second Ctrl-C raises `KeyboardInterrupt`
as usual, which stops the engine at once (still recording abandoned attempts).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterable

import trio

log = logging.getLogger("replay")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def wait_for_stop_signal(signals: Iterable[int]) -> int:
    """Wait until one of `signals` arrives and return its number.

    Raises:
        RuntimeError: Not called from the main thread (signals are delivered there).
        ValueError: `signals` is empty.
    """
    wanted = tuple(signals)
    if not wanted:
        raise ValueError("serve_forever needs at least one signal to stop on, got none")
    with trio.open_signal_receiver(*wanted) as received:
        async for number in received:
            log.info("replay: %s received: stopping the engine cleanly",
                     signal.Signals(number).name)
            return number
    raise AssertionError("unreachable: a signal receiver never ends")  # pragma: no cover
