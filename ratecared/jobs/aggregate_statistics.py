"""Roll `api_requests` up into daily summaries, then trim the detail rows past retention.

Every complete local day with detail rows and no summary is summarised (so
the first run backfills), and the last two days are always rolled again for
late rows. A day is rolled as DELETE + INSERT … SELECT in one transaction:
absolute values, so a rerun gives the same rows, and the database does the
counting. Retention deletes whole local days, oldest first, in committed
chunks along the primary key, and never a day that has no summary.

With `retention = "partitions"` (MySQL/MariaDB, after `ratecared partition`)
a past day goes whole, by DROP PARTITION (ratecared.jobs.day_partitions),
once its summary has been checked again against its rows; the days ahead
are made in the same run.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, Callable

from ratecared.db import Database, parse_timestamp, timestamp
from ratecared.job_contract import Interrupted, JobContext, JobResult, RunStatus, Stalled
from ratecared.jobs import day_partitions
from ratecared.jobs.purge import PurgeInterrupted, PurgeStats, delete_before, delete_id_windows
from ratecared.jobs.space import optimize_if_it_pays

REROLL_DAYS = 2

_SUMMARY = (
    "INSERT INTO api_statistics_summary (stat_date, total_requests, cache_hits, cache_misses, error_count,"
    " avg_response_ms, max_response_ms, unique_widgets, updated_at)"
    " SELECT ?, COUNT(*), SUM(cache_hit), COUNT(*) - SUM(cache_hit), SUM(CASE WHEN status_code >= 500 THEN 1"
    " ELSE 0 END), AVG(response_time_ms), MAX(response_time_ms),"
    # The widget rows of the day are written first: counting them is cheaper
    # than COUNT(DISTINCT widget_id) over the detail rows (about 15% of the rollup).
    " (SELECT COUNT(*) FROM api_statistics_widget_daily WHERE stat_date = ?), ?"
    " FROM api_requests WHERE created_at >= ? AND created_at < ? HAVING COUNT(*) > 0"
)
_WIDGETS = (
    "INSERT INTO api_statistics_widget_daily (stat_date, widget_id, requests)"
    " SELECT ?, widget_id, COUNT(*) FROM api_requests WHERE created_at >= ? AND created_at < ? GROUP BY widget_id"
)


def _has_rows(db: Database, start: str, end: str) -> bool:
    return bool(db.query("SELECT 1 FROM api_requests WHERE created_at >= ? AND created_at < ? LIMIT 1",
                         (start, end)))


def days_to_roll(ctx: JobContext) -> list[date]:
    """Complete local days that have detail rows and no summary, plus the last two."""
    db = ctx.database
    first = parse_timestamp(db.query("SELECT MIN(created_at) FROM api_requests")[0][0])
    if first is None:
        return []
    first_day = first.astimezone(ctx.tz).date()
    summarised = {
        date.fromisoformat(str(d)[:10])
        for (d,) in db.query("SELECT stat_date FROM api_statistics_summary WHERE stat_date >= ?",
                             (first_day.isoformat(),))
    }
    recent = ctx.today - timedelta(days=REROLL_DAYS)
    days = []
    day = first_day
    while day < ctx.today:
        if (day not in summarised or day >= recent) and _has_rows(db, *ctx.day_bounds(day)):
            days.append(day)
        day += timedelta(days=1)
    return days


def roll_day(ctx: JobContext, day: date) -> tuple[int, int]:
    """Replace one day's summary rows; return (requests counted, widget rows)."""
    start, end = ctx.day_bounds(day)
    stamp = timestamp(ctx.now)
    with ctx.database.transaction() as tx:
        tx.execute("DELETE FROM api_statistics_widget_daily WHERE stat_date = ?", (day.isoformat(),))
        widgets = tx.execute(_WIDGETS, (day.isoformat(), start, end))
        tx.execute("DELETE FROM api_statistics_summary WHERE stat_date = ?", (day.isoformat(),))
        tx.execute(_SUMMARY, (day.isoformat(), day.isoformat(), stamp, start, end))
        total = tx.query("SELECT total_requests FROM api_statistics_summary WHERE stat_date = ?", (day.isoformat(),))
    return (int(total[0][0]) if total else 0), widgets


