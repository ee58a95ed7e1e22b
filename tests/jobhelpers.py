"""Test data and job contexts for the job tests, on either engine."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Sequence
from zoneinfo import ZoneInfo

from ratecared.config import JOB_DEFAULTS, JobConfig
from ratecared.db import Database, timestamp
from ratecared.job_contract import ChunkPolicy, JobContext
from ratecared.settings import Settings

UTC = timezone.utc


def insert_rows(db: Database, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
                per_statement: int = 500) -> int:
    """Multi-row INSERTs in one transaction: fast enough on both engines for test data."""
    rows = list(rows)
    cols = ", ".join(columns)
    with db.transaction() as tx:
        for i in range(0, len(rows), per_statement):
            batch = rows[i:i + per_statement]
            marks = ", ".join("(" + ", ".join("?" for _ in columns) + ")" for _ in batch)
            tx.execute(f"INSERT INTO {table} ({cols}) VALUES {marks}", [v for row in batch for v in row])
    return len(rows)


def request_row(widget: int, moment: datetime, status: int = 200, ms: int = 100, hit: int = 1,
                platform: str | None = "booking") -> tuple:
    return (widget, platform, status, ms, hit, timestamp(moment.astimezone(UTC)))


REQUEST_COLUMNS = ("widget_id", "platform", "status_code", "response_time_ms", "cache_hit", "created_at")


def make_context(db: Database, job: str, now: datetime, tz: str = "Europe/Istanbul",
                 settings: Settings = Settings(), stop: threading.Event | None = None,
                 chunks: ChunkPolicy = ChunkPolicy(pause_ratio=0), **config: Any) -> JobContext:
    defaults = {k: v for k, v in JOB_DEFAULTS[job].items()}
    defaults.update(config)
    return JobContext(
        name=job, database=db, settings=settings, config=JobConfig(**defaults),
        tz=ZoneInfo(tz), now=now.astimezone(UTC), stop=stop or threading.Event(), chunks=chunks,
    )


def local(tz: str, *args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(tz))


def days_of_requests(db: Database, tz: str, today: datetime, days: int, per_day: int) -> None:
    """`per_day` requests on each of the `days` local days before `today`, spread over the day."""
    rows = []
    for back in range(days, 0, -1):
        day = (today - timedelta(days=back)).date()
        for i in range(per_day):
            moment = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz)) + timedelta(
                minutes=(i * 1439) // max(per_day - 1, 1))
            rows.append(request_row(widget=1 + i % 7, moment=moment, status=503 if i % 10 == 0 else 200,
                                    ms=10 + i, hit=i % 2))
    insert_rows(db, "api_requests", REQUEST_COLUMNS, rows)


class HangingWidgets:
    """The app's widget endpoint, answering only once released: its requests stay in flight."""

    def __init__(self) -> None:
        self.reached, self.release = threading.Event(), threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.reached.set()
                owner.release.wait(60)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/w/{{widget_id}}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def enable_warming(db: Database, tz: str) -> None:
    """Warming on, with one widget requested yesterday (local) to warm."""
    db.execute("UPDATE settings SET `value` = '1' WHERE `key` = 'cache-warming-enabled'")
    yesterday = (datetime.now(ZoneInfo(tz)) - timedelta(days=1)).date().isoformat()
    db.execute("INSERT INTO api_statistics_widget_daily (stat_date, widget_id, requests) VALUES (?, 1, 5)",
               (yesterday,))
