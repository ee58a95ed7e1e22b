"""The .deb on a real Debian 12 booted with systemd: install, operate, break, purge.

Runs as root (CI always does). The tests share one container and run in file
order, as an operator's session would: install on SQLite, move to MariaDB,
then systemctl, ratecarectl per user, journald, logrotate, crashes, a hung
daemon, a bad config, the unit suite on Debian's python3 packages, and purge.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pytest

from container import Container, require_prerequisites, skip_or_fail

REPO = Path(__file__).resolve().parents[2]
DEB_DIR = Path(os.environ.get("RATECARED_DEB_DIR", REPO / "build" / "deb"))
CONFIG = "/etc/ratecared/ratecared.toml"


@pytest.fixture(scope="module")
def box() -> Iterator[Container]:
    require_prerequisites()
    debs = sorted(DEB_DIR.glob("ratecared_*_all.deb"))
    if not debs:
        skip_or_fail(f"no ratecared_*_all.deb in {DEB_DIR}: run `make deb` first")
    container = Container()
    container.boot({"/srv/deb": DEB_DIR, "/srv/tests": REPO / "tests"})
    container.deb = f"/srv/deb/{debs[-1].name}"  # type: ignore[attr-defined]
    yield container
    container.remove()


def main_pid(box: Container) -> int:
    return int(box.sh("systemctl show -p MainPID --value ratecared").stdout)


def open_booking(box: Container) -> None:
    box.sh("for i in 1 2 3 4 5; do "
           "p=$(curl -s --unix-socket /run/ratecared/ratecared.sock -X POST "
           "http://localhost/api/v1/circuit-breaker/booking/acquire | sed 's/.*\"permit\":\"\\([^\"]*\\)\".*/\\1/'); "
           "curl -s --unix-socket /run/ratecared/ratecared.sock -X POST "
           "-d \"{\\\"permit\\\":\\\"$p\\\",\\\"success\\\":false,\\\"duration_ms\\\":5003}\" "
           "http://localhost/api/v1/circuit-breaker/booking/report >/dev/null; done")


def booking_state(box: Container) -> str:
    return json.loads(box.sh("ratecarectl status booking --json").stdout)["state"]


def test_install_starts_the_service_on_sqlite(box: Container) -> None:
    result = box.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {box.deb} mariadb-server curl",
                    timeout=900)
    assert "Setting up ratecared" in result.stdout
    assert box.sh("systemctl is-active ratecared").stdout.strip() == "active"
    assert box.sh("stat -c '%a %U %G' /run/ratecared/ratecared.sock").stdout.split() == ["660", "_ratecared",
                                                                                        "ratecare"]
    assert box.sh("stat -c '%a %U' /etc/ratecared/db-password").stdout.split() == ["600", "root"]
    assert "sqlite:////var/lib/ratecared/ratecare.db" in box.sh("ratecared check-config").stdout
    assert box.sh("ratecarectl status").returncode == 0


def test_the_unit_is_clean_and_hardened(box: Container) -> None:
    verify = box.sh("systemd-analyze verify /lib/systemd/system/ratecared.service 2>&1", check=False)
    assert verify.returncode == 0 and verify.stdout.strip() == "", verify.stdout
    security = box.sh("systemd-analyze security ratecared --no-pager 2>&1").stdout
    exposure = float(re.search(r"Overall exposure level for ratecared.service: ([0-9.]+)", security)[1])
    assert exposure <= 1.6, security[-2000:]
    # The limits measured under the attack bench (README), in force on the running service.
    limits = box.sh("systemctl show -p MemoryMax -p TasksMax ratecared").stdout.split()
    assert sorted(limits) == ["MemoryMax=268435456", "TasksMax=128"]


def test_move_to_mariadb_with_a_password_and_migrate(box: Container) -> None:
    box.sh("systemctl start mariadb && mariadb -e \"CREATE DATABASE ratecare; "
           "CREATE USER 'ratecare'@'localhost' IDENTIFIED BY 's3cret pw'; "
           "GRANT ALL ON ratecare.* TO 'ratecare'@'localhost'\"")
    box.sh("printf 's3cret pw\\n' > /etc/ratecared/db-password")
    box.sh(f"sed -i -e 's|^url = \"sqlite.*|url = \"mysql://ratecare@localhost/ratecare?unix_socket=/run/mysqld/mysqld.sock\"|'"
           f" -e 's|^auto_migrate = true|auto_migrate = false|' {CONFIG}")
    failed = box.sh("systemctl restart ratecared", check=False)
    assert failed.returncode != 0
    assert "pending migrations" in box.sh("journalctl -u ratecared -n 20 --no-pager").stdout
    migrate = box.sh("ratecared migrate").stdout
    shipped = sorted(path.stem for path in (REPO / "ratecared" / "db" / "migrations").glob("*.sql"))
    assert migrate.splitlines() == [f"applied {name}" for name in shipped]
    box.sh("systemctl reset-failed ratecared; systemctl restart ratecared")
    assert box.sh("systemctl is-active ratecared").stdout.strip() == "active"
    health = json.loads(box.sh("ratecarectl health --json").stdout)
    assert health["database"]["engine"] == "mysql" and health["database"]["reachable"] is True


def test_systemctl_start_stop_reload_restart(box: Container) -> None:
    box.sh("systemctl stop ratecared")
    assert box.sh("systemctl is-active ratecared", check=False).stdout.strip() == "inactive"
    assert box.sh("test -e /run/ratecared/ratecared.sock", check=False).returncode != 0
    box.sh("systemctl start ratecared")
    # READY=1 comes after the socket is bound: usable the moment start returns.
    assert box.sh("systemctl is-active --quiet ratecared && ratecarectl status >/dev/null && echo ok").stdout.strip() == "ok"
    pid = main_pid(box)
    box.sh("systemctl reload ratecared")
    assert main_pid(box) == pid
    assert "reloaded" in box.sh("journalctl -u ratecared -n 5 --no-pager").stdout
    box.sh("systemctl restart ratecared")
    assert main_pid(box) != pid and box.sh("systemctl is-active ratecared").stdout.strip() == "active"
    status = box.wait_for("systemctl status ratecared --no-pager | grep 'Status: \"7 breakers, next: '")
    # The job due soonest, whatever the time of day the test runs at (it was aggregate_statistics only
    # before 02:00).
    jobs = json.loads(box.sh("ratecarectl jobs --json").stdout)
    soonest = min((job for job in jobs if job["next_run"]), key=lambda job: datetime.fromisoformat(job["next_run"]))
    assert f"next: {soonest['name']} " in status, (status, jobs)


def test_the_sandboxed_unit_serves_metrics_on_its_tcp_listener(box: Container) -> None:
    box.sh(f"sed -i 's/^listen = \"\"$/listen = \"127.0.0.1:9187\"/' {CONFIG} && systemctl restart ratecared")
    try:
        metrics = box.wait_for("curl -sf http://127.0.0.1:9187/metrics")
        assert re.search(r'^ratecared_breaker_state\{platform="booking",state="open"\} [01]\.0$', metrics, re.M)
        assert "ratecared_database_up 1.0" in metrics
        # The breaker API is not on the TCP listener.
        assert box.sh("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9187/api/v1/circuit-breaker/status"
                      ).stdout == "404"
    finally:
        # Two restarts more than an operator's session would make: clear the unit's start count
        # (StartLimitBurst=5 in 300 s), or the kill -9 test's restart would be refused as too frequent.
        box.sh(f"sed -i 's/^listen = \"127.0.0.1:9187\"$/listen = \"\"/' {CONFIG} && systemctl restart ratecared"
               " && systemctl reset-failed ratecared")


def test_ratecarectl_exit_codes_per_user(box: Container) -> None:
    box.sh("id admin1 >/dev/null 2>&1 || useradd -M -G ratecare,ratecare-admin admin1; "
           "id app1 >/dev/null 2>&1 || useradd -M -G ratecare app1")
    expected = {
        "root": (0, 0, 0, 0),
        "admin1": (0, 0, 0, 0),
        "app1": (0, 0, 4, 4),
        "nobody": (4, 4, 4, 4),
    }
    for user, codes in expected.items():
        got = tuple(
            int(box.sh(f"ratecarectl {args} >/dev/null 2>&1; echo $?", user=None if user == "root" else user).stdout)
            for args in ("status", "jobs", "run aggregate_statistics --wait", "reset booking")
        )
        assert got == codes, user


def test_journal_has_transitions_and_job_runs_and_priorities(box: Container) -> None:
    open_booking(box)
    box.sh("ratecarectl run cleanup_expired_cache --wait >/dev/null")
    box.sh("mariadb ratecare -e \"UPDATE settings SET value='lots' WHERE \\`key\\`='cache-warming-widget-count'\"")
    box.sh("ratecarectl reload >/dev/null")
    journal = box.sh("journalctl -u ratecared --no-pager -o cat").stdout
    assert "breaker transition platform=booking old=closed new=open" in journal
    assert "job finished job=cleanup_expired_cache" in journal
    warnings = box.sh("journalctl -u ratecared -p warning --no-pager -o cat").stdout
    assert "new=open" in warnings and "bad setting key=cache-warming-widget-count value=lots" in warnings
    assert "job finished" not in warnings and "ready socket=" not in warnings
    box.sh("mariadb ratecare -e \"UPDATE settings SET value='10' WHERE \\`key\\`='cache-warming-widget-count'\"")


def test_job_log_files_and_logrotate(box: Container) -> None:
    files = box.sh("ls /var/log/ratecared").stdout.split()
    assert {"ratecared.log", "circuit-breaker.log", "aggregate.log", "cleanup.log", "warming.log"} <= set(files)
    box.sh("logrotate -f /etc/logrotate.d/ratecared")
    assert box.sh("test -e /var/log/ratecared/aggregate.log.1 && echo rotated").stdout.strip() == "rotated"
    run = box.sh("ratecarectl run aggregate_statistics --wait").stdout
    run_id = re.search(r"\(run ([0-9a-f]+)", run)[1]
    fresh = [json.loads(line) for line in box.sh("cat /var/log/ratecared/aggregate.log").stdout.splitlines()]
    assert fresh and {event["run_id"] for event in fresh} == {run_id}


def test_kill_9_restarts_and_an_open_breaker_stays_open(box: Container) -> None:
    open_booking(box)
    assert booking_state(box) == "open"
    pid = main_pid(box)
    box.sh(f"kill -9 {pid}")
    box.wait_for(f"test $(systemctl show -p MainPID --value ratecared) != {pid} && "
                 "systemctl is-active ratecared && ratecarectl status >/dev/null", timeout=120)
    assert booking_state(box) == "open"


def test_a_stopped_daemon_is_killed_by_the_watchdog_and_restarted(box: Container) -> None:
    box.sh("mkdir -p /etc/systemd/system/ratecared.service.d && printf '[Service]\\nWatchdogSec=3\\n"
           "TimeoutAbortSec=2\\n' > /etc/systemd/system/ratecared.service.d/test-watchdog.conf && "
           "systemctl daemon-reload && systemctl restart ratecared")
    pid = main_pid(box)
    box.sh(f"kill -STOP {pid}")
    box.wait_for(f"test $(systemctl show -p MainPID --value ratecared) != {pid} && "
                 "systemctl is-active ratecared", timeout=120)
    assert "Watchdog timeout" in box.sh("journalctl -u ratecared --no-pager -n 40").stdout
    box.sh("rm -r /etc/systemd/system/ratecared.service.d && systemctl daemon-reload && systemctl restart ratecared")


def test_an_invalid_config_fails_clearly_without_a_restart_loop(box: Container) -> None:
    box.sh(f"cp {CONFIG} /root/good.toml && sed -i 's/^snapshot_interval = 30/snapshot_interval = \"often\"/' {CONFIG}")
    assert box.sh("systemctl restart ratecared", check=False).returncode != 0
    # "failed", not "activating (auto-restart)": systemd will not start it again.
    box.wait_for("test $(systemctl show -p ActiveState --value ratecared) = failed")
    assert box.sh("systemctl show -p SubState --value ratecared").stdout.strip() == "failed"
    assert box.sh("systemctl show -p NRestarts --value ratecared").stdout.strip() == "0"
    assert box.sh("systemctl show -p ExecMainStatus --value ratecared").stdout.strip() == "78"
    errors = box.sh("journalctl -u ratecared -p err --no-pager -o cat -n 5").stdout
    assert f"ratecared: config error: {CONFIG}: daemon.snapshot_interval: must be a number" in errors
    box.sh(f"cp /root/good.toml {CONFIG} && systemctl reset-failed ratecared && systemctl start ratecared")


def test_upgrade_stops_the_old_daemon_before_replacing_files(box: Container) -> None:
    pid = main_pid(box)
    box.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall {box.deb}", timeout=300)
    assert box.sh("systemctl is-active ratecared").stdout.strip() == "active"
    assert main_pid(box) != pid
    journal = box.sh("journalctl -u ratecared --no-pager -o cat -n 30").stdout
    assert journal.index("stopped final_snapshot=written") < journal.rindex("ready socket=")


def test_unit_suite_on_debians_python3_packages(box: Container) -> None:
    box.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pytest >/dev/null", timeout=300)
    versions = box.sh("dpkg-query -W python3-croniter python3-structlog python3-click python3-pymysql").stdout
    assert "1.3.5" in versions and "22.3.0" in versions and "8.1.3" in versions and "1.0.2" in versions
    result = box.sh("cd /tmp && RATECARED_REQUIRE_MARIADB=1 python3 -m pytest /srv/tests -q -p no:cacheprovider "
                    "--ignore=/srv/tests/system -x 2>&1 | tail -15", timeout=1200)
    assert re.search(r"\d+ passed", result.stdout) and "failed" not in result.stdout, result.stdout


def test_purge_leaves_nothing_but_the_user(box: Container) -> None:
    box.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q ratecared", timeout=300)
    left = box.sh("ls -d /etc/ratecared /var/lib/ratecared /var/log/ratecared /run/ratecared "
                  "/lib/systemd/system/ratecared.service /etc/logrotate.d/ratecared 2>/dev/null; true").stdout
    assert left.strip() == ""
    assert box.sh("systemctl is-active ratecared", check=False).stdout.strip() == "inactive"
    assert box.sh("id -u _ratecared").returncode == 0
