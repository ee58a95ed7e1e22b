"""Chunk sizing in purge.delete_in_chunks, with a scripted delete and an injected clock."""

from __future__ import annotations

import threading

from ratecared.jobs.purge import ChunkPolicy, delete_in_chunks


def sizes_for(rows_per_chunk: list[float], seconds_per_row: float, policy: ChunkPolicy) -> list[int]:
    """Run delete_in_chunks over chunks that find a given share of their window; return the sizes asked."""
    clock = {"now": 0.0}
    asked: list[int] = []

    def chunk(size: int) -> tuple[int, bool]:
        asked.append(size)
        deleted = int(size * rows_per_chunk[len(asked) - 1])
        clock["now"] += deleted * seconds_per_row
        return deleted, len(asked) == len(rows_per_chunk)

    delete_in_chunks(chunk, threading.Event(), policy, clock=lambda: clock["now"])
    return asked


def test_a_sparse_chunk_does_not_grow_the_next_one() -> None:
    policy = ChunkPolicy(target_seconds=0.1, pause_ratio=0, initial=1000, smallest=100, largest=100_000)
    # Full, then a window over an id gap (1% of it has rows), then full again.
    asked = sizes_for([1.0, 0.01, 1.0, 1.0], seconds_per_row=0.0001, policy=policy)
    assert asked == [1000, 1000, 1000, 1000]


def test_growth_is_at_most_one_and_a_half_per_chunk_and_shrinks_when_slow() -> None:
    policy = ChunkPolicy(target_seconds=0.1, pause_ratio=0, initial=1000, smallest=100, largest=100_000)
    assert sizes_for([1.0] * 4, seconds_per_row=0.00001, policy=policy) == [1000, 1500, 2250, 3375]
    assert sizes_for([1.0] * 3, seconds_per_row=0.001, policy=policy) == [1000, 500, 250]
