"""Outcomes beyond success and failure, and the back-off, in the pure machine with injected time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ratecared.breaker.machine import Breaker, Kind, Outcome, Policy, Report, State

POLICY = Policy(failure_threshold=3, open_seconds=60, half_open_requests=2, lease_seconds=10)
UID = 33


def report(breaker: Breaker, now: float, outcome: Report | bool) -> Outcome:
    decision, _ = breaker.acquire(now, UID)
    assert decision.permit is not None, decision
    return breaker.report(decision.permit, outcome, now, UID)[0]


def rate_limited(seconds: float | None, answer: str | None = None) -> Report:
    return Report(Kind.RATE_LIMITED, retry_after=seconds, answer=answer)


def trip(breaker: Breaker, now: float) -> None:
    """Open it with failures from CLOSED, or with a failed trial from HALF_OPEN."""
    breaker.advance(now)
    for _ in range(POLICY.failure_threshold):
        report(breaker, now, False)
        if breaker.state is State.OPEN:
            return
    raise AssertionError(f"{breaker.state} after {POLICY.failure_threshold} failures")


# -- outcomes --------------------------------------------------------------------


def test_timeouts_are_failures_counted_apart_and_named_in_the_trip() -> None:
    breaker = Breaker("booking", POLICY)
    report(breaker, 0.0, Report(Kind.TIMEOUT))
    report(breaker, 0.0, False)
    assert breaker.state is State.CLOSED
    report(breaker, 0.0, Report(Kind.TIMEOUT))
    view = breaker.view(0.0)
    assert (view.state, view.last_reason) == (State.OPEN, "3 consecutive failures (2 timed out)")
    assert (view.total_failures, view.total_timeouts, view.total_requests) == (3, 2, 3)
    assert view.outcomes == {"success": 0, "failure": 1, "timeout": 2, "rate_limited": 0, "slow": 0, "ignored": 0}


@pytest.mark.parametrize("seconds, answer, retry_after, reason", [
    (120.0, "120", 120.0, "rate limited by the platform: Retry-After 120"),
    (5.0, None, 5.0, "rate limited by the platform: Retry-After 5"),
    # Longer than the timeout too, but never past max-open-seconds.
    (7200.0, "Wed, 21 Oct 2026 09:28:00 GMT", 3600.0,
     "rate limited by the platform: Retry-After Wed, 21 Oct 2026 09:28:00 GMT; capped at 3600 s "
     "(circuit-breaker-max-open-seconds)"),
    (None, None, 60.0, "rate limited by the platform, with no retry time"),
    (None, "soon", 60.0, "rate limited by the platform (Retry-After 'soon' unreadable)"),
])
def test_one_rate_limited_answer_opens_until_the_platforms_retry_time(
        seconds: float | None, answer: str | None, retry_after: float, reason: str) -> None:
    breaker = Breaker("booking", POLICY)
    assert report(breaker, 10.0, rate_limited(seconds, answer)) == Outcome(True, State.OPEN)
    view = breaker.view(10.0)
    assert (view.retry_after, view.last_reason, view.total_rate_limited, view.total_failures) == (
        retry_after, reason, 1, 1)
    assert not breaker.acquire(10.0 + retry_after - 0.5, UID)[0].allowed
    breaker.advance(10.0 + retry_after)
    assert breaker.state is State.HALF_OPEN


def test_a_rate_limited_trial_reopens_for_the_retry_time() -> None:
    breaker = Breaker("booking", POLICY)
    trip(breaker, 0.0)
    assert report(breaker, 60.0, rate_limited(300.0, "300")).state is State.OPEN
    assert breaker.retry_after(60.0) == 300.0


def test_ignored_calls_are_neither_successes_nor_failures() -> None:
    breaker = Breaker("booking", POLICY)
    report(breaker, 0.0, False)
    report(breaker, 0.0, False)
    assert report(breaker, 0.0, Report(Kind.IGNORED)) == Outcome(True, State.CLOSED)
    # The streak goes on: an ignored call did not end it, as a success would have.
    assert breaker.counts.consecutive_failures == 2
    report(breaker, 0.0, False)
    view = breaker.view(0.0)
    assert (view.state, view.total_ignored, view.total_requests, view.success_rate) == (State.OPEN, 1, 3, 0.0)


def test_an_ignored_trial_hands_its_slot_back() -> None:
    breaker = Breaker("booking", POLICY)
    trip(breaker, 0.0)
    first, _ = breaker.acquire(60.0, UID)
    second, _ = breaker.acquire(60.0, UID)
    assert not breaker.acquire(60.0, UID)[0].allowed
    breaker.report(first.permit, Report(Kind.IGNORED), 60.0, UID)
    third, _ = breaker.acquire(60.0, UID)
    assert third.allowed and breaker.state is State.HALF_OPEN
    breaker.report(second.permit, True, 61.0, UID)
    assert breaker.state is State.HALF_OPEN  # an ignored trial is no success either
    breaker.report(third.permit, True, 61.0, UID)
    assert breaker.state is State.CLOSED


def test_a_slow_success_counts_as_a_failure() -> None:
    breaker = Breaker("booking", replace(POLICY, slow_call_ms=1000))
    assert report(breaker, 0.0, Report(Kind.SUCCESS, duration_ms=1000)) == Outcome(True, State.CLOSED)
    assert breaker.counts.consecutive_failures == 0
    assert report(breaker, 0.0, Report(Kind.SUCCESS, duration_ms=1000.5)) == Outcome(
        True, State.CLOSED, None, Kind.SLOW)
    report(breaker, 0.0, Report(Kind.SUCCESS, duration_ms=9000))
    report(breaker, 0.0, Report(Kind.TIMEOUT, duration_ms=10000))
    view = breaker.view(0.0)
    assert (view.state, view.last_reason) == (
        State.OPEN, "3 consecutive failures (1 timed out, 2 slower than 1000 ms)")
    assert (view.total_successes, view.total_slow, view.total_failures) == (1, 2, 3)
    # In half-open, one slow trial reopens it.
    breaker.advance(60.0)
    report(breaker, 60.0, Report(Kind.SUCCESS, duration_ms=2000))
    assert (breaker.state, breaker.last_reason) == (State.OPEN, "trial call slower than 1000 ms")


def test_without_a_slow_call_limit_any_success_is_one() -> None:
    breaker = Breaker("booking", POLICY)
    for _ in range(5):
        assert report(breaker, 0.0, Report(Kind.SUCCESS, duration_ms=600_000)) == Outcome(True, State.CLOSED)
    assert breaker.view(0.0).total_successes == 5


@pytest.mark.parametrize("kind, reason", [(Kind.FAILURE, "trial call failed"),
                                          (Kind.TIMEOUT, "trial call timed out")])
def test_a_failing_trial_reopens_and_says_how(kind: Kind, reason: str) -> None:
    breaker = Breaker("booking", POLICY)
    trip(breaker, 0.0)
    report(breaker, 60.0, Report(kind))
    assert (breaker.state, breaker.last_reason) == (State.OPEN, reason)


def test_a_breaker_held_closed_counts_every_outcome_and_trips_on_none() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.hold_for(State.CLOSED, 3600, "known good", "root", 0.0)
    for outcome in (rate_limited(120.0), Report(Kind.TIMEOUT), False, False, Report(Kind.IGNORED)):
        report(breaker, 1.0, outcome)
    view = breaker.view(1.0)
    assert (view.state, view.total_failures, view.total_rate_limited, view.total_timeouts, view.total_ignored) == (
        State.CLOSED, 4, 1, 1, 1)


def test_a_late_rate_limited_answer_from_an_earlier_state_is_not_counted() -> None:
    breaker = Breaker("booking", POLICY)
    late, _ = breaker.acquire(0.0, UID)
    trip(breaker, 0.0)
    assert breaker.report(late.permit, rate_limited(3000.0), 1.0, UID)[0] == Outcome(False, State.OPEN, "stale")
    assert breaker.retry_after(1.0) == 59.0


# -- back-off ----------------------------------------------------------------------

BACKOFF = replace(POLICY, backoff_multiplier=2.0, max_open_seconds=300)


@pytest.mark.parametrize("policy, jitter, open_times", [
    # The seed's rule: the same timeout each time, and no jitter.
    (POLICY, 1.1, [60, 60, 60, 60]),
    (BACKOFF, 1.0, [60, 120, 240, 300, 300]),
    (replace(BACKOFF, backoff_multiplier=1.5), 1.0, [60, 90, 135, 202.5, 300]),
    (BACKOFF, 1.1, [66, 132, 264, 300]),
    (BACKOFF, 0.9, [54, 108, 216, 270, 270]),
])
def test_each_trip_in_a_row_opens_longer_up_to_the_cap(policy: Policy, jitter: float,
                                                       open_times: list[float]) -> None:
    breaker = Breaker("booking", policy, jitter=lambda: jitter)
    now, seen = 0.0, []
    for level, _ in enumerate(open_times, 1):
        trip(breaker, now)
        seen.append(breaker.retry_after(now))
        assert breaker.backoff_level == level
        now = breaker.open_until
    assert seen == pytest.approx(open_times)
    assert breaker.last_reason == "trial call failed"


def test_the_level_decays_by_one_per_healthy_timeout_closed() -> None:
    breaker = Breaker("booking", BACKOFF)
    trip(breaker, 0.0)
    trip(breaker, 60.0)  # level 2, open 120 s
    breaker.advance(180.0)
    report(breaker, 180.0, True)
    report(breaker, 180.0, True)
    assert (breaker.state, breaker.backoff_level) == (State.CLOSED, 2)
    # A failure that trips nothing is still a healthy period.
    report(breaker, 200.0, False)
    breaker.advance(239.9)
    assert breaker.backoff_level == 2
    breaker.advance(240.0)
    assert breaker.backoff_level == 1
    assert breaker.view(240.0).backoff_level == 1
    # The next period runs from the end of the last one, not from the close.
    breaker.advance(299.9)
    assert breaker.backoff_level == 1
    breaker.advance(300.0)
    assert breaker.backoff_level == 0
    trip(breaker, 300.0)
    breaker.advance(360.0)
    report(breaker, 360.0, True)
    report(breaker, 360.0, True)
    breaker.advance(1000.0)
    assert breaker.backoff_level == 0
    trip(breaker, 1000.0)
    assert breaker.retry_after(1000.0) == 60.0


def test_a_trip_before_the_level_has_decayed_backs_off_further() -> None:
    breaker = Breaker("booking", BACKOFF)
    trip(breaker, 0.0)
    breaker.advance(60.0)
    report(breaker, 60.0, True)
    report(breaker, 60.0, True)
    # Closed for 100 s: one period, so level 1 - 1 = 0, and this trip is the first in a row again.
    trip(breaker, 160.0)
    assert (breaker.backoff_level, breaker.retry_after(160.0)) == (1, 60.0)
    breaker.advance(220.0)
    report(breaker, 220.0, True)
    report(breaker, 220.0, True)
    trip(breaker, 250.0)  # within a period of closing: the second in a row
    assert (breaker.backoff_level, breaker.retry_after(250.0)) == (2, 120.0)


def test_a_reset_starts_the_back_off_over_and_a_hold_stops_its_decay() -> None:
    breaker = Breaker("booking", BACKOFF)
    trip(breaker, 0.0)
    trip(breaker, 60.0)
    breaker.reset(100.0, who="root")
    assert breaker.backoff_level == 0
    trip(breaker, 100.0)
    trip(breaker, 160.0)
    breaker.hold_for(State.CLOSED, 600, "known good", "root", 170.0)
    breaker.advance(769.0)
    assert breaker.backoff_level == 2  # no decay while the operator holds it
    breaker.advance(770.0)  # the hold ends: closed from now
    breaker.advance(829.0)
    assert (breaker.state, breaker.backoff_level) == (State.CLOSED, 2)
    breaker.advance(830.0)
    assert breaker.backoff_level == 1


def test_the_level_and_its_decay_survive_a_restart() -> None:
    breaker = Breaker("booking", BACKOFF)
    trip(breaker, 0.0)
    trip(breaker, 60.0)
    trip(breaker, 180.0)  # level 3, open 240 s
    saved = breaker.view(200.0)
    restored = Breaker("booking", BACKOFF)
    restored.restore(saved, now=5000.0)
    assert (restored.backoff_level, restored.retry_after(5000.0)) == (3, 220.0)
    restored.advance(5220.0)
    report(restored, 5220.0, False)
    assert (restored.backoff_level, restored.retry_after(5220.0)) == (4, 300.0)

    closed = Breaker("booking", BACKOFF)
    trip(closed, 0.0)
    trip(closed, 60.0)
    closed.advance(180.0)
    report(closed, 180.0, True)
    report(closed, 180.0, True)
    closed.advance(270.0)  # closed 90 s: level 2 - 1, and 30 s into the next period
    saved = closed.view(270.0)
    assert saved.backoff_level == 1
    again = Breaker("booking", BACKOFF)
    again.restore(saved, now=9000.0)
    again.advance(9029.0)
    assert again.backoff_level == 1
    again.advance(9030.0)
    assert again.backoff_level == 0


def test_new_settings_change_the_open_time_of_a_breaker_open_now() -> None:
    breaker = Breaker("booking", BACKOFF, jitter=lambda: 1.1)
    trip(breaker, 0.0)
    trip(breaker, 66.0)  # level 2: 132 s
    breaker.set_policy(replace(BACKOFF, open_seconds=30), 70.0)
    # Level 2 of the new timeout, the same draw of jitter, from the same start.
    assert breaker.retry_after(70.0) == pytest.approx(66.0 + 66.0 - 70.0)
    breaker.set_policy(replace(BACKOFF, backoff_multiplier=1.0), 70.0)
    assert breaker.retry_after(70.0) == pytest.approx(66.0 + 60.0 - 70.0)
    # A platform's retry time stays what it asked, within the new cap.
    limited = Breaker("booking", BACKOFF)
    report(limited, 0.0, rate_limited(250.0))
    limited.set_policy(replace(BACKOFF, open_seconds=10), 1.0)
    assert limited.retry_after(1.0) == 249.0
    limited.set_policy(replace(BACKOFF, max_open_seconds=100), 1.0)
    assert limited.retry_after(1.0) == 99.0


def test_each_outcome_is_counted_every_time() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.hold_for(State.CLOSED, 3600, "known good", "root", 0.0)
    for outcome in (rate_limited(30.0), rate_limited(None), Report(Kind.IGNORED), Report(Kind.IGNORED),
                    Report(Kind.TIMEOUT), Report(Kind.TIMEOUT)):
        report(breaker, 1.0, outcome)
    assert breaker.view(1.0).outcomes == {"success": 0, "failure": 0, "timeout": 2, "rate_limited": 2, "slow": 0,
                                          "ignored": 2}


def test_a_retry_time_of_exactly_the_cap_is_not_capped_and_one_of_none_half_opens_at_once() -> None:
    breaker = Breaker("booking", POLICY)
    report(breaker, 0.0, rate_limited(3600.0, "3600"))
    assert (breaker.retry_after(0.0), breaker.last_reason) == (3600.0, "rate limited by the platform: Retry-After 3600")
    at_once = Breaker("booking", POLICY)
    report(at_once, 5.0, rate_limited(0.0, "0"))
    at_once.advance(5.0)
    assert at_once.state is State.HALF_OPEN


def test_jitter_is_drawn_only_when_backing_off() -> None:
    # Opened under the seed's rule, the period has no jitter to carry into a back-off set while it is open.
    breaker = Breaker("booking", POLICY, jitter=lambda: 1.1)
    trip(breaker, 0.0)
    breaker.set_policy(BACKOFF, 1.0)
    assert breaker.retry_after(1.0) == 59.0
    # A period's length is named to a tenth of a second when it ends.
    drawn = Breaker("booking", BACKOFF, jitter=lambda: 0.9041)
    trip(drawn, 0.0)
    drawn.advance(60.0)
    assert (drawn.state, drawn.last_reason) == (State.HALF_OPEN, "open for 54.2 s")


def test_a_slow_success_while_held_closed_says_so_and_a_one_ms_limit_is_a_limit() -> None:
    breaker = Breaker("booking", replace(POLICY, slow_call_ms=1))
    assert report(breaker, 0.0, Report(Kind.SUCCESS, duration_ms=2)) == Outcome(True, State.CLOSED, None, Kind.SLOW)
    breaker.hold_for(State.CLOSED, 3600, "known good", "root", 0.0)
    assert report(breaker, 1.0, Report(Kind.SUCCESS, duration_ms=2)) == Outcome(True, State.CLOSED, None, Kind.SLOW)
    assert breaker.view(1.0).total_slow == 2


def test_a_restored_open_breaker_keeps_its_time_whatever_the_new_timeout() -> None:
    saved = Breaker("booking", POLICY)
    trip(saved, 0.0)
    restored = Breaker("booking", POLICY)
    restored.restore(saved.view(10.0), now=100.0)
    assert restored.retry_after(100.0) == 50.0
    restored.set_policy(replace(POLICY, open_seconds=30), 100.0)
    assert restored.retry_after(100.0) == 50.0
    # Within the new cap: the 60 s period as it was restored is cut to 40 s from its start.
    restored.set_policy(replace(POLICY, open_seconds=30, max_open_seconds=40), 100.0)
    assert restored.retry_after(100.0) == 30.0
