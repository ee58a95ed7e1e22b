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
from typing import Callable


class Interrupted(Exception):
    """The daemon is stopping; the job ends at the next chunk boundary."""


@dataclass
class PurgeStats:
    rows: int = 0
    chunk_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def chunks(self) -> int:
        return len(self.chunk_seconds)

    def as_details(self, prefix: str = "") -> dict[str, float | int]:
        times = self.chunk_seconds or [0.0]
        return {
            f"{prefix}rows_deleted": self.rows,
            f"{prefix}chunks": self.chunks,
            f"{prefix}chunk_ms_p50": round(statistics.median(times) * 1000, 1),
            f"{prefix}chunk_ms_max": round(max(times) * 1000, 1),
            f"{prefix}rows_per_second": round(self.rows / self.seconds) if self.seconds > 0 else 0,
        }


@dataclass(frozen=True)
class ChunkPolicy:
    target_seconds: float = 0.2
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

    Raises Interrupted (with the stats so far in `args[0]`) when `stop` is set.
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
        size = int(min(policy.largest, max(policy.smallest, size * min(2.0, max(0.5, scale)))))
        if policy.pause_ratio > 0:
            stop.wait(elapsed * policy.pause_ratio)
    stats.seconds = clock() - started
    return stats
