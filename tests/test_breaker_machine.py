"""The breaker state machine, driven by scripts of (time, action) with no clock."""

from __future__ import annotations

from typing import Any

import pytest

from ratecared.breaker.machine import MAX_LEASES, Breaker, Policy, State

POLICY = Policy(failure_threshold=3, open_seconds=60, half_open_requests=2, lease_seconds=10)


def run_script(breaker: Breaker, script: list[tuple[float, str]]) -> list[Any]:
    """Actions: acquire, ok, fail (report the oldest unreported permit), tick.

    Returns, per step, the allowed flag or counted flag, plus the state after.
    """
    permits: list[str] = []
    trace = []
    for now, action in script:
        if action == "acquire":
            decision, _ = breaker.acquire(now)
            if decision.permit:
                permits.append(decision.permit)
            trace.append(("allowed" if decision.allowed else "refused", breaker.state.value))
        elif action in ("ok", "fail"):
            outcome, _ = breaker.report(permits.pop(0), action == "ok", now)
            trace.append(("counted" if outcome.counted else outcome.reason, breaker.state.value))
        elif action == "tick":
            breaker.advance(now)
            trace.append(("tick", breaker.state.value))
    return trace


CASES = {
    "threshold consecutive failures open it": (
        [(0, "acquire"), (0, "fail"), (1, "acquire"), (1, "fail"), (2, "acquire"), (2, "fail"), (3, "acquire")],
        [("allowed", "closed"), ("counted", "closed"), ("allowed", "closed"), ("counted", "closed"),
         ("allowed", "closed"), ("counted", "open"), ("refused", "open")],
    ),
    "a success resets the consecutive count": (
        [(0, "acquire"), (0, "fail"), (0, "acquire"), (0, "fail"), (0, "acquire"), (0, "ok"),
         (0, "acquire"), (0, "fail"), (0, "acquire"), (0, "fail")],
        [("allowed", "closed"), ("counted", "closed"), ("allowed", "closed"), ("counted", "closed"),
         ("allowed", "closed"), ("counted", "closed"), ("allowed", "closed"), ("counted", "closed"),
         ("allowed", "closed"), ("counted", "closed")],
    ),
    "open goes half-open after the timeout, not before": (
        [(0, "acquire"), (0, "fail"), (0, "acquire"), (0, "fail"), (0, "acquire"), (0, "fail"),
         (59.9, "acquire"), (60, "tick")],
        [("allowed", "closed"), ("counted", "closed"), ("allowed", "closed"), ("counted", "closed"),
         ("allowed", "closed"), ("counted", "open"), ("refused", "open"), ("tick", "half_open")],
    ),
}


@pytest.mark.parametrize("script,expected", CASES.values(), ids=CASES.keys())
def test_scripts(script: list[tuple[float, str]], expected: list[Any]) -> None:
    assert run_script(Breaker("booking", POLICY), script) == expected


def opened(now: float = 0.0) -> Breaker:
    breaker = Breaker("booking", POLICY)
    for _ in range(POLICY.failure_threshold):
        decision, _ = breaker.acquire(now)
        breaker.report(decision.permit, False, now)
    assert breaker.state is State.OPEN
    return breaker


def test_open_refuses_with_seconds_until_retry() -> None:
    breaker = opened(now=100.0)
    decision, _ = breaker.acquire(130.0)
    assert (decision.allowed, decision.state, decision.permit, decision.retry_after) == (False, State.OPEN, None, 30.0)
    assert breaker.total_rejected == 1


def test_half_open_admits_exactly_the_trial_count_then_closes_on_all_successes() -> None:
    breaker = opened()
    first, changes = breaker.acquire(60.0)
    assert [(c.old, c.new) for c in changes] == [(State.OPEN, State.HALF_OPEN)]
    second, _ = breaker.acquire(60.0)
    third, _ = breaker.acquire(60.0)
    assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
    assert third.retry_after == 10.0
    breaker.report(first.permit, True, 61.0)
    assert breaker.state is State.HALF_OPEN
    outcome, changes = breaker.report(second.permit, True, 61.0)
    assert outcome.counted and breaker.state is State.CLOSED
    assert changes[0].reason == "2 trial calls succeeded"
    assert breaker.consecutive_failures == 0


def test_a_failed_trial_opens_again_for_a_full_timeout() -> None:
    breaker = opened()
    trial, _ = breaker.acquire(60.0)
    _, changes = breaker.report(trial.permit, False, 62.0)
    assert breaker.state is State.OPEN and changes[0].reason == "trial call failed"
    assert breaker.acquire(121.9)[0].allowed is False
    assert breaker.acquire(122.0)[0].allowed is True


def test_an_unreported_trial_counts_as_failed_when_its_lease_ends() -> None:
    breaker = opened()
    breaker.acquire(60.0)
    breaker.acquire(60.0)
    assert breaker.acquire(69.9)[0].allowed is False
    changes = breaker.advance(70.0)
    assert [(c.old, c.new) for c in changes] == [(State.HALF_OPEN, State.OPEN)]
    assert "lease" in changes[0].reason
    assert breaker.total_failures == POLICY.failure_threshold + 2


