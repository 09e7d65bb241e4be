"""The `replay` command (also `python -m replay`): inspect and steer a replay database.

Every subcommand takes the database path first. While an engine holds the file the
command talks to it over the live channel (`replay._channel._protocol`); otherwise it opens the
file itself for the length of one command (`replay._cli._source`), and `resume
--workflows` runs an engine of its own (`replay._cli._resume`). The commands that steer
a run are in `replay._cli._steer`; `serve` runs the file's engine as a service for
other processes (`replay._cli._serve`). Exit status: 0 on
success, 1 on a user error (unknown run, rejected signal, finished run, refused query,
no database), 2 on a usage error (bad arguments).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TextIO

from replay._channel._client import ChannelError
from replay._cli import _format as fmt
from replay._cli import _retention as retention
from replay._cli import _steer as steer
from replay._cli._answers import EVENT_COLUMNS, CliError, Source, masked, shown
from replay._cli._children import load_children
from replay._cli._serve import serve
from replay._cli._source import open_source
from replay._cli._steer import UsageError, loads
from replay._cli._ui import add_arguments as ui_arguments
from replay._cli._ui import ui
from replay._cli._watch import add_arguments as _watch_arguments
from replay._cli._watch import watch as _watch
from replay._errors import ReplayError, RunNotFound
from replay._store import write_export
from replay._types import RunState
from replay._version import __version__

EXPORT_VIEWS = (("replay_runs", "created_at, run_id"), ("replay_events", "seq"))
EXTENSIONS = {"parquet": "parquet", "csv": "csv", "json": "jsonl"}
_SINCE = re.compile(r"^(\d+)([smhd])$")
_MODULE = re.compile(r"[^\W\d]\w*(\.[^\W\d]\w*)*")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `replay` command and return its exit status.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 1 on a user error, 2 on a usage error.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exiting:  # --help, --version, or a usage error (2)
        return exiting.code if isinstance(exiting.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler: Callable[[argparse.Namespace, TextIO], int] = args.handler
    try:
        return handler(args, sys.stdout)
    except UsageError as error:
        print(f"replay {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`replay runs DB | head`): stop quietly
        _silence_stdout()
        return 1
    except (CliError, ReplayError, ChannelError, OSError) as error:
        message = _message(error, args)
        print(f"replay {args.command}: {masked(message, getattr(args, 'db', ''))}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so Python's final flush does not fail again."""
    stdout = sys.__stdout__
    if stdout is not None and sys.stdout is stdout:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout.fileno())
        os.close(devnull)


def _message(error: Exception, args: argparse.Namespace) -> str:
    """Say what went wrong in the command's terms, and what to do."""
    db = shown(args.db)  # a URL's password is never printed
    if isinstance(error, RunNotFound):
        return (f"no run with run_id {error.run_id!r} in {db!r}; "
                f"list the runs with: replay runs {_quote(db)}")
    if isinstance(error, ChannelError) and error.kind == "RunNotFound":
        return (f"no run with run_id {args.run_id!r} in {db!r}; "
                f"list the runs with: replay runs {_quote(db)}")
    text = error.message if isinstance(error, ChannelError) else str(error)
    for said in ("engine.sql() only reads", "engine.sql() runs exactly"):  # the store's words
        text = text.replace(said, said.replace("engine.sql()", "replay sql"))
    return text


def _quote(text: str) -> str:
    return text if re.fullmatch(r"[\w./:@%+=,-]+", text) else "'" + text.replace("'", "'\\''") + "'"


