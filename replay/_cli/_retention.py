"""``replay purge`` and ``replay compact``: keeping a database file bounded.

``replay purge DB --older-than 30d`` deletes finished runs that ended more than that
long ago, as `Engine.purge` does: through the engine while one holds the file (the
``purge`` operation of the live channel, so its runs keep executing), or in the file
itself when none does. ``--dry-run`` counts what would go and changes nothing.

``replay compact DB`` rewrites a file no engine holds into a fresh one (deleting does
not shrink a DuckDB file) and prints the size before and after. A PostgreSQL database
is refused: the server reuses the space itself (VACUUM).
"""

from __future__ import annotations

import argparse
import os
import re
from datetime import datetime, timedelta
from typing import Any, TextIO

from replay._cli import _format as fmt
from replay._cli._answers import CliError, shown
from replay._cli._source import open_source
from replay._engine._retention import DEFAULT_STATES, checked_request, described
from replay._pg._url import is_postgres_url
from replay._store import FINISHED
from replay._store._compact import compact as compact_file
from replay._types import PurgeReport

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def add_purge_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``replay purge``'s arguments (after DB and --json)."""
    parser.add_argument("--older-than", metavar="DURATION", type=duration, required=True,
                        help="delete runs that finished more than this long ago: 30d, 12h, "
                        "90m, 45s")
    parser.add_argument("--state", action="append", choices=FINISHED, metavar="STATE",
                        help="only runs that ended in this state: completed, failed or "
                        "cancelled (repeat for several; default: all three)")
    parser.add_argument("--workflow", metavar="NAME", help="only runs of this workflow")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be deleted, and delete nothing")
    parser.add_argument("--archive", metavar="FILE", default=None,
                        help="first write the deleted events to this new Parquet file")


def duration(text: str) -> timedelta:
    """Parse a duration such as 30d, 12h, 90m or 45s.

    Raises:
        argparse.ArgumentTypeError: It is not one.
    """
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 30d, 12h, 90m or 45s, got {text!r}")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def purge(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``replay purge``; return its exit status.

    Raises:
        CliError: No database, or it cannot be used.
        ValueError: The archive exists or cannot be written (nothing is deleted).
        ReplayError: The engine or the file failed the purge.
    """
    archive = None if args.archive is None else os.path.abspath(args.archive)
    request = checked_request(args.older_than, args.state or DEFAULT_STATES, args.workflow,
                              archive)
    fields = {"older_than": request.older_than, "states": list(request.states),
              "workflow": request.workflow, "archive_to": request.archive_to,
              "dry_run": args.dry_run}
    source = open_source(args.db, write=not args.dry_run)
    try:
        report = source.purge(fields)
    except ValueError as error:  # the archive (the engine's refusal is a ChannelError)
        raise CliError(str(error).replace("archive_to", "--archive")) from None
    finally:
        source.close()
    if args.json:
        cutoff = report["cutoff"]
        print(fmt.dumps({"live": source.live, "dry_run": args.dry_run, **report,
                         "cutoff": cutoff.isoformat() if isinstance(cutoff, datetime)
                         else cutoff}), file=out)
    else:
        print(_said(report, args.dry_run, source.live, source.description), file=out)
    return 0


def _said(report: dict[str, Any], dry_run: bool, live: bool, where: str) -> str:
    what = described(PurgeReport(**report))
    if dry_run:
        return f"would purge {what}; nothing was deleted (--dry-run)"
    archived = f"; their events are in {report['archive']!r}" if report["archive"] else ""
    return f"purged {what}, {'through' if live else 'in'} {where}{archived}"


def compact(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``replay compact``; return its exit status.

    Raises:
        CliError: No database at the path, or it is a PostgreSQL URL.
        DatabaseLocked: An engine holds the file.
        DatabaseError: It is not a usable replay database, or the copy failed.
    """
    if is_postgres_url(args.db):
        raise CliError(
            f"compact rewrites a DuckDB file, and {shown(args.db)!r} is a PostgreSQL "
            "database: PostgreSQL reuses the space of deleted rows itself (autovacuum); "
            "to give it back to the operating system, run VACUUM FULL on replay_event_log "
            "in that schema (it locks the table: while no engine runs on it)")
    try:
        before, after = compact_file(args.db)
    except FileNotFoundError:
        raise CliError(f"no database at {args.db!r}; pass the path your application gives "
                       "replay.open_engine()") from None
    if args.json:
        print(fmt.dumps({"db": args.db, "bytes_before": before, "bytes_after": after}),
              file=out)
    else:
        print(f"compacted {args.db!r}: {_size(before)} -> {_size(after)}", file=out)
    return 0


def _size(count: int) -> str:
    size = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{count} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
