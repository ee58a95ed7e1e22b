"""The database layer and migrations, on real SQLite and real MariaDB."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from mariadb import MariaDB
from ratecared.config import DatabaseConfig
from ratecared.db import Database, DatabaseError, IntegrityError, migrations, parse_timestamp, timestamp

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
        "001", "002", "003"]


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


def test_upsert_and_timestamps_round_trip(database: Database) -> None:
    moment = datetime(2026, 3, 29, 0, 30, 15, 250000, tzinfo=timezone.utc)
    row = {"key": "x", "value": "1", "updated_at": timestamp(moment)}
    database.upsert("settings", row, ["key"])
    database.upsert("settings", {**row, "value": "2"}, ["key"])
    ((value, updated),) = database.query("SELECT `value`, updated_at FROM settings WHERE `key` = 'x'")
    assert value == "2"
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


def test_sqlite_file_uses_wal_and_incremental_vacuum(tmp_path) -> None:
    db = Database(DatabaseConfig(url=f"sqlite:///{tmp_path / 'sub' / 'x.db'}"))
    migrations.apply(db)
    assert db.query("PRAGMA journal_mode") == [("wal",)]
    assert db.query("PRAGMA auto_vacuum") == [(2,)]
