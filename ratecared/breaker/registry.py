"""All platforms' breakers behind one lock, with the clock injected.

The lock is the one owner of every breaker, of the lease ring they share
and of the platform list: it makes half-open admission exact however many
threads ask at once, and a reader gets `BreakerView`s, values taken under
it, never a breaker.

A transition is durable before any reply shows it. Under the lock the
changed breakers go to the journal's memory (no I/O) and every call notes
how far the journal must be on disk for what it saw, including transitions
another thread made and has not yet written. After the lock, and before the
call returns to be answered, `journal.sync` waits until it is; then
`on_transition` hears of the changes. So neither the disk nor a slow
listener (a log file, the snapshot writer) holds up a decision of another
thread, and no reply runs ahead of the disk.

The event loop must not wait for a disk at all: it calls the `*_later`
forms, which return a `Later` (the answer, how far the journal must be on
disk for it, the changes) without waiting; `settled` says whether it may go
out now, and `on_settled` calls back when it may (control/api.py holds the
reply until then). How far is per breaker: an answer about one platform
waits only for that platform's last transition, so one breaker's fsync
does not hold up decisions on the others; status, which shows them all,
waits for all.
"""

from __future__ import annotations

import os
import random
import threading
import time
from array import array
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, Iterator, Protocol, TypeVar

from ratecared.breaker.machine import (
    Breaker, BreakerView, Decision, Leases, Outcome, Policy, Report, State, Transition,
)


class UnknownPlatform(KeyError):
    """The platform is not in the config's platform list."""

    def __str__(self) -> str:
        return f"unknown platform {self.args[0]!r}"


@dataclass(frozen=True, slots=True)
class Reset:
    """What a reset covered: the platforms asked for, and those of them an operator's hold kept as they were."""

    asked: list[str]
    held: list[str]


class Unguarded(ValueError):
    """The platform has no breaker (circuit-breaker-platforms), so there is nothing to hold."""


class Journal(Protocol):
    """Where transitions become durable (ratecared.breaker_journal)."""

    def append(self, views: list[BreakerView]) -> int:
        """Take the breakers as they are after a transition; under the registry's lock, so no I/O.

        Returns the sequence number to `sync` to.
        """

    def sync(self, seq: int) -> None:
        """Return once everything appended up to `seq` is on disk."""


    def synced(self, seq: int) -> bool:
        """Whether `sync(seq)` would return at once; no I/O."""

    def on_synced(self, seq: int, callback: Callable[[], None]) -> None:
        """Call `callback` once everything up to `seq` is on disk, maybe from another thread."""


class MemoryOnly:
    """No journal: transitions live in memory until the snapshot (tests, tools)."""

    def append(self, views: list[BreakerView]) -> int:
        return 0

    def sync(self, seq: int) -> None:
        pass

    def synced(self, seq: int) -> bool:
        return True

    def on_synced(self, seq: int, callback: Callable[[], None]) -> None:
        callback()


T = TypeVar("T")


@dataclass(slots=True)
class Later(Generic[T]):
    """An answer made under the lock that may go out once the journal holds `seq`; then `changes` are heard."""

    value: T
    seq: int
    changes: list[Transition]


class RandomTags:
    """The 64 bits of each permit nobody can guess, from the kernel's random source.

    Drawn 512 at a time: one getrandom() per acquire costs more than the rest
    of the decision. Called under the registry's lock.
    """

    def __init__(self) -> None:
        self._pool: Iterator[int] = iter(())

    def __call__(self) -> int:
        try:
            return next(self._pool)
        except StopIteration:
            self._pool = iter(array("Q", os.urandom(8 * 512)))
            return next(self._pool)


