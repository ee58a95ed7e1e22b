"""`ratecarectl settings` against a running daemon: the listing, a value set live, a bad one refused, who may."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import DaemonProcess, ctl, fail, setting_in_effect, wait_for
from ratecared.jobs import JOBS
from ratecarectl.cli import main
from test_ratecarectl import NOBODY, ctl_as_nobody, database_of, needs_root, open_socket_dir, source_file

THRESHOLD = "circuit-breaker-failure-threshold"
# The periodic re-read never comes within a test: what is in effect after a set, the set applied.
NO_REFRESH = {"settings_refresh": 3600}


def table_value(daemon: DaemonProcess, key: str) -> str | None:
    db = database_of(daemon)
    try:
        rows = db.query("SELECT `value` FROM settings WHERE `key` = ?", (key,))
    finally:
        db.close()
    return rows[0][0] if rows else None


def listed(daemon: DaemonProcess) -> dict[str, dict]:
    code, out, _ = ctl(daemon.socket, "settings", "--json")
    assert code == 0
    return {entry["key"]: entry for entry in json.loads(out)}


def test_settings_lists_the_table_the_defaults_what_is_in_effect_and_warnings(daemon: DaemonProcess) -> None:
    db = database_of(daemon)
    db.execute("UPDATE settings SET `value` = 'five' WHERE `key` = ?", (THRESHOLD,))
    db.execute("DELETE FROM settings WHERE `key` = 'cache-warming-widget-count'")
    db.close()
    wait_for(lambda: listed(daemon)[THRESHOLD]["warning"], what="the bad value's warning")
    code, out, _ = ctl(daemon.socket, "settings")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["KEY", "VALUE", "DEFAULT", "IN", "EFFECT"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if not line.startswith("warning")}
    assert rows[THRESHOLD] == [THRESHOLD, "five", "5", "5"]
    assert rows["cache-warming-widget-count"] == ["cache-warming-widget-count", "-", "10", "10"]
    assert rows["circuit-breaker-platforms"] == ["circuit-breaker-platforms", "all", "all", "all"]
    assert f"warning: setting {THRESHOLD}='five' is not a whole number; using the default" in lines
    assert max(len(line) for line in lines if not line.startswith("warning")) <= 80
    code, out, _ = ctl(daemon.socket, "settings", THRESHOLD, "--json")
    assert (code, json.loads(out)) == (0, {"key": THRESHOLD, "value": "five", "default": 5, "in_effect": 5,
                                           "warning": f"setting {THRESHOLD}='five' is not a whole number; "
                                                      "using the default"})
    code, out, _ = ctl(daemon.socket, "settings", THRESHOLD)
    assert code == 0 and out.splitlines()[1].split() == [THRESHOLD, "five", "5", "5"]


def test_a_whole_number_set_is_in_effect_at_once(config_factory, daemon_factory) -> None:
    daemon = daemon_factory(config_factory(daemon=NO_REFRESH))
    code, out, err = ctl(daemon.socket, "settings", THRESHOLD, "2")
    assert (code, out, err) == (0, f"{THRESHOLD}: 2 in effect\n", "")
    assert table_value(daemon, THRESHOLD) == "2"
    # No wait: the breakers have the new threshold when the command returns.
    fail(daemon, "booking", times=2)
    assert daemon.client().status()["platforms"][0]["state"] == "open"
    # A key whose row is missing gets one.
    db = database_of(daemon)
    db.execute("DELETE FROM settings WHERE `key` = 'cache-statistics-retention-days'")
    db.close()
    code, out, _ = ctl(daemon.socket, "settings", "cache-statistics-retention-days", "7", "--json")
    assert code == 0 and json.loads(out) == {"key": "cache-statistics-retention-days", "value": "7", "default": 30,
                                             "in_effect": 7, "warning": None}
    code, out, _ = ctl(daemon.socket, "run", "aggregate_statistics", "--wait")
    assert code == 0 and "retention_days: 7" in out
    daemon.stop()
    # The journal line names the user.
    me = f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})"
    assert f'setting set key={THRESHOLD} value=2 by="{me}"' in daemon.output


def test_a_switch_set_is_in_effect_at_once(config_factory, daemon_factory) -> None:
    daemon = daemon_factory(config_factory(daemon=NO_REFRESH))
    assert ctl(daemon.socket, "settings", "circuit-breaker-enabled", "off")[:2] == (
        0, "circuit-breaker-enabled: 0 in effect\n")
    assert table_value(daemon, "circuit-breaker-enabled") == "0"
    fail(daemon, "booking")
    assert daemon.client().acquire("booking").allowed
    assert ctl(daemon.socket, "settings", "cache-cleanup-enabled", "0")[0] == 0
    jobs = {job["name"]: job for job in json.loads(ctl(daemon.socket, "jobs", "--json")[1])}
    assert jobs["cleanup_expired_cache"]["disabled"] == "cache-cleanup-enabled is 0"


def test_a_platform_list_set_is_in_effect_at_once(config_factory, daemon_factory) -> None:
    daemon = daemon_factory(config_factory(daemon=NO_REFRESH))
    code, out, _ = ctl(daemon.socket, "settings", "circuit-breaker-platforms", "Booking, agoda")
    assert (code, out) == (0, "circuit-breaker-platforms: agoda,booking in effect\n")
    guarded = {p["platform"]: p["guarded"] for p in daemon.client().status()["platforms"]}
    assert guarded == {"booking": True, "expedia": False, "agoda": True, "hotels": False, "trivago": False,
                       "tripadvisor": False, "google": False}


def test_a_bad_value_is_refused_with_the_reason_and_the_table_is_unchanged(daemon: DaemonProcess) -> None:
    for value, reason in (("two", "is not a whole number"), ("0", "is out of range 1..1000")):
        code, out, err = ctl(daemon.socket, "settings", THRESHOLD, value)
        assert (code, out, err) == (1, "", f"ratecarectl: {THRESHOLD}={value!r} {reason}\n")
    code, out, err = ctl(daemon.socket, "settings", "circuit-breaker-platforms", "booking,nosuch", "--json")
    assert (code, err) == (1, "")
    assert json.loads(out) == {"status": "error", "error": {
        "code": "invalid_setting",
        "message": "circuit-breaker-platforms='booking,nosuch' names unknown platform nosuch"}}
    assert table_value(daemon, THRESHOLD) == "5"
    assert table_value(daemon, "circuit-breaker-platforms") == "all"
    assert listed(daemon)[THRESHOLD]["in_effect"] == 5


def test_an_unknown_key_is_refused_naming_the_known_ones(daemon: DaemonProcess) -> None:
    for args in (("nosuch", "1"), ("nosuch",)):
        code, out, err = ctl(daemon.socket, "settings", *args)
        assert code == 1 and out == "" and err.startswith("ratecarectl: unknown setting 'nosuch'; settings: ")
        assert THRESHOLD in err and "circuit-breaker-platforms" in err
    code, out, _ = ctl(daemon.socket, "settings", "nosuch", "1", "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "unknown_setting"
    assert table_value(daemon, "nosuch") is None


@needs_root
def test_only_root_and_the_admin_group_set_settings(config_factory, daemon_factory) -> None:
    daemon = daemon_factory(config_factory(daemon={"socket_group": grp.getgrgid(NOBODY.pw_gid).gr_name}))
    open_socket_dir(daemon)
    assert ctl_as_nobody(daemon.socket, "settings") == 0
    assert ctl_as_nobody(daemon.socket, "settings", THRESHOLD, "2") == 4
    assert ctl_as_nobody(daemon.socket, "settings", THRESHOLD, "2", "--json") == 4
    assert table_value(daemon, THRESHOLD) == "5"
    setting_in_effect(daemon, THRESHOLD, 5)


def test_bash_completes_the_new_commands_setting_keys_and_jobs() -> None:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    script = source_file("packaging/bash-completion/ratecarectl")
    program = Path(sys.executable).parent / "ratecarectl"
    if not program.exists():
        pytest.skip("ratecarectl is not installed beside this Python")

    def complete(words: str) -> list[str]:
        result = subprocess.run(
            ["bash", "-c", f'source {script}; COMP_WORDS=(ratecarectl {words}); COMP_CWORD=2; '
                           f'_ratecarectl_completion {program}; printf "%s\\n" "${{COMPREPLY[@]}}"'],
            capture_output=True, text=True, timeout=60)
        return result.stdout.split()

    assert complete("settings circuit-breaker-h") == ["circuit-breaker-half-open-requests"]
    assert complete("settings cache-w") == ["cache-warming-enabled", "cache-warming-widget-count"]
    assert complete("cancel ''") == list(JOBS)
    result = subprocess.run(
        ["bash", "-c", f'source {script}; COMP_WORDS=(ratecarectl c); COMP_CWORD=1; '
                       f'_ratecarectl_completion {program}; printf "%s\\n" "${{COMPREPLY[@]}}"'],
        capture_output=True, text=True, timeout=60)
    assert "cancel" in result.stdout.split()


def test_the_man_page_and_the_help_describe_the_new_commands() -> None:
    page = " ".join(source_file("packaging/man/ratecarectl.1").read_text().replace("\\-", "-").split())
    for text in (".BR settings", ".BR cancel", "--follow", "nothing running or queued", "in effect when the command"):
        assert text in page, text
    runner = CliRunner()
    for command, text in (("settings", "a bad value is refused with the reason (exit 1)"),
                          ("cancel", "Exits 1 when the job has nothing running or queued"),
                          ("run", "--follow")):
        assert text in " ".join(runner.invoke(main, [command, "--help"]).output.split()), command
