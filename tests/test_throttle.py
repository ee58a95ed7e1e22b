"""Purges wait for the database: a real replica's replication, the primary's running threads, the run's deadline.
The conversion to day partitions waits the same way, and the replica drops the days the primary drops.

A primary and a replica, two private MariaDB servers with GTID replication
over loopback, and a daemon purging on the primary (issue 13, part 2).
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import tempfile
import threading
from contextlib import suppress
from pathlib import Path
from typing import Any, Iterator

import pymysql
import pytest
import structlog

from conftest import ctl, free_port, wait_for
from mariadb import Replicated, available, schema_of
from ratecared.config import DatabaseConfig
from ratecared.db import Database, migrations
from ratecared.job_contract import Stalled
from ratecared.throttle import Throttle
from test_jobs_daemon import DAY_ROWS, bulk_requests, count

MONITOR_USER, MONITOR_PASSWORD = "ratecare", "monitor-secret"


@pytest.fixture(scope="module")
def replicated() -> Iterator[Replicated]:
    if not available():
        pytest.skip("MariaDB is required: run `make test`, which installs mariadb-server")
    pair = Replicated(Path(tempfile.mkdtemp(prefix="rc-repl-", dir="/tmp")), free_port(), free_port())
    try:
        pair.start()
        # The daemon reads the replica's status over loopback as its own user: made on the primary, it
        # reaches the replica as every other statement does.
        with pair.primary.root_connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE USER IF NOT EXISTS %s@'127.0.0.1' IDENTIFIED BY %s",
                        (MONITOR_USER, MONITOR_PASSWORD))
            cur.execute("GRANT SLAVE MONITOR ON *.* TO %s@'127.0.0.1'", (MONITOR_USER,))
        yield pair
    finally:
        pair.close()


@pytest.fixture
def primary_url(replicated: Replicated) -> Iterator[str]:
    name = f"t_{secrets.token_hex(6)}"
    url = replicated.primary.create_database(name, MONITOR_USER, MONITOR_PASSWORD)
    with replicated.primary.root_connect() as conn, conn.cursor() as cur:
        cur.execute(f"GRANT SELECT ON `{name}`.* TO %s@'127.0.0.1'", (MONITOR_USER,))
    yield url
    replicated.delay(0)
    replicated.primary.drop_database(name)


def replica_url(replicated: Replicated, primary_url: str) -> str:
    database = schema_of(primary_url)
    return f"mysql://{MONITOR_USER}:{MONITOR_PASSWORD}@127.0.0.1:{replicated.replica.port}/{database}"


def seeded(url: str, days: int, replicated: Replicated) -> Database:
    db = Database(DatabaseConfig(url=url))
    migrations.apply(db)
    db.execute("UPDATE settings SET `value` = '3' WHERE `key` = 'cache-statistics-retention-days'")
    bulk_requests(db, days, DAY_ROWS)
    wait_for(replicated.caught_up, what="the replica to apply the seeded rows")
    return db


def behind_a_stopped_replica(replicated: Replicated, primary_url: str, config_factory, daemon_factory,
                             **aggregation: Any) -> tuple[Database, int, Any]:
    """Seeded data, the replica's SQL thread stopped, and a daemon watching that replica: the database,
    its detail row count, the daemon."""
    db = seeded(primary_url, 6, replicated)
    before = count(db)
    replicated.sql_thread(False)
    return db, before, watching(replicated, primary_url, config_factory, daemon_factory, {}, **aggregation)


def watching(replicated: Replicated, primary_url: str, config_factory, daemon_factory, database: dict[str, Any],
             **aggregation: Any) -> Any:
    """A daemon on the primary that watches the replica, with more `[database]` keys and aggregation keys."""
    return daemon_factory(config_factory(
        url=primary_url, daemon={"timezone": "UTC"},
        database={"replicas": [replica_url(replicated, primary_url)], **database},
        jobs__aggregate_statistics=aggregation))


def job_log(directory: Path, name: str = "aggregate.log") -> list[dict]:
    path = directory / "logs" / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def last_run(sock: str, job: str) -> dict:
    return json.loads(ctl(sock, "history", job, "--json")[1])[0]


def first_pause(directory: Path) -> dict:
    """The aggregation's first `purge paused` line, once it is in the job's log."""
    return wait_for(lambda: [line for line in job_log(directory) if line["event"] == "purge paused"],
                    what="the purge to pause")[0]


def ended(sock: str) -> dict:
    """The aggregation's run, once it is no longer running."""
    return wait_for(lambda: (r := last_run(sock, "aggregate_statistics"))["status"] != "running" and r,
                    what="the run to end")


