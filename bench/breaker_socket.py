#!/usr/bin/env python3
"""Throughput and latency of ratecared's breaker API over its Unix socket.

Starts the real daemon (SQLite, in a temporary directory), drives it with N
client processes, each holding ONE keep-alive AF_UNIX connection and speaking
raw HTTP/1.1 from pre-built request bytes (a minimal client, like wrk), and
compares it with a raw AF_UNIX echo server that answers the same requests,
with the same framing, with the daemon's own replies replayed byte for byte.

Phases (each runs --seconds against the daemon, then against the echo server, then against
a minimal server on httptools and the daemon's loop that answers the same replies and does
nothing else: the least any Python server on those parts does; printed, not judged):

  single  acquire one platform + report it        = 1 decision per pair
  batch   batch acquire of all 7 + batch report   = 7 decisions per pair

and, against the daemon only, one legitimate client (single pairs) while others attack it:

  attack  200 slowloris connections (a header byte a second) and 50 that
          pipeline 256 KiB of `GET status` each and never read
  flood   200 connections that pipeline 256 KiB each and never read
  fair    (as root) 1,000 idle and slowloris connections from uid nobody,
          reopened as soon as they drop; root's status on a fresh connection
          each time (as ratecarectl makes) and another uid's, timed

and one more, against the daemon only:

  durable one client fails booking's calls until it opens, then resets it,
          over and over: the replies that carry a transition wait for the
          breaker journal's fdatasync, the others do not; with the SQLite
          database free, then with the bench holding it locked (BEGIN
          IMMEDIATE); then a second daemon on a private MariaDB (when
          mariadb-server is installed): free, hung (SIGSTOP: it takes
          connections and answers nothing) and killed

The attackers of `attack` and `flood` connect as the bench's user: as root
every one of them gets a slot (the worst case for memory), as another user
only daemon.max_connections_per_uid (64) do.

The daemon serves on the loop `daemon.event_loop = "auto"` gives it: uvloop when it
is installed. single and batch then run again on a second daemon on the other
loop (asyncio's own, or uvloop when installed and the first is not), printed
beside the first and not judged.

A latency sample is one pair of round trips (acquire + report), timed with
time.perf_counter_ns in the client. Reports are always success=true, so the
breakers stay closed. The daemon's VmRSS is sampled from /proc every 100 ms.

Usage:
    .venv/bin/python bench/breaker_socket.py [--seconds 5] [--clients 8] [--json]
    .venv/bin/python bench/breaker_socket.py --cprofile /tmp/rc.prof   # daemon under cProfile

Floors: single >= 5,000 decisions/s and >= 0.27 of the echo server's pairs/s,
batch >= 20,000 platform decisions/s, p99 < 5 ms in both, daemon peak RSS
< 60 MB in them (and no failed requests); under attack and flood the
legitimate client's p99 < 20 ms and the daemon's RSS < 100 MB; in fair,
root's status p99 < 100 ms and every request of the other uid answered; in
durable, decisions' p99 < 5 ms with the database locked, hung or killed.
Exit status: 0 when every floor passes, 1 otherwise (or when the bench itself
cannot run), 128+N on signal N. Ctrl-C or SIGTERM stops the daemon, the echo
server and the clients and removes the temporary directory.

The clients share the host's CPUs with the daemon; the report shows how much
CPU each side used per pair and how much of the host other processes took
(figures taken on a busy host are pessimistic).

Standard library only, but for the durable phase, which uses the tests' SQLite lock and
MariaDB harness (tests/conftest.py, tests/mariadb.py: pytest and PyMySQL, in the venv);
Linux only (/proc, AF_UNIX, epoll).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import multiprocessing as mp
import os
import platform as platform_mod
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Iterator

from floors import judged, verdict_lines
from process_metrics import RSS_INTERVAL, RssSampler, rss_kb, stop_process, wait_ready

PLATFORMS = ("booking", "expedia", "agoda", "hotels", "trivago", "tripadvisor", "google")
PREFIX = "/api/v1/circuit-breaker"
# The durable phase borrows the tests' SQLite lock and MariaDB harness, imported only there.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

FLOOR_SINGLE = 5_000      # decisions/s
FLOOR_BATCH = 20_000      # platform decisions/s
FLOOR_P99_MS = 5.0        # per acquire+report pair, both phases
FLOOR_SINGLE_RATIO = 0.27  # single pairs/s over the echo server's in the same run (issue 10; goal 0.5)
FLOOR_RSS_MB = 60.0       # daemon peak VmRSS in single and batch
FLOOR_ATTACK_P99_MS = 20.0    # the legitimate client's pairs under attack and flood
FLOOR_ATTACK_RSS_MB = 100.0   # daemon peak VmRSS under attack and flood
FLOOR_ROOT_STATUS_MS = 100.0  # root's status p99 in fair
FLOOR_LOCKED_P99_MS = 5.0     # decisions' p99 in durable, the database locked, hung or killed
GOAL_SINGLE_RATIO = 0.5   # issue 12's goals for the event loop, printed beside the floors
GOAL_BATCH = 100_000
ATTACKS = ("attack", "flood", "fair")

RECV_BYTES = 16384        # replies are under 1 KiB; a bigger buffer only costs allocation
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- raw HTTP/1.1 ------------------------------------------------------------------


def _request(path: str, body: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: ratecared\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _request_head(path: str) -> bytes:
    """Everything up to the Content-Length value; the client appends length, CRLFCRLF, body."""
    return f"POST {path} HTTP/1.1\r\nHost: ratecared\r\nContent-Type: application/json\r\nContent-Length: ".encode()


def _content_length(buf, end: int) -> int:
    i = buf.find(b"\r\nContent-Length:", 0, end)
    if i < 0:
        i = bytes(buf[:end]).lower().find(b"\r\ncontent-length:")
        if i < 0:
            return 0
    j = buf.find(b"\r\n", i + 17, end + 2)
    return int(buf[i + 17:j])


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (head + Content-Length body), for a client with one request in flight."""
    data = sock.recv(RECV_BYTES)
    end = data.find(b"\r\n\r\n")
    while end < 0:
        more = sock.recv(RECV_BYTES)
        if not more:
            raise ConnectionError("server closed the connection mid-response")
        data += more
        end = data.find(b"\r\n\r\n")
    total = end + 4 + _content_length(data, end)
    while len(data) < total:
        more = sock.recv(RECV_BYTES)
        if not more:
            raise ConnectionError("server closed the connection mid-body")
        data += more
    if len(data) != total:
        raise ConnectionError("unexpected bytes after the response")
    return data