def retention_cutoff(ctx: JobContext) -> str:
    """Start of the oldest local day kept: retention, pulled back to the first unsummarised day."""
    keep_from = ctx.today - timedelta(days=ctx.settings.retention_days)
    db = ctx.database
    first = parse_timestamp(db.query("SELECT MIN(created_at) FROM api_requests")[0][0])
    if first is not None:
        summarised = {
            date.fromisoformat(str(d)[:10])
            for (d,) in db.query("SELECT stat_date FROM api_statistics_summary WHERE stat_date < ?",
                                 (keep_from.isoformat(),))
        }
        day = first.astimezone(ctx.tz).date()
        while day < keep_from:
            if day not in summarised and _has_rows(db, *ctx.day_bounds(day)):
                keep_from = day
                break
            day += timedelta(days=1)
    return ctx.day_bounds(keep_from)[0]


def purge_details(ctx: JobContext, cutoff: str,
                  on_chunk: Callable[[PurgeStats], None] = lambda stats: None) -> PurgeStats:
    """Delete detail rows before `cutoff`: id windows from the oldest row, then stragglers.

    `on_chunk` sees the stats of both walks together after every chunk.
    """
    db = ctx.database
    low = db.query("SELECT MIN(id) FROM api_requests")[0][0]
    if low is None:
        return PurgeStats()
    low = int(low)
    # Ids grow with time, so the first row at or after the cutoff bounds the
    # walk; the created_at guard keeps any row whose id and time disagree.
    boundary = db.query("SELECT id FROM api_requests WHERE created_at >= ? ORDER BY created_at LIMIT 1", (cutoff,))
    end = int(boundary[0][0]) if boundary else int(db.query("SELECT MAX(id) FROM api_requests")[0][0]) + 1
    walked = delete_id_windows(db, "api_requests", "created_at", cutoff, low, end, ctx.stop, ctx.chunks,
                               on_chunk=on_chunk, throttle=ctx.throttle)
    # Rows written late with an old created_at sit beyond the boundary id:
    # a pass along the created_at index finds them.
    try:
        return walked.add(delete_before(db, "api_requests", "created_at", cutoff, ctx.stop, ctx.chunks,
                                        on_chunk=lambda stats: on_chunk(walked.add(stats)), throttle=ctx.throttle))
    except PurgeInterrupted as exc:
        raise PurgeInterrupted(walked.add(exc.stats), exc.reason) from None


def _summarised_whole(ctx: JobContext, part: day_partitions.Partition) -> list[str]:
    """Check that every local day with rows in `part` has a summary counting all of them, just before the
    partition is dropped: a day with more rows than its summary counts (late rows, written since) is
    rolled again. Never with fewer: the rest of such a day went with an earlier partition, and rolling it
    would shrink its summary. Returns the days rolled again."""
    db = ctx.database
    oldest = parse_timestamp(db.query(f"SELECT MIN(created_at) FROM api_requests PARTITION ({part.name})")[0][0])
    rolled: list[str] = []
    if oldest is None:
        return rolled
    day = oldest.astimezone(ctx.tz).date()
    while True:
        start, end = ctx.day_bounds(day)
        if parse_timestamp(start) >= part.end:
            return rolled
        count = int(db.query("SELECT COUNT(*) FROM api_requests WHERE created_at >= ? AND created_at < ?",
                             (start, end))[0][0])
        summary = db.query("SELECT total_requests FROM api_statistics_summary WHERE stat_date = ?",
                           (day.isoformat(),))
        if count and (not summary or int(summary[0][0]) < count):
            roll_day(ctx, day)
            rolled.append(day.isoformat())
        day += timedelta(days=1)


