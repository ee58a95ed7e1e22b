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
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from typing import Callable, Iterable, Iterator, Protocol

from ratecared.breaker.machine import Breaker, BreakerView, Decision, Leases, Outcome, Policy, Transition


class UnknownPlatform(KeyError):
    """The platform is not in the config's platform list."""

    def __str__(self) -> str:
        return f"unknown platform {self.args[0]!r}"


class Journal(Protocol):
    """Where transitions become durable (ratecared.breaker_journal)."""

    def append(self, views: list[BreakerView]) -> int:
        """Take the breakers as they are after a transition; under the registry's lock, so no I/O.

        Returns the sequence number to `sync` to.
        """

    def sync(self, seq: int) -> None:
        """Return once everything appended up to `seq` is on disk."""


class MemoryOnly:
    """No journal: transitions live in memory until the snapshot (tests, tools)."""

    def append(self, views: list[BreakerView]) -> int:
        return 0

    def sync(self, seq: int) -> None:
        pass


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
        # The sequence number of the last transitions handed to the journal.
        self._seq = 0
        self._policy = policy
        self._leases = Leases(tags=RandomTags())
        now = clock()
        self._breakers = {name: self._new(name, now) for name in platforms}

    def _new(self, platform: str, now: float) -> Breaker:
        return Breaker(platform, self._policy, state_since=now, leases=self._leases)

    @property
    def platforms(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._breakers)

    def _breakers_of(self, platforms: Iterable[str]) -> list[Breaker]:
        """The breakers of `platforms`, all or none; call under the lock."""
        try:
            return [self._breakers[name] for name in platforms]
        except KeyError as exc:
            raise UnknownPlatform(exc.args[0]) from None

    def _record(self, changes: list[Transition], now: float) -> int:
        """Hand the changed breakers to the journal; return how far it must be on disk. Under the lock."""
        if changes:
            changed = dict.fromkeys(change.platform for change in changes)
            self._seq = self._journal.append([self._breakers[name].view(now) for name in changed])
        return self._seq

    def _settle(self, changes: list[Transition], seen: int) -> None:
        """After the lock, before the answer: what this call saw is on disk, then the listeners hear of it."""
        self._journal.sync(seen)
        if changes:
            self.on_transition(changes)

    def acquire(self, platform: str, uid: int) -> Decision:
        return self.acquire_many([platform], uid)[0]

    def report(self, platform: str, permit: str, success: bool, uid: int) -> Outcome:
        return self.report_many([(platform, permit, success)], uid)[0]

    def acquire_many(self, platforms: list[str], uid: int) -> list[Decision]:
        """acquire() for each platform, for peer `uid`, under one lock and one clock read."""
        out: list[Decision] = []
        changes: list[Transition] = []
        with self._lock:
            breakers = self._breakers_of(platforms)
            now = self._clock()
            for breaker in breakers:
                decision, more = breaker.acquire(now, uid)
                out.append(decision)
                changes.extend(more)
            seen = self._record(changes, now)
        self._settle(changes, seen)
        return out

    def report_many(self, reports: list[tuple[str, str, bool]], uid: int) -> list[Outcome]:
        """report() for each (platform, permit, success), from peer `uid`, under one lock and one clock read."""
        out: list[Outcome] = []
        changes: list[Transition] = []
        with self._lock:
            breakers = self._breakers_of(platform for platform, _, _ in reports)
            now = self._clock()
            for (_, permit, success), breaker in zip(reports, breakers):
                outcome, more = breaker.report(permit, success, now, uid)
                out.append(outcome)
                changes.extend(more)
            seen = self._record(changes, now)
        self._settle(changes, seen)
        return out

    def reset(self, platform: str | None = None, reason: str = "reset by operator") -> list[str]:
        """Close one breaker or all; return the platforms reset."""
        changes: list[Transition] = []
        with self._lock:
            names = [platform] if platform is not None else list(self._breakers)
            breakers = self._breakers_of(names)
            now = self._clock()
            for breaker in breakers:
                changes.extend(breaker.reset(now, reason))
            seen = self._record(changes, now)
        self._settle(changes, seen)
        return names

    def tick(self) -> None:
        """Let time-driven transitions happen even when no caller asks."""
        changes: list[Transition] = []
        with self._lock:
            now = self._clock()
            for breaker in self._breakers.values():
                changes.extend(breaker.advance(now))
            seen = self._record(changes, now)
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

    def status(self) -> list[BreakerView]:
        """Every breaker as it stands now, in the platform list's order."""
        return self.snapshot()[0]

    def snapshot(self) -> tuple[list[BreakerView], int]:
        """Every breaker as it stands now, and the journal's sequence number these views contain."""
        out: list[BreakerView] = []
        changes: list[Transition] = []
        with self._lock:
            now = self._clock()
            for breaker in self._breakers.values():
                changes.extend(breaker.advance(now))
            seen = self._record(changes, now)
            out = [breaker.view(now) for breaker in self._breakers.values()]
        self._settle(changes, seen)
        return out, seen

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