def _body(response: bytes) -> bytes:
    return response[response.find(b"\r\n\r\n") + 4:]


PERMIT_RE = re.compile(rb'"permit":"([^"]*)"')


# -- client process ----------------------------------------------------------------


class _Client:
    """Pre-built requests for one mode; `pair` does acquire + report and returns True when both were 200."""

    def __init__(self, mode: str, index: int) -> None:
        self.mode = mode
        if mode == "single":
            platform = PLATFORMS[index % len(PLATFORMS)]
            self.acquire = _request(f"{PREFIX}/{platform}/acquire")
            self.report_head = _request_head(f"{PREFIX}/{platform}/report")
        else:
            self.acquire = _request(f"{PREFIX}/acquire", json.dumps({"platforms": list(PLATFORMS)}).encode())
            self.report_head = _request_head(f"{PREFIX}/report")
            self.fragments = [f'{{"platform":"{p}","permit":"'.encode() for p in PLATFORMS]
        self.last_acquire = b""
        self.last_report = b""

    def pair(self, sock: socket.socket) -> bool:
        send, read = sock.sendall, _read_response
        send(self.acquire)
        acq = read(sock)
        if acq[9:12] != b"200":
            self.last_acquire = acq
            return False
        if self.mode == "single":
            i = acq.find(b'"permit":"')
            if i < 0:                       # allowed: false, permit null
                self.last_acquire = acq
                return False
            permit = acq[i + 10:acq.find(b'"', i + 10)]
            body = b'{"permit":"' + permit + b'","success":true,"duration_ms":1}'
        else:
            permits = PERMIT_RE.findall(acq)
            if len(permits) != len(PLATFORMS):
                self.last_acquire = acq
                return False
            tail = b'","success":true,"duration_ms":1}'
            body = b'{"reports":[' + b",".join([f + p + tail for f, p in zip(self.fragments, permits)]) + b"]}"
        send(self.report_head + b"%d\r\n\r\n" % len(body) + body)
        rep = read(sock)
        self.last_acquire, self.last_report = acq, rep
        return rep[9:12] == b"200"


def _check(mode: str, acquire: bytes, report: bytes) -> str | None:
    """Full JSON check of one acquire/report exchange; None when it is what the bench expects."""
    try:
        a = json.loads(_body(acquire))
        r = json.loads(_body(report))
    except ValueError as exc:
        return f"unparsable response: {exc}: {acquire[:200]!r} / {report[:200]!r}"
    if a.get("status") != "success" or r.get("status") != "success":
        return f"not a success: {a} / {r}"
    decisions = [a["data"]] if mode == "single" else [a["data"][p] for p in PLATFORMS]
    if mode == "batch" and list(a["data"]) != list(PLATFORMS):
        return f"batch acquire answered out of order: {list(a['data'])}"
    if not all(d.get("allowed") and d.get("permit") for d in decisions):
        return f"acquire not allowed: {a}"
    outcomes = [r["data"]] if mode == "single" else r["data"]
    if len(outcomes) != len(decisions) or not all(o.get("counted") for o in outcomes):
        return f"report not counted: {r}"
    return None


def _client_main(path: str, mode: str, index: int, seconds: float, warmup: float, validate: bool,
                 barrier, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent cleans up on Ctrl-C ...
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # ... by terminating us: die at once
    try:
        client = _Client(mode, index)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        errors = 0
        if validate:
            if not client.pair(sock):
                raise RuntimeError(f"first {mode} exchange failed: {client.last_acquire[:300]!r} "
                                   f"{client.last_report[:300]!r}")
            problem = _check(mode, client.last_acquire, client.last_report)
            if problem:
                raise RuntimeError(problem)
        clock = time.perf_counter_ns
        warm_end = clock() + int(warmup * 1e9)
        while clock() < warm_end:
            client.pair(sock)
        barrier.wait(timeout=60)

        pair = client.pair
        samples = array("q")
        append = samples.append
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        start = t = clock()
        deadline = start + int(seconds * 1e9)
        while t < deadline:
            ok = pair(sock)
            t2 = clock()
            if ok:
                append(t2 - t)
            else:
                errors += 1
            t = t2
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        problem = _check(mode, client.last_acquire, client.last_report) if validate else None
        sock.close()
        conn.send({
            "start": start, "end": t, "samples": samples.tobytes(), "errors": errors,
            "cpu": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
            "last_acquire": client.last_acquire, "last_report": client.last_report,
            "problem": problem,
        })
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent, then die
        barrier.abort()
        try:
            conn.send({"error": f"client {index} ({mode}): {type(exc).__name__}: {exc}"})
        except Exception:  # noqa: BLE001
            pass
    finally:
        conn.close()


# -- echo server process -----------------------------------------------------------


def _echo_main(lsock: socket.socket, canned_acquire: bytes, canned_report: bytes) -> None:
    """Raw epoll server: frame each request like the daemon (head + Content-Length), answer canned bytes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    lsock.setblocking(False)
    lfd = lsock.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN)
    conns: dict[int, tuple[socket.socket, bytearray]] = {}
    while True:
        for fd, _ in ep.poll():
            if fd == lfd:
                while True:
                    try:
                        s, _ = lsock.accept()
                    except BlockingIOError:
                        break
                    s.setblocking(False)
                    conns[s.fileno()] = (s, bytearray())
                    ep.register(s.fileno(), select.EPOLLIN)
                continue
            s, buf = conns[fd]
            try:
                data = s.recv(RECV_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                del conns[fd]
                s.close()
                continue
            buf += data
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                total = end + 4 + _content_length(buf, end)
                if len(buf) < total:
                    break
                line_end = buf.find(b"\r\n")
                out = canned_acquire if buf.rfind(b"/acquire", 0, line_end) >= 0 else canned_report
                del buf[:total]
                sent = s.send(out)
                if sent < len(out):
                    s.setblocking(True)
                    s.sendall(out[sent:])
                    s.setblocking(False)


def _httptools_main(lsock: socket.socket, canned_acquire: bytes, canned_report: bytes) -> None:
    """The least any Python server on httptools and the daemon's loop can do: parse each request, answer canned
    bytes. Beside the daemon it shows what the daemon's own work costs; beside the echo, what httptools and the
    loop cost."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import asyncio

    import httptools

    from ratecared import event_loop

    class Minimal(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.acquire = False

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_url(self, url: bytes) -> None:
            self.acquire = url.endswith(b"/acquire")

        def on_message_complete(self) -> None:
            self.transport.write(canned_acquire if self.acquire else canned_report)

    async def serve() -> None:
        await asyncio.get_running_loop().create_unix_server(Minimal, sock=lsock)
        await asyncio.Event().wait()

    loop_factory, _ = event_loop.factory("auto")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve())


# -- attackers ------------------------------------------------------------------------

SLOW_HEAD = b"GET /api/v1/circuit-breaker/status HTTP/1.1\r\nX-Slow: "
PIPELINE = b"GET /api/v1/circuit-breaker/status HTTP/1.1\r\nHost: ratecared\r\n\r\n" * 4000   # 256 KiB


def _become(uid: int | None) -> None:
    """As root: drop to `uid` in nobody's group (the socket's group in the fair phase)."""
    if uid is None:
        return
    import pwd
    gid = pwd.getpwnam("nobody").pw_gid
    os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)


