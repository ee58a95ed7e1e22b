"""The control socket of a running daemon: the API, and clients that misbehave."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import DaemonProcess, fail, setting_in_effect, wait_for

from ratecared.client import DaemonBusy


def raw(sock_path: str, data: bytes, read: bool = True, timeout: float = 30.0) -> bytes:
    """Send bytes on a fresh connection and read until the daemon closes or times out."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(sock_path)
    s.sendall(data)
    out = b""
    if read:
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out:
                    head, _, body = out.partition(b"\r\n\r\n")
                    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                       if line.lower().startswith(b"content-length")), b"0"))
                    if len(body) >= length:
                        break
        except socket.timeout:
            pass
    s.close()
    return out


def http(sock_path: str, method: str, path: str, body: bytes = b"", headers: str = "") -> tuple[int, Any]:
    request = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
               ).encode() + body
    reply = raw(sock_path, request)
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(payload)


def test_status_has_the_seed_shape(daemon: DaemonProcess) -> None:
    code, reply = http(daemon.socket, "GET", "/api/v1/circuit-breaker/status")
    assert code == 200 and reply["status"] == "success"
    data = reply["data"]
    assert {"total_platforms", "closed", "open", "half_open", "total_requests", "total_failures",
            "platforms"} <= set(data)
    assert (data["total_platforms"], data["closed"], data["open"], data["half_open"]) == (7, 7, 0, 0)
    first = data["platforms"][0]
    assert {"platform", "state", "failure_count", "success_rate"} <= set(first)
    assert (first["platform"], first["state"], first["failure_count"], first["success_rate"]) == (
        "booking", "closed", 0, None)


def test_five_failures_open_booking_and_calls_are_refused(daemon: DaemonProcess) -> None:
    fail(daemon)
    code, reply = http(daemon.socket, "POST", "/api/v1/circuit-breaker/booking/acquire")
    assert code == 200
    data = reply["data"]
    assert (data["allowed"], data["state"], data["permit"]) == (False, "open", None)
    assert 590 < data["retry_after"] <= 600
    status = daemon.client().status()
    assert (status["open"], status["total_failures"]) == (1, 5)
    booking = status["platforms"][0]
    assert (booking["state"], booking["failure_count"], booking["success_rate"]) == ("open", 5, 0.0)


def test_report_answers_counted_and_state(daemon: DaemonProcess) -> None:
    _, reply = http(daemon.socket, "POST", "/api/v1/circuit-breaker/agoda/acquire")
    permit = reply["data"]["permit"]
    body = json.dumps({"permit": permit, "success": True, "duration_ms": 120}).encode()
    assert http(daemon.socket, "POST", "/api/v1/circuit-breaker/agoda/report", body) == (
        200, {"status": "success", "data": {"counted": True, "state": "closed"}})
    code, reply = http(daemon.socket, "POST", "/api/v1/circuit-breaker/agoda/report", body)
    assert code == 409 and reply["error"]["code"] == "unknown_permit"
    forged = json.dumps({"permit": "agoda.0.424242", "success": False}).encode()
    code, reply = http(daemon.socket, "POST", "/api/v1/circuit-breaker/agoda/report", forged)
    assert code == 409 and reply["status"] == "error"
    assert daemon.client().status()["platforms"][2]["total_failures"] == 0


def test_late_report_after_a_transition_says_it_was_not_counted(daemon: DaemonProcess) -> None:
    client = daemon.client()
    slow = client.acquire("booking")
    fail(daemon)
    reply = client.report(slow, True, 4000)
    assert reply["counted"] is False and reply["state"] == "open" and reply["reason"] == "stale"
    assert "earlier state" in reply["message"]


