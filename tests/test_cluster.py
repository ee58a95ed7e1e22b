"""Several daemons on one real MariaDB, as RateCare runs one per app server: --cluster commands and the view."""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest

from conftest import DaemonProcess, ctl, entry, fail, wait_for, write_config
from mariadb import MariaDB

from ratecared.config import DatabaseConfig
from ratecared.db import Database, timestamp

ME = f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})"


@pytest.fixture
def hosts(mysql_url: str, tmp_path: Path, daemon_factory) -> Callable[[str], DaemonProcess]:
    """Start a daemon named `host` on the test's database. The others snapshot every 0.5 s; web1, which the
    tests ask for the view, every 3 s, so a host is stale only 9 s after its last snapshot."""

    def start(host: str) -> DaemonProcess:
        directory = tmp_path / host
        directory.mkdir()
        interval = 3 if host == "web1" else 0.5
        return daemon_factory(write_config(directory, mysql_url,
                                           daemon={"host": host, "snapshot_interval": interval}))

    return start


def summary(daemon: DaemonProcess, platform: str) -> str:
    return next(p["summary"] for p in daemon.client().cluster_status()["platforms"] if p["platform"] == platform)


def rows(mysql_url: str, sql: str) -> list[tuple]:
    db = Database(DatabaseConfig(url=mysql_url))
    try:
        return db.query(sql)
    finally:
        db.close()


@pytest.mark.mariadb
def test_a_cluster_hold_reaches_every_host_and_one_started_later(hosts, mysql_url: str) -> None:
    web1, web2, web3 = hosts("web1"), hosts("web2"), hosts("web3")
    code, out, err = ctl(web1.socket, "hold", "booking", "open", "--for", "2h", "--reason", "booking maintenance",
                         "--cluster")
    assert code == 0, err
    assert out.startswith("hold booking: sent to every host as cluster command 1; here (web1): held open.")
    for daemon in (web1, web2, web3):
        hold = wait_for(lambda: entry(daemon)["hold"], what="the hold on every host")
        assert (hold["state"], hold["by"]) == ("open", ME)
        assert hold["reason"] == "booking maintenance (cluster command 1 from web1)"
        assert not daemon.client().acquire("booking").allowed
    # Each host acknowledged it, and its event says who asked and which host applied it when.
    acks = wait_for(lambda: rows(mysql_url, "SELECT host, result FROM circuit_breaker_command_acks ORDER BY host")
                    if len(rows(mysql_url, "SELECT host FROM circuit_breaker_command_acks")) == 3 else None,
                    what="three acknowledgements")
    assert acks == [("web1", "held open"), ("web2", "held open"), ("web3", "held open")]
    events = wait_for(lambda: [e for e in web1.client().events("booking") if e["action"] == "hold"]
                      if len([e for e in web1.client().events("booking") if e["action"] == "hold"]) == 3 else None,
                      what="three hold events")
    assert sorted(e["host"] for e in events) == ["web1", "web2", "web3"] and {e["who"] for e in events} == {ME}
    assert wait_for(lambda: summary(web1, "booking") == "booking: open on 3 of 3 hosts" or None,
                    what="the cluster view of the hold")

    # A daemon started while the hold is in force holds from its first answer.
    web4 = hosts("web4")
    assert entry(web4)["hold"]["state"] == "open"
    assert not web4.client().acquire("booking").allowed

    code, out, _ = ctl(web2.socket, "release", "booking", "--cluster")
    assert code == 0 and "here (web2): released" in out
    for daemon in (web1, web2, web3, web4):
        wait_for(lambda: entry(daemon)["hold"] is None, what="the release on every host")
        assert daemon.client().acquire("booking").allowed