def _attack_main(path: str, kinds: dict[str, int], uid: int | None, ready, stop, conn) -> None:
    """Hold `kinds` connections open ("slow", "idle", "hog"), each reopened as soon as the daemon drops it.

    slow: a request head, then one more header byte a second; idle: nothing;
    hog: 256 KiB of pipelined requests, never a byte read.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    _become(uid)
    poller = select.poll()
    socks: dict[int, tuple[socket.socket, str, list[int]]] = {}
    opened = refused = 0

    def open_one(kind: str) -> None:
        nonlocal opened
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            s.close()
            return
        s.setblocking(False)
        opened += 1
        socks[s.fileno()] = (s, kind, [0])
        # A hog's answers pile up unread: only the daemon hanging up wakes it.
        poller.register(s, (select.POLLRDHUP | select.POLLERR) if kind == "hog" else select.POLLIN)
        if kind == "slow":
            try:
                s.send(SLOW_HEAD)
            except OSError:
                pass        # refused: the poll sees it hang up

    def drop(fd: int) -> None:
        s, kind, _ = socks.pop(fd)
        poller.unregister(fd)
        s.close()
        open_one(kind)

    for kind, count in kinds.items():
        for _ in range(count):
            open_one(kind)
    ready.set()
    next_byte = time.monotonic() + 1.0
    while not stop.is_set():
        for fd, _ in poller.poll(50):
            if fd in socks:
                s, kind, _ = socks[fd]
                if kind != "hog":
                    try:
                        refused += s.recv(4096).startswith(b"HTTP/1.1 503 ")
                    except OSError:
                        pass
                drop(fd)
        for fd, entry in list(socks.items()):
            if socks.get(fd) is not entry:
                continue        # dropped and its number reused in this pass
            s, kind, sent = entry
            try:
                if kind == "hog" and sent[0] < len(PIPELINE):
                    sent[0] += s.send(PIPELINE[sent[0]:sent[0] + 65536])
                elif kind == "slow" and time.monotonic() >= next_byte:
                    s.send(b"a")
            except BlockingIOError:
                pass
            except OSError:
                drop(fd)
        if time.monotonic() >= next_byte:
            next_byte += 1.0
    conn.send({"opened": opened, "refused": refused})
    conn.close()


def _start_attack(path: str, kinds: dict[str, int], uid: int | None, children: list) -> tuple:
    ctx = mp.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    parent_end, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_attack_main, name="bench-attacker", args=(path, kinds, uid, ready, stop, child_end),
                       daemon=True)
    proc.start()
    child_end.close()
    children.append(proc)
    if not ready.wait(60):
        raise RuntimeError("the attackers did not connect within 60 s")
    return proc, stop, parent_end


def _stop_attack(attack: tuple, children: list) -> dict:
    proc, stop, conn = attack
    stop.set()
    stats = conn.recv() if conn.poll(30) else {}
    _stop(proc, timeout=5)
    children.remove(proc)
    return stats


def _status_latencies(path: str, count: int) -> list[float]:
    """Milliseconds for `status` on a fresh connection each time, as ratecarectl asks; inf when not answered."""
    request = b"GET /api/v1/circuit-breaker/status HTTP/1.1\r\nHost: ratecared\r\nConnection: close\r\n\r\n"
    out = []
    for _ in range(count):
        t = time.perf_counter()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(path)
                s.sendall(request)
                ok = _read_response(s)[9:12] == b"200"
        except OSError:
            ok = False
        out.append((time.perf_counter() - t) * 1000 if ok else float("inf"))
        time.sleep(0.05)
    return out


def _status_as(uid: int, path: str, count: int, conn) -> None:
    _become(uid)
    conn.send(_status_latencies(path, count))
    conn.close()


def attack_phase(mode: str, path: str, daemon_pid: int, sampler, args, children: list, log) -> dict:
    """One legitimate client's pairs, or timed status calls in `fair`, while attackers hold connections."""
    kinds = {"attack": {"slow": 200, "hog": 50}, "flood": {"hog": 200}, "fair": {"idle": 500, "slow": 500}}[mode]
    attacker = 65534 if mode == "fair" else None
    t0 = time.monotonic()
    attack = _start_attack(path, kinds, attacker, children)
    try:
        # Let the attack settle: hogs fill their buffers, the first slowloris heads start their clocks.
        time.sleep(2.0)
        if mode == "fair":
            ctx = mp.get_context("fork")
            parent_end, child_end = ctx.Pipe(duplex=False)
            other = ctx.Process(target=_status_as, args=(65533, path, 100, child_end), daemon=True)
            other.start()
            child_end.close()
            children.append(other)
            root = sorted(_status_latencies(path, 100))
            others = sorted(parent_end.recv())
            other.join(10)
            children.remove(other)
            result = {
                "root_status_p50_ms": round(_percentile([int(x * 1e6) for x in root], 50), 3),
                "root_status_p99_ms": round(_percentile([int(x * 1e6) if x != float("inf") else 10**12
                                                         for x in root], 99), 3),
                "root_answered": sum(x != float("inf") for x in root), "root_asked": len(root),
                "other_uid_answered": sum(x != float("inf") for x in others), "other_uid_asked": len(others),
                "other_uid_p99_ms": round(_percentile([int(x * 1e6) if x != float("inf") else 10**12
                                                       for x in others], 99), 3),
            }
        else:
            one = argparse.Namespace(**{**vars(args), "clients": 1})
            r = run_phase(path, "single", daemon_pid, one, validate=True, children=children)
            result = {k: r[k] for k in ("pairs_per_s", "p50_ms", "p99_ms", "p999_ms", "max_ms", "errors")}
    finally:
        stats = _stop_attack(attack, children)
    result["attackers"] = kinds
    result["attack_connections_opened"] = stats.get("opened")
    result["attack_refused_503"] = stats.get("refused")
    result["peak_rss_mb"] = round(sampler.peak_mb(t0, time.monotonic()) or 0, 1)
    return result