def test_batch_acquire_and_report(daemon: DaemonProcess) -> None:
    fail(daemon)
    body = json.dumps({"platforms": ["booking", "agoda", "google"]}).encode()
    code, reply = http(daemon.socket, "POST", "/api/v1/circuit-breaker/acquire", body)
    assert code == 200
    data = reply["data"]
    assert list(data) == ["booking", "agoda", "google"]
    assert data["booking"]["allowed"] is False and data["agoda"]["allowed"] and data["google"]["allowed"]
    reports = [{"platform": p, "permit": data[p]["permit"], "success": p == "agoda", "duration_ms": 10}
               for p in ("agoda", "google")]
    code, reply = http(daemon.socket, "POST", "/api/v1/circuit-breaker/report",
                       json.dumps({"reports": reports}).encode())
    assert code == 200
    assert reply["data"] == [{"counted": True, "state": "closed", "platform": "agoda"},
                             {"counted": True, "state": "closed", "platform": "google"}]


def test_reset_one_and_all(daemon: DaemonProcess) -> None:
    fail(daemon)
    code, reply = http(daemon.socket, "POST", "/api/v1/circuit-breaker/reset", b'{"platform":"booking"}')
    assert (code, reply["data"]) == (200, {"reset": ["booking"], "changed": ["booking"], "held": []})
    assert daemon.client().acquire("booking").allowed
    code, reply = http(daemon.socket, "POST", "/api/v1/circuit-breaker/reset")
    # Every breaker is covered; none was open, so none changed.
    assert (len(reply["data"]["reset"]), reply["data"]["changed"]) == (7, [])


def test_health(daemon: DaemonProcess) -> None:
    code, reply = http(daemon.socket, "GET", "/api/v1/health")
    data = reply["data"]
    assert code == 200 and data["daemon"] == "up" and data["database"]["reachable"] is True
    assert data["database"]["engine"] == "sqlite" and data["version"]
    assert data["settings"]["circuit-breaker-failure-threshold"] == 5


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_seeds_curl_check_works(daemon: DaemonProcess) -> None:
    out = subprocess.run(["curl", "-sS", "--unix-socket", daemon.socket,
                          "http://localhost/api/v1/circuit-breaker/status"], capture_output=True, timeout=10)
    assert json.loads(out.stdout)["data"]["total_platforms"] == 7
    big = json.dumps({"platform": "booking", "padding": "x" * 4000})
    out = subprocess.run(["curl", "-sS", "--unix-socket", daemon.socket, "-X", "POST", "-d", big,
                          "http://localhost/api/v1/circuit-breaker/reset"], capture_output=True, timeout=10)
    assert json.loads(out.stdout)["data"] == {"reset": ["booking"], "changed": [], "held": []}


def test_socket_file_is_0660(daemon: DaemonProcess) -> None:
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o660


# -- bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path,body,code,error",
    [
        ("POST", "/api/v1/circuit-breaker/booking/report", b"{not json", 400, "invalid_json"),
        ("POST", "/api/v1/circuit-breaker/booking/report", b"[1,2]", 400, "invalid_request"),
        ("POST", "/api/v1/circuit-breaker/booking/report", b'{"permit":"x","success":"yes"}', 400,
         "invalid_request"),
        ("POST", "/api/v1/circuit-breaker/booking/report", b'{"permit":"x","success":true,"duration_ms":-1}',
         400, "invalid_request"),
        ("POST", "/api/v1/circuit-breaker/nosuch/acquire", b"", 404, "unknown_platform"),
        ("POST", "/api/v1/circuit-breaker/reset", b'{"platform":"nosuch"}', 404, "unknown_platform"),
        ("POST", "/api/v1/circuit-breaker/acquire", b'{"platforms":["booking","nosuch"]}', 404, "unknown_platform"),
        ("POST", "/api/v1/circuit-breaker/acquire", b'{"platforms":"booking"}', 400, "invalid_request"),
        ("POST", "/api/v1/circuit-breaker/report", b'{"reports":[{"platform":"booking"}]}', 400,
         "invalid_request"),
        ("GET", "/api/v1/nothing/here", b"", 404, "not_found"),
        ("GET", "/", b"", 404, "not_found"),
        ("DELETE", "/api/v1/circuit-breaker/status", b"", 405, "method_not_allowed"),
        ("GET", "/api/v1/circuit-breaker/booking/acquire", b"", 405, "method_not_allowed"),
        ("GET", "/api/v1/jobs/warm_cache/runs?limit=0", b"", 400, "invalid_request"),
        ("GET", "/api/v1/jobs/warm_cache/runs?limit=-1", b"", 400, "invalid_request"),
        ("GET", "/api/v1/jobs/warm_cache/runs?limit=abc", b"", 400, "invalid_request"),
        ("GET", "/api/v1/jobs/warm%20cache/runs", b"", 404, "unknown_job"),
        ("POST", "/api/v1/jobs/warm_cache%2F..%2Fx/run", b"", 404, "unknown_job"),
    ],
)
def test_bad_requests_get_clear_errors(daemon: DaemonProcess, method: str, path: str, body: bytes, code: int,
                                       error: str) -> None:
    got, reply = http(daemon.socket, method, path, body)
    assert (got, reply["status"], reply["error"]["code"]) == (code, "error", error)
    assert reply["error"]["message"]


