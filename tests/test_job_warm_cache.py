"""warm_cache against a real HTTP server on loopback."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest
from structlog.testing import capture_logs

from conftest import wait_for
from jobhelpers import insert_rows, local, make_context
from ratecared.db import Database
from ratecared.jobs import warm_cache
from ratecared.job_contract import Interrupted
from ratecared.settings import Settings

NOW = local("Europe/Istanbul", 2026, 11, 28, 6, 0)


class WidgetApp:
    """A stand-in for the app's widget endpoint: records what was asked, answers as told.

    With `held`, every request waits until the test opens `gate`, so requests
    stay in flight for as long as the test needs, on any machine.
    """

    def __init__(self, held: bool = False, status: int = 200) -> None:
        self.status = status
        self.gate = threading.Event()
        if not held:
            self.gate.set()
        self.seen: list[str] = []
        self.in_flight = self.max_in_flight = 0
        lock = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    app.seen.append(self.path)
                    app.in_flight += 1
                    app.max_in_flight = max(app.max_in_flight, app.in_flight)
                app.gate.wait(120)
                with lock:
                    app.in_flight -= 1
                body = b'{"rates": []}'
                self.send_response(app.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/widgets/{{widget_id}}/rates"

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app_factory() -> Iterator[Callable[..., WidgetApp]]:
    apps: list[WidgetApp] = []

    def make(**kw: Any) -> WidgetApp:
        apps.append(WidgetApp(**kw))
        return apps[-1]

    yield make
    for server in apps:
        server.close()


@pytest.fixture
def app(app_factory: Callable[..., WidgetApp]) -> WidgetApp:
    return app_factory()


def popular(db: Database) -> None:
    """Widget n has n*10 requests a day over the last week; widget 8 is inactive."""
    insert_rows(db, "widgets", ("id", "name", "active"), [(n, f"Hotel {n}", 0 if n == 8 else 1) for n in range(1, 10)])
    rows = [(f"2026-11-{day:02d}", n, n * 10) for day in range(21, 28) for n in range(1, 10)]
    rows.append(("2026-11-10", 1, 100000))  # outside the 7-day window
    insert_rows(db, "api_statistics_widget_daily", ("stat_date", "widget_id", "requests"), rows)


def test_warms_the_top_active_widgets_of_the_last_7_days(database: Database, app: WidgetApp) -> None:
    popular(database)
    settings = Settings(warming_enabled=True, warming_widget_count=4)
    result = warm_cache.run(make_context(database, "warm_cache", NOW, settings=settings, url=app.url))
    assert result.status == "success"
    assert (result.details["warmed"], result.details["failed"], result.details["skipped"]) == (4, 0, 0)
    assert sorted(app.seen) == sorted(f"/api/v1/widgets/{n}/rates" for n in (9, 7, 6, 5))


def test_concurrency_is_bounded_and_used(database: Database, app_factory) -> None:
    popular(database)
    app = app_factory(held=True)
    settings = Settings(warming_enabled=True, warming_widget_count=8)
    results = []
    run = threading.Thread(target=lambda: results.append(warm_cache.run(
        make_context(database, "warm_cache", NOW, settings=settings, url=app.url, concurrency=4))))
    run.start()
    # Used: four requests in flight at once. Bounded: the other four wait for a slot.
    wait_for(lambda: app.in_flight == 4, what="four requests in flight")
    assert len(app.seen) == 4
    app.gate.set()
    run.join(120)
    assert results[0].details["warmed"] == 8
    assert app.max_in_flight == 4


def test_a_failing_app_stops_the_run_early(database: Database, app_factory) -> None:
    popular(database)
    app = app_factory(status=503)
    settings = Settings(warming_enabled=True, warming_widget_count=8)
    result = warm_cache.run(make_context(database, "warm_cache", NOW, settings=settings, url=app.url,
                                         concurrency=1, max_consecutive_failures=3))
    assert result.status == "failed" and "keeps failing" in result.error
    assert (result.details["warmed"], result.details["failed"], result.details["skipped"]) == (0, 3, 5)
    # The app that is down was asked no more than that: the pool does not run ahead of the count.
    assert len(app.seen) == 3


def test_a_request_that_outlives_its_timeout_fails(database: Database, app_factory) -> None:
    popular(database)
    app = app_factory(held=True)
    settings = Settings(warming_enabled=True, warming_widget_count=2)
    ctx = make_context(database, "warm_cache", NOW, settings=settings, url=app.url, concurrency=2, timeout=0.2,
                       max_consecutive_failures=100)
    with capture_logs() as lines:
        result = warm_cache.run(ctx)
    assert (result.details["warmed"], result.details["failed"]) == (0, 2)
    errors = [line["error"] for line in lines if line["event"] == "widget warming failed"]
    assert errors == ["ReadTimeout: no answer within 0.2 s"] * 2


def test_the_run_deadline_ends_a_run_whose_requests_hang(database: Database, app_factory) -> None:
    popular(database)
    app = app_factory(held=True)
    settings = Settings(warming_enabled=True, warming_widget_count=8)
    result = warm_cache.run(make_context(database, "warm_cache", NOW, settings=settings, url=app.url,
                                         concurrency=2, timeout=60, deadline=0.3))
    # The app holds every request until the test ends: a run that waited for them would fail them, not skip.
    assert "deadline" in result.details["stopped_early"]
    assert (result.details["warmed"], result.details["skipped"]) == (0, 8)


def test_unreachable_app_is_a_failure_not_a_crash(database: Database) -> None:
    popular(database)
    settings = Settings(warming_enabled=True, warming_widget_count=3)
    result = warm_cache.run(make_context(database, "warm_cache", NOW, settings=settings,
                                         url="http://127.0.0.1:9/w/{widget_id}", max_consecutive_failures=3))
    assert result.status == "failed" and result.details["failed"] == 3


def test_a_failure_says_why(database: Database) -> None:
    popular(database)
    settings = Settings(warming_enabled=True, warming_widget_count=1)
    ctx = make_context(database, "warm_cache", NOW, settings=settings, url="http://127.0.0.1:9/w/{widget_id}",
                       max_consecutive_failures=1)
    with capture_logs() as lines:
        warm_cache.run(ctx)
    errors = [line["error"] for line in lines if line["event"] == "widget warming failed"]
    assert errors == ["ConnectionError: [Errno 111] Connection refused"]


def test_a_widget_that_cannot_be_asked_for_fails_at_once(database: Database, app: WidgetApp) -> None:
    popular(database)
    settings = Settings(warming_enabled=True, warming_widget_count=4)
    result = warm_cache.run(make_context(database, "warm_cache", NOW, settings=settings, url=app.url + "?x={other}",
                                         max_consecutive_failures=2, deadline=3600))
    # A worker that died silently held the run to its deadline and called it a success.
    assert result.status == "failed" and result.details["failed"] >= 2 and app.seen == []
    assert "stopped_early" not in result.details or "deadline" not in result.details["stopped_early"]


def test_a_stop_does_not_wait_for_requests_in_flight(database: Database, app_factory) -> None:
    popular(database)
    app = app_factory(held=True)
    stop = threading.Event()
    settings = Settings(warming_enabled=True, warming_widget_count=8)
    ctx = make_context(database, "warm_cache", NOW, settings=settings, url=app.url, concurrency=2, timeout=60,
                       stop=stop)
    threading.Thread(target=lambda: (wait_for(lambda: app.in_flight == 2), stop.set())).start()
    with pytest.raises(Interrupted) as info:
        warm_cache.run(ctx)
    # It returned while the app still holds both requests.
    assert app.in_flight == 2
    assert info.value.details["stopped_early"] == "stop requested"
    assert (info.value.rows, info.value.details["skipped"]) == (0, 8)


def test_off_by_default(database: Database, app: WidgetApp) -> None:
    popular(database)
    result = warm_cache.run(make_context(database, "warm_cache", NOW, url=app.url))
    assert (result.status, app.seen) == ("skipped", [])
