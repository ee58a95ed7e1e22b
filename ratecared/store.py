"""The `store` thread: breaker snapshots, breaker events and settings re-reads, on timers and on demand.

It owns how the last snapshot went; the event loop (STATUS=), `health` and
the stop path read that through `Snapshots.state()`, under its lock. A write
that waits on the database holds only the write lock, so a reader never
waits for the database.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

from ratecared.config import Config
from ratecared.db import DatabaseError

TICK = 1.0


@dataclass(frozen=True)
class SnapshotState:
    last_at: datetime | None = None
    error: str | None = None


class Snapshots:
    """Writes the breaker snapshot through `save(wall_time)` and remembers how it went."""

    def __init__(self, save: Callable[[datetime], Any], log: Any) -> None:
        self._save = save
        self._log = log
        self._writing = threading.Lock()
        self._lock = threading.Lock()
        self._state = SnapshotState()

    def state(self) -> SnapshotState:
        with self._lock:
            return self._state

    def write(self) -> bool:
        with self._writing:
            try:
                self._save(datetime.now(timezone.utc))
            except DatabaseError as exc:
                with self._lock:
                    first, self._state = self._state.error is None, SnapshotState(self._state.last_at, str(exc))
                if first:
                    self._log.warning("snapshot failed; breakers keep working from memory", error=str(exc))
                return False
            with self._lock:
                after, self._state = self._state.error, SnapshotState(datetime.now(timezone.utc), None)
            if after is not None:
                self._log.info("snapshots resumed", after_error=after)
            return True

    def write_within(self, seconds: float) -> bool | None:
        """Write a snapshot, waiting at most `seconds`; None when the database did not answer in time."""
        return within(self.write, seconds)


T = TypeVar("T")


def within(write: Callable[[], T], seconds: float) -> T | None:
    """`write()`, waiting at most `seconds` for it; None when the database did not answer in time.

    For the stop: a database that another process holds locked must not
    hold the daemon past systemd's stop timeout. The write goes on in a
    daemon thread and dies with the process.
    """
    done: list[T] = []
    writer = threading.Thread(target=lambda: done.append(write()), name="final-write", daemon=True)
    writer.start()
    writer.join(seconds)
    return done[0] if done else None


class StoreThread(threading.Thread):
    """Writes snapshots every `snapshot_interval`, re-reads settings every `settings_refresh`, and writes the
    events recorded since it last went round (`write_events`, which may wait on the database)."""

    def __init__(self, snapshots: Snapshots, refresh_settings: Callable[[], Any],
                 config: Callable[[], Config], write_events: Callable[[], None] = lambda: None) -> None:
        super().__init__(name="store", daemon=True)
        self._snapshots = snapshots
        self._write_events = write_events
        self._refresh_settings = refresh_settings
        self._config = config
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._heartbeat = time.monotonic()

    def heartbeat(self) -> float:
        """When the thread last went round its loop (monotonic): the watchdog's sign of progress."""
        with self._lock:
            return self._heartbeat

    def _beat(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._heartbeat = now
        return now

    def run(self) -> None:
        # The last times, not the next: intervals changed by a reload count from them at once.
        last_snapshot = last_settings = float("-inf")
        while not self._stopping.is_set():
            now = self._beat()
            urgent = self._wake.is_set()
            self._wake.clear()
            daemon = self._config().daemon
            if now >= last_settings + daemon.settings_refresh:
                self._refresh_settings()
                last_settings = now
            if urgent or now >= last_snapshot + daemon.snapshot_interval:
                self._snapshots.write()
                last_snapshot = now
            self._write_events()
            now = self._beat()
            due = min(last_snapshot + daemon.snapshot_interval, last_settings + daemon.settings_refresh, now + TICK)
            self._wake.wait(max(0.0, due - now))

    def wake(self) -> None:
        """Write a snapshot now (a transition) and look at the intervals again (a reload)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
