"""The runner: claims, missed slots, order, manual runs, progress and reload, driven with injected times."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from structlog.contextvars import get_contextvars

from ratecared.config import Config, load
from ratecared.db import Database, DatabaseError, parse_timestamp, timestamp
from ratecared.job_contract import JobContext, JobResult, RunStatus
from ratecared.jobs import JOBS
from ratecared.scheduler.runner import Runner, RunRecord, Stopping, Trigger
from ratecared.settings import Settings

TZ = ZoneInfo("Europe/Berlin")


def at(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=TZ, fold=fold)


def config_for(tmp_path: Path, url: str, **jobs: dict[str, Any]) -> Config:
    extra = "".join(f"[jobs.{job}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
                    for job, keys in jobs.items())
    path = tmp_path / "c.toml"
    path.write_text(f'[daemon]\nsocket = "/tmp/x.sock"\ntimezone = "Europe/Berlin"\n[database]\nurl = "{url}"\n{extra}')
    return load(path)


class Clock:
    """The time the runner sees; the test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class CurrentConfig:
    """The daemon's one reference to the config in effect, replaced whole on reload."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self) -> Config:
        return self.config


def runner(config: Config | CurrentConfig, db: Database, host: str = "web1", now: datetime | None = None,
           jobs: dict[str, Any] | None = None) -> Runner:
    current = config if isinstance(config, CurrentConfig) else CurrentConfig(config)
    return Runner(current, db, host, jobs or JOBS, settings=lambda: Settings(), refresh_settings=lambda: None,
                  clock=Clock(now or at(2026, 3, 28, 12)))


def drive(r: Runner, until: datetime, step: timedelta = timedelta(minutes=30)) -> list[tuple[str, str | None, str]]:
    """Advance the runner's clock to `until`, running what is due; return (job, local slot, status)."""
    ran = []
    clock: Clock = r.clock  # type: ignore[assignment]
    while clock.now <= until:
        while (record := r.step(clock.now)) is not None or r.seconds_until_next(clock.now) == 0:
            if record is not None:
                slot = record.slot.astimezone(TZ).strftime("%m-%d %H:%M") if record.slot else None
                ran.append((record.job, slot, record.status.value))
        clock.now += step
    return ran


def started(db: Database, config: Config, now: datetime) -> Runner:
    """A runner that has started at `now` (its first start on an empty database)."""
    r = runner(config, db, now=now)
    r.start_up(now)
    return r


@pytest.fixture
def db(database: Database) -> Database:
    return database


def test_dst_day_runs_each_job_once_in_slot_order(tmp_path: Path, db: Database, db_url: str) -> None:
    r = started(db, config_for(tmp_path, db_url), at(2026, 3, 28, 12))
    ran = drive(r, at(2026, 3, 29, 12))
    # 02:00 does not exist on 03-29: aggregation runs at 03:00, just before cleanup's 03:00.
    assert ran == [
        ("aggregate_statistics", "03-29 03:00", "success"),
        ("cleanup_expired_cache", "03-29 03:00", "success"),
        ("warm_cache", "03-29 06:00", "skipped"),
    ]
    assert db.query("SELECT DISTINCT `trigger` FROM job_runs") == [("schedule",)]


def test_fall_back_day_runs_once(tmp_path: Path, db: Database, db_url: str) -> None:
    r = started(db, config_for(tmp_path, db_url), at(2026, 10, 24, 12))
    ran = drive(r, at(2026, 10, 25, 12), step=timedelta(minutes=15))
    assert [job for job, *_ in ran] == ["aggregate_statistics", "cleanup_expired_cache", "warm_cache"]
    assert db.query("SELECT COUNT(*) FROM job_runs WHERE job = 'aggregate_statistics'")[0][0] == 1


