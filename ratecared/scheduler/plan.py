"""What runs next: for each job, the first slot not yet handled, and what to do once it is due.

This is APScheduler 3's `_process_jobs` for one job (research/shell.md §2):
every slot due since the last one handled is taken at once; the latest runs
if it is within the job's starting deadline, the older ones are recorded as
skipped, and the job then waits for its next slot. There is no separate
catch-up phase: a daemon that was down finds more slots due on its first
pass. Where the plan starts is the latest of the job's last recorded slot and
the first start of a daemon on this database (DESIGN §6), so slots before
that first start never run.

Pure: times are arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Mapping, Sequence

from ratecared.localtime import UTC
from ratecared.scheduler.cron import Schedule

# At most this many older slots of one job are recorded as skipped at once:
# a job that fires every minute must not write a year of rows after a year down.
MAX_SKIPPED = 50


@dataclass(frozen=True)
class Planned:
    """One job's schedule and its first slot not yet handled."""

    schedule: Schedule
    upcoming: datetime


@dataclass(frozen=True)
class Due:
    """What a job does when its upcoming slot has come."""

    run: datetime | None  # the slot to run now; None when even the latest is past its deadline
    skipped: tuple[datetime, ...]  # the slots not run, oldest first
    upcoming: datetime  # the slot to wait for after these


def start(schedule: Schedule, last_slot: datetime | None, first_start: datetime) -> Planned:
    """The plan of a job whose last recorded slot is `last_slot`, on a database first run at `first_start`."""
    handled = first_start if last_slot is None else max(last_slot, first_start, key=lambda t: t.astimezone(UTC))
    return Planned(schedule, schedule.next(handled))


def due(planned: Planned, now: datetime, deadline: float, limit: int = MAX_SKIPPED) -> Due | None:
    """The job's slots due at `now`, or None while its upcoming slot is still ahead.

    Every slot from the upcoming one to `now` is due. The latest runs when it
    is at most `deadline` seconds late; of the older ones, only the `limit`
    most recent are recorded.
    """
    schedule, upcoming = planned.schedule, planned.upcoming.astimezone(UTC)
    now_utc = now.astimezone(UTC)
    if upcoming > now_utc:
        return None
    latest = schedule.previous(now)
    older: list[datetime] = []
    cursor = latest
    while len(older) < limit:
        cursor = schedule.previous(cursor, inclusive=False)
        if cursor.astimezone(UTC) < upcoming:
            break
        older.append(cursor)
    older.reverse()
    after = schedule.next(now)
    if (now_utc - latest.astimezone(UTC)).total_seconds() <= deadline:
        return Due(latest, tuple(older), after)
    return Due(None, (*older, latest), after)


def soonest(plan: Mapping[str, Planned], order: Sequence[str]) -> tuple[str, Planned] | None:
    """The job whose upcoming slot comes first; jobs due at the same moment go in config order."""
    if not plan:
        return None
    return min(plan.items(), key=lambda item: (item[1].upcoming.astimezone(UTC), order.index(item[0])))
