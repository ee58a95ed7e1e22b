"""What runs next and what a due slot does: the pure plan, with the time passed in."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from ratecared.scheduler import plan
from ratecared.scheduler.cron import Schedule

TZ = ZoneInfo("Europe/Berlin")
DAILY = Schedule("0 2 * * *", TZ)
HOURLY = Schedule("0 * * * *", TZ)


def at(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=TZ, fold=fold)


@pytest.mark.parametrize("last,first_start,upcoming", [
    # A new database: counted from the first start.
    (None, at(2026, 3, 24, 12), at(2026, 3, 25, 2)),
    # The last slot on record is later than the first start: counted from it.
    (at(2026, 3, 26, 2), at(2026, 3, 24, 12), at(2026, 3, 27, 2)),
    # A slot recorded before the first start (a database seeded by hand) does not pull the plan back.
    (at(2026, 3, 20, 2), at(2026, 3, 24, 12), at(2026, 3, 25, 2)),
    # The first start exactly at a slot: that slot was not missed.
    (None, at(2026, 3, 25, 2), at(2026, 3, 26, 2)),
])
def test_the_plan_starts_after_the_last_slot_or_the_first_start(last, first_start, upcoming) -> None:
    assert plan.start(DAILY, last, first_start) == plan.Planned(DAILY, upcoming)


def test_the_plan_compares_in_utc_across_the_fold() -> None:
    # The first 02:30 of the fall-back day is before the second one, though their wall clocks agree.
    first, second = at(2026, 10, 25, 2, 30), at(2026, 10, 25, 2, 30, fold=1)
    quarter_to_three = Schedule("45 2 * * *", TZ)
    # Handled up to the second 02:30: that day's 02:45 (the first one) is already past.
    assert plan.start(quarter_to_three, first, second).upcoming == at(2026, 10, 26, 2, 45)
    assert plan.start(quarter_to_three, second, first).upcoming == at(2026, 10, 26, 2, 45)


def test_nothing_is_due_before_the_upcoming_slot() -> None:
    planned = plan.Planned(DAILY, at(2026, 3, 25, 2))
    assert plan.due(planned, at(2026, 3, 25, 1, 59), 3600) is None


def test_the_slot_runs_when_it_comes() -> None:
    planned = plan.Planned(DAILY, at(2026, 3, 25, 2))
    assert plan.due(planned, at(2026, 3, 25, 2), 0) == plan.Due(at(2026, 3, 25, 2), (), at(2026, 3, 26, 2))


def test_missed_slots_coalesce_into_the_latest_within_its_deadline() -> None:
    planned = plan.Planned(DAILY, at(2026, 3, 25, 2))
    assert plan.due(planned, at(2026, 3, 28, 9), 7 * 3600) == plan.Due(
        at(2026, 3, 28, 2), (at(2026, 3, 25, 2), at(2026, 3, 26, 2), at(2026, 3, 27, 2)), at(2026, 3, 29, 3))


def test_a_latest_slot_past_its_deadline_is_skipped_too() -> None:
    planned = plan.Planned(DAILY, at(2026, 3, 27, 2))
    # 7 h late with a deadline one second shorter.
    assert plan.due(planned, at(2026, 3, 28, 9), 7 * 3600 - 1) == plan.Due(
        None, (at(2026, 3, 27, 2), at(2026, 3, 28, 2)), at(2026, 3, 29, 3))


def test_lateness_is_measured_in_real_time_across_the_fold() -> None:
    # 02:00 CEST, then the clock falls back: at 02:30 CET 90 real minutes have passed, not 30.
    planned = plan.Planned(DAILY, at(2026, 10, 25, 2))
    assert plan.due(planned, at(2026, 10, 25, 2, 30, fold=1), 90 * 60).run == at(2026, 10, 25, 2)
    assert plan.due(planned, at(2026, 10, 25, 2, 30, fold=1), 90 * 60 - 1).run is None


def test_only_the_most_recent_missed_slots_are_recorded() -> None:
    planned = plan.Planned(HOURLY, at(2026, 3, 25, 0))
    due = plan.due(planned, at(2026, 3, 26, 12), 3600, limit=3)
    assert due == plan.Due(at(2026, 3, 26, 12), (at(2026, 3, 26, 9), at(2026, 3, 26, 10), at(2026, 3, 26, 11)),
                           at(2026, 3, 26, 13))
    # Fewer missed slots than the limit: all of them, and none from before the upcoming one.
    planned = plan.Planned(HOURLY, at(2026, 3, 26, 10))
    assert plan.due(planned, at(2026, 3, 26, 12), 3600, limit=3).skipped == (at(2026, 3, 26, 10),
                                                                              at(2026, 3, 26, 11))
    assert plan.MAX_SKIPPED == 50


def test_the_soonest_job_runs_first_and_ties_go_in_config_order() -> None:
    order = ["aggregate_statistics", "cleanup_expired_cache", "warm_cache"]
    cleanup = plan.Planned(Schedule("0 3 * * *", TZ), at(2026, 3, 29, 3))
    aggregation = plan.Planned(DAILY, at(2026, 3, 29, 3))  # 02:00 does not exist that day
    warming = plan.Planned(Schedule("0 6 * * *", TZ), at(2026, 3, 29, 6))
    assert plan.soonest({"warm_cache": warming, "cleanup_expired_cache": cleanup,
                         "aggregate_statistics": aggregation}, order) == ("aggregate_statistics", aggregation)
    assert plan.soonest({"warm_cache": warming, "cleanup_expired_cache": cleanup}, order) == (
        "cleanup_expired_cache", cleanup)
    assert plan.soonest({}, order) is None
    # Neither by name: warming first when it comes first, and ties in the order given.
    early = plan.Planned(Schedule("0 1 * * *", TZ), at(2026, 3, 29, 1))
    assert plan.soonest({"aggregate_statistics": aggregation, "warm_cache": early}, order) == ("warm_cache", early)
    same = plan.Planned(Schedule("0 3 * * *", TZ), at(2026, 3, 29, 3))
    assert plan.soonest({"aggregate_statistics": aggregation, "warm_cache": same},
                        ["warm_cache", "aggregate_statistics"]) == ("warm_cache", same)