# -- durable: what a transition costs ---------------------------------------------


def _timed(sock: socket.socket, request: bytes) -> tuple[bytes, int]:
    start = time.perf_counter_ns()
    sock.sendall(request)
    return _read_response(sock), time.perf_counter_ns() - start


def _trip_and_reset(path: str, seconds: float) -> dict:
    """Trip booking and reset it for `seconds` from one connection; time each reply."""
    acquire = _request(f"{PREFIX}/booking/acquire")
    reset = _request(f"{PREFIX}/reset", b'{"platform":"booking"}')
    plain, carrying = [], []     # ns: replies without a transition, and those that carry one
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            reply, ns = _timed(sock, acquire)
            plain.append(ns)
            permit = PERMIT_RE.search(reply)
            if permit is None:           # open: the reset's reply carries open -> closed
                carrying.append(_timed(sock, reset)[1])
                continue
            body = b'{"permit":"' + permit.group(1) + b'","success":false,"duration_ms":1}'
            reply, ns = _timed(sock, _request(f"{PREFIX}/booking/report", body))
            (carrying if b'"state":"open"' in reply else plain).append(ns)
    finally:
        sock.close()
    plain.sort()
    carrying.sort()
    return {
        "decisions": len(plain), "decision_p50_ms": round(_percentile(plain, 50), 3),
        "decision_p99_ms": round(_percentile(plain, 99), 3), "decision_max_ms": round(plain[-1] / 1e6, 3),
        "transitions": len(carrying), "transition_p50_ms": round(_percentile(carrying, 50), 3),
        "transition_p99_ms": round(_percentile(carrying, 99), 3),
        "transition_max_ms": round(carrying[-1] / 1e6, 3) if carrying else None,
    }


def durable_phase(path: str, database: Path, seconds: float, log) -> dict:
    """The SQLite daemon's breakers with the database free, then locked by another process (BEGIN IMMEDIATE)."""
    from conftest import sqlite_locked  # the tests' own lock; needs the venv's pytest

    out: dict = {}
    for case, held in (("free", contextlib.nullcontext), ("locked", lambda: sqlite_locked(database))):
        log(f"durable: {seconds:g} s, SQLite {case} ...")
        with held():
            out[case] = _trip_and_reset(path, seconds)
    return out