@pytest.mark.mariadb
def test_a_stopped_replica_pauses_the_purge_and_its_return_lets_it_finish(
        replicated: Replicated, primary_url: str, config_factory, daemon_factory, tmp_path: Path) -> None:
    db, before, daemon = behind_a_stopped_replica(replicated, primary_url, config_factory, daemon_factory)
    assert ctl(daemon.socket, "run", "aggregate_statistics")[0] == 0
    paused = first_pause(tmp_path)
    assert "replication is not running (IO thread Yes, SQL thread No)" in paused["reason"]
    assert f"127.0.0.1:{replicated.replica.port}" in paused["reason"]
    # Paused before its first chunk: the summaries are written, no detail row is gone.
    assert count(db) == before
    assert db.query("SELECT COUNT(DISTINCT stat_date) FROM api_statistics_summary")[0][0] == 6
    assert last_run(daemon.socket, "aggregate_statistics")["status"] == "running"
    replicated.sql_thread(True)
    run = ended(daemon.socket)
    assert run["status"] == "success", run
    assert "replication is not running" in run["details"]["paused_for"]
    assert count(db) == 3 * DAY_ROWS
    assert [line["event"] for line in job_log(tmp_path)].count("purge paused") == 1
    assert any(line["event"] == "purge resumed" for line in job_log(tmp_path))
    # The primary has a replica this user may not list: said once a run, and the named one is watched.
    refused = [line for line in job_log(tmp_path) if line["event"].startswith("cannot list the primary's replicas")]
    assert len(refused) == 1 and "REPLICATION MASTER ADMIN" in refused[0]["hint"]
    db.close()


@pytest.mark.mariadb
def test_a_run_that_cannot_go_on_by_its_deadline_ends_interrupted_and_the_next_run_goes_on(
        replicated: Replicated, primary_url: str, config_factory, daemon_factory, tmp_path: Path) -> None:
    db, before, daemon = behind_a_stopped_replica(replicated, primary_url, config_factory, daemon_factory,
                                                  deadline=20)
    code, out, _ = ctl(daemon.socket, "run", "aggregate_statistics", "--wait")
    assert code == 1 and out.startswith("aggregate_statistics: interrupted"), out
    run = last_run(daemon.socket, "aggregate_statistics")
    assert run["status"] == "interrupted"
    assert run["error"].startswith("run deadline of 20 s reached while paused: replica ")
    assert "the next run goes on" in run["error"]
    assert count(db) == before
    assert any(line["event"] == "run ended at its deadline" for line in job_log(tmp_path))
    replicated.sql_thread(True)
    assert ctl(daemon.socket, "run", "aggregate_statistics", "--wait")[0] == 0
    assert count(db) == 3 * DAY_ROWS
    db.close()


@pytest.mark.mariadb
def test_a_lagging_replica_the_primary_lists_pauses_the_purge_too(
        replicated: Replicated, primary_url: str, config_factory, daemon_factory, tmp_path: Path) -> None:
    # No replica in the config: the primary lists it (SHOW SLAVE HOSTS), for a user allowed to see it.
    with replicated.primary.root_connect() as conn, conn.cursor() as cur:
        cur.execute("GRANT REPLICATION MASTER ADMIN ON *.* TO %s@'localhost'", (MONITOR_USER,))
    try:
        db = seeded(primary_url, 6, replicated)
        replicated.sql_thread(False)
        daemon = daemon_factory(config_factory(url=primary_url, daemon={"timezone": "UTC"},
                                               jobs__aggregate_statistics={"deadline": 20}))
        code, _, _ = ctl(daemon.socket, "run", "aggregate_statistics", "--wait")
        run = last_run(daemon.socket, "aggregate_statistics")
        assert code == 1 and run["status"] == "interrupted", run
        assert f"replica mysql://{MONITOR_USER}@127.0.0.1:{replicated.replica.port}/" in run["error"]
        db.close()
    finally:
        with replicated.primary.root_connect() as conn, conn.cursor() as cur:
            cur.execute("REVOKE REPLICATION MASTER ADMIN ON *.* FROM %s@'localhost'", (MONITOR_USER,))


