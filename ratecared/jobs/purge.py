"""Deletes in chunks, each committed on its own, sized toward a target time.

One huge DELETE holds locks and undo for minutes and can take as long again
to roll back (research/retention.md). Here every chunk is one short
autocommitted statement; the chunk size adapts so a statement takes about
`target_seconds`; a pause proportional to the chunk's time leaves room for
the app's own queries; and a stop request ends the loop between chunks.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ratecared.db import Database
from ratecared.job_contract import ChunkPolicy, Interrupted, Stalled, unthrottled


@dataclass
class PurgeStats:
    rows: int = 0
    chunk_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    # Time spent waiting for the throttle, and the last reason it gave.
    paused_seconds: float = 0.0
    paused_for: str | None = None

    @property
    def chunks(self) -> int:
        return len(self.chunk_seconds)

    def add(self, other: "PurgeStats") -> "PurgeStats":
        return PurgeStats(self.rows + other.rows, self.chunk_seconds + other.chunk_seconds,
                          self.seconds + other.seconds, self.paused_seconds + other.paused_seconds,
                          other.paused_for or self.paused_for)

    def as_details(self, prefix: str = "") -> dict[str, Any]:
        times = self.chunk_seconds or [0.0]
        details: dict[str, Any] = {
            f"{prefix}rows_deleted": self.rows,
            f"{prefix}chunks": self.chunks,
            f"{prefix}chunk_ms_p50": round(statistics.median(times) * 1000, 1),
            f"{prefix}chunk_ms_max": round(max(times) * 1000, 1),
            f"{prefix}rows_per_second": round(self.rows / self.seconds) if self.seconds > 0 else 0,
        }
        if self.paused_for is not None:
            details.update({f"{prefix}paused_seconds": round(self.paused_seconds, 1),
                            f"{prefix}paused_for": self.paused_for})
        return details


class PurgeInterrupted(Interrupted):
    """A stop between two chunks, or the run's deadline: the purge's stats so far, for the job to add its own
    work to."""

    def __init__(self, stats: PurgeStats, reason: str | None = None) -> None:
        super().__init__(stats.rows, stats.as_details() if stats.chunks or stats.paused_for else {}, reason)
        self.stats = stats


# Chunk sizing (delete_in_chunks): the most a size grows per chunk, and the
# share of the gap by which a faster chunk lowers the time estimate.
GROWTH = 1.25
SMOOTHING = 0.25


def _ignore(stats: PurgeStats) -> None:
    """No one follows this purge's progress."""


def delete_in_chunks(
    delete_chunk: Callable[[int], tuple[int, bool]],
    stop: threading.Event,
    policy: ChunkPolicy = ChunkPolicy(),
    clock: Callable[[], float] = time.monotonic,
    on_chunk: Callable[[PurgeStats], None] = _ignore,
    throttle: Callable[[], str | None] = unthrottled,
) -> PurgeStats:
    """Call `delete_chunk(size) -> (rows deleted, finished)` until finished.

    `on_chunk` sees the stats after every chunk (the run's progress).
    `throttle` (ratecared.throttle) is asked before every chunk, and may wait.
    Raises PurgeInterrupted, with the stats so far, when `stop` is set or the
    throttle gives up (Stalled).
    """
    stats = PurgeStats()
    size = policy.initial
    # Seconds per unit of `size`, the estimate chunks are planned on. Sized
    # on the last chunk alone, one fast chunk grew the next 1.5x into a slow
    # patch: single statements ran 2.5-4.5x the target. So a slower chunk
    # raises the estimate at once, a faster one lowers it only by a share
    # of the difference, and a size grows at most GROWTH per chunk.
    per_unit: float | None = None
    started = clock()
    while True:
        waited = clock()
        try:
            paused_for = throttle()
        except Stalled as exc:
            stats.seconds = clock() - started
            raise PurgeInterrupted(stats, str(exc)) from None
        if paused_for is not None:
            stats.paused_seconds += clock() - waited
            stats.paused_for = paused_for
            on_chunk(stats)
        if stop.is_set():
            stats.seconds = clock() - started
            raise PurgeInterrupted(stats)
        begun = clock()
        deleted, finished = delete_chunk(size)
        elapsed = clock() - begun
        stats.rows += deleted
        stats.chunk_seconds.append(elapsed)
        on_chunk(stats)
        if finished:
            break
        observed = elapsed / size
        # A sparse chunk says nothing about how long a full one takes
        # (growing on it made the next, dense chunk overshoot): it may only
        # slow the plan down, also before any dense chunk was seen (a table
        # 30-50% expired, walked by id, has no dense window at all).
        dense = deleted >= size / 2
        if per_unit is None:
            per_unit = observed if dense or elapsed > policy.target_seconds else None
        elif observed > per_unit:
            per_unit = observed
        elif dense:
            per_unit += SMOOTHING * (observed - per_unit)
        if per_unit is not None:
            planned = policy.target_seconds / max(per_unit, 1e-9)
            size = int(min(policy.largest, max(policy.smallest, min(size * GROWTH, planned))))
        if policy.pause_ratio > 0:
            stop.wait(elapsed * policy.pause_ratio)
    stats.seconds = clock() - started
    return stats


