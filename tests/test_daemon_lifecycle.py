"""The daemon as systemd and an operator see it: start, notify, stop, restart, reload, outages."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
import pytest

from conftest import (DaemonProcess, NotifySocket, ctl, fail, fill_disk, set_setting, setting_in_effect, sqlite_locked,
                      wait_for, write_config)
from mariadb import MariaDB
from ratecared.config import DatabaseConfig
from ratecared.db import Database, migrations


def log_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_ready_comes_after_the_socket_is_bound_then_watchdog_and_stopping(config_factory, daemon_factory,
                                                                          tmp_path: Path) -> None:
    notify = NotifySocket(Path("/tmp") / f"rc-notify-{os.getpid()}-{time.monotonic_ns()}.sock")
    config = config_factory()
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}
    daemon = daemon_factory(config, env=env, wait=False)
    env["WATCHDOG_PID"] = str(daemon.proc.pid)
    connectable_at_ready: list[bool] = []

    def check(message: str) -> None:
        if "READY=1" in message:
            probe = socket.socket(socket.AF_UNIX)
            connectable_at_ready.append(probe.connect_ex(daemon.socket) == 0)
            probe.close()

    got = notify.messages(lambda m: sum("WATCHDOG=1" in x for x in m) >= 3, on_each=check)
    assert connectable_at_ready == [True]
    ready = next(m for m in got if "READY=1" in m)
    assert "STATUS=7 breakers" in ready
    daemon.send(signal.SIGTERM)
    got = notify.messages(lambda m: any("STOPPING=1" in x for x in m), timeout=60)
    assert any("STOPPING=1" in x for x in got)
    # Well inside systemd's 30 s stop timeout; only a hung daemon misses it.
    assert daemon.proc.wait(20) == 0
    notify.sock.close()
    os.unlink(notify.path)


def test_sigterm_writes_a_final_snapshot_and_exits(config_factory, daemon_factory, tmp_path: Path) -> None:
    daemon = daemon_factory(config_factory(daemon={"snapshot_interval": 3600}))
    client = daemon.client()
    for _ in range(7):
        client.report(client.acquire("expedia"), True, 30)
    # Within systemd's 30 s stop timeout; only a hung daemon misses it.
    assert daemon.stop(signal.SIGTERM, timeout=20) == 0
    assert not Path(daemon.socket).exists()
    conn = sqlite3.connect(tmp_path / "rc.db")
    rows = conn.execute("SELECT total_successes FROM circuit_breaker_state WHERE platform = 'expedia'").fetchall()
    assert rows == [(7,)]
    assert "stopped final_snapshot=written" in daemon.output


def test_sigterm_while_another_process_holds_the_database_locked_exits_within_10_s(
        config_factory, daemon_factory, tmp_path: Path) -> None:
    daemon = daemon_factory(config_factory())
    fail(daemon)
    with sqlite_locked(tmp_path / "rc.db"):
        # The promise is 10 s, inside systemd's 30 s stop timeout; the daemon's own waits add up to under 4 s.
        assert daemon.stop(signal.SIGTERM, timeout=10) == 0
    assert "stopped final_snapshot=\"timed out: the database did not answer\"" in daemon.output


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_an_open_breaker_is_still_open_after_a_restart(config_factory, daemon_factory, how: int) -> None:
    config = config_factory(daemon={"snapshot_interval": 3600})
    daemon = daemon_factory(config)
    opened = time.monotonic()
    fail(daemon)
    # The transition itself is written, without waiting for the hour-long interval.
    db = sqlite3.connect(Path(config).parent / "rc.db")
    wait_for(lambda: db.execute("SELECT state FROM circuit_breaker_state WHERE platform = 'booking'").fetchall()
             == [("open",)], what="the open state in the snapshot table")
    db.close()
    daemon.stop(how)
    again = daemon_factory(config)
    decision = again.client().acquire("booking")
    assert (decision.allowed, decision.state) == (False, "open")
    # Open for the rest of its 600 s: no less than what is left since it opened, never more.
    assert 600 - (time.monotonic() - opened) - 1 < decision.retry_after <= 600
    assert again.client().acquire("agoda").allowed


def test_breaker_opens_goes_half_open_and_closes_as_the_readme_shows(config_factory, daemon_factory,
                                                                     tmp_path: Path) -> None:
    daemon = daemon_factory(config_factory())
    set_setting(tmp_path / "rc.db", "circuit-breaker-timeout-seconds", "1")
    setting_in_effect(daemon, "circuit-breaker-timeout-seconds", 1)
    fail(daemon)
    client = daemon.client()
    assert client.status()["platforms"][0]["state"] in ("open", "half_open")
    wait_for(lambda: client.status()["platforms"][0]["state"] == "half_open")
    for _ in range(3):
        with client.call("booking"):
            pass
    assert client.status()["platforms"][0]["state"] == "closed"
    events = [(e["old"], e["new"]) for e in log_events(tmp_path / "logs" / "circuit-breaker.log")
              if e["event"] == "breaker transition"]
    assert events == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    reasons = [e["reason"] for e in log_events(tmp_path / "logs" / "circuit-breaker.log") if "reason" in e]
    assert reasons == ["5 consecutive failures", "open for 1 s", "3 trial calls succeeded"]


def test_settings_changes_apply_live_and_bad_values_are_warnings(config_factory, daemon_factory,
                                                                 tmp_path: Path) -> None:
    daemon = daemon_factory(config_factory())
    set_setting(tmp_path / "rc.db", "circuit-breaker-half-open-requests", "lots")
    set_setting(tmp_path / "rc.db", "circuit-breaker-failure-threshold", "2")
    setting_in_effect(daemon, "circuit-breaker-failure-threshold", 2)
    fail(daemon, times=2)
    assert daemon.client().status()["platforms"][0]["state"] == "open"
    health = daemon.client().health()
    assert health["settings"]["circuit-breaker-half-open-requests"] == 3
    assert health["setting_warnings"] == [
        "setting circuit-breaker-half-open-requests='lots' is not a whole number; using the default"]
    daemon.stop()
    warning = [line for line in daemon.output.splitlines() if "bad setting" in line]
    assert warning == ["<4>bad setting key=circuit-breaker-half-open-requests value=lots "
                       "problem=\"is not a whole number\" using=\"the default\""]


def test_disabling_breakers_lets_every_call_through(config_factory, daemon_factory, tmp_path: Path) -> None:
    daemon = daemon_factory(config_factory())
    fail(daemon)
    set_setting(tmp_path / "rc.db", "circuit-breaker-enabled", "0")
    setting_in_effect(daemon, "circuit-breaker-enabled", False)
    assert all(daemon.client().acquire("booking").allowed for _ in range(10))


def test_pending_migrations_are_refused_until_migrate(config_factory, daemon_factory, tmp_path: Path) -> None:
    config = config_factory(database={"auto_migrate": False})
    refused = daemon_factory(config, wait=False)
    assert refused.proc.wait(60) == 78
    assert "ratecared migrate" in refused.read_output() and "001_app_tables" in refused.output
    # A refused start leaves nothing behind: no socket, no log directory.
    assert not Path(refused.socket).exists() and not (tmp_path / "logs").exists()
    migrate = subprocess.run([sys.executable, "-m", "ratecared", "--config", str(config), "migrate"],
                             capture_output=True, text=True, timeout=60)
    assert migrate.returncode == 0
    assert migrate.stdout.splitlines() == [f"applied {m.version}_{m.name}" for m in migrations.available()]
    daemon = daemon_factory(config)
    assert daemon.client().status()["total_platforms"] == 7


def test_journal_lines_carry_priorities_and_files_carry_json(daemon: DaemonProcess, tmp_path: Path) -> None:
    fail(daemon)
    daemon.stop()
    lines = daemon.output.splitlines()
    assert lines and all(line[:3] in ("<6>", "<4>", "<3>") for line in lines), lines
    transition = next(line for line in lines if "breaker transition" in line)
    assert transition.startswith("<4>breaker transition platform=booking old=closed new=open")
    assert 'reason="5 consecutive failures"' in transition
    assert lines[0].startswith("<6>starting version=")
    # The files open once the daemon knows it can start: a refused start leaves no log directory.
    main_log = log_events(tmp_path / "logs" / "ratecared.log")
    assert {"ready", "breaker transition", "stopping", "stopped"} <= {e["event"] for e in main_log}
    assert all({"timestamp", "level", "event"} <= set(e) for e in main_log)


def test_reload_and_sighup_reopen_rotated_logs(config_factory, daemon_factory, tmp_path: Path) -> None:
    daemon = daemon_factory(config_factory())
    logs = tmp_path / "logs"
    fail(daemon, "booking")
    os.rename(logs / "circuit-breaker.log", logs / "circuit-breaker.log.1")
    os.rename(logs / "ratecared.log", logs / "ratecared.log.1")
    assert daemon.client().reload()["reloaded"] is True
    fail(daemon, "agoda")
    assert [e["platform"] for e in log_events(logs / "circuit-breaker.log") if e["event"] == "breaker transition"] \
        == ["agoda"]
    os.rename(logs / "circuit-breaker.log", logs / "circuit-breaker.log.2")
    daemon.send(signal.SIGHUP)
    wait_for(lambda: (logs / "ratecared.log").exists() and "reloaded" in (logs / "ratecared.log").read_text())
    fail(daemon, "google")
    assert [e["platform"] for e in log_events(logs / "circuit-breaker.log") if e["event"] == "breaker transition"] \
        == ["google"]


def test_reload_with_a_broken_config_keeps_running(config_factory, daemon_factory) -> None:
    config = config_factory()
    daemon = daemon_factory(config)
    good = config.read_text()
    config.write_text(good + "\n[daemon]\nbogus = 1\n")
    from ratecared.client import DaemonError

    with pytest.raises(DaemonError, match="not valid TOML|unknown key"):
        daemon.client().reload()
    assert daemon.client().status()["total_platforms"] == 7


@pytest.mark.mariadb
def test_database_going_away_keeps_breakers_working(mariadb: MariaDB, mysql_url: str, config_factory,
                                                    daemon_factory) -> None:
    daemon = daemon_factory(config_factory(url=mysql_url))
    client = daemon.client()
    assert client.health()["database"]["reachable"] is True
    mariadb.kill()
    try:
        fail(daemon)
        decision = client.acquire("booking")
        assert (decision.allowed, decision.state) == (False, "open")
        health = client.health()
        assert health["database"]["reachable"] is False
        assert any(m in health["database"]["error"] for m in ("cannot connect", "gone away", "Lost connection"))
        assert health["daemon"] == "up"
        # The snapshot the trip asked for has been tried, and failed, before the database is back.
        wait_for(lambda: "<4>snapshot failed; breakers keep working from memory" in daemon.read_output(),
                 what="the failed snapshot's warning")
    finally:
        mariadb.start()
    db = Database(DatabaseConfig(url=mysql_url))
    wait_for(lambda: db.query("SELECT state FROM circuit_breaker_state WHERE platform = 'booking'") == [("open",)])
    wait_for(lambda: client.health()["database"]["snapshot_error"] is None)
    assert client.health()["database"]["reachable"] is True
    daemon.stop()
    assert "<4>snapshot failed; breakers keep working from memory" in daemon.output
    assert "snapshots resumed" in daemon.output
    db.close()


@pytest.mark.mariadb
def test_daemon_on_mariadb_keeps_an_open_breaker_across_restart(mysql_url: str, config_factory,
                                                               daemon_factory) -> None:
    config = config_factory(url=mysql_url, daemon={"snapshot_interval": 3600})
    daemon = daemon_factory(config)
    fail(daemon)
    db = Database(DatabaseConfig(url=mysql_url))
    wait_for(lambda: db.query("SELECT state FROM circuit_breaker_state WHERE platform = 'booking'") == [("open",)],
             what="the open state in the snapshot table")
    db.close()
    daemon.stop(signal.SIGKILL)
    decision = daemon_factory(config).client().acquire("booking")
    assert (decision.allowed, decision.state) == (False, "open")


def test_a_dead_database_at_start_is_a_clear_error_and_exit_69(config_factory, daemon_factory,
                                                               tmp_path: Path) -> None:
    url = f"mysql://ratecare:secret@localhost/rc?unix_socket={tmp_path}/no-mysqld.sock"
    daemon = daemon_factory(config_factory(url=url, database={"startup_wait": 1}), wait=False)
    assert daemon.proc.wait(30) == 69
    output = daemon.read_output()
    assert "<4>database unreachable; retrying" in output
    assert "<3>database unreachable; giving up" in output and "no-mysqld.sock" in output
    assert not Path(daemon.socket).exists()


def test_an_edited_shipped_migration_stops_the_daemon_and_migrate_with_its_name(config_factory, daemon_factory,
                                                                               tmp_path: Path) -> None:
    config = config_factory()
    daemon_factory(config).stop()
    # As if 002's file had been edited after it was applied: the stored checksum no longer matches it.
    set_checksum = sqlite3.connect(tmp_path / "rc.db")
    set_checksum.execute("UPDATE schema_migrations SET checksum = ? WHERE version = '002'", ("0" * 64,))
    set_checksum.commit()
    set_checksum.close()
    refused = daemon_factory(config, wait=False)
    assert refused.proc.wait(60) == 78
    assert "002_add_cache_settings" in refused.read_output()
    migrate = subprocess.run([sys.executable, "-m", "ratecared", "--config", str(config), "migrate"],
                             capture_output=True, text=True, timeout=60)
    assert migrate.returncode == 78 and "migrate refused" in migrate.stderr and "002_add_cache_settings" in migrate.stderr


def test_health_follows_a_replaced_sqlite_file_and_says_so(daemon: DaemonProcess, tmp_path: Path) -> None:
    path = tmp_path / "rc.db"
    copy = tmp_path / "restored.db"
    # A thread with a connection open on the old file is what sees it replaced: health's worker thread has one
    # now, and answers the health below (the store thread may not have opened one yet on a loaded machine).
    assert daemon.client().health()["database"]["notice"] is None
    source, target = sqlite3.connect(path), sqlite3.connect(copy)
    source.backup(target)
    source.close()
    target.close()
    os.replace(copy, path)
    fail(daemon)
    # The transition's snapshot goes to the file that is there now, not to the replaced one.
    db = sqlite3.connect(path)
    wait_for(lambda: db.execute("SELECT state FROM circuit_breaker_state WHERE platform = 'booking'").fetchall()
             == [("open",)], what="the snapshot in the file that replaced the old one")
    db.close()
    health = daemon.client().health()["database"]
    assert (health["reachable"], health["writable"]) == (True, True)
    assert "was replaced by another file while ratecared ran" in health["notice"]


def test_health_exits_1_while_the_breaker_journal_cannot_be_written(tiny_disk: Path, daemon_factory,
                                                                   tmp_path: Path) -> None:
    # The database and logs in tmp_path, the journal alone on a 64 KiB tmpfs.
    daemon = daemon_factory(write_config(tmp_path, daemon={"state_dir": str(tiny_disk)}))
    code, out, _ = ctl(daemon.socket, "health")
    assert code == 0 and f"journal   {tiny_disk}/breakers.journal writable" in out, out
    filler = fill_disk(tiny_disk, 512)
    # Opening booking is a transition: its line needs a page the disk does not have.
    fail(daemon)
    assert {p["platform"]: p["state"] for p in daemon.client().status()["platforms"]}["booking"] == "open"
    code, out, _ = ctl(daemon.socket, "health")
    assert code == 1, out
    assert "WRITE FAILED" in out and "No space left on device" in out, out
    code, out, _ = ctl(daemon.socket, "health", "--json")
    journal = json.loads(out)["journal"]
    assert code == 1 and journal["writable"] is False and "No space left on device" in journal["error"]
    # A snapshot holds `open` now; the disk is still full, and health still says so.
    db = sqlite3.connect(tmp_path / "rc.db")
    wait_for(lambda: db.execute("SELECT state FROM circuit_breaker_state WHERE platform = 'booking'").fetchall()
             == [("open",)], what="a snapshot holding booking open")
    db.close()
    assert ctl(daemon.socket, "health")[0] == 1
    filler.unlink()
    # With room again, health says so at once: it asks the disk, it does not wait for a transition to.
    code, out, _ = ctl(daemon.socket, "health")
    assert code == 0 and "writable" in out and "WRITE FAILED" not in out, out


@pytest.mark.mariadb
def test_health_exits_1_when_the_database_takes_no_writes(mariadb: MariaDB, mysql_url: str, config_factory,
                                                         daemon_factory) -> None:
    daemon = daemon_factory(config_factory(url=mysql_url))
    root = mariadb.root_connect()
    try:
        root.cursor().execute("SET GLOBAL read_only = 1")
        code, out, _ = ctl(daemon.socket, "health")
        assert code == 1 and "READ-ONLY" in out and "the server is read-only (read_only=ON)" in out
    finally:
        root.cursor().execute("SET GLOBAL read_only = 0")
        root.close()
    code, out, _ = ctl(daemon.socket, "health")
    assert code == 0 and "reachable, writable" in out
