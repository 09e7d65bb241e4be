"""The `replay` command (also `python -m replay`).

This release ships only `replay --version`; the subcommands of SPEC §6 (runs, show,
sql, signal, resume, export) come with the command-line issue.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from replay._version import __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `replay` command and return its exit status.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 2 on a usage error.
    """
    parser = argparse.ArgumentParser(
        prog="replay",
        description="Inspect replay databases. Subcommands arrive in a later release; "
        "meanwhile query the replay_events and replay_runs views with engine.sql() or "
        "any DuckDB client.",
    )
    parser.add_argument("--version", action="version", version=f"replay {__version__}")
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    return 2
