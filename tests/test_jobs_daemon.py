"""Jobs inside the running daemon: ratecarectl, signals, kill -9, a restarting MariaDB, two daemons."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
import pytest

from conftest import DaemonProcess, ctl, rewrite, setting_in_effect, wait_for
from jobhelpers import HangingWidgets, enable_warming
from mariadb import MariaDB, schema_of
from ratecared.config import DatabaseConfig
from ratecared.db import Database, migrations, timestamp

UTC = timezone.utc
DAY_ROWS = 20_000
OLD_DAYS = 10


def bulk_requests(db: Database, days_back: int, rows_per_day: int) -> None:
    """`rows_per_day` requests on each of the `days_back` UTC days before today, in time order."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for back in range(days_back, 0, -1):
        start = timestamp(today - timedelta(days=back))[:19]
        step = 86000 / rows_per_day
        if db.name == "mysql":
            db.execute(
                "INSERT INTO api_requests (widget_id, platform, status_code, response_time_ms, cache_hit, created_at)"
                f" SELECT 1 + seq % 50, 'booking', IF(seq % 20 = 0, 503, 200), seq % 900, seq % 2,"
                f" TIMESTAMPADD(MICROSECOND, FLOOR(seq * {step} * 1000000), ?) FROM seq_0_to_{rows_per_day - 1}",
                (start,))
        else:
            db.execute(
                f"WITH RECURSIVE s(seq) AS (SELECT 0 UNION ALL SELECT seq + 1 FROM s WHERE seq < {rows_per_day - 1})"
                " INSERT INTO api_requests (widget_id, platform, status_code, response_time_ms, cache_hit, created_at)"
                " SELECT 1 + seq % 50, 'booking', CASE WHEN seq % 20 = 0 THEN 503 ELSE 200 END, seq % 900, seq % 2,"
                f" strftime('%Y-%m-%d %H:%M:%f', ?, '+' || (seq * {step}) || ' seconds') FROM s",
                (start,))


def slow_purge_config(config_factory, url: str | None = None, pause_ratio: float = 10) -> Path:
    """Aggregation with tiny chunks, each followed by a pause `pause_ratio` times its own length.

    The purge then lasts about eleven times its own work, on a fast machine
    as on a slow one, so a test can act while it is under way.
    """
    return config_factory(
        url=url, daemon={"timezone": "UTC"},
        jobs__aggregate_statistics={"chunk_seconds": 0.001, "pause_ratio": pause_ratio, "optimize_min_free_mb": 1e9},
    )


def seeded(config: Path) -> Database:
    import tomllib

    db = Database(DatabaseConfig(url=tomllib.loads(config.read_text())["database"]["url"]))
    migrations.apply(db)
    db.execute("UPDATE settings SET `value` = '3' WHERE `key` = 'cache-statistics-retention-days'")
    bulk_requests(db, OLD_DAYS, DAY_ROWS)
    return db


def purge_under_way(config: Path, daemon_factory) -> tuple[Database, DaemonProcess]:
    """A daemon on seeded data, with an aggregation run already deleting rows."""
    db = seeded(config)
    before = count(db)
    daemon = daemon_factory(config)
    assert ctl(daemon.socket, "run", "aggregate_statistics")[0] == 0
    wait_for(lambda: count(db) < before - 1000)
    return db, daemon


def summary_totals(db: Database) -> dict[str, int]:
    return {str(d)[:10]: int(n) for d, n in db.query("SELECT stat_date, total_requests FROM api_statistics_summary")}


def count(db: Database) -> int:
    return int(db.query("SELECT COUNT(*) FROM api_requests")[0][0])


def running_progress(daemon: DaemonProcess) -> dict | None:
    """The running aggregation as `ratecarectl history` shows it, once it has deleted rows."""
    run = json.loads(ctl(daemon.socket, "history", "aggregate_statistics", "--json")[1])[0]
    return run if run["status"] == "running" and run["details"].get("rows_deleted", 0) > 0 else None


def journal_lines(daemon: DaemonProcess, event: str, **fields: str) -> list[str]:
    """The daemon's journal lines for `event` that carry all of `fields` (in any order)."""
    return [line for line in daemon.output.splitlines()
            if re.sub(r"^<\d>", "", line).startswith(f"{event} ")
            and all(f"{key}={value}" in line.split() for key, value in fields.items())]


# -- ratecarectl --------------------------------------------------------------------


