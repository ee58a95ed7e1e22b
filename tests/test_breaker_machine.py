"""The breaker state machine, driven by scripts of (time, action) with no clock."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ratecared.breaker.machine import (
    MAX_HOLD_SECONDS, MAX_LEASES, Breaker, BreakerView, Decision, Hold, Leases, Outcome, Policy, State, Transition,
)

POLICY = Policy(failure_threshold=3, open_seconds=60, half_open_requests=2, lease_seconds=10)
# The peer uid a call comes from, and another member of the socket group.
UID, OTHER = 33, 1000


def run_script(breaker: Breaker, script: list[tuple[float, str]]) -> list[Any]:
    """Actions: acquire, ok, fail (report the oldest unreported permit), tick.

    Returns, per step, the allowed flag or counted flag, plus the state after.
    """
    permits: list[str] = []
    trace = []
    for now, action in script:
        if action == "acquire":
            decision, _ = breaker.acquire(now, UID)
            if decision.permit:
                permits.append(decision.permit)
            trace.append(("allowed" if decision.allowed else "refused", breaker.state.value))
        elif action in ("ok", "fail"):
            outcome, _ = breaker.report(permits.pop(0), action == "ok", now, UID)
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
        decision, _ = breaker.acquire(now, UID)
        breaker.report(decision.permit, False, now, UID)
    assert breaker.state is State.OPEN
    return breaker


def test_open_refuses_with_seconds_until_retry() -> None:
    breaker = opened(now=100.0)
    decision, _ = breaker.acquire(130.0, UID)
    assert (decision.allowed, decision.state, decision.permit, decision.retry_after) == (False, State.OPEN, None, 30.0)
    assert breaker.total_rejected == 1


def test_half_open_admits_exactly_the_trial_count_then_closes_on_all_successes() -> None:
    breaker = opened()
    first, changes = breaker.acquire(60.0, UID)
    assert [(c.old, c.new) for c in changes] == [(State.OPEN, State.HALF_OPEN)]
    second, _ = breaker.acquire(60.0, UID)
    third, _ = breaker.acquire(60.0, UID)
    assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
    assert third.retry_after == 10.0
    breaker.report(first.permit, True, 61.0, UID)
    assert breaker.state is State.HALF_OPEN
    outcome, changes = breaker.report(second.permit, True, 61.0, UID)
    assert outcome.counted and breaker.state is State.CLOSED
    assert changes[0].reason == "2 trial calls succeeded"
    assert breaker.view(61.0).failure_count == 0


def test_a_failed_trial_opens_again_for_a_full_timeout() -> None:
    breaker = opened()
    trial, _ = breaker.acquire(60.0, UID)
    _, changes = breaker.report(trial.permit, False, 62.0, UID)
    assert breaker.state is State.OPEN and changes[0].reason == "trial call failed"
    assert breaker.acquire(121.9, UID)[0].allowed is False
    assert breaker.acquire(122.0, UID)[0].allowed is True


def test_an_unreported_trial_counts_as_failed_when_its_lease_ends() -> None:
    breaker = opened()
    breaker.acquire(60.0, UID)
    breaker.acquire(60.0, UID)
    assert breaker.acquire(69.9, UID)[0].allowed is False
    changes = breaker.advance(70.0)
    assert [(c.old, c.new) for c in changes] == [(State.HALF_OPEN, State.OPEN)]
    assert "lease" in changes[0].reason
    assert breaker.total_failures == POLICY.failure_threshold + 2


def test_late_report_from_an_earlier_state_is_not_counted() -> None:
    breaker = Breaker("booking", POLICY)
    slow, _ = breaker.acquire(0.0, UID)
    for _ in range(POLICY.failure_threshold):
        decision, _ = breaker.acquire(0.0, UID)
        breaker.report(decision.permit, False, 0.0, UID)
    assert breaker.state is State.OPEN
    outcome, changes = breaker.report(slow.permit, True, 5.0, UID)
    assert (outcome.counted, outcome.reason, outcome.state) == (False, "stale", State.OPEN)
    assert changes == [] and breaker.total_successes == 0


def test_closed_call_reported_during_half_open_does_not_close_it() -> None:
    breaker = Breaker("booking", POLICY)
    slow, _ = breaker.acquire(0.0, UID)
    for _ in range(POLICY.failure_threshold):
        decision, _ = breaker.acquire(0.0, UID)
        breaker.report(decision.permit, False, 0.0, UID)
    breaker.advance(60.0)
    assert breaker.state is State.HALF_OPEN
    # The slow call's lease (10 s) has run out by now: unknown, not counted.
    outcome, _ = breaker.report(slow.permit, True, 60.0, UID)
    assert not outcome.counted and breaker.state is State.HALF_OPEN


def test_reused_and_forged_permits_are_refused() -> None:
    breaker = Breaker("booking", POLICY)
    decision, _ = breaker.acquire(0.0, UID)
    assert breaker.report(decision.permit, True, 0.0, UID)[0].counted
    assert breaker.report(decision.permit, True, 0.0, UID)[0].reason == "unknown"
    assert breaker.report("booking.0.999", False, 0.0, UID)[0].reason == "unknown"
    assert breaker.view(0.0).total_requests == 1


def test_disabled_lets_everything_through_and_counts_nothing() -> None:
    breaker = opened()
    breaker.set_policy(Policy(**{**POLICY.__dict__, "enabled": False}), 1.0)
    decisions = [breaker.acquire(1.0, UID)[0] for _ in range(10)]
    assert all(d.allowed for d in decisions)
    outcome, _ = breaker.report(decisions[0].permit, False, 1.0, UID)
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
    assert breaker.total_failures == 3 and breaker.view(5.0).failure_count == 0
    assert breaker.reset(6.0) == []


def test_success_rate_is_null_before_any_call() -> None:
    breaker = Breaker("booking", POLICY)
    assert breaker.view(0.0).success_rate is None
    for ok in (True, True, True, False):
        decision, _ = breaker.acquire(0.0, UID)
        breaker.report(decision.permit, ok, 0.0, UID)
    assert breaker.view(0.0).success_rate == 75.0


def saved(state: State = State.OPEN, retry_after: float | None = 42.0, seconds_in_state: float = 18.0) -> BreakerView:
    """A breaker as an earlier process saved it."""
    return BreakerView(platform="booking", state=state, generation=7, failure_count=3, trip_count=2,
                       total_successes=10, total_failures=3, total_rejected=1, retry_after=retry_after,
                       seconds_in_state=seconds_in_state, last_reason="3 consecutive failures")


def test_restore_keeps_an_open_breaker_open_for_the_rest_of_its_time() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.restore(saved(), now=1000.0)
    assert breaker.acquire(1000.0, UID)[0].retry_after == 42.0
    assert breaker.generation == 8 and breaker.total_failures == 3
    breaker.advance(1042.0)
    assert breaker.state is State.HALF_OPEN


def test_restore_never_extends_past_the_longest_open_time() -> None:
    # A Retry-After or a back-off may have opened it for longer than the timeout, never past the cap.
    breaker = Breaker("booking", POLICY)
    breaker.restore(saved(retry_after=10_000.0), now=0.0)
    assert breaker.retry_after(0.0) == POLICY.max_open_seconds == 3600
    capped = Breaker("booking", replace(POLICY, max_open_seconds=100))
    capped.restore(saved(retry_after=10_000.0), now=0.0)
    assert capped.retry_after(0.0) == 100
    # A cap under the timeout never cuts the timeout itself.
    under = Breaker("booking", replace(POLICY, max_open_seconds=10))
    under.restore(saved(retry_after=10_000.0), now=0.0)
    assert under.retry_after(0.0) == POLICY.open_seconds


def test_leases_of_callers_that_never_report_are_bounded() -> None:
    breaker = Breaker("booking", POLICY)
    first = [breaker.acquire(0.0, UID)[0] for _ in range(2)]
    rest = [breaker.acquire(0.0, UID)[0] for _ in range(MAX_LEASES)]
    # The ring went round: the two oldest gave their places to the two newest.
    assert len(breaker.leases._tags) == MAX_LEASES
    assert [breaker.report(d.permit, True, 1.0, UID)[0].reason for d in first] == ["unknown", "unknown"]
    assert [breaker.report(d.permit, True, 1.0, UID)[0].counted for d in (rest[0], rest[-1])] == [True, True]


def test_an_hour_long_timeout_in_milliseconds() -> None:
    policy = Policy(failure_threshold=1, open_seconds=3600, half_open_requests=1, lease_seconds=10)
    breaker = Breaker("booking", policy)
    decision, _ = breaker.acquire(0.0, UID)
    breaker.report(decision.permit, False, 0.0, UID)
    assert breaker.acquire(3599.0, UID)[0].retry_after == 1.0
    assert breaker.acquire(3600.0, UID)[0].allowed


# -- what status, the API and the snapshot see ---------------------------------


def test_what_an_open_breaker_shows() -> None:
    breaker = opened(now=100.0)
    breaker.acquire(101.0, UID)
    breaker.acquire(102.0, UID)
    # Times to the millisecond, as the API gives them.
    assert breaker.view(112.3456) == BreakerView(
        platform="booking", state=State.OPEN, generation=1, failure_count=3, trip_count=1, total_successes=0,
        total_failures=3, total_rejected=2, retry_after=47.654, seconds_in_state=12.346,
        last_reason="3 consecutive failures", backoff_level=1, guarded=True, enabled=True, trials_in_flight=0,
        transitions={State.CLOSED: 0, State.OPEN: 1, State.HALF_OPEN: 0})
    assert breaker.retry_after(159.5) == 0.5


def test_the_status_entry_keeps_the_seed_keys() -> None:
    assert opened(now=100.0).view(130.0).as_json() == {
        "platform": "booking", "state": "open", "failure_count": 3, "success_rate": 0.0, "total_requests": 3,
        "total_successes": 0, "total_failures": 3, "rejected": 0, "retry_after": 30.0, "trip_count": 1,
        "backoff_level": 1,
        "outcomes": {"success": 0, "failure": 3, "timeout": 0, "rate_limited": 0, "slow": 0, "ignored": 0},
        "trials_in_flight": 0, "seconds_in_state": 30.0, "last_reason": "3 consecutive failures",
        "guarded": True, "enabled": True, "hold": None,
    }


def test_a_half_open_breaker_shows_its_trials_in_flight_and_when_a_slot_frees() -> None:
    breaker = opened()
    first, _ = breaker.acquire(60.0, UID)
    breaker.acquire(61.0, UID)
    view = breaker.view(62.1234)
    assert (view.state, view.trials_in_flight, view.retry_after, view.seconds_in_state, view.last_reason) == (
        State.HALF_OPEN, 2, 7.877, 2.123, "open for 60 s")
    breaker.report(first.permit, True, 63.0, UID)
    assert breaker.view(63.0).trials_in_flight == 1
    assert breaker.retry_after(70.5) == 0.5


def test_a_closed_breaker_admits_calls_that_are_not_trials() -> None:
    breaker = Breaker("booking", POLICY)
    decision, changes = breaker.acquire(0.0, UID)
    assert (decision.allowed, decision.state, decision.retry_after, changes) == (True, State.CLOSED, None, [])
    assert breaker.view(0.0).trials_in_flight == 0
    assert breaker.report(decision.permit, True, 1.0, UID) == (Outcome(True, State.CLOSED, None), [])


def test_each_transition_names_its_platform_and_a_new_generation() -> None:
    breaker = Breaker("booking", POLICY)
    changes: list[Transition] = []
    for _ in range(POLICY.failure_threshold):
        decision, _ = breaker.acquire(0.0, UID)
        changes += breaker.report(decision.permit, False, 0.0, UID)[1]
    trials = []
    for _ in range(POLICY.half_open_requests):
        decision, more = breaker.acquire(60.0, UID)
        trials.append(decision)
        changes += more
    assert trials[0].state is State.HALF_OPEN
    for trial in trials:
        changes += breaker.report(trial.permit, True, 61.0, UID)[1]
    assert changes == [
        Transition("booking", State.CLOSED, State.OPEN, "3 consecutive failures", 1),
        Transition("booking", State.OPEN, State.HALF_OPEN, "open for 60 s", 2),
        Transition("booking", State.HALF_OPEN, State.CLOSED, "2 trial calls succeeded", 3),
    ]
    assert breaker.view(61.0).generation == 3
    assert breaker.view(61.0).transitions == {State.CLOSED: 1, State.OPEN: 1, State.HALF_OPEN: 1}


def test_every_trip_is_counted_and_every_refusal() -> None:
    breaker = opened()
    breaker.acquire(1.0, UID)
    trial, _ = breaker.acquire(60.0, UID)
    breaker.report(trial.permit, False, 60.0, UID)
    breaker.acquire(61.0, UID)
    view = breaker.view(61.0)
    assert (view.trip_count, view.total_rejected, view.failure_count) == (2, 2, 4)
    assert view.transitions == {State.CLOSED: 0, State.OPEN: 2, State.HALF_OPEN: 1}


def test_transitions_are_counted_by_the_state_entered_and_a_reset_of_a_closed_breaker_is_none() -> None:
    breaker = opened()
    breaker.reset(1.0)
    breaker.reset(2.0)
    assert breaker.view(2.0).transitions == {State.CLOSED: 1, State.OPEN: 1, State.HALF_OPEN: 0}


# -- platforms without a breaker ---------------------------------------------------


def test_a_platform_without_a_breaker_is_always_allowed_and_counts_nothing() -> None:
    only_expedia = replace(POLICY, platforms=frozenset({"expedia"}))
    booking = opened()
    booking.set_policy(only_expedia, 1.0)
    assert booking.acquire(1.0, UID) == (Decision(True, State.CLOSED, None, None), [])
    assert booking.report("booking.1.1", False, 1.0, UID) == (Outcome(False, State.CLOSED, "unguarded"), [])
    view = booking.view(1.0)
    assert (view.guarded, view.state, view.total_failures, view.total_rejected) == (False, State.OPEN, 3, 0)
    expedia = Breaker("expedia", only_expedia)
    decision, _ = expedia.acquire(0.0, UID)
    assert expedia.report(decision.permit, False, 0.0, UID)[0].counted and expedia.view(0.0).guarded is True


# -- reports not counted ---------------------------------------------------------


def test_reports_not_counted_say_why_and_in_which_state() -> None:
    breaker = opened()
    assert breaker.report("booking.1.99", True, 1.0, UID) == (Outcome(False, State.OPEN, "unknown"), [])
    trial, _ = breaker.acquire(60.0, UID)
    breaker.set_policy(replace(POLICY, enabled=False), 60.0)
    assert breaker.report(trial.permit, True, 60.0, UID) == (Outcome(False, State.HALF_OPEN, "disabled"), [])
    assert breaker.view(60.0).enabled is False


def test_trials_reported_while_breakers_are_off_hand_their_slots_back() -> None:
    breaker = opened()
    trials = [breaker.acquire(60.0, UID)[0] for _ in range(POLICY.half_open_requests)]
    breaker.set_policy(replace(POLICY, enabled=False), 61.0)
    untried, _ = breaker.acquire(61.0, UID)
    for decision in [*trials, untried]:
        assert breaker.report(decision.permit, True, 61.0, UID)[0].reason == "disabled"
    breaker.set_policy(POLICY, 62.0)
    # Not stuck half-open with no slot free and no lease left to run out.
    assert [breaker.acquire(62.0, UID)[0].allowed for _ in range(3)] == [True, True, False]


# -- leases ----------------------------------------------------------------------


def test_a_lease_outlives_the_expiry_of_older_ones() -> None:
    breaker = Breaker("booking", POLICY)
    old, _ = breaker.acquire(0.0, UID)
    newer, _ = breaker.acquire(5.0, UID)
    breaker.advance(12.0)
    assert breaker.report(old.permit, True, 12.0, UID)[0].reason == "unknown"
    assert breaker.report(newer.permit, True, 12.0, UID)[0].counted


def test_tags_take_all_64_bits() -> None:
    tags = iter([(1 << 64) - 1, 1 << 63])
    breaker = Breaker("booking", POLICY, leases=Leases(tags=tags.__next__))
    decisions = [breaker.acquire(0.0, UID)[0] for _ in range(2)]
    assert [d.permit for d in decisions] == ["00000000ffffffffffffffff", "000000018000000000000000"]
    assert all(breaker.report(d.permit, True, 0.0, UID)[0].counted for d in decisions)


def test_a_trial_reported_as_its_lease_runs_out_is_unknown() -> None:
    breaker = opened()
    trial, _ = breaker.acquire(60.0, UID)
    assert breaker.report(trial.permit, True, 70.0, UID)[0].reason == "unknown"


def test_a_trial_reported_after_its_lease_ran_out_is_unknown() -> None:
    breaker = Breaker("booking", replace(POLICY, lease_seconds=1000))
    breaker.acquire(0.0, UID)  # never reported: its lease outlasts everything below
    for _ in range(POLICY.failure_threshold):
        decision, _ = breaker.acquire(0.0, UID)
        breaker.report(decision.permit, False, 0.0, UID)
    breaker.set_policy(POLICY, 1.0)
    trial, _ = breaker.acquire(60.0, UID)
    assert [c.new for c in breaker.advance(70.0)] == [State.OPEN]
    assert breaker.report(trial.permit, True, 71.0, UID)[0].reason == "unknown"


def test_past_the_cap_the_oldest_leases_go_and_trials_never_do() -> None:
    breaker = opened()
    breaker.leases = Leases(cap=3)
    trial, _ = breaker.acquire(60.0, UID)
    breaker.set_policy(replace(POLICY, enabled=False), 60.0)
    # Admitted while breakers are off: not trials, so they are in the ring.
    untried = [breaker.acquire(61.0 + i, UID)[0] for i in range(4)]
    breaker.set_policy(POLICY, 65.0)
    assert breaker.report(untried[0].permit, True, 65.0, UID)[0].reason == "unknown"
    assert breaker.report(untried[1].permit, True, 65.0, UID)[0].counted
    assert breaker.report(trial.permit, True, 65.0, UID)[0].counted


def test_a_trial_beside_a_full_ring_still_fails_at_its_deadline() -> None:
    breaker = opened()
    breaker.leases = Leases(cap=3)
    breaker.acquire(60.0, UID)
    breaker.set_policy(replace(POLICY, enabled=False), 60.0)
    for _ in range(4):
        breaker.acquire(61.0, UID)
    breaker.set_policy(POLICY, 62.0)
    assert [(c.old, c.new) for c in breaker.advance(70.0)] == [(State.HALF_OPEN, State.OPEN)]


def test_breakers_sharing_a_ring_are_capped_in_all_and_keep_their_permits_apart() -> None:
    shared = Leases(cap=4)
    booking, expedia = Breaker("booking", POLICY, leases=shared), Breaker("expedia", POLICY, leases=shared)
    first = booking.acquire(0.0, UID)[0]
    others = [expedia.acquire(1.0, UID)[0] for _ in range(3)]
    assert booking.report(others[0].permit, False, 1.0, UID)[0].reason == "unknown"
    assert expedia.report(others[0].permit, False, 1.0, UID)[0].counted
    assert booking.report(first.permit, True, 1.0, UID)[0].counted
    second = booking.acquire(2.0, UID)[0]
    expedia.acquire(2.0, UID)
    assert booking.report(second.permit, True, 2.0, UID)[0].counted
    # Four more: the ring has gone round once more since `second`.
    for _ in range(4):
        expedia.acquire(3.0, UID)
    assert booking.report(second.permit, True, 3.0, UID)[0].reason == "unknown"


def test_permits_that_no_lease_could_have_are_unknown() -> None:
    breaker = Breaker("booking", POLICY)
    decision, _ = breaker.acquire(0.0, UID)
    for permit in ("", "not hex", "-" + decision.permit, "ffffffff" + decision.permit[8:], "00000007" + "0" * 16,
                   "00000001" + decision.permit[8:], f"{(1 << 96) + int(decision.permit, 16):x}"):
        assert breaker.report(permit, False, 0.0, UID)[0].reason == "unknown", permit
    assert breaker.report(decision.permit, False, 0.0, UID)[0].counted


# -- reset and new settings ------------------------------------------------------


def test_reset_of_a_closed_breaker_starts_its_failure_streak_again_and_keeps_calls_under_way() -> None:
    breaker = Breaker("booking", POLICY)
    under_way, _ = breaker.acquire(0.0, UID)
    for _ in range(2):
        decision, _ = breaker.acquire(0.0, UID)
        breaker.report(decision.permit, False, 0.0, UID)
    assert breaker.reset(1.0) == []
    assert (breaker.view(1.0).failure_count, breaker.view(1.0).generation) == (0, 0)
    assert breaker.report(under_way.permit, False, 2.0, UID)[0].counted
    decision, _ = breaker.acquire(2.0, UID)
    breaker.report(decision.permit, False, 2.0, UID)
    assert breaker.state is State.CLOSED


def test_needing_fewer_trials_closes_a_half_open_breaker_that_has_had_them() -> None:
    breaker = opened()
    first, _ = breaker.acquire(60.0, UID)
    breaker.acquire(60.0, UID)
    breaker.report(first.permit, True, 61.0, UID)
    changes = breaker.set_policy(replace(POLICY, half_open_requests=1), 62.0)
    assert changes == [Transition("booking", State.HALF_OPEN, State.CLOSED, "1 trial calls succeeded", 3)]
    assert breaker.view(63.0).seconds_in_state == 1.0


def test_new_settings_for_a_closed_breaker_are_no_transition() -> None:
    breaker = Breaker("booking", POLICY)
    for _ in range(2):
        decision, _ = breaker.acquire(0.0, UID)
        breaker.report(decision.permit, True, 0.0, UID)
    assert breaker.set_policy(replace(POLICY, half_open_requests=1), 1.0) == []
    assert breaker.view(1.0).generation == 0


# -- restore ---------------------------------------------------------------------


def test_restore_takes_over_what_was_saved_and_time_in_the_state_carries_on() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.restore(saved(), now=1000.0)
    # One generation on, so no permit of the old process passes for a new one.
    # Transitions count from this process's start: none are taken over.
    assert breaker.view(1000.0) == replace(saved(), generation=8, transitions=dict.fromkeys(State, 0))
    assert breaker.view(1001.5).seconds_in_state == 19.5


def test_restore_of_a_state_just_begun_or_begun_in_the_future() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.restore(saved(seconds_in_state=0.5), now=0.0)
    assert breaker.view(0.0).seconds_in_state == 0.5
    # A wall clock set back since the snapshot: the state begins now.
    breaker.restore(saved(seconds_in_state=-5.0), now=0.0)
    assert breaker.view(0.0).seconds_in_state == 0.0


def test_restore_of_an_open_breaker_with_little_or_no_time_left() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.restore(saved(retry_after=0.5), now=0.0)
    assert breaker.retry_after(0.0) == 0.5
    breaker.restore(saved(retry_after=None), now=0.0)
    assert breaker.acquire(0.0, UID)[0].state is State.HALF_OPEN


def test_restore_of_a_half_open_breaker_starts_its_trials_afresh() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.restore(saved(state=State.HALF_OPEN, retry_after=3.0), now=0.0)
    assert [breaker.acquire(0.0, UID)[0].allowed for _ in range(3)] == [True, True, False]
    assert breaker.view(1.0).seconds_in_state == 19.0


# -- permits belong to the uid they were issued to ---------------------------------


def test_a_report_from_another_uid_is_unknown_and_leaves_the_permit_to_its_owner() -> None:
    breaker = Breaker("booking", POLICY)
    failing = []
    for _ in range(POLICY.failure_threshold):
        decision, _ = breaker.acquire(0.0, UID)
        failing.append(decision.permit)
        # Someone else reports the owner's call as a success, to hide its failure.
        assert breaker.report(decision.permit, True, 0.0, OTHER) == (Outcome(False, State.CLOSED, "unknown"), [])
    assert breaker.total_successes == 0
    for permit in failing:
        breaker.report(permit, False, 0.0, UID)
    assert breaker.state is State.OPEN


def test_a_trial_reported_by_another_uid_is_unknown_and_still_the_owners() -> None:
    breaker = opened()
    trial, _ = breaker.acquire(60.0, UID)
    assert breaker.report(trial.permit, True, 60.0, OTHER)[0].reason == "unknown"
    assert breaker.view(60.0).trials_in_flight == 1
    outcome, changes = breaker.report(trial.permit, False, 61.0, UID)
    assert outcome.counted and [c.new for c in changes] == [State.OPEN]


def test_a_report_to_another_platform_leaves_the_permit_alone() -> None:
    shared = Leases()
    booking, expedia = Breaker("booking", POLICY, leases=shared), Breaker("expedia", POLICY, leases=shared)
    decision, _ = booking.acquire(0.0, UID)
    assert expedia.report(decision.permit, False, 0.0, UID)[0].reason == "unknown"
    assert booking.report(decision.permit, False, 0.0, UID)[0].counted


def test_a_lease_cut_short_by_new_settings_runs_out_behind_an_older_one() -> None:
    breaker = Breaker("booking", replace(POLICY, lease_seconds=100))
    breaker.acquire(0.0, UID)
    breaker.set_policy(POLICY, 1.0)
    short, _ = breaker.acquire(1.0, UID)
    # Still in the table behind the older, longer lease, but run out.
    assert breaker.report(short.permit, False, 11.0, UID)[0].reason == "unknown"
    assert breaker.total_failures == 0


# -- holds -------------------------------------------------------------------------


def test_a_held_open_breaker_refuses_every_call_until_the_hold_ends_then_goes_on_closed() -> None:
    breaker = Breaker("booking", POLICY)
    changes = breaker.hold_for(State.OPEN, 7200, "booking maintenance", "alice (uid 1000)", now=100.0)
    assert changes == [Transition("booking", State.CLOSED, State.OPEN,
                                  "held open by alice (uid 1000): booking maintenance", 1, "hold", "alice (uid 1000)")]
    # Past the open timeout and any lease: still refused, with the hold's time left.
    hold = Hold(State.OPEN, "booking maintenance", "alice (uid 1000)")
    assert breaker.acquire(100.0 + 3600, UID) == (Decision(False, State.OPEN, None, 3600.0, hold, 3600.0), [])
    assert breaker.acquire(7299.5, UID)[0].retry_after == 0.5
    assert breaker.view(7299.5).total_rejected == 2
    decision, ended = breaker.acquire(7300.0, UID)
    assert ended == [Transition("booking", State.OPEN, State.CLOSED, "hold ended", 2, "release", "daemon")]
    assert (decision.allowed, decision.state, breaker.hold) == (True, State.CLOSED, None)


def test_a_held_closed_breaker_allows_every_call_and_no_failure_trips_it() -> None:
    breaker = opened()
    breaker.hold_for(State.CLOSED, 60, "platform known good", "bob", now=1.0)
    for _ in range(POLICY.failure_threshold * 3):
        decision, _ = breaker.acquire(2.0, UID)
        assert (decision.allowed, decision.state, decision.hold_seconds_left) == (True, State.CLOSED, 59.0)
        assert decision.hold == Hold(State.CLOSED, "platform known good", "bob")
        assert breaker.report(decision.permit, False, 2.0, UID)[0] == Outcome(True, State.CLOSED)
    view = breaker.view(2.0)
    assert (view.state, view.total_failures, view.failure_count) == (State.CLOSED, 3 + 9, 0)
    # Once it ends, the breaker counts again from a clean streak.
    breaker.advance(61.0)
    for _ in range(POLICY.failure_threshold - 1):
        decision, _ = breaker.acquire(62.0, UID)
        breaker.report(decision.permit, False, 62.0, UID)
    assert breaker.state is State.CLOSED
    decision, _ = breaker.acquire(62.0, UID)
    assert breaker.report(decision.permit, False, 62.0, UID)[0].state is State.OPEN


def test_a_hold_is_a_new_generation_even_in_the_state_the_breaker_was_in() -> None:
    breaker = Breaker("booking", POLICY)
    before, _ = breaker.acquire(0.0, UID)
    changes = breaker.hold_for(State.CLOSED, 60, "known good", "bob", now=1.0)
    assert [(c.old, c.new, c.generation, c.kind) for c in changes] == [(State.CLOSED, State.CLOSED, 1, "hold")]
    assert breaker.report(before.permit, True, 2.0, UID)[0] == Outcome(False, State.CLOSED, "stale")
    # Entering the state it was in is no transition into it.
    assert breaker.view(2.0).transitions == {State.CLOSED: 0, State.OPEN: 0, State.HALF_OPEN: 0}


def test_a_new_hold_replaces_the_old_one() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.hold_for(State.OPEN, 60, "maintenance", "alice", now=0.0)
    breaker.hold_for(State.CLOSED, 600, "it is back", "bob", now=10.0)
    view = breaker.view(10.0)
    assert (view.state, view.hold, view.hold_seconds_left) == (State.CLOSED, Hold(State.CLOSED, "it is back", "bob"),
                                                                600.0)
    assert breaker.advance(70.0) == []


def test_release_ends_the_hold_now_and_without_one_does_nothing() -> None:
    breaker = Breaker("booking", POLICY)
    assert breaker.release("alice", now=0.0) == []
    breaker.hold_for(State.OPEN, 60, "maintenance", "alice", now=0.0)
    assert breaker.release("bob", now=5.0) == [
        Transition("booking", State.OPEN, State.CLOSED, "released by bob", 2, "release", "bob")]
    assert breaker.hold is None and breaker.acquire(5.0, UID)[0].allowed


def test_a_reset_leaves_a_held_breaker_as_held() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.hold_for(State.OPEN, 60, "maintenance", "bob", now=0.0)
    assert breaker.reset(1.0, "reset by alice", "alice") == []
    assert (breaker.state, breaker.hold) == (State.OPEN, Hold(State.OPEN, "maintenance", "bob"))


def test_the_kill_switch_lets_calls_through_a_breaker_held_open() -> None:
    breaker = Breaker("booking", replace(POLICY, enabled=False))
    breaker.hold_for(State.OPEN, 60, "maintenance", "bob", now=0.0)
    decision, _ = breaker.acquire(1.0, UID)
    assert (decision.allowed, decision.hold) == (True, None)


@pytest.mark.parametrize("state,seconds", [(State.HALF_OPEN, 60), (State.OPEN, 0), (State.OPEN, -1),
                                           (State.CLOSED, MAX_HOLD_SECONDS + 1)])
def test_a_hold_is_open_or_closed_for_up_to_a_month(state: State, seconds: float) -> None:
    breaker = Breaker("booking", POLICY)
    with pytest.raises(ValueError):
        breaker.hold_for(state, seconds, "why", "alice", now=0.0)
    assert breaker.hold is None and breaker.generation == 0


def test_a_hold_of_exactly_a_month_is_taken() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.hold_for(State.CLOSED, MAX_HOLD_SECONDS, "why", "alice", now=0.0)
    assert breaker.view(0.0).hold_seconds_left == MAX_HOLD_SECONDS


def test_the_status_entry_shows_the_hold() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.hold_for(State.OPEN, 7200, "booking maintenance", "alice (uid 1000)", now=0.0)
    assert breaker.view(1800.0).as_json()["hold"] == {
        "state": "open", "seconds_left": 5400.0, "reason": "booking maintenance", "by": "alice (uid 1000)"}
    assert breaker.view(1800.0).retry_after == 5400.0


def test_restore_keeps_a_hold_for_its_time_left() -> None:
    held = replace(saved(), hold=Hold(State.OPEN, "maintenance", "alice"), hold_seconds_left=100.0)
    breaker = Breaker("booking", POLICY)
    breaker.restore(held, now=1000.0)
    assert breaker.acquire(1099.0, UID)[0] == Decision(False, State.OPEN, None, 1.0, held.hold, 1.0)
    assert [(c.new, c.kind) for c in breaker.advance(1100.0)] == [(State.CLOSED, "release")]


def test_a_hold_that_ran_out_while_no_daemon_ran_ends_at_the_first_advance() -> None:
    held = replace(saved(), hold=Hold(State.OPEN, "maintenance", "alice"), hold_seconds_left=-5.0)
    breaker = Breaker("booking", POLICY)
    breaker.restore(held, now=1000.0)
    assert [(c.old, c.new, c.reason) for c in breaker.advance(1000.0)] == [(State.OPEN, State.CLOSED, "hold ended")]


def test_a_holds_time_left_is_to_the_millisecond() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.hold_for(State.OPEN, 10, "maintenance", "alice", now=0.0)
    assert breaker.acquire(9.87654, UID)[0].retry_after == 0.123
    assert breaker.retry_after(9.87654) == 0.123
    assert breaker.view(9.87654).hold_seconds_left == 0.123
    assert breaker.acquire(9.87654, UID)[0].hold_seconds_left == 0.123


def test_a_hold_shorter_than_a_second_is_taken() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.hold_for(State.CLOSED, 0.5, "a moment", "alice", now=0.0)
    assert breaker.view(0.0).hold_seconds_left == 0.5


def test_the_state_after_a_hold_starts_when_the_hold_ends() -> None:
    released = Breaker("booking", POLICY)
    released.hold_for(State.OPEN, 60, "maintenance", "alice", now=0.0)
    released.release("bob", now=5.0)
    assert released.view(7.5).seconds_in_state == 2.5
    ended = Breaker("booking", POLICY)
    ended.hold_for(State.OPEN, 60, "maintenance", "alice", now=0.0)
    ended.advance(60.0)
    assert ended.view(61.0).seconds_in_state == 1.0


def test_a_held_closed_breaker_counts_its_successes() -> None:
    breaker = Breaker("booking", POLICY)
    breaker.hold_for(State.CLOSED, 60, "known good", "bob", now=0.0)
    for _ in range(3):
        decision, _ = breaker.acquire(1.0, UID)
        breaker.report(decision.permit, True, 1.0, UID)
    assert breaker.view(1.0).total_successes == 3


def test_a_restored_hold_whose_time_left_is_unknown_ends_at_once() -> None:
    held = replace(saved(), hold=Hold(State.OPEN, "maintenance", "alice"), hold_seconds_left=None)
    breaker = Breaker("booking", POLICY)
    breaker.restore(held, now=1000.0)
    assert [c.kind for c in breaker.advance(1000.0)] == ["release"]


def test_a_bad_hold_says_why() -> None:
    breaker = Breaker("booking", POLICY)
    with pytest.raises(ValueError, match="a hold keeps a breaker open or closed, not half_open"):
        breaker.hold_for(State.HALF_OPEN, 60, "why", "alice", now=0.0)
    with pytest.raises(ValueError, match="a hold lasts more than 0 s and at most 30 days"):
        breaker.hold_for(State.OPEN, 0, "why", "alice", now=0.0)


def test_a_reset_by_the_daemon_itself_names_the_daemon() -> None:
    assert [(c.kind, c.who) for c in opened().reset(1.0)] == [("reset", "daemon")]


def test_a_reset_by_an_operator_names_them() -> None:
    changes = opened().reset(1.0, "reset by alice", "alice (uid 1000)")
    assert [(c.kind, c.reason, c.who) for c in changes] == [("reset", "reset by alice", "alice (uid 1000)")]


def test_a_trial_handed_back_while_disabled_keeps_the_other_counts() -> None:
    breaker = opened()
    first, _ = breaker.acquire(60.0, UID)
    second, _ = breaker.acquire(60.0, UID)
    breaker.set_policy(replace(POLICY, enabled=False), 61.0)
    assert breaker.report(second.permit, True, 61.0, UID)[0].reason == "disabled"
    # One trial still out, nothing counted yet, and the streak that tripped it still shown.
    assert (breaker.counts.trials, breaker.counts.successes, breaker.counts.consecutive_failures) == (1, 0, 3)
    assert breaker.view(61.0).failure_count == 3


def test_a_peer_whose_credentials_are_unknown_still_gets_and_reports_its_permit() -> None:
    # SO_PEERCRED can fail; the server then names the peer uid -1.
    breaker = Breaker("booking", POLICY)
    decision, _ = breaker.acquire(0.0, -1)
    assert breaker.report(decision.permit, True, 0.0, -1)[0] == Outcome(True, State.CLOSED)
