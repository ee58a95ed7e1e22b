"""Request the most asked-for widgets from the app, so the morning's first visitors hit a full cache.

The widgets come from the summary table (never the detail table): the top
`cache-warming-widget-count` active widgets of the last 7 local days. One
requests.Session keeps connections alive; `concurrency` worker threads bound
the load on the app; a per-request timeout and a deadline for the run bound the time;
and after `max_consecutive_failures` failures in a row the run stops, since
hammering an app that is down helps no one.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from datetime import timedelta

import requests

from ratecared.jobs.context import JobContext, JobResult
from ratecared.jobs.purge import Interrupted

WINDOW_DAYS = 7


def top_widgets(ctx: JobContext) -> list[tuple[int, int]]:
    """(widget_id, requests) of the most requested active widgets of the last 7 local days."""
    first = (ctx.today - timedelta(days=WINDOW_DAYS)).isoformat()
    rows = ctx.database.query(
        "SELECT d.widget_id, SUM(d.requests) AS total FROM api_statistics_widget_daily d"
        " LEFT JOIN widgets w ON w.id = d.widget_id"
        " WHERE d.stat_date >= ? AND d.stat_date < ? AND COALESCE(w.active, 1) = 1"
        " GROUP BY d.widget_id ORDER BY total DESC, d.widget_id LIMIT ?",
        (first, ctx.today.isoformat(), ctx.settings.warming_widget_count),
    )
    return [(int(widget), int(total)) for widget, total in rows]


def _reason(exc: requests.RequestException, timeout: float) -> str:
    """The error class and its root cause, short: requests wraps the OSError several layers deep."""
    if isinstance(exc, requests.Timeout):
        return f"{type(exc).__name__}: no answer within {timeout:g} s"
    cause = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
    return f"{type(exc).__name__}: {cause.group(0) if cause else str(exc)[:200]}"


def _fetch(session: requests.Session, url: str, timeout: float) -> tuple[int | None, float, str | None]:
    started = time.monotonic()
    try:
        response = session.get(url, timeout=timeout)
        response.close()
        return response.status_code, time.monotonic() - started, None
    except requests.RequestException as exc:
        return None, time.monotonic() - started, _reason(exc, timeout)


def run(ctx: JobContext) -> JobResult:
    if not ctx.settings.warming_enabled:
        return JobResult("skipped", details={"reason": "cache-warming-enabled is 0"})
    widgets = top_widgets(ctx)
    config = ctx.config
    url = config.url
    assert url is not None
    deadline = time.monotonic() + config.deadline
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for widget, _ in widgets:
        todo.put(widget)
    results: queue.SimpleQueue[tuple[int, int | None, float, str | None]] = queue.SimpleQueue()
    halt = threading.Event()
    session = requests.Session()
    session.headers["User-Agent"] = "ratecared-warm-cache"

    def worker() -> None:
        while not halt.is_set():
            try:
                widget = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results.put((widget, *_fetch(session, url.format(widget_id=widget), config.timeout)))
            except Exception as exc:  # noqa: BLE001 - a widget that cannot be asked for is a failed widget
                results.put((widget, None, 0.0, f"{type(exc).__name__}: {exc}"))

    # Daemon threads: a stop or the deadline leaves requests still in flight
    # behind, and neither the run nor the daemon's exit waits for them.
    workers = [threading.Thread(target=worker, name=f"warm-cache-{i}", daemon=True)
               for i in range(min(config.concurrency, len(widgets)))]
    for thread in workers:
        thread.start()
    warmed = failed = consecutive = 0
    stopped: str | None = None
    try:
        while warmed + failed < len(widgets):
            if ctx.stop.is_set():
                stopped = "daemon stopping"
            elif time.monotonic() >= deadline:
                stopped = f"run deadline of {config.deadline:g} s reached"
            elif consecutive >= config.max_consecutive_failures:
                stopped = f"{consecutive} failures in a row"
            if stopped is not None:
                break
            try:
                widget, status, seconds, error = results.get(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            except queue.Empty:
                continue
            ok = status is not None and status < 400
            if ok:
                warmed += 1
                consecutive = 0
            else:
                failed += 1
                consecutive += 1
            log = ctx.log.info if ok else ctx.log.warning
            log("widget warmed" if ok else "widget warming failed", widget_id=widget, status=status,
                ms=round(seconds * 1000, 1), **({"error": error} if error else {}))
    finally:
        halt.set()
        # A worker still in flight keeps using the session; it goes with the last of them.
        if not any(thread.is_alive() for thread in workers):
            session.close()
    skipped = len(widgets) - warmed - failed
    details = {"widgets": len(widgets), "warmed": warmed, "failed": failed, "skipped": skipped,
               "url": url, "concurrency": config.concurrency}
    if stopped:
        details["stopped_early"] = stopped
        ctx.log.warning("warming stopped early", reason=stopped, skipped=skipped)
    if ctx.stop.is_set():
        raise Interrupted().including(warmed, details)
    if consecutive >= config.max_consecutive_failures:
        return JobResult("failed", rows=warmed, details=details, error=f"the widget endpoint keeps failing: {stopped}")
    return JobResult("success", rows=warmed, details=details)
