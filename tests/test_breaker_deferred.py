"""The journal's fdatasync off the event loop: a held transition reply, and everyone else answered meanwhile.

An in-process control server (the real Api, ControlServer and BreakerJournal)
whose journal fdatasync the test holds: the reply that shows the new state
waits for it, with the replies pipelined behind it on its connection, while
other connections and other platforms are answered. No lower bound on time
is asserted anywhere: each wait polls up to a generous limit.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import pytest
from conftest import wait_for

from ratecared import breaker_journal
from ratecared.breaker.machine import Policy
from ratecared.breaker.registry import Registry
from ratecared.breaker_journal import BreakerJournal
from ratecared.control.api import Api, Scrapes
from ratecared.control.server import ControlServer, bind_unix
from ratecared.events import EventLog

WAIT = 10.0


class Log:
    def __init__(self) -> None:
        self.errors: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, **kw: Any) -> None:
        self.errors.append((event, kw))

    def info(self, event: str, **kw: Any) -> None:
        pass

    warning = info


class Gate:
    """The journal's fdatasync, held while `closed`; `fail` makes it refuse as a broken disk does."""

    def __init__(self) -> None:
        self.closed = False
        self.fail: OSError | None = None
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, fd: int) -> None:
        if self.closed:
            self.entered.set()
            assert self.opened.wait(WAIT * 3)
        if self.fail is not None:
            raise self.fail
        os.fdatasync(fd)


@dataclass
class Limits:
    max_connections: int = 64
    max_connections_per_uid: int = 64
    reserved_admin_connections: int = 0
    header_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_body_bytes: int = 65536


