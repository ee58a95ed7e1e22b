"""Next fire times of a cron expression in a time zone, correct across DST.

croniter's own zone handling changed in every generation from 1.3.5 to 7.x
(research/scheduler.md §2.3). Iterating croniter on naive local wall-clock
time and placing each result in the zone ourselves gives the same answers on
all of them, and the answers cron users expect: a local time that does not
exist (spring forward) fires once at the first valid time after it; a local
time that occurs twice (fall back) fires once, at its first occurrence.

Everything here is pure: the time is an argument, so DST days are tested in
milliseconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterator
from zoneinfo import ZoneInfo

from croniter import croniter

UTC = timezone.utc
# A daily expression matches within a year; the bound only stops a runaway loop.
_MAX_STEPS = 5000


def exists(naive: datetime, tz: ZoneInfo) -> bool:
    """Whether a local wall-clock time happens at all in `tz` (not in a DST gap)."""
    return naive.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive


def place(naive: datetime, tz: ZoneInfo) -> datetime:
    """Put a naive local time into `tz`.

    A time in a gap becomes the end of the gap, the first valid local time
    after it (02:30 on a Berlin spring-forward day runs at 03:00). A time
    that occurs twice is its first occurrence (fold=0).
    """
    probe = naive
    for _ in range(24 * 60):
        if exists(probe, tz):
            return probe.replace(tzinfo=tz)
        probe += timedelta(minutes=1)
    raise ValueError(f"{naive} has no valid local time within a day in {tz.key}")


def next_fire(expression: str, after: datetime, tz: ZoneInfo) -> datetime:
    """The first fire time strictly after the aware instant `after`, in `tz`."""
    if after.tzinfo is None:
        raise ValueError("after must be an aware datetime")
    after_utc = after.astimezone(UTC)
    it = croniter(expression, after_utc.astimezone(tz).replace(tzinfo=None))
    for _ in range(_MAX_STEPS):
        candidate = place(it.get_next(datetime), tz)
        if candidate.astimezone(UTC) > after_utc:
            return candidate
    raise ValueError(f"{expression!r} has no fire time after {after.isoformat()}")


def fires_between(expression: str, after: datetime, until: datetime, tz: ZoneInfo) -> Iterator[datetime]:
    """Fire times in (after, until], oldest first."""
    current = after
    while True:
        current = next_fire(expression, current, tz)
        if current.astimezone(UTC) > until.astimezone(UTC):
            return
        yield current


def previous_fire(expression: str, at: datetime, tz: ZoneInfo, lookback: timedelta = timedelta(days=8)) -> datetime | None:
    """The latest fire time at or before `at` within `lookback`, or None."""
    latest = None
    for fire in fires_between(expression, at - lookback, at, tz):
        latest = fire
    return latest


def dst_note(expression: str, fire: datetime, tz: ZoneInfo) -> str | None:
    """Why a fire time differs from what a daily expression literally says, on DST days."""
    fields = expression.split()
    if len(fields) != 5 or not (fields[0].isdigit() and fields[1].isdigit()):
        return None
    wanted = datetime(fire.year, fire.month, fire.day, int(fields[1]), int(fields[0]))
    local = fire.astimezone(tz)
    if not exists(wanted, tz):
        return f"{wanted:%H:%M} does not exist on {wanted:%Y-%m-%d} (DST starts): runs at {local:%H:%M %Z}"
    first = wanted.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wanted.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first != second:
        return f"{wanted:%H:%M} occurs twice on {wanted:%Y-%m-%d} (DST ends): runs once, at the first"
    return None