def durable_mariadb_phase(tmp: Path, args, children: list, log) -> dict | None:
    """A second daemon, on a private MariaDB: free, then hung (SIGSTOP: it takes connections and answers
    nothing), then killed. None when there is no mariadbd here."""
    import mariadb as harness  # tests/mariadb.py; needs PyMySQL, which the venv has

    if not harness.available():
        log("durable on MariaDB: skipped (no mariadbd; apt-get install mariadb-server)")
        return None
    base = tmp / "mariadb"
    base.mkdir()
    server = harness.MariaDB(base)
    daemon = None
    try:
        server.start()
        url = server.create_database("rc_bench")
        config = _write_config(tmp, url, name="mariadb")
        daemon = subprocess.Popen(_daemon_argv(config, None), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        children.append(daemon)
        path = str(tmp / "rc-mariadb.sock")
        wait_ready(daemon, path)

        @contextlib.contextmanager
        def killed() -> Iterator[None]:
            server.kill()
            yield

        out: dict = {}
        for case, held in (("free", contextlib.nullcontext), ("hung", server.hung), ("killed", killed)):
            log(f"durable: {args.seconds:g} s, MariaDB {case} ...")
            with held():
                out[case] = _trip_and_reset(path, args.seconds)
        return out
    finally:
        if daemon is not None:
            _stop(daemon)
            children.remove(daemon)
        server.close()


def _event_loop(path: str) -> str:
    """The loop a daemon serves on, as its health says."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    try:
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: ratecared\r\n\r\n")
        return json.loads(_body(_read_response(sock)))["data"]["event_loop"]
    finally:
        sock.close()


def other_loop_phases(tmp: Path, loop: str, phases: dict, args, children: list, log) -> dict | None:
    """single and batch again on a second daemon, on asyncio's own loop when the first is on uvloop, or on
    uvloop when it is installed and the first is not: beside the first, never judged. Its ratio is to the
    same echo run. None when there is no other loop here."""
    modes = [m for m in ("single", "batch") if m in phases]
    other = "asyncio" if loop.startswith("uvloop") else "uvloop"
    if not modes or (other == "uvloop" and importlib.util.find_spec("uvloop") is None):
        return None
    daemon = subprocess.Popen(_daemon_argv(_write_config(tmp, name=other, event_loop=other), None),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    children.append(daemon)
    try:
        path = str(tmp / f"rc-{other}.sock")
        wait_ready(daemon, path)
        out: dict = {"loop": _event_loop(path)}
        for mode in modes:
            log(f"{mode}: daemon on {out['loop']}, {args.clients} clients x {args.seconds:g} s ...")
            d = run_phase(path, mode, daemon.pid, args, validate=True, children=children)
            for k in ("t0", "t1", "last_acquire", "last_report"):
                d.pop(k)
            d["ratio_to_echo"] = round(d["pairs_per_s"] / phases[mode]["echo"]["pairs_per_s"], 3)
            out[mode] = d
        return out
    finally:
        _stop(daemon)
        children.remove(daemon)


# -- /proc ---------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _machine_cpu() -> list[int]:
    """Jiffies of all CPUs from /proc/stat: user nice system idle iowait irq softirq steal."""
    with open("/proc/stat", "rb") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def _machine_usage(before: list[int], after: list[int], accounted_cpu_s: float) -> dict:
    """Whole-host busy and steal %, and `other`: host CPU used by neither the server nor the clients."""
    d = [b - a for a, b in zip(before, after)]
    total = sum(d) or 1
    busy = total - d[3] - d[4] - d[7]
    other = busy / CLK_TCK - accounted_cpu_s
    return {"host_busy_pct": round(100 * busy / total, 1),
            "host_steal_pct": round(100 * d[7] / total, 1),
            "host_other_pct": round(max(0.0, 100 * other * CLK_TCK / total), 1)}


def _schedstat(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for one) of the process's main thread: the event loop."""
    with open(f"/proc/{pid}/schedstat", "rb") as f:
        run, wait, _ = f.read().split()
    return int(run), int(wait)


# -- the daemon --------------------------------------------------------------------


def _daemon_argv(config: Path, cprofile: str | None) -> list[str]:
    script = Path(sys.executable).parent / "ratecared"
    if not script.exists():
        found = shutil.which("ratecared")
        script = Path(found) if found else None  # type: ignore[assignment]
    if cprofile:
        if script is None:
            raise SystemExit("--cprofile needs the ratecared console script")
        return [sys.executable, "-m", "cProfile", "-o", cprofile, str(script), "--config", str(config)]
    if script is not None:
        return [str(script), "--config", str(config)]
    return [sys.executable, "-c", "import sys; from ratecared.cli import main; sys.exit(main())",
            "--config", str(config)]


def _stop(proc: subprocess.Popen | mp.Process | None, timeout: float = 10.0) -> None:
    if proc is None:
        return
    if isinstance(proc, subprocess.Popen):
        stop_process(proc, timeout)
    elif proc.is_alive():
        proc.terminate()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()


# -- one phase -----------------------------------------------------------------------


def _percentile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return float("nan")
    k = max(0, min(len(sorted_ns) - 1, math.ceil(q / 100 * len(sorted_ns)) - 1))   # nearest rank
    return sorted_ns[k] / 1e6


def run_phase(path: str, mode: str, server_pid: int, args, validate: bool, children: list) -> dict:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(args.clients + 1)
    pipes, procs = [], []
    for i in range(args.clients):
        parent_end, child_end = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_client_main, name=f"bench-client-{i}",
                        args=(path, mode, i, args.seconds, args.warmup, validate, barrier, child_end), daemon=True)
        p.start()
        child_end.close()
        pipes.append(parent_end)
        procs.append(p)
        children.append(p)
    results, failures = [], []
    finished = False
    try:
        try:
            barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            pass
        t0 = time.monotonic()
        cpu0 = _cpu_seconds(server_pid)
        sched0 = _schedstat(server_pid)
        machine0 = _machine_cpu()
        for conn in pipes:
            try:
                msg = conn.recv()
            except EOFError:
                failures.append("a client died without reporting")
                continue
            (failures.append(msg["error"]) if "error" in msg else results.append(msg))
        cpu1 = _cpu_seconds(server_pid)
        sched1 = _schedstat(server_pid)
        machine1 = _machine_cpu()
        t1 = time.monotonic()
        finished = True
    finally:
        for conn in pipes:
            conn.close()
        for p in procs:
            if finished:
                p.join(5)
            _stop(p, timeout=2)
            children.remove(p)
    if failures:
        raise RuntimeError("; ".join(failures))
    problems = [r["problem"] for r in results if r["problem"]]
    if problems:
        raise RuntimeError(problems[0])
    samples: list[int] = []
    for r in results:
        a = array("q")
        a.frombytes(r["samples"])
        samples.extend(a)
    samples.sort()
    window = (max(r["end"] for r in results) - min(r["start"] for r in results)) / 1e9
    pairs = len(samples)
    per_pair = 1 if mode == "single" else len(PLATFORMS)
    pairs_s = pairs / window
    return {
        "pairs": pairs,
        "errors": sum(r["errors"] for r in results),
        "window_s": round(window, 3),
        "pairs_per_s": round(pairs_s, 1),
        "requests_per_s": round(2 * pairs_s, 1),
        "decisions_per_s": round(pairs_s * per_pair, 1),
        "p50_ms": round(_percentile(samples, 50), 3),
        "p99_ms": round(_percentile(samples, 99), 3),
        "p999_ms": round(_percentile(samples, 99.9), 3),
        "max_ms": round(samples[-1] / 1e6, 3) if samples else None,
        "mean_ms": round(sum(samples) / pairs / 1e6, 3) if samples else None,
        "server_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "server_main_thread_on_cpu_pct": round(100 * (sched1[0] - sched0[0]) / 1e9 / (t1 - t0), 1),
        "server_main_thread_runqueue_wait_pct": round(100 * (sched1[1] - sched0[1]) / 1e9 / (t1 - t0), 1),
        "server_cpu_us_per_pair": round(1e6 * (cpu1 - cpu0) / pairs, 1) if pairs else None,
        "client_cpu_us_per_pair": round(1e6 * sum(r["cpu"] for r in results) / pairs, 1) if pairs else None,
        **_machine_usage(machine0, machine1, (cpu1 - cpu0) + sum(r["cpu"] for r in results)),
        "t0": t0, "t1": t1,
        "last_acquire": results[0]["last_acquire"], "last_report": results[0]["last_report"],
    }


