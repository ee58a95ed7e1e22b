"""`ratecarectl cancel` and `run --follow` against a running daemon, with runs the tests hold and let go."""

from __future__ import annotations

import json
import os
import pwd
import re
import select
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from conftest import DaemonProcess, ctl, rewrite, sqlite_locked, wait_for
from jobhelpers import HangingWidgets, enable_warming
from test_jobs_daemon import seeded, slow_purge_config
from test_ratecarectl import ctl_as_nobody, ctl_interruptible, database_of, needs_root, open_socket_dir

ME = f"{pwd.getpwuid(os.getuid()).pw_name} (uid {os.getuid()})"


def ratecarectl(daemon: DaemonProcess, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ratecarectl", "--socket", daemon.socket, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def latest_run(daemon: DaemonProcess, job: str) -> dict:
    return json.loads(ctl(daemon.socket, "history", job, "--json")[1])[0]


def held_warming(config_factory, daemon_factory) -> tuple[HangingWidgets, DaemonProcess]:
    """A daemon whose warm_cache runs are held in their request until the widgets are released."""
    widgets = HangingWidgets()
    daemon = daemon_factory(config_factory(jobs__warm_cache={"url": widgets.url, "concurrency": 1}))
    db = database_of(daemon)
    enable_warming(db, "Europe/Istanbul")
    db.close()
    return widgets, daemon


def test_cancel_stops_the_running_run_and_the_next_run_works(config_factory, daemon_factory) -> None:
    widgets, daemon = held_warming(config_factory, daemon_factory)
    try:
        waiting = ratecarectl(daemon, "run", "warm_cache", "--wait")
        assert widgets.reached.wait(60)
        run_id = latest_run(daemon, "warm_cache")["run_id"]
        code, out, err = ctl(daemon.socket, "cancel", "warm_cache")
        assert (code, out, err) == (0, f"warm_cache: run {run_id} stops at its next chunk; see "
                                       "`ratecarectl history warm_cache`\n", "")
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 1 and out.startswith(f"warm_cache: interrupted (run {run_id}"), (out, err)
        assert f"cancelled by {ME}" in err
        run = latest_run(daemon, "warm_cache")
        assert (run["run_id"], run["status"]) == (run_id, "interrupted")
        assert run["error"] == f"cancelled by {ME}; the run ended early, keeping what it had done"
        # Only the run stopped: the daemon answers, and the job's next run goes through.
        assert ctl(daemon.socket, "health")[0] == 0
        widgets.release.set()
        code, out, _ = ctl(daemon.socket, "run", "warm_cache", "--wait")
        assert code == 0 and out.startswith("warm_cache: success"), out
    finally:
        widgets.close()
    daemon.stop()
    assert re.search(rf"run cancelled; it stops at its next chunk job=warm_cache run_id={run_id} by=", daemon.output)


def test_cancel_drops_the_queued_run_and_its_waiter_is_told(config_factory, daemon_factory) -> None:
    widgets, daemon = held_warming(config_factory, daemon_factory)
    try:
        assert ctl(daemon.socket, "run", "warm_cache")[0] == 0
        assert widgets.reached.wait(60)
        waiting = ratecarectl(daemon, "run", "aggregate_statistics", "--wait")
        queued = wait_for(lambda: {job["name"]: job for job in json.loads(ctl(daemon.socket, "jobs", "--json")[1])}[
            "aggregate_statistics"]["queued_run_id"], what="the queued run")
        code, out, _ = ctl(daemon.socket, "cancel", "aggregate_statistics")
        assert (code, out) == (0, f"aggregate_statistics: queued run {queued} dropped\n")
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 1 and out.startswith(f"aggregate_statistics: skipped (run {queued}"), out
        assert err == f"  error: cancelled by {ME} before it started\n"
        run = latest_run(daemon, "aggregate_statistics")
        assert (run["run_id"], run["trigger"], run["status"], run["error"]) == (
            queued, "manual", "skipped", f"cancelled by {ME} before it started")
        # The running run of the other job goes on.
        assert latest_run(daemon, "warm_cache")["status"] == "running"
    finally:
        widgets.close()


def test_cancel_with_nothing_to_cancel_exits_1(daemon: DaemonProcess) -> None:
    code, out, err = ctl(daemon.socket, "cancel", "warm_cache")
    assert (code, out, err) == (1, "", "ratecarectl: warm_cache has no run running or queued\n")
    code, out, err = ctl(daemon.socket, "cancel", "warm_cache", "--json")
    assert (code, json.loads(out)["error"]["code"], err) == (1, "nothing_to_cancel", "")
    code, _, err = ctl(daemon.socket, "cancel", "nosuch")
    assert code == 1 and "unknown job 'nosuch'" in err


@needs_root
def test_only_root_and_the_admin_group_cancel(daemon: DaemonProcess) -> None:
    open_socket_dir(daemon)
    os.chmod(daemon.socket, 0o666)
    assert ctl_as_nobody(daemon.socket, "cancel", "warm_cache") == 4


def read_line(stream, timeout: float = 60) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no line from ratecarectl in time"
    return stream.readline()


def test_follow_shows_the_purges_progress_then_its_result(config_factory, daemon_factory, tmp_path) -> None:
    # Each chunk pauses ten times its own length. Once its first chunk is on record, the test holds the
    # database locked, so the purge's next write waits (for up to the connect_timeout) and the run is
    # still under way when it is cancelled.
    config = slow_purge_config(config_factory)
    rewrite(config, "database", connect_timeout=120)
    seeded(config).close()
    daemon = daemon_factory(config)
    following = ratecarectl(daemon, "run", "aggregate_statistics", "--follow")
    assert following.stdout is not None
    # Before the run is in the jobs' view the line has no run id yet: "aggregate_statistics: queued".
    lines = [read_line(following.stdout)]
    while lines[-1] == "aggregate_statistics: queued\n":
        lines.append(read_line(following.stdout))
    run_id = re.match(r"aggregate_statistics: run ([0-9a-f]{12}) (running|queued)", lines[-1]).group(1)
    # The lock is taken as soon as the first chunk is on record, read from the database itself, so the run
    # cannot end before ratecarectl shows its progress, however fast it goes.
    watch = sqlite3.connect(tmp_path / "rc.db")
    try:
        wait_for(lambda: (lambda row: row is not None and json.loads(row[0] or "{}").get("chunks", 0) > 0)(
            watch.execute("SELECT details FROM job_runs WHERE run_id = ? AND status = 'running'",
                          (run_id,)).fetchone()), every=0.002, what="the purge's first chunk on record")
    finally:
        watch.close()
    with sqlite_locked(tmp_path / "rc.db"):
        while "chunks" not in lines[-1]:
            lines.append(read_line(following.stdout))
        progress = re.fullmatch(rf"aggregate_statistics: run {run_id} running: (\d+) rows, (\d+) chunks, "
                                r"([\d.]+) rows/s, [\dm.s]+ elapsed\n", lines[-1])
        assert progress and int(progress.group(2)) > 0 and float(progress.group(3)) > 0, lines
        # The same figures in the runs API, for any client.
        # While the lock holds, the record cannot move: the API's figures are the record's, exactly.
        shown = latest_run(daemon, "aggregate_statistics")["progress"]
        recorded = sqlite3.connect(tmp_path / "rc.db")
        rows, details, started, progressed = recorded.execute(
            "SELECT rows_affected, details, started_at, progress_at FROM job_runs WHERE run_id = ?",
            (run_id,)).fetchone()
        recorded.close()
        counted = (datetime.fromisoformat(progressed) - datetime.fromisoformat(started)).total_seconds()
        assert rows > 0 and (shown["rows"], shown["chunks"]) == (rows, json.loads(details)["chunks"])
        assert shown["rows_per_second"] == round(rows / counted, 1) and "elapsed_seconds" in shown
        assert ctl(daemon.socket, "cancel", "aggregate_statistics")[0] == 0
    out, err = following.communicate(timeout=60)
    assert following.returncode == 1 and f"aggregate_statistics: interrupted (run {run_id}" in out
    assert f"cancelled by {ME}" in err
    details = latest_run(daemon, "aggregate_statistics")["details"]
    assert details["rows_deleted"] > 0 and details["chunks"] > 0


def test_follow_ends_with_the_result_and_the_exit_code_of_wait(config_factory, daemon_factory) -> None:
    widgets, daemon = held_warming(config_factory, daemon_factory)
    try:
        following = ratecarectl(daemon, "run", "warm_cache", "--follow")
        assert following.stdout is not None
        assert widgets.reached.wait(60)
        line = read_line(following.stdout)
        # Printed before or after the run left the queue, or before it was in the jobs' view at all.
        assert re.fullmatch(r"warm_cache: (queued|run [0-9a-f]{12} (queued|running: 0 rows, [\dm.s]+ elapsed))\n",
                            line), line
        widgets.release.set()
        out, _ = following.communicate(timeout=60)
    finally:
        widgets.close()
    assert following.returncode == 0 and re.search(r"^warm_cache: success \(run [0-9a-f]{12}, 1 rows", out, re.M), out


def test_follow_under_json_prints_only_the_result(daemon: DaemonProcess) -> None:
    code, out, _ = ctl(daemon.socket, "run", "cleanup_expired_cache", "--follow", "--json")
    run = json.loads(out)
    assert code == 0 and (run["job"], run["status"]) == ("cleanup_expired_cache", "success")


def test_ctrl_c_while_following_exits_130_and_names_the_run(config_factory, daemon_factory) -> None:
    import signal

    widgets, daemon = held_warming(config_factory, daemon_factory)
    try:
        following = ctl_interruptible(daemon.socket, "run", "warm_cache", "--follow")
        assert widgets.reached.wait(60)
        assert following.stdout is not None
        read_line(following.stdout)
        following.send_signal(signal.SIGINT)
        _, err = following.communicate(timeout=30)
        running = latest_run(daemon, "warm_cache")
    finally:
        widgets.close()
    assert following.returncode == 130
    assert err == (f"ratecarectl: interrupted: run {running['run_id']} of warm_cache goes on in ratecared; "
                   "see `ratecarectl history warm_cache`\n")


def test_follow_ends_when_the_database_refuses_to_record_the_run(daemon: DaemonProcess, tmp_path: Path) -> None:
    from conftest import sqlite_locked

    # A run first: the scheduler has then started up (it writes at start, and would wait for the lock too).
    assert ctl(daemon.socket, "run", "cleanup_expired_cache", "--wait")[0] == 0
    with sqlite_locked(tmp_path / "rc.db"):
        code, out, err = ctl(daemon.socket, "run", "cleanup_expired_cache", "--follow")
    assert code == 1 and "the database refused to record the run" in err, (out, err)


def test_follow_on_a_terminal_updates_one_line_then_ends_it(config_factory, daemon_factory) -> None:
    import pty

    widgets, daemon = held_warming(config_factory, daemon_factory)
    master, slave = pty.openpty()
    try:
        following = subprocess.Popen([sys.executable, "-m", "ratecarectl", "--socket", daemon.socket, "run",
                                      "warm_cache", "--follow"], stdout=slave, stderr=subprocess.PIPE, text=True)
        os.close(slave)
        assert widgets.reached.wait(60)
        seen = b""

        def updated_twice() -> bool:
            nonlocal seen
            if select.select([master], [], [], 0.1)[0]:
                seen += os.read(master, 65536)
            return seen.count(b"\r") >= 2

        wait_for(updated_twice, what="the progress line to be drawn twice")
        widgets.release.set()
        assert following.wait(60) == 0
        while select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal's other side closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        widgets.close()
        os.close(master)
    text = seen.decode()
    # Each update redraws the same line in place ("\r", the line, erase to its end); no line is printed per update.
    # The first may come before the run has left the queue ("warm_cache: queued").
    updates = re.findall(r"\r(warm_cache: [^\r\n\x1b]*)\x1b\[K", text)
    assert len(updates) >= 2 and all(len(line) < 80 for line in updates), text
    run_id = re.search(r"warm_cache: run ([0-9a-f]{12}) running", text).group(1)
    drawn, result = text.split("warm_cache: success (run ", 1)
    # One line break ends the redrawn line, and the result follows on a line of its own.
    assert drawn.count("\n") == 1 and drawn.endswith("\n") and result.startswith(run_id), text
