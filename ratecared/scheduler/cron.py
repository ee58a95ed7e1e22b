"""A job's schedule: a cron expression in a time zone, with fire times correct across DST.

croniter's own zone handling changed in every generation from 1.3.5 to 7.x
(research/scheduler.md §2.3). Iterating croniter on naive local wall-clock
time and placing each result in the zone ourselves (ratecared.localtime)
gives the same answers on all of them, and the answers cron users expect: a
local time that does not exist (spring forward) fires once at the first valid
time after it; a local time that occurs twice (fall back) fires once, at its
first occurrence. For sub-hourly expressions that also means the repeated
hour does not fire again.

Everything here is pure: the time is an argument, so DST days are tested in
milliseconds. Fire times are compared in UTC, because PEP 495 comparison of
two times in one zone ignores `fold`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from ratecared.localtime import UTC, exists, place

# Wider than any DST shift (two hours at most, Antarctica/Troll): a naive
# local time this far after `at` is after it whatever the fold.
_WIDEST_SHIFT = timedelta(hours=3)


@dataclass(frozen=True)
class Schedule:
    """One job's cron expression in one zone; equal when both are."""

    expression: str
    tz: ZoneInfo

    def __post_init__(self) -> None:
        if len(self.expression.split()) != 5 or not croniter.is_valid(self.expression):
            raise ValueError(f"not a valid five-field cron expression: {self.expression!r}")

    def next(self, after: datetime) -> datetime:
        """The first fire time strictly after the aware instant `after`, in the zone."""
        after_utc = _utc(after)
        it = croniter(self.expression, after_utc.astimezone(self.tz).replace(tzinfo=None))
        # Only a time in the repeated hour of a fall-back day is passed over:
        # placed at its first occurrence, it is before `after`.
        while True:
            candidate = place(it.get_next(datetime), self.tz)
            if candidate.astimezone(UTC) > after_utc:
                return candidate

    def previous(self, at: datetime, inclusive: bool = True) -> datetime:
        """The latest fire time at or before `at` (strictly before it unless `inclusive`).

        It walks back from a little after `at`: in the repeated hour of a
        fall-back day, `at` may be the second 02:30 while the first 02:45
        has already fired.
        """
        at_utc = _utc(at)
        it = croniter(self.expression, at_utc.astimezone(self.tz).replace(tzinfo=None) + _WIDEST_SHIFT)
        while True:
            candidate = place(it.get_prev(datetime), self.tz)
            moment = candidate.astimezone(UTC)
            if moment < at_utc or (inclusive and moment == at_utc):
                return candidate

    def dst_note(self, fire: datetime) -> str | None:
        """Why a fire time of a daily expression is not what it literally says, on DST days."""
        fields = self.expression.split()
        if not (fields[0].isdigit() and fields[1].isdigit()):
            return None
        local = fire.astimezone(self.tz)
        wanted = datetime(local.year, local.month, local.day, int(fields[1]), int(fields[0]))
        if not exists(wanted, self.tz):
            return f"{wanted:%H:%M} does not exist on {wanted:%Y-%m-%d} (DST starts): runs at {local:%H:%M %Z}"
        first, second = (wanted.replace(tzinfo=self.tz, fold=fold).astimezone(UTC) for fold in (0, 1))
        if first != second:
            return f"{wanted:%H:%M} occurs twice on {wanted:%Y-%m-%d} (DST ends): runs once, at the first"
        return None


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("fire times are asked for aware datetimes only")
    return moment.astimezone(UTC)