# -- main ----------------------------------------------------------------------------


def _write_config(tmp: Path, url: str | None = None, name: str = "", event_loop: str = "auto") -> Path:
    """The bench daemon's config: SQLite in `tmp` unless `url`; `name` tells a second daemon's socket apart."""
    suffix = f"-{name}" if name else ""
    config = tmp / f"ratecared{suffix}.toml"
    # As root, nobody's group may use the socket: the fair phase's attackers and other uid are in it.
    group = ""
    if os.geteuid() == 0:
        import grp
        import pwd
        group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
        os.chmod(tmp, 0o755)
    config.write_text(
        "[daemon]\n"
        f'socket = "{tmp}/rc{suffix}.sock"\n'
        f'socket_group = "{group}"\n'
        'admin_group = ""\n'
        f'state_dir = "{tmp}/state{suffix}"\n'
        f'event_loop = "{event_loop}"\n'
        "[database]\n"
        f'url = "{url or f"sqlite:///{tmp}/rc{suffix}.db"}"\n'
        "auto_migrate = true\n"
        "connect_timeout = 1\n"
        "[logging]\n"
        f'dir = "{tmp}/logs{suffix}"\n'
    )
    return config


def _peer_phase(tmp: Path, mode: str, main, canned_acquire: bytes, canned_report: bytes, args,
                children: list) -> dict:
    """One phase against a peer server (`_echo_main` or `_httptools_main`) forked with the daemon's replies."""
    name = main.__name__.strip("_").removesuffix("_main")
    path = str(tmp / f"{name}-{mode}.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(1024)
    server = mp.get_context("fork").Process(target=main, name=f"bench-{name}-{mode}",
                                            args=(lsock, canned_acquire, canned_report), daemon=True)
    server.start()
    lsock.close()
    children.append(server)
    try:
        return run_phase(path, mode, server.pid, args, validate=True, children=children)
    finally:
        _stop(server, timeout=2)
        children.remove(server)


def bench(args, log) -> dict:
    children: list = []
    daemon: subprocess.Popen | None = None
    sampler: RssSampler | None = None
    tmp = Path(tempfile.mkdtemp(prefix="rc-bench-"))
    if len(os.fsencode(tmp / "echo-single.sock")) > 107:     # a Unix socket path's limit; TMPDIR is too deep
        shutil.rmtree(tmp, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix="rc-bench-", dir="/tmp"))
    daemon_out = None
    try:
        config = _write_config(tmp)
        sock_path = str(tmp / "rc.sock")
        daemon_out = open(tmp / "daemon.out", "wb")
        argv = _daemon_argv(config, args.cprofile)
        daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=daemon_out, stderr=subprocess.STDOUT,
                                  start_new_session=True)   # Ctrl-C reaches us only; we stop it
        sampler = RssSampler(daemon.pid)
        sampler.start()
        wait_ready(daemon, sock_path)
        log(f"daemon pid {daemon.pid} ready on {sock_path}; RSS {(rss_kb(daemon.pid) or 0) / 1024:.1f} MB")

        phases: dict[str, dict] = {}
        loop = _event_loop(sock_path)
        log(f"daemon on {loop}")
        threads = 0     # the daemon's, at the end of each phase: for the unit's TasksMax
        for mode in [m for m in args.phases if m in ("single", "batch")]:
            log(f"{mode}: daemon, {args.clients} clients x {args.seconds:g} s ...")
            d = run_phase(sock_path, mode, daemon.pid, args, validate=True, children=children)
            d["peak_rss_mb"] = round(sampler.peak_mb(d["t0"], d["t1"]) or 0, 1)
            log(f"{mode}: echo baseline ...")
            e = _peer_phase(tmp, mode, _echo_main, d["last_acquire"], d["last_report"], args, children)
            log(f"{mode}: minimal httptools server ...")
            h = _peer_phase(tmp, mode, _httptools_main, d["last_acquire"], d["last_report"], args, children)
            for r in (d, e, h):
                for k in ("t0", "t1", "last_acquire", "last_report"):
                    r.pop(k)
            d["ratio_to_echo"] = round(d["pairs_per_s"] / e["pairs_per_s"], 3)
            d["ratio_to_httptools"] = round(d["pairs_per_s"] / h["pairs_per_s"], 3)
            h["ratio_to_echo"] = round(h["pairs_per_s"] / e["pairs_per_s"], 3)
            phases[mode] = {"daemon": d, "echo": e, "httptools": h}
            threads = max(threads, rss_kb(daemon.pid, "Threads:") or 0)
        other = other_loop_phases(tmp, loop, phases, args, children, log)

        for mode in [m for m in args.phases if m in ATTACKS]:
            if mode == "fair" and os.geteuid() != 0:
                log("fair: skipped (connecting as other uids needs root)")
                continue
            log(f"{mode}: {args.seconds:g} s under attack ...")
            phases[mode] = {"daemon": attack_phase(mode, sock_path, daemon.pid, sampler, args, children, log)}
            threads = max(threads, rss_kb(daemon.pid, "Threads:") or 0)
            # The attackers' sockets are closed; give the daemon a moment to see them go.
            time.sleep(1)
        if "durable" in args.phases:
            cases = {f"SQLite {case}": r for case, r in durable_phase(sock_path, tmp / "rc.db", args.seconds, log).items()}
            on_mariadb = durable_mariadb_phase(tmp, args, children, log) or {}
            cases.update({f"MariaDB {case}": r for case, r in on_mariadb.items()})
            phases["durable"] = {"daemon": cases}

        hwm = rss_kb(daemon.pid, "VmHWM:")
        sampler.stopping.set()
        sampler.join()
        peak = sampler.peak_mb()
        _stop(daemon)
        if daemon.returncode not in (0, None):
            log(f"warning: the daemon exited with status {daemon.returncode}")
        return {
            "clients": args.clients,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "cpus": os.cpu_count(),
            "python": platform_mod.python_version(),
            "daemon_peak_rss_mb": round(peak or 0, 1),
            "daemon_vmhwm_mb": round(hwm / 1024, 1) if hwm else None,
            "daemon_threads": threads,
            "cprofile": args.cprofile,
            "event_loop": loop,
            "other_loop": other,
            "phases": phases,
        }
    except Exception:
        if daemon_out is not None and (tmp / "daemon.out").exists():
            daemon_out.flush()
            tail = (tmp / "daemon.out").read_bytes()[-3000:].decode(errors="replace")
            if tail.strip():
                log("daemon output (tail):\n" + tail)
        raise
    finally:
        for child in list(children):
            _stop(child, timeout=2)
        if sampler is not None:
            sampler.stopping.set()
        _stop(daemon)
        if daemon_out is not None:
            daemon_out.close()
        shutil.rmtree(tmp, ignore_errors=True)


