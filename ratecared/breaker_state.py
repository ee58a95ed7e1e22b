"""Breaker state to and from `circuit_breaker_state`, one row per platform and host.

The SQL side of the breakers, outside ratecared.breaker so that the pure
machine and the registry never load the database layer. Decisions use the
monotonic clock; the table holds wall-clock UTC times, so an open breaker's
deadline and the start of each state mean the same thing to the next process.
The journal (breaker_journal.py) keeps its lines in the same row format.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping, Protocol, Sequence

from ratecared.breaker.machine import BreakerView, Hold, State
from ratecared.breaker.registry import Registry
from ratecared.db import Database, parse_timestamp, timestamp

COLUMNS = (
    "platform", "host", "state", "generation", "consecutive_failures", "trip_count", "opened_at",
    "open_until", "state_since", "total_requests", "total_successes", "total_failures", "total_rejected",
    "last_reason", "updated_at", "hold_state", "hold_until", "hold_reason", "hold_by", "backoff_level",
    "total_timeouts", "total_rate_limited", "total_slow", "total_ignored",
)
# Counted since migration 007: journal lines written before have none, and read as 0.
_SINCE_007 = ("backoff_level", "total_timeouts", "total_rate_limited", "total_slow", "total_ignored")


def row_of(view: BreakerView, host: str, wall: datetime) -> dict[str, Any]:
    """The snapshot row of a breaker seen at wall time `wall`."""
    since = timestamp(wall - timedelta(seconds=view.seconds_in_state))
    is_open = view.state is State.OPEN
    return {
        "platform": view.platform,
        "host": host,
        "state": view.state.value,
        "generation": view.generation,
        "consecutive_failures": view.failure_count,
        "trip_count": view.trip_count,
        "opened_at": since if is_open else None,
        "open_until": timestamp(wall + timedelta(seconds=view.retry_after or 0.0)) if is_open else None,
        "state_since": since,
        "total_requests": view.total_requests,
        "total_successes": view.total_successes,
        "total_failures": view.total_failures,
        "total_rejected": view.total_rejected,
        "last_reason": view.last_reason[:255],
        "updated_at": timestamp(wall),
        "hold_state": view.hold.state.value if view.hold else None,
        "hold_until": timestamp(wall + timedelta(seconds=view.hold_seconds_left or 0.0)) if view.hold else None,
        "hold_reason": view.hold.reason[:255] if view.hold else None,
        "hold_by": view.hold.by[:255] if view.hold else None,
        "backoff_level": view.backoff_level,
        "total_timeouts": view.total_timeouts,
        "total_rate_limited": view.total_rate_limited,
        "total_slow": view.total_slow,
        "total_ignored": view.total_ignored,
    }


# The columns `view_of` reads, in its order.
SAVED = ("platform", "state", "generation", "consecutive_failures", "trip_count", "open_until", "state_since",
         "opened_at", "total_successes", "total_failures", "total_rejected", "last_reason", "hold_state",
         "hold_until", "hold_reason", "hold_by") + _SINCE_007


def view_of(row: Sequence[Any], wall: datetime) -> BreakerView:
    """A breaker as a row of `SAVED` saved it, seen at wall time `wall`."""
    return view_of_values(dict(zip(SAVED, row)), wall)


def view_of_values(values: Mapping[str, Any], wall: datetime) -> BreakerView:
    """A breaker as a row saved it, by column name, seen at wall time `wall`."""
    until = parse_timestamp(values["open_until"])
    # Rows written before state_since existed know only when an open breaker opened.
    since = parse_timestamp(values["state_since"]) or parse_timestamp(values["opened_at"])
    # Journal lines written before holds existed have no hold keys.
    held = values.get("hold_state")
    hold_until = parse_timestamp(values.get("hold_until"))
    return BreakerView(
        platform=values["platform"],
        state=State(values["state"]),
        generation=int(values["generation"]),
        failure_count=int(values["consecutive_failures"]),
        trip_count=int(values["trip_count"]),
        total_successes=int(values["total_successes"]),
        total_failures=int(values["total_failures"]),
        total_rejected=int(values["total_rejected"]),
        retry_after=(until - wall).total_seconds() if until else None,
        seconds_in_state=(wall - since).total_seconds() if since else 0.0,
        last_reason=values["last_reason"] or "restored",
        hold=Hold(State(held), values.get("hold_reason") or "", values.get("hold_by") or "") if held else None,
        hold_seconds_left=(hold_until - wall).total_seconds() if held and hold_until else None,
        **{name: int(values.get(name) or 0) for name in _SINCE_007},
    )


class Journal(Protocol):
    def fold(self, seq: int) -> None:
        """The snapshot holding everything up to `seq` is written."""


def save(database: Database, registry: Registry, host: str, wall: datetime, journal: Journal | None = None) -> int:
    """Write every breaker's row, then let the journal drop what the rows now hold; return how many were written."""
    views, seq = registry.snapshot()
    rows = [row_of(view, host, wall) for view in views]
    sql = database.dialect.upsert("circuit_breaker_state", COLUMNS, ("platform", "host"))
    database.executemany(sql, [[row[c] for c in COLUMNS] for row in rows])
    if journal is not None:
        journal.fold(seq)
    return len(rows)


def newest(saved: Iterable[BreakerView], journaled: Iterable[BreakerView]) -> list[BreakerView]:
    """Per platform, the later of the snapshot and the journal: the higher generation; the snapshot on a tie.

    A journal line is written as its generation begins, so a snapshot of the
    same generation was taken after it and has the later counters.
    """
    out = {view.platform: view for view in saved}
    for view in journaled:
        if view.platform not in out or view.generation > out[view.platform].generation:
            out[view.platform] = view
    return list(out.values())


def restore(database: Database, registry: Registry, host: str, wall: datetime,
            journaled: Iterable[BreakerView] = ()) -> list[str]:
    """Load this host's rows into the registry, with what the journal has that is newer.

    Return a line per restored non-closed breaker.
    """
    rows = database.query(f"SELECT {', '.join(SAVED)} FROM circuit_breaker_state WHERE host = ?", (host,))
    restored = registry.restore(newest((view_of(row, wall) for row in rows), journaled))
    return [f"{view.platform} {view.state.value}"
            + (f" for {view.retry_after:.0f} s more" if view.state is State.OPEN else "")
            for view in restored if view.state is not State.CLOSED]
