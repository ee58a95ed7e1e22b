"""Holds and the audit trail on a running daemon, through ratecarectl and the socket as operators use them."""

from __future__ import annotations

import json
import os
import pwd
import signal
import sqlite3
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import DaemonProcess, ctl, entry, fail, wait_for
from mariadb import MariaDB

from ratecared.client import DaemonError
from ratecared.config import DatabaseConfig
from ratecared.db import Database

ME = f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})"


def acquire_json(daemon: DaemonProcess, platform: str = "booking") -> dict:
    """The acquire answer as the app's curl gets it."""
    out = subprocess.run(["curl", "-sS", "--unix-socket", daemon.socket, "-X", "POST",
                          f"http://localhost/api/v1/circuit-breaker/{platform}/acquire"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out)["data"]


def test_a_held_open_breaker_refuses_every_call_and_says_whose_hold_it_is(daemon: DaemonProcess) -> None:
    code, out, err = ctl(daemon.socket, "hold", "booking", "open", "--for", "2h", "--reason", "booking maintenance")
    assert code == 0, err
    assert out.startswith("booking: held open until ") and f"by {ME}\n  booking maintenance\n" in out

    answer = acquire_json(daemon)
    assert (answer["allowed"], answer["state"], answer["permit"]) == (False, "open", None)
    assert 7000 < answer["retry_after"] <= 7200
    assert {k: answer["hold"][k] for k in ("state", "reason", "by")} == {
        "state": "open", "reason": "booking maintenance", "by": ME}
    until = datetime.fromisoformat(answer["hold"]["until"])
    assert timedelta(hours=1.9) < until - datetime.now(timezone.utc) <= timedelta(hours=2, seconds=1)
    assert until.utcoffset() == timedelta(hours=3)  # the daemon's zone, Europe/Istanbul

    code, out, _ = ctl(daemon.socket, "status")
    assert code == 0
    assert f"held open by {ME.split()[0]}" in out.splitlines()[1] and "booking: held open until " in out
    assert "\n  booking maintenance\n" in out
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert entry(daemon)["hold"]["by"] == ME
    # The other platforms are not held.
    assert daemon.client().acquire("agoda").allowed


def test_a_held_closed_breaker_lets_every_call_through_and_no_failure_trips_it(daemon: DaemonProcess) -> None:
    fail(daemon)
    assert ctl(daemon.socket, "hold", "booking", "closed", "--for", "1h", "--reason", "platform known good")[0] == 0
    fail(daemon, times=20)
    status = entry(daemon)
    assert (status["state"], status["total_failures"], status["hold"]["state"]) == ("closed", 25, "closed")
    assert acquire_json(daemon)["allowed"] is True
    # Released, the breaker counts from a clean streak again: five more failures open it.
    code, out, _ = ctl(daemon.socket, "release", "booking")
    assert (code, out.strip()) == (0, "booking: hold released; now closed")
    fail(daemon, times=4)
    assert entry(daemon)["state"] == "closed"
    fail(daemon, times=1)
    assert entry(daemon)["state"] == "open"


# kill -9: snapshots an hour apart, so only the journal can keep what the reply said; a stop: the final snapshot.
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_hold_survives_a_restart_right_after_the_reply_and_so_does_its_release(config_factory, daemon_factory,
                                                                                how: int) -> None:
    config = config_factory(daemon={"snapshot_interval": 3600})
    daemon = daemon_factory(config)
    assert ctl(daemon.socket, "hold", "booking", "open", "--for", "2h", "--reason", "maintenance")[0] == 0
    daemon.stop(how)
    again = daemon_factory(config)
    answer = acquire_json(again)
    assert (answer["allowed"], answer["hold"]["reason"], answer["hold"]["by"]) == (False, "maintenance", ME)
    assert 7000 < answer["retry_after"] <= 7200

    assert ctl(again.socket, "release", "booking")[0] == 0
    again.stop(how)
    third = daemon_factory(config)
    assert (entry(third)["state"], entry(third)["hold"]) == ("closed", None)


def test_a_hold_ends_by_itself_and_the_breaker_goes_on_closed(daemon: DaemonProcess) -> None:
    assert ctl(daemon.socket, "hold", "booking", "open", "--for", "1s", "--reason", "a short one")[0] == 0
    wait_for(lambda: daemon.client().acquire("booking").allowed, what="the hold to end")
    assert (entry(daemon)["state"], entry(daemon)["hold"]) == ("closed", None)
    ended = daemon.client().events("booking")[0]
    assert (ended["action"], ended["old_state"], ended["new_state"], ended["reason"], ended["who"]) == (
        "release", "open", "closed", "hold ended", "daemon")


@pytest.mark.parametrize("args,code,message", [
    (["booking", "open", "--for", "2x", "--reason", "r"], 2, "not a length of time"),
    (["booking", "half_open", "--for", "1h", "--reason", "r"], 2, "'half_open' is not one of"),
    (["booking", "open", "--for", "31d", "--reason", "r"], 1, "at most 2592000 (30 days)"),
    (["booking", "open", "--for", "1h", "--reason", ""], 2, "reason"),
    (["booking", "open", "--for", "1h"], 2, "Missing option '--reason'"),
    (["nosuch", "open", "--for", "1h", "--reason", "r"], 1, "unknown platform 'nosuch'"),
])
def test_a_bad_hold_is_refused_with_the_reason_and_changes_nothing(daemon: DaemonProcess, args: list[str],
                                                                   code: int, message: str) -> None:
    got, out, err = ctl(daemon.socket, "hold", *args)
    assert (got, message in err) == (code, True), (out, err)
    assert all(p["hold"] is None for p in daemon.client().status()["platforms"])


def test_releasing_a_breaker_with_no_hold_says_so(daemon: DaemonProcess) -> None:
    code, out, err = ctl(daemon.socket, "release", "booking", "--json")
    assert code == 1
    assert json.loads(out)["error"] == {"code": "not_held", "message": "booking has no hold to release"}


def test_a_platform_without_a_breaker_cannot_be_held(daemon: DaemonProcess, tmp_path: Path) -> None:
    from conftest import setting_in_effect, set_setting

    set_setting(tmp_path / "rc.db", "circuit-breaker-platforms", "agoda")
    setting_in_effect(daemon, "circuit-breaker-platforms", "agoda")
    code, _, err = ctl(daemon.socket, "hold", "booking", "open", "--for", "1h", "--reason", "r")
    assert code == 1 and "booking has no breaker" in err


# -- the audit trail -------------------------------------------------------------------


def test_every_transition_and_operator_action_is_an_event_with_who(daemon: DaemonProcess, tmp_path: Path) -> None:
    fail(daemon)
    assert ctl(daemon.socket, "reset", "booking")[0] == 0
    assert ctl(daemon.socket, "reset", "booking")[0] == 0
    assert ctl(daemon.socket, "hold", "booking", "open", "--for", "1h", "--reason", "maintenance")[0] == 0
    assert ctl(daemon.socket, "release", "booking")[0] == 0

    code, out, _ = ctl(daemon.socket, "events", "booking", "--json")
    assert code == 0
    shown = [(e["action"], e["old_state"], e["new_state"], e["who"]) for e in json.loads(out)]
    assert shown == [
        ("release", "open", "closed", ME),
        ("hold", "closed", "open", ME),
        ("reset", "closed", "closed", ME),
        ("reset", "open", "closed", ME),
        ("transition", "closed", "open", "daemon"),
    ]
    events = json.loads(out)
    assert events[-1]["reason"] == "5 consecutive failures" and events[2]["reason"].endswith("already closed")
    assert {e["host"] for e in events} == {daemon.client().health()["host"]}

    # The same rows in the table, for whoever reads it with SQL.
    db = sqlite3.connect(tmp_path / "rc.db")
    wait_for(lambda: db.execute("SELECT COUNT(*) FROM circuit_breaker_events WHERE platform = 'booking'"
                                ).fetchone()[0] == 5, what="the events in the table")
    assert db.execute("SELECT action, who FROM circuit_breaker_events ORDER BY id").fetchall() == [
        ("transition", "daemon"), ("reset", ME), ("reset", ME), ("hold", ME), ("release", ME)]

    code, out, _ = ctl(daemon.socket, "events", "--since", "1h")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["TIME", "PLATFORM", "ACTION", "CHANGE", "WHO", "REASON"]
    assert "open>closed" in lines[1] and "release" in lines[1] and all(len(line) <= 80 for line in lines), out


def test_the_journal_names_who_held_and_reset(daemon: DaemonProcess, tmp_path: Path) -> None:
    fail(daemon)
    assert ctl(daemon.socket, "hold", "booking", "open", "--for", "1h", "--reason", "maintenance")[0] == 0
    assert ctl(daemon.socket, "reset", "booking")[0] == 0
    daemon.stop()
    held = next(line for line in daemon.output.splitlines() if "action=hold" in line)
    assert f'by="{ME}"' in held and "platform=booking" in held
    assert f'by="{ME}"' in next(line for line in daemon.output.splitlines() if "breakers reset" in line)


def test_events_since_and_limit(daemon: DaemonProcess) -> None:
    fail(daemon)
    assert ctl(daemon.socket, "reset")[0] == 0
    assert len(daemon.client().events(limit=1)) == 1
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat(timespec="seconds")
    assert daemon.client().events(since=future) == []
    for since in ("last tuesday", "99999999999d", "0001-01-01", "0001-01-01T00:00:00+14:00"):
        code, _, err = ctl(daemon.socket, "events", "--since", since)
        assert code == 1 and "since must be a length back from now" in err, (since, err)
    daemon.stop()
    assert "Traceback" not in daemon.output and "request failed" not in daemon.output


def test_events_older_than_the_retention_are_trimmed(config_factory, daemon_factory, tmp_path: Path) -> None:
    config = config_factory()
    daemon = daemon_factory(config)
    daemon.stop()
    db = sqlite3.connect(tmp_path / "rc.db", isolation_level=None)
    now = datetime.now(timezone.utc)
    for days in (100, 80):
        db.execute("INSERT INTO circuit_breaker_events (at, host, platform, action, old_state, new_state, reason, who)"
                   " VALUES (?, 'web1', 'booking', 'reset', 'open', 'closed', ?, 'alice (uid 1000)')",
                   ((now - timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S.000"), f"{days} days ago"))
    daemon_factory(config)
    wait_for(lambda: db.execute("SELECT reason FROM circuit_breaker_events").fetchall() == [("80 days ago",)],
             what="the 100-day-old event trimmed (circuit-breaker-events-retention-days is 90)")


@pytest.mark.mariadb
def test_events_wait_for_a_dead_database_and_are_written_once_it_is_back(mariadb: MariaDB, mysql_url: str,
                                                                       config_factory, daemon_factory,
                                                                       tmp_path: Path) -> None:
    daemon = daemon_factory(config_factory(url=mysql_url, database={"connect_timeout": 2}))
    log = tmp_path / "logs" / "ratecared.log"
    mariadb.kill()
    try:
        fail(daemon)
        with pytest.raises(DaemonError) as refused:
            daemon.client().events("booking")
        assert (refused.value.status, refused.value.code) == (503, "database_error")
        # The store thread has tried and kept the event; under load that can come after the 503.
        wait_for(lambda: "cannot write breaker events" in log.read_text(), what="the event kept, not written")
    finally:
        mariadb.start()
    db = Database(DatabaseConfig(url=mysql_url))
    try:
        wait_for(lambda: db.query("SELECT action, new_state FROM circuit_breaker_events WHERE platform = 'booking'")
                 == [("transition", "open")], what="the event written once MariaDB is back")
    finally:
        db.close()
    daemon.stop()
    assert "<4>cannot write breaker events; keeping them until the database answers" in daemon.output
    assert "breaker events written again" in daemon.output


def test_metrics_show_the_hold(daemon: DaemonProcess) -> None:
    assert ctl(daemon.socket, "hold", "booking", "closed", "--for", "1h", "--reason", "known good")[0] == 0
    text = subprocess.run(["curl", "-sS", "--unix-socket", daemon.socket, "http://localhost/metrics"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert 'ratecared_breaker_held{platform="booking",state="closed"} 1.0' in text
    assert 'ratecared_breaker_held{platform="booking",state="open"} 0.0' in text
    assert 'ratecared_breaker_held{platform="agoda",state="closed"} 0.0' in text


def test_a_setting_changed_through_ratecarectl_is_an_event(daemon: DaemonProcess) -> None:
    assert ctl(daemon.socket, "settings", "circuit-breaker-failure-threshold", "7")[0] == 0
    assert ctl(daemon.socket, "settings", "circuit-breaker-failure-threshold", "8")[0] == 0
    shown = [(e["action"], e["platform"], e["reason"], e["who"]) for e in daemon.client().events()]
    assert shown == [("setting", None, "circuit-breaker-failure-threshold set from '7' to '8'", ME),
                     ("setting", None, "circuit-breaker-failure-threshold set from '5' to '7'", ME)]
    # A platform's events leave the settings out.
    assert daemon.client().events("booking") == []


def test_a_reset_leaves_held_breakers_as_they_are_and_says_so(daemon: DaemonProcess) -> None:
    fail(daemon, "agoda")
    assert ctl(daemon.socket, "hold", "booking", "open", "--for", "1h", "--reason", "maintenance")[0] == 0
    code, out, _ = ctl(daemon.socket, "reset")
    assert code == 0
    assert out.splitlines() == [
        "reset: agoda; already closed: expedia, hotels, trivago, tripadvisor, google",
        "held, left as they are (`ratecarectl release` ends a hold): booking"]
    assert (entry(daemon)["state"], entry(daemon)["hold"]["reason"]) == ("open", "maintenance")
    assert json.loads(ctl(daemon.socket, "reset", "booking", "--json")[1]) == {
        "reset": ["booking"], "changed": [], "held": ["booking"]}


def test_the_kill_switch_lets_calls_through_a_held_breaker(daemon: DaemonProcess, tmp_path: Path) -> None:
    from conftest import set_setting, setting_in_effect

    assert ctl(daemon.socket, "hold", "booking", "open", "--for", "1h", "--reason", "maintenance")[0] == 0
    set_setting(tmp_path / "rc.db", "circuit-breaker-enabled", "0")
    setting_in_effect(daemon, "circuit-breaker-enabled", False)
    assert acquire_json(daemon)["allowed"] is True


def test_events_a_stop_cannot_write_are_named_in_the_log(daemon: DaemonProcess, tmp_path: Path) -> None:
    from conftest import sqlite_locked

    with sqlite_locked(tmp_path / "rc.db"):
        assert ctl(daemon.socket, "hold", "booking", "open", "--for", "1h", "--reason", "maintenance")[0] == 0
        assert daemon.stop(signal.SIGTERM, timeout=30) == 0
    assert "<4>breaker events not written: the database did not take them in time lost=1" in daemon.output
