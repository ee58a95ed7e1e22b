"""Delete `cache` rows that expired before the run started, in committed chunks.

Expiry times are scattered across the table, so the walk follows the
`expires_at` index with a keyset on (expires_at, id): each SELECT starts
where the last chunk ended instead of rescanning the rows already deleted.
"""

from __future__ import annotations

from typing import Any

from ratecared.db import timestamp
from ratecared.jobs.context import JobContext, JobResult
from ratecared.jobs.purge import delete_in_chunks
from ratecared.jobs.space import optimize_if_it_pays


def run(ctx: JobContext) -> JobResult:
    if not ctx.settings.cleanup_enabled:
        return JobResult("skipped", details={"reason": "cache-cleanup-enabled is 0"})
    db = ctx.database
    now = timestamp(ctx.now)
    last: tuple[Any, int] | None = None

    def chunk(size: int) -> tuple[int, bool]:
        nonlocal last
        if last is None:
            rows = db.query("SELECT id, expires_at FROM cache WHERE expires_at < ? ORDER BY expires_at, id LIMIT ?",
                            (now, size))
        else:
            rows = db.query(
                "SELECT id, expires_at FROM cache WHERE expires_at < ?"
                " AND (expires_at > ? OR (expires_at = ? AND id > ?)) ORDER BY expires_at, id LIMIT ?",
                (now, last[0], last[0], last[1], size),
            )
        if not rows:
            return 0, True
        last = (rows[-1][1], rows[-1][0])
        ids = [row[0] for row in rows]
        marks = ", ".join("?" for _ in ids)
        deleted = db.execute(f"DELETE FROM cache WHERE id IN ({marks}) AND expires_at < ?", (*ids, now))
        return deleted, len(rows) < size

    purge = delete_in_chunks(chunk, ctx.stop, ctx.chunks)
    ctx.log.info("expired cache rows deleted", expired_before=now, **purge.as_details())
    space = optimize_if_it_pays(ctx, "cache")
    return JobResult("success", rows=purge.rows, details={"expired_before": now, **purge.as_details(), **space})
