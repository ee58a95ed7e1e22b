"""ratecarectl against a running daemon: output, --json and the exit codes of DESIGN §9."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from conftest import DaemonProcess, ctl, fail, wait_for
from ratecared import __version__
from jobhelpers import HangingWidgets, days_of_requests, enable_warming
from ratecared.client import DEFAULT_SOCKET
from ratecared.config import DatabaseConfig
from ratecared.db import Database
from ratecared.jobs import JOBS
from ratecarectl.cli import _seconds, main
from test_client import ScriptedDaemon

NOBODY = pwd.getpwnam("nobody")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to nobody needs root")
REPO = Path(__file__).resolve().parents[1]


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


def test_the_status_table_fits_80_columns_and_wide_shows_everything(daemon: DaemonProcess) -> None:
    fail(daemon, "trivago")
    fail(daemon, "tripadvisor")
    why = "the platform's maintenance window, announced by its account manager"
    daemon.client().hold("tripadvisor", "closed", 3600, why)   # reason: "held closed by … (uid …): …"
    code, out, _ = ctl(daemon.socket, "status")
    assert code == 0 and max(len(line) for line in out.splitlines()) <= 80, out
    lines = {line.split()[0]: line for line in out.splitlines()[1:8]}
    assert lines["trivago"].endswith("5 consecutive failures")
    assert lines["tripadvisor"].endswith("…") and "held closed by" in lines["tripadvisor"]
    code, out, _ = ctl(daemon.socket, "status", "--wide")
    header, *rows = out.splitlines()
    assert header.split() == ["PLATFORM", "STATE", "FAILURES", "SUCCESS", "REQUESTS", "REJECTED", "TIMEOUTS",
                              "LIMITED", "SLOW", "IGNORED", "BACKOFF", "RETRY", "IN", "SINCE", "REASON"]
    tripadvisor = next(row for row in rows if row.startswith("tripadvisor"))
    assert tripadvisor.endswith(f"held closed by {pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()}): {why}")


def test_state_colours_on_a_terminal(daemon: DaemonProcess) -> None:
    fail(daemon)
    result = CliRunner().invoke(main, ["--socket", daemon.socket, "status"], color=True)
    assert result.exit_code == 0
    assert "\x1b[31m\x1b[1mopen" in result.output and "\x1b[32mclosed" in result.output


def test_no_color_turns_the_colours_off_on_a_terminal(daemon: DaemonProcess) -> None:
    fail(daemon)
    result = CliRunner().invoke(main, ["--socket", daemon.socket, "status"], color=True, env={"NO_COLOR": "1"})
    assert result.exit_code == 0 and "open" in result.output
    assert "\x1b[" not in result.output


def test_status_check_exits_1_while_a_breaker_is_not_closed(daemon: DaemonProcess) -> None:
    assert ctl(daemon.socket, "status", "--check")[0] == 0
    fail(daemon)
    code, out, _ = ctl(daemon.socket, "status", "--check")
    assert code == 1 and "1 open" in out
    assert ctl(daemon.socket, "status", "--check", "--json")[0] == 1
    assert ctl(daemon.socket, "status", "expedia", "--check")[0] == 0
    assert ctl(daemon.socket, "status", "booking", "--check")[0] == 1
    # Without --check, status reports and exits 0 whatever the states.
    assert ctl(daemon.socket, "status")[0] == 0
    ctl(daemon.socket, "reset", "booking")
    assert ctl(daemon.socket, "status", "--check")[0] == 0


def test_health_shows_the_last_snapshot_in_the_daemons_zone(config_factory, daemon_factory) -> None:
    daemon = daemon_factory(config_factory(daemon={"timezone": "Europe/Istanbul", "snapshot_interval": 1}))
    wait_for(lambda: json.loads(ctl(daemon.socket, "health", "--json")[1])["database"]["last_snapshot_at"],
             what="a snapshot written")
    data = json.loads(ctl(daemon.socket, "health", "--json")[1])
    written = datetime.fromisoformat(data["database"]["last_snapshot_at"])
    assert data["timezone"] == "Europe/Istanbul" and written.utcoffset().total_seconds() == 3 * 3600
    code, out, _ = ctl(daemon.socket, "health")
    line = next(line for line in out.splitlines() if line.startswith("snapshot"))
    # The time as the zone's clock shows it, to the second, and the zone named.
    shown = datetime.strptime(line.split("last written ")[1].split(" (")[0], "%Y-%m-%d %H:%M:%S")
    assert abs((shown.replace(tzinfo=ZoneInfo("Europe/Istanbul")) - written).total_seconds()) < 120, line
    assert line.endswith("(Europe/Istanbul)") and code == 0


def test_every_command_takes_json_and_errors_come_as_the_envelope(daemon: DaemonProcess, tmp_path: Path) -> None:
    fail(daemon)
    code, out, _ = ctl(daemon.socket, "reset", "booking", "--json")
    assert (code, json.loads(out)) == (0, {"reset": ["booking"], "changed": ["booking"], "held": []})
    code, out, _ = ctl(daemon.socket, "reload", "--json")
    assert code == 0 and json.loads(out)["applied"] == []
    code, out, _ = ctl(daemon.socket, "run", "cleanup_expired_cache", "--json")
    assert code == 0 and json.loads(out)["status"] == "queued"
    code, out, _ = ctl(daemon.socket, "run", "aggregate_statistics", "--wait", "--json")
    run = json.loads(out)
    assert code == 0 and (run["job"], run["status"]) == ("aggregate_statistics", "success")
    # Errors: the envelope on stdout, nothing for people on stderr, the same exit codes.
    code, out, err = ctl(daemon.socket, "status", "nosuch", "--json")
    assert (code, json.loads(out)["error"]["code"], err) == (1, "unknown_platform", "")
    code, out, err = ctl(daemon.socket, "run", "nosuch", "--json")
    assert (code, json.loads(out)["error"]["code"], err) == (1, "unknown_job", "")
    code, out, err = ctl(str(tmp_path / "none.sock"), "health", "--json")
    assert (code, json.loads(out)["status"], json.loads(out)["error"]["code"], err) == (3, "error", "unreachable", "")


def test_version(tmp_path: Path) -> None:
    # No daemon needed: it is ratecarectl's own version, which the package's daemon shares.
    code, out, _ = ctl(str(tmp_path / "none.sock"), "--version")
    assert (code, out) == (0, f"ratecarectl {__version__}\n")


def test_reset_health_reload(daemon: DaemonProcess) -> None:
    fail(daemon)
    assert ctl(daemon.socket, "reset", "booking")[:2] == (0, "reset: booking\n")
    assert daemon.client().acquire("booking").allowed
    # A reset that changes nothing says so, here and in the log.
    assert ctl(daemon.socket, "reset", "booking")[:2] == (0, "booking: already closed; nothing to reset\n")
    assert ctl(daemon.socket, "reset")[:2] == (0, "every breaker was already closed; nothing to reset\n")
    fail(daemon, "agoda")
    code, out, _ = ctl(daemon.socket, "reset")
    assert (code, out) == (0, "reset: agoda; already closed: booking, expedia, hotels, trivago, tripadvisor, google\n")
    log = Path(daemon.config).parent / "logs" / "circuit-breaker.log"
    resets = [line for line in map(json.loads, log.read_text().splitlines()) if line["event"] == "breakers reset"]
    assert [(r["changed"], len(r["already_closed"])) for r in resets] == [(["booking"], 0), ([], 1), ([], 7),
                                                                          (["agoda"], 6)]
    code, out, _ = ctl(daemon.socket, "health")
    assert code == 0 and "reachable" in out
    code, out, _ = ctl(daemon.socket, "health", "--json")
    assert json.loads(out)["database"]["reachable"] is True
    assert ctl(daemon.socket, "reload")[:2] == (0, "reloaded: the config file is unchanged\n")


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


def database_of(daemon: DaemonProcess) -> Database:
    return Database(DatabaseConfig(url=f"sqlite:///{Path(daemon.config).parent / 'rc.db'}"))


def source_file(relative: str) -> Path:
    """A file of the source tree; the system test runs a copy of tests/ without one."""
    path = REPO / relative
    if not path.exists():
        pytest.skip(f"{relative} is only in the source tree")
    return path


def test_run_and_reset_are_sent_once_to_a_daemon_that_hangs_up() -> None:
    with ScriptedDaemon(default="hang_up") as daemon:
        code, _, err = ctl(daemon.socket, "run", "warm_cache")
        assert code == 1 and "warm_cache may or may not have been queued" in err
        code, _, err = ctl(daemon.socket, "reset")
        assert code == 1 and "the reset may or may not have been done" in err
        assert daemon.requests == ["POST /api/v1/jobs/warm_cache/run HTTP/1.1",
                                   "POST /api/v1/circuit-breaker/reset HTTP/1.1"]


def test_run_wait_exits_1_when_the_daemon_closes_the_connection() -> None:
    with ScriptedDaemon(default="hang_up") as daemon:
        code, out, err = ctl(daemon.socket, "run", "warm_cache", "--wait")
        assert (code, out) == (1, "")
        assert err == ("ratecarectl: ratecared closed the connection while waiting for warm_cache to finish: "
                       "see `ratecarectl history warm_cache`\n")
        assert daemon.requests == ["POST /api/v1/jobs/warm_cache/run HTTP/1.1"]


def test_run_wait_exits_1_when_the_daemon_stops_before_the_run_ends(config_factory, daemon_factory) -> None:
    widgets = HangingWidgets()
    daemon = daemon_factory(config_factory(jobs__warm_cache={"url": widgets.url, "concurrency": 1}))
    db = database_of(daemon)
    enable_warming(db, "Europe/Istanbul")
    log = Path(daemon.config).parent / "logs" / "ratecared.log"
    waiting: list[subprocess.Popen[str]] = []
    try:
        for job in ("warm_cache", "aggregate_statistics"):
            waiting.append(subprocess.Popen([sys.executable, "-m", "ratecarectl", "--socket", daemon.socket, "run",
                                             job, "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            assert widgets.reached.wait(60)
        wait_for(lambda: log.read_text().count('"job run requested"') >= 2, what="both runs requested")
        daemon.send(signal.SIGTERM)
        (running, running_err), (queued, queued_err) = (w.communicate(timeout=30) for w in waiting)
    finally:
        widgets.close()
        db.close()
    assert waiting[0].returncode == 1 and running.startswith("warm_cache: interrupted (run "), running_err
    assert waiting[1].returncode == 1 and queued.startswith("aggregate_statistics: skipped (run ")
    assert "the daemon stopped before the run started" in queued_err


def test_jobs_shows_a_queued_run_as_the_next_and_a_running_one_with_its_own_figures(config_factory,
                                                                                    daemon_factory) -> None:
    widgets = HangingWidgets()
    daemon = daemon_factory(config_factory(jobs__warm_cache={"url": widgets.url, "concurrency": 1}))
    db = database_of(daemon)
    enable_warming(db, "Europe/Istanbul")
    try:
        assert ctl(daemon.socket, "run", "aggregate_statistics", "--wait")[0] == 0
        assert ctl(daemon.socket, "run", "warm_cache")[0] == 0
        assert widgets.reached.wait(60)
        assert ctl(daemon.socket, "run", "aggregate_statistics")[0] == 0
        code, out, _ = ctl(daemon.socket, "jobs")
        rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.split()}
        finished = json.loads(ctl(daemon.socket, "history", "aggregate_statistics", "--json")[1])
    finally:
        widgets.close()
        db.close()
    assert code == 0
    # Queued: NEXT RUN says so; LAST RUN, RESULT, DURATION and ROWS stay the finished run's.
    aggregate = rows["aggregate_statistics"]
    done = finished[0]
    assert aggregate[-6] == "queued" and aggregate[-3:] == [
        "success", _seconds(done["duration_seconds"]), str(done["rows"])], aggregate
    assert " ".join(aggregate[-5:-3]) == done["started_at"][:16].replace("T", " ")
    # Running: the run under way, with its own figures so far.
    assert rows["warm_cache"][-3] == "running", rows["warm_cache"]


def ctl_interruptible(sock: str, *args: str) -> subprocess.Popen[str]:
    """ratecarectl started as at a terminal, where Ctrl-C (SIGINT) interrupts it.

    Also when the tests run where SIGINT is ignored (a background job): a
    Python started with SIGINT ignored never raises KeyboardInterrupt.
    """
    argv = ["ratecarectl", "--socket", sock, *args]
    return subprocess.Popen(
        [sys.executable, "-c", "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
         f" sys.argv = {argv!r}; runpy.run_module('ratecarectl', run_name='__main__')"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_while_waiting_for_a_run_exits_130_and_the_run_goes_on(config_factory, daemon_factory) -> None:
    widgets = HangingWidgets()
    daemon = daemon_factory(config_factory(jobs__warm_cache={"url": widgets.url, "concurrency": 1}))
    db = database_of(daemon)
    enable_warming(db, "Europe/Istanbul")
    try:
        waiting = ctl_interruptible(daemon.socket, "run", "warm_cache", "--wait")
        assert widgets.reached.wait(60)
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=30)
        running = json.loads(ctl(daemon.socket, "history", "warm_cache", "--json")[1])[0]
    finally:
        widgets.close()
        db.close()
    assert (waiting.returncode, out) == (130, "")
    assert err == (f"ratecarectl: interrupted: run {running['run_id']} of warm_cache goes on in ratecared; "
                   "see `ratecarectl history warm_cache`\n")
    assert running["status"] == "running"


@pytest.mark.parametrize("name", ["warm cache", "warm_cache?wait=1", "warm_cache/../x", "warm\ncache", ""])
def test_any_job_name_gets_the_daemons_answer(daemon: DaemonProcess, name: str) -> None:
    for command in ("run", "history"):
        code, out, err = ctl(daemon.socket, command, name)
        assert (code, out, err) == (1, "", f"ratecarectl: unknown job {name!r}; jobs: {', '.join(JOBS)}\n")


def test_timeout_must_be_positive(tmp_path: Path) -> None:
    for value in ("0", "-1"):
        code, _, err = ctl(str(tmp_path / "none.sock"), "--timeout", value, "status")
        assert code == 2 and "--timeout" in err


def test_a_timeout_names_the_seconds_waited() -> None:
    with ScriptedDaemon(default="silent") as daemon:
        code, _, err = ctl(daemon.socket, "--timeout", "0.3", "status")
        assert code == 3 and "did not answer in 0.3 s" in err


def test_health_waits_longer_than_the_timeout_for_its_answer() -> None:
    with ScriptedDaemon(script=["held"], default="silent") as daemon:
        health = subprocess.Popen([sys.executable, "-m", "ratecarectl", "--socket", daemon.socket, "--timeout", "0.3",
                                   "health", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: daemon.requests, what="the health request")
        # Held until a status with the same --timeout has given up: health has waited longer than that.
        code, _, err = ctl(daemon.socket, "--timeout", "0.3", "status")
        assert code == 3 and "did not answer in 0.3 s" in err
        daemon.release.set()
        out, err = health.communicate(timeout=60)
        assert health.returncode in (0, 1) and "did not answer" not in err, err


def test_history_limit_must_be_from_1_to_1000(tmp_path: Path) -> None:
    for value in ("0", "-1", "1001"):
        code, _, err = ctl(str(tmp_path / "none.sock"), "history", "warm_cache", "--limit", value)
        assert code == 2 and "--limit" in err


def test_run_wait_prints_lists_for_people(daemon: DaemonProcess) -> None:
    db = database_of(daemon)
    today = datetime.now(ZoneInfo("Europe/Istanbul"))
    days_of_requests(db, "Europe/Istanbul", today, days=2, per_day=10)
    db.close()
    code, out, _ = ctl(daemon.socket, "run", "aggregate_statistics", "--wait")
    days = sorted(line.split(": ", 1)[1] for line in out.splitlines() if "days_summarised" in line)
    assert code == 0 and len(days) == 1
    first, second = days[0].split(", ")
    assert first < second and len(first) == len("2026-11-26")
    assert "[" not in out


def test_socket_option_mistakes(tmp_path: Path) -> None:
    code, _, err = ctl("", "status")
    assert code == 2 and "--socket" in err
    code, _, err = ctl(str(tmp_path), "status")
    assert code == 3 and f"{tmp_path} is not a socket" in err


def test_the_systemctl_hint_is_only_for_the_system_socket(tmp_path: Path) -> None:
    code, _, err = ctl(str(tmp_path / "none.sock"), "status")
    assert code == 3 and err.endswith("(is ratecared running?)\n")
    if os.path.exists(DEFAULT_SOCKET):
        pytest.skip(f"{DEFAULT_SOCKET} exists here")
    env = {k: v for k, v in os.environ.items() if k != "RATECARE_SOCKET"}
    result = subprocess.run([sys.executable, "-m", "ratecarectl", "status"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 3 and result.stderr.endswith("(is ratecared running?; systemctl status ratecared)\n")


def test_help_names_the_jobs_and_what_rows_count() -> None:
    runner = CliRunner()
    commands = runner.invoke(main, ["--help"]).output.split("Commands:")[1]
    assert "..." not in commands
    for command in ("run", "history", "jobs"):
        text = " ".join(runner.invoke(main, [command, "--help"]).output.split())
        assert all(name in text for name in JOBS), command
        if command != "run":
            assert "ROWS is what a run changed" in text and "widgets warmed" in text
    run_help = " ".join(runner.invoke(main, ["run", "--help"]).output.split())
    assert "exit 0 when the run succeeded or was skipped" in run_help
    assert "1 when it failed, was interrupted or never started" in run_help


def test_the_man_page_covers_every_option_and_job() -> None:
    page = source_file("packaging/man/ratecarectl.1").read_text()
    options = page.split(".SH OPTIONS", 1)[1].split(".SH ", 1)[0]
    assert "\\-\\-socket" in options and "\\-\\-timeout" in options
    text = " ".join(page.replace("\\-", "-").split())
    assert all(name in text for name in JOBS)
    assert "exit 0 when the run succeeded or was skipped" in text
    assert "1 when it failed, was interrupted or never started" in text
    assert "ROWS" in text and "widgets warmed" in text


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_job_names() -> None:
    script = source_file("packaging/bash-completion/ratecarectl")
    program = Path(sys.executable).parent / "ratecarectl"
    if not program.exists():
        pytest.skip("ratecarectl is not installed beside this Python")
    completions = {}
    for words in ("run ''", "history wa"):
        result = subprocess.run(
            ["bash", "-c", f'source {script}; COMP_WORDS=(ratecarectl {words}); COMP_CWORD=2; '
                           f'_ratecarectl_completion {program}; printf "%s\\n" "${{COMPREPLY[@]}}"'],
            capture_output=True, text=True, timeout=60)
        completions[words] = result.stdout.split()
    assert completions == {"run ''": list(JOBS), "history wa": ["warm_cache"]}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_platform_names_from_the_daemon(daemon: DaemonProcess, tmp_path: Path) -> None:
    script = source_file("packaging/bash-completion/ratecarectl")
    program = Path(sys.executable).parent / "ratecarectl"
    if not program.exists():
        pytest.skip("ratecarectl is not installed beside this Python")

    def complete(words: str, cword: int, socket_path: str) -> list[str]:
        result = subprocess.run(
            ["bash", "-c", f'source {script}; COMP_WORDS=(ratecarectl {words}); COMP_CWORD={cword}; '
                           f'_ratecarectl_completion {program}; printf "%s\\n" "${{COMPREPLY[@]}}"'],
            capture_output=True, text=True, timeout=60, env={**os.environ, "RATECARE_SOCKET": socket_path})
        return result.stdout.split()

    assert complete("status b", 2, daemon.socket) == ["booking"]
    assert complete("reset t", 2, daemon.socket) == ["trivago", "tripadvisor"]
    assert complete(f"--socket {daemon.socket} status ''", 4, "/nonexistent.sock") == [
        "booking", "expedia", "agoda", "hotels", "trivago", "tripadvisor", "google"]
    # No daemon: nothing to offer, and no error on the terminal.
    assert complete("status b", 2, str(tmp_path / "none.sock")) == []


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
    assert ctl_as_nobody(daemon.socket, "hold", "booking", "closed", "--for", "1h", "--reason", "mine") == 4
    assert ctl_as_nobody(daemon.socket, "release", "booking") == 4
    assert ctl_as_nobody(daemon.socket, "events") == 0
    assert daemon.client().status()["platforms"][0]["hold"] is None
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
    assert ctl_as_nobody(daemon.socket, "hold", "agoda", "open", "--for", "1h", "--reason", "agoda maintenance") == 0
    hold = next(p for p in daemon.client().status()["platforms"] if p["platform"] == "agoda")["hold"]
    assert (hold["state"], hold["by"], hold["reason"]) == ("open", "nobody (uid 65534)", "agoda maintenance")
    assert ctl_as_nobody(daemon.socket, "release", "agoda") == 0
    events = daemon.client().events("agoda")
    assert [(e["action"], e["who"]) for e in events][:2] == [("release", "nobody (uid 65534)"),
                                                             ("hold", "nobody (uid 65534)")]


@pytest.mark.mariadb
def test_health_exits_1_when_the_database_is_down(mariadb, mysql_url: str, config_factory, daemon_factory) -> None:
    daemon = daemon_factory(config_factory(url=mysql_url))
    mariadb.kill()
    try:
        code, out, _ = ctl(daemon.socket, "health")
        assert code == 1 and "UNREACHABLE" in out
    finally:
        mariadb.start()
    wait_for(lambda: ctl(daemon.socket, "health")[0] == 0, every=0.2, what="health exit 0 again")


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