def test_job_names_are_percent_decoded(daemon: DaemonProcess) -> None:
    got, reply = http(daemon.socket, "GET", "/api/v1/jobs/warm%20cache/runs")
    assert reply["error"]["message"].startswith("unknown job 'warm cache'; jobs: aggregate_statistics")
    got, reply = http(daemon.socket, "GET", "/api/v1/jobs/warm%5Fcache/runs?limit=1000")
    assert (got, reply["data"]) == (200, [])


def test_malformed_http_and_oversized_bodies(daemon: DaemonProcess) -> None:
    assert raw(daemon.socket, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(daemon.socket, b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    huge = b"POST /api/v1/circuit-breaker/reset HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n"
    assert raw(daemon.socket, huge).startswith(b"HTTP/1.1 413 ")
    big_head = b"GET / HTTP/1.1\r\nX-Pad: " + b"x" * 20000 + b"\r\n\r\n"
    assert raw(daemon.socket, big_head).startswith(b"HTTP/1.1 431 ")
    assert daemon.client().status()["total_platforms"] == 7


def half_sent_and_silent(daemon: DaemonProcess) -> tuple[socket.socket, socket.socket]:
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(daemon.socket)
    half = socket.socket(socket.AF_UNIX)
    half.connect(daemon.socket)
    half.sendall(b"POST /api/v1/circuit-breaker/booking/report HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"perm")
    return half, silent


def test_half_sent_and_silent_clients_do_not_hold_up_others(config_factory, daemon_factory) -> None:
    # An hour-long idle timeout: others are served while both are still connected.
    daemon = daemon_factory(config_factory(daemon={"idle_timeout": 3600}))
    half, silent = half_sent_and_silent(daemon)
    assert daemon.client(timeout=30).status()["total_platforms"] == 7
    half.setblocking(False)
    with pytest.raises(BlockingIOError):
        half.recv(4096)
    half.close()
    silent.close()


def test_half_sent_and_silent_clients_are_dropped(config_factory, daemon_factory) -> None:
    daemon = daemon_factory(config_factory(daemon={"idle_timeout": 0.5}))
    half, silent = half_sent_and_silent(daemon)
    half.settimeout(30)
    assert half.recv(4096).startswith(b"HTTP/1.1 408 ")
    silent.settimeout(30)
    assert silent.recv(4096) == b""
    assert daemon.client().status()["total_platforms"] == 7


def test_a_client_that_never_reads_is_dropped(config_factory, daemon_factory) -> None:
    daemon = daemon_factory(config_factory(daemon={"idle_timeout": 0.5}))
    hog = socket.socket(socket.AF_UNIX)
    hog.connect(daemon.socket)
    hog.setblocking(False)
    request = b"GET /api/v1/circuit-breaker/status HTTP/1.1\r\n\r\n" * 200
    sent_total = 0
    # Only a daemon that never drops it gets near this.
    deadline = time.monotonic() + 60
    dropped = False
    while time.monotonic() < deadline:
        try:
            sent_total += hog.send(request)
        except BlockingIOError:
            time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            dropped = True
            break
        assert daemon.client().acquire("agoda").allowed
    assert dropped, f"daemon kept a non-reading client after {sent_total} bytes"
    assert daemon.client().status()["total_platforms"] == 7


def test_a_thousand_connections_at_once(config_factory, daemon_factory) -> None:
    daemon = daemon_factory(config_factory(daemon={"max_connections": 100}))
    conns = []
    for _ in range(1000):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        s.connect(daemon.socket)
        conns.append(s)
    for s in conns[:50]:
        s.sendall(b"POST /api/v1/circuit-breaker/booking/acquire HTTP/1.1\r\n\r\n")
    for s in conns[:50]:
        assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
    # Those over the cap are told so and closed; the daemon keeps serving.
    refused = 0
    for s in conns[100:]:
        s.settimeout(5)
        try:
            refused += s.recv(4096).startswith(b"HTTP/1.1 503 ")
        except socket.timeout:
            pass
    # The start-up probe's connection (wait_ready) may hold a slot for a moment: then one of these gets it.
    assert refused in (899, 900)
    for s in conns:
        s.close()

    # The closes reach the daemon as they are read: a loaded one may still count some of them for a moment.
    def served() -> bool:
        try:
            return daemon.client().status()["total_platforms"] == 7
        except DaemonBusy:
            return False

    wait_for(served, what="status served once the thousand connections are closed")


def test_concurrent_clients_never_get_more_trials_than_allowed(config_factory, daemon_factory, tmp_path) -> None:
    daemon = daemon_factory(config_factory())
    client = daemon.client()
    fail(daemon)
    # Shorten the open timeout through the settings table, as an operator would.
    import sqlite3

    conn = sqlite3.connect(tmp_path / "rc.db")
    conn.execute("UPDATE settings SET value = '1' WHERE key = 'circuit-breaker-timeout-seconds'")
    conn.commit()
    conn.close()
    setting_in_effect(daemon, "circuit-breaker-timeout-seconds", 1)
    # Status does not take a trial slot; it shows the breaker half-open once its second is up.
    wait_for(lambda: client.status()["platforms"][0]["state"] == "half_open")
    allowed: list[bool] = []
    barrier = threading.Barrier(16)

    def ask() -> None:
        mine = daemon.client()
        barrier.wait()
        for _ in range(20):
            allowed.append(mine.acquire("booking").allowed)
        mine.close()

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed.count(True) == 3
    assert client.status()["platforms"][0]["state"] == "half_open"


def test_stale_socket_is_replaced_and_live_one_is_not(config_factory, daemon_factory) -> None:
    config = config_factory()
    first = daemon_factory(config)
    first.stop(9)
    assert Path(first.socket).exists()
    second = daemon_factory(config)
    assert second.client().status()["total_platforms"] == 7
    third = daemon_factory(config, wait=False)
    assert third.proc.wait(20) == 1
    assert "another process is listening" in third.read_output()
    assert second.client().status()["total_platforms"] == 7


def test_batch_acquire_answers_a_platform_named_twice_once(daemon: DaemonProcess) -> None:
    body = json.dumps({"platforms": ["agoda", "booking", "agoda"]}).encode()
    code, reply = http(daemon.socket, "POST", "/api/v1/circuit-breaker/acquire", body)
    assert code == 200 and list(reply["data"]) == ["agoda", "booking"]
    permit = reply["data"]["agoda"]["permit"]
    report = json.dumps({"permit": permit, "success": True}).encode()
    assert http(daemon.socket, "POST", "/api/v1/circuit-breaker/agoda/report", report)[1]["data"]["counted"]