def test_late_report_from_an_earlier_state_is_not_counted() -> None:
    breaker = Breaker("booking", POLICY)
    slow, _ = breaker.acquire(0.0)
    for _ in range(POLICY.failure_threshold):
        decision, _ = breaker.acquire(0.0)
        breaker.report(decision.permit, False, 0.0)
    assert breaker.state is State.OPEN
    outcome, changes = breaker.report(slow.permit, True, 5.0)
    assert (outcome.counted, outcome.reason, outcome.state) == (False, "stale", State.OPEN)
    assert changes == [] and breaker.total_successes == 0


def test_closed_call_reported_during_half_open_does_not_close_it() -> None:
    breaker = Breaker("booking", POLICY)
    slow, _ = breaker.acquire(0.0)
    for _ in range(POLICY.failure_threshold):
        decision, _ = breaker.acquire(0.0)
        breaker.report(decision.permit, False, 0.0)
    breaker.advance(60.0)
    assert breaker.state is State.HALF_OPEN
    # The slow call's lease (10 s) has run out by now: unknown, not counted.
    outcome, _ = breaker.report(slow.permit, True, 60.0)
    assert not outcome.counted and breaker.state is State.HALF_OPEN


def test_reused_and_forged_permits_are_refused() -> None:
    breaker = Breaker("booking", POLICY)
    decision, _ = breaker.acquire(0.0)
    assert breaker.report(decision.permit, True, 0.0)[0].counted
    assert breaker.report(decision.permit, True, 0.0)[0].reason == "unknown"
    assert breaker.report("booking.0.999", False, 0.0)[0].reason == "unknown"
    assert breaker.total_requests == 1


def test_disabled_lets_everything_through_and_counts_nothing() -> None:
    breaker = opened()
    breaker.set_policy(Policy(**{**POLICY.__dict__, "enabled": False}), 1.0)
    decisions = [breaker.acquire(1.0)[0] for _ in range(10)]
    assert all(d.allowed for d in decisions)
    outcome, _ = breaker.report(decisions[0].permit, False, 1.0)
    assert (outcome.counted, outcome.reason) == (False, "disabled")
    assert breaker.state is State.OPEN


def test_new_settings_keep_state_and_move_the_open_deadline() -> None:
    breaker = opened(now=0.0)
    breaker.set_policy(Policy(failure_threshold=3, open_seconds=120, half_open_requests=2, lease_seconds=10), 10.0)
    assert breaker.state is State.OPEN and breaker.retry_after(10.0) == 110.0
    assert breaker.total_failures == 3


def test_reset_closes_and_keeps_totals() -> None:
    breaker = opened()
    changes = breaker.reset(5.0)
    assert breaker.state is State.CLOSED and changes[0].reason == "reset by operator"
    assert breaker.total_failures == 3 and breaker.consecutive_failures == 0
    assert breaker.reset(6.0) == []


def test_success_rate_is_null_before_any_call() -> None:
    breaker = Breaker("booking", POLICY)
    assert breaker.success_rate is None
    for ok in (True, True, True, False):
        decision, _ = breaker.acquire(0.0)
        breaker.report(decision.permit, ok, 0.0)
    assert breaker.success_rate == 75.0


def test_restore_keeps_an_open_breaker_open_for_the_rest_of_its_time() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.restore(State.OPEN, 42.0, generation=7, consecutive_failures=3, trip_count=2,
                    totals=(10, 3, 1), reason="3 consecutive failures", now=1000.0)
    assert breaker.acquire(1000.0)[0].retry_after == 42.0
    assert breaker.generation == 8 and breaker.total_failures == 3
    breaker.advance(1042.0)
    assert breaker.state is State.HALF_OPEN


def test_restore_never_extends_past_the_timeout() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.restore(State.OPEN, 10_000.0, 1, 3, 1, (0, 3, 0), "x", now=0.0)
    assert breaker.retry_after(0.0) == POLICY.open_seconds


def test_leases_of_callers_that_never_report_are_bounded() -> None:
    breaker = Breaker("booking", POLICY)
    for _ in range(MAX_LEASES + 50):
        breaker.acquire(0.0)
    breaker.advance(0.0)
    assert len(breaker._leases) == MAX_LEASES
    breaker.advance(POLICY.lease_seconds)
    assert len(breaker._leases) == 0


def test_an_hour_long_timeout_in_milliseconds() -> None:
    policy = Policy(failure_threshold=1, open_seconds=3600, half_open_requests=1, lease_seconds=10)
    breaker = Breaker("booking", policy)
    decision, _ = breaker.acquire(0.0)
    breaker.report(decision.permit, False, 0.0)
    assert breaker.acquire(3599.0)[0].retry_after == 1.0
    assert breaker.acquire(3600.0)[0].allowed