@pytest.mark.mariadb
def test_the_cluster_view_marks_a_stopped_host_stale_and_counts_only_the_others(hosts) -> None:
    web1, web2, web3 = hosts("web1"), hosts("web2"), hosts("web3")
    fail(web2, "agoda")
    fail(web3, "agoda")
    assert wait_for(lambda: summary(web1, "agoda") == "agoda: open on 2 of 3 hosts" or None,
                    what="agoda open on web2 and web3 in the view")
    assert summary(web1, "booking") == "booking: closed on all 3 hosts"
    code, out, _ = ctl(web1.socket, "status", "--cluster", "--check")
    assert code == 1 and "agoda: open on 2 of 3 hosts" in out
    assert all(len(line) <= 80 for line in out.splitlines()), out

    web3.stop()
    view = wait_for(lambda: (lambda v: v if next(h for h in v["hosts"] if h["host"] == "web3")["stale"] else None)(
        web1.client().cluster_status()), timeout=120, what="web3 stale")
    assert [h["stale"] for h in view["hosts"] if h["host"] != "web3"] == [False, False]
    assert summary(web1, "agoda") == "agoda: open on 1 of 2 hosts; 1 stale host not counted"
    code, out, _ = ctl(web1.socket, "status", "--cluster")
    assert code == 0
    assert "stale (no snapshot for over 9 s: stopped, or cut off from the database): web3" in out
    web3_lines = [line for line in out.splitlines() if line.startswith("web3 ")]
    assert len(web3_lines) == 7 and all("STALE" in line for line in web3_lines)
    code, out, _ = ctl(web1.socket, "status", "agoda", "--cluster", "--json")
    data = json.loads(out)
    assert [p["platform"] for p in data["platforms"]] == ["agoda"]
    assert (data["platforms"][0]["open"], data["platforms"][0]["stale_hosts"]) == (1, 1)

    code, out, _ = ctl(web1.socket, "reset", "agoda", "--cluster")
    assert code == 0 and "reset agoda: sent to every host as cluster command" in out
    wait_for(lambda: entry(web2, "agoda")["state"] == "closed", what="the cluster reset on web2")


@pytest.mark.mariadb
def test_a_cluster_command_the_database_cannot_take_is_refused_and_reaches_no_host(
        mariadb: MariaDB, hosts) -> None:
    web1 = hosts("web1")
    mariadb.kill()
    try:
        code, out, err = ctl(web1.socket, "hold", "booking", "open", "--for", "1h", "--reason", "maintenance",
                             "--cluster")
    finally:
        mariadb.ensure_running()
    assert code == 1 and "the command could not be recorded for every host, so no host has it" in err
    assert entry(web1)["hold"] is None


def test_cluster_commands_work_on_sqlite_for_the_one_host_there(daemon: DaemonProcess) -> None:
    code, out, err = ctl(daemon.socket, "hold", "expedia", "closed", "--for", "30m", "--reason", "known good",
                         "--cluster")
    assert code == 0, err
    assert entry(daemon, "expedia")["hold"]["state"] == "closed"
    view = daemon.client().cluster_status()
    assert len(view["hosts"]) == 1 and view["hosts"][0]["this_host"] and not view["hosts"][0]["stale"]
    assert summary(daemon, "expedia") == "expedia: closed on 1 host"


def test_commands_older_than_the_longest_hold_are_never_applied_and_are_trimmed(config_factory, daemon_factory,
                                                                                tmp_path: Path) -> None:
    config = config_factory()
    daemon_factory(config).stop()
    old = datetime.now(timezone.utc) - timedelta(days=31)
    conn = sqlite3.connect(tmp_path / "rc.db")
    conn.execute("INSERT INTO circuit_breaker_commands (at, host, action, platform, hold_state, hold_until, reason, "
                 "who) VALUES (?, 'web9', 'hold', 'booking', 'open', ?, 'long gone', 'root')",
                 (timestamp(old), timestamp(old + timedelta(days=60))))
    conn.commit()
    daemon = daemon_factory(config)
    assert entry(daemon)["hold"] is None
    assert conn.execute("SELECT COUNT(*) FROM circuit_breaker_commands").fetchone() == (0,)
    conn.close()
