"""ratecared.client as an app uses it, against a real daemon and against none."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Iterable

import pytest

from conftest import DaemonProcess, wait_for
from ratecared.client import BreakerOpen, Client, ConnectionDropped, DaemonError, DaemonUnreachable, _dropped

BODY = b'{"status":"success","data":{"allowed":true,"state":"closed","permit":"p1","retry_after":null}}'
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


class ScriptedDaemon:
    """A stand-in for ratecared on a real Unix socket that logs every request line.

    Each request is met by the next step of the script (then `default`):
    "answer" (200, connection kept), "answer_and_hang_up", "hang_up" (read it,
    close without answering), "silent" (read it, never answer) or "held"
    (answer once the test sets `release`).
    """

    def __init__(self, script: Iterable[str] = (), default: str = "answer") -> None:
        self.dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
        self.socket = f"{self.dir}/rc.sock"
        self.script, self.default = list(script), default
        self.requests: list[str] = []
        self.connections = 0
        self.hung_up = threading.Event()
        self.release = threading.Event()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(self.socket)
        self._listener.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            while line := stream.readline():
                length = 0
                while (header := stream.readline()).strip():
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                stream.read(length)
                self.requests.append(line.decode().strip())
                step = self.script.pop(0) if self.script else self.default
                if step == "silent":
                    self._stop.wait()
                if step == "held":
                    self.release.wait(120)
                if step in ("silent", "hang_up"):
                    break
                conn.sendall(ANSWER)
                if step == "answer_and_hang_up":
                    break
        self.hung_up.set()

    def __enter__(self) -> "ScriptedDaemon":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        shutil.rmtree(self.dir)


def test_call_reports_success_and_exceptions_as_failures(daemon: DaemonProcess) -> None:
    client = daemon.client()
    with client.call("booking") as decision:
        assert decision.allowed and decision.permit
    for _ in range(5):
        with pytest.raises(TimeoutError):
            with client.call("booking"):
                raise TimeoutError("booking took 5 s")
    with pytest.raises(BreakerOpen) as info:
        with client.call("booking"):
            pytest.fail("the block must not run while the breaker is open")
    assert info.value.state == "open" and 590 < info.value.retry_after <= 600
    assert "circuit breaker for booking is open; retry in" in str(info.value)
    booking = client.status()["platforms"][0]
    assert (booking["total_successes"], booking["total_failures"], booking["rejected"]) == (1, 5, 1)


def test_batch_round_trip(daemon: DaemonProcess) -> None:
    client = daemon.client()
    decisions = client.acquire_many(["booking", "agoda", "expedia"])
    assert all(d.allowed for d in decisions.values())
    answers = client.report_many([(decisions["booking"], True, 12.0), (decisions["agoda"], False, 5000.0)])
    assert [(a["platform"], a["counted"]) for a in answers] == [("booking", True), ("agoda", True)]


def test_keep_alive_survives_the_daemon_closing_idle_connections(config_factory, daemon_factory) -> None:
    daemon = daemon_factory(config_factory(daemon={"idle_timeout": 0.2}))
    client = daemon.client()
    assert client.acquire("booking").allowed
    # The daemon has closed the idle kept-alive connection: the client finds out and reconnects.
    wait_for(lambda: _dropped(client._conn.sock), what="the daemon closing the idle connection")
    assert client.acquire("booking").allowed


ACQUIRE = "POST /api/v1/circuit-breaker/booking/acquire HTTP/1.1"
STATUS = "GET /api/v1/circuit-breaker/status HTTP/1.1"


def test_nothing_is_sent_twice_on_a_fresh_connection() -> None:
    with ScriptedDaemon(default="hang_up") as daemon:
        client = Client(daemon.socket)
        with pytest.raises(ConnectionDropped, match="closed the connection without answering"):
            client.acquire("booking")
        with pytest.raises(ConnectionDropped):
            client.status()
        assert daemon.requests == [ACQUIRE, STATUS]


def test_a_kept_alive_connection_the_daemon_closed_is_replaced_before_sending() -> None:
    with ScriptedDaemon(["answer_and_hang_up"]) as daemon:
        client = Client(daemon.socket)
        assert client.acquire("booking").allowed
        assert daemon.hung_up.wait(5)
        assert client.acquire("booking").allowed
        assert (daemon.requests, daemon.connections) == ([ACQUIRE, ACQUIRE], 2)


def test_a_read_is_sent_again_on_a_reused_connection_a_post_never() -> None:
    with ScriptedDaemon(["answer", "hang_up", "answer", "hang_up"]) as daemon:
        client = Client(daemon.socket)
        client.status()
        client.status()
        with pytest.raises(ConnectionDropped):
            client.acquire("booking")
        assert daemon.requests == [STATUS, STATUS, STATUS, ACQUIRE]


def test_acquire_and_report_share_one_connection() -> None:
    with ScriptedDaemon() as daemon:
        client = Client(daemon.socket)
        for _ in range(3):
            client.report(client.acquire("booking"), True, 5.0)
        assert (len(daemon.requests), daemon.connections) == (6, 1)


def test_a_silent_daemon_times_out_with_the_seconds_waited() -> None:
    with ScriptedDaemon(default="silent") as daemon:
        with pytest.raises(DaemonUnreachable, match="did not answer in 0.3 s"):
            Client(daemon.socket, timeout=0.3).status()


@pytest.mark.parametrize("name", ["warm cache", "booking/../x", "booking?x=1", "line\nbreak"])
def test_a_platform_name_travels_as_one_path_segment(daemon: DaemonProcess, name: str) -> None:
    with pytest.raises(DaemonError) as info:
        daemon.client().acquire(name)
    assert (info.value.status, info.value.code) == (404, "unknown_platform")


def test_unknown_platform_is_a_daemon_error(daemon: DaemonProcess) -> None:
    with pytest.raises(DaemonError) as info:
        daemon.client().acquire("nosuch")
    assert (info.value.status, info.value.code) == (404, "unknown_platform")


@pytest.mark.parametrize("policy,allowed", [("open", True), ("closed", False)])
def test_unreachable_daemon_follows_the_callers_choice(tmp_path: Path, policy: str, allowed: bool) -> None:
    client = Client(str(tmp_path / "none.sock"), when_unreachable=policy)
    decision = client.acquire("booking")
    assert (decision.allowed, decision.degraded, decision.permit) == (allowed, True, None)
    assert all(d.allowed is allowed for d in client.acquire_many(["booking", "agoda"]).values())
    if allowed:
        with client.call("booking"):
            pass
    else:
        with pytest.raises(BreakerOpen) as info:
            with client.call("booking"):
                pass
        # Not "circuit breaker for booking is unknown": the daemon is what failed.
        assert str(info.value) == (f"calls to booking are refused: cannot reach ratecared at {tmp_path / 'none.sock'}:"
                                   " No such file or directory, and when_unreachable is 'closed'")


def test_unreachable_daemon_raises_by_default(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnreachable, match="No such file or directory"):
        Client(str(tmp_path / "none.sock")).acquire("booking")


def test_call_keeps_the_platforms_answer_when_the_daemon_refuses_its_report(config_factory, daemon_factory) -> None:
    config = config_factory()
    daemon = daemon_factory(config)
    client = daemon.client()
    with client.call("booking"):
        # The daemon restarts while the platform answers: its permits die with it, and the report gets 409.
        daemon.stop()
        daemon = daemon_factory(config)
        answer = "rates"
    assert answer == "rates"
    with pytest.raises(ValueError, match="booking answered 502"):
        with client.call("booking"):
            daemon.stop()
            daemon = daemon_factory(config)
            raise ValueError("booking answered 502")
