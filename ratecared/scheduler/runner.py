"""Runs the jobs: claims each slot in `job_runs`, holds the jobs lock, one job at a time.

A slot is claimed by inserting its row (unique on job + slot) before the job
starts, so it runs once however many daemons share the database; on MySQL a
named lock keeps jobs from overlapping across daemons too. A run that a
killed daemon left `running` is marked `interrupted` at the next start, with
the rows, details and time of the last progress it wrote. What runs next is
the plan (scheduler/plan.py): one entry per job, seeded at start from the
database, so missed slots need no phase of their own. Manual runs go through
the same claim and lock, one at a time with the scheduled ones.

State shared with other threads (the plan, the running run, the queue of
manual runs) is behind one lock that every reader and writer takes; the
config is read through the daemon's one reference whenever it is needed, so
a reload reaches the next plan and the next run.

Each run has a stop event of its own, which the job checks between chunks
(JobContext.stop): the daemon's stop sets the running run's, and so does
an operator's `cancel`, which stops that run and nothing else.

`Runner.step` and `Runner.start_up` take the time as an argument, so the
tests drive the scheduler without sleeping.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from functools import partial
from typing import Any, Callable, Mapping
from zoneinfo import ZoneInfo

from structlog.contextvars import bound_contextvars

from ratecared import logs
from ratecared.config import Config
from ratecared.db import Database, DatabaseError, IntegrityError, parse_timestamp, timestamp
from ratecared.job_contract import (SHARE_DONE, ChunkPolicy, Disabled, Interrupted, Job, JobContext, JobResult,
                                    RunStatus, logger)
from ratecared.scheduler import plan
from ratecared.scheduler.cron import Schedule
from ratecared.settings import Settings
from ratecared.throttle import Throttle

UTC = timezone.utc
LOCK_NAME = "ratecared:jobs"
# The loop wakes at least this often, so a clock step or a DST change is noticed within a minute.
MAX_WAIT = 60.0
RETRY = 5.0
DROPPED = "the daemon stopped before the run started"
DAEMON_STOPPING = "the daemon was stopping"


class Trigger(StrEnum):
    """Why a run happened, as `job_runs.trigger` spells it."""

    SCHEDULE = "schedule"
    CATCHUP = "catchup"  # a slot that came while the daemon was down
    MANUAL = "manual"


@dataclass(frozen=True)
class RunRecord:
    """One run, as its `job_runs` row holds it."""

    job: str
    run_id: str
    trigger: Trigger
    status: RunStatus
    slot: datetime | None = None
    host: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    rows: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # When a running run last wrote its rows and details.
    progress_at: datetime | None = None

    def progress(self, now: datetime) -> dict[str, Any]:
        """A running run's progress: elapsed, rows a second as of its last progress, chunks, and the
        seconds left when the job says what share of its work is done."""
        assert self.started_at is not None
        elapsed = max(0.0, (now - self.started_at).total_seconds())
        counted = (self.progress_at - self.started_at).total_seconds() if self.progress_at is not None else 0.0
        share = self.details.get(SHARE_DONE)
        remaining = None
        if isinstance(share, (int, float)) and 0 < share <= 1 and counted > 0:
            remaining = round(max(0.0, counted / share - elapsed), 1)
        return {
            "elapsed_seconds": round(elapsed, 1),
            "rows": self.rows,
            "chunks": self.details.get("chunks"),
            "rows_per_second": round(self.rows / counted, 1) if counted > 0 else None,
            "remaining_seconds": remaining,
        }

    def as_json(self, tz: ZoneInfo, now: datetime | None = None) -> dict[str, Any]:
        """The run as the API and `ratecarectl history` show it: local times with their offsets.

        A running run shows its progress as of `now`, when given.
        """

        def shown(moment: datetime | None) -> str | None:
            return moment.astimezone(tz).isoformat() if moment is not None else None

        ended = self.finished_at if self.status is not RunStatus.RUNNING else None
        return {
            "job": self.job,
            "run_id": self.run_id,
            "slot": shown(self.slot),
            "trigger": self.trigger.value,
            "host": self.host,
            "status": self.status.value,
            "started_at": shown(self.started_at),
            "finished_at": shown(ended),
            "duration_seconds": (round((ended - self.started_at).total_seconds(), 3)
                                 if ended is not None and self.started_at is not None else None),
            "rows": self.rows,
            "details": self.details,
            "error": self.error,
            **({"progress": self.progress(now)} if self.status is RunStatus.RUNNING and now is not None
               and self.started_at is not None else {}),
        }


_COLUMNS = ("job, run_id, `trigger`, status, slot, host, started_at, finished_at, rows_affected, details, error,"
            " progress_at")


def _from_row(row: tuple[Any, ...]) -> RunRecord:
    job, run_id, trigger, status, slot, host, started, finished, rows, details, error, progress_at = row
    return RunRecord(job, run_id, Trigger(trigger), RunStatus(status), parse_timestamp(slot), host,
                     parse_timestamp(started), parse_timestamp(finished), int(rows or 0),
                     json.loads(details) if details else {}, error, parse_timestamp(progress_at))


@dataclass(frozen=True)
class JobFigures:
    """One job as metrics show it: this host's finished runs by status, and the job's last runs on any host."""

    job: str
    running: bool
    runs: dict[RunStatus, int]
    last: RunRecord | None
    last_success_at: datetime | None


@dataclass
class _Manual:
    job: str
    run_id: str
    future: Future[dict[str, Any]]


@dataclass
class _Running:
    """The run under way: its own stop event, and who cancelled it (read and written only under Runner._lock)."""

    job: str
    run_id: str
    stop: threading.Event = field(default_factory=threading.Event)
    cancelled_by: str | None = None


class Stopping(Exception):
    """The daemon is stopping: no new manual run is taken."""


class NothingToCancel(Exception):
    """The job has no run running and none queued."""


def _settle(future: Future[dict[str, Any]], result: dict[str, Any] | None = None,
            exception: BaseException | None = None) -> None:
    """Resolve a manual run's future unless a waiter's cancellation already did."""
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result or {})


def _new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class Runner(threading.Thread):
    def __init__(
        self,
        config: Callable[[], Config],
        database: Database,
        host: str,
        jobs: Mapping[str, Job],
        settings: Callable[[], Settings],
        refresh_settings: Callable[[], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        disabled_by: Mapping[str, Disabled] | None = None,
    ) -> None:
        super().__init__(name="scheduler", daemon=True)
        self.config = config
        self.db = database
        self.host = host
        self.jobs = jobs
        # What `jobs` shows as off: the runs still happen, and the job skips them.
        self.disabled_by = disabled_by or {}
        self.settings = settings
        self.refresh_settings = refresh_settings
        self.clock = clock
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.log = logs.get("ratecared.scheduler")
        # Everything below is shared with the API's threads: only under _lock.
        self._lock = threading.Lock()
        self._plan: dict[str, plan.Planned] | None = None  # None until start_up has read the database
        self._planned_for: Config | None = None
        self._current: _Running | None = None
        self._manual: deque[_Manual] = deque()
        self._closed = False
        # Not shared: the scheduler thread's own.
        self._started_at: datetime | None = None

    # -- planning ------------------------------------------------------------------

    def start_up(self, now: datetime) -> None:
        """Mark this host's orphaned runs interrupted, note the first start, and seed the plan."""
        orphans = self.db.query("SELECT id, job, run_id FROM job_runs WHERE host = ? AND status = ?",
                                (self.host, RunStatus.RUNNING.value))
        for row_id, job, run_id in orphans:
            # It ended when it last wrote progress, as far as anyone can tell; not now.
            self.db.execute(
                "UPDATE job_runs SET status = ?, finished_at = COALESCE(progress_at, started_at),"
                " error = 'the daemon stopped during the run; found at the next start' WHERE id = ?",
                (RunStatus.INTERRUPTED.value, row_id))
            self.log.warning("interrupted run found", job=job, run_id=run_id)
        try:
            self.db.execute("INSERT INTO ratecared_database (id, first_started_at, first_host) VALUES (1, ?, ?)",
                            (timestamp(now), self.host))
        except IntegrityError:
            pass  # not the first start
        first = parse_timestamp(self.db.query("SELECT first_started_at FROM ratecared_database WHERE id = 1")[0][0])
        assert first is not None
        config = self.config()
        seeded = {}
        for job, job_config in config.jobs.items():
            last = parse_timestamp(self.db.query("SELECT MAX(slot) FROM job_runs WHERE job = ?", (job,))[0][0])
            seeded[job] = plan.start(Schedule(job_config.schedule, config.daemon.tz), last, first)
        self._started_at = now
        with self._lock:
            self._plan, self._planned_for = seeded, config

    def _replan(self, now: datetime) -> dict[str, plan.Planned] | None:
        """The plan for the config in effect; a job whose schedule changed waits for its next slot from `now`.

        Callers hold _lock.
        """
        config = self.config()
        if self._plan is None or config is self._planned_for:
            return self._plan
        replanned = {}
        for job, job_config in config.jobs.items():
            schedule = Schedule(job_config.schedule, config.daemon.tz)
            old = self._plan.get(job)
            if old is not None and old.schedule == schedule:
                replanned[job] = old
            else:
                replanned[job] = plan.Planned(schedule, schedule.next(now))
                self.log.info("schedule changed", job=job, schedule=job_config.schedule,
                              next_run=replanned[job].upcoming.isoformat())
        self._plan, self._planned_for = replanned, config
        return replanned

    def _advance(self, job: str, planned: plan.Planned, upcoming: datetime) -> None:
        with self._lock:
            # A reload meanwhile has planned the job anew: that plan stands.
            if self._plan is not None and self._plan.get(job) is planned:
                self._plan[job] = plan.Planned(planned.schedule, upcoming)

    def next_run(self) -> tuple[str, datetime] | None:
        """The job that runs next and its slot in the configured zone, or None before the plan is read."""
        with self._lock:
            found = self._soonest(self.clock())
        if found is None:
            return None
        job, planned = found
        return job, planned.upcoming.astimezone(self.config().daemon.tz)

    def current_job(self) -> str | None:
        """The job running now, or None."""
        with self._lock:
            return self._current.job if self._current is not None else None

    def _soonest(self, now: datetime) -> tuple[str, plan.Planned] | None:
        """Callers hold _lock."""
        current = self._replan(now)
        return plan.soonest(current, list(self.config().jobs)) if current is not None else None

    def seconds_until_next(self, now: datetime) -> float:
        with self._lock:
            if self._manual:
                return 0.0
            found = self._soonest(now)
        if found is None:
            return MAX_WAIT
        wait = (found[1].upcoming.astimezone(UTC) - now.astimezone(UTC)).total_seconds()
        return max(0.0, min(MAX_WAIT, wait))

    def wake_up(self) -> None:
        """The config was replaced (or a run queued): plan again now, not at the next minute."""
        self.wake.set()

    # -- one step --------------------------------------------------------------------

    def step(self, now: datetime) -> RunRecord | None:
        """Run one manual or due job at `now`.

        Returns the run, or the skipped record of a slot past its deadline;
        None when nothing was due or another daemon claimed the slot.
        """
        with self._lock:
            manual = self._manual.popleft() if self._manual else None
            # Running from the moment it leaves the queue, so that a cancel always finds it.
            running = self._begin(manual.job, manual.run_id) if manual is not None else None
        if manual is not None and running is not None:
            return self._run_manual(manual, running, now)
        config = self.config()
        with self._lock:
            found = self._soonest(now)
        if found is None:
            return None
        job, planned = found
        deadline = config.jobs[job].starting_deadline
        due = plan.due(planned, now, deadline)
        if due is None:
            return None
        latest = due.run or due.skipped[-1]
        record = None
        for slot in due.skipped:
            late = (now.astimezone(UTC) - slot.astimezone(UTC)).total_seconds()
            why = (f"the later slot {latest.astimezone(config.daemon.tz):%Y-%m-%d %H:%M %Z} runs instead"
                   if due.run is not None else f"{late:.0f} s late, past its starting deadline of {deadline:g} s")
            record = self._record_skipped(job, slot, now, why)
        if due.run is None:
            self._advance(job, planned, due.upcoming)
            return record
        # A claim the database refuses leaves the plan as it was: the slot
        # stays due, and runs (or is skipped past its deadline) once it is back.
        claimed = self._claim(job, due.run, self._trigger(due.run), now)
        self._advance(job, planned, due.upcoming)
        if claimed is None:
            return None
        with self._lock:
            running = self._begin(job, claimed.run_id)
        return self._run_claimed(claimed, running)

    def _trigger(self, slot: datetime) -> Trigger:
        started = self._started_at
        missed = started is not None and slot.astimezone(UTC) < started.astimezone(UTC)
        return Trigger.CATCHUP if missed else Trigger.SCHEDULE

    def _begin(self, job: str, run_id: str) -> _Running:
        """Make this run the current one; a stop already asked for stops it too. Callers hold _lock."""
        running = self._current = _Running(job, run_id)
        if self.stop_event.is_set():
            running.stop.set()
        return running

    def _end(self, running: _Running) -> None:
        with self._lock:
            if self._current is running:
                self._current = None

    def _run_manual(self, manual: _Manual, running: _Running, now: datetime) -> RunRecord:
        try:
            claimed = self._claim(manual.job, None, Trigger.MANUAL, now, manual.run_id)
        except DatabaseError as exc:
            self._end(running)
            _settle(manual.future, exception=DatabaseError(f"the database refused to record the run: {exc}"))
            raise
        assert claimed is not None
        try:
            record = self._run_claimed(claimed, running)
        except BaseException as exc:  # noqa: BLE001 - the caller waiting on the future gets it
            _settle(manual.future, exception=exc)
            raise
        _settle(manual.future, record.as_json(self.config().daemon.tz))
        return record

    # -- the loop ------------------------------------------------------------------

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.start_up(self.clock())
                break
            except DatabaseError as exc:
                self.log.warning("scheduler cannot start yet; retrying", error=str(exc))
                self.stop_event.wait(RETRY)
        while not self.stop_event.is_set():
            # Cleared before the step, so a wake-up during it is not lost.
            self.wake.clear()
            try:
                if self.step(self.clock()) is not None:
                    continue
            except DatabaseError as exc:
                self.log.warning("scheduler step failed; retrying", error=str(exc))
                self.stop_event.wait(RETRY)
                continue
            except Exception:  # noqa: BLE001 - the scheduler must outlive one bad run
                self.log.exception("scheduler step failed")
                self.stop_event.wait(RETRY)
                continue
            self.wake.wait(self.seconds_until_next(self.clock()))
        self._drop_queued(self.clock())

    def stop(self) -> None:
        self.stop_event.set()
        with self._lock:
            running = self._current
        if running is not None:
            running.stop.set()
        self.wake.set()

    def cancel(self, job: str, by: str) -> dict[str, Any]:
        """Stop the job's running run at its next chunk, or else drop its queued manual run: that run.

        Raises NothingToCancel when the job has neither. Only that run stops:
        the daemon, and the runs after it, go on.
        """
        with self._lock:
            running = self._current if self._current is not None and self._current.job == job else None
            queued = None
            if running is not None:
                running.cancelled_by = running.cancelled_by or by
            else:
                queued = next((m for m in self._manual if m.job == job), None)
                if queued is not None:
                    self._manual.remove(queued)
        if running is not None:
            running.stop.set()
            with bound_contextvars(job=job, run_id=running.run_id):
                logger(job).warning("run cancelled; it stops at its next chunk", by=by)
            return {"job": job, "run_id": running.run_id, "status": RunStatus.RUNNING.value, "cancelled": "running",
                    "by": by}
        if queued is None:
            raise NothingToCancel(f"{job} has no run running or queued")
        reason = f"cancelled by {by} before it started"
        record = self._drop(queued, reason)
        self._record_dropped(queued, self.clock(), reason)
        return {**record, "cancelled": "queued", "by": by}

    def request(self, job: str) -> tuple[str, Future[dict[str, Any]], bool]:
        """Queue a manual run: (run_id, future of the finished run as JSON, whether it was queued already).

        A second request for a job whose manual run has not started yet gets
        that run: pressing `run` twice runs the job once. The future raises
        DatabaseError when the database refuses to record the run.
        """
        with self._lock:
            if self._closed or self.stop_event.is_set():
                raise Stopping("ratecared is stopping; run the job after it is back")
            for queued in self._manual:
                if queued.job == job:
                    return queued.run_id, queued.future, True
            manual = _Manual(job, _new_run_id(), Future())
            self._manual.append(manual)
        self.wake.set()
        return manual.run_id, manual.future, False

    def close_queue(self) -> list[_Manual]:
        """Take no more manual runs; answer the queued ones (never started) and hand them back.

        The daemon calls this itself when the runner does not stop in time, so
        a waiting `run --wait` gets an answer even when the database does not.
        """
        with self._lock:
            self._closed = True
            dropped = list(self._manual)
            self._manual.clear()
        for manual in dropped:
            self._drop(manual, DROPPED)
        return dropped

    def _drop(self, manual: _Manual, reason: str) -> dict[str, Any]:
        """Answer a manual run taken off the queue before it started: skipped, and why."""
        record = RunRecord(manual.job, manual.run_id, Trigger.MANUAL, RunStatus.SKIPPED, host=self.host,
                           error=reason).as_json(self.config().daemon.tz)
        _settle(manual.future, record)
        return record

    def _record_dropped(self, manual: _Manual, now: datetime, reason: str) -> None:
        """Record a dropped manual run, so that its run id shows in the history."""
        with bound_contextvars(job=manual.job, run_id=manual.run_id):
            logger(manual.job).warning("manual run dropped", reason=reason)
            try:
                self._insert_skipped(manual.job, None, Trigger.MANUAL, now, reason, manual.run_id)
            except DatabaseError as exc:
                self.log.warning("cannot record a dropped manual run", error=str(exc))

    def _drop_queued(self, now: datetime) -> None:
        """Answer the manual runs that never started, then record them."""
        for manual in self.close_queue():
            self._record_dropped(manual, now, DROPPED)

    # -- running a job ---------------------------------------------------------------

    def _claim(self, job: str, slot: datetime | None, trigger: Trigger, now: datetime,
               run_id: str | None = None) -> RunRecord | None:
        """Insert the run's row; None when another daemon has claimed the slot already."""
        record = RunRecord(job, run_id or _new_run_id(), trigger, RunStatus.RUNNING, slot, self.host, now)
        try:
            self.db.execute(
                "INSERT INTO job_runs (job, slot, `trigger`, host, run_id, status, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job, timestamp(slot) if slot is not None else None, trigger.value, self.host, record.run_id,
                 RunStatus.RUNNING.value, timestamp(now)))
        except IntegrityError:
            if slot is None:
                raise  # a manual run has no slot to share: the database refused it
            with bound_contextvars(job=job, run_id=record.run_id):
                logger(job).info("slot already claimed by another daemon", slot=timestamp(slot))
            return None
        return record

    def _run_claimed(self, claimed: RunRecord, running: _Running) -> RunRecord:
        """Lock, run and record a claimed run; every line it logs carries its job and run_id."""
        job, run_id = claimed.job, claimed.run_id
        with bound_contextvars(job=job, run_id=run_id):
            log = logger(job)
            started = time.monotonic()
            try:
                with self.db.named_lock(LOCK_NAME, stop=running.stop, waiting=lambda holder: log.info(
                        "waiting for the jobs lock held by another daemon", connection_id=holder)) as got:
                    if got:
                        self.refresh_settings()
                        log.info("job started", slot=timestamp(claimed.slot) if claimed.slot else None,
                                 trigger=claimed.trigger.value)
                        result = self._run_job(job, running)
                    else:
                        result = JobResult(RunStatus.INTERRUPTED,
                                           error=f"{self._stopped_why(running)} while waiting for the jobs lock")
            except DatabaseError as exc:
                result = JobResult(RunStatus.FAILED, error=f"database error: {exc}")
            finally:
                self._end(running)
            duration = round(time.monotonic() - started, 3)
            record = RunRecord(job, run_id, claimed.trigger, result.status, claimed.slot, self.host,
                               claimed.started_at, self.clock(), result.rows,
                               {**result.details, "duration_seconds": duration}, result.error)
            self._finish(record)
            event = log.info if result.status in (RunStatus.SUCCESS, RunStatus.SKIPPED) else log.warning
            event("job finished", status=result.status.value, rows=result.rows, duration_seconds=duration,
                  **({"error": result.error} if result.error else {}))
        return record

    def _stopped_why(self, running: _Running) -> str:
        with self._lock:
            by = running.cancelled_by
        return f"cancelled by {by}" if by is not None else DAEMON_STOPPING

    def _run_job(self, job: str, running: _Running) -> JobResult:
        config = self.config()
        job_config = config.jobs[job]
        throttle = Throttle(self.db, config.database, running.stop, job_config.deadline, logger(job))
        ctx = JobContext(
            name=job, database=self.db, settings=self.settings(), config=job_config, tz=config.daemon.tz,
            now=self.clock(), stop=running.stop,
            chunks=ChunkPolicy(target_seconds=job_config.chunk_seconds, pause_ratio=job_config.pause_ratio),
            record_progress=partial(self._progress, running.run_id), throttle=throttle,
        )
        try:
            return self.jobs[job](ctx)
        except Interrupted as exc:
            if exc.reason is not None:
                ctx.log.warning("run ended at its deadline", reason=exc.reason)
                return JobResult(RunStatus.INTERRUPTED, rows=exc.rows, details=exc.details,
                                 error=f"{exc.reason}; the run ended early, keeping what it had done, and the next "
                                       "run goes on")
            return JobResult(RunStatus.INTERRUPTED, rows=exc.rows, details=exc.details,
                             error=f"{self._stopped_why(running)}; the run ended early, keeping what it had done")
        except DatabaseError as exc:
            ctx.log.error("job failed: database error", error=str(exc))
            rows, details = ctx.done_so_far
            return JobResult(RunStatus.FAILED, rows=rows, details=details, error=f"database error: {exc}")
        except Exception as exc:  # noqa: BLE001 - recorded, and the next run tries again
            ctx.log.exception("job failed")
            rows, details = ctx.done_so_far
            return JobResult(RunStatus.FAILED, rows=rows, details=details, error=f"{type(exc).__name__}: {exc}")
        finally:
            throttle.close()

    def _progress(self, run_id: str, rows: int, details: dict[str, Any]) -> None:
        """Write what the run has done so far to its row, so a killed run keeps it."""
        try:
            self.db.execute(
                "UPDATE job_runs SET rows_affected = ?, details = ?, progress_at = ? WHERE run_id = ? AND status = ?",
                (rows, json.dumps(details, default=str), timestamp(self.clock()), run_id, RunStatus.RUNNING.value))
        except DatabaseError as exc:
            # The job's own next statement meets the same database; progress is not worth failing it for.
            self.log.warning("cannot record the run's progress", error=str(exc))

    def _finish(self, record: RunRecord) -> None:
        # The database may be restarting right now: keep trying for a while so
        # the failure itself gets recorded.
        assert record.finished_at is not None
        for attempt in range(10):
            try:
                self.db.execute(
                    "UPDATE job_runs SET status = ?, finished_at = ?, rows_affected = ?, details = ?, error = ?"
                    " WHERE run_id = ?",
                    (record.status.value, timestamp(record.finished_at), record.rows,
                     json.dumps(record.details, default=str), record.error, record.run_id))
                return
            except DatabaseError as exc:
                if attempt == 9 or self.stop_event.is_set():
                    logger(record.job).error("cannot record the end of the run", error=str(exc))
                    return
                self.stop_event.wait(1)

    def _insert_skipped(self, job: str, slot: datetime | None, trigger: Trigger, now: datetime, reason: str,
                        run_id: str) -> RunRecord:
        """Record a run that never ran: a missed slot, or a manual run a stop dropped."""
        self.db.execute(
            "INSERT INTO job_runs (job, slot, `trigger`, host, run_id, status, started_at, finished_at, error)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job, timestamp(slot) if slot is not None else None, trigger.value, self.host, run_id,
             RunStatus.SKIPPED.value, timestamp(now), timestamp(now), reason))
        return RunRecord(job, run_id, trigger, RunStatus.SKIPPED, slot, self.host, now, now, error=reason)

    def _record_skipped(self, job: str, slot: datetime, now: datetime, why: str) -> RunRecord | None:
        """Record a slot not run; None when another daemon has recorded it already."""
        trigger = self._trigger(slot)
        reason = f"missed while the daemon was down; {why}" if trigger is Trigger.CATCHUP else why
        run_id = _new_run_id()
        try:
            record = self._insert_skipped(job, slot, trigger, now, reason, run_id)
        except IntegrityError:
            return None
        with bound_contextvars(job=job, run_id=run_id):
            logger(job).info("slot skipped", slot=slot.astimezone(self.config().daemon.tz).isoformat(),
                             reason=reason)
        return record

    # -- reporting -------------------------------------------------------------------

    def overview(self, now: datetime) -> list[dict[str, Any]]:
        """Each job: schedule, next run (with its DST note), running or queued, last run; for `ratecarectl jobs`."""
        config = self.config()
        tz = config.daemon.tz
        with self._lock:
            current = self._replan(now)
            planned = dict(current) if current is not None else {}
            running = self._current.job if self._current is not None else None
            queued = {m.job: m.run_id for m in self._manual}
        out = []
        settings = self.settings()
        for job, job_config in config.jobs.items():
            entry = planned.get(job)
            schedule = entry.schedule if entry is not None else Schedule(job_config.schedule, tz)
            nxt = entry.upcoming if entry is not None else schedule.next(now)
            last = self.runs(job, 1)
            out.append({
                "name": job,
                "schedule": job_config.schedule,
                "timezone": tz.key,
                "next_run": nxt.astimezone(tz).isoformat(),
                "next_run_note": schedule.dst_note(nxt),
                "running": running == job,
                "queued_run_id": queued.get(job),
                "disabled": self.disabled_by[job](settings) if job in self.disabled_by else None,
                "last_run": last[0] if last else None,
            })
        return out

    def figures(self) -> list[JobFigures]:
        """Each job's figures for a scrape: counted from `job_runs`, so they survive restarts."""
        with self._lock:
            running = self._current.job if self._current is not None else None
        counted: dict[tuple[str, str], int] = {
            (job, status): int(n) for job, status, n in self.db.query(
                "SELECT job, status, COUNT(*) FROM job_runs WHERE host = ? AND status <> ? GROUP BY job, status",
                (self.host, RunStatus.RUNNING.value))}
        succeeded = {job: parse_timestamp(at) for job, at in self.db.query(
            "SELECT job, MAX(finished_at) FROM job_runs WHERE status = ? GROUP BY job", (RunStatus.SUCCESS.value,))}
        out = []
        for job in self.config().jobs:
            last = self.db.query(f"SELECT {_COLUMNS} FROM job_runs WHERE job = ? AND status <> ?"
                                 " ORDER BY started_at DESC, id DESC LIMIT 1", (job, RunStatus.RUNNING.value))
            out.append(JobFigures(
                job, running == job,
                {status: counted.get((job, status.value), 0)
                 for status in RunStatus if status is not RunStatus.RUNNING},
                _from_row(last[0]) if last else None, succeeded.get(job)))
        return out

    def runs(self, job: str, limit: int = 20) -> list[dict[str, Any]]:
        """The job's recent runs, newest first, as the API shows them; a running run with its progress so far."""
        rows = self.db.query(f"SELECT {_COLUMNS} FROM job_runs WHERE job = ? ORDER BY started_at DESC, id DESC"
                             " LIMIT ?", (job, limit))
        tz, now = self.config().daemon.tz, self.clock()
        return [_from_row(row).as_json(tz, now) for row in rows]
