"""One platform's circuit breaker as a pure state machine.

No clock, no lock, no I/O: every method takes `now` (monotonic seconds) and
returns what happened, so every rule is tested with plain numbers.

The design follows gobreaker: a state plus a generation that advances on each
transition, and the generation's `Counts` as one value that a transition
replaces whole. A permit carries the generation it was issued in; a report
for an older generation is answered but not counted. Unlike gobreaker,
permits are leases: a half-open trial that is not reported in time counts as
a failure, so no breaker can stay stuck in HALF_OPEN.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any


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
    # Which platforms have a breaker (circuit-breaker-platforms); None: every one.
    platforms: frozenset[str] | None = None

    def guards(self, platform: str) -> bool:
        return self.platforms is None or platform in self.platforms


@dataclass(frozen=True)
class Counts:
    """What a breaker has counted in its current generation, as gobreaker's Counts.

    A value, never changed in place: a call or a report makes the next one
    and a transition starts a new one (`Breaker._move`), so no path can clear
    one counter and forget another.
    """

    # Half-open trial calls admitted.
    trials: int = 0
    successes: int = 0
    consecutive_failures: int = 0

    def on_trial(self) -> Counts:
        return replace(self, trials=self.trials + 1)

    def on_trial_returned(self) -> Counts:
        return replace(self, trials=self.trials - 1)

    def on_success(self) -> Counts:
        return replace(self, successes=self.successes + 1, consecutive_failures=0)

    def on_failure(self) -> Counts:
        return replace(self, consecutive_failures=self.consecutive_failures + 1)

    def next_generation(self, state: State) -> Counts:
        """The counts a generation in `state` starts from."""
        # The failure streak outlives OPEN and HALF_OPEN, so that status and
        # the snapshot show what tripped the breaker; only a close ends it.
        return Counts(consecutive_failures=0 if state is State.CLOSED else self.consecutive_failures)


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
    # (never issued, already reported or lease expired), disabled, unguarded.
    reason: str | None = None


@dataclass(frozen=True)
class BreakerView:
    """One breaker as it stood at one moment: what status, the API and the snapshot show.

    Times are relative to that moment (seconds until retry, seconds in the
    state), so each reader anchors them to its own clock.
    """

    platform: str
    state: State
    generation: int
    failure_count: int
    trip_count: int
    total_successes: int
    total_failures: int
    total_rejected: int
    retry_after: float | None
    seconds_in_state: float
    last_reason: str
    # What the policy in force decides, and the trials that die with their
    # process: a snapshot does not hold them and a restore ignores them.
    guarded: bool = True
    enabled: bool = True
    trials_in_flight: int = 0

    @property
    def total_requests(self) -> int:
        return self.total_successes + self.total_failures

    @property
    def success_rate(self) -> float | None:
        """Percent of counted calls that succeeded; None before any call."""
        if not self.total_requests:
            return None
        return round(100.0 * self.total_successes / self.total_requests, 1)

    def as_json(self) -> dict[str, Any]:
        """This breaker's entry in the status reply's `platforms` list."""
        return {
            "platform": self.platform,
            "state": self.state.value,
            "failure_count": self.failure_count,
            "success_rate": self.success_rate,
            "total_requests": self.total_requests,
            "total_successes": self.total_successes,
            "total_failures": self.total_failures,
            "rejected": self.total_rejected,
            "retry_after": self.retry_after,
            "trip_count": self.trip_count,
            "trials_in_flight": self.trials_in_flight,
            "seconds_in_state": self.seconds_in_state,
            "last_reason": self.last_reason,
            "guarded": self.guarded,
            "enabled": self.enabled,
        }


@dataclass
class _Lease:
    generation: int
    expires: float


# Leases of callers that never report are dropped oldest first past this.
MAX_LEASES = 100_000


@dataclass
class Breaker:
    platform: str
    policy: Policy = field(default_factory=Policy)
    state: State = State.CLOSED
    generation: int = 0
    counts: Counts = field(default_factory=Counts)
    open_until: float = 0.0
    state_since: float = 0.0
    trip_count: int = 0
    total_successes: int = 0
    total_failures: int = 0
    total_rejected: int = 0
    last_reason: str = "started"
    _leases: OrderedDict[str, _Lease] = field(default_factory=OrderedDict)
    # Half-open trials not yet reported, by permit, with their lease deadline.
    _trials: dict[str, float] = field(default_factory=dict)
    _seq: int = 0

    # -- queries -----------------------------------------------------------

    def retry_after(self, now: float) -> float | None:
        if self.state is State.OPEN:
            return max(0.0, round(self.open_until - now, 3))
        if self.state is State.HALF_OPEN and self.counts.trials >= self.policy.half_open_requests:
            return max(0.0, round(min(self._trials.values(), default=now) - now, 3))
        return None

    def view(self, now: float) -> BreakerView:
        return BreakerView(
            platform=self.platform,
            state=self.state,
            generation=self.generation,
            failure_count=self.counts.consecutive_failures,
            trip_count=self.trip_count,
            total_successes=self.total_successes,
            total_failures=self.total_failures,
            total_rejected=self.total_rejected,
            retry_after=self.retry_after(now),
            seconds_in_state=round(now - self.state_since, 3),
            last_reason=self.last_reason,
            guarded=self.policy.guards(self.platform),
            enabled=self.policy.enabled,
            trials_in_flight=len(self._trials),
        )

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
            lease = next(iter(self._leases.values()))
            if lease.expires > now and len(self._leases) <= MAX_LEASES:
                break
            self._leases.popitem(last=False)
        return changes

    def acquire(self, now: float) -> tuple[Decision, list[Transition]]:
        """May the caller make one call now? An allowed call gets a permit to report."""
        if not self.policy.guards(self.platform):
            return Decision(True, State.CLOSED, None, None), []
        changes = self.advance(now)
        if not self.policy.enabled or self.state is State.CLOSED:
            return Decision(True, self.state, self._issue(now, trial=False), None), changes
        if self.state is State.HALF_OPEN and self.counts.trials < self.policy.half_open_requests:
            self.counts = self.counts.on_trial()
            return Decision(True, self.state, self._issue(now, trial=True), None), changes
        self.total_rejected += 1
        return Decision(False, self.state, None, self.retry_after(now)), changes

    def report(self, permit: str, success: bool, now: float) -> tuple[Outcome, list[Transition]]:
        """Record how a permitted call went."""
        if not self.policy.guards(self.platform):
            return Outcome(False, State.CLOSED, "unguarded"), []
        changes = self.advance(now)
        lease = self._leases.pop(permit, None)
        if lease is None:
            return Outcome(False, self.state, "unknown"), changes
        trial = self._trials.pop(permit, None) is not None
        if lease.generation != self.generation:
            return Outcome(False, self.state, "stale"), changes
        if not self.policy.enabled:
            if trial:
                # Disabled breakers count nothing, so the trial's slot goes
                # back; kept, it would leave the breaker half-open with no
                # slot and no lease to expire once breakers are enabled again.
                self.counts = self.counts.on_trial_returned()
            return Outcome(False, self.state, "disabled"), changes
        if success:
            self.total_successes += 1
            self.counts = self.counts.on_success()
            if self.state is State.HALF_OPEN and self.counts.successes >= self.policy.half_open_requests:
                changes.append(self._move(State.CLOSED, now, f"{self.counts.successes} trial calls succeeded"))
        else:
            self.total_failures += 1
            self.counts = self.counts.on_failure()
            if self.state is State.HALF_OPEN:
                changes.append(self._trip(now, "trial call failed"))
            elif self.counts.consecutive_failures >= self.policy.failure_threshold:
                changes.append(self._trip(now, f"{self.counts.consecutive_failures} consecutive failures"))
        return Outcome(True, self.state, None), changes

    def reset(self, now: float, reason: str = "reset by operator") -> list[Transition]:
        """Back to CLOSED with clean failure counts; totals are kept."""
        if self.state is State.CLOSED:
            # No new generation: the calls under way are still counted.
            self.counts = Counts()
            return []
        return [self._move(State.CLOSED, now, reason)]

    def set_policy(self, policy: Policy, now: float) -> list[Transition]:
        """Adopt new settings, keeping state, counters and the open deadline's start."""
        old, self.policy = self.policy, policy
        changes: list[Transition] = []
        if self.state is State.OPEN:
            self.open_until += policy.open_seconds - old.open_seconds
        if self.state is State.HALF_OPEN and self.counts.successes >= policy.half_open_requests:
            changes.append(self._move(State.CLOSED, now, f"{self.counts.successes} trial calls succeeded"))
        changes.extend(self.advance(now))
        return changes

    # -- persistence ---------------------------------------------------------

    def restore(self, saved: BreakerView, now: float) -> None:
        """Take over a breaker as an earlier run of the daemon saved it.

        An open breaker stays open for what was left of its timeout (never
        more than the timeout); a half-open one starts its trials afresh,
        because the old permits died with the old process. The time in the
        state carries on.
        """
        self.state = saved.state
        # Past every generation the old process issued permits in, so none
        # of its permits can pass for one of ours.
        self.generation = saved.generation + 1
        self.counts = Counts(consecutive_failures=saved.failure_count)
        self.trip_count = saved.trip_count
        self.total_successes = saved.total_successes
        self.total_failures = saved.total_failures
        self.total_rejected = saved.total_rejected
        self.last_reason = saved.last_reason
        self.state_since = now - max(0.0, saved.seconds_in_state)
        self._leases.clear()
        self._trials.clear()
        if saved.state is State.OPEN:
            self.open_until = now + min(max(saved.retry_after or 0.0, 0.0), self.policy.open_seconds)

    # -- internals -----------------------------------------------------------

    def _issue(self, now: float, trial: bool) -> str:
        self._seq += 1
        permit = f"{self.platform}.{self.generation}.{self._seq}"
        self._leases[permit] = _Lease(self.generation, now + self.policy.lease_seconds)
        if trial:
            self._trials[permit] = now + self.policy.lease_seconds
        return permit

    def _trip(self, now: float, reason: str) -> Transition:
        self.trip_count += 1
        self.open_until = now + self.policy.open_seconds
        return self._move(State.OPEN, now, reason)

    def _move(self, new: State, now: float, reason: str) -> Transition:
        """The one place a generation ends: new state, fresh counts, no trials."""
        old = self.state
        self.state = new
        self.generation += 1
        self.state_since = now
        self.last_reason = reason
        self.counts = self.counts.next_generation(new)
        self._trials.clear()
        return Transition(self.platform, old, new, reason, self.generation)
