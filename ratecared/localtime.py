"""Local wall-clock times placed in a zone, with the rules cron users expect on DST days.

A local time that does not exist (in the spring-forward gap) becomes the
first valid local time after it; a local time that occurs twice (fall back)
is its first occurrence. Pure: the scheduler's fire times and the jobs'
local days both use it, and neither imports the other.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

UTC = timezone.utc


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
    # Gaps begin and end on whole minutes, and last an hour or two at most.
    while not exists(probe, tz):
        probe += timedelta(minutes=1)
    return probe.replace(tzinfo=tz)


def day_span(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of a local day, in UTC; 23 or 25 h on DST days."""
    nxt = day + timedelta(days=1)
    return (place(datetime(day.year, day.month, day.day), tz).astimezone(UTC),
            place(datetime(nxt.year, nxt.month, nxt.day), tz).astimezone(UTC))