def test_a_slot_is_claimed_once_across_daemons(tmp_path: Path, db: Database, db_url: str) -> None:
    config = config_for(tmp_path, db_url)
    first, second = runner(config, db, "web1"), runner(config, db, "web2")
    for r in (first, second):
        r.start_up(at(2026, 3, 28, 12))
    due = at(2026, 3, 29, 3, 0)
    assert first.step(due).status is RunStatus.SUCCESS
    assert second.step(due) is None
    assert db.query("SELECT host, status FROM job_runs WHERE job = 'aggregate_statistics'") == [("web1", "success")]
    # The second daemon has moved on to cleanup, not back to aggregation's slot.
    assert second.step(due).job == "cleanup_expired_cache"


def test_missed_slots_run_once_at_start_within_their_deadline(tmp_path: Path, db: Database, db_url: str) -> None:
    config = config_for(tmp_path, db_url)
    drive(started(db, config, at(2026, 3, 24, 12)), at(2026, 3, 25, 12), step=timedelta(hours=1))
    # Down from the 25th noon to the 28th 09:00: three slots of each job missed.
    ran = drive(started(db, config, at(2026, 3, 28, 9)), at(2026, 3, 28, 9))
    # Warming's 06:00 slot is 3 h old at 09:00, past its 2 h starting deadline.
    assert ran == [("aggregate_statistics", "03-28 02:00", "success"),
                   ("cleanup_expired_cache", "03-28 03:00", "success"),
                   ("warm_cache", "03-28 06:00", "skipped")]
    rows = db.query("SELECT slot, `trigger`, status, error FROM job_runs WHERE job = 'aggregate_statistics'"
                    " AND slot > ? ORDER BY slot", (timestamp(at(2026, 3, 26)),))
    assert [(t, s) for _, t, s, _ in rows] == [("catchup", "skipped"), ("catchup", "skipped"), ("catchup", "success")]
    assert rows[0][3] == "missed while the daemon was down; the later slot 2026-03-28 02:00 CET runs instead"
    [(error,)] = db.query("SELECT error FROM job_runs WHERE job = 'warm_cache' AND slot = ?",
                          (timestamp(at(2026, 3, 28, 6)),))
    assert error == "missed while the daemon was down; 10800 s late, past its starting deadline of 7200 s"


def test_a_daemon_installed_yesterday_and_down_at_2_runs_tonights_slot(tmp_path: Path, db: Database,
                                                                       db_url: str) -> None:
    config = config_for(tmp_path, db_url)
    # First start yesterday at noon; nothing ran before the daemon went down.
    started(db, config, at(2026, 3, 24, 12))
    ran = drive(started(db, config, at(2026, 3, 25, 9)), at(2026, 3, 25, 9))
    assert ("aggregate_statistics", "03-25 02:00", "success") in ran
    assert db.query("SELECT `trigger` FROM job_runs WHERE job = 'aggregate_statistics'") == [("catchup",)]


def test_slots_before_the_first_start_never_run(tmp_path: Path, db: Database, db_url: str) -> None:
    config = config_for(tmp_path, db_url)
    ran = drive(started(db, config, at(2026, 3, 25, 9)), at(2026, 3, 25, 12))
    assert ran == []
    assert db.query("SELECT COUNT(*) FROM job_runs") == [(0,)]
    # A second daemon later counts from the first start, not from its own.
    ran = drive(started(db, config, at(2026, 3, 26, 9)), at(2026, 3, 26, 9))
    assert [job for job, _, status in ran if status == "success"] == ["aggregate_statistics",
                                                                       "cleanup_expired_cache"]


def test_a_slot_past_its_deadline_while_the_jobs_were_busy_is_skipped(tmp_path: Path, db: Database,
                                                                      db_url: str) -> None:
    config = config_for(tmp_path, db_url, warm_cache={"schedule": "0 * * * *", "starting_deadline": 600})
    r = started(db, config, at(2026, 3, 28, 12, 30))
    # Four hourly slots came while something else held the scheduler: the latest is 30 min late.
    record = r.step(at(2026, 3, 28, 16, 30))
    assert (record.job, record.status, record.trigger.value) == ("warm_cache", RunStatus.SKIPPED, "schedule")
    rows = db.query("SELECT slot, error FROM job_runs WHERE job = 'warm_cache' ORDER BY slot")
    assert [parse_timestamp(slot).astimezone(TZ).hour for slot, _ in rows] == [13, 14, 15, 16]
    assert rows[-1][1] == "1800 s late, past its starting deadline of 600 s"
    assert r.next_run() == ("warm_cache", at(2026, 3, 28, 17))