@dataclass
class Served:
    path: str
    gate: Gate
    log: Log
    journal: BreakerJournal
    registry: Registry

    def rejected(self, platform: str) -> int:
        """How many acquires the breaker has refused: read without waiting for the journal."""
        return next(view.total_rejected for view in self.registry.status_later().value if view.platform == platform)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    gate, log = Gate(), Log()
    journal = BreakerJournal(tmp_path / "state", "web1", "sqlite:///x.db", log, fdatasync=gate)
    journal.open(breaker_journal._utc_now())
    registry = Registry(("booking", "expedia"), Policy(failure_threshold=1, open_seconds=600), journal=journal)
    executor = ThreadPoolExecutor(max_workers=1)
    api = Api(registry, None, settings=None, health=lambda: {}, reload=lambda peer: {},  # type: ignore[arg-type]
              is_admin=lambda peer: True, executor=executor, scrapes=Scrapes(lambda: b"", executor),
              events=EventLog(None, "web1", log), cluster=None,  # type: ignore[arg-type]
              tz=lambda: ZoneInfo("UTC"))
    path = tmp_path / "ratecared.sock"
    sock = bind_unix(path, None)
    loop = asyncio.new_event_loop()
    server = ControlServer(api.handle, Limits)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start(sock))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(WAIT)
    try:
        yield Served(str(path), gate, log, journal, registry)
    finally:
        gate.opened.set()
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(WAIT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()
        journal.close()
        executor.shutdown(wait=False)


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect(path)
    return sock


def post(path: str, body: Any = None) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    return (f"POST /api/v1/{path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data


class Reader:
    """Whole HTTP answers off one socket, in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def answer(self, timeout: float = WAIT) -> tuple[int, Any]:
        self.sock.settimeout(timeout)
        while True:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if sep:
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                if len(rest) >= length:
                    self.buffer = rest[length:]
                    return int(head.split(b" ", 2)[1]), json.loads(rest[:length])
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.buffer += data

    def nothing_yet(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.buffer += self.sock.recv(65536)
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        return not self.buffer


def test_a_transition_reply_waits_for_the_fsync_and_nobody_else_does(served: Served) -> None:
    a, b, c = (connect(served.path) for _ in range(3))
    ra, rb, rc = Reader(a), Reader(b), Reader(c)
    a.sendall(post("circuit-breaker/booking/acquire"))
    status, body = ra.answer()
    permit = body["data"]["permit"]
    assert status == 200 and permit

    served.gate.closed = True
    # The failure that opens booking, and a request pipelined behind it on the same connection.
    a.sendall(post("circuit-breaker/booking/report", {"permit": permit, "success": False})
              + post("circuit-breaker/expedia/acquire"))
    assert served.gate.entered.wait(WAIT), "the journal's writer never reached its fdatasync"

    # While the fsync is held: another connection's decision on another platform, and a status of
    # booking's opposite number, are answered.
    b.sendall(post("circuit-breaker/expedia/acquire"))
    status, body = rb.answer()
    assert status == 200 and body["data"]["allowed"] is True and body["data"]["state"] == "closed"
    b.sendall(post("circuit-breaker/acquire", {"platforms": ["expedia"]}))
    assert rb.answer()[1]["data"]["expedia"]["state"] == "closed"
    # A decision that would show booking open waits with the transition.
    c.sendall(post("circuit-breaker/booking/acquire"))
    b.sendall(b"GET /api/v1/circuit-breaker/status HTTP/1.1\r\nHost: x\r\n\r\n")
    b.sendall(post("circuit-breaker/expedia/acquire"))
    # The daemon has decided c's acquire (refused: booking is open), and none of the held ones has gone out.
    wait_for(lambda: served.rejected("booking") == 1, WAIT, what="c's acquire decided")
    assert ra.nothing_yet() and rc.nothing_yet()
    assert served.journal.path.read_text().count("\n") == 1  # written, not yet synced, is held all the same

    served.gate.closed = False
    served.gate.opened.set()
    status, body = ra.answer()
    assert status == 200 and body["data"] == {"counted": True, "state": "open"}
    # The pipelined request is answered after the held one, never before it.
    assert ra.answer()[1]["data"]["state"] == "closed"
    status, body = rc.answer()
    assert body["data"]["allowed"] is False and body["data"]["state"] == "open"
    status, body = rb.answer()
    assert body["data"]["open"] == 1
    assert rb.answer()[1]["data"]["state"] == "closed"
    assert json.loads(served.journal.path.read_text().splitlines()[-1])["state"] == "open"
    assert served.log.errors == []


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_a_refused_fsync_still_answers_the_held_reply_and_is_logged(served: Served, code: int) -> None:
    a, b = connect(served.path), connect(served.path)
    ra, rb = Reader(a), Reader(b)
    a.sendall(post("circuit-breaker/booking/acquire"))
    permit = ra.answer()[1]["data"]["permit"]
    served.gate.closed = True
    served.gate.fail = OSError(code, os.strerror(code))
    a.sendall(post("circuit-breaker/booking/report", {"permit": permit, "success": False}))
    assert served.gate.entered.wait(WAIT)
    b.sendall(post("circuit-breaker/booking/acquire"))
    assert ra.nothing_yet() and rb.nothing_yet()
    served.gate.opened.set()
    # As before the writer thread: the breakers keep answering, and the refusal is logged.
    assert ra.answer()[1]["data"] == {"counted": True, "state": "open"}
    assert rb.answer()[1]["data"]["state"] == "open"
    assert [event for event, _ in served.log.errors] == [
        "cannot write the breaker journal; transitions are durable only once a snapshot is written"]
    assert os.strerror(code) in served.log.errors[0][1]["error"]
    # The line waits for the next write, which the disk takes.
    served.gate.closed, served.gate.fail = False, None
    b.sendall(post("circuit-breaker/expedia/acquire"))
    permit = rb.answer()[1]["data"]["permit"]
    b.sendall(post("circuit-breaker/expedia/report", {"permit": permit, "success": False}))
    assert rb.answer()[1]["data"] == {"counted": True, "state": "open"}
    on_disk = {(row["platform"], row["state"]) for row in map(json.loads, served.journal.path.read_text().splitlines())}
    assert on_disk == {("booking", "open"), ("expedia", "open")}
