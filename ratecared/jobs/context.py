"""What a job gets to run with, and what it hands back."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from ratecared.config import JobConfig
from ratecared.db import Database, parse_timestamp, timestamp
from ratecared.jobs.purge import ChunkPolicy, Interrupted
from ratecared.scheduler.cron import place
from ratecared.settings import Settings


@dataclass
class JobResult:
    status: str  # success, skipped or failed
    rows: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class JobContext:
    name: str
    run_id: str
    database: Database
    settings: Settings
    config: JobConfig
    tz: ZoneInfo
    # The run's start, frozen: "expired" and "yesterday" mean the same thing
    # for the whole run however long it takes.
    now: datetime
    stop: threading.Event
    log: Any
    chunks: ChunkPolicy = field(default_factory=ChunkPolicy)

    def check(self) -> None:
        if self.stop.is_set():
            raise Interrupted()

    def shown(self, moment: datetime | str) -> str:
        """A moment as the run's record shows it: local time with its offset, as `history` prints times."""
        parsed = parse_timestamp(moment) if isinstance(moment, str) else moment
        assert parsed is not None
        return parsed.astimezone(self.tz).isoformat(timespec="milliseconds")

    @property
    def today(self) -> date:
        return self.now.astimezone(self.tz).date()

    def day_bounds(self, day: date) -> tuple[str, str]:
        """[start, end) of a local day as stored UTC timestamps; 23 or 25 h on DST days."""
        start = place(datetime(day.year, day.month, day.day), self.tz)
        nxt = day + timedelta(days=1)
        end = place(datetime(nxt.year, nxt.month, nxt.day), self.tz)
        return timestamp(start.astimezone(timezone.utc)), timestamp(end.astimezone(timezone.utc))
