"""One platform's circuit breaker as a pure state machine.

No clock, no lock, no I/O: every method takes `now` (monotonic seconds) and
returns what happened, so every rule is tested with plain numbers.

The design follows gobreaker: a state plus a generation that advances on each
transition, and the generation's `Counts` as one value that a transition
replaces whole. A permit carries the generation it was issued in; a report
for an older generation is answered but not counted. Unlike gobreaker,
permits are leases: a half-open trial that is not reported in time counts as
a failure, so no breaker can stay stuck in HALF_OPEN. A permit is the
caller's alone: a report from another uid is not one of its permits.

A report says more than success or failure (`Kind`): a timeout is a failure
counted apart, a platform's 429 opens the breaker until its Retry-After, and
an ignored call (a 404 for a hotel the platform does not list) counts as
neither and hands a half-open trial's slot back, as gobreaker's exclusions
do. The open time backs off with the trips in a row (`backoff_level`), which
decays by one for each healthy timeout-long period in CLOSED, as Envoy's
ejection multiplier does.
"""

from __future__ import annotations

import enum
import itertools
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple


class State(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Kind(str, enum.Enum):
    """What a reported call counts as."""

    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    IGNORED = "ignored"
    # A success slower than the policy's slow_call_ms: the daemon's verdict, never a caller's report.
    SLOW = "slow"


# What a caller may report.
REPORTED = frozenset(Kind) - {Kind.SLOW}
# What counts towards tripping.
FAILING = frozenset({Kind.FAILURE, Kind.TIMEOUT, Kind.RATE_LIMITED, Kind.SLOW})


class Report(NamedTuple):
    """How a permitted call went, as the caller reports it."""

    kind: Kind
    duration_ms: float = 0.0
    # rate_limited: the seconds until the platform takes calls again, and its answer as it came
    # (the Retry-After header's value), which the reason quotes.
    retry_after: float | None = None
    answer: str | None = None


SUCCESS = Report(Kind.SUCCESS)
FAILURE = Report(Kind.FAILURE)
# The seed's `success: true|false`.
_OF_BOOL = {True: SUCCESS, False: FAILURE}


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
    # A success slower than this counts as a failure; 0: off.
    slow_call_ms: float = 0.0
    # The open time is multiplied by this for each trip in a row; 1: the seed's fixed timeout.
    backoff_multiplier: float = 1.0
    max_open_seconds: float = 3600.0

    def guards(self, platform: str) -> bool:
        return self.platforms is None or platform in self.platforms

    def open_cap(self) -> float:
        """The longest a breaker stays open. Never under the timeout itself: a cap below it would
        shorten the seed's own open time."""
        return max(self.max_open_seconds, self.open_seconds)

    def open_time(self, level: int, jitter: float) -> float:
        """Seconds open after the `level`-th trip in a row, `jitter` being a factor near 1."""
        if self.backoff_multiplier == 1.0:
            return self.open_seconds
        cap = self.open_cap()
        # Past 200 the cap has long been reached, whatever the multiplier; the power would overflow. The
        # jitter applies at the cap too, downwards, or every host at the cap would probe together.
        return min(min(self.open_seconds * self.backoff_multiplier ** min(level - 1, 200), cap) * jitter, cap)


class Counts(NamedTuple):
    """What a breaker has counted in its current generation, as gobreaker's Counts.

    A value, never changed in place: a call or a report makes the next one
    and a transition starts a new one (`Breaker._move`), so no path can clear
    one counter and forget another. A named tuple, as Decision and Outcome:
    each call makes one, and a tuple is the cheapest value Python builds.
    """

    # Half-open trial calls admitted.
    trials: int = 0
    successes: int = 0
    consecutive_failures: int = 0
    # Of those failures, the timeouts and the slow successes, which a trip's reason names.
    timeouts: int = 0
    slow: int = 0

    def on_trial(self) -> Counts:
        return self._replace(trials=self.trials + 1)

    def on_trial_returned(self) -> Counts:
        return self._replace(trials=self.trials - 1)

    def on_success(self) -> Counts:
        return Counts(self.trials, self.successes + 1)

    def on_failure(self, kind: Kind = Kind.FAILURE) -> Counts:
        return Counts(self.trials, self.successes, self.consecutive_failures + 1,
                      self.timeouts + (kind is Kind.TIMEOUT), self.slow + (kind is Kind.SLOW))

    def next_generation(self, state: State) -> Counts:
        """The counts a generation in `state` starts from."""
        # The failure streak outlives OPEN and HALF_OPEN, so that status and
        # the snapshot show what tripped the breaker; only a close ends it.
        return Counts(consecutive_failures=0 if state is State.CLOSED else self.consecutive_failures)


@dataclass(frozen=True)
class Transition:
    """A new generation of one breaker: a change of state, or an operator's hold, release or reset."""

    platform: str
    old: State
    new: State
    reason: str
    generation: int
    # What made it: "transition" (the breaker's own rules), "reset", "hold" or "release".
    kind: str = "transition"
    # Who: "daemon", or the operator as access.who names the peer.
    who: str = "daemon"


# The longest hold an operator may set: a month.
MAX_HOLD_SECONDS = 30 * 86400.0


@dataclass(frozen=True)
class Hold:
    """An operator's hold: the breaker kept `state` (OPEN or CLOSED) whatever the calls do, for a reason."""

    state: State
    reason: str
    by: str


class Decision(NamedTuple):
    allowed: bool
    state: State
    permit: str | None
    retry_after: float | None
    # The operator's hold that decided, and its seconds left.
    hold: Hold | None = None
    hold_seconds_left: float | None = None


class Outcome(NamedTuple):
    counted: bool
    state: State
    # Why a report was not counted: stale (an earlier state), unknown
    # (never issued, already reported or lease expired), disabled, unguarded.
    reason: str | None = None
    # What a counted report counted as, where that is not what it said: SLOW for a slow success.
    counted_as: Kind | None = None


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
    # Trips in a row, decaying while closed: the back-off level.
    backoff_level: int = 0
    # Of total_failures, those of each kind but plain failures; and the ignored calls, counted in neither.
    total_timeouts: int = 0
    total_rate_limited: int = 0
    total_slow: int = 0
    total_ignored: int = 0
    # What the policy in force decides, and the trials that die with their
    # process: a snapshot does not hold them and a restore ignores them.
    guarded: bool = True
    enabled: bool = True
    trials_in_flight: int = 0
    hold: Hold | None = None
    # Seconds until the hold ends by itself.
    hold_seconds_left: float | None = None
    # Transitions into each state since the daemon started (the snapshot keeps only trip_count).
    transitions: dict[State, int] = field(default_factory=dict)

    @property
    def total_requests(self) -> int:
        return self.total_successes + self.total_failures

    @property
    def outcomes(self) -> dict[str, int]:
        """Reported calls by what they counted as; the failures are the plain ones and expired trials."""
        plain = self.total_failures - self.total_timeouts - self.total_rate_limited - self.total_slow
        return {Kind.SUCCESS.value: self.total_successes, Kind.FAILURE.value: plain,
                Kind.TIMEOUT.value: self.total_timeouts, Kind.RATE_LIMITED.value: self.total_rate_limited,
                Kind.SLOW.value: self.total_slow, Kind.IGNORED.value: self.total_ignored}

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
            "backoff_level": self.backoff_level,
            "outcomes": self.outcomes,
            "trials_in_flight": self.trials_in_flight,
            "seconds_in_state": self.seconds_in_state,
            "last_reason": self.last_reason,
            "guarded": self.guarded,
            "enabled": self.enabled,
            "hold": None if self.hold is None else {
                "state": self.hold.state.value, "seconds_left": self.hold_seconds_left, "reason": self.hold.reason,
                "by": self.hold.by},
        }