def test_jobs_run_and_history_from_ratecarectl(daemon: DaemonProcess) -> None:
    code, out, _ = ctl(daemon.socket, "jobs")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["JOB", "SCHEDULE", "NEXT", "RUN", "LAST", "RUN", "RESULT", "DURATION", "ROWS"]
    assert [line.split()[0] for line in lines[1:4]] == ["aggregate_statistics", "cleanup_expired_cache", "warm_cache"]
    assert "times in Europe/Istanbul" in out
    code, out, _ = ctl(daemon.socket, "run", "aggregate_statistics", "--wait")
    assert code == 0 and out.startswith("aggregate_statistics: success (run ")
    code, out, _ = ctl(daemon.socket, "run", "warm_cache", "--wait")
    assert code == 0 and "warm_cache: skipped" in out and "cache-warming-enabled is 0" in out
    code, out, _ = ctl(daemon.socket, "run", "cleanup_expired_cache")
    assert code == 0 and "queued as run" in out
    code, out, _ = ctl(daemon.socket, "history", "aggregate_statistics", "--json")
    runs = json.loads(out)
    assert [(r["trigger"], r["status"], r["slot"]) for r in runs] == [("manual", "success", None)]
    code, out, _ = ctl(daemon.socket, "history", "aggregate_statistics")
    assert code == 0 and "manual" in out and "success" in out and out.endswith("\ntimes in Europe/Istanbul\n")
    # The start to the second, in the daemon's zone, as the JSON has it.
    started = runs[0]["started_at"][:19].replace("T", " ")
    assert out.splitlines()[1].startswith(started + "  manual"), out
    code, out, _ = ctl(daemon.socket, "jobs", "--json")
    assert json.loads(out)[0]["last_run"]["status"] == "success"


def test_jobs_shows_a_job_the_settings_turn_off_as_disabled(daemon: DaemonProcess) -> None:
    # Warming is off by default (cache-warming-enabled = 0).
    code, out, _ = ctl(daemon.socket, "jobs")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:4]}
    assert code == 0 and rows["warm_cache"][6] == "disabled" and rows["cleanup_expired_cache"][6] != "disabled"
    assert "note: warm_cache: disabled (cache-warming-enabled is 0): its scheduled runs, next at " in out
    listed = {job["name"]: job["disabled"] for job in json.loads(ctl(daemon.socket, "jobs", "--json")[1])}
    assert listed == {"aggregate_statistics": None, "cleanup_expired_cache": None,
                      "warm_cache": "cache-warming-enabled is 0"}
    db = Database(DatabaseConfig(url=f"sqlite:///{Path(daemon.config).parent / 'rc.db'}"))
    db.execute("UPDATE settings SET `value` = '0' WHERE `key` = 'cache-cleanup-enabled'")
    db.close()
    setting_in_effect(daemon, "cache-cleanup-enabled", False)
    listed = {job["name"]: job["disabled"] for job in json.loads(ctl(daemon.socket, "jobs", "--json")[1])}
    assert listed["cleanup_expired_cache"] == "cache-cleanup-enabled is 0"


def test_unknown_job_exits_1_and_failed_run_exits_1(config_factory, daemon_factory) -> None:
    daemon = daemon_factory(config_factory(jobs__warm_cache={"url": "http://127.0.0.1:9/w/{widget_id}",
                                                              "max_consecutive_failures": 1}))
    code, _, err = ctl(daemon.socket, "run", "nosuch")
    assert code == 1 and "unknown job 'nosuch'" in err
    db = Database(DatabaseConfig(url=f"sqlite:///{Path(daemon.config).parent / 'rc.db'}"))
    enable_warming(db, "Europe/Istanbul")
    code, out, err = ctl(daemon.socket, "run", "warm_cache", "--wait")
    assert code == 1 and "warm_cache: failed" in out and "keeps failing" in err
    assert json.loads(ctl(daemon.socket, "history", "warm_cache", "--json")[1])[0]["status"] == "failed"
    db.close()


def test_run_wait_says_when_the_database_refuses_the_runs_record(daemon: DaemonProcess) -> None:
    db = Database(DatabaseConfig(url=f"sqlite:///{Path(daemon.config).parent / 'rc.db'}"))
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON job_runs BEGIN SELECT RAISE(ABORT, 'disk quota'); END")
    code, out, err = ctl(daemon.socket, "run", "cleanup_expired_cache", "--wait")
    assert (code, out) == (1, "")
    assert err == "ratecarectl: the database refused to record the run: disk quota\n"
    db.execute("DROP TRIGGER refuse")
    # The runner goes on: the next request runs.
    assert ctl(daemon.socket, "run", "cleanup_expired_cache", "--wait")[0] == 0
    db.close()