def test_a_run_left_running_by_a_killed_daemon_keeps_its_progress(tmp_path: Path, db: Database,
                                                                   db_url: str) -> None:
    begun, progress = at(2026, 3, 28, 2), at(2026, 3, 28, 2, 40)
    db.execute("INSERT INTO job_runs (job, slot, `trigger`, host, run_id, status, started_at, rows_affected, details,"
               " progress_at) VALUES ('aggregate_statistics', ?, 'schedule', 'web1', 'dead', 'running', ?, 1200,"
               " '{\"rows_deleted\": 1200}', ?)", (timestamp(begun), timestamp(begun), timestamp(progress)))
    db.execute("INSERT INTO job_runs (job, slot, `trigger`, host, run_id, status, started_at)"
               " VALUES ('cleanup_expired_cache', NULL, 'manual', 'web1', 'early', 'running', ?)", (timestamp(begun),))
    db.execute("INSERT INTO job_runs (job, slot, `trigger`, host, run_id, status, started_at)"
               " VALUES ('cleanup_expired_cache', NULL, 'manual', 'web2', 'other', 'running', ?)", (timestamp(begun),))
    r = started(db, config_for(tmp_path, db_url), at(2026, 3, 28, 9))
    runs = {run["run_id"]: run for job in ("aggregate_statistics", "cleanup_expired_cache") for run in r.runs(job)}
    dead = runs["dead"]
    assert (dead["status"], dead["rows"], dead["details"]) == ("interrupted", 1200, {"rows_deleted": 1200})
    # It ended at its last progress, not when the next daemon found it.
    assert (dead["finished_at"], dead["duration_seconds"]) == (progress.isoformat(), 2400)
    assert (runs["early"]["status"], runs["early"]["duration_seconds"]) == ("interrupted", 0)
    assert runs["other"]["status"] == "running"


def test_a_run_writes_its_progress_as_it_goes(tmp_path: Path, db: Database, db_url: str) -> None:
    seen = []

    def job(ctx: JobContext) -> JobResult:
        ctx.progress(10, {"chunks": 1})
        seen.append(db.query("SELECT status, rows_affected, details FROM job_runs")[0])
        return JobResult(RunStatus.SUCCESS, rows=20)

    r = runner(config_for(tmp_path, db_url), db, jobs={**JOBS, "cleanup_expired_cache": job})
    r.request("cleanup_expired_cache")
    assert r.step(at(2026, 3, 28, 12)).rows == 20
    assert seen == [("running", 10, '{"chunks": 1}')]


def test_a_failed_run_keeps_what_it_had_done_in_its_record(tmp_path: Path, db: Database, db_url: str) -> None:
    def job(ctx: JobContext) -> JobResult:
        # Three chunks in a moment: only the first is written as it goes, the last is what it had done.
        for chunk in (1, 2, 3):
            ctx.progress(10 * chunk, {"chunks": chunk})
        raise DatabaseError("(2013) Lost connection to server during query")

    r = runner(config_for(tmp_path, db_url), db, jobs={**JOBS, "cleanup_expired_cache": job})
    r.request("cleanup_expired_cache")
    record = r.step(at(2026, 3, 28, 12))
    assert (record.status, record.rows, record.details["chunks"]) == (RunStatus.FAILED, 30, 3)
    assert record.error == "database error: (2013) Lost connection to server during query"
    run = r.runs("cleanup_expired_cache")[0]
    assert (run["status"], run["rows"], run["details"]["chunks"]) == ("failed", 30, 3)


