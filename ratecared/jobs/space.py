"""Give freed space back to the system, but only when there is enough of it to pay.

A rebuild reads and writes the whole table; after a nightly purge that frees
a few percent it costs far more than it returns (research/retention.md A3).
"""

from __future__ import annotations

from typing import Any

from ratecared.db import DatabaseError
from ratecared.job_contract import JobContext

MIN_FREE_SHARE = 0.2
MB = 1024 * 1024


def optimize_if_it_pays(ctx: JobContext, table: str, rows_deleted: int) -> dict[str, Any]:
    """Reclaim `table`'s free space, `rows_deleted` having just gone, when it is over both thresholds."""
    db = ctx.database
    free, size = db.dialect.space(db.query, table, rows_deleted)
    min_free = int(ctx.config.optimize_min_free_mb * MB)
    pays = free >= min_free and size > 0 and free >= MIN_FREE_SHARE * size
    details: dict[str, Any] = {"free_bytes": free, "size_bytes": size, "space_of": db.dialect.space_of,
                               "optimized": False}
    if not pays:
        details["optimize_skipped"] = (
            f"{free / MB:.1f} MB free of {size / MB:.1f} MB in {db.dialect.space_of}:"
            f" below {MIN_FREE_SHARE:.0%} or {ctx.config.optimize_min_free_mb:g} MB"
        )
        return details
    try:
        with db.session():
            for statement in db.dialect.reclaim(table):
                db.run_to_completion(statement)
    except DatabaseError as exc:
        # A failed rebuild changes nothing; the rows are already gone.
        ctx.log.warning("optimize failed", table=table, error=str(exc))
        details["optimize_error"] = str(exc)
        return details
    after, _ = db.dialect.space(db.query, table)
    details.update(optimized=True, free_bytes_after=after)
    ctx.log.info("table optimized", table=table, free_bytes_before=free, free_bytes_after=after)
    return details
