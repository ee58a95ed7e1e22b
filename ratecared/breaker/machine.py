"""One platform's circuit breaker as a pure state machine.

No clock, no lock, no I/O: every method takes `now` (monotonic seconds) and
returns what happened, so every rule is tested with plain numbers.

The design follows gobreaker: a state plus a generation that advances on each
transition. A permit carries the generation it was issued in; a report for an
older generation is answered but not counted. Unlike gobreaker, permits are
leases: a half-open trial that is not reported in time counts as a failure,
so no breaker can stay stuck in HALF_OPEN.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field


class State(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Policy:
    """The settings that drive a breaker; replaced live without losing state."""

    failure_threshold: int = 5
    open_seconds: float = 600.0
    half_open_requests: int = 3
    lease_seconds: float = 30.0
    enabled: bool = True


@dataclass(frozen=True)
class Transition:
    platform: str
    old: State
    new: State
    reason: str
    generation: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    state: State
    permit: str | None
    retry_after: float | None


@dataclass(frozen=True)
class Outcome:
    counted: bool
    state: State
    # Why a report was not counted: stale (an earlier state), unknown
    # (never issued, already reported or lease expired), disabled.
    reason: str | None = None


@dataclass
class _Lease:
    generation: int
    expires: float
    trial: bool


# Leases of callers that never report are dropped oldest first past this.
MAX_LEASES = 100_000


@dataclass
class Breaker:
    platform: str
    policy: Policy = field(default_factory=Policy)
    state: State = State.CLOSED
    generation: int = 0
    consecutive_failures: int = 0
    open_until: float = 0.0
    state_since: float = 0.0
    trip_count: int = 0
    half_open_admitted: int = 0
    half_open_successes: int = 0
    total_successes: int = 0
    total_failures: int = 0
    total_rejected: int = 0
    last_reason: str = "started"
    _leases: OrderedDict[str, _Lease] = field(default_factory=OrderedDict)
    _trials: dict[str, float] = field(default_factory=dict)
    _seq: int = 0

    # -- queries -----------------------------------------------------------

    @property
    def total_requests(self) -> int:
        return self.total_successes + self.total_failures

    @property
    def success_rate(self) -> float | None:
        """Percent of counted calls that succeeded; None before any call."""
        if not self.total_requests:
            return None
        return round(100.0 * self.total_successes / self.total_requests, 1)

    def retry_after(self, now: float) -> float | None:
        if self.state is State.OPEN:
            return max(0.0, round(self.open_until - now, 3))
        if self.state is State.HALF_OPEN and self.half_open_admitted >= self.policy.half_open_requests:
            return max(0.0, round(min(self._trials.values(), default=now) - now, 3))
        return None

    def trials_in_flight(self) -> int:
        return len(self._trials)

    # -- commands ----------------------------------------------------------

    def advance(self, now: float) -> list[Transition]:
        """Apply what time alone decides: open timeout, expired leases."""
        changes: list[Transition] = []
        if self.state is State.OPEN and now >= self.open_until:
            changes.append(self._move(State.HALF_OPEN, now, f"open for {self.policy.open_seconds:g} s"))
        if self.state is State.HALF_OPEN:
            expired = [p for p, deadline in self._trials.items() if deadline <= now]
            if expired:
                for permit in expired:
                    self._leases.pop(permit, None)
                self.total_failures += len(expired)
                changes.append(
                    self._trip(now, f"trial call not reported within its {self.policy.lease_seconds:g} s lease")
                )
        while self._leases:
            permit, lease = next(iter(self._leases.items()))
            if lease.expires > now and len(self._leases) <= MAX_LEASES:
                break
            self._leases.popitem(last=False)
        return changes

    def acquire(self, now: float) -> tuple[Decision, list[Transition]]:
        """May the caller make one call now? An allowed call gets a permit to report."""
        changes = self.advance(now)
        if not self.policy.enabled or self.state is State.CLOSED:
            return Decision(True, self.state, self._issue(now, trial=False), None), changes
        if self.state is State.HALF_OPEN and self.half_open_admitted < self.policy.half_open_requests:
            self.half_open_admitted += 1
            return Decision(True, self.state, self._issue(now, trial=True), None), changes
        self.total_rejected += 1
        return Decision(False, self.state, None, self.retry_after(now)), changes

    def report(self, permit: str, success: bool, now: float) -> tuple[Outcome, list[Transition]]:
        """Record how a permitted call went."""
        changes = self.advance(now)
        lease = self._leases.pop(permit, None)
        if lease is None:
            return Outcome(False, self.state, "unknown"), changes
        self._trials.pop(permit, None)
        if lease.generation != self.generation:
            return Outcome(False, self.state, "stale"), changes
        if not self.policy.enabled:
            return Outcome(False, self.state, "disabled"), changes
        if success:
            self.total_successes += 1
            self.consecutive_failures = 0
            if self.state is State.HALF_OPEN:
                self.half_open_successes += 1
                if self.half_open_successes >= self.policy.half_open_requests:
                    changes.append(self._move(State.CLOSED, now, f"{self.half_open_successes} trial calls succeeded"))
        else:
            self.total_failures += 1
            self.consecutive_failures += 1
            if self.state is State.HALF_OPEN:
                changes.append(self._trip(now, "trial call failed"))
            elif self.consecutive_failures >= self.policy.failure_threshold:
                changes.append(self._trip(now, f"{self.consecutive_failures} consecutive failures"))
        return Outcome(True, self.state, None), changes

    def reset(self, now: float, reason: str = "reset by operator") -> list[Transition]:
        """Back to CLOSED with clean failure counts; totals are kept."""
        self.consecutive_failures = 0
        if self.state is State.CLOSED:
            return []
        return [self._move(State.CLOSED, now, reason)]

    def set_policy(self, policy: Policy, now: float) -> list[Transition]:
        """Adopt new settings, keeping state, counters and the open deadline's start."""
        old, self.policy = self.policy, policy
        changes: list[Transition] = []
        if self.state is State.OPEN and old.open_seconds != policy.open_seconds:
            self.open_until += policy.open_seconds - old.open_seconds
        if self.state is State.HALF_OPEN and self.half_open_successes >= policy.half_open_requests:
            changes.append(self._move(State.CLOSED, now, f"{self.half_open_successes} trial calls succeeded"))
        changes.extend(self.advance(now))
        return changes

    # -- persistence ---------------------------------------------------------

    def restore(self, state: State, open_remaining: float, generation: int, consecutive_failures: int,
                trip_count: int, totals: tuple[int, int, int], reason: str, now: float) -> None:
        """Take over a snapshot taken by an earlier run of the daemon.

        An open breaker stays open for what was left of its timeout (never
        more than the timeout); a half-open one starts its trials afresh,
        because the old permits died with the old process.
        """
        self.generation = generation + 1
        self.consecutive_failures = consecutive_failures
        self.trip_count = trip_count
        self.total_successes, self.total_failures, self.total_rejected = totals
        self.last_reason = reason
        self.state_since = now
        self._leases.clear()
        self._trials.clear()
        self.half_open_admitted = self.half_open_successes = 0
        self.state = state
        if state is State.OPEN:
            remaining = min(max(open_remaining, 0.0), self.policy.open_seconds)
            self.open_until = now + remaining

    # -- internals -----------------------------------------------------------

    def _issue(self, now: float, trial: bool) -> str:
        self._seq += 1
        permit = f"{self.platform}.{self.generation}.{self._seq}"
        self._leases[permit] = _Lease(self.generation, now + self.policy.lease_seconds, trial)
        if trial:
            self._trials[permit] = now + self.policy.lease_seconds
        return permit

    def _trip(self, now: float, reason: str) -> Transition:
        self.trip_count += 1
        self.open_until = now + self.policy.open_seconds
        return self._move(State.OPEN, now, reason)

    def _move(self, new: State, now: float, reason: str) -> Transition:
        old = self.state
        self.state = new
        self.generation += 1
        self.state_since = now
        self.last_reason = reason
        self.half_open_admitted = self.half_open_successes = 0
        self._trials.clear()
        if new is State.CLOSED:
            self.consecutive_failures = 0
        return Transition(self.platform, old, new, reason, self.generation)