def floors(result: dict) -> list[tuple[str, str, bool]]:
    checks = []
    phases = result["phases"]
    if "single" in phases:
        d = phases["single"]["daemon"]
        checks.append((f"single decisions/s >= {FLOOR_SINGLE:,}", f"{d['decisions_per_s']:,.0f}",
                       d["decisions_per_s"] >= FLOOR_SINGLE))
        checks.append((f"single p99 < {FLOOR_P99_MS:g} ms", f"{d['p99_ms']:.3f} ms", d["p99_ms"] < FLOOR_P99_MS))
        checks.append((f"single ratio to the echo >= {FLOOR_SINGLE_RATIO:g}", f"{d['ratio_to_echo']:.3f}",
                       d["ratio_to_echo"] >= FLOOR_SINGLE_RATIO))
    if "batch" in phases:
        d = phases["batch"]["daemon"]
        checks.append((f"batch platform decisions/s >= {FLOOR_BATCH:,}", f"{d['decisions_per_s']:,.0f}",
                       d["decisions_per_s"] >= FLOOR_BATCH))
        checks.append((f"batch p99 < {FLOOR_P99_MS:g} ms", f"{d['p99_ms']:.3f} ms", d["p99_ms"] < FLOOR_P99_MS))
    rss = max((phases[m]["daemon"]["peak_rss_mb"] for m in ("single", "batch") if m in phases), default=0.0)
    checks.append((f"daemon peak RSS < {FLOOR_RSS_MB:g} MB", f"{rss:.1f} MB", rss < FLOOR_RSS_MB))
    for mode in ("attack", "flood"):
        if mode in phases:
            d = phases[mode]["daemon"]
            checks.append((f"{mode}: client p99 < {FLOOR_ATTACK_P99_MS:g} ms", f"{d['p99_ms']:.3f} ms",
                           d["p99_ms"] < FLOOR_ATTACK_P99_MS))
            checks.append((f"{mode}: daemon RSS < {FLOOR_ATTACK_RSS_MB:g} MB", f"{d['peak_rss_mb']:.1f} MB",
                           d["peak_rss_mb"] < FLOOR_ATTACK_RSS_MB))
    if "fair" in phases:
        d = phases["fair"]["daemon"]
        checks.append((f"fair: root status p99 < {FLOOR_ROOT_STATUS_MS:g} ms", f"{d['root_status_p99_ms']:.3f} ms",
                       d["root_status_p99_ms"] < FLOOR_ROOT_STATUS_MS))
        checks.append(("fair: other uid answered", f"{d['other_uid_answered']}/{d['other_uid_asked']}",
                       d["other_uid_answered"] == d["other_uid_asked"]))
    for case, d in phases.get("durable", {}).get("daemon", {}).items():
        if not case.endswith(" free"):
            checks.append((f"durable: {case} p99 < {FLOOR_LOCKED_P99_MS:g} ms", f"{d['decision_p99_ms']:.3f} ms",
                           d["decision_p99_ms"] < FLOOR_LOCKED_P99_MS))
    errors = sum(p[t]["errors"] for p in phases.values() for t in ("daemon", "echo") if t in p and "errors" in p[t])
    checks.append(("no failed requests", str(errors), errors == 0))
    return checks