def delete_before(
    db: Database, table: str, column: str, before: str, stop: threading.Event, policy: ChunkPolicy = ChunkPolicy(),
    on_chunk: Callable[[PurgeStats], None] = _ignore, throttle: Callable[[], str | None] = unthrottled,
) -> PurgeStats:
    """Delete rows of `table` whose `column` < `before`, walking that column's index.

    A keyset on (column, id) starts each SELECT where the last chunk ended,
    so rows already deleted are never scanned again; each chunk is then
    deleted by primary key.
    """
    last: tuple[Any, int] | None = None

    def chunk(size: int) -> tuple[int, bool]:
        nonlocal last
        if last is None:
            rows = db.query(f"SELECT id, {column} FROM {table} WHERE {column} < ? ORDER BY {column}, id LIMIT ?",
                            (before, size))
        else:
            rows = db.query(
                f"SELECT id, {column} FROM {table} WHERE {column} < ?"
                f" AND ({column} > ? OR ({column} = ? AND id > ?)) ORDER BY {column}, id LIMIT ?",
                (before, last[0], last[0], last[1], size),
            )
        if not rows:
            return 0, True
        last = (rows[-1][1], rows[-1][0])
        ids = [row[0] for row in rows]
        marks = ", ".join("?" for _ in ids)
        deleted = db.execute(f"DELETE FROM {table} WHERE id IN ({marks}) AND {column} < ?", (*ids, before))
        return deleted, len(rows) < size

    return delete_in_chunks(chunk, stop, policy, on_chunk=on_chunk, throttle=throttle)


def delete_id_windows(
    db: Database, table: str, column: str, before: str, low: int, end: int, stop: threading.Event,
    policy: ChunkPolicy = ChunkPolicy(), on_chunk: Callable[[PurgeStats], None] = _ignore,
    throttle: Callable[[], str | None] = unthrottled,
) -> PurgeStats:
    """Delete rows of `table` with `column` < `before` and `low` <= id < `end`, in windows of ids."""
    return in_id_windows(
        db, table, low, end,
        lambda first, upper: db.execute(f"DELETE FROM {table} WHERE id >= ? AND id < ? AND {column} < ?",
                                        (first, upper, before)),
        stop, policy, on_chunk, throttle)


def in_id_windows(
    db: Database, table: str, low: int, end: int, act: Callable[[int, int], int], stop: threading.Event,
    policy: ChunkPolicy = ChunkPolicy(), on_chunk: Callable[[PurgeStats], None] = _ignore,
    throttle: Callable[[], str | None] = unthrottled,
) -> PurgeStats:
    """Call `act(first, upper) -> rows` for windows [first, upper) of `table`'s ids from `low` to `end`,
    sized as delete_in_chunks sizes them.

    Walking the primary key visits pages in order and sends no rows to
    Python; a window that finds few rows jumps over the gap to the next id.
    """
    if low >= end:
        return PurgeStats()
    position = low

    def chunk(size: int) -> tuple[int, bool]:
        nonlocal position
        upper = min(position + size, end)
        done = act(position, upper)
        position = upper
        if done < size // 2 and position < end:
            following = db.query(f"SELECT MIN(id) FROM {table} WHERE id >= ? AND id < ?", (position, end))[0][0]
            position = end if following is None else int(following)
        return done, position >= end

    return delete_in_chunks(chunk, stop, policy, on_chunk=on_chunk, throttle=throttle)
