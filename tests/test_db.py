"""The database layer and migrations, on real SQLite and real MariaDB."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from conftest import wait_for, write_config
from mariadb import MariaDB
from ratecared.config import DatabaseConfig
from ratecared.db import (Database, DatabaseError, DatabaseMissing, IntegrityError, Probe, migrations, parse_timestamp,
                          timestamp)
from ratecared.db.migrations import MigrationChanged

HUNG = 30.0    # seconds: a limit that only a hung call reaches

TABLES = {
    "settings": {"key", "value", "updated_at"},
    "api_requests": {"id", "widget_id", "platform", "status_code", "response_time_ms", "cache_hit", "created_at"},
    "api_statistics_summary": {"stat_date", "total_requests", "cache_hits", "cache_misses", "error_count",
                               "avg_response_ms", "max_response_ms", "unique_widgets", "updated_at"},
    "api_statistics_widget_daily": {"stat_date", "widget_id", "requests"},
    "cache": {"id", "cache_key", "widget_id", "payload", "created_at", "expires_at"},
    "widgets": {"id", "name", "active"},
    "circuit_breaker_state": {"platform", "host", "state"},
    "job_runs": {"id", "job", "slot", "trigger", "host", "run_id", "status", "started_at", "finished_at",
                 "rows_affected", "details", "error"},
    "schema_migrations": {"version", "name", "applied_at"},
}


def columns(db: Database, table: str) -> set[str]:
    if db.name == "sqlite":
        return {row[1] for row in db.query(f"PRAGMA table_info({table})")}
    return {row[0] for row in db.query(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ?",
        (table,))}


def test_migrations_create_every_table_of_the_design(database: Database) -> None:
    for table, expected in TABLES.items():
        assert expected <= columns(database, table), table
    assert migrations.pending(database) == []
    assert [v for (v,) in database.query("SELECT version FROM schema_migrations ORDER BY version")] == [
        m.version for m in migrations.available()]


def test_the_seed_settings_rows_are_there(database: Database) -> None:
    rows = dict(database.query("SELECT `key`, `value` FROM settings"))
    assert rows == {
        "cache-statistics-retention-days": "30", "cache-cleanup-enabled": "1", "cache-warming-enabled": "0",
        "cache-warming-widget-count": "10", "circuit-breaker-enabled": "1",
        "circuit-breaker-failure-threshold": "5", "circuit-breaker-timeout-seconds": "600",
        "circuit-breaker-half-open-requests": "3", "circuit-breaker-platforms": "all",
    }


def test_migrating_again_changes_nothing_and_keeps_edited_settings(database: Database) -> None:
    database.execute("UPDATE settings SET `value` = '7' WHERE `key` = 'circuit-breaker-failure-threshold'")
    assert migrations.apply(database) == []
    database.execute("DELETE FROM schema_migrations WHERE version = '002'")
    assert [m.version for m in migrations.apply(database)] == ["002"]
    assert database.query("SELECT `value` FROM settings WHERE `key` = 'circuit-breaker-failure-threshold'") == [
        ("7",)]


def test_job_runs_slot_is_unique_per_job(database: Database) -> None:
    now = timestamp(datetime.now(timezone.utc))
    insert = ("INSERT INTO job_runs (job, slot, `trigger`, host, run_id, status, started_at)"
              " VALUES (?, ?, 'schedule', 'h', ?, 'running', ?)")
    database.execute(insert, ("aggregate_statistics", "2026-11-28 23:00:00", "r1", now))
    with pytest.raises(IntegrityError):
        database.execute(insert, ("aggregate_statistics", "2026-11-28 23:00:00", "r2", now))
    database.execute(insert, ("aggregate_statistics", None, "r3", now))
    database.execute(insert, ("aggregate_statistics", None, "r4", now))


def test_timestamps_round_trip(database: Database) -> None:
    moment = datetime(2026, 3, 29, 0, 30, 15, 250000, tzinfo=timezone.utc)
    database.execute("INSERT INTO settings (`key`, `value`, updated_at) VALUES ('x', '1', ?)", (timestamp(moment),))
    ((updated,),) = database.query("SELECT updated_at FROM settings WHERE `key` = 'x'")
    assert parse_timestamp(updated).replace(microsecond=0) == moment.replace(microsecond=0)


def test_percent_signs_and_placeholders(database: Database) -> None:
    database.execute("INSERT INTO settings (`key`, `value`) VALUES (?, ?)", ("pct", "100%"))
    assert database.query("SELECT `value` FROM settings WHERE `value` LIKE '100%' AND `key` = ?", ("pct",)) == [
        ("100%",)]


def test_transaction_rolls_back_on_error(database: Database) -> None:
    with pytest.raises(RuntimeError):
        with database.transaction() as tx:
            tx.execute("INSERT INTO settings (`key`, `value`) VALUES ('tx', '1')")
            raise RuntimeError("boom")
    assert database.query("SELECT COUNT(*) FROM settings WHERE `key` = 'tx'") == [(0,)]


def test_each_thread_has_its_own_connection(database: Database) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                database.execute("INSERT INTO settings (`key`, `value`) VALUES (?, ?)", (f"t{n}-{i}", "v"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert database.query("SELECT COUNT(*) FROM settings WHERE `key` LIKE 't%-%'") == [(80,)]


def test_unreachable_database_is_a_clear_error(tmp_path) -> None:
    db = Database(DatabaseConfig(url=f"mysql://rc:pw@localhost/rc?unix_socket={tmp_path}/none.sock",
                                 connect_timeout=1))
    with pytest.raises(DatabaseError, match=r"cannot connect to mysql://rc@.*none\.sock/rc"):
        db.ping()


@pytest.mark.mariadb
def test_connection_heals_after_a_mariadb_restart(mariadb: MariaDB, mysql_url: str) -> None:
    db = Database(DatabaseConfig(url=mysql_url, connect_timeout=2))
    migrations.apply(db)
    db.ping()
    mariadb.kill()
    with pytest.raises(DatabaseError):
        db.ping()
    mariadb.start()
    db.ping()
    assert db.query("SELECT COUNT(*) FROM settings")[0][0] == 9
    db.close()


@pytest.mark.mariadb
def test_a_connection_the_server_closed_while_idle_is_replaced_before_the_next_call(
        mariadb: MariaDB, mysql_url: str) -> None:
    db = Database(DatabaseConfig(url=mysql_url, connect_timeout=2))
    migrations.apply(db)
    schema, first = db.query("SELECT DATABASE(), CONNECTION_ID()")[0]
    # MariaDB's default is 8 hours; a nightly job's connection sits idle for 24.
    db.execute("SET SESSION wait_timeout = 1")
    wait_for(lambda: first not in mariadb.sessions(schema), what="the idle session closed by wait_timeout")
    assert db.query("SELECT COUNT(*) FROM settings")[0][0] == 9
    assert db.query("SELECT CONNECTION_ID()")[0][0] != first
    db.close()


@pytest.mark.mariadb
def test_a_session_the_server_closed_fails_its_next_call_instead_of_going_on_without_its_lock(
        mariadb: MariaDB, mysql_url: str) -> None:
    holder, other = (Database(DatabaseConfig(url=mysql_url, connect_timeout=2)) for _ in range(2))
    schema = holder.query("SELECT DATABASE()")[0][0]
    lost = "was lost mid-session, and with it the session's named locks"
    with holder.named_lock("ratecared:test") as got:
        assert got
        with holder.session():      # a DDL's own session inside a job's, as day_partitions.ddl is
            assert mariadb.end_sessions(schema) == 1
            with pytest.raises(DatabaseError, match=lost):
                holder.query("SELECT 1")
        # Each statement until the outer session ends, not only the first, nor only the inner block's.
        for _ in range(2):
            with pytest.raises(DatabaseError, match=lost):
                holder.query("SELECT 1")
        with other.named_lock("ratecared:test", wait=0) as taken:
            assert taken    # the lock went with the session; a silent reconnect would hide that
    assert holder.query("SELECT 1") == [(1,)]
    holder.close()
    other.close()


@pytest.mark.mariadb
def test_close_at_shutdown_fails_a_session_still_running_instead_of_reconnecting_it(mysql_url: str) -> None:
    db = Database(DatabaseConfig(url=mysql_url, connect_timeout=2))
    job_ended: list[BaseException] = []
    in_lock, closed = threading.Event(), threading.Event()

    def job() -> None:     # a job run that outlived the daemon's join
        with db.named_lock("ratecared:test"):
            in_lock.set()
            closed.wait()
            try:
                db.query("SELECT 1")
            except DatabaseError as exc:
                job_ended.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    assert in_lock.wait(HUNG)
    db.close()
    closed.set()
    thread.join(HUNG)
    assert "was lost mid-session" in str(job_ended[0])
    assert db.query("SELECT 1") == [(1,)]     # after close(), the next call opens a new connection
    db.close()


@pytest.mark.mariadb
def test_a_statement_the_server_refuses_keeps_the_session_and_its_lock(mysql_url: str) -> None:
    # With a timeout on its reads, as a watched replica's connection has: the check before each statement
    # must not wait it out (only a hung check takes HUNG).
    holder = Database(DatabaseConfig(url=mysql_url, connect_timeout=2, io_timeout=10 * HUNG))
    other = Database(DatabaseConfig(url=mysql_url, connect_timeout=2))
    with holder.named_lock("ratecared:test") as got:
        assert got
        begun = time.monotonic()
        session = holder.query("SELECT CONNECTION_ID()")[0][0]
        # What the purges' throttle asks; this user may not (1227), as many a daemon's may not.
        with pytest.raises(DatabaseError, match=r"^\(1227\)"):
            holder.query("SHOW REPLICA HOSTS")
        assert holder.query("SELECT CONNECTION_ID()")[0][0] == session
        assert time.monotonic() - begun < HUNG
        with other.named_lock("ratecared:test", wait=0) as taken:
            assert not taken
    holder.close()
    other.close()


def test_sqlite_file_uses_wal_and_incremental_vacuum(tmp_path) -> None:
    db = Database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'sub' / 'x.db'}"))
    migrations.apply(db)
    assert db.query("PRAGMA journal_mode") == [("wal",)]
    assert db.query("PRAGMA auto_vacuum") == [(2,)]


def test_an_edited_shipped_migration_is_an_error_that_names_the_file(database: Database) -> None:
    # As if 002's file had been edited since it was applied: its stored checksum no longer matches.
    database.execute("UPDATE schema_migrations SET checksum = ? WHERE version = '002'", ("0" * 64,))
    for attempt in (migrations.pending, migrations.apply):
        with pytest.raises(MigrationChanged, match=r"migration 002_add_cache_settings\.sql was changed after it"
                                                   r" was applied"):
            attempt(database)


def test_a_database_with_runs_counts_from_its_first_run_when_005_comes(database: Database) -> None:
    # As before 005 was recorded (its column added, as a re-run after a failure finds it): runs since the 20th.
    database.execute("DELETE FROM ratecared_database")
    database.execute("DELETE FROM schema_migrations WHERE version = '005'")
    insert = ("INSERT INTO job_runs (job, slot, `trigger`, host, run_id, status, started_at)"
              " VALUES ('aggregate_statistics', ?, 'schedule', ?, ?, 'success', ?)")
    for day, host in ((21, "web2"), (20, "web1")):
        moment = timestamp(datetime(2026, 3, day, 1, tzinfo=timezone.utc))
        database.execute(insert, (moment, host, f"r{day}", moment))
    assert [m.version for m in migrations.apply(database)] == ["005"]
    ((first, host),) = database.query("SELECT first_started_at, first_host FROM ratecared_database")
    assert (parse_timestamp(first), host) == (datetime(2026, 3, 20, 1, tzinfo=timezone.utc), "web1")


# -- SQLite: the file ---------------------------------------------------------------


def sqlite_db(path: Path) -> Database:
    return Database(DatabaseConfig(url=f"sqlite:///{path}", connect_timeout=1))


def test_opening_a_missing_sqlite_database_does_not_create_it(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "rc.db"
    db = sqlite_db(path)
    with pytest.raises(DatabaseMissing, match=rf"the SQLite database {path} does not exist; `ratecared migrate`"):
        db.query("SELECT 1")
    assert [m.version for m in migrations.pending(db)] == [m.version for m in migrations.available()]
    assert db.probe() == Probe(False, False, f"the SQLite database {path} does not exist; `ratecared migrate`"
                               " (or database.auto_migrate = true) creates it", None)
    assert not path.parent.exists()
    # Migrating is what makes it.
    migrations.apply(db)
    assert db.query("SELECT COUNT(*) FROM schema_migrations")[0][0] == len(migrations.available())
    db.close()


def test_a_daemon_refusing_to_start_on_pending_migrations_leaves_no_database_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, database={"auto_migrate": False})
    result = subprocess.run([sys.executable, "-m", "ratecared", "--config", str(config)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 78, result.stdout + result.stderr
    assert "pending migrations" in result.stdout
    assert not (tmp_path / "rc.db").exists()


def migrated(path: Path, marker: str) -> None:
    """A migrated SQLite file at `path` whose settings carry `marker`."""
    db = sqlite_db(path)
    migrations.apply(db)
    db.execute("INSERT INTO settings (`key`, `value`) VALUES ('marker', ?)", (marker,))
    db.close()


def marker(db: Database) -> str:
    return db.query("SELECT `value` FROM settings WHERE `key` = 'marker'")[0][0]


def test_a_replaced_sqlite_file_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "rc.db"
    migrated(path, "old")
    migrated(tmp_path / "restored.db", "restored")
    db = sqlite_db(path)
    assert marker(db) == "old"
    # A restore from backup, as an operator does it: the file at the path is another one now.
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.replace(tmp_path / "restored.db", path)
    assert marker(db) == "restored"
    probe = db.probe()
    assert (probe.reachable, probe.writable, probe.error) == (True, True, None)
    assert probe.notice == f"sqlite:///{path} was replaced by another file while ratecared ran; reconnected to it"
    db.close()


def test_a_deleted_sqlite_file_is_reported_not_written_to(tmp_path: Path) -> None:
    path = tmp_path / "rc.db"
    migrated(path, "old")
    db = sqlite_db(path)
    assert marker(db) == "old"
    path.unlink()
    with pytest.raises(DatabaseMissing, match="is gone: deleted while ratecared ran"):
        db.execute("INSERT INTO settings (`key`, `value`) VALUES ('lost', '1')")
    probe = db.probe()
    assert (probe.reachable, probe.writable) == (False, False)
    assert "does not exist" in probe.error and probe.notice == f"sqlite:///{path} was deleted while ratecared ran"
    assert not path.exists()
    db.close()


@contextmanager
def read_only_file(path: Path) -> Iterator[None]:
    """The file refuses writes, even to root (who ignores its mode): immutable, or mode 0444."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
            pytest.skip("needs chattr +i to make a file read-only for root")
        undo = ["chattr", "-i", str(path)]
    else:
        path.chmod(0o444)
        undo = ["chmod", "0644", str(path)]
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


