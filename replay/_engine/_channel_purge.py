"""The engine's side of the channel operation ``purge`` (`replay purge`, `Client.purge`).

The request carries `Engine.purge`'s arguments as wire values (``older_than``,
``states``, ``workflow``, ``archive_to``; missing ones take their defaults) and
``dry_run``. The engine checks them first (a bad one is the error answer), then
answers with a header, one ``{"progress": [totals]}`` message after each batch (a
purge of many runs takes a while: the client's read timeout counts from the last
message), a last ``progress`` message with the final report, and ``{"end": true}``.
An error after the header (an archive that cannot be written, a failed delete, the
engine closing) is sent as an error answer in its place.

``dry_run`` counts what the purge would delete and deletes nothing.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from replay._channel._protocol import to_wire
from replay._engine._channel_calls import send, send_error, value
from replay._engine._facade import Engine, internals
from replay._engine._retention import (
    DEFAULT_OLDER_THAN,
    DEFAULT_STATES,
    PurgeRequest,
    Retention,
    checked_request,
)
from replay._errors import ReplayError
from replay._types import PurgeReport


async def serve_purge(engine: Engine, stream: trio.SocketStream,
                      request: dict[str, Any]) -> None:
    """Answer one ``purge`` request.

    Raises:
        BadRequest: A field is malformed.
        ReplayError: (and TypeError, ValueError) a bad argument, or a closed engine,
            before anything is sent.
    """
    parts = internals(engine)
    parts.scheduler.check_open()
    purge = _request(request)
    dry_run = value(request, "dry_run") is True

    async def progress(report: PurgeReport) -> None:
        await send(stream, {"progress": [report_wire(report)]})

    await send(stream, {"ok": True, "pid": os.getpid()})
    try:
        report = await Retention(parts.scheduler, parts.store).purge(
            purge, dry_run=dry_run, progress=progress)
    except (ReplayError, TypeError, ValueError, OSError) as error:
        await send_error(stream, error)
        return
    await progress(report)
    await send(stream, {"end": True})


def _request(request: dict[str, Any]) -> PurgeRequest:
    """The purge's arguments, checked as `Engine.purge` checks them.

    Raises:
        BadRequest: A field is malformed.
        TypeError: An argument has the wrong type.
        ValueError: An argument has a wrong value.
    """
    older_than = value(request, "older_than")
    states = value(request, "states")
    return checked_request(DEFAULT_OLDER_THAN if older_than is None else older_than,
                           DEFAULT_STATES if states is None else states,
                           value(request, "workflow"), value(request, "archive_to"))


def report_wire(report: PurgeReport) -> dict[str, Any]:
    """Return a `PurgeReport` as wire values."""
    return {name: to_wire(getattr(report, name)) for name in PurgeReport.__dataclass_fields__}
