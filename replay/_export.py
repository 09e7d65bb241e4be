"""Histories as files: export one run's records to JSON, and read them back.

Placeholder: the testing-toolkit work replaces this module with the real format.
"""

from __future__ import annotations

from pathlib import Path

from replay._history import Record


def write_history(path: Path, run_id: str, workflow: str, records: list[Record]) -> None:
    """Write `records` of one run to `path` as JSON.

    Raises:
        NotImplementedError: Always, until the format lands.
    """
    raise NotImplementedError("history export is not implemented yet")
