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


@dataclass
class PurgeStats:
    rows: int = 0
    chunk_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def chunks(self) -> int:
        return len(self.chunk_seconds)

    def add(self, other: "PurgeStats") -> "PurgeStats":
        return PurgeStats(self.rows + other.rows, self.chunk_seconds + other.chunk_seconds,
                          self.seconds + other.seconds)

    def as_details(self, prefix: str = "") -> dict[str, float | int]:
        times = self.chunk_seconds or [0.0]
        return {
            f"{prefix}rows_deleted": self.rows,
            f"{prefix}chunks": self.chunks,
            f"{prefix}chunk_ms_p50": round(statistics.median(times) * 1000, 1),
            f"{prefix}chunk_ms_max": round(max(times) * 1000, 1),
            f"{prefix}rows_per_second": round(self.rows / self.seconds) if self.seconds > 0 else 0,
        }


class Interrupted(Exception):
    """The daemon is stopping; the job ends at the next chunk boundary.

    It carries what the run did before it stopped, so the run's record shows
    the rows it deleted or wrote rather than nothing.
    """

    def __init__(self, stats: PurgeStats | None = None) -> None:
        super().__init__("the daemon was stopping")
        self.stats = stats or PurgeStats()
        self.rows = self.stats.rows
        self.details: dict[str, Any] = self.stats.as_details() if self.stats.chunks else {}

    def including(self, rows: int, details: dict[str, Any]) -> "Interrupted":
        """This interruption with the work the job did before it added."""
        self.rows += rows
        self.details = {**details, **self.details}
        return self


@dataclass(frozen=True)
class ChunkPolicy:
    target_seconds: float = 0.1
    pause_ratio: float = 0.1
    initial: int = 5000
    smallest: int = 500
    largest: int = 100_000


def delete_in_chunks(
    delete_chunk: Callable[[int], tuple[int, bool]],
    stop: threading.Event,
    policy: ChunkPolicy = ChunkPolicy(),
    clock: Callable[[], float] = time.monotonic,
) -> PurgeStats:
    """Call `delete_chunk(size) -> (rows deleted, finished)` until finished.

    Raises Interrupted, with the stats so far, when `stop` is set.
    """
    stats = PurgeStats()
    size = policy.initial
    started = clock()
    while True:
        if stop.is_set():
            stats.seconds = clock() - started
            raise Interrupted(stats)
        begun = clock()
        deleted, finished = delete_chunk(size)
        elapsed = clock() - begun
        stats.rows += deleted
        stats.chunk_seconds.append(elapsed)
        if finished:
            break
        scale = policy.target_seconds / max(elapsed, 1e-4)
        if deleted < size / 2:
            # A sparse chunk says nothing about how long a full one takes:
            # growing on it made the next, dense chunk overshoot.
            scale = min(scale, 1.0)
        size = int(min(policy.largest, max(policy.smallest, size * min(1.5, max(0.5, scale)))))
        if policy.pause_ratio > 0:
            stop.wait(elapsed * policy.pause_ratio)
    stats.seconds = clock() - started
    return stats


def delete_before(
    db: Database, table: str, column: str, before: str, stop: threading.Event, policy: ChunkPolicy = ChunkPolicy()
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

    return delete_in_chunks(chunk, stop, policy)


def delete_id_windows(
    db: Database, table: str, column: str, before: str, low: int, end: int, stop: threading.Event,
    policy: ChunkPolicy = ChunkPolicy(),
) -> PurgeStats:
    """Delete rows of `table` with `column` < `before` and `low` <= id < `end`, in windows of ids.

    Walking the primary key visits pages in order and sends no rows to
    Python; a window that finds few rows jumps over the gap to the next id.
    """
    if low >= end:
        return PurgeStats()
    position = low

    def chunk(size: int) -> tuple[int, bool]:
        nonlocal position
        upper = min(position + size, end)
        deleted = db.execute(f"DELETE FROM {table} WHERE id >= ? AND id < ? AND {column} < ?",
                             (position, upper, before))
        position = upper
        if deleted < size // 2 and position < end:
            following = db.query(f"SELECT MIN(id) FROM {table} WHERE id >= ? AND id < ?", (position, end))[0][0]
            position = end if following is None else int(following)
        return deleted, position >= end

    return delete_in_chunks(chunk, stop, policy)
