"""examples/nginx/ratecared.conf under a real nginx (Debian's nginx-light) on loopback, before a real daemon.

The test takes the example site as it is and replaces two lines, the listen
address and the socket path, with its own; each must be found exactly once, so
an edit of the example that the test no longer covers fails here.

As root, nginx's workers run as www-data, as under the package, and the daemon
lets www-data's group both connect and administer: nothing but nginx then
stands between a request and the daemon, so a refused reset that stays
refused is nginx's doing. As another user the workers run as that user, whom
the daemon counts as its own and so as an administrator too.
"""

from __future__ import annotations

import grp
import http.client
import json
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import DaemonProcess, fail, require, wait_for

SITE = Path(__file__).resolve().parents[1] / "examples" / "nginx" / "ratecared.conf"
NGINX = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
EXAMPLE_LISTEN = "listen 127.0.0.1:8187;"
EXAMPLE_SOCKET = "server unix:/run/ratecared/ratecared.sock;"
WORKER = "www-data" if os.geteuid() == 0 else None


def missing_nginx() -> str | None:
    # The booted Debian 12 copies only tests/, without the example they test.
    if not SITE.exists():
        return f"no nginx example at {SITE}"
    return None if NGINX else "the nginx test needs nginx-light"


class Nginx:
    """One nginx master in the foreground, everything it writes under `prefix`."""

    def __init__(self, prefix: Path, socket_path: str) -> None:
        self.prefix = prefix
        self.error_log = prefix / "error.log"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        site = SITE.read_text()
        for example, ours in ((EXAMPLE_LISTEN, f"listen 127.0.0.1:{self.port};"),
                              (EXAMPLE_SOCKET, f"server unix:{socket_path};")):
            assert site.count(example) == 1, f"{SITE} no longer has the line {example!r} once"
            site = site.replace(example, ours)
        (prefix / "site.conf").write_text(site)
        temp = "\n".join(f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                                 "uwsgi", "scgi"))
        (prefix / "nginx.conf").write_text(
            ("" if WORKER is None else f"user {WORKER};\n")
            + f"daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\nerror_log {self.error_log} info;\n"
            + "events { worker_connections 64; }\n"
            + f"http {{\n    access_log {prefix / 'access.log'};\n{temp}\n    include {prefix / 'site.conf'};\n}}\n")
        self.proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                      "-e", str(self.error_log)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(self._listening, what=f"nginx listening on 127.0.0.1:{self.port}")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited {self.proc.returncode}:\n{self.log()}")
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else "(no error log)"

    def ask(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], bytes]:
        """One request as the admin pages' browser sends it: status, headers (lower-case names), body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            payload = None if body is None else json.dumps(body)
            headers = {} if body is None else {"Content-Type": "application/json"}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def nginx_before(tmp_path: Path) -> Iterator[Callable[[DaemonProcess], Nginx]]:
    """nginx with the example site, proxying to a daemon's socket."""
    require("RATECARED_REQUIRE_NGINX", missing_nginx())
    started: list[Nginx] = []

    def start(daemon: DaemonProcess) -> Nginx:
        # The worker must reach the socket through the daemon's private run directory.
        Path(daemon.socket).parent.chmod(0o711)
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        started.append(Nginx(prefix, daemon.socket))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def worker_groups() -> dict[str, str]:
    """The daemon's socket and admin groups: the worker's own group, so nginx alone decides what gets through."""
    group = "" if WORKER is None else grp.getgrgid(pwd.getpwnam(WORKER).pw_gid).gr_name
    return {"socket_group": group, "admin_group": group}


def daemon_json(body: bytes) -> dict[str, Any]:
    envelope = json.loads(body)
    assert envelope["status"] in ("success", "error"), envelope
    return envelope