# -- faults -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "mariadb"])
def fault_url(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sqlite" else request.getfixturevalue("mysql_url")


def test_sigterm_during_a_purge_records_interrupted_and_exits_in_time(config_factory, daemon_factory,
                                                                      fault_url: str | None) -> None:
    db, daemon = purge_under_way(slow_purge_config(config_factory, fault_url), daemon_factory)
    # Within systemd's 30 s stop timeout: the purge stops at its next chunk, not at its end.
    assert daemon.stop(signal.SIGTERM, timeout=20) == 0
    status, rows, details, error = db.query(
        "SELECT status, rows_affected, details, error FROM job_runs WHERE job = 'aggregate_statistics'")[0]
    assert status == "interrupted" and "ended early" in error
    done = json.loads(details)
    assert 0 < done["rows_deleted"] < OLD_DAYS * DAY_ROWS
    # The record keeps what the run did before the stop: its summaries and the rows it deleted.
    assert len(done["days_summarised"]) >= OLD_DAYS
    assert rows == len(done["days_summarised"]) + done["widget_rows"] + done["rows_deleted"]
    assert journal_lines(daemon, "job finished", job="aggregate_statistics", status="interrupted")
    db.close()


def test_sigterm_answers_a_waiting_run_and_records_the_queued_one(config_factory, daemon_factory) -> None:
    config = slow_purge_config(config_factory)
    db = seeded(config)
    before = count(db)
    daemon = daemon_factory(config)
    waiting = subprocess.Popen([sys.executable, "-m", "ratecarectl", "--socket", daemon.socket, "run",
                                "aggregate_statistics", "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    wait_for(lambda: count(db) < before - 1000)
    code, out, _ = ctl(daemon.socket, "run", "cleanup_expired_cache")
    queued = re.search(r"run ([0-9a-f]{12})", out)
    assert code == 0 and queued
    # Asking again while it waits gives the same run, not a second one.
    assert ctl(daemon.socket, "run", "cleanup_expired_cache")[1].startswith(
        f"cleanup_expired_cache: already queued as run {queued.group(1)}")
    rows = {line.split()[0]: line.split() for line in ctl(daemon.socket, "jobs")[1].splitlines()[1:4]}
    assert "running" in rows["aggregate_statistics"] and "queued" in rows["cleanup_expired_cache"]
    jobs = {job["name"]: job for job in json.loads(ctl(daemon.socket, "jobs", "--json")[1])}
    assert jobs["cleanup_expired_cache"]["queued_run_id"] == queued.group(1)
    assert daemon.stop(signal.SIGTERM) == 0
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 1 and out.startswith("aggregate_statistics: interrupted"), (out, err)
    assert db.query("SELECT `trigger`, status, error FROM job_runs WHERE run_id = ?", (queued.group(1),)) == [
        ("manual", "skipped", "the daemon stopped before the run started")]
    assert "manual run dropped" in daemon.output
    db.close()


def test_sigterm_during_warming_does_not_wait_for_requests_in_flight(config_factory, daemon_factory,
                                                                       tmp_path: Path) -> None:
    widgets = HangingWidgets()
    try:
        config = config_factory(jobs__warm_cache={"url": widgets.url, "timeout": 60})
        db = Database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'rc.db'}"))
        migrations.apply(db)
        enable_warming(db, "Europe/Istanbul")
        daemon = daemon_factory(config)
        assert ctl(daemon.socket, "run", "warm_cache")[0] == 0
        assert widgets.reached.wait(60)
        # The request stays in flight until the test ends: a daemon that waited for it would not stop.
        assert daemon.stop(signal.SIGTERM, timeout=20) == 0
        assert db.query("SELECT status FROM job_runs WHERE job = 'warm_cache'") == [("interrupted",)]
        # The run's last line reaches its log file before the daemon says it stopped.
        ended = [json.loads(line) for line in (tmp_path / "logs" / "warming.log").read_text().splitlines()]
        assert [line["status"] for line in ended if line["event"] == "job finished"] == ["interrupted"]
        # Every line of the run in its file carries the run's job and run_id.
        [(run_id,)] = db.query("SELECT run_id FROM job_runs WHERE job = 'warm_cache'")
        assert {(line["job"], line["run_id"]) for line in ended} == {("warm_cache", run_id)}
        assert daemon.output.index("job finished") < daemon.output.index("stopped final_snapshot")
        db.close()
    finally:
        widgets.close()


def test_kill_9_during_the_purge_loses_nothing_and_the_next_run_finishes(config_factory, daemon_factory,
                                                                        fault_url: str | None) -> None:
    config = slow_purge_config(config_factory, fault_url)
    db, daemon = purge_under_way(config, daemon_factory)
    # The running run's history shows its progress so far: what it has written to its record.
    shown = wait_for(lambda: running_progress(daemon), what="the run's progress in its record")
    daemon.stop(signal.SIGKILL)
    killed = datetime.now(UTC)
    assert count(db) > 3 * DAY_ROWS
    # Every day whose rows are gone has its full summary.
    totals = summary_totals(db)
    assert sorted(totals.values()) == [DAY_ROWS] * OLD_DAYS
    # The next daemon purges at full speed.
    restarted = daemon_factory(slow_purge_config(config_factory, fault_url, pause_ratio=0))
    runs = json.loads(ctl(restarted.socket, "history", "aggregate_statistics", "--json")[1])
    dead = runs[0]
    assert dead["status"] == "interrupted" and "found at the next start" in dead["error"]
    # It keeps the rows and details of its last progress, and it ended there, not when the next daemon came.
    done = dead["details"]
    assert done["rows_deleted"] >= shown["details"]["rows_deleted"] > 0
    assert dead["rows"] == len(done["days_summarised"]) + done["widget_rows"] + done["rows_deleted"]
    assert datetime.fromisoformat(dead["finished_at"]) <= killed
    code, out, _ = ctl(restarted.socket, "run", "aggregate_statistics", "--wait")
    assert code == 0
    assert summary_totals(db) == totals
    assert count(db) == 3 * DAY_ROWS
    db.close()


@pytest.mark.mariadb
def test_mariadb_restart_during_a_job_fails_it_cleanly_and_the_next_run_succeeds(
        mariadb: MariaDB, mysql_url: str, config_factory, daemon_factory) -> None:
    db, daemon = purge_under_way(slow_purge_config(config_factory, mysql_url), daemon_factory)
    deleted = wait_for(lambda: running_progress(daemon))["details"]["rows_deleted"]
    mariadb.kill()
    mariadb.start()

    def ended() -> dict | None:
        code, out, err = ctl(daemon.socket, "history", "aggregate_statistics", "--json")
        assert code == 0, err   # the connection the kill broke is replaced before it is used
        run = json.loads(out)[0]
        return run if run["status"] != "running" else None

    run = wait_for(ended, every=0.5)
    assert run["status"] == "failed" and "database error" in run["error"]
    # The record says what the run had done before the database went, not 0.
    assert run["details"]["rows_deleted"] >= deleted and run["rows"] >= deleted
    assert daemon.client().status()["total_platforms"] == 7
    # The next run at full speed: the reload applies the job's new pause at once.
    rewrite(daemon.config, "jobs.aggregate_statistics", pause_ratio=0)
    assert ctl(daemon.socket, "reload")[0] == 0
    code, out, _ = ctl(daemon.socket, "run", "aggregate_statistics", "--wait")
    assert code == 0, out
    db.close()  # this test's own connection died with the server too
    assert count(db) == 3 * DAY_ROWS
    db.close()


@pytest.mark.mariadb
def test_runs_and_history_work_after_the_server_closed_the_daemons_idle_sessions(
        mariadb: MariaDB, mysql_url: str, config_factory, daemon_factory) -> None:
    daemon = daemon_factory(config_factory(url=mysql_url, daemon={"timezone": "UTC"}))
    assert ctl(daemon.socket, "run", "cleanup_expired_cache", "--wait")[0] == 0
    # What MariaDB's wait_timeout (8 hours by default) does to a daemon whose jobs run once a night.
    # The scheduler's session is among them: it claimed and recorded the run just made.
    assert mariadb.end_sessions(schema_of(mysql_url)) >= 1
    code, out, err = ctl(daemon.socket, "run", "aggregate_statistics", "--wait")
    assert code == 0, err
    assert "rows_deleted: 0" in out
    code, out, err = ctl(daemon.socket, "history", "aggregate_statistics", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["status"] == "success"


def test_garbage_settings_are_warnings_and_the_jobs_still_run(config_factory, daemon_factory,
                                                              fault_url: str | None) -> None:
    config = slow_purge_config(config_factory, fault_url)
    db = seeded(config)
    db.execute("UPDATE settings SET `value` = 'thirty' WHERE `key` = 'cache-statistics-retention-days'")
    db.execute("UPDATE settings SET `value` = '' WHERE `key` = 'cache-cleanup-enabled'")
    daemon = daemon_factory(config)
    code, out, _ = ctl(daemon.socket, "run", "aggregate_statistics", "--wait")
    assert code == 0 and "retention_days: 30" in out
    assert ctl(daemon.socket, "run", "cleanup_expired_cache", "--wait")[0] == 0
    daemon.stop()
    assert "<4>bad setting key=cache-statistics-retention-days value=thirty" in daemon.output
    assert "<4>bad setting key=cache-cleanup-enabled" in daemon.output
    db.close()


@pytest.mark.mariadb
def test_two_daemons_on_one_mariadb_run_a_slot_exactly_once(mysql_url: str, config_factory, daemon_factory,
                                                           tmp_path: Path) -> None:
    now = datetime.now(UTC)
    slot = (now - timedelta(minutes=10)).replace(second=0, microsecond=0)
    schedule = f"{slot.minute} {slot.hour} * * *"
    db = Database(DatabaseConfig(url=mysql_url))
    migrations.apply(db)
    # A daemon has run here since yesterday: the slot missed today counts.
    db.execute("INSERT INTO ratecared_database (id, first_started_at, first_host) VALUES (1, ?, 'web0')",
               (timestamp(slot - timedelta(days=1)),))
    db.execute("INSERT INTO job_runs (job, slot, `trigger`, host, run_id, status, started_at, finished_at)"
               " VALUES ('aggregate_statistics', ?, 'schedule', 'web0', 'old', 'success', ?, ?)",
               (timestamp(slot - timedelta(days=1)),) * 3)
    daemons = []
    for host in ("web1", "web2"):
        directory = tmp_path / host
        directory.mkdir()
        from conftest import write_config

        config = write_config(directory, mysql_url, daemon={"host": host, "timezone": "UTC"},
                              jobs__aggregate_statistics={"schedule": schedule})
        daemons.append(daemon_factory(config, wait=False))
    for d in daemons:
        d.wait_ready()

    def past_the_slot(d: DaemonProcess) -> bool:
        jobs = {job["name"]: job for job in json.loads(ctl(d.socket, "jobs", "--json")[1])}
        return datetime.fromisoformat(jobs["aggregate_statistics"]["next_run"]) > slot

    wait_for(lambda: db.query("SELECT status FROM job_runs WHERE job = 'aggregate_statistics' AND slot = ?",
                              (timestamp(slot),)) == [("success",)], every=0.2, what="the slot run")
    # Both daemons have settled the slot: each now looks to the next day's.
    wait_for(lambda: all(past_the_slot(d) for d in daemons), every=0.2, what="both daemons past the slot")
    rows = db.query("SELECT host, `trigger`, status FROM job_runs WHERE job = 'aggregate_statistics' AND slot = ?",
                    (timestamp(slot),))
    assert len(rows) == 1 and rows[0][1:] == ("catchup", "success")
    for d in daemons:
        d.stop()
    started = [d for d in daemons if journal_lines(d, "job started", job="aggregate_statistics")]
    assert len(started) == 1
    db.close()


def test_watchdog_pings_keep_coming_while_a_job_runs(config_factory, daemon_factory, tmp_path: Path) -> None:
    import os

    from conftest import NotifySocket

    widgets = HangingWidgets()
    notify = NotifySocket(Path("/tmp") / f"rc-notify-{os.getpid()}-{time.monotonic_ns()}.sock")
    try:
        config = config_factory(jobs__warm_cache={"url": widgets.url, "timeout": 120})
        db = Database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'rc.db'}"))
        migrations.apply(db)
        enable_warming(db, "Europe/Istanbul")
        daemon = daemon_factory(config, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
        notify.messages(lambda m: any("READY=1" in x for x in m))
        assert ctl(daemon.socket, "run", "warm_cache")[0] == 0
        notify.messages(lambda m: any("running warm_cache" in x for x in m))
        # The job is held in its request until the test lets it go: ten pings must come meanwhile.
        assert widgets.reached.wait(60)
        during = notify.messages(lambda m: sum("WATCHDOG=1" in x for x in m) >= 10)
        assert sum("WATCHDOG=1" in x for x in during) >= 10
        assert db.query("SELECT status FROM job_runs WHERE job = 'warm_cache'") == [("running",)]
        widgets.release.set()
        notify.messages(lambda m: any("STATUS=" in x and "running" not in x for x in m))
        wait_for(lambda: db.query("SELECT status FROM job_runs WHERE job = 'warm_cache'") == [("success",)])
        daemon.stop()
        db.close()
    finally:
        widgets.close()
        notify.sock.close()
        os.unlink(notify.path)
