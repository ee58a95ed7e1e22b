"""A newcomer on a fresh Debian 12: `make run` and the README's "Try it" steps.

A booted Debian 12 with nothing added but `make`; the repository tree copied
in. The tests run in file order, as the newcomer's session would: `make run`
as a user (told which packages, in one line), then as root (installs them,
builds the venv, runs the daemon with demo data), the README's own "Try it"
blocks in a second shell, and Ctrl-C. The container shares the host's
network (apt and PyPI work from inside; the widget stand-in's 127.0.0.1:8089
is the host's too).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from container import RUN, Container, require_prerequisites

REPO = Path(__file__).resolve().parents[2]
NAME = "ratecared-newcomer"
USER = "newcomer"
TREE = f"/home/{USER}/ratecared"
SOCKET = f"{TREE}/storage/run/ratecared.sock"
PIDFILE = "/root/make-run.pid"
LOG = "/root/make-run.log"
PACKAGES = "python3-venv sqlite3 curl"
PLATFORMS = {"booking", "expedia", "agoda", "hotels", "trivago", "tripadvisor", "google"}
WIDGETS_PORT = 8089
# Generous: the first start installs Debian packages and pip installs from PyPI.
START_TIMEOUT = 600
STOP_TIMEOUT = 60


@pytest.fixture(scope="module")
def box() -> Iterator[Container]:
    require_prerequisites()
    container = Container(NAME, RUN.with_name(NAME))
    try:
        container.boot()
        container.sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make >/dev/null",
                     timeout=600)
        container.sh(f"useradd -m -s /bin/bash {USER} && mkdir {TREE}")
        # The working tree as a clone would have it: no virtualenvs, build output or run state.
        subprocess.run(
            ["bash", "-c", "set -o pipefail; tar -C \"$1\" --exclude=./.git --exclude='./.venv*' --exclude=./build"
            " --exclude=./storage --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache -cf - ."
            " | tar -C \"$2\" -xf -", "copy", str(REPO), f"{container.root}{TREE}"],
            check=True, timeout=120)
        container.sh(f"chown -R {USER}: {TREE}")
        yield container
    finally:
        container.remove()


def make_pid(box: Container) -> int:
    return int(box.sh(f"cat {PIDFILE}").stdout)


def make_log(box: Container) -> str:
    return box.sh(f"cat {LOG}", check=False).stdout


def require_daemon(box: Container) -> None:
    """Fail at once, not at a timeout, when `make run` is not up (the test before says why)."""
    if box.sh(f"curl -sf --unix-socket {SOCKET} http://localhost/api/v1/health", check=False).returncode != 0:
        pytest.fail(f"the daemon of make run does not answer:\n{make_log(box)[-2000:]}")


def rc(box: Container, args: str) -> str:
    return box.sh(f"cd {TREE} && RATECARE_SOCKET={SOCKET} .venv/bin/ratecarectl {args}").stdout


def test_a_user_is_told_in_one_line_what_to_install(box: Container) -> None:
    result = box.sh(f"cd {TREE} && make run 2>&1", user=USER, check=False, timeout=60)
    lines = [line for line in result.stdout.splitlines() if not line.startswith("make: ***")]
    assert lines == [f"make run needs: {PACKAGES} (run as root, or: sudo apt-get install {PACKAGES})"], \
        result.stdout
    assert result.returncode == 2
    assert box.sh(f"ls -A {TREE}/.venv {TREE}/storage 2>/dev/null; true").stdout == ""


def test_make_run_as_root_installs_and_runs_the_daemon_with_demo_data(box: Container) -> None:
    with socket.socket() as probe:  # the stand-in binds this on the shared network, as this does
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", WIDGETS_PORT))
        except OSError as exc:
            pytest.fail(f"127.0.0.1:{WIDGETS_PORT} is taken on this machine, and make run needs it: {exc}")
    # Its own session and process group, as a terminal's foreground job has; Ctrl-C goes to that group.
    box.sh(f"cd {TREE} && setsid -f sh -c 'echo $$ > {PIDFILE}; exec make run' </dev/null >{LOG} 2>&1")
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        health = box.sh(f"curl -sf --unix-socket {SOCKET} http://localhost/api/v1/health", check=False)
        if health.returncode == 0:
            break
        started = box.sh(f"test -s {PIDFILE} && echo yes", check=False).stdout.strip() == "yes"
        if started and box.sh(f"kill -0 $(cat {PIDFILE})", check=False).returncode != 0:
            pytest.fail(f"make run exited before the daemon answered:\n{make_log(box)[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the daemon did not answer within {START_TIMEOUT} s:\n{make_log(box)[-4000:]}")
        time.sleep(2)
    assert json.loads(health.stdout)["status"] == "success"
    for package in PACKAGES.split():
        assert box.sh(f"dpkg-query -W -f '${{Status}}' {package}").stdout == "install ok installed"
    assert re.search(r"^demo data: 40 widgets, \d+ requests over 35 days", make_log(box), re.M), make_log(box)

    status = json.loads(rc(box, "status --json"))
    assert {p["platform"] for p in status["platforms"]} == PLATFORMS
    assert {p["state"] for p in status["platforms"]} == {"closed"}

    rates = json.loads(box.sh(f"curl -sf http://127.0.0.1:{WIDGETS_PORT}/api/v1/widgets/1/rates").stdout)
    assert rates["status"] == "success" and rates["data"]["widget_id"] == 1 and rates["data"]["rates"]

    # The demo's weeks of requests are there to aggregate, and warming requests the stand-in.
    aggregated = rc(box, "run aggregate_statistics --wait")
    assert re.match(r"aggregate_statistics: success \(run \w+, [1-9]\d* rows", aggregated), aggregated
    warmed = rc(box, "run warm_cache --wait")
    assert re.match(r"warm_cache: success \(run \w+, 10 rows", warmed), warmed
    runs = json.loads(rc(box, "history aggregate_statistics --json"))
    assert runs[0]["trigger"] == "manual" and runs[0]["status"] == "success" and runs[0]["rows"] > 0
    count = box.sh(f"sqlite3 {TREE}/storage/ratecare.db \"SELECT count(*) FROM job_runs WHERE status = 'success'\"")
    assert int(count.stdout) >= 2


def try_it_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```sh\n(.*?)^```$", section, re.S | re.M)


def test_the_readme_try_it_steps_work_as_written(box: Container) -> None:
    blocks = try_it_blocks()
    assert len(blocks) == 2
    require_daemon(box)
    marker = "=== the second block"
    # One shell, as the newcomer's second terminal: the first block's alias and export hold in the second.
    script = f"shopt -s expand_aliases\ncd {TREE}\n{blocks[0]}\necho '{marker}'\n{blocks[1]}"
    (box.root / "root/try-it.sh").write_text(script)
    result = box.sh("timeout 300 bash /root/try-it.sh 2>&1", check=False, timeout=330)
    output = result.stdout
    assert result.returncode == 0 and marker in output, output
    first, second = output.split(marker)

    answers = [json.loads(line) for line in first.splitlines() if line.startswith("{")]
    reports = [a["data"] for a in answers if "counted" in a.get("data", {})]
    assert [r["counted"] for r in reports] == [True] * 5, first
    assert reports[-1]["state"] == "open", first
    assert table_row(first, "booking")[:3] == ["booking", "open", "5"], first
    transition = [a for a in answers if a.get("platform") == "booking"]
    assert len(transition) == 1 and transition[0]["new"] == "open", first
    refused = answers[-1]["data"]
    assert refused["allowed"] is False and refused["state"] == "open", first

    rows = [line.split() for line in second.splitlines() if line.startswith("booking ")]
    assert [row[1] for row in rows] == ["half_open", "closed"], second


def table_row(output: str, platform: str) -> list[str]:
    rows = [line.split() for line in output.splitlines() if line.startswith(f"{platform} ")]
    assert len(rows) == 1, output
    return rows[0]


def test_ctrl_c_stops_everything_and_removes_the_socket(box: Container) -> None:
    require_daemon(box)
    pid = make_pid(box)
    running = box.sh(f"pgrep -a -s {pid}", check=False).stdout.splitlines()
    assert len([line for line in running if "ratecared" in line]) == 2, running  # the demo app and the daemon
    box.sh(f"kill -INT -{pid}")  # Ctrl-C: the terminal signals the foreground group
    deadline = time.monotonic() + STOP_TIMEOUT
    while True:
        left = box.sh(f"pgrep -a -s {pid}; pgrep -a -f '[r]atecared'", check=False).stdout.strip()
        if not left:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"still running {STOP_TIMEOUT} s after Ctrl-C:\n{left}\n{make_log(box)[-3000:]}")
        time.sleep(0.5)
    assert box.sh(f"test -e {SOCKET}", check=False).returncode != 0, "the socket file is left behind"
    assert "Traceback" not in make_log(box), make_log(box)[-3000:]