def test_probe_says_whether_the_database_takes_writes(tmp_path: Path) -> None:
    path = tmp_path / "rc.db"
    migrated(path, "old")
    db = sqlite_db(path)
    assert db.probe() == Probe(True, True, None, None)
    db.close()
    with read_only_file(path):
        db = sqlite_db(path)
        probe = db.probe()
        db.close()
    assert (probe.reachable, probe.writable) == (True, False)
    assert probe.error == "writes are refused: attempt to write a readonly database"


# -- MariaDB: read-only servers and named locks ------------------------------------------


@pytest.mark.mariadb
def test_probe_on_a_read_only_mariadb(mariadb: MariaDB, mysql_url: str) -> None:
    db = Database(DatabaseConfig(url=mysql_url, connect_timeout=2))
    migrations.apply(db)
    assert db.probe() == Probe(True, True, None, None)
    with mariadb.root_connect() as conn, conn.cursor() as cur:
        cur.execute("SET GLOBAL read_only = 1")
        try:
            probe = db.probe()
        finally:
            cur.execute("SET GLOBAL read_only = 0")
    assert probe == Probe(True, False, "the server is read-only (read_only=ON)", None)
    db.close()


@pytest.mark.mariadb
def test_a_named_lock_is_held_across_connections(mysql_url: str) -> None:
    holder, other = (Database(DatabaseConfig(url=mysql_url, connect_timeout=2)) for _ in range(2))
    waited: list[object] = []
    with holder.named_lock("ratecared:test") as got:
        assert got
        with other.named_lock("ratecared:test", wait=0, waiting=waited.append) as taken:
            assert not taken
        stop = threading.Event()
        stop.set()
        with other.named_lock("ratecared:test", stop=stop) as taken:
            assert not taken
    assert waited == [holder.query("SELECT CONNECTION_ID()")[0][0]]
    with other.named_lock("ratecared:test", wait=0) as taken:
        assert taken
    holder.close()
    other.close()
