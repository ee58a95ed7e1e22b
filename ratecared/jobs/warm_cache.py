"""Request the most asked-for widgets from the app, so the morning's first visitors hit a full cache.

The widgets come from the summary table (never the detail table): the top
`cache-warming-widget-count` active widgets of the last 7 local days. One
requests.Session keeps connections alive; a pool of `concurrency` threads
bounds the load on the app; a per-request timeout and a deadline for the run
bound the time; and after `max_consecutive_failures` failures in a row the
run stops, since hammering an app that is down helps no one.
"""

from __future__ import annotations

import contextvars
import itertools
import re
import socket
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import timedelta
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.connection import HTTPConnection, HTTPSConnection

from ratecared.job_contract import SHARE_DONE, Interrupted, JobContext, JobResult, RunStatus
from ratecared.settings import Settings

WINDOW_DAYS = 7
# Seconds: how long a stop may wait for a connection still being made (see _fetch).
CONNECT_TIMEOUT = 3.0
POLL = 0.2


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
    if isinstance(exc, requests.ConnectTimeout):
        return f"{type(exc).__name__}: no connection within {min(timeout, CONNECT_TIMEOUT):g} s"
    if isinstance(exc, requests.Timeout):
        return f"{type(exc).__name__}: no answer within {timeout:g} s"
    cause = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
    return f"{type(exc).__name__}: {cause.group(0) if cause else str(exc)[:200]}"


class _Sockets:
    """The sockets of one run's requests, so that a stop can cut those still in flight.

    ThreadPoolExecutor's workers are joined at interpreter exit, so a worker
    left waiting for an answer would hold up the daemon's exit for as long as
    the app holds the request. Shutting its socket down ends the wait at once
    (the request fails and the worker goes back to the pool); closing it
    from another thread would not be safe, shutdown is.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._cut = False

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.append(sock)
            if self._cut:
                _shut(sock)

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for sock in self._open:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by its connection


class _Adapter(HTTPAdapter):
    """requests' adapter, with every new connection's socket handed to `sockets`."""

    def __init__(self, sockets: _Sockets) -> None:
        self._sockets = sockets
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self._track(self.poolmanager)

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(*args, **kwargs)
        self._track(manager)
        return manager

    def _track(self, manager: Any) -> None:
        sockets = self._sockets

        class Tracked:
            def _new_conn(self) -> socket.socket:
                sock = super()._new_conn()  # type: ignore[misc]
                sockets.add(sock)
                return sock

        class HTTPPool(HTTPConnectionPool):
            ConnectionCls = type("Connection", (Tracked, HTTPConnection), {})

        class HTTPSPool(HTTPSConnectionPool):
            ConnectionCls = type("Connection", (Tracked, HTTPSConnection), {})

        manager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}


def _fetch(session: requests.Session, url: str, widget: int, timeout: float,
           monotonic: Any) -> tuple[int | None, float, str | None]:
    """(status, seconds, error) of one widget's request; any error is the widget's failure."""
    started = monotonic()
    try:
        # A connect in progress has no socket to cut yet: its own, shorter
        # timeout bounds how long a stop can wait for it.
        response = session.get(url.format(widget_id=widget), timeout=(min(timeout, CONNECT_TIMEOUT), timeout))
        response.close()
        return response.status_code, monotonic() - started, None
    except requests.RequestException as exc:
        return None, monotonic() - started, _reason(exc, timeout)
    except Exception as exc:  # noqa: BLE001 - a widget that cannot be asked for is a failed widget
        return None, monotonic() - started, f"{type(exc).__name__}: {exc}"


def disabled(settings: Settings) -> str | None:
    return None if settings.warming_enabled else "cache-warming-enabled is 0"


def run(ctx: JobContext) -> JobResult:
    reason = disabled(ctx.settings)
    if reason is not None:
        return JobResult(RunStatus.SKIPPED, details={"reason": reason})
    widgets = top_widgets(ctx)
    config = ctx.config
    url = config.url
    assert url is not None
    deadline = ctx.monotonic() + config.deadline
    sockets = _Sockets()
    session = requests.Session()
    session.headers["User-Agent"] = "ratecared-warm-cache"
    session.mount("http://", _Adapter(sockets))
    session.mount("https://", _Adapter(sockets))
    workers = max(1, min(config.concurrency, len(widgets)))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="warm-cache")
    # A widget is asked for only when a worker is free and the run goes on, so
    # the run stops after exactly `max_consecutive_failures` failures in a row
    # (at `concurrency` 1): handed the whole list at once, the pool ran ahead
    # of the count and kept asking an app that was down.
    queue = iter(widgets)
    asked: dict[Future[tuple[int | None, float, str | None]], int] = {}
    waiting: set[Future[tuple[int | None, float, str | None]]] = set()
    warmed = failed = consecutive = 0
    stopped: str | None = None
    try:
        while True:
            if ctx.stop.is_set():
                stopped = "stop requested"
            elif ctx.monotonic() >= deadline:
                stopped = f"run deadline of {config.deadline:g} s reached"
            elif consecutive >= config.max_consecutive_failures:
                stopped = f"{consecutive} failures in a row"
            if stopped is not None:
                break
            for widget, _ in itertools.islice(queue, workers - len(waiting)):
                # Each request runs in a copy of the run's context, so whatever
                # it logs (urllib3's warnings) carries the run's job and run_id.
                future = pool.submit(contextvars.copy_context().run, _fetch, session, url, widget, config.timeout,
                                     ctx.monotonic)
                asked[future] = widget
                waiting.add(future)
            if not waiting:
                break
            # Bounded, so that a stop is seen within POLL seconds.
            done, waiting = wait(waiting, timeout=max(0.0, min(POLL, deadline - ctx.monotonic())),
                                 return_when=FIRST_COMPLETED)
            for future in done:
                status, seconds, error = future.result()
                ok = status is not None and status < 400
                if ok:
                    warmed += 1
                    consecutive = 0
                else:
                    failed += 1
                    consecutive += 1
                log = ctx.log.info if ok else ctx.log.warning
                log("widget warmed" if ok else "widget warming failed", widget_id=asked[future], status=status,
                    ms=round(seconds * 1000, 1), **({"error": error} if error else {}))
                ctx.progress(warmed, {"widgets": len(widgets), "warmed": warmed, "failed": failed,
                                      SHARE_DONE: round((warmed + failed) / len(widgets), 4)})
    finally:
        # Requests not yet started never start; those in flight end now, and
        # neither the run nor the daemon's exit waits for them.
        pool.shutdown(wait=False, cancel_futures=True)
        sockets.cut()
        session.close()
    skipped = len(widgets) - warmed - failed
    details = {"widgets": len(widgets), "warmed": warmed, "failed": failed, "skipped": skipped,
               "url": url, "concurrency": config.concurrency}
    if stopped:
        details["stopped_early"] = stopped
        ctx.log.warning("warming stopped early", reason=stopped, skipped=skipped)
    if ctx.stop.is_set():
        raise Interrupted(warmed, details)
    if consecutive >= config.max_consecutive_failures:
        return JobResult(RunStatus.FAILED, rows=warmed, details=details,
                         error=f"the widget endpoint keeps failing: {consecutive} failures in a row")
    return JobResult(RunStatus.SUCCESS, rows=warmed, details=details)
