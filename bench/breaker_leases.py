#!/usr/bin/env python3
"""The daemon's memory when callers acquire permits and never report them.

Starts the real daemon (SQLite, in a temporary directory, the default 30 s
permit lease), warms it up with normal acquire+report pairs, then has
--clients processes acquire --permits permits (batch acquires of all 7
platforms, pipelined 64 deep on one connection each) and report none. The
daemon's VmRSS is sampled every 100 ms: idle, the peak under the flood, and
once every lease has run out.

Floors (issue 10): RSS under 100 MB throughout, and back within 10 MB of
idle once the leases have run out; the oldest lease is pushed out past the
cap, a new one is held.

Usage:
    .venv/bin/python bench/breaker_leases.py [--permits 1400000] [--clients 4] [--json]

Exit status: 0 when every floor passes, 1 otherwise. Standard library only; Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from floors import run_and_report
from process_metrics import RssSampler, rss_kb, stop_process, wait_ready

PLATFORMS = ("booking", "expedia", "agoda", "hotels", "trivago", "tripadvisor", "google")
PREFIX = "/api/v1/circuit-breaker"
LEASE_SECONDS = 30.0           # circuit_breaker.permit_lease's default
FLOOR_PEAK_MB = 100.0
FLOOR_AFTER_MB = 10.0          # above idle, once the leases have run out
DEPTH = 64                     # requests in flight on each connection


def _request(path: str, body: bytes = b"") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: ratecared\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


ACQUIRE_ALL = _request(f"{PREFIX}/acquire", json.dumps({"platforms": list(PLATFORMS)}).encode())


def _responses(sock: socket.socket, buffered: bytes) -> tuple[list[bytes], bytes]:
    """The whole responses in what has arrived (reading more first), and what is left over."""
    data = sock.recv(1 << 20)
    if not data:
        raise ConnectionError("the daemon closed the connection")
    buffered += data
    out = []
    while (end := buffered.find(b"\r\n\r\n")) >= 0:
        start = buffered.lower().find(b"content-length:", 0, end) + len(b"content-length:")
        total = end + 4 + int(buffered[start:buffered.find(b"\r\n", start)])
        if len(buffered) < total:
            break
        out.append(buffered[:total])
        buffered = buffered[total:]
    return out, buffered


def _call(path: str, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(request)
        buffered = b""
        while True:
            answers, buffered = _responses(sock, buffered)
            if answers:
                return answers[0]


def _body(response: bytes) -> dict:
    return json.loads(response[response.find(b"\r\n\r\n") + 4:])


def _flood(path: str, requests: int) -> None:
    """`requests` batch acquires, pipelined, none reported."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sent = answered = 0
        buffered = b""
        while answered < requests:
            if sent < requests and sent - answered < DEPTH:
                burst = min(DEPTH, requests - sent)
                sock.sendall(ACQUIRE_ALL * burst)
                sent += burst
            answers, buffered = _responses(sock, buffered)
            for answer in answers:
                if not answer.startswith(b"HTTP/1.1 200 "):
                    raise RuntimeError(f"acquire refused: {answer[:200]!r}")
            answered += len(answers)


def _acquire(path: str, platform: str) -> str:
    return _body(_call(path, _request(f"{PREFIX}/{platform}/acquire")))["data"]["permit"]


def _report(path: str, platform: str, permit: str) -> int:
    """The HTTP status of a success report of `permit`."""
    body = json.dumps({"permit": permit, "success": True, "duration_ms": 1}).encode()
    return int(_call(path, _request(f"{PREFIX}/{platform}/report", body))[9:12])


