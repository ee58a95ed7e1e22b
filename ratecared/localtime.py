"""Local wall-clock times placed in a zone, with the rules cron users expect on DST days.

A local time that does not exist (in the spring-forward gap) becomes the
first valid local time after it; a local time that occurs twice (fall back)
is its first occurrence. Pure: the scheduler's fire times and the jobs'
local days both use it, and neither imports the other.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

UTC = timezone.utc
# No zone has ever had a gap of a day; the bound only stops a runaway loop.
_MAX_GAP_MINUTES = 24 * 60


def exists(naive: datetime, tz: ZoneInfo) -> bool:
    """Whether a local wall-clock time happens at all in `tz` (not in a DST gap)."""
    return naive.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive


def place(naive: datetime, tz: ZoneInfo) -> datetime:
    """Put a naive local time into `tz`.

    A time in a gap becomes the end of the gap, the first valid local time
    after it (02:30 on a Berlin spring-forward day is 03:00). A time that
    occurs twice is its first occurrence (fold=0).
    """
    probe = naive
    for _ in range(_MAX_GAP_MINUTES):
        if exists(probe, tz):
            return probe.replace(tzinfo=tz)
        probe += timedelta(minutes=1)
    raise ValueError(f"{naive} has no valid local time within a day in {tz.key}")