def report_text(result: dict, checks) -> str:
    out = [f"ratecared breaker socket bench: {result['clients']} clients x {result['seconds']:g} s per phase "
           f"(+{result['warmup']:g} s warm-up), {result['cpus']} CPUs, Python {result['python']}"
           + (f", daemon under cProfile -> {result['cprofile']}" if result["cprofile"] else "")]
    out.append("")
    head = (f"{'phase':<7} {'server':<9} {'pairs/s':>9} {'decisions/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'p99.9 ms':>9} {'max ms':>8} {'srv CPU':>8} {'srv wait':>8} {'srv us/pair':>11} {'cli us/pair':>11} {'host busy':>9} "
            f"{'other':>5} {'errors':>6}")
    out.append(head)
    out.append("-" * len(head))
    for mode, p in result["phases"].items():
        if mode not in ("single", "batch"):
            continue
        for who in ("daemon", "echo", "httptools"):
            if who not in p:
                continue
            r = p[who]
            decisions = f"{r['decisions_per_s']:,.0f}" if who == "daemon" else "-"
            out.append(f"{mode:<7} {who:<9} {r['pairs_per_s']:>9,.0f} {decisions:>12} {r['p50_ms']:>8.3f} "
                       f"{r['p99_ms']:>8.3f} {r['p999_ms']:>9.3f} {r['max_ms']:>8.3f} {r['server_cpu_pct']:>7.0f}% "
                       f"{r['server_main_thread_runqueue_wait_pct']:>7.0f}% "
                       f"{r['server_cpu_us_per_pair']:>11.1f} {r['client_cpu_us_per_pair']:>11.1f} "
                       f"{r['host_busy_pct']:>8.0f}% {r['host_other_pct']:>4.0f}% {r['errors']:>6}")
        d = p["daemon"]
        out.append(f"{mode:<7} ratio daemon/echo throughput: {d['ratio_to_echo']:.3f}   "
                   f"daemon peak RSS in phase: {d['peak_rss_mb']:.1f} MB   (daemon on {result['event_loop']})")
        if "httptools" in p:
            out.append(f"{mode:<7} ratio daemon/httptools: {d['ratio_to_httptools']:.3f}   httptools/echo: "
                       f"{p['httptools']['ratio_to_echo']:.3f} (the minimal httptools server on the same loop; "
                       "not judged)")
        other = (result["other_loop"] or {}).get(mode)
        if other is not None:
            out.append(f"{mode:<7} the same on {result['other_loop']['loop']}: {other['pairs_per_s']:,.0f} pairs/s, "
                       f"{other['decisions_per_s']:,.0f} decisions/s, p50 {other['p50_ms']:.3f} ms, "
                       f"p99 {other['p99_ms']:.3f} ms, {other['server_cpu_us_per_pair']:.1f} us/pair, "
                       f"ratio {other['ratio_to_echo']:.3f} (not judged)")
        busy = max(r["host_other_pct"] for r in p.values())
        if busy > 10:
            out.append(f"{mode:<7} warning: processes outside the bench used up to {busy:.0f}% of the host; "
                       "the figures are pessimistic")
        out.append("")
    for mode in ("attack", "flood"):
        if mode in result["phases"]:
            r = result["phases"][mode]["daemon"]
            out.append(f"{mode:<7} attackers {r['attackers']} ({r['attack_connections_opened']} connections opened, "
                       f"{r['attack_refused_503']} refused with 503): one client {r['pairs_per_s']:,.0f} pairs/s, "
                       f"p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, max {r['max_ms']:.3f} ms, "
                       f"{r['errors']} errors; daemon peak RSS {r['peak_rss_mb']:.1f} MB")
    if "fair" in result["phases"]:
        r = result["phases"]["fair"]["daemon"]
        out.append(f"fair    attackers {r['attackers']} as uid 65534 ({r['attack_connections_opened']} connections "
                   f"opened, {r['attack_refused_503']} refused with 503): root status {r['root_answered']}/"
                   f"{r['root_asked']} answered, p50 {r['root_status_p50_ms']:.3f} ms, p99 "
                   f"{r['root_status_p99_ms']:.3f} ms; uid 65533 {r['other_uid_answered']}/{r['other_uid_asked']} "
                   f"answered, p99 {r['other_uid_p99_ms']:.3f} ms; daemon peak RSS {r['peak_rss_mb']:.1f} MB")
    for case, r in result["phases"].get("durable", {}).get("daemon", {}).items():
        out.append(f"durable {case:<14}: {r['decisions']:,} decisions p50 {r['decision_p50_ms']:.3f} ms, "
                   f"p99 {r['decision_p99_ms']:.3f} ms, max {r['decision_max_ms']:.3f} ms; {r['transitions']:,} "
                   f"replies carrying a transition p50 {r['transition_p50_ms']:.3f} ms, "
                   f"p99 {r['transition_p99_ms']:.3f} ms, max {r['transition_max_ms']} ms")
    out.append("")
    out.append(f"daemon peak RSS (VmRSS every {RSS_INTERVAL * 1000:.0f} ms): {result['daemon_peak_rss_mb']:.1f} MB"
               f"   (kernel VmHWM: {result['daemon_vmhwm_mb']} MB); daemon threads: {result['daemon_threads']}")
    out.append("srv CPU: server process CPU, 100% = one core; srv wait: share of the time its event loop was "
               "runnable but waiting for a CPU;\nsrv/cli us/pair: CPU microseconds per acquire+report pair; "
               "host busy/other: whole host, and the part used outside the bench (100% = all CPUs)")
    out.append("")
    out.append(f"goals (issue 12, not judged): single ratio to the echo >= {GOAL_SINGLE_RATIO:g}, batched "
               f"decisions >= {GOAL_BATCH:,}/s")
    out.append("")
    out.append("floors:")
    out.extend(verdict_lines(checks, name_width=38, value_width=14))
    return "\n".join(out)


class Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per phase and server [5]")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured warm-up seconds per phase [0.5]")
    parser.add_argument("--clients", type=int, default=8, help="client processes, one connection each [8]")
    parser.add_argument("--phases", default="single,batch,attack,flood,fair,durable",
                        help="comma-separated: single,batch,attack,flood,fair,durable [all; fair only as root]")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on stdout")
    parser.add_argument("--cprofile", metavar="PATH",
                        help="run the daemon under cProfile and write its stats to PATH (skews the figures)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not args.phases or any(p not in ("single", "batch", *ATTACKS, "durable") for p in args.phases):
        parser.error("--phases takes single, batch, attack, flood, fair and durable")
    if args.clients < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--clients >= 1, --seconds > 0, --warmup >= 0")
    if args.cprofile:
        args.cprofile = str(Path(args.cprofile).resolve())

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[bench] {msg}", file=sys.stderr, flush=True)

    # Ctrl-C and SIGTERM unwind through bench()'s finally: daemon, echo server, clients, temp dir.
    def interrupted(signum: int, frame) -> None:
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    try:
        result = bench(args, log)
    except Interrupted as exc:
        print(f"[bench] {signal.Signals(exc.signum).name}: stopped; daemon, echo server, clients and temp dir "
              "cleaned up", file=sys.stderr)
        return 128 + exc.signum
    except Exception as exc:  # noqa: BLE001
        print(f"[bench] error: {exc}", file=sys.stderr)
        return 1
    checks = floors(result)
    verdict = judged(result, checks)
    passed = verdict["pass"]
    if args.json:
        print(json.dumps(verdict, indent=None, separators=(",", ":")))
    else:
        print(report_text(result, checks))
    if args.cprofile:
        import pstats
        log(f"cProfile stats in {args.cprofile}; top 30 by own time:")
        if not args.quiet:
            pstats.Stats(args.cprofile, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
