"""Aware UTC datetimes as integer microseconds since the epoch, and back, exactly.

Integers are how replay keeps instants where many are handled (the engine clock's
anchor, rows read with their timestamps as integers, the hot log's JSON), and
datetimes are what records and users see. Both conversions are exact for every
datetime Python can hold.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
# From the epoch to 2**32 seconds after it (1970-2106) a float of seconds lies within
# 0.25 us of every microsecond, which `datetime.fromtimestamp` rounds back exactly: about
# 0.5 us against 0.8 for adding a timedelta, on paths taken for every record and row.
_FLOAT_EXACT_US = 2**32 * 1_000_000


def micros(at: datetime) -> int:
    """Return the aware `at` in microseconds since the epoch."""
    return (at - EPOCH) // _ONE_US


def moment(us: int) -> datetime:
    """Return the aware UTC datetime `us` microseconds after the epoch."""
    if 0 <= us < _FLOAT_EXACT_US:
        return datetime.fromtimestamp(us / 1_000_000, UTC)
    return EPOCH + timedelta(microseconds=us)
