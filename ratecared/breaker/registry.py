"""All platforms' breakers behind one lock, with the clock injected.

The lock makes half-open admission exact however many threads ask at once.
Transitions are handed to `on_transition` after the lock is released, so a
slow listener (a log file, the snapshot writer) never holds up a decision.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from ratecared.breaker.machine import Breaker, Decision, Outcome, Policy, State, Transition
from ratecared.settings import Settings


class UnknownPlatform(KeyError):
    """The platform is not in the config's platform list."""

    def __str__(self) -> str:
        return f"unknown platform {self.args[0]!r}"


@dataclass(frozen=True)
class PlatformStatus:
    platform: str
    guarded: bool
    enabled: bool
    state: State
    failure_count: int
    success_rate: float | None
    total_requests: int
    total_successes: int
    total_failures: int
    total_rejected: int
    trip_count: int
    retry_after: float | None
    trials_in_flight: int
    seconds_in_state: float
    last_reason: str
    generation: int


def policy_from(settings: Settings, lease_seconds: float) -> Policy:
    return Policy(
        failure_threshold=settings.failure_threshold,
        open_seconds=settings.open_seconds,
        half_open_requests=settings.half_open_requests,
        lease_seconds=lease_seconds,
        enabled=settings.breaker_enabled,
    )


class Registry:
    def __init__(
        self,
        platforms: Iterable[str],
        settings: Settings,
        lease_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[list[Transition]], None] = lambda changes: None,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._lease_seconds = lease_seconds
        self.on_transition = on_transition
        self._settings = settings
        now = clock()
        policy = policy_from(settings, lease_seconds)
        self._breakers = {name: Breaker(name, policy, state_since=now) for name in platforms}

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(self._breakers)

    def guarded(self, platform: str) -> bool:
        chosen = self._settings.breaker_platforms
        return chosen is None or platform in chosen

    def _breaker(self, platform: str) -> Breaker:
        try:
            return self._breakers[platform]
        except KeyError:
            raise UnknownPlatform(platform) from None

    def _emit(self, changes: list[Transition]) -> None:
        if changes:
            self.on_transition(changes)

    def acquire(self, platform: str) -> Decision:
        return self.acquire_many([platform])[0]

    def report(self, platform: str, permit: str, success: bool) -> Outcome:
        return self.report_many([(platform, permit, success)])[0]

    def acquire_many(self, platforms: list[str]) -> list[Decision]:
        """acquire() for each platform, under one lock and one clock read."""
        breakers = [self._breaker(p) for p in platforms]
        out: list[Decision] = []
        changes: list[Transition] = []
        with self._lock:
            now = self._clock()
            for platform, breaker in zip(platforms, breakers):
                if not self.guarded(platform):
                    out.append(Decision(True, State.CLOSED, None, None))
                    continue
                decision, more = breaker.acquire(now)
                out.append(decision)
                if more:
                    changes.extend(more)
        self._emit(changes)
        return out

    def report_many(self, reports: list[tuple[str, str, bool]]) -> list[Outcome]:
        """report() for each (platform, permit, success), under one lock and one clock read."""
        breakers = [self._breaker(p) for p, _, _ in reports]
        out: list[Outcome] = []
        changes: list[Transition] = []
        with self._lock:
            now = self._clock()
            for (platform, permit, success), breaker in zip(reports, breakers):
                if not self.guarded(platform):
                    out.append(Outcome(False, State.CLOSED, "unguarded"))
                    continue
                outcome, more = breaker.report(permit, success, now)
                out.append(outcome)
                if more:
                    changes.extend(more)
        self._emit(changes)
        return out

    def reset(self, platform: str | None = None, reason: str = "reset by operator") -> list[str]:
        """Close one breaker or all; return the platforms reset."""
        names = [platform] if platform is not None else list(self._breakers)
        breakers = [self._breaker(name) for name in names]
        changes: list[Transition] = []
        with self._lock:
            now = self._clock()
            for breaker in breakers:
                changes.extend(breaker.reset(now, reason))
        self._emit(changes)
        return names

    def tick(self) -> None:
        """Let time-driven transitions happen even when no caller asks."""
        changes: list[Transition] = []
        with self._lock:
            now = self._clock()
            for breaker in self._breakers.values():
                changes.extend(breaker.advance(now))
        self._emit(changes)

    def apply_settings(self, settings: Settings) -> None:
        """Take new settings live: state, counters and open deadlines survive."""
        policy = policy_from(settings, self._lease_seconds)
        changes: list[Transition] = []
        with self._lock:
            self._settings = settings
            now = self._clock()
            for breaker in self._breakers.values():
                if breaker.policy != policy:
                    changes.extend(breaker.set_policy(policy, now))
        self._emit(changes)

    def status(self) -> list[PlatformStatus]:
        out = []
        changes: list[Transition] = []
        with self._lock:
            now = self._clock()
            for name, b in self._breakers.items():
                changes.extend(b.advance(now))
                out.append(
                    PlatformStatus(
                        platform=name,
                        guarded=self.guarded(name),
                        enabled=b.policy.enabled,
                        state=b.state,
                        failure_count=b.consecutive_failures,
                        success_rate=b.success_rate,
                        total_requests=b.total_requests,
                        total_successes=b.total_successes,
                        total_failures=b.total_failures,
                        total_rejected=b.total_rejected,
                        trip_count=b.trip_count,
                        retry_after=b.retry_after(now),
                        trials_in_flight=b.trials_in_flight(),
                        seconds_in_state=round(now - b.state_since, 3),
                        last_reason=b.last_reason,
                        generation=b.generation,
                    )
                )
        self._emit(changes)
        return out

    def with_breakers(self, action: Callable[[dict[str, Breaker], float], None]) -> None:
        """Run `action(breakers, now)` under the lock: for snapshot and restore."""
        with self._lock:
            action(self._breakers, self._clock())
