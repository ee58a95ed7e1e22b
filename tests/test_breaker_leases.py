"""Leases bounded in all, through the real daemon: permits acquired and never reported cost a bounded ring."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from conftest import DaemonProcess, fail, set_setting, setting_in_effect, wait_for
from ratecared.breaker.machine import MAX_LEASES
from ratecared.client import DaemonError

PLATFORMS = ("booking", "expedia", "agoda", "hotels", "trivago", "tripadvisor", "google")
# Past the cap, so the ring goes round more than twice; bounded in time below.
PERMITS = 250_000
CLIENTS = 2
# The ring is 40 bytes a slot (4 MB at the cap); the rest is room for the allocator.
MAX_GROWTH_MB = 15.0
# DESIGN: back to within this of idle once the leases have run out.
AFTER_MB = 10.0

_BODY = json.dumps({"platforms": list(PLATFORMS)}).encode()
ACQUIRE_ALL = (b"POST /api/v1/circuit-breaker/acquire HTTP/1.1\r\nHost: ratecared\r\n"
               b"Content-Length: %d\r\n\r\n" % len(_BODY)) + _BODY


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def acquire_and_never_report(path: str, requests: int, depth: int = 64) -> None:
    """`requests` batch acquires of every platform, pipelined `depth` at a time, none reported."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    sock.settimeout(30)
    buffered, sent, answered = b"", 0, 0
    while answered < requests:
        if sent < requests and sent - answered < depth:
            burst = min(depth, requests - sent)
            sock.sendall(ACQUIRE_ALL * burst)
            sent += burst
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the daemon closed the connection")
        buffered += data
        while (end := buffered.find(b"\r\n\r\n")) >= 0:
            start = buffered.find(b"Content-Length:", 0, end) + len(b"Content-Length:")
            total = end + 4 + int(buffered[start:buffered.find(b"\r\n", start)])
            if len(buffered) < total:
                break
            if not buffered.startswith(b"HTTP/1.1 200 "):
                raise AssertionError(buffered[:300])
            buffered = buffered[total:]
            answered += 1
    sock.close()


def test_permits_never_reported_cost_a_bounded_ring_and_the_oldest_go_but_never_a_trial(
        config_factory, daemon_factory, tmp_path: Path) -> None:
    daemon: DaemonProcess = daemon_factory(config_factory(circuit_breaker={"permit_lease": 60}))
    client = daemon.client()
    # Warmed up with normal pairs, so that idle includes what any traffic allocates.
    for _ in range(2000):
        client.report(client.acquire("booking"), True, 1)
    pid = daemon.proc.pid
    idle = rss_mb(pid)
    oldest = client.acquire("expedia")
    # A half-open trial call in flight while the flood goes round the ring twice: trials are not in it.
    set_setting(tmp_path / "rc.db", "circuit-breaker-timeout-seconds", "1")
    setting_in_effect(daemon, "circuit-breaker-timeout-seconds", 1)
    fail(daemon)
    trial = wait_for(lambda: (d := client.acquire("booking")).allowed and d, what="booking half-open")
    assert trial.state == "half_open"
    children = []
    for _ in range(CLIENTS):
        child = os.fork()
        if child == 0:
            code = 1
            try:
                acquire_and_never_report(daemon.socket, PERMITS // len(PLATFORMS) // CLIENTS)
                code = 0
            finally:
                os._exit(code)
        children.append(child)
    peak = idle
    deadline = time.monotonic() + 120
    running = set(children)
    while running:
        assert time.monotonic() < deadline, "the flood did not finish in time"
        peak = max(peak, rss_mb(pid))
        for child in list(running):
            done, status = os.waitpid(child, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0
                running.discard(child)
        time.sleep(0.05)
    peak = max(peak, rss_mb(pid))
    assert PERMITS > 2 * MAX_LEASES
    assert peak - idle < MAX_GROWTH_MB, f"RSS {idle:.1f} MB idle, {peak:.1f} MB under {PERMITS:,} permits"
    # The oldest lease gave its place up; the newest are held.
    try:
        client.report(oldest, False, 5003)
        raise AssertionError("the oldest lease was still held past the cap")
    except DaemonError as exc:
        assert exc.code == "unknown_permit"
    newest = client.acquire("expedia")
    assert client.report(newest, False, 5003)["counted"]
    assert client.report(trial, True, 5) == {"counted": True, "state": "half_open"}
    wait_for(lambda: rss_mb(pid) - idle < AFTER_MB, what=f"RSS within {AFTER_MB} MB of idle")
