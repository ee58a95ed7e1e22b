"""The runner: claims, catch-up, order and manual runs, driven with injected times."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ratecared.config import Config, load
from ratecared.db import Database, parse_timestamp, timestamp
from ratecared.scheduler.runner import Runner, Stopping, catch_up
from ratecared.settings import Settings

TZ = ZoneInfo("Europe/Berlin")


def at(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=TZ, fold=fold)


def config_for(tmp_path: Path, url: str, **deadlines: float) -> Config:
    extra = "".join(f"[jobs.{job}]\nstarting_deadline = {seconds}\n" for job, seconds in deadlines.items())
    path = tmp_path / "c.toml"
    path.write_text(f'[daemon]\nsocket = "/tmp/x.sock"\ntimezone = "Europe/Berlin"\n[database]\nurl = "{url}"\n{extra}')
    return load(path)


def runner(config: Config, db: Database, host: str = "web1", now: datetime | None = None) -> Runner:
    clock = {"now": now or at(2026, 3, 28, 12)}
    r = Runner(config, db, host, settings=lambda: Settings(), refresh_settings=lambda: None,
               clock=lambda: clock["now"])
    r.clock_state = clock  # type: ignore[attr-defined]
    return r


def drive(r: Runner, until: datetime, step: timedelta = timedelta(minutes=30)) -> list[tuple[str, str, str]]:
    """Advance the injected clock to `until`, running what is due; return (job, local slot, trigger)."""
    ran = []
    now = r.clock_state["now"]  # type: ignore[attr-defined]
    while now <= until:
        r.clock_state["now"] = now  # type: ignore[attr-defined]
        while (run := r.step(now)) is not None:
            slot = parse_timestamp(run["slot"]).astimezone(TZ).strftime("%m-%d %H:%M") if run["slot"] else None
            ran.append((run["job"], slot, run["status"]))
        now += step
    return ran


@pytest.fixture
def db(database: Database) -> Database:
    return database


def test_dst_day_runs_each_job_once_in_slot_order(tmp_path: Path, db: Database, db_url: str) -> None:
    r = runner(config_for(tmp_path, db_url), db)
    r.start_up(at(2026, 3, 28, 12))
    ran = drive(r, at(2026, 3, 29, 12))
    # 02:00 does not exist on 03-29: aggregation runs at 03:00, just before cleanup's 03:00.
    assert [(job, slot) for job, slot, _ in ran] == [
        ("aggregate_statistics", "03-29 03:00"),
        ("cleanup_expired_cache", "03-29 03:00"),
        ("warm_cache", "03-29 06:00"),
    ]
    assert [status for *_, status in ran] == ["success", "success", "skipped"]


def test_fall_back_day_runs_once(tmp_path: Path, db: Database, db_url: str) -> None:
    r = runner(config_for(tmp_path, db_url), db, now=at(2026, 10, 24, 12))
    r.start_up(at(2026, 10, 24, 12))
    ran = drive(r, at(2026, 10, 25, 12), step=timedelta(minutes=15))
    assert [job for job, *_ in ran] == ["aggregate_statistics", "cleanup_expired_cache", "warm_cache"]
    assert db.query("SELECT COUNT(*) FROM job_runs WHERE job = 'aggregate_statistics'")[0][0] == 1


def test_a_slot_is_claimed_once_across_daemons(tmp_path: Path, db: Database, db_url: str) -> None:
    config = config_for(tmp_path, db_url)
    first, second = runner(config, db, "web1"), runner(config, db, "web2")
    for r in (first, second):
        r.start_up(at(2026, 3, 28, 12))
    due = at(2026, 3, 29, 3, 0)
    assert first.step(due)["status"] == "success"
    assert second.step(due)["status"] == "claimed_elsewhere"
    rows = db.query("SELECT host, status FROM job_runs WHERE job = 'aggregate_statistics'")
    assert rows == [("web1", "success")]


def test_missed_slot_runs_once_at_start_within_its_deadline(tmp_path: Path, db: Database, db_url: str) -> None:
    config = config_for(tmp_path, db_url)
    r = runner(config, db, now=at(2026, 3, 24, 12))
    r.start_up(at(2026, 3, 24, 12))
    drive(r, at(2026, 3, 25, 12), step=timedelta(hours=1))
    # Down from the 25th noon to the 28th 09:00: three aggregation slots missed.
    again = runner(config, db, now=at(2026, 3, 28, 9))
    again.start_up(at(2026, 3, 28, 9))
    ran = drive(again, at(2026, 3, 28, 9))
    assert ran == [("aggregate_statistics", "03-28 02:00", "success"),
                   ("cleanup_expired_cache", "03-28 03:00", "success")]
    # Warming's 06:00 slot is 3 h old at 09:00, past its 2 h starting deadline.
    assert db.query("SELECT status FROM job_runs WHERE job = 'warm_cache' AND slot = ?",
                    (timestamp(at(2026, 3, 28, 6)),)) == [("skipped",)]
    rows = db.query("SELECT slot, `trigger`, status FROM job_runs WHERE job = 'aggregate_statistics'"
                    " AND slot > ? ORDER BY slot", (timestamp(at(2026, 3, 26)),))
    assert [(t, s) for _, t, s in rows] == [("catchup", "skipped"), ("catchup", "skipped"), ("catchup", "success")]


def test_missed_slot_past_its_deadline_is_recorded_as_skipped(tmp_path: Path, db: Database, db_url: str) -> None:
    config = config_for(tmp_path, db_url, warm_cache=7200)
    r = runner(config, db, now=at(2026, 3, 24, 12))
    r.start_up(at(2026, 3, 24, 12))
    drive(r, at(2026, 3, 25, 12), step=timedelta(hours=1))
    # Back at 14:00: the 06:00 warming slot is 8 h old, past its 2 h deadline.
    again = runner(config, db, now=at(2026, 3, 26, 14))
    again.start_up(at(2026, 3, 26, 14))
    ran = drive(again, at(2026, 3, 26, 14))
    assert "warm_cache" not in [job for job, *_ in ran]
    status, error = db.query("SELECT status, error FROM job_runs WHERE job = 'warm_cache' ORDER BY slot DESC")[0]
    assert status == "skipped" and "starting deadline" in error


def test_a_run_left_running_by_a_killed_daemon_is_marked_interrupted(tmp_path: Path, db: Database,
                                                                    db_url: str) -> None:
    db.execute("INSERT INTO job_runs (job, slot, `trigger`, host, run_id, status, started_at)"
               " VALUES ('aggregate_statistics', ?, 'schedule', 'web1', 'dead', 'running', ?)",
               (timestamp(at(2026, 3, 28, 2)), timestamp(at(2026, 3, 28, 2))))
    db.execute("INSERT INTO job_runs (job, slot, `trigger`, host, run_id, status, started_at)"
               " VALUES ('cleanup_expired_cache', NULL, 'manual', 'web2', 'other', 'running', ?)",
               (timestamp(at(2026, 3, 28, 2)),))
    runner(config_for(tmp_path, db_url), db).start_up(at(2026, 3, 28, 9))
    assert dict(db.query("SELECT run_id, status FROM job_runs")) == {"dead": "interrupted", "other": "running"}


def test_manual_runs_go_first_and_are_recorded_as_manual(tmp_path: Path, db: Database, db_url: str) -> None:
    r = runner(config_for(tmp_path, db_url), db)
    r.start_up(at(2026, 3, 28, 12))
    run_id, future, already = r.request("cleanup_expired_cache")
    assert r.request("cleanup_expired_cache") == (run_id, future, True) and not already
    assert r.queued() == {"cleanup_expired_cache": run_id}
    result = r.step(at(2026, 3, 28, 12))
    assert result == future.result() and result["run_id"] == run_id
    assert (result["trigger"], result["slot"], result["status"]) == ("manual", None, "success")
    assert r.runs("cleanup_expired_cache")[0]["trigger"] == "manual"


def test_a_waiter_that_went_away_does_not_break_the_run(tmp_path: Path, db: Database, db_url: str) -> None:
    r = runner(config_for(tmp_path, db_url), db)
    r.start_up(at(2026, 3, 28, 12))
    _, future, _ = r.request("cleanup_expired_cache")
    assert future.cancel()
    assert r.step(at(2026, 3, 28, 12))["status"] == "success"


def test_a_stuck_runner_still_answers_the_queued_runs(tmp_path: Path, db: Database, db_url: str) -> None:
    r = runner(config_for(tmp_path, db_url), db)
    _, future, _ = r.request("warm_cache")
    r.close_queue()
    assert (future.result(timeout=0)["status"], future.result()["error"]) == (
        "skipped", "the daemon stopped before the run started")
    with pytest.raises(Stopping):
        r.request("warm_cache")


def test_the_loop_stops_promptly(tmp_path: Path, db: Database, db_url: str) -> None:
    r = Runner(config_for(tmp_path, db_url), db, "web1", settings=lambda: Settings(), refresh_settings=lambda: None)
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
    r = runner(config_for(tmp_path, db_url), db)
    r.start_up(at(2026, 3, 28, 12))
    run_id, future, _ = r.request("warm_cache")
    r.stop()
    r.run()
    assert future.result(timeout=1)["status"] == "skipped"
    [row] = [run for run in r.runs("warm_cache") if run["run_id"] == run_id]
    assert (row["trigger"], row["status"], row["error"]) == ("manual", "skipped",
                                                             "the daemon stopped before the run started")


@pytest.mark.parametrize(
    "last,now,deadline,run,skipped",
    [
        (None, at(2026, 3, 28, 9), 72000, None, []),
        (at(2026, 3, 28, 2), at(2026, 3, 28, 9), 72000, None, []),
        (at(2026, 3, 27, 2), at(2026, 3, 28, 9), 72000, at(2026, 3, 28, 2), []),
        (at(2026, 3, 25, 2), at(2026, 3, 28, 9), 72000, at(2026, 3, 28, 2), [at(2026, 3, 26, 2), at(2026, 3, 27, 2)]),
        (at(2026, 3, 27, 2), at(2026, 3, 28, 9), 3600, None, [at(2026, 3, 28, 2)]),
    ],
)
def test_catch_up_plan(last, now, deadline, run, skipped) -> None:
    plan = catch_up("0 2 * * *", last, now, TZ, deadline)
    assert (plan.run, plan.skipped) == (run, skipped)


@pytest.mark.mariadb
def test_a_slot_due_while_the_database_is_down_runs_when_it_is_back(tmp_path: Path, mariadb, mysql_url: str) -> None:
    from ratecared.config import DatabaseConfig
    from ratecared.db import DatabaseError, migrations

    db = Database(DatabaseConfig(url=mysql_url, connect_timeout=1))
    migrations.apply(db)
    r = runner(config_for(tmp_path, mysql_url), db)
    r.start_up(at(2026, 3, 28, 12))
    mariadb.kill()
    try:
        with pytest.raises(DatabaseError):
            r.step(at(2026, 3, 29, 3, 5))
    finally:
        mariadb.start()
    run = r.step(at(2026, 3, 29, 3, 10))
    assert (run["job"], run["status"], run["trigger"]) == ("aggregate_statistics", "success", "schedule")
    assert parse_timestamp(run["slot"]) == at(2026, 3, 29, 3, 0)
    db.close()
