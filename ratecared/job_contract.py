"""The contract between the scheduler and the jobs: what a job runs with and what it hands back.

The scheduler (ratecared.scheduler) and the jobs (ratecared.jobs) meet here
and import nothing of each other: the daemon hands the runner the jobs by name.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Callable
from zoneinfo import ZoneInfo

import structlog

from ratecared.config import JobConfig
from ratecared.db import Database, parse_timestamp, timestamp
from ratecared.localtime import day_span
from ratecared.settings import Settings

# A run writes what it has done so far to its record at most this often:
# often enough that a killed run keeps nearly all of it, rarely enough to cost nothing.
PROGRESS_EVERY = 2.0
# A progress detail: the share of the run's work done so far, 0 to 1, from
# a job that knows its whole; the runner estimates the time left from it.
SHARE_DONE = "share_done"


class RunStatus(StrEnum):
    """A run's status, as `job_runs.status` and the JSON spell it."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class JobResult:
    status: RunStatus  # success, skipped or failed; a stop is Interrupted
    rows: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Interrupted(Exception):
    """The run is to stop (the daemon stops, or a cancel); the job ends at the next chunk boundary.

    It carries what the run did before it stopped, so the run's record shows
    the rows it deleted or wrote rather than nothing.
    """

    def __init__(self, rows: int = 0, details: dict[str, Any] | None = None, reason: str | None = None) -> None:
        super().__init__(reason or "the run was stopped")
        self.rows = rows
        self.details: dict[str, Any] = dict(details or {})
        # Why the job itself ended the run (its deadline); None when it was asked to stop.
        self.reason = reason

    def including(self, rows: int, details: dict[str, Any]) -> "Interrupted":
        """This interruption with the work the job did before it added."""
        return Interrupted(self.rows + rows, {**details, **self.details}, self.reason)


class Stalled(Exception):
    """A purge's throttle gives up: the run's deadline came (ratecared.throttle); the message says why."""


def unthrottled() -> str | None:
    """No throttle: a purge called directly, outside a run."""
    return None


@dataclass(frozen=True)
class ChunkPolicy:
    """How purges size their chunks (ratecared.jobs.purge), from the job's config."""

    target_seconds: float = 0.1
    pause_ratio: float = 0.1
    initial: int = 5000
    smallest: int = 500
    largest: int = 100_000


def logger(job: str) -> Any:
    """The job's logger: its lines go to the job's own file too (ratecared.logs.PART_FILES).

    The run's `job` and `run_id` are not bound here: the runner binds them
    as context variables for the whole run.
    """
    return structlog.get_logger(f"ratecared.jobs.{job}")


def _no_record(rows: int, details: dict[str, Any]) -> None:
    """Where progress goes when no runner records it (a job called directly)."""


@dataclass
class JobContext:
    name: str
    database: Database
    settings: Settings
    config: JobConfig
    tz: ZoneInfo
    # The run's start, frozen: "expired" and "yesterday" mean the same thing
    # for the whole run however long it takes.
    now: datetime
    # The run's own stop: set when the daemon stops or an operator cancels this run.
    stop: threading.Event
    chunks: ChunkPolicy = field(default_factory=ChunkPolicy)
    # Writes the run's progress to its record; the runner provides it.
    record_progress: Callable[[int, dict[str, Any]], None] = _no_record
    # Called by purges before each chunk: waits while the database is strained, returns why it waited
    # (None if it did not), raises Stalled at the run's deadline. The runner provides it.
    throttle: Callable[[], str | None] = unthrottled
    monotonic: Callable[[], float] = time.monotonic
    _recorded_at: float | None = field(default=None, init=False, repr=False)
    # What the run said last it had done, recorded or not: a failed run's record keeps it.
    done_so_far: tuple[int, dict[str, Any]] = field(default_factory=lambda: (0, {}), init=False, repr=False)

    @property
    def log(self) -> Any:
        return logger(self.name)

    def check(self) -> None:
        if self.stop.is_set():
            raise Interrupted()

    def progress(self, rows: int, details: dict[str, Any]) -> None:
        """What the run has done so far; recorded at most every PROGRESS_EVERY seconds."""
        self.done_so_far = (rows, details)
        now = self.monotonic()
        if self._recorded_at is not None and now - self._recorded_at < PROGRESS_EVERY:
            return
        self._recorded_at = now
        self.record_progress(rows, details)

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
        start, end = day_span(day, self.tz)
        return timestamp(start), timestamp(end)


Job = Callable[[JobContext], JobResult]
# Why the settings turn a job off ("cache-warming-enabled is 0"), or None: its runs are then skipped.
Disabled = Callable[[Settings], "str | None"]
