"""The audit trail, `circuit_breaker_events`: every transition and every operator action, with who.

Events are recorded from any thread into a bounded queue, with no I/O, so
neither a decision nor a reply waits for the database; the store thread
writes them in batches and trims the table. While the database is down the
queue keeps the newest MAX_PENDING; what it had to drop is counted in the log
once it is back. The transitions themselves are durable in the breaker
journal whatever happens to their events.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

from ratecared.breaker.machine import Transition
from ratecared.db import Database, DatabaseError, parse_timestamp, timestamp

MAX_PENDING = 10_000
BATCH = 500
TRIM_EVERY = 3600.0
_COLUMNS = ("at", "host", "platform", "action", "old_state", "new_state", "reason", "who")


@dataclass(frozen=True)
class Event:
    at: datetime
    platform: str | None
    # "transition", "reset", "hold", "release" or "setting".
    action: str
    old_state: str | None
    new_state: str | None
    reason: str
    # "daemon", or the peer as access.who names it.
    who: str


def of_transition(change: Transition, at: datetime) -> Event:
    return Event(at, change.platform, change.kind, change.old.value, change.new.value, change.reason, change.who)


class EventLog:
    def __init__(self, database: Database, host: str, log: Any,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self._db = database
        self._host = host
        self._log = log
        self._clock = clock
        self._lock = threading.Lock()
        # One write at a time (the store thread's, and the stop's last one); a query never waits for it.
        self._writing = threading.Lock()
        # (sequence number, event): what a write took is known by number, whatever was pushed out meanwhile.
        self._pending: deque[tuple[int, Event]] = deque(maxlen=MAX_PENDING)
        self._recorded = 0
        self._dropped = 0
        self._failing = False
        self._trimmed_at = float("-inf")

    def record(self, events: list[Event]) -> None:
        """Queue events for the next write; from any thread, never blocks on I/O."""
        with self._lock:
            self._dropped += max(0, len(self._pending) + len(events) - MAX_PENDING)
            for event in events:
                self._recorded += 1
                self._pending.append((self._recorded, event))

    def waiting(self) -> int:
        """How many events are queued, not yet in the table."""
        with self._lock:
            return len(self._pending)

    def write(self) -> None:
        """Write what is queued, in batches; on a database error keep it for the next call. The store thread's."""
        while True:
            with self._writing:
                if not self._write_batch():
                    return

    def _write_batch(self) -> bool:
        """Write the oldest queued events; False when there were none or the database refused them."""
        with self._lock:
            batch = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
        if not batch:
            return False
        try:
            self._db.executemany(
                f"INSERT INTO circuit_breaker_events ({', '.join(_COLUMNS)})"
                f" VALUES ({', '.join('?' * len(_COLUMNS))})",
                [(timestamp(e.at), self._host, e.platform, e.action, e.old_state, e.new_state, e.reason[:255],
                  e.who[:255]) for _, e in batch])
        except DatabaseError as exc:
            if not self._failing:
                self._log.warning("cannot write breaker events; keeping them until the database answers",
                                  error=str(exc), pending=len(self._pending))
            self._failing = True
            return False
        written = batch[-1][0]
        with self._lock:
            while self._pending and self._pending[0][0] <= written:
                self._pending.popleft()
            dropped, self._dropped = self._dropped, 0
        if self._failing or dropped:
            self._log.info("breaker events written again", **({"lost": dropped} if dropped else {}))
        self._failing = False
        return True

    def trim(self, retention_days: int, monotonic_now: float) -> None:
        """Delete events older than the retention, at most once an hour."""
        if monotonic_now < self._trimmed_at + TRIM_EVERY:
            return
        cutoff = self._clock() - timedelta(days=retention_days)
        try:
            self._db.execute("DELETE FROM circuit_breaker_events WHERE at < ?", (timestamp(cutoff),))
        except DatabaseError as exc:
            self._log.warning("cannot trim breaker events", error=str(exc))
            return
        self._trimmed_at = monotonic_now

    def query(self, platform: str | None, since: datetime | None, limit: int, tz: ZoneInfo) -> list[dict[str, Any]]:
        """Events newest first, in the daemon's zone: those still queued, then the table's.

        The queue is read first: an event written meanwhile is then in both and shown once, and none can be
        in neither. Raises DatabaseError when the table cannot be read.
        """
        with self._lock:
            queued = [e for _, e in reversed(self._pending) if (platform is None or e.platform == platform)
                      and (since is None or e.at >= since)][:limit]
        rows = [(timestamp(parse_timestamp(at)), *rest) for at, *rest in self._rows(platform, since, limit)]
        table = set(rows)
        waiting = [row for row in ((timestamp(e.at), self._host, e.platform, e.action, e.old_state, e.new_state,
                                    e.reason[:255], e.who[:255]) for e in queued) if row not in table]
        return [self._shown(parse_timestamp(at), *rest, tz) for at, *rest in (waiting + rows)[:limit]]

    @staticmethod
    def _shown(at: datetime | None, host: str, platform: str | None, action: str, old: str | None, new: str | None,
               reason: str, who: str, tz: ZoneInfo) -> dict[str, Any]:
        return {"at": at.astimezone(tz).isoformat() if at else None, "host": host, "platform": platform,
                "action": action, "old_state": old, "new_state": new, "reason": reason, "who": who}

    def _rows(self, platform: str | None, since: datetime | None, limit: int) -> list[tuple[Any, ...]]:
        where, params = [], []
        if platform is not None:
            where.append("platform = ?")
            params.append(platform)
        if since is not None:
            where.append("at >= ?")
            params.append(timestamp(since))
        sql = (f"SELECT {', '.join(_COLUMNS)} FROM circuit_breaker_events"
               + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY at DESC, id DESC LIMIT ?")
        return self._db.query(sql, (*params, limit))
