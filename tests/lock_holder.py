"""Child process for tests/test_bad_input.py: hold a DuckDB file open in another process.

Usage::

    python lock_holder.py DB

Opens DB with plain duckdb (which takes the file's lock), prints ``ready`` and waits
until its standard input closes or it is killed.
"""

from __future__ import annotations

import sys

import duckdb


def main() -> None:
    con = duckdb.connect(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.read()
    con.close()


if __name__ == "__main__":
    main()
