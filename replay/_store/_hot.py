"""The hot log: small commits write narrow rows, settled into the event table later.

DuckDB's cost of a commit grows with the number of columns it writes (measured on the
project's machine: an Appender flush of one row costs about 1.2 ms for 3 columns and
2.8 ms for replay's 20, whatever their values), so a small batch (a lone run's step,
a few runs') is written as narrow rows of ``replay_event_hot``: each record's `seq`,
its run id (a column of its own, for the queries of one run) and the rest of its
event-table row as JSON text. A big batch shares one commit among many records and
goes to ``replay_event_log`` directly: rendering JSON for it would cost more than the
columns it saves. Settling moves hot rows into ``replay_event_log`` (the columnar,
indexed table) in one transaction of many rows, off the acknowledgement path: on the
writer thread between batches, when enough rows are waiting or the writer is idle,
before every other writing job, and when the file closes or opens.

Every reader sees both: ``replay_event_all`` (in `_schema`, with the table) is the
event table and the decoded hot rows, and every view and history query reads it. A
file left by a crash with hot rows is complete as it is; the next open settles them.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import duckdb

from replay._store._rows import epoch_us
from replay._store._schema import HOT_ROWS, TABLE_COLUMNS

_SETTLE = f"INSERT INTO replay_event_log ({TABLE_COLUMNS}) {HOT_ROWS} WHERE seq <= $1"


def hot_from_row(row: tuple[Any, ...]) -> tuple[int, str, str]:
    """Turn a row of ``replay_event_log`` into a row of ``replay_event_hot``."""
    data: list[Any] = list(row[2:])
    if data[5] is not None:  # value
        data[5] = base64.b64encode(data[5]).decode("ascii")
    for at in (9, 11):  # recorded_at, wake_at: microseconds since the epoch, in UTC
        data[at] = epoch_us(data[at])
    return row[0], row[1], json.dumps(data)


def settle(con: duckdb.DuckDBPyConnection) -> int:
    """Move every hot row into ``replay_event_log`` in one transaction; return how many.

    Raises:
        duckdb.Error: The transaction failed (and was rolled back: nothing moved).
    """
    last = con.execute("SELECT max(seq), count(*) FROM replay_event_hot").fetchall()[0]
    if last[0] is None:
        return 0
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(_SETTLE, [last[0]])
        con.execute("DELETE FROM replay_event_hot WHERE seq <= $1", [last[0]])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return int(last[1])