def bench(args, log) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="rc-leases-", dir="/tmp"))
    daemon = None
    sampler = None
    try:
        (tmp / "ratecared.toml").write_text(
            f'[daemon]\nsocket = "{tmp}/rc.sock"\nsocket_group = ""\nadmin_group = ""\n'
            f'[database]\nurl = "sqlite:///{tmp}/rc.db"\nauto_migrate = true\n[logging]\ndir = "{tmp}/logs"\n')
        path = str(tmp / "rc.sock")
        with open(tmp / "daemon.out", "wb") as out:
            daemon = subprocess.Popen([sys.executable, "-m", "ratecared", "--config", str(tmp / "ratecared.toml")],
                                      stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(daemon, path)
        for _ in range(2000):
            _report(path, "booking", _acquire(path, "booking"))
        idle = (rss_kb(daemon.pid) or 0) / 1024
        sampler = RssSampler(daemon.pid)
        sampler.start()
        oldest = _acquire(path, "expedia")
        requests = args.permits // len(PLATFORMS) // args.clients
        log(f"daemon pid {daemon.pid}, idle RSS {idle:.1f} MB; {args.clients} clients acquire "
            f"{requests * args.clients * len(PLATFORMS):,} permits and report none ...")
        started = time.monotonic()
        children = []
        for _ in range(args.clients):
            child = os.fork()
            if child == 0:
                code = 1
                try:
                    _flood(path, requests)
                    code = 0
                finally:
                    os._exit(code)
            children.append(child)
        failed = sum(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) != 0 for child in children)
        flood_s = time.monotonic() - started
        if failed:
            raise RuntimeError(f"{failed} flood clients failed")
        peak = max(sampler.peak_mb(started), idle)
        oldest_status = _report(path, "expedia", oldest)
        newest_status = _report(path, "expedia", _acquire(path, "expedia"))
        log(f"flood over in {flood_s:.1f} s, peak RSS {peak:.1f} MB; waiting {LEASE_SECONDS:g} s for the leases "
            "to run out ...")
        time.sleep(LEASE_SECONDS + 2)
        after = (rss_kb(daemon.pid) or 0) / 1024
        return {
            "permits": requests * args.clients * len(PLATFORMS), "clients": args.clients,
            "flood_s": round(flood_s, 1), "permits_per_s": round(requests * args.clients * len(PLATFORMS) / flood_s),
            "idle_rss_mb": round(idle, 1), "peak_rss_mb": round(peak, 1), "after_rss_mb": round(after, 1),
            "oldest_report_status": oldest_status, "newest_report_status": newest_status,
        }
    finally:
        if sampler is not None:
            sampler.stopping.set()
        stop_process(daemon)
        shutil.rmtree(tmp, ignore_errors=True)


def floors(r: dict) -> list[tuple[str, str, bool]]:
    return [
        (f"peak RSS < {FLOOR_PEAK_MB:g} MB", f"{r['peak_rss_mb']:.1f} MB", r["peak_rss_mb"] < FLOOR_PEAK_MB),
        (f"after the leases < idle + {FLOOR_AFTER_MB:g} MB", f"{r['after_rss_mb'] - r['idle_rss_mb']:+.1f} MB",
         r["after_rss_mb"] - r["idle_rss_mb"] < FLOOR_AFTER_MB),
        ("oldest lease pushed out (409)", str(r["oldest_report_status"]), r["oldest_report_status"] == 409),
        ("newest lease held (200)", str(r["newest_report_status"]), r["newest_report_status"] == 200),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--permits", type=int, default=1_400_000, help="permits to acquire [1400000]")
    parser.add_argument("--clients", type=int, default=4, help="client processes [4]")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.permits < len(PLATFORMS) * args.clients:
        parser.error("--clients >= 1 and at least 7 permits per client")

    def log(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def summary(r: dict) -> str:
        return (f"{r['permits']:,} permits never reported, acquired in {r['flood_s']:g} s ({r['permits_per_s']:,}/s)"
                f" by {r['clients']} clients: RSS idle {r['idle_rss_mb']} MB, peak {r['peak_rss_mb']} MB,"
                f" {LEASE_SECONDS:g} s later {r['after_rss_mb']} MB")

    return run_and_report(lambda: bench(args, log), floors, summary, args.json)


if __name__ == "__main__":
    sys.exit(main())
