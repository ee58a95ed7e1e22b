"""Runs the jobs: claims each slot in `job_runs`, holds the jobs lock, one job at a time.

A slot is claimed by inserting its row (unique on job + slot) before the job
starts, so it runs once however many daemons share the database; on MySQL a
named lock (GET_LOCK) keeps jobs from overlapping across daemons too. A run
that a killed daemon left `running` is marked `interrupted` at the next start.
Missed slots run once at start if they are within the job's starting deadline
and are recorded as skipped otherwise. Manual runs go through the same claim
and lock, one at a time with the scheduled ones.

`catch_up` is pure; `Runner.step` and `Runner.start_up` take the time as an
argument, so the tests drive the scheduler without sleeping.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from ratecared import logs
from ratecared.config import Config
from ratecared.db import Database, DatabaseError, IntegrityError, parse_timestamp, timestamp
from ratecared.jobs import JOBS
from ratecared.jobs.context import JobContext, JobResult
from ratecared.jobs.purge import ChunkPolicy, Interrupted
from ratecared.scheduler.cron import dst_note, fires_between, next_fire, previous_fire
from ratecared.settings import Settings

UTC = timezone.utc
LOCK_NAME = "ratecared:jobs"
# At most this many missed slots of one job are recorded as skipped at start.
MAX_SKIPPED_RECORDS = 50
MAX_WAIT = 60.0


@dataclass(frozen=True)
class CatchUp:
    run: datetime | None
    skipped: list[datetime]


def catch_up(expression: str, last_slot: datetime | None, now: datetime, tz: Any, deadline: float) -> CatchUp:
    """What to do at start about slots missed since `last_slot`.

    The latest missed slot runs if it is within `deadline` seconds; the others
    (and it, when too old) are recorded as skipped. With no slot on record the
    daemon is new, and nothing was missed.
    """
    if last_slot is None:
        return CatchUp(None, [])
    lookback = max(timedelta(days=8), timedelta(seconds=deadline) + timedelta(days=1))
    latest = previous_fire(expression, now, tz, lookback)
    if latest is None or latest.astimezone(UTC) <= last_slot.astimezone(UTC):
        return CatchUp(None, [])
    missed = list(fires_between(expression, max(last_slot, now - lookback), latest, tz))
    if (now - latest).total_seconds() <= deadline:
        return CatchUp(latest, missed[:-1][-MAX_SKIPPED_RECORDS:])
    return CatchUp(None, missed[-MAX_SKIPPED_RECORDS:])


@dataclass
class _Manual:
    job: str
    run_id: str
    future: Future[dict[str, Any]]


class Stopping(Exception):
    """The daemon is stopping: no new manual run is taken."""


DROPPED = "the daemon stopped before the run started"


def _settle(future: Future[dict[str, Any]], result: dict[str, Any] | None = None,
            exception: BaseException | None = None) -> None:
    """Resolve a manual run's future unless a waiter's cancellation already did."""
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result or {})


class Runner(threading.Thread):
    def __init__(
        self,
        config: Config,
        database: Database,
        host: str,
        settings: Callable[[], Settings],
        refresh_settings: Callable[[], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(name="scheduler", daemon=True)
        self.config = config
        self.db = database
        self.host = host
        self.settings = settings
        self.refresh_settings = refresh_settings
        self.clock = clock
        self.tz = config.daemon.tz
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self._manual: deque[_Manual] = deque()
        self._manual_lock = threading.Lock()
        self._closed = False
        self.next_slots: dict[str, datetime] = {}
        self.pending_catch_up: list[tuple[datetime, str]] = []
        self.current: tuple[str, str] | None = None
        self.log = logs.get("ratecared.scheduler")

    # -- planning ------------------------------------------------------------------

    def start_up(self, now: datetime) -> None:
        """Mark this host's orphaned runs interrupted and plan catch-up runs."""
        stamp = timestamp(now)
        orphans = self.db.query("SELECT id, job, run_id FROM job_runs WHERE host = ? AND status = 'running'",
                                (self.host,))
        for row_id, job, run_id in orphans:
            self.db.execute(
                "UPDATE job_runs SET status = 'interrupted', finished_at = ?,"
                " error = 'the daemon stopped during the run; found at the next start' WHERE id = ?",
                (stamp, row_id))
            self.log.warning("interrupted run found", job=job, run_id=run_id)
        for order, (job, job_config) in enumerate(self.config.jobs.items()):
            last = parse_timestamp(self.db.query("SELECT MAX(slot) FROM job_runs WHERE job = ?", (job,))[0][0])
            plan = catch_up(job_config.schedule, last, now, self.tz, job_config.starting_deadline)
            why = ("a later missed slot runs instead" if plan.run is not None
                   else f"past its starting deadline of {job_config.starting_deadline:g} s")
            for slot in plan.skipped:
                self._record_skipped(job, slot, "catchup", now, f"missed while the daemon was down; {why}")
            if plan.run is not None:
                self.pending_catch_up.append((plan.run, job))
            self.next_slots[job] = next_fire(job_config.schedule, now, self.tz)
        self.pending_catch_up.sort(key=lambda item: (item[0].astimezone(UTC), list(self.config.jobs).index(item[1])))

    def due(self, now: datetime) -> tuple[str, datetime, str] | None:
        """The next (job, slot, trigger) to run at `now`, oldest slot first, or None."""
        if self.pending_catch_up:
            slot, job = self.pending_catch_up[0]
            return job, slot, "catchup"
        if not self.next_slots:
            return None
        order = list(self.config.jobs)
        job, slot = min(self.next_slots.items(), key=lambda kv: (kv[1].astimezone(UTC), order.index(kv[0])))
        if slot.astimezone(UTC) <= now.astimezone(UTC):
            return job, slot, "schedule"
        return None

    def seconds_until_next(self, now: datetime) -> float:
        if not self.next_slots:
            return MAX_WAIT
        soonest = min(slot.astimezone(UTC) for slot in self.next_slots.values())
        return max(0.0, min(MAX_WAIT, (soonest - now.astimezone(UTC)).total_seconds()))

    def step(self, now: datetime) -> dict[str, Any] | None:
        """Run one manual or due job at `now`; return its run, or None when nothing was due."""
        with self._manual_lock:
            manual = self._manual.popleft() if self._manual else None
        if manual is not None:
            try:
                result = self.execute(manual.job, None, "manual", now, manual.run_id)
            except BaseException as exc:  # noqa: BLE001 - the caller waiting on the future gets it
                _settle(manual.future, exception=exc)
                raise
            _settle(manual.future, result)
            return result
        due = self.due(now)
        if due is None:
            return None
        job, slot, trigger = due
        if trigger == "catchup":
            self.pending_catch_up.pop(0)
        else:
            self.next_slots[job] = next_fire(self.config.jobs[job].schedule, slot, self.tz)
        late = (now.astimezone(UTC) - slot.astimezone(UTC)).total_seconds()
        deadline = self.config.jobs[job].starting_deadline
        try:
            if late > deadline:
                self._record_skipped(job, slot, trigger, now, f"{late:.0f} s late, past its starting deadline")
                return None
            return self.execute(job, slot, trigger, now)
        except DatabaseError:
            # Not claimed: keep the slot due, so it runs (or is skipped past its
            # deadline) once the database is back.
            if trigger == "catchup":
                self.pending_catch_up.insert(0, (slot, job))
            else:
                self.next_slots[job] = slot
            raise

    # -- the loop ------------------------------------------------------------------

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.start_up(self.clock())
                break
            except DatabaseError as exc:
                self.log.warning("scheduler cannot start yet; retrying", error=str(exc))
                self.stop_event.wait(5)
        while not self.stop_event.is_set():
            try:
                if self.step(self.clock()) is not None:
                    continue
            except DatabaseError as exc:
                self.log.warning("scheduler step failed; retrying", error=str(exc))
                self.stop_event.wait(5)
                continue
            except Exception:  # noqa: BLE001 - the scheduler must outlive one bad run
                self.log.exception("scheduler step failed")
                self.stop_event.wait(5)
                continue
            # Bounded, so a clock step or a DST change is noticed within a minute.
            self.wake.wait(self.seconds_until_next(self.clock()))
            self.wake.clear()
        self._drop_queued(self.clock())

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def request(self, job: str) -> tuple[str, Future[dict[str, Any]], bool]:
        """Queue a manual run: (run_id, future of the finished run, whether it was queued already).

        A second request for a job whose manual run has not started yet gets
        that run: pressing `run` twice runs the job once.
        """
        with self._manual_lock:
            if self._closed or self.stop_event.is_set():
                raise Stopping("ratecared is stopping; run the job after it is back")
            for queued in self._manual:
                if queued.job == job:
                    return queued.run_id, queued.future, True
            manual = _Manual(job, uuid.uuid4().hex[:12], Future())
            self._manual.append(manual)
        self.wake.set()
        return manual.run_id, manual.future, False

    def queued(self) -> dict[str, str]:
        """Manual runs waiting to start, job -> run_id."""
        with self._manual_lock:
            return {m.job: m.run_id for m in self._manual}

    def close_queue(self) -> list[_Manual]:
        """Take no more manual runs; answer the queued ones (never started) and hand them back.

        The daemon calls this itself when the runner does not stop in time, so
        a waiting `run --wait` gets an answer even when the database does not.
        """
        with self._manual_lock:
            self._closed = True
            dropped = list(self._manual)
            self._manual.clear()
        for manual in dropped:
            _settle(manual.future, {"job": manual.job, "run_id": manual.run_id, "status": "skipped", "slot": None,
                                    "trigger": "manual", "rows": 0, "details": {}, "error": DROPPED})
        return dropped

    def _drop_queued(self, now: datetime) -> None:
        """Answer the manual runs that never started, then record them, so their run ids show in the history."""
        for manual in self.close_queue():
            logs.get(f"ratecared.jobs.{manual.job}").warning("manual run dropped", job=manual.job,
                                                             run_id=manual.run_id, reason=DROPPED)
            try:
                self._insert_skipped(manual.job, None, "manual", now, DROPPED, manual.run_id)
            except Exception as exc:  # noqa: BLE001 - the daemon is stopping; say so and go on
                self.log.warning("cannot record a dropped manual run", job=manual.job, run_id=manual.run_id,
                                 error=str(exc))

    # -- running a job ---------------------------------------------------------------

    def execute(self, job: str, slot: datetime | None, trigger: str, now: datetime,
                run_id: str | None = None) -> dict[str, Any]:
        """Claim, lock, run and record one run of `job`."""
        run_id = run_id or uuid.uuid4().hex[:12]
        log = logs.get(f"ratecared.jobs.{job}").bind(job=job, run_id=run_id)
        slot_text = timestamp(slot) if slot is not None else None
        try:
            self.db.execute(
                "INSERT INTO job_runs (job, slot, `trigger`, host, run_id, status, started_at)"
                " VALUES (?, ?, ?, ?, ?, 'running', ?)",
                (job, slot_text, trigger, self.host, run_id, timestamp(now)))
        except IntegrityError:
            log.info("slot already claimed by another daemon", slot=slot_text)
            return {"job": job, "run_id": run_id, "status": "claimed_elsewhere", "slot": slot_text}
        started = time.monotonic()
        self.current = (job, run_id)
        try:
            if self._acquire_lock(log):
                try:
                    self.refresh_settings()
                    log.info("job started", slot=slot_text, trigger=trigger)
                    result = self._run_job(job, run_id, log)
                finally:
                    self._release_lock()
            else:
                result = JobResult("interrupted", error="the daemon was stopping while waiting for the jobs lock")
        except DatabaseError as exc:
            result = JobResult("failed", error=f"database error: {exc}")
        finally:
            self.current = None
        duration = round(time.monotonic() - started, 3)
        result.details["duration_seconds"] = duration
        self._finish(run_id, result, log)
        event = {"success": log.info, "skipped": log.info}.get(result.status, log.warning)
        event("job finished", status=result.status, rows=result.rows, duration_seconds=duration,
              **({"error": result.error} if result.error else {}))
        return {"job": job, "run_id": run_id, "status": result.status, "slot": slot_text, "trigger": trigger,
                "rows": result.rows, "details": result.details, "error": result.error}

    def _run_job(self, job: str, run_id: str, log: Any) -> JobResult:
        job_config = self.config.jobs[job]
        ctx = JobContext(
            name=job, run_id=run_id, database=self.db, settings=self.settings(), config=job_config,
            tz=self.tz, now=self.clock(), stop=self.stop_event, log=log,
            chunks=ChunkPolicy(target_seconds=job_config.chunk_seconds, pause_ratio=job_config.pause_ratio),
        )
        try:
            return JOBS[job](ctx)
        except Interrupted as exc:
            return JobResult("interrupted", rows=exc.rows, details=exc.details,
                             error="the daemon was stopping; the run ended early, keeping what it had done")
        except DatabaseError as exc:
            log.error("job failed: database error", error=str(exc))
            return JobResult("failed", error=f"database error: {exc}")
        except Exception as exc:  # noqa: BLE001 - recorded, and the next run tries again
            log.exception("job failed")
            return JobResult("failed", error=f"{type(exc).__name__}: {exc}")

    def _finish(self, run_id: str, result: JobResult, log: Any) -> None:
        # The database may be restarting right now: keep trying for a while so
        # the failure itself gets recorded.
        for attempt in range(10):
            try:
                self.db.execute(
                    "UPDATE job_runs SET status = ?, finished_at = ?, rows_affected = ?, details = ?, error = ?"
                    " WHERE run_id = ?",
                    (result.status, timestamp(self.clock()), result.rows, json.dumps(result.details, default=str),
                     result.error, run_id))
                return
            except DatabaseError as exc:
                if attempt == 9 or self.stop_event.is_set():
                    log.error("cannot record the end of the run", error=str(exc))
                    return
                time.sleep(1)

    def _insert_skipped(self, job: str, slot: datetime | None, trigger: str, now: datetime, reason: str,
                        run_id: str) -> None:
        """Record a run that never ran: a missed slot, or a manual run a stop dropped."""
        self.db.execute(
            "INSERT INTO job_runs (job, slot, `trigger`, host, run_id, status, started_at, finished_at, error)"
            " VALUES (?, ?, ?, ?, ?, 'skipped', ?, ?, ?)",
            (job, timestamp(slot) if slot is not None else None, trigger, self.host, run_id, timestamp(now),
             timestamp(now), reason))

    def _record_skipped(self, job: str, slot: datetime, trigger: str, now: datetime, reason: str) -> None:
        run_id = uuid.uuid4().hex[:12]
        try:
            self._insert_skipped(job, slot, trigger, now, reason, run_id)
        except IntegrityError:
            return
        logs.get(f"ratecared.jobs.{job}").info("slot skipped", job=job, run_id=run_id,
                                               slot=slot.astimezone(self.tz).isoformat(), reason=reason)

    def _acquire_lock(self, log: Any) -> bool:
        """Take the cross-daemon jobs lock (MySQL GET_LOCK); False if stopping first.

        SQLite needs none: one file, one daemon, and this thread runs jobs one at a time.
        """
        if self.db.name != "mysql":
            return True
        waited = False
        while not self.stop_event.is_set():
            if self.db.query("SELECT GET_LOCK(?, 1)", (LOCK_NAME,))[0][0] == 1:
                return True
            if not waited:
                holder = self.db.query("SELECT IS_USED_LOCK(?)", (LOCK_NAME,))[0][0]
                log.info("waiting for the jobs lock held by another daemon", connection_id=holder)
                waited = True
        return False

    def _release_lock(self) -> None:
        if self.db.name == "mysql":
            try:
                self.db.query("SELECT RELEASE_LOCK(?)", (LOCK_NAME,))
            except DatabaseError:
                pass  # a dropped connection has released it already

    # -- reporting -------------------------------------------------------------------

    def overview(self, now: datetime) -> list[dict[str, Any]]:
        out = []
        queued = self.queued()
        for job, job_config in self.config.jobs.items():
            nxt = self.next_slots.get(job) or next_fire(job_config.schedule, now, self.tz)
            last = self.runs(job, 1)
            out.append({
                "name": job,
                "schedule": job_config.schedule,
                "timezone": self.tz.key,
                "next_run": nxt.astimezone(self.tz).isoformat(),
                "next_run_note": dst_note(job_config.schedule, nxt, self.tz),
                "running": self.current is not None and self.current[0] == job,
                "queued_run_id": queued.get(job),
                "last_run": last[0] if last else None,
            })
        return out

    def runs(self, job: str, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT run_id, slot, `trigger`, host, status, started_at, finished_at, rows_affected, details, error"
            " FROM job_runs WHERE job = ? ORDER BY started_at DESC, id DESC LIMIT ?", (job, limit))
        out = []
        for run_id, slot, trigger, host, status, started, finished, rows_affected, details, error in rows:
            begun, ended = parse_timestamp(started), parse_timestamp(finished)
            out.append({
                "run_id": run_id,
                "slot": parse_timestamp(slot).astimezone(self.tz).isoformat() if slot else None,
                "trigger": trigger,
                "host": host,
                "status": status,
                "started_at": begun.astimezone(self.tz).isoformat() if begun else None,
                "finished_at": ended.astimezone(self.tz).isoformat() if ended else None,
                "duration_seconds": round((ended - begun).total_seconds(), 3) if begun and ended else None,
                "rows": int(rows_affected or 0),
                "details": json.loads(details) if details else {},
                "error": error,
            })
        return out