def test_status_health_and_metrics_are_read_through_nginx(config_factory, daemon_factory, nginx_before) -> None:
    daemon = daemon_factory(config_factory(daemon=worker_groups()))
    fail(daemon)
    nginx = nginx_before(daemon)

    status, headers, body = nginx.ask("GET", "/api/v1/circuit-breaker/status")
    assert status == 200, nginx.log()
    data = daemon_json(body)["data"]
    assert (data["total_platforms"], data["open"]) == (7, 1)
    assert {p["platform"]: p["state"] for p in data["platforms"]}["booking"] == "open"

    status, _, body = nginx.ask("GET", "/api/v1/health")
    assert status == 200, nginx.log()
    assert daemon_json(body)["data"]["daemon"] == "up"
    status, headers, body = nginx.ask("HEAD", "/api/v1/health")
    assert (status, body) == (200, b"")
    assert headers["content-type"].startswith("application/json")

    status, headers, body = nginx.ask("GET", "/metrics")
    assert (status, headers["content-type"]) == (200, "text/plain; version=0.0.4; charset=utf-8"), body[:500]
    assert b'ratecared_breaker_state{platform="booking",state="open"} 1.0' in body


# What the admin pages may not do through nginx, with a body the daemon would carry out.
REFUSED = [
    ("POST", "/api/v1/circuit-breaker/reset", {}),
    ("POST", "/api/v1/circuit-breaker/reset", {"platform": "booking"}),
    ("POST", "/api/v1/circuit-breaker/booking/hold", {"state": "closed", "seconds": 3600, "reason": "via nginx"}),
    ("POST", "/api/v1/circuit-breaker/booking/release", {}),
    ("POST", "/api/v1/jobs/aggregate_statistics/run", {"wait": False}),
    ("POST", "/api/v1/jobs/aggregate_statistics/cancel", {}),
    ("POST", "/api/v1/reload", {}),
    ("POST", "/api/v1/settings", {"key": "circuit-breaker-enabled", "value": "0"}),
    ("GET", "/api/v1/settings", None),
    ("GET", "/api/v1/circuit-breaker/events", None),
    ("GET", "/api/v1/jobs", None),
    ("POST", "/api/v1/circuit-breaker/booking/acquire", None),
    ("POST", "/api/v1/circuit-breaker/acquire", {"platforms": ["booking"]}),
    # A read route with another method, and a dot segment that nginx resolves to reset.
    ("POST", "/api/v1/circuit-breaker/status", {}),
    ("POST", "/api/v1/health/../circuit-breaker/reset", {}),
]


def test_admin_routes_are_refused_by_nginx_and_never_reach_the_daemon(config_factory, daemon_factory,
                                                                      nginx_before) -> None:
    daemon = daemon_factory(config_factory(daemon=worker_groups()))
    fail(daemon)
    nginx = nginx_before(daemon)
    client = daemon.client()
    counters = ("total_requests", "rejected", "total_failures", "total_successes")
    before = [{k: p[k] for k in ("platform", "state", *counters)} for p in client.status()["platforms"]]

    for method, path, body in REFUSED:
        status, _, answer = nginx.ask(method, path, body)
        # nginx's own error page, not the daemon's JSON.
        assert status in (403, 405) and b"<center>nginx" in answer, (method, path, status, answer[:300])

    after = [{k: p[k] for k in ("platform", "state", *counters)} for p in client.status()["platforms"]]
    assert after == before
    assert [p["state"] for p in after if p["platform"] == "booking"] == ["open"]
    assert client.job_runs("aggregate_statistics") == []


def test_nginx_answers_502_when_its_worker_may_not_open_the_socket(config_factory, daemon_factory,
                                                                   nginx_before) -> None:
    if WORKER is None:
        pytest.skip("only root can run nginx's workers as another user than the daemon's")
    # The package's socket without www-data in its group: root's group only.
    daemon = daemon_factory(config_factory(daemon={"socket_group": "", "admin_group": ""}))
    nginx = nginx_before(daemon)

    status, _, _ = nginx.ask("GET", "/api/v1/circuit-breaker/status")
    assert status == 502
    wait_for(lambda: f"connect() to unix:{daemon.socket} failed (13: Permission denied)" in nginx.log(),
             what="nginx logging EACCES on the socket")
    assert daemon.client().status()["total_platforms"] == 7