class Registry:
    def __init__(
        self,
        platforms: Iterable[str],
        policy: Policy,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[list[Transition]], None] = lambda changes: None,
        journal: Journal | None = None,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.on_transition = on_transition
        self._journal: Journal = journal or MemoryOnly()
        # The sequence number of the last transitions handed to the journal, in all and per platform.
        self._seq = 0
        self._seq_of: dict[str, int] = {}
        self._policy = policy
        self._leases = Leases(tags=RandomTags())
        # Each back-off's ±10%, so that the hosts that tripped together do not all probe together.
        self._jitter = random.Random(os.urandom(16)).uniform
        now = clock()
        self._breakers = {name: self._new(name, now) for name in platforms}
        self._platforms = tuple(self._breakers)

    def _new(self, platform: str, now: float) -> Breaker:
        return Breaker(platform, self._policy, state_since=now, leases=self._leases,
                       jitter=lambda: self._jitter(0.9, 1.1))

    @property
    def platforms(self) -> tuple[str, ...]:
        # Replaced whole under the lock, read without it: every request's route is looked up by it.
        return self._platforms

    def _breakers_of(self, platforms: Iterable[str]) -> list[Breaker]:
        """The breakers of `platforms`, all or none; call under the lock."""
        try:
            return [self._breakers[name] for name in platforms]
        except KeyError as exc:
            raise UnknownPlatform(exc.args[0]) from None

    def _record(self, changes: list[Transition], now: float, shown: list[Breaker] | None = None) -> int:
        """Hand the changed breakers to the journal; return how far it must be on disk for an answer
        showing the breakers `shown` (None: all of them). Under the lock."""
        if changes:
            changed = dict.fromkeys(change.platform for change in changes)
            self._seq = self._journal.append([self._breakers[name].view(now) for name in changed])
            for name in changed:
                self._seq_of[name] = self._seq
        if shown is None:
            return self._seq
        seq_of = self._seq_of
        if len(shown) == 1:
            return seq_of.get(shown[0].platform, 0)
        return max((seq_of.get(breaker.platform, 0) for breaker in shown), default=0)

    def _settle(self, changes: list[Transition], seen: int) -> None:
        """After the lock, before the answer: what this call saw is on disk, then the listeners hear of it."""
        self._journal.sync(seen)
        if changes:
            self.on_transition(changes)

    def _settled(self, later: "Later[T]") -> T:
        self._settle(later.changes, later.seq)
        return later.value

    def settled(self, later: Later[T]) -> bool:
        """Whether `later` may go out now; if so its changes are heard first. No I/O."""
        if not self._journal.synced(later.seq):
            return False
        self.heard(later)
        return True

    def on_settled(self, later: Later[T], callback: Callable[[], None]) -> None:
        """Call `callback` (maybe from another thread) once `later` may go out; then call `heard`."""
        self._journal.on_synced(later.seq, callback)

    def heard(self, later: Later[T]) -> None:
        """The listeners hear of `later`'s changes: once it is on disk."""
        if later.changes:
            self.on_transition(later.changes)

    def acquire(self, platform: str, uid: int) -> Decision:
        return self.acquire_many([platform], uid)[0]

    def report(self, platform: str, permit: str, report: Report | bool, uid: int) -> Outcome:
        return self.report_many([(platform, permit, report)], uid)[0]

    def acquire_many(self, platforms: list[str], uid: int) -> list[Decision]:
        """acquire() for each platform, for peer `uid`, under one lock and one clock read."""
        return self._settled(self.acquire_many_later(platforms, uid))

    def acquire_many_later(self, platforms: list[str], uid: int) -> Later[list[Decision]]:
        """acquire_many without waiting for the journal (see `Later`)."""
        out: list[Decision] = []
        changes: list[Transition] = []
        with self._lock:
            breakers = self._breakers_of(platforms)
            now = self._clock()
            for breaker in breakers:
                decision, more = breaker.acquire(now, uid)
                out.append(decision)
                changes.extend(more)
            seen = self._record(changes, now, breakers)
        return Later(out, seen, changes)

    def report_many(self, reports: list[tuple[str, str, Report | bool]], uid: int) -> list[Outcome]:
        """report() for each (platform, permit, report), from peer `uid`, under one lock and one clock read."""
        return self._settled(self.report_many_later(reports, uid))

    def report_many_later(self, reports: list[tuple[str, str, Report | bool]], uid: int) -> Later[list[Outcome]]:
        """report_many without waiting for the journal (see `Later`)."""
        out: list[Outcome] = []
        changes: list[Transition] = []
        with self._lock:
            breakers = self._breakers_of(platform for platform, _, _ in reports)
            now = self._clock()
            for (_, permit, report), breaker in zip(reports, breakers):
                outcome, more = breaker.report(permit, report, now, uid)
                out.append(outcome)
                changes.extend(more)
            seen = self._record(changes, now, breakers)
        return Later(out, seen, changes)

    def reset(self, platform: str | None = None, reason: str = "reset by operator", who: str = "daemon") -> list[str]:
        """Close one breaker or all but the held ones; return the platforms asked for."""
        return self._settled(self.reset_later(platform, reason, who)).asked

    def reset_later(self, platform: str | None = None, reason: str = "reset by operator",
                    who: str = "daemon") -> Later[Reset]:
        """reset without waiting for the journal (see `Later`)."""
        changes: list[Transition] = []
        with self._lock:
            names = [platform] if platform is not None else list(self._breakers)
            breakers = self._breakers_of(names)
            now = self._clock()
            for breaker in breakers:
                changes.extend(breaker.reset(now, reason, who))
            held = [breaker.platform for breaker in breakers if breaker.hold is not None]
            seen = self._record(changes, now, breakers)
        return Later(Reset(names, held), seen, changes)

    def hold(self, platform: str, state: State, seconds: float, reason: str, who: str) -> BreakerView:
        return self._settled(self.hold_later(platform, state, seconds, reason, who))

    def release(self, platform: str, who: str) -> BreakerView | None:
        return self._settled(self.release_later(platform, who))

    def hold_later(self, platform: str, state: State, seconds: float, reason: str,
                   who: str) -> Later[BreakerView]:
        """Hold one breaker open or closed (Breaker.hold_for); the answer is the breaker as held.

        Raises UnknownPlatform, Unguarded, or ValueError for a state or a length no hold takes.
        """
        with self._lock:
            breaker = self._breakers_of([platform])[0]
            if not breaker.policy.guards(platform):
                raise Unguarded(f"{platform} has no breaker (circuit-breaker-platforms), so it cannot be held")
            now = self._clock()
            changes = breaker.hold_for(state, seconds, reason, who, now)
            seen = self._record(changes, now, [breaker])
            view = breaker.view(now)
        return Later(view, seen, changes)

    def release_later(self, platform: str, who: str) -> Later[BreakerView | None]:
        """End one breaker's hold; the answer is the breaker released, or None when it had no hold."""
        with self._lock:
            breaker = self._breakers_of([platform])[0]
            now = self._clock()
            changes = breaker.advance(now)
            held = breaker.hold is not None
            changes += breaker.release(who, now)
            seen = self._record(changes, now, [breaker])
            view = breaker.view(now) if held else None
        return Later(view, seen, changes)

    def tick(self) -> None:
        """Let time-driven transitions happen even when no caller asks."""
        changes: list[Transition] = []
        with self._lock:
            now = self._clock()
            for breaker in self._breakers.values():
                changes.extend(breaker.advance(now))
            seen = self._record(changes, now)
        # It answers no one: it waits for the disk only for its own changes' listeners, not for others'
        # transitions (the serve loop calls it from a thread).
        if changes:
            self._settle(changes, seen)

    def apply_policy(self, policy: Policy) -> None:
        """Take a new policy live: state, counters and open deadlines survive."""
        changes: list[Transition] = []
        with self._lock:
            self._policy = policy
            now = self._clock()
            for breaker in self._breakers.values():
                if breaker.policy != policy:
                    changes.extend(breaker.set_policy(policy, now))
            seen = self._record(changes, now)
        self._settle(changes, seen)

    def set_platforms(self, platforms: Iterable[str]) -> None:
        """Guard these platforms from now on: breakers kept keep their state, new ones start closed."""
        with self._lock:
            now = self._clock()
            # A new dict, not edits to the old one: nothing outside the lock
            # ever holds either.
            self._breakers = {
                name: self._breakers[name] if name in self._breakers else self._new(name, now)
                for name in platforms
            }
            self._platforms = tuple(self._breakers)

    def status(self) -> list[BreakerView]:
        """Every breaker as it stands now, in the platform list's order."""
        return self.snapshot()[0]

    def snapshot(self) -> tuple[list[BreakerView], int]:
        """Every breaker as it stands now, and the journal's sequence number these views contain."""
        later = self.status_later()
        self._settled(later)
        return later.value, later.seq

    def status_later(self) -> Later[list[BreakerView]]:
        """status without waiting for the journal (see `Later`)."""
        out: list[BreakerView] = []
        changes: list[Transition] = []
        with self._lock:
            now = self._clock()
            for breaker in self._breakers.values():
                changes.extend(breaker.advance(now))
            seen = self._record(changes, now)
            out = [breaker.view(now) for breaker in self._breakers.values()]
        return Later(out, seen, changes)

    def restore(self, saved: Iterable[BreakerView]) -> list[BreakerView]:
        """Take over breakers an earlier process saved; return them as restored.

        A platform no longer in the list is skipped.
        """
        out: list[BreakerView] = []
        with self._lock:
            now = self._clock()
            for view in saved:
                breaker = self._breakers.get(view.platform)
                if breaker is not None:
                    breaker.restore(view, now)
                    out.append(breaker.view(now))
        return out
