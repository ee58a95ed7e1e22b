"""Fire times across DST, table-driven, on whichever croniter this venv has.

`make test` runs this file on croniter 1.3.5 (Debian 12) and on the newest
release; the answers must be the same.
"""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from ratecared.scheduler.cron import Schedule


def fires(expression: str, zone: str, after: str, count: int) -> list[str]:
    schedule = Schedule(expression, ZoneInfo(zone))
    current = datetime.fromisoformat(after).replace(tzinfo=schedule.tz)
    out = []
    for _ in range(count):
        current = schedule.next(current)
        out.append(current.isoformat())
    return out


CASES = [
    # research/dst-expected.txt: Europe/Berlin 2026, identical on croniter 1.3.5, 6.2.4, 7.0.0.
    ("0 2 * * *", "Europe/Berlin", "2026-03-27T12:00",
     ["2026-03-28T02:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"]),
    ("0 2 * * *", "Europe/Berlin", "2026-10-23T12:00",
     ["2026-10-24T02:00:00+02:00", "2026-10-25T02:00:00+02:00", "2026-10-26T02:00:00+01:00"]),
    ("0 3 * * *", "Europe/Berlin", "2026-10-23T12:00",
     ["2026-10-24T03:00:00+02:00", "2026-10-25T03:00:00+01:00", "2026-10-26T03:00:00+01:00"]),
    ("0 6 * * *", "Europe/Berlin", "2026-03-27T12:00",
     ["2026-03-28T06:00:00+01:00", "2026-03-29T06:00:00+02:00", "2026-03-30T06:00:00+02:00"]),
    # A time inside the gap runs at the end of the gap, not an hour later.
    ("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00",
     ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
    # America/New_York 2026: spring forward 03-08 at 02:00, fall back 11-01 at 02:00.
    ("30 2 * * *", "America/New_York", "2026-03-07T12:00",
     ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
    ("30 1 * * *", "America/New_York", "2026-10-31T12:00",
     ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
    ("0 2 * * *", "America/New_York", "2026-10-31T12:00",
     ["2026-11-01T02:00:00-05:00", "2026-11-02T02:00:00-05:00"]),
    # Australia/Lord_Howe: a 30-minute shift. DST ends 04-05 (02:00 -> 01:30), starts 10-04 (02:00 -> 02:30).
    ("15 2 * * *", "Australia/Lord_Howe", "2026-10-03T12:00",
     ["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]),
    ("45 1 * * *", "Australia/Lord_Howe", "2026-04-04T12:00",
     ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"]),
    ("0 2 * * *", "Australia/Lord_Howe", "2026-04-04T12:00",
     ["2026-04-05T02:00:00+10:30", "2026-04-06T02:00:00+10:30"]),
    # Europe/Istanbul has no DST since 2016: every day is plain.
    ("0 2 * * *", "Europe/Istanbul", "2026-03-28T12:00",
     ["2026-03-29T02:00:00+03:00", "2026-03-30T02:00:00+03:00"]),
    ("0 3 * * *", "Europe/Istanbul", "2026-10-24T12:00",
     ["2026-10-25T03:00:00+03:00", "2026-10-26T03:00:00+03:00"]),
]


@pytest.mark.parametrize("expression,zone,after,expected", CASES,
                         ids=[f"{c[1]}-{c[0]}-{c[2][:10]}" for c in CASES])
def test_fire_times_across_dst(expression: str, zone: str, after: str, expected: list[str]) -> None:
    assert fires(expression, zone, after, len(expected)) == expected


def test_from_the_second_occurrence_of_a_repeated_hour_the_job_does_not_run_again() -> None:
    tz = ZoneInfo("Europe/Berlin")
    second = datetime(2026, 10, 25, 2, 30, tzinfo=tz, fold=1)
    first = datetime(2026, 10, 25, 2, 30, tzinfo=tz, fold=0)
    assert Schedule("0 2 * * *", tz).next(second).isoformat() == "2026-10-26T02:00:00+01:00"
    assert Schedule("0 2 * * *", tz).next(first).isoformat() == "2026-10-26T02:00:00+01:00"
    assert Schedule("45 2 * * *", tz).next(first).isoformat() == "2026-10-25T02:45:00+02:00"
    assert Schedule("45 2 * * *", tz).next(second).isoformat() == "2026-10-26T02:45:00+01:00"


def test_hourly_job_runs_once_per_real_hour_through_the_gap() -> None:
    hourly = Schedule("0 * * * *", ZoneInfo("Europe/Berlin"))
    current = datetime(2026, 3, 29, 0, 30, tzinfo=hourly.tz)
    got = []
    for _ in range(3):
        current = hourly.next(current)
        got.append(current.strftime("%H:%M%z"))
    assert got == ["01:00+0100", "03:00+0200", "04:00+0200"]


def test_previous_is_the_slot_in_effect() -> None:
    tz = ZoneInfo("Europe/Istanbul")
    at = datetime(2026, 11, 28, 9, 0, tzinfo=tz)
    assert Schedule("0 2 * * *", tz).previous(at).isoformat() == "2026-11-28T02:00:00+03:00"
    assert Schedule("0 10 * * *", tz).previous(at).isoformat() == "2026-11-27T10:00:00+03:00"


@pytest.mark.parametrize("expression,zone,after,expected", [
    # Zones far west and far east of any server's own zone, with fires a few hours off: the wall
    # clock iterated on is the schedule's zone, not the system's.
    ("0 8 * * *", "Pacific/Pago_Pago", "2026-03-10T06:00", "2026-03-10T08:00:00-11:00"),
    ("0 8 * * *", "Pacific/Kiritimati", "2026-03-10T06:00", "2026-03-10T08:00:00+14:00"),
])
def test_the_next_fire_is_found_on_the_schedules_own_wall_clock(expression: str, zone: str, after: str,
                                                                 expected: str) -> None:
    assert fires(expression, zone, after, 1) == [expected]


@pytest.mark.parametrize("expression,zone,at,inclusive,expected", [
    ("0 8 * * *", "Pacific/Kiritimati", "2026-03-10T09:00", True, "2026-03-10T08:00:00+14:00"),
    ("0 8 * * *", "Pacific/Pago_Pago", "2026-03-10T09:00", True, "2026-03-10T08:00:00-11:00"),
    # At a fire time: that fire, or the one before it.
    ("0 8 * * *", "Europe/Berlin", "2026-03-10T08:00", True, "2026-03-10T08:00:00+01:00"),
    ("0 8 * * *", "Europe/Berlin", "2026-03-10T08:00", False, "2026-03-09T08:00:00+01:00"),
    # Years from now: the answer comes from `at`, not from the machine's clock.
    ("0 8 * * *", "Europe/Berlin", "2099-06-01T09:00", True, "2099-06-01T08:00:00+02:00"),
    # The gap: 02:30 runs at 03:00, and that is the slot in effect until the next.
    ("30 2 * * *", "Europe/Berlin", "2026-03-29T03:10", True, "2026-03-29T03:00:00+02:00"),
    ("30 2 * * *", "Europe/Berlin", "2026-03-29T01:59", True, "2026-03-28T02:30:00+01:00"),
])
def test_previous_fire(expression: str, zone: str, at: str, inclusive: bool, expected: str) -> None:
    schedule = Schedule(expression, ZoneInfo(zone))
    assert schedule.previous(datetime.fromisoformat(at).replace(tzinfo=schedule.tz), inclusive).isoformat() == expected


def test_in_the_repeated_hour_the_previous_fire_may_be_later_on_the_wall_clock() -> None:
    tz = ZoneInfo("Europe/Berlin")
    # The second 02:30: the first 02:45 (CEST) has passed, 75 real minutes ago.
    second = datetime(2026, 10, 25, 2, 30, tzinfo=tz, fold=1)
    assert Schedule("45 2 * * *", tz).previous(second).isoformat() == "2026-10-25T02:45:00+02:00"
    assert Schedule("45 2 * * *", tz).previous(second.replace(fold=0)).isoformat() == "2026-10-24T02:45:00+02:00"


@pytest.mark.parametrize("expression", ["0 2 * * * 30", "0 2 * *", "61 2 * * *", "every day"])
def test_only_a_valid_five_field_expression_is_a_schedule(expression: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(f'not a valid five-field cron expression: {expression!r}')}$"):
        Schedule(expression, ZoneInfo("UTC"))


def test_fire_times_are_asked_for_instants_only() -> None:
    schedule = Schedule("0 2 * * *", ZoneInfo("UTC"))
    for ask in (schedule.next, schedule.previous):
        with pytest.raises(ValueError, match="^fire times are asked for aware datetimes only$"):
            ask(datetime(2026, 3, 29, 2))


def test_dst_notes_for_ratecarectl_jobs() -> None:
    tz = ZoneInfo("Europe/Berlin")
    daily = Schedule("0 2 * * *", tz)
    gap = daily.next(datetime(2026, 3, 28, 12, tzinfo=tz))
    assert daily.dst_note(gap) == "02:00 does not exist on 2026-03-29 (DST starts): runs at 03:00 CEST"
    fold = daily.next(datetime(2026, 10, 24, 12, tzinfo=tz))
    assert daily.dst_note(fold) == "02:00 occurs twice on 2026-10-25 (DST ends): runs once, at the first"
    morning = Schedule("0 6 * * *", tz)
    assert morning.dst_note(morning.next(datetime(2026, 10, 24, 12, tzinfo=tz))) is None
    half_past = Schedule("30 2 * * *", tz)
    assert half_past.dst_note(half_past.next(datetime(2026, 3, 28, 12, tzinfo=tz))) == (
        "02:30 does not exist on 2026-03-29 (DST starts): runs at 03:00 CEST")
    # Only for a daily time written as digits: neither minute nor hour may be a pattern.
    for expression in ("*/30 2 * * *", "0 */2 * * *"):
        every = Schedule(expression, tz)
        assert every.dst_note(every.next(datetime(2026, 3, 29, 1, tzinfo=tz))) is None


def loaded_by(module: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules with these prefixes that importing `module` loads, in a fresh interpreter."""
    code = f"import sys, {module}; print(' '.join(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()


def test_the_schedule_arithmetic_loads_no_database_layer() -> None:
    assert loaded_by("ratecared.scheduler.cron", ("ratecared.db", "pymysql", "sqlite3")) == []
