"""Reload for real: each kind of config key, changed in the file, reloaded, and seen in effect from outside."""

from __future__ import annotations

import grp
import json
import os
import socket
import sqlite3
from pathlib import Path

import pytest

from conftest import DaemonProcess, ctl, rewrite, wait_for


def reload(daemon: DaemonProcess) -> tuple[int, str, str]:
    return ctl(daemon.socket, "reload")


def connect(daemon: DaemonProcess) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(daemon.socket)
    return conn


def test_an_idle_timeout_holds_from_the_next_connection(config_factory, daemon_factory) -> None:
    config = config_factory(daemon={"idle_timeout": 3600})
    daemon = daemon_factory(config)
    before = connect(daemon)
    rewrite(config, "daemon", idle_timeout=0.3)
    assert reload(daemon)[:2] == (0, "reloaded: applied daemon.idle_timeout\n")
    after = connect(daemon)
    after.settimeout(60)
    assert after.recv(4096) == b""
    # The connection opened before the reload keeps the limits it opened with.
    before.setblocking(False)
    with pytest.raises(BlockingIOError):
        before.recv(4096)
    before.close()


def test_a_lower_connection_limit_refuses_the_next_connection(config_factory, daemon_factory) -> None:
    config = config_factory(daemon={"max_connections": 100})
    daemon = daemon_factory(config)
    rewrite(config, "daemon", max_connections=1, reserved_admin_connections=0)
    assert reload(daemon)[0] == 0
    held = connect(daemon)
    refused = connect(daemon)
    refused.settimeout(60)
    assert refused.recv(4096).startswith(b"HTTP/1.1 503 ")
    held.close()


def test_debug_level_logs_each_request(config_factory, daemon_factory, tmp_path: Path) -> None:
    config = config_factory()
    daemon = daemon_factory(config)
    daemon.client().status()
    log = tmp_path / "logs" / "ratecared.log"
    assert '"event": "request"' not in log.read_text()
    rewrite(config, "logging", level="debug")
    assert reload(daemon)[:2] == (0, "reloaded: applied logging.level\n")
    daemon.client().acquire("booking")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    request = next(e for e in lines if e["event"] == "request" and e["path"].endswith("/booking/acquire"))
    assert (request["level"], request["method"], request["status"], request["peer_uid"]) == (
        "debug", "POST", 200, os.getuid())
    assert request["ms"] >= 0


def test_a_shorter_settings_refresh_is_followed(config_factory, daemon_factory, tmp_path: Path) -> None:
    config = config_factory(daemon={"settings_refresh": 3600})
    daemon = daemon_factory(config)
    rewrite(config, "daemon", settings_refresh=0.2)
    assert reload(daemon)[0] == 0
    db = sqlite3.connect(tmp_path / "rc.db")
    db.execute("UPDATE settings SET value = '2' WHERE key = 'circuit-breaker-failure-threshold'")
    db.commit()
    db.close()
    # No second reload: only the new interval brings the change in.
    wait_for(lambda: daemon.client().health()["settings"]["circuit-breaker-failure-threshold"] == 2)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a socket's group needs root")
def test_a_new_socket_group_is_given_to_the_socket(config_factory, daemon_factory) -> None:
    config = config_factory()
    daemon = daemon_factory(config)
    staff = grp.getgrnam("staff")
    rewrite(config, "daemon", socket_group="staff")
    assert reload(daemon)[:2] == (0, "reloaded: applied daemon.socket_group\n")
    assert os.stat(daemon.socket).st_gid == staff.gr_gid


def test_keys_that_need_a_restart_are_named_and_keep_their_old_value(config_factory, daemon_factory,
                                                                     tmp_path: Path) -> None:
    config = config_factory()
    daemon = daemon_factory(config)
    rewrite(config, "daemon", socket=str(tmp_path / "elsewhere.sock"), idle_timeout=30)
    code, out, err = reload(daemon)
    assert (code, out) == (0, "reloaded: applied daemon.idle_timeout\n")
    assert err == "restart needed to apply: daemon.socket\n"
    # Asked again, it still says so: the change is still not in effect.
    answer = daemon.client().reload()
    assert (answer["applied"], answer["restart_needed_for"]) == ([], ["daemon.socket"])
    # Still on its old socket, which it still answers on.
    assert not (tmp_path / "elsewhere.sock").exists()
    assert daemon.client().status()["total_platforms"] == 7


def test_the_purges_limits_apply_and_the_connection_and_loop_wait_for_a_restart(config_factory,
                                                                                daemon_factory) -> None:
    config = config_factory()
    daemon = daemon_factory(config)
    # The suites run on either loop: ask for the other one.
    other = "auto" if os.environ.get("RATECARED_TEST_EVENT_LOOP") == "asyncio" else "asyncio"
    rewrite(config, "database", max_threads_running=7, connect_timeout=9)
    rewrite(config, "daemon", event_loop=other)
    code, out, err = reload(daemon)
    assert (code, out) == (0, "reloaded: applied database.max_threads_running\n")
    assert err == "restart needed to apply: daemon.event_loop, database.connect_timeout\n"
    # Asked again, it names both again: neither is in effect.
    answer = daemon.client().reload()
    assert (answer["applied"], answer["restart_needed_for"]) == ([], ["daemon.event_loop",
                                                                     "database.connect_timeout"])


def test_a_new_schedule_shows_in_jobs_when_the_reload_answers(config_factory, daemon_factory) -> None:
    config = config_factory(daemon={"timezone": "UTC"})
    daemon = daemon_factory(config)
    rewrite(config, "jobs.aggregate_statistics", schedule="17 4 * * *")
    assert reload(daemon)[:2] == (0, "reloaded: applied jobs.aggregate_statistics.schedule\n")
    jobs = {job["name"]: job for job in json.loads(ctl(daemon.socket, "jobs", "--json")[1])}
    aggregate = jobs["aggregate_statistics"]
    assert aggregate["schedule"] == "17 4 * * *"
    assert aggregate["next_run"][11:19] == "04:17:00"


def test_a_new_platform_list_is_in_effect_when_the_reload_answers(config_factory, daemon_factory) -> None:
    config = config_factory(circuit_breaker={"platforms": ["booking", "agoda"]})
    daemon = daemon_factory(config)
    client = daemon.client()
    for _ in range(5):
        client.report(client.acquire("booking"), False, 5003)
    rewrite(config, "circuit_breaker", platforms=["booking", "expedia"])
    assert reload(daemon)[:2] == (0, "reloaded: applied circuit_breaker.platforms\n")
    status = {p["platform"]: p["state"] for p in client.status()["platforms"]}
    # booking keeps its state; expedia is new and closed; agoda is gone.
    assert status == {"booking": "open", "expedia": "closed"}
    assert client.acquire("expedia").allowed
    code, out, err = ctl(daemon.socket, "status", "agoda")
    assert code == 1 and "unknown platform 'agoda'" in err