# -- the parser --


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="replay",
        description="Inspect and steer a replay database: list runs, show one run's "
        "timeline, query the history with SQL, signal, resume, cancel or terminate runs, "
        "export the views. "
        "Works on a stopped database file and, through the engine, on one in use.",
        epilog="Exit status: 0 success, 1 user error (unknown run, rejected signal or "
        "query), 2 usage error. See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"replay {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    runs = _command(commands, "runs", _runs, "list runs, newest first")
    runs.add_argument("--state", choices=[s.value for s in RunState],
                      help="only runs in this state")
    runs.add_argument("--workflow", metavar="NAME", help="only runs of this workflow")
    runs.add_argument("--since", metavar="DURATION", type=_since,
                      help="only runs created within this time before now: 30s, 15m, 2h, 7d")
    runs.add_argument("--limit", metavar="N", type=_positive, default=100,
                      help="at most N runs (default 100)")

    show = _command(commands, "show", _show, "one run's timeline: keys, attempts, "
                    "durations, waits, errors, values")
    show.add_argument("run_id", metavar="RUN_ID")

    sql = _command(commands, "sql", _sql, "run one read-only query (SELECT, WITH, EXPLAIN)")
    sql.add_argument("query", metavar="QUERY")
    sql.add_argument("-p", "--param", action="append", default=[], metavar="VALUE",
                     help="a value for the next ? placeholder: JSON (42, true, null, "
                     "\"text\"), else taken as a string; repeat for several")
    sql.add_argument("--timeout", metavar="SECONDS", type=_seconds, default=None,
                     help="stop the query after this many seconds (default: the running "
                     "engine's query_timeout, or no limit when no engine holds the file)")

    signal = _command(commands, "signal", steer.signal, "deliver a value to a run's Suspend(KEY)")
    signal.add_argument("run_id", metavar="RUN_ID")
    signal.add_argument("key", metavar="KEY")
    signal.add_argument("value", metavar="JSON_VALUE",
                        help="the payload as JSON, e.g. true, 42, '\"text\"', '{\"ok\": 1}'")

    resume = _command(commands, "resume", steer.resume, "retry a failed run, or replay a parked "
                      "one now (through the running engine, or with --workflows in the "
                      "command's own engine)")
    resume.add_argument("run_id", metavar="RUN_ID")
    resume.add_argument("--workflows", action="extend", type=_modules, default=[],
                        metavar="MODULE[,MODULE...]",
                        help="when no engine holds the file: import these modules (as for "
                        "python -m) and resume the run with the workflows they define")

    cancel = _command(commands, "cancel", steer.cancel, "cancel a run: Cancelled is thrown in "
                      "at the command it waits on, and its workflow may compensate (through "
                      "the running engine, or stored in the file for the next engine)")
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--reason", metavar="TEXT", default=None,
                        help="why, passed on to the workflow as Cancelled.reason")

    terminate = _command(commands, "terminate", steer.terminate, "end a run cancelled at once, "
                         "running none of its workflow code (through the running engine, "
                         "or queued for the engines running on a PostgreSQL database)")
    terminate.add_argument("run_id", metavar="RUN_ID")
    terminate.add_argument("--reason", metavar="TEXT", default=None,
                           help="why, recorded with the run's end")

    _watch_arguments(_command(commands, "watch", _watch, "print a run's updates live as "
                              "they happen (through the running engine), until it finishes"))
    retention.add_purge_arguments(_command(
        commands, "purge", retention.purge, "delete finished runs that ended long enough ago "
        "(through the running engine, or in the file)"))
    _command(commands, "compact", retention.compact, "rewrite the file into a fresh one to "
             "give back the space deleted runs took (no engine may hold it)")

    serve = commands.add_parser(
        "serve", help="run the engine of DB in this process until SIGTERM or Ctrl-C; other "
        "processes use it with replay.connect(DB)", description="Run the engine of DB "
        "with the workflows of the --workflows modules, and serve other processes "
        "(replay.connect, the replay command) until SIGTERM or SIGINT, then stop cleanly.")
    serve.add_argument("db", metavar="DB", help="the database file (created if missing)")
    serve.add_argument("--workflows", action="extend", type=_modules, required=True,
                       metavar="MODULE[,MODULE...]",
                       help="import these modules (as for python -m) and run the workflows "
                       "they define")
    serve.add_argument("--shutdown-timeout", metavar="SECONDS", type=_seconds_or_zero,
                       default=30.0, help="seconds running steps get to finish when it stops "
                       "(default 30)")
    serve.add_argument("--lock-timeout", metavar="SECONDS", type=_seconds_or_zero, default=0.0,
                       help="seconds to wait for another process to let go of the file "
                       "(default 0)")
    serve.set_defaults(handler=_serve)

    web = commands.add_parser(
        "ui", help="serve a local web page of the runs: timelines, live updates, SQL, and "
        "signal, resume or cancel with a click (through the running engine, or the file)",
        description="Serve a web page of DB's runs on this machine until Ctrl-C or "
        "SIGTERM: the runs, each run's timeline and events (live while an engine runs), "
        "a read-only SQL box, and signal, resume and cancel buttons. Needs the ui extra: "
        'pip install "replay-workflows[ui]".')
    ui_arguments(web)
    web.set_defaults(handler=ui)

    export = _command(commands, "export", _export, "write replay_runs and replay_events "
                      "to Parquet, CSV or JSON files")
    export.add_argument("--format", required=True, choices=sorted(EXTENSIONS),
                        help="parquet (every column), csv or json (one object per line; "
                        "without the binary value column)")
    export.add_argument("--out", required=True, metavar="DIR",
                        help="the directory to write (created if missing)")
    return parser


