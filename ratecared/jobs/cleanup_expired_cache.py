"""Delete `cache` rows that expired before the run started, in committed chunks.

When a large share of the table has expired, the walk follows the primary
key in id windows (pages in order, no rows sent to Python); when few rows
have, it follows the `expires_at` index to them (purge.delete_before). A
bounded sample of the table picks the walk.
"""

from __future__ import annotations

from ratecared.db import Database, timestamp
from ratecared.job_contract import Interrupted, JobContext, JobResult, RunStatus
from ratecared.settings import Settings
from ratecared.jobs.purge import PurgeStats, delete_before, delete_id_windows
from ratecared.jobs.space import optimize_if_it_pays


# Above this share of expired rows, walking the primary key beats the index.
PRIMARY_KEY_WALK_SHARE = 0.3
SAMPLE_ROWS = 2000


def expired_share(db: Database, now: str, low: int, high: int) -> float:
    """The expired share in three id windows (start, middle, end): bounded, whatever the table's size."""
    total = expired = 0
    for start in (low, (low + high) // 2, max(low, high - SAMPLE_ROWS)):
        n, old = db.query("SELECT COUNT(*), SUM(CASE WHEN expires_at < ? THEN 1 ELSE 0 END) FROM cache"
                          " WHERE id >= ? AND id < ?", (now, start, start + SAMPLE_ROWS))[0]
        total += int(n or 0)
        expired += int(old or 0)
    return expired / total if total else 0.0


def disabled(settings: Settings) -> str | None:
    return None if settings.cleanup_enabled else "cache-cleanup-enabled is 0"


def run(ctx: JobContext) -> JobResult:
    reason = disabled(ctx.settings)
    if reason is not None:
        return JobResult(RunStatus.SKIPPED, details={"reason": reason})
    db = ctx.database
    now = timestamp(ctx.now)
    low, high = db.query("SELECT MIN(id), MAX(id) FROM cache")[0]
    share = expired_share(db, now, int(low), int(high)) if low is not None else 0.0
    walk = "primary_key" if share >= PRIMARY_KEY_WALK_SHARE else "expires_at_index"
    plan = {"expired_before": ctx.shown(ctx.now), "walk": walk, "sampled_expired_share": round(share, 3)}

    def progress(stats: PurgeStats) -> None:
        ctx.progress(stats.rows, {**plan, **stats.as_details()})

    try:
        if walk == "primary_key":
            purge = delete_id_windows(db, "cache", "expires_at", now, int(low), int(high) + 1, ctx.stop, ctx.chunks,
                                      on_chunk=progress, throttle=ctx.throttle)
        else:
            purge = delete_before(db, "cache", "expires_at", now, ctx.stop, ctx.chunks, on_chunk=progress,
                                  throttle=ctx.throttle)
    except Interrupted as exc:
        raise exc.including(0, plan) from None
    ctx.log.info("expired cache rows deleted", **plan, **purge.as_details())
    space = optimize_if_it_pays(ctx, "cache", purge.rows)
    return JobResult(RunStatus.SUCCESS, rows=purge.rows, details={**plan, **purge.as_details(), **space})
