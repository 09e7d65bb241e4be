"""The subcommands that steer a run: `signal`, `resume`, `cancel` and `terminate`.

Each writes through the live channel when an engine holds the database, into the file
when none does (or, on a PostgreSQL URL, queues the write for the engines there), and
says which of these it did. `loads` reads the JSON values they (and `sql -p`) take,
within what the live channel can carry, so a value means the same with or without an
engine.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from replay._channel._protocol import MAX_DEPTH, WireError, to_wire
from replay._cli import _format as fmt
from replay._cli import _queued
from replay._cli._answers import Source, shown
from replay._cli._resume import resume as resume_run
from replay._cli._source import open_source
from replay._pg._url import is_postgres_url
from replay._types import RunState


class UsageError(Exception):
    """A malformed argument: exit status 2."""


def loads(text: str, name: str) -> Any:
    """Parse JSON that the live channel can carry (the same limit with or without it).

    Raises:
        ValueError: `text` is not JSON.
        UsageError: It nests too deeply.
    """
    try:
        value = json.loads(text)
        to_wire(value)
    except (RecursionError, WireError):
        raise UsageError(f"{name} nests more than {MAX_DEPTH} arrays and objects deep; "
                         "send a flatter value") from None
    return value


def signal(args: argparse.Namespace, out: TextIO) -> int:
    """`replay signal DB RUN_ID KEY [JSON_VALUE]`: answer a run's `Suspend(KEY)`."""
    if not args.key:
        raise UsageError("KEY must not be empty: pass the key of the Suspend to answer")
    try:
        payload = loads(args.value, "JSON_VALUE")
    except ValueError:
        raise UsageError(
            f"JSON_VALUE must be JSON, such as true, 42, null, '\"text\"' or "
            f"'{{\"approved\": true}}'; got {args.value!r} (to send it as text, quote it: "
            f"'{json.dumps(args.value)}')") from None
    source = open_source(args.db, write=True)
    try:
        state, warning = source.signal(args.run_id, args.key, payload)
    finally:
        source.close()
    if warning is not None and not args.json:
        print(f"replay signal: warning: {warning}", file=sys.stderr)
    if args.json:
        print(fmt.dumps({"run_id": args.run_id, "key": args.key, "live": source.live,
                         "state": state, "warning": warning, **queued_field(source)}),
              file=out)
    elif source.queued:
        print(_queued.signal_said(args.run_id, args.key, repr(shown(args.db)), state),
              file=out)
    elif source.live:
        print(f"signal for {args.key!r} recorded in run {args.run_id!r} by "
              f"{source.description}; the run is {state}", file=out)
    else:
        print(f"signal for {args.key!r} stored in run {args.run_id!r}'s mailbox; no engine "
              f"holds {shown(args.db)!r}, so the run takes it when an engine next opens the "
              f"{source.noun}", file=out)
    return 0


def resume(args: argparse.Namespace, out: TextIO) -> int:
    """`replay resume DB RUN_ID`: retry a failed run, or replay a parked one."""
    source = open_source(args.db)
    try:
        if source.live and args.workflows:
            print(f"replay resume: note: {source.description} holds {args.db!r} and resumes "
                  "the run with its own workflow code; --workflows is not used",
                  file=sys.stderr)
        before, after = resume_run(source, args.run_id, args.workflows)
    finally:
        source.close()
    resumed = before not in (RunState.COMPLETED, RunState.RUNNING)
    if args.json:
        print(fmt.dumps({"run_id": args.run_id, "resumed": resumed, "before": before,
                         "state": after}), file=out)
    elif resumed:
        print(f"resumed run {args.run_id!r} ({before} -> {after})", file=out)
    elif before == after:
        print(f"run {args.run_id!r} is {before}; resume changes nothing", file=out)
    else:
        print(f"run {args.run_id!r} was {before}; resume changes nothing (it is {after} "
              "now)", file=out)
    return 0


def cancel(args: argparse.Namespace, out: TextIO) -> int:
    """`replay cancel DB RUN_ID`: throw `Cancelled` in at the command the run waits on."""
    source = open_source(args.db, write=True)
    try:
        state, requested = source.cancel(args.run_id, args.reason)
    finally:
        source.close()
    if args.json:
        print(fmt.dumps({"run_id": args.run_id, "live": source.live, "requested": requested,
                         "state": state, **queued_field(source, requested)}), file=out)
    elif not requested:
        print(f"run {args.run_id!r} was already asked to cancel; cancel changes nothing "
              f"(the run is {state})", file=out)
    elif source.queued:
        print(_queued.cancel_said(args.run_id, repr(shown(args.db)), state), file=out)
    elif source.live:
        print(f"cancellation of run {args.run_id!r} recorded by {source.description}; the "
              f"run is {state}", file=out)
    else:
        print(f"cancellation of run {args.run_id!r} stored in {shown(args.db)!r}; no engine "
              f"holds the {source.noun}, so the run takes it when an engine next opens the "
              f"{source.noun} (it is {state} until then)", file=out)
    return 0


def terminate(args: argparse.Namespace, out: TextIO) -> int:
    """`replay terminate DB RUN_ID`: end a run cancelled at once."""
    # On a URL, the command queues the termination for the engines running there.
    source = open_source(args.db, write=is_postgres_url(args.db))
    try:
        state = source.terminate(args.run_id, args.reason)
    finally:
        source.close()
    if args.json:
        print(fmt.dumps({"run_id": args.run_id, "live": source.live, "state": state,
                         **queued_field(source)}), file=out)
    elif source.queued:
        print(_queued.terminate_said(args.run_id, repr(shown(args.db)), state), file=out)
    else:
        print(f"run {args.run_id!r} terminated by {source.description}; it is {state}",
              file=out)
    return 0


def queued_field(source: Source, sent: bool = True) -> dict[str, bool]:
    """``"queued": true`` in --json when the command queued its write for the engines."""
    return {"queued": True} if source.queued and sent else {}