def _command(commands: Any, name: str, handler: Callable[..., int], summary: str
             ) -> argparse.ArgumentParser:
    command: argparse.ArgumentParser = commands.add_parser(name, help=summary,
                                                           description=summary)
    command.add_argument("db", metavar="DB", help="the database file")
    command.add_argument("--json", action="store_true", help="print JSON for scripts")
    command.set_defaults(handler=handler)
    return command


def _since(text: str) -> timedelta:
    match = _SINCE.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 30s, 15m, 2h or 7d, got {text!r}")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _seconds_or_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _modules(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(_MODULE.fullmatch(name) for name in names):
        raise argparse.ArgumentTypeError(
            f"expected module names such as myapp.flows, separated by commas, got {text!r}")
    return names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


# -- the subcommands --


def _session(args: argparse.Namespace, write: bool = False) -> Source:
    return open_source(args.db, write=write)


def _runs(args: argparse.Namespace, out: TextIO) -> int:
    source = _session(args)
    try:
        where, params = ["TRUE"], list[Any]()
        if args.state:
            where.append("state = ?")
            params.append(args.state)
        if args.workflow:
            where.append("workflow = ?")
            params.append(args.workflow)
        if args.since:
            where.append("created_at >= ?")
            params.append(source.now() - args.since)
        result = source.query(
            f"SELECT * FROM replay_runs WHERE {' AND '.join(where)} "
            f"ORDER BY created_at DESC, run_id LIMIT {args.limit + 1}", params)
        rows = result.rows()
    finally:
        source.close()
    shown = rows[: args.limit]
    if args.json:
        print(fmt.dumps(fmt.objects(result.columns, result.types, shown)), file=out)
        return 0
    if not shown:
        print("no runs match", file=out)
        return 0
    runs = [dict(zip(result.columns, row, strict=True)) for row in shown]
    print(fmt.runs_table(runs), file=out)
    if len(rows) > args.limit:
        print(f"(the newest {args.limit} runs; see more with --limit)", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace, out: TextIO) -> int:
    source = _session(args)
    try:
        run = source.query("SELECT * FROM replay_runs WHERE run_id = ?", [args.run_id])
        run_rows = run.rows()
        if not run_rows:
            raise RunNotFound(args.run_id)
        events = source.query(f"SELECT {EVENT_COLUMNS} FROM replay_events "
                              "WHERE run_id = ? ORDER BY seq", [args.run_id])
        event_rows = events.rows()
        event_dicts = [dict(zip(events.columns, row, strict=True)) for row in event_rows]
        children = {} if args.json else load_children(source, event_dicts)
    finally:
        source.close()
    if args.json:
        info = fmt.objects(run.columns, run.types, run_rows)[0]
        print(fmt.dumps({"run": info, "events": fmt.objects(events.columns, events.types,
                                                            event_rows)}), file=out)
        return 0
    run_dict = dict(zip(run.columns, run_rows[0], strict=True))
    print(fmt.show_text(run_dict, event_dicts, children=children,
                         db=shown(args.db)), file=out)
    return 0


def _sql(args: argparse.Namespace, out: TextIO) -> int:
    params = [_param(text) for text in args.param] or None
    source = _session(args)
    try:
        result = source.query(args.query, params, timeout=args.timeout)
        rows = result.rows()
    finally:
        source.close()
    if args.json:
        print(fmt.dumps(fmt.objects(result.columns, result.types, rows)), file=out)
    else:
        print(fmt.query_table(result.columns, result.types, rows), file=out)
    return 0


def _param(text: str) -> Any:
    try:
        return loads(text, "-p VALUE")
    except ValueError:
        return text


def _serve(args: argparse.Namespace, out: TextIO) -> int:
    serve(args.db, args.workflows, args.shutdown_timeout, args.lock_timeout, out)
    return 0  # a clean stop, whichever signal asked for it (systemd: no restart)


def _export(args: argparse.Namespace, out: TextIO) -> int:
    os.makedirs(args.out, exist_ok=True)
    source = _session(args)
    written = []
    try:
        for view, order in EXPORT_VIEWS:
            columns = "*" if args.format == "parquet" or view == "replay_runs" else \
                EVENT_COLUMNS
            result = source.query(f"SELECT {columns} FROM {view} ORDER BY {order}")
            path = os.path.join(args.out, f"{view}.{EXTENSIONS[args.format]}")
            count = write_export(path, args.format, result.columns, result.types,
                                 result.chunks)
            written.append({"view": view, "path": path, "rows": count})
    finally:
        source.close()
    if args.json:
        print(fmt.dumps(written), file=out)
    else:
        for item in written:
            print(f"wrote {item['rows']} rows of {item['view']} to {item['path']}", file=out)
    return 0
