"""Breaker state to and from `circuit_breaker_state`, one row per platform and host.

Decisions use the monotonic clock; the table holds wall-clock UTC times, so
an open breaker's deadline means the same thing to the next process.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ratecared.breaker.machine import Breaker, State
from ratecared.breaker.registry import Registry
from ratecared.db import Database, parse_timestamp, timestamp

COLUMNS = (
    "platform", "host", "state", "generation", "consecutive_failures", "trip_count", "opened_at",
    "open_until", "total_requests", "total_successes", "total_failures", "total_rejected",
    "last_reason", "updated_at",
)


def row_of(breaker: Breaker, host: str, now: float, wall: datetime) -> dict[str, Any]:
    """The snapshot row of one breaker at monotonic `now` / wall time `wall`."""
    open_until = opened_at = None
    if breaker.state is State.OPEN:
        open_until = timestamp(wall + timedelta(seconds=breaker.open_until - now))
        opened_at = timestamp(wall - timedelta(seconds=now - breaker.state_since))
    return {
        "platform": breaker.platform,
        "host": host,
        "state": breaker.state.value,
        "generation": breaker.generation,
        "consecutive_failures": breaker.consecutive_failures,
        "trip_count": breaker.trip_count,
        "opened_at": opened_at,
        "open_until": open_until,
        "total_requests": breaker.total_requests,
        "total_successes": breaker.total_successes,
        "total_failures": breaker.total_failures,
        "total_rejected": breaker.total_rejected,
        "last_reason": breaker.last_reason[:255],
        "updated_at": timestamp(wall),
    }


def save(database: Database, registry: Registry, host: str, wall: datetime) -> int:
    """Write every breaker's row; return how many were written."""
    rows: list[dict[str, Any]] = []
    registry.with_breakers(lambda breakers, now: rows.extend(row_of(b, host, now, wall) for b in breakers.values()))
    sql = database.dialect.upsert("circuit_breaker_state", COLUMNS, ("platform", "host"))
    database.executemany(sql, [[row[c] for c in COLUMNS] for row in rows])
    return len(rows)


def restore(database: Database, registry: Registry, host: str, wall: datetime) -> list[str]:
    """Load this host's rows into the registry; return a line per restored non-closed breaker."""
    rows = database.query(
        "SELECT platform, state, generation, consecutive_failures, trip_count, open_until,"
        " total_successes, total_failures, total_rejected, last_reason"
        " FROM circuit_breaker_state WHERE host = ?",
        (host,),
    )
    restored: list[str] = []

    def apply(breakers: dict[str, Breaker], now: float) -> None:
        for platform, state, generation, failures, trips, open_until, ok, bad, rejected, reason in rows:
            breaker = breakers.get(platform)
            if breaker is None:
                continue
            until = parse_timestamp(open_until)
            remaining = (until - wall).total_seconds() if until else 0.0
            breaker.restore(
                State(state), remaining, int(generation), int(failures), int(trips),
                (int(ok), int(bad), int(rejected)), reason or "restored", now,
            )
            if breaker.state is not State.CLOSED:
                restored.append(f"{platform} {breaker.state.value}" + (
                    f" for {max(0.0, breaker.open_until - now):.0f} s more" if breaker.state is State.OPEN else ""))

    registry.with_breakers(apply)
    return restored