def drop_past_days(ctx: JobContext, cutoff: str) -> dict[str, Any]:
    """Make the days ahead, then drop, oldest first, each day partition wholly before `cutoff`."""
    db = ctx.database
    try:
        added, add_seconds, not_added = day_partitions.add_ahead(db, ctx.today, ctx.tz, ctx.stop)
    except day_partitions.StoppedWaiting:
        raise Interrupted() from None
    done: dict[str, Any] = {"retention": "partitions", "partitions_added": added,
                            "add_ms": round(add_seconds * 1000, 1), "partitions_dropped": [], "rows_dropped": 0,
                            "drop_ms_max": 0.0, "days_rolled_again": []}
    if added:
        ctx.log.info("day partitions added", partitions=added, ms=done["add_ms"])
    if not_added:
        done["partitions_warning"] = not_added
        ctx.log.warning("no day partitions made", reason=not_added)
    for part in day_partitions.partitions(db):
        if part.end is None or part.end > parse_timestamp(cutoff):
            break
        try:
            paused_for = ctx.throttle()
        except Stalled as exc:
            raise Interrupted(done["rows_dropped"], done, str(exc)) from None
        if paused_for is not None:
            done["paused_for"] = paused_for
        if ctx.stop.is_set():
            raise Interrupted(done["rows_dropped"], done)
        done["days_rolled_again"] += _summarised_whole(ctx, part)
        rows = day_partitions.rows_in(db, part)
        try:
            seconds = day_partitions.drop(db, part, ctx.stop)
        except day_partitions.StoppedWaiting:
            raise Interrupted(done["rows_dropped"], done) from None
        done["partitions_dropped"].append(part.name)
        done["rows_dropped"] += rows
        done["drop_ms_max"] = max(done["drop_ms_max"], round(seconds * 1000, 1))
        ctx.log.info("day partition dropped", partition=part.name, rows=rows, ms=round(seconds * 1000, 1))
        ctx.progress(done["rows_dropped"], done)
    return done


def run(ctx: JobContext) -> JobResult:
    if day_partitions.is_half_converted(ctx.database):
        return JobResult(RunStatus.FAILED, error=day_partitions.HALF_CONVERTED)
    days = days_to_roll(ctx)
    done: dict[str, Any] = {"days_summarised": [], "requests_summarised": 0, "widget_rows": 0,
                            "retention_days": ctx.settings.retention_days}
    try:
        for day in days:
            ctx.check()
            requests, widgets = roll_day(ctx, day)
            done["days_summarised"].append(day.isoformat())
            done["requests_summarised"] += requests
            done["widget_rows"] += widgets
            ctx.log.info("day summarised", day=day.isoformat(), requests=requests, widgets=widgets)
            ctx.progress(_rows_written(done), done)
        ctx.check()
        cutoff = retention_cutoff(ctx)
        done["cutoff"] = ctx.shown(cutoff)
        if ctx.config.retention == "partitions":
            if day_partitions.partitions(ctx.database):
                dropped = drop_past_days(ctx, cutoff)
                return JobResult(RunStatus.SUCCESS, rows=_rows_written(done) + dropped["rows_dropped"],
                                 details={**done, **dropped})
            done["retention_warning"] = ("retention is \"partitions\" but api_requests is not partitioned: "
                                         "rows were purged; run `ratecared partition` to convert it")
            ctx.log.warning("api_requests is not partitioned", advice=done["retention_warning"])
        purge = purge_details(ctx, cutoff, on_chunk=lambda stats: ctx.progress(
            _rows_written(done) + stats.rows, {**done, **stats.as_details()}))
    except Interrupted as exc:
        raise exc.including(_rows_written(done), done) from None
    ctx.log.info("detail rows purged", cutoff=done["cutoff"], **purge.as_details())
    space: dict[str, Any] = optimize_if_it_pays(ctx, "api_requests", purge.rows)
    return JobResult(RunStatus.SUCCESS, rows=_rows_written(done) + purge.rows,
                     details={**done, **purge.as_details(), **space})


def _rows_written(done: dict[str, Any]) -> int:
    """Summary rows (one per day) plus widget rows; the run's rows add the detail rows deleted."""
    return len(done["days_summarised"]) + done["widget_rows"]