@pytest.mark.mariadb
def test_busy_threads_on_the_primary_pause_the_purge_until_they_end(
        replicated: Replicated, primary_url: str, config_factory, daemon_factory, tmp_path: Path) -> None:
    db = seeded(primary_url, 6, replicated)
    before = count(db)
    daemon = daemon_factory(config_factory(url=primary_url, daemon={"timezone": "UTC"},
                                           database={"max_threads_running": 3}))
    # The primary runs the daemon's own statement and the replica's binlog dump; two more that the test holds
    # running put it over 3.
    sleepers = [replicated.primary.root_connect() for _ in range(2)]
    ids = [conn.thread_id() for conn in sleepers]
    threads = [threading.Thread(target=lambda c=conn: _sleep(c), daemon=True) for conn in sleepers]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: _sleeping(replicated) == 2, what="the two statements to run")
        assert ctl(daemon.socket, "run", "aggregate_statistics")[0] == 0
        paused = first_pause(tmp_path)
        assert "threads running (max_threads_running 3)" in paused["reason"]
        assert count(db) == before
    finally:
        with replicated.primary.root_connect() as conn, conn.cursor() as cur:
            for thread_id in ids:
                cur.execute(f"KILL QUERY {int(thread_id)}")
        for thread in threads:
            thread.join(30)
    run = ended(daemon.socket)
    assert run["status"] == "success", run
    assert count(db) == 3 * DAY_ROWS
    db.close()


def _sleeping(replicated: Replicated) -> int:
    with replicated.primary.root_connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(600)'")
        return int(cur.fetchone()[0])


def _sleep(conn: pymysql.connections.Connection) -> None:
    # Until the test kills the statement: "Query execution was interrupted".
    try:
        with conn.cursor() as cur, suppress(pymysql.err.OperationalError):
            cur.execute("SELECT SLEEP(600)")
    finally:
        conn.close()


@pytest.mark.mariadb
def test_a_transaction_that_pins_innodb_history_pauses_the_purge_until_it_ends(
        replicated: Replicated, primary_url: str, config_factory, daemon_factory, tmp_path: Path) -> None:
    db = seeded(primary_url, 6, replicated)
    limit = 20
    history = "SHOW GLOBAL STATUS LIKE 'Innodb_history_list_length'"
    wait_for(lambda: int(db.query(history)[0][1]) < limit // 2, what="InnoDB to purge the seeding's history")
    daemon = daemon_factory(config_factory(url=primary_url, daemon={"timezone": "UTC"},
                                           database={"max_history_length": limit},
                                           jobs__aggregate_statistics={"chunk_seconds": 0.001}))
    # An open snapshot keeps every change after it in the undo log: each chunk the purge commits adds to it.
    pin = replicated.primary.root_connect()
    try:
        with pin.cursor() as cur:
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        assert ctl(daemon.socket, "run", "aggregate_statistics")[0] == 0
        paused = first_pause(tmp_path)
        assert "InnoDB history list length" in paused["reason"]
        assert f"(max_history_length {limit})" in paused["reason"]
        # The rollups' own commits may have passed the limit before the first chunk: paused, not done.
        assert count(db) > 3 * DAY_ROWS
    finally:
        pin.rollback()
        pin.close()
    run = ended(daemon.socket)
    assert run["status"] == "success", run
    assert count(db) == 3 * DAY_ROWS
    db.close()


def test_on_sqlite_only_the_deadline_holds(tmp_path: Path) -> None:
    config = DatabaseConfig(url=f"sqlite:///{tmp_path / 'rc.db'}")
    db = Database(config)
    now = [100.0]
    throttle = Throttle(db, config, threading.Event(), 30, structlog.get_logger("test"), clock=lambda: now[0])
    assert throttle() is None
    now[0] = 129.9
    assert throttle() is None
    now[0] = 130.0
    with pytest.raises(Stalled, match="^run deadline of 30 s reached$"):
        throttle()
    db.close()


@pytest.mark.mariadb
def test_a_hung_replica_pauses_the_purge_and_a_cancel_still_ends_it(
        replicated: Replicated, primary_url: str, config_factory, daemon_factory, tmp_path: Path) -> None:
    db = seeded(primary_url, 6, replicated)
    before = count(db)
    daemon = watching(replicated, primary_url, config_factory, daemon_factory, {"connect_timeout": 1})
    # SIGSTOP: it takes connections and answers nothing. Each look at it ends at the connection's timeout.
    with replicated.replica.hung():
        assert ctl(daemon.socket, "run", "aggregate_statistics")[0] == 0
        paused = first_pause(tmp_path)
        assert "its lag cannot be read" in paused["reason"]
        assert ctl(daemon.socket, "cancel", "aggregate_statistics")[0] == 0
        run = ended(daemon.socket)
    assert run["status"] == "interrupted" and run["error"].startswith("cancelled by "), run
    assert count(db) == before
    db.close()


@pytest.mark.mariadb
def test_a_replica_lagging_past_the_limit_pauses_the_purge_until_it_catches_up(
        replicated: Replicated, primary_url: str, config_factory, daemon_factory, tmp_path: Path) -> None:
    db = seeded(primary_url, 6, replicated)
    before = count(db)
    replicated.delay(3600)
    # A change for the replica to hold back.
    db.execute("UPDATE settings SET updated_at = CURRENT_TIMESTAMP(3) WHERE `key` = 'cache-cleanup-enabled'")
    wait_for(lambda: (replicated.replica_status().get("Seconds_Behind_Master") or 0) >= 2,
             what="the replica to lag 2 s")
    daemon = watching(replicated, primary_url, config_factory, daemon_factory, {"max_replica_lag": 1})
    assert ctl(daemon.socket, "run", "aggregate_statistics")[0] == 0
    paused = first_pause(tmp_path)
    assert re.search(r"^replica mysql://\S+ lags \d+ s \(max_replica_lag 1 s\)$", paused["reason"]), paused
    assert count(db) == before
    replicated.delay(0)
    run = ended(daemon.socket)
    assert run["status"] == "success", run
    assert " lags " in run["details"]["paused_for"]
    assert count(db) == 3 * DAY_ROWS
    db.close()


def _partitions(server: Any, database: str) -> list[tuple[str, int]]:
    """(partition, rows) of `database`.api_requests on one server, in order; rows counted, not estimated."""
    with server.root_connect(database=database) as conn, conn.cursor() as cur:
        cur.execute("SELECT PARTITION_NAME FROM information_schema.PARTITIONS WHERE TABLE_SCHEMA = %s"
                    " AND TABLE_NAME = 'api_requests' AND PARTITION_NAME IS NOT NULL ORDER BY PARTITION_ORDINAL_POSITION",
                    (database,))
        names = [name for (name,) in cur.fetchall()]
        out = []
        for name in names:
            cur.execute(f"SELECT COUNT(*) FROM api_requests PARTITION ({name})")
            out.append((name, int(cur.fetchone()[0])))
        return out


def _tables(server: Any, database: str) -> set[str]:
    with server.root_connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
                    " AND TABLE_NAME LIKE 'api_requests%%'", (database,))
        return {name for (name,) in cur.fetchall()}