def test_a_run_binds_its_job_and_run_id_for_everything_it_logs(tmp_path: Path, db: Database, db_url: str) -> None:
    bound = []
    r = Runner(CurrentConfig(config_for(tmp_path, db_url)), db, "web1", JOBS, settings=lambda: Settings(),
               refresh_settings=lambda: bound.append(dict(get_contextvars())), clock=Clock(at(2026, 3, 28, 12)))
    run_id, _, _ = r.request("cleanup_expired_cache")
    r.step(at(2026, 3, 28, 12))
    assert bound == [{"job": "cleanup_expired_cache", "run_id": run_id}]
    assert get_contextvars() == {}


def test_manual_runs_go_first_and_are_recorded_as_manual(tmp_path: Path, db: Database, db_url: str) -> None:
    r = started(db, config_for(tmp_path, db_url), at(2026, 3, 28, 12))
    run_id, future, already = r.request("cleanup_expired_cache")
    assert r.request("cleanup_expired_cache") == (run_id, future, True) and not already
    queued = {job["name"]: job["queued_run_id"] for job in r.overview(at(2026, 3, 28, 12))}
    assert queued == {"aggregate_statistics": None, "cleanup_expired_cache": run_id, "warm_cache": None}
    result = r.step(at(2026, 3, 28, 12))
    assert future.result() == result.as_json(TZ) and result.run_id == run_id
    assert (result.trigger.value, result.slot, result.status) == ("manual", None, RunStatus.SUCCESS)
    assert r.runs("cleanup_expired_cache")[0]["trigger"] == "manual"


def test_a_manual_run_the_database_refuses_to_record_says_so(tmp_path: Path, db: Database, db_url: str) -> None:
    if db.name == "sqlite":
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON job_runs BEGIN SELECT RAISE(ABORT, 'no room'); END")
    else:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON job_runs FOR EACH ROW"
                   " SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'no room'")
    r = runner(config_for(tmp_path, db_url), db)
    _, future, _ = r.request("cleanup_expired_cache")
    with pytest.raises(DatabaseError):
        r.step(at(2026, 3, 28, 12))
    with pytest.raises(DatabaseError, match="the database refused to record the run: .*no room"):
        future.result(timeout=0)


def test_a_waiter_that_went_away_does_not_break_the_run(tmp_path: Path, db: Database, db_url: str) -> None:
    r = started(db, config_for(tmp_path, db_url), at(2026, 3, 28, 12))
    _, future, _ = r.request("cleanup_expired_cache")
    assert future.cancel()
    assert r.step(at(2026, 3, 28, 12)).status is RunStatus.SUCCESS


def test_a_stuck_runner_still_answers_the_queued_runs(tmp_path: Path, db: Database, db_url: str) -> None:
    r = runner(config_for(tmp_path, db_url), db)
    _, future, _ = r.request("warm_cache")
    r.close_queue()
    assert (future.result(timeout=0)["status"], future.result()["error"]) == (
        "skipped", "the daemon stopped before the run started")
    with pytest.raises(Stopping):
        r.request("warm_cache")


def test_the_loop_stops_promptly(tmp_path: Path, db: Database, db_url: str) -> None:
    r = Runner(CurrentConfig(config_for(tmp_path, db_url)), db, "web1", JOBS, settings=lambda: Settings(),
               refresh_settings=lambda: None)
    r.start()
    run_id, future, _ = r.request("aggregate_statistics")
    assert future.result(timeout=60)["status"] == "success"
    r.stop()
    # Only a runner that ignores the stop comes near this.
    r.join(30)
    assert not r.is_alive()
    with pytest.raises(Stopping):
        r.request("aggregate_statistics")


def test_manual_runs_left_queued_at_stop_are_recorded(tmp_path: Path, db: Database, db_url: str) -> None:
    r = started(db, config_for(tmp_path, db_url), at(2026, 3, 28, 12))
    run_id, future, _ = r.request("warm_cache")
    r.stop()
    r.run()
    assert future.result(timeout=1)["status"] == "skipped"
    [row] = [run for run in r.runs("warm_cache") if run["run_id"] == run_id]
    assert (row["trigger"], row["status"], row["error"]) == ("manual", "skipped",
                                                             "the daemon stopped before the run started")


