"""The registry: one lock, many threads, a live policy and platform list, injected clock."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from ratecared.breaker.machine import Policy, State, Transition
from ratecared.breaker.registry import Registry, UnknownPlatform

PLATFORMS = ("booking", "expedia", "agoda")
UID = 33


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(policy: Policy = Policy(), clock: FakeClock | None = None) -> tuple[Registry, list[Transition]]:
    seen: list[Transition] = []
    registry = Registry(PLATFORMS, policy, clock=clock or FakeClock(), on_transition=seen.extend)
    return registry, seen


def trip(registry: Registry, platform: str = "booking", times: int = 5) -> None:
    for _ in range(times):
        decision = registry.acquire(platform, UID)
        registry.report(platform, decision.permit, False, UID)


def test_many_threads_never_get_more_trials_than_allowed() -> None:
    clock = FakeClock()
    registry, seen = make(Policy(half_open_requests=3), clock)
    trip(registry)
    clock.now += 600
    barrier = threading.Barrier(32)
    allowed: list[bool] = []

    def ask() -> None:
        barrier.wait()
        for _ in range(50):
            allowed.append(registry.acquire("booking", UID).allowed)

    threads = [threading.Thread(target=ask) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed.count(True) == 3
    assert len(allowed) == 32 * 50
    assert [(t.old, t.new) for t in seen] == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN)]


def test_transitions_are_reported_with_reason() -> None:
    registry, seen = make()
    trip(registry)
    assert seen == [Transition("booking", State.CLOSED, State.OPEN, "5 consecutive failures", 1)]


def test_policy_changes_live_without_losing_state() -> None:
    clock = FakeClock()
    registry, _ = make(Policy(), clock)
    trip(registry, times=3)
    registry.apply_policy(Policy(failure_threshold=4))
    assert registry.status()[0].failure_count == 3
    trip(registry, times=1)
    assert registry.status()[0].state is State.OPEN
    registry.apply_policy(Policy(failure_threshold=4, open_seconds=30))
    clock.now += 30
    assert registry.status()[0].state is State.HALF_OPEN


def test_breaker_disabled_allows_every_call() -> None:
    registry, _ = make()
    trip(registry)
    registry.apply_policy(Policy(enabled=False))
    assert all(registry.acquire("booking", UID).allowed for _ in range(20))


def test_platform_without_breaker_is_always_allowed() -> None:
    registry, _ = make(Policy(platforms=frozenset({"expedia"})))
    trip(registry, "booking", times=10)
    decision = registry.acquire("booking", UID)
    assert decision.allowed and decision.permit is None
    assert registry.status()[0].guarded is False


def test_unknown_platform_is_an_error() -> None:
    registry, _ = make()
    with pytest.raises(UnknownPlatform):
        registry.acquire("nosuch", UID)
    with pytest.raises(UnknownPlatform):
        registry.reset("nosuch")


def test_reset_all_closes_every_open_breaker() -> None:
    registry, seen = make()
    trip(registry, "booking")
    trip(registry, "agoda")
    assert registry.reset() == list(PLATFORMS)
    assert {s.state for s in registry.status()} == {State.CLOSED}
    assert [t.new for t in seen].count(State.CLOSED) == 2


def test_tick_moves_open_to_half_open_without_callers() -> None:
    clock = FakeClock()
    registry, seen = make(replace(Policy(), open_seconds=1.0), clock)
    trip(registry)
    clock.now += 1.0
    registry.tick()
    assert seen[-1].new is State.HALF_OPEN


def test_a_new_platform_list_keeps_breakers_adds_closed_ones_and_drops_the_rest() -> None:
    clock = FakeClock()
    registry, _ = make(Policy(), clock)
    trip(registry, "booking")
    clock.now += 10
    registry.set_platforms(["hotels", "booking", "expedia"])
    clock.now += 5
    assert registry.platforms == ("hotels", "booking", "expedia")
    status = {view.platform: view for view in registry.status()}
    assert (status["booking"].state, status["booking"].seconds_in_state, status["booking"].total_failures) == (
        State.OPEN, 15.0, 5)
    assert (status["hotels"].state, status["hotels"].seconds_in_state, status["hotels"].total_requests) == (
        State.CLOSED, 5.0, 0)
    assert registry.acquire("hotels", UID).allowed
    with pytest.raises(UnknownPlatform):
        registry.acquire("agoda", UID)
    assert registry.reset() == ["hotels", "booking", "expedia"]


def test_a_new_platform_list_takes_the_policy_in_force() -> None:
    registry, _ = make(Policy())
    registry.apply_policy(Policy(failure_threshold=1))
    registry.set_platforms(["hotels"])
    trip(registry, "hotels", times=1)
    assert registry.status()[0].state is State.OPEN
