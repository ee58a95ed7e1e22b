"""Delete `cache` rows that expired before the run started, in committed chunks.

Expiry times are scattered across the table, so the walk follows the
`expires_at` index (purge.delete_before) rather than the primary key.
"""

from __future__ import annotations

from ratecared.db import timestamp
from ratecared.jobs.context import JobContext, JobResult
from ratecared.jobs.purge import delete_before
from ratecared.jobs.space import optimize_if_it_pays


def run(ctx: JobContext) -> JobResult:
    if not ctx.settings.cleanup_enabled:
        return JobResult("skipped", details={"reason": "cache-cleanup-enabled is 0"})
    now = timestamp(ctx.now)
    purge = delete_before(ctx.database, "cache", "expires_at", now, ctx.stop, ctx.chunks)
    ctx.log.info("expired cache rows deleted", expired_before=now, **purge.as_details())
    space = optimize_if_it_pays(ctx, "cache")
    return JobResult("success", rows=purge.rows, details={"expired_before": now, **purge.as_details(), **space})