def test_next_run_and_current_job_for_the_daemon(tmp_path: Path, db: Database, db_url: str) -> None:
    running = []

    def job(ctx: JobContext) -> JobResult:
        running.append(r.current_job())
        return JobResult(RunStatus.SUCCESS)

    r = runner(config_for(tmp_path, db_url), db, jobs={**JOBS, "aggregate_statistics": job})
    assert r.next_run() is None  # the plan is read from the database at start
    r.start_up(at(2026, 3, 28, 12))
    assert r.next_run() == ("aggregate_statistics", at(2026, 3, 29, 3))
    r.step(at(2026, 3, 29, 3))
    assert running == ["aggregate_statistics"] and r.current_job() is None
    assert r.next_run() == ("cleanup_expired_cache", at(2026, 3, 29, 3))


def test_a_reload_reaches_the_plan_and_the_next_run(tmp_path: Path, db: Database, db_url: str) -> None:
    seen: list[tuple[str, float]] = []

    def job(ctx: JobContext) -> JobResult:
        seen.append((ctx.config.url, ctx.config.timeout))
        return JobResult(RunStatus.SUCCESS)

    current = CurrentConfig(config_for(tmp_path, db_url))
    r = runner(current, db, jobs={**JOBS, "warm_cache": job})
    r.start_up(at(2026, 3, 28, 12))
    jobs = {j["name"]: j for j in r.overview(at(2026, 3, 28, 12))}
    assert jobs["warm_cache"]["next_run"] == "2026-03-29T06:00:00+02:00"
    current.config = config_for(tmp_path, db_url, warm_cache={"schedule": "30 13 * * *",
                                                              "url": "http://127.0.0.2/w/{widget_id}", "timeout": 3})
    r.wake_up()
    jobs = {j["name"]: j for j in r.overview(at(2026, 3, 28, 12, 5))}
    assert (jobs["warm_cache"]["schedule"], jobs["warm_cache"]["next_run"]) == ("30 13 * * *",
                                                                                 "2026-03-28T13:30:00+01:00")
    # The other jobs keep their plan.
    assert jobs["aggregate_statistics"]["next_run"] == "2026-03-29T03:00:00+02:00"
    assert r.next_run() == ("warm_cache", at(2026, 3, 28, 13, 30))
    record = r.step(at(2026, 3, 28, 13, 30))
    assert (record.job, record.status, record.slot) == ("warm_cache", RunStatus.SUCCESS, at(2026, 3, 28, 13, 30))
    assert seen == [("http://127.0.0.2/w/{widget_id}", 3.0)]


def test_a_run_record_is_one_type_from_the_step_to_the_history(tmp_path: Path, db: Database, db_url: str) -> None:
    r = started(db, config_for(tmp_path, db_url), at(2026, 3, 28, 12))
    record = r.step(at(2026, 3, 29, 3))
    assert isinstance(record, RunRecord)
    [shown] = r.runs("aggregate_statistics")
    assert {k: v for k, v in record.as_json(TZ).items() if k != "duration_seconds"} == {
        k: v for k, v in shown.items() if k != "duration_seconds"}


@pytest.mark.mariadb
def test_a_slot_due_while_the_database_is_down_runs_when_it_is_back(tmp_path: Path, mariadb, mysql_url: str) -> None:
    from ratecared.config import DatabaseConfig
    from ratecared.db import migrations

    db = Database(DatabaseConfig(url=mysql_url, connect_timeout=1))
    migrations.apply(db)
    r = started(db, config_for(tmp_path, mysql_url), at(2026, 3, 28, 12))
    mariadb.kill()
    try:
        with pytest.raises(DatabaseError):
            r.step(at(2026, 3, 29, 3, 5))
    finally:
        mariadb.start()
    run = r.step(at(2026, 3, 29, 3, 10))
    assert (run.job, run.status, run.trigger.value) == ("aggregate_statistics", RunStatus.SUCCESS, "schedule")
    assert run.slot == at(2026, 3, 29, 3, 0)
    db.close()


@pytest.mark.parametrize("module,other", [("ratecared.scheduler.runner", "ratecared.jobs"),
                                          ("ratecared.jobs", "ratecared.scheduler")])
