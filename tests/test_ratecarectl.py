"""ratecarectl against a running daemon: output, --json and the exit codes of DESIGN §9."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import DaemonProcess
from ratecarectl.cli import main

NOBODY = pwd.getpwnam("nobody")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to nobody needs root")


def ctl(sock: str, *args: str) -> tuple[int, str, str]:
    result = subprocess.run([sys.executable, "-m", "ratecarectl", "--socket", sock, *args], capture_output=True,
                            text=True, timeout=60)
    return result.returncode, result.stdout, result.stderr


def ctl_as_nobody(sock: str, *args: str, groups: tuple[int, ...] = ()) -> int:
    """Run ratecarectl's click entry point in a child that became `nobody`; return its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups(list(groups))
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
            main(["--socket", sock, *args], standalone_mode=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def fail(daemon: DaemonProcess) -> None:
    client = daemon.client()
    for _ in range(5):
        client.report(client.acquire("booking"), False, 10)


def test_status_table_and_json(daemon: DaemonProcess) -> None:
    fail(daemon)
    code, out, _ = ctl(daemon.socket, "status")
    assert code == 0
    header, booking, *_ = out.splitlines()
    assert header.split()[:3] == ["PLATFORM", "STATE", "FAILURES"]
    assert booking.split()[:3] == ["booking", "open", "5"]
    assert "7 platforms: 6 closed, 1 open, 0 half-open" in out
    assert "\x1b[" not in out
    code, out, _ = ctl(daemon.socket, "status", "booking", "--json")
    data = json.loads(out)
    assert code == 0 and (data["platform"], data["state"], data["failure_count"]) == ("booking", "open", 5)
    code, out, _ = ctl(daemon.socket, "status", "--json")
    assert json.loads(out)["open"] == 1


def test_state_colours_on_a_terminal(daemon: DaemonProcess) -> None:
    fail(daemon)
    result = CliRunner().invoke(main, ["--socket", daemon.socket, "status"], color=True)
    assert result.exit_code == 0
    assert "\x1b[31m\x1b[1mopen" in result.output and "\x1b[32mclosed" in result.output


def test_reset_health_reload(daemon: DaemonProcess) -> None:
    fail(daemon)
    assert ctl(daemon.socket, "reset", "booking")[:2] == (0, "reset: booking\n")
    assert daemon.client().acquire("booking").allowed
    code, out, _ = ctl(daemon.socket, "reset")
    assert code == 0 and out.startswith("reset: booking, expedia")
    code, out, _ = ctl(daemon.socket, "health")
    assert code == 0 and "reachable" in out
    code, out, _ = ctl(daemon.socket, "health", "--json")
    assert json.loads(out)["database"]["reachable"] is True
    assert ctl(daemon.socket, "reload")[:2] == (0, "reloaded\n")


def test_daemon_failures_exit_1(daemon: DaemonProcess) -> None:
    code, _, err = ctl(daemon.socket, "status", "nosuch")
    assert code == 1 and "unknown platform 'nosuch'" in err
    code, _, err = ctl(daemon.socket, "reset", "nosuch")
    assert code == 1 and "unknown platform" in err


def test_usage_errors_exit_2(daemon: DaemonProcess) -> None:
    assert ctl(daemon.socket, "frobnicate")[0] == 2
    assert ctl(daemon.socket, "status", "--bogus")[0] == 2


def test_unreachable_daemon_exits_3(tmp_path: Path) -> None:
    code, _, err = ctl(str(tmp_path / "none.sock"), "status")
    assert code == 3 and "cannot reach ratecared" in err
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    assert ctl(str(tmp_path / "stale.sock"), "status")[0] == 3


def test_socket_from_the_environment(daemon: DaemonProcess) -> None:
    result = subprocess.run([sys.executable, "-m", "ratecarectl", "status"], capture_output=True, text=True,
                            env={**os.environ, "RATECARE_SOCKET": daemon.socket}, timeout=60)
    assert result.returncode == 0 and "booking" in result.stdout


def open_socket_dir(daemon: DaemonProcess) -> None:
    os.chmod(Path(daemon.socket).parent, 0o755)


@needs_root
def test_a_user_outside_the_socket_group_is_denied_with_4(daemon: DaemonProcess) -> None:
    open_socket_dir(daemon)
    for command in (["status"], ["health"], ["reset", "booking"], ["reload"]):
        assert ctl_as_nobody(daemon.socket, *command) == 4, command


@needs_root
def test_socket_group_members_read_but_admin_commands_exit_4(config_factory, daemon_factory) -> None:
    group = NOBODY.pw_gid
    import grp

    daemon = daemon_factory(config_factory(daemon={"socket_group": grp.getgrgid(group).gr_name}))
    open_socket_dir(daemon)
    assert ctl_as_nobody(daemon.socket, "status") == 0
    assert ctl_as_nobody(daemon.socket, "health") == 0
    assert ctl_as_nobody(daemon.socket, "reset", "booking") == 4
    assert ctl_as_nobody(daemon.socket, "reload") == 4
    assert ctl(daemon.socket, "reset", "booking")[0] == 0


@needs_root
def test_admin_group_members_may_reset_and_reload(config_factory, daemon_factory) -> None:
    import grp

    name = grp.getgrgid(NOBODY.pw_gid).gr_name
    daemon = daemon_factory(config_factory(daemon={"socket_group": name, "admin_group": name}))
    open_socket_dir(daemon)
    fail(daemon)
    assert ctl_as_nobody(daemon.socket, "reset", "booking") == 0
    assert ctl_as_nobody(daemon.socket, "reload") == 0
    assert daemon.client().acquire("booking").allowed


@pytest.mark.mariadb
def test_health_exits_1_when_the_database_is_down(mariadb, mysql_url: str, config_factory, daemon_factory) -> None:
    daemon = daemon_factory(config_factory(url=mysql_url))
    mariadb.kill()
    try:
        code, out, _ = ctl(daemon.socket, "health")
        assert code == 1 and "UNREACHABLE" in out
    finally:
        mariadb.start()
    deadline = time.monotonic() + 10
    while ctl(daemon.socket, "health")[0] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)


@needs_root
def test_admin_rights_through_a_supplementary_group(config_factory, daemon_factory) -> None:
    import grp

    # nobody's primary group is nogroup; the admin group reaches it only as a supplementary group.
    admin = grp.getgrnam("staff")
    daemon = daemon_factory(config_factory(daemon={"socket_group": "", "admin_group": admin.gr_name}))
    open_socket_dir(daemon)
    os.chmod(daemon.socket, 0o666)
    fail(daemon)

    assert ctl_as_nobody(daemon.socket, "reset", "booking") == 4
    assert ctl_as_nobody(daemon.socket, "reset", "booking", groups=(admin.gr_gid,)) == 0
    assert daemon.client().acquire("booking").allowed