@pytest.mark.mariadb
def test_a_partition_conversion_waits_for_a_stopped_replica_and_the_replica_drops_the_same_days(
        replicated: Replicated, primary_url: str, config_factory, daemon_factory, tmp_path: Path) -> None:
    database = schema_of(primary_url)
    db = seeded(primary_url, 6, replicated)
    before = count(db)
    replicated.sql_thread(False)
    config = config_factory(url=primary_url, daemon={"timezone": "UTC"},
                            database={"replicas": [replica_url(replicated, primary_url)]},
                            jobs__aggregate_statistics={"retention": "partitions"})
    command = subprocess.Popen([sys.executable, "-m", "ratecared", "--config", str(config), "partition"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(command.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line.startswith("purge paused") for line in said), what="the move to pause")
        paused = next(line for line in said if line.startswith("purge paused"))
        assert "replication is not running (IO thread Yes, SQL thread No)" in paused
        # Swapped, and not one row moved while the replica stands still.
        assert _tables(replicated.primary, database) == {"api_requests", "api_requests_draining"}
        assert int(db.query("SELECT COUNT(*) FROM api_requests_draining")[0][0]) == before
        replicated.sql_thread(True)
        assert command.wait(120) == 0, "".join(said)
    finally:
        if command.poll() is None:
            command.kill()
        command.wait(30)
        reader.join(30)
    assert any(line.startswith("purge resumed") for line in said), said
    assert count(db) == before
    wait_for(replicated.caught_up, what="the replica to apply the conversion")
    converted = _partitions(replicated.primary, database)
    assert sum(rows for _, rows in converted) == before
    assert _partitions(replicated.replica, database) == converted
    assert _tables(replicated.replica, database) == {"api_requests"}

    # The aggregation drops the three days past retention (3) by partition, and the replica drops the same.
    daemon = watching(replicated, primary_url, config_factory, daemon_factory, {}, retention="partitions")
    assert ctl(daemon.socket, "run", "aggregate_statistics", "--wait")[0] == 0
    run = last_run(daemon.socket, "aggregate_statistics")
    assert run["details"]["partitions_dropped"] == [name for name, _ in converted[:3]], run
    assert run["details"]["rows_dropped"] == 3 * DAY_ROWS, run
    assert count(db) == 3 * DAY_ROWS
    wait_for(replicated.caught_up, what="the replica to apply the drops")
    assert _partitions(replicated.replica, database) == _partitions(replicated.primary, database)
    with replicated.replica.root_connect(database=database) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM api_requests")
        assert int(cur.fetchone()[0]) == 3 * DAY_ROWS
    db.close()