def test_the_jobs_and_the_scheduler_meet_only_in_the_job_contract(module: str, other: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith({other!r})))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_a_cancel_stops_the_running_run_at_its_next_chunk_and_nothing_else(tmp_path: Path, db: Database,
                                                                            db_url: str) -> None:
    import threading

    from ratecared.jobs.purge import delete_in_chunks

    reached, go = threading.Event(), threading.Event()
    chunks = []

    def chunk(size: int) -> tuple[int, bool]:
        chunks.append(size)
        reached.set()
        assert go.wait(60)
        return 100, False

    def job(ctx: JobContext) -> JobResult:
        delete_in_chunks(chunk, ctx.stop)
        return JobResult(RunStatus.SUCCESS)

    r = started(db, config_for(tmp_path, db_url), at(2026, 3, 28, 12))
    r.jobs = {**JOBS, "cleanup_expired_cache": job}
    run_id, future, _ = r.request("cleanup_expired_cache")
    stepped: list[RunRecord] = []
    stepping = threading.Thread(target=lambda: stepped.append(r.step(at(2026, 3, 28, 12))))
    stepping.start()
    assert reached.wait(60)
    assert r.cancel("cleanup_expired_cache", "alice (uid 1000)") == {
        "job": "cleanup_expired_cache", "run_id": run_id, "status": "running", "cancelled": "running",
        "by": "alice (uid 1000)"}
    go.set()
    stepping.join(60)
    record = stepped[0]
    assert (record.status, record.rows, len(chunks)) == (RunStatus.INTERRUPTED, 100, 1)
    assert record.error == "cancelled by alice (uid 1000); the run ended early, keeping what it had done"
    assert future.result(timeout=0)["status"] == "interrupted"
    # Only that run: the daemon goes on, and the job's next run runs.
    assert not r.stop_event.is_set() and r.current_job() is None
    r.jobs = JOBS
    r.request("cleanup_expired_cache")
    assert r.step(at(2026, 3, 28, 12)).status is RunStatus.SUCCESS


def test_a_cancel_drops_the_queued_run_and_answers_its_waiter(tmp_path: Path, db: Database, db_url: str) -> None:
    from ratecared.scheduler.runner import NothingToCancel

    r = started(db, config_for(tmp_path, db_url), at(2026, 3, 28, 12))
    with pytest.raises(NothingToCancel, match="warm_cache has no run running or queued"):
        r.cancel("warm_cache", "root (uid 0)")
    run_id, future, _ = r.request("warm_cache")
    dropped = r.cancel("warm_cache", "root (uid 0)")
    assert (dropped["run_id"], dropped["status"], dropped["cancelled"]) == (run_id, "skipped", "queued")
    assert future.result(timeout=0)["error"] == "cancelled by root (uid 0) before it started"
    assert r.step(at(2026, 3, 28, 12)) is None
    assert [(run["run_id"], run["status"], run["error"]) for run in r.runs("warm_cache")] == [
        (run_id, "skipped", "cancelled by root (uid 0) before it started")]


def test_a_running_runs_progress_has_its_rate_elapsed_and_time_left() -> None:
    started_at = at(2026, 3, 28, 12)
    record = RunRecord("warm_cache", "r1", Trigger.MANUAL, RunStatus.RUNNING, started_at=started_at, rows=100,
                       details={"chunks": 4, "share_done": 0.25}, progress_at=started_at + timedelta(seconds=5))
    assert record.as_json(TZ, started_at + timedelta(seconds=10))["progress"] == {
        "elapsed_seconds": 10.0, "rows": 100, "chunks": 4, "rows_per_second": 20.0, "remaining_seconds": 10.0}
    # Nothing recorded yet: no rate, no estimate.
    fresh = RunRecord("warm_cache", "r2", Trigger.MANUAL, RunStatus.RUNNING, started_at=started_at)
    assert fresh.progress(started_at + timedelta(seconds=3)) == {
        "elapsed_seconds": 3.0, "rows": 0, "chunks": None, "rows_per_second": None, "remaining_seconds": None}