class Lease(NamedTuple):
    """A half-open trial's permit: issued in `generation`, good until `expires`, for peer `uid`."""

    generation: int
    expires: float
    uid: int


# The leases of calls admitted outside half-open, in all: past this the oldest go.
MAX_LEASES = 100_000
# A permit is 24 hex digits: the first 8 say where its lease is (a slot of
# the lease ring, or TRIAL for a half-open trial), the last 16 are a tag of
# 64 bits the lease must match; the registry draws them at random.
TRIAL = 0xFFFFFFFF
_TAG = (1 << 64) - 1
# A reported lease's deadline: nothing is still due that far back.
_ENDED = float("-inf")


def counter() -> Callable[[], int]:
    """Tags in sequence, 1, 2, …: for a breaker on its own (the registry draws random ones)."""
    return itertools.count(1).__next__


def permit_of(place: int, tag: int) -> str:
    return f"{place << 64 | tag:024x}"


def _place_and_tag(permit: str) -> tuple[int, int] | None:
    """Where a permit's lease is, and its tag; None for what no permit looks like."""
    try:
        value = int(permit, 16)
    except ValueError:
        return None
    return value >> 64, value & _TAG


class Leases:
    """The leases of every call admitted outside half-open, for all the breakers that share it.

    A ring of `cap` slots in plain arrays: the n-th lease takes slot n % cap,
    so once the ring has gone round each new lease takes the place of the
    oldest, and the memory is at most `cap` slots whatever callers do. No
    lease is a Python object of its own: a million calls never reported
    leave no small objects scattered over the heap to pin its memory. A
    lease ends when it is reported, when it runs out (checked as it is
    reported) or when its slot is taken. Trials are not kept here, so no
    other lease ever pushes one out.
    """

    def __init__(self, cap: int = MAX_LEASES, tags: Callable[[], int] | None = None) -> None:
        self.cap = cap
        self.tag = tags or counter()
        self._issued = 0
        self._tags = array("Q")
        self._expires = array("d")
        self._generations = array("q")
        self._uids = array("q")
        self._platforms: list[str] = []

    def issue(self, platform: str, generation: int, expires: float, uid: int) -> str:
        slot = self._issued % self.cap
        self._issued += 1
        tag = self.tag()
        if slot < len(self._tags):
            self._tags[slot] = tag
            self._expires[slot] = expires
            self._generations[slot] = generation
            self._uids[slot] = uid
            self._platforms[slot] = platform
        else:
            self._tags.append(tag)
            self._expires.append(expires)
            self._generations.append(generation)
            self._uids.append(uid)
            self._platforms.append(platform)
        return permit_of(slot, tag)

    def take(self, slot: int, tag: int, platform: str, uid: int, now: float) -> int | None:
        """End the caller's lease in `slot`; return its generation, or None when it is not theirs to report.

        Not theirs: never issued, already reported, run out, pushed out, or
        another platform's or another uid's. Those are left as they are, so
        that a report from someone else can neither use up nor hide the owner's.
        """
        if (not 0 <= slot < len(self._tags) or self._tags[slot] != tag or self._platforms[slot] != platform
                or self._uids[slot] != uid):
            return None
        expires, self._expires[slot] = self._expires[slot], _ENDED
        return self._generations[slot] if expires > now else None


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
    total_timeouts: int = 0
    total_rate_limited: int = 0
    total_slow: int = 0
    total_ignored: int = 0
    last_reason: str = "started"
    # Trips in a row; one less for each timeout-long period closed since `calm_since` (monotonic).
    backoff_level: int = 0
    calm_since: float = 0.0
    # How long this open period lasts, and how it was set: the platform's retry time asked for
    # (kept within the cap whatever the policy becomes), else the jitter factor the back-off drew.
    open_for: float = 0.0
    _asked_open: float | None = None
    _jitter: float = 1.0
    # A factor near 1 for each back-off (the registry draws it at random; none here, so tests know the times).
    jitter: Callable[[], float] = field(default=lambda: 1.0, repr=False)
    # Transitions into each state, by the state entered: what metrics count.
    transitions: dict[State, int] = field(default_factory=lambda: dict.fromkeys(State, 0))
    # An operator's hold, and when it ends by itself (monotonic).
    hold: Hold | None = None
    hold_until: float = 0.0
    # The calls admitted outside half-open; a registry shares one among its breakers.
    leases: Leases = field(default_factory=Leases)
    # Trials not reported and not run out, by tag, of this generation and
    # earlier ones (a late one is answered "stale"): the trials of the
    # generations one lease spans, never pushed out by other leases.
    _trial_leases: dict[int, Lease] = field(default_factory=dict)
    # This generation's trials in flight, by tag, with their lease deadline.
    _trials: dict[int, float] = field(default_factory=dict)

    # -- queries -----------------------------------------------------------

    def retry_after(self, now: float) -> float | None:
        if self.hold is not None and self.hold.state is State.OPEN:
            return max(0.0, round(self.hold_until - now, 3))
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
            backoff_level=self.backoff_level,
            total_timeouts=self.total_timeouts,
            total_rate_limited=self.total_rate_limited,
            total_slow=self.total_slow,
            total_ignored=self.total_ignored,
            guarded=self.policy.guards(self.platform),
            enabled=self.policy.enabled,
            trials_in_flight=len(self._trials),
            transitions=dict(self.transitions),
            hold=self.hold,
            hold_seconds_left=None if self.hold is None else max(0.0, round(self.hold_until - now, 3)),
        )

    # -- commands ----------------------------------------------------------

    def advance(self, now: float) -> list[Transition]:
        """Apply what time alone decides: open timeout, expired leases."""
        changes: list[Transition] = []
        if self.hold is not None:
            if now < self.hold_until:
                # Held: the state stays as the operator set it; no timer or lease of it runs.
                return changes
            changes.append(self._end_hold(now, "hold ended", "daemon"))
        if self.state is State.CLOSED and self.backoff_level:
            periods = int((now - self.calm_since) // self.policy.open_seconds)
            if periods > 0:
                self.backoff_level = max(0, self.backoff_level - periods)
                self.calm_since += periods * self.policy.open_seconds
        if self.state is State.OPEN and now >= self.open_until:
            changes.append(self._move(State.HALF_OPEN, now, f"open for {round(self.open_for, 1):g} s"))
        if self.state is State.HALF_OPEN:
            expired = [deadline for deadline in self._trials.values() if deadline <= now]
            if expired:
                self.total_failures += len(expired)
                changes.append(
                    self._trip(now, f"trial call not reported within its {self.policy.lease_seconds:g} s lease")
                )
        if self._trial_leases:
            for tag in [t for t, lease in self._trial_leases.items() if lease.expires <= now]:
                del self._trial_leases[tag]
        return changes

    def acquire(self, now: float, uid: int) -> tuple[Decision, list[Transition]]:
        """May the caller (peer `uid`) make one call now? An allowed call gets a permit to report."""
        if not self.policy.guards(self.platform):
            return Decision(True, State.CLOSED, None, None), []
        changes = self.advance(now)
        expires = now + self.policy.lease_seconds
        # circuit-breaker-enabled = 0 is the kill switch: every call goes through, holds included.
        if self.hold is not None and self.policy.enabled:
            left = max(0.0, round(self.hold_until - now, 3))
            if self.hold.state is State.OPEN:
                self.total_rejected += 1
                return Decision(False, self.state, None, left, self.hold, left), changes
            return Decision(True, self.state, self.leases.issue(self.platform, self.generation, expires, uid), None,
                            self.hold, left), changes
        if not self.policy.enabled or self.state is State.CLOSED:
            return Decision(True, self.state, self.leases.issue(self.platform, self.generation, expires, uid),
                            None), changes
        if self.state is State.HALF_OPEN and self.counts.trials < self.policy.half_open_requests:
            self.counts = self.counts.on_trial()
            tag = self.leases.tag()
            self._trial_leases[tag] = Lease(self.generation, expires, uid)
            self._trials[tag] = expires
            return Decision(True, self.state, permit_of(TRIAL, tag), None), changes
        self.total_rejected += 1
        return Decision(False, self.state, None, self.retry_after(now)), changes

    def report(self, permit: str, report: Report | bool, now: float, uid: int) -> tuple[Outcome, list[Transition]]:
        """Record how a permitted call went, as peer `uid` reports it; a bool is the seed's success flag."""
        if report is True or report is False:
            report = _OF_BOOL[report]
        if not self.policy.guards(self.platform):
            return Outcome(False, State.CLOSED, "unguarded"), []
        changes = self.advance(now)
        where = _place_and_tag(permit)
        if where is None:
            generation = None
        elif where[0] == TRIAL:
            generation = self._take_trial(where[1], uid)
        else:
            generation = self.leases.take(*where, self.platform, uid, now)
        if generation is None:
            return Outcome(False, self.state, "unknown"), changes
        trial = self._trials.pop(where[1], None) is not None
        if generation != self.generation:
            return Outcome(False, self.state, "stale"), changes
        if not self.policy.enabled:
            if trial:
                # Disabled breakers count nothing, so the trial's slot goes
                # back; kept, it would leave the breaker half-open with no
                # slot and no lease to expire once breakers are enabled again.
                self.counts = self.counts.on_trial_returned()
            return Outcome(False, self.state, "disabled"), changes
        kind = report.kind
        if kind is Kind.SUCCESS and 0 < self.policy.slow_call_ms < report.duration_ms:
            kind = Kind.SLOW
        counted_as = Kind.SLOW if kind is Kind.SLOW else None
        self._count(kind)
        if kind is Kind.IGNORED:
            if trial:
                # Neither a success nor a failure: the trial proved nothing, so its slot goes to another call.
                self.counts = self.counts.on_trial_returned()
            return Outcome(True, self.state, None), changes
        if self.hold is not None:
            # Held closed (a held-open breaker issues no permits): counted, and nothing trips it.
            return Outcome(True, self.state, None, counted_as), changes
        if kind is Kind.SUCCESS:
            self.counts = self.counts.on_success()
            if self.state is State.HALF_OPEN and self.counts.successes >= self.policy.half_open_requests:
                changes.append(self._move(State.CLOSED, now, f"{self.counts.successes} trial calls succeeded"))
            return Outcome(True, self.state, None), changes
        self.counts = self.counts.on_failure(kind)
        if kind is Kind.RATE_LIMITED:
            changes.append(self._trip(now, self._rate_limited_reason(report), report.retry_after))
        elif self.state is State.HALF_OPEN:
            changes.append(self._trip(now, f"trial call {self._failed_how(kind)}"))
        elif self.counts.consecutive_failures >= self.policy.failure_threshold:
            changes.append(self._trip(now, self._streak_reason()))
        return Outcome(True, self.state, None, counted_as), changes

    def reset(self, now: float, reason: str = "reset by operator", who: str = "daemon") -> list[Transition]:
        """Back to CLOSED with clean failure counts; totals are kept. A held breaker is left as held:
        only `release` or the hold's end changes it, as HAProxy's maintenance state."""
        if self.hold is not None:
            return []
        # The operator says the platform is well: the next trip opens for the plain timeout.
        self.backoff_level = 0
        if self.state is State.CLOSED:
            # No new generation: the calls under way are still counted.
            self.counts = Counts()
            return []
        return [self._move(State.CLOSED, now, reason, "reset", who)]

    def hold_for(self, state: State, seconds: float, reason: str, who: str, now: float) -> list[Transition]:
        """Keep the breaker `state` (OPEN or CLOSED) for `seconds`, whatever the calls do; replaces any hold.

        Always a new generation, even in the state it was in: the hold must
        reach the journal before the reply, and the journal keeps generations.
        """
        if state not in (State.OPEN, State.CLOSED):
            raise ValueError(f"a hold keeps a breaker open or closed, not {state.value}")
        if not 0 < seconds <= MAX_HOLD_SECONDS:
            raise ValueError(f"a hold lasts more than 0 s and at most {MAX_HOLD_SECONDS / 86400:g} days")
        changes = self.advance(now)
        self.hold = Hold(state, reason, who)
        self.hold_until = now + seconds
        changes.append(self._move(state, now, f"held {state.value} by {who}: {reason}", "hold", who))
        return changes

    def release(self, who: str, now: float) -> list[Transition]:
        """End the hold now; the breaker goes on from CLOSED. Nothing when there is no hold."""
        if self.hold is None:
            return []
        return [self._end_hold(now, f"released by {who}", who)]

    def set_policy(self, policy: Policy, now: float) -> list[Transition]:
        """Adopt new settings, keeping state, counters and the open deadline's start."""
        old, self.policy = self.policy, policy
        changes: list[Transition] = []
        if self.state is State.OPEN:
            # The open period keeps its start and its draw of jitter; its length follows the new policy.
            length = (policy.open_time(self.backoff_level, self._jitter) if self._asked_open is None
                      else min(self._asked_open, policy.open_cap()))
            self.open_until += length - self.open_for
            self.open_for = length
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
        self.total_timeouts = saved.total_timeouts
        self.total_rate_limited = saved.total_rate_limited
        self.total_slow = saved.total_slow
        self.total_ignored = saved.total_ignored
        self.last_reason = saved.last_reason
        in_state = max(0.0, saved.seconds_in_state)
        self.state_since = now - in_state
        self.backoff_level = max(0, saved.backoff_level)
        # The decay goes on where it was: a period began every timeout since the breaker closed.
        self.calm_since = now - in_state % self.policy.open_seconds
        self._trial_leases.clear()
        self._trials.clear()
        if saved.state is State.OPEN:
            left = min(max(saved.retry_after or 0.0, 0.0), self.policy.open_cap())
            self.open_until = now + left
            # The period as it was set is gone with the old process: kept as it stands, within the cap.
            self._asked_open = self.open_for = in_state + left
        # A hold whose time ran out while no daemon ran ends at the next advance, as a transition of its own.
        self.hold = saved.hold
        self.hold_until = now + min(max(saved.hold_seconds_left or 0.0, 0.0), MAX_HOLD_SECONDS)

    # -- internals -----------------------------------------------------------

    def _take_trial(self, tag: int, uid: int) -> int | None:
        """End the caller's trial lease; return its generation, or None when it is not theirs to report."""
        lease = self._trial_leases.get(tag)
        if lease is None or lease.uid != uid:
            return None
        del self._trial_leases[tag]
        return lease.generation

    def _count(self, kind: Kind) -> None:
        if kind is Kind.SUCCESS:
            self.total_successes += 1
            return
        if kind is Kind.IGNORED:
            self.total_ignored += 1
            return
        self.total_failures += 1
        if kind is Kind.TIMEOUT:
            self.total_timeouts += 1
        elif kind is Kind.RATE_LIMITED:
            self.total_rate_limited += 1
        elif kind is Kind.SLOW:
            self.total_slow += 1

    def _failed_how(self, kind: Kind) -> str:
        if kind is Kind.TIMEOUT:
            return "timed out"
        if kind is Kind.SLOW:
            return f"slower than {self.policy.slow_call_ms:g} ms"
        return "failed"

    def _streak_reason(self) -> str:
        counts = self.counts
        parts = [f"{counts.timeouts} timed out"] if counts.timeouts else []
        if counts.slow:
            parts.append(f"{counts.slow} slower than {self.policy.slow_call_ms:g} ms")
        detail = f" ({', '.join(parts)})" if parts else ""
        return f"{counts.consecutive_failures} consecutive failures{detail}"

    def _rate_limited_reason(self, report: Report) -> str:
        if report.retry_after is None:
            said = f" (Retry-After {report.answer!r} unreadable)" if report.answer else ", with no retry time"
            return f"rate limited by the platform{said}"
        said = report.answer if report.answer is not None else f"{report.retry_after:g}"
        capped = (f"; capped at {self.policy.open_cap():g} s (circuit-breaker-max-open-seconds)"
                  if report.retry_after > self.policy.open_cap() else "")
        return f"rate limited by the platform: Retry-After {said}{capped}"

    def _trip(self, now: float, reason: str, asked: float | None = None) -> Transition:
        """Open: for the platform's retry time when it `asked` for one, else for the back-off's time."""
        self.trip_count += 1
        self.backoff_level += 1
        self._asked_open = asked
        if asked is None:
            self._jitter = self.jitter() if self.policy.backoff_multiplier != 1.0 else 1.0
            self.open_for = self.policy.open_time(self.backoff_level, self._jitter)
        else:
            self.open_for = min(max(asked, 0.0), self.policy.open_cap())
        self.open_until = now + self.open_for
        return self._move(State.OPEN, now, reason)

    def _end_hold(self, now: float, reason: str, who: str) -> Transition:
        self.hold = None
        return self._move(State.CLOSED, now, reason, "release", who)

    def _move(self, new: State, now: float, reason: str, kind: str = "transition", who: str = "daemon") -> Transition:
        """The one place a generation ends: new state, fresh counts, no trials."""
        old = self.state
        self.state = new
        if new is not old:
            self.transitions[new] += 1
        self.generation += 1
        self.state_since = now
        if new is State.CLOSED:
            self.calm_since = now
        self.last_reason = reason
        self.counts = self.counts.next_generation(new)
        self._trials.clear()
        return Transition(self.platform, old, new, reason, self.generation, kind, who)
