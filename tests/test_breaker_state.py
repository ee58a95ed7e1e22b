"""Breaker snapshots to `circuit_breaker_state` and back, on SQLite and MariaDB."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ratecared import breaker_state
from ratecared.breaker.machine import Policy, State
from ratecared.breaker.registry import Registry
from ratecared.db import Database

PLATFORMS = ("booking", "expedia")
UID = 33
WALL = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def opened_registry(clock: FakeClock) -> Registry:
    registry = Registry(PLATFORMS, Policy(), clock=clock)
    for _ in range(5):
        decision = registry.acquire("booking", UID)
        registry.report("booking", decision.permit, False, UID)
    decision = registry.acquire("expedia", UID)
    registry.report("expedia", decision.permit, True, UID)
    return registry


def test_rows_hold_state_deadline_and_counters(database: Database) -> None:
    registry = opened_registry(FakeClock(100.0))
    assert breaker_state.save(database, registry, "web1", WALL) == 2
    rows = database.query(
        "SELECT platform, state, consecutive_failures, trip_count, open_until, total_requests, total_failures"
        " FROM circuit_breaker_state WHERE host = 'web1' ORDER BY platform")
    booking, expedia = rows
    assert booking[:4] == ("booking", "open", 5, 1)
    assert str(booking[4]).startswith("2026-11-28 12:10:00")
    assert (booking[5], booking[6]) == (5, 5)
    assert expedia[:2] == ("expedia", "closed") and expedia[5] == 1


def test_saving_again_updates_in_place(database: Database) -> None:
    clock = FakeClock(100.0)
    registry = opened_registry(clock)
    breaker_state.save(database, registry, "web1", WALL)
    registry.reset("booking")
    breaker_state.save(database, registry, "web1", WALL + timedelta(seconds=5))
    assert database.query("SELECT COUNT(*), MIN(state), MAX(state) FROM circuit_breaker_state") == [
        (2, "closed", "closed")]


def test_restore_keeps_an_open_breaker_open_for_its_remaining_time(database: Database) -> None:
    breaker_state.save(database, opened_registry(FakeClock(100.0)), "web1", WALL)
    # A new process: another monotonic origin, 4 minutes later on the wall clock.
    clock = FakeClock(5.0)
    fresh = Registry(PLATFORMS, Policy(), clock=clock)
    lines = breaker_state.restore(database, fresh, "web1", WALL + timedelta(minutes=4))
    assert lines == ["booking open for 360 s more"]
    decision = fresh.acquire("booking", UID)
    assert (decision.allowed, decision.retry_after) == (False, 360.0)
    status = {s.platform: s for s in fresh.status()}
    assert status["booking"].total_failures == 5 and status["expedia"].total_successes == 1
    clock.now += 360
    assert fresh.acquire("booking", UID).allowed


def test_restore_after_the_deadline_goes_half_open(database: Database) -> None:
    breaker_state.save(database, opened_registry(FakeClock(100.0)), "web1", WALL)
    fresh = Registry(PLATFORMS, Policy(), clock=FakeClock(0.0))
    breaker_state.restore(database, fresh, "web1", WALL + timedelta(hours=1))
    assert fresh.acquire("booking", UID).state is State.HALF_OPEN


def test_other_hosts_rows_are_left_alone(database: Database) -> None:
    breaker_state.save(database, opened_registry(FakeClock(100.0)), "web1", WALL)
    fresh = Registry(PLATFORMS, Policy(), clock=FakeClock(0.0))
    assert breaker_state.restore(database, fresh, "web2", WALL) == []
    assert fresh.acquire("booking", UID).allowed


def test_restore_carries_on_the_time_in_each_state(database: Database) -> None:
    clock = FakeClock(100.0)
    registry = opened_registry(clock)
    clock.now = 130.0
    breaker_state.save(database, registry, "web1", WALL)
    fresh = Registry(PLATFORMS, Policy(), clock=FakeClock(5.0))
    breaker_state.restore(database, fresh, "web1", WALL + timedelta(minutes=4))
    # 30 s in the state when saved, 4 minutes before the new process took over.
    assert [(s.platform, s.state, s.seconds_in_state) for s in fresh.status()] == [
        ("booking", State.OPEN, 270.0), ("expedia", State.CLOSED, 270.0)]


def test_rows_saved_before_state_since_existed_carry_on_an_open_breakers_time(database: Database) -> None:
    clock = FakeClock(100.0)
    registry = opened_registry(clock)
    clock.now = 130.0
    breaker_state.save(database, registry, "web1", WALL)
    database.execute("UPDATE circuit_breaker_state SET state_since = NULL")
    fresh = Registry(PLATFORMS, Policy(), clock=FakeClock(5.0))
    breaker_state.restore(database, fresh, "web1", WALL + timedelta(minutes=4))
    assert [(s.platform, s.seconds_in_state) for s in fresh.status()] == [("booking", 270.0), ("expedia", 0.0)]
