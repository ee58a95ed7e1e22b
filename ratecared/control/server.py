"""HTTP/1.1 over a Unix stream socket, as Docker's API is, on asyncio.

Only what the control API needs: Content-Length bodies, keep-alive,
`Expect: 100-continue` (curl sends it for bodies over 1 KiB). Every limit a
misbehaving client could hit is explicit: header size, body size, idle time,
a client that stops reading, and the number of connections. None of them
stalls anyone else, because nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import json
import os
import pwd
import socket
import stat
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
MAX_HEADER_BYTES = 16384
WRITE_BUFFER_HIGH = 256 * 1024

REASONS = {
    100: "Continue", 200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Content Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
    503: "Service Unavailable", 505: "HTTP Version Not Supported",
}


def _head(status: int, reason: str) -> bytes:
    """Status line and fixed headers, up to the Content-Length value."""
    return f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: ".encode("latin-1")


_HEADS = {status: _head(status, reason) for status, reason in REASONS.items()}


class SocketInUse(Exception):
    """Another live process answers on the socket path, or the path is not a socket."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    peer: Peer


@dataclass
class Response:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


def error_response(status: int, code: str, message: str) -> Response:
    body = json.dumps({"status": "error", "error": {"code": code, "message": message}}).encode()
    return Response(status, body)


Handler = Callable[[Request], "Response | Awaitable[Response]"]


class Limits(Protocol):
    """The limits a connection is held to; read from the config in effect when it opens."""

    max_connections: int
    idle_timeout: float
    max_body_bytes: int


def peer_of(sock: socket.socket) -> Peer:
    """Who is on the other end, from the kernel (SO_PEERCRED, SO_PEERGROUPS)."""
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    try:
        # 1024 bytes (256 groups) is the most Python's getsockopt will read.
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        groups = frozenset(struct.unpack(f"{len(raw) // 4}I", raw))
    except OSError:
        groups = _groups_from_database(uid, gid)
    return Peer(pid, uid, gid, groups)


def _groups_from_database(uid: int, gid: int) -> frozenset[int]:
    """The groups /etc/group gives a user, for peers whose groups the kernel cannot list."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return frozenset({gid})
    return frozenset({gid, *(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)})


def bind_unix(path: Path, group: str | None, mode: int = 0o660) -> socket.socket:
    """Bind the control socket, replacing a dead daemon's file but never a live one.

    Raises KeyError for a group that does not exist, before any file is touched.
    """
    gid = grp.getgrnam(group).gr_gid if group else None
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
            os.unlink(path)
        else:
            raise SocketInUse(f"another process is listening on {path}")
        finally:
            probe.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The file is born 0600 so no one outside the group ever sees it open.
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if gid is not None:
        os.chown(path, -1, gid)
    os.chmod(path, mode)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class _Connection(asyncio.Protocol):
    def __init__(self, server: "ControlServer") -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False
        self.closing = False
        self.write_paused = False
        self.sent_continue = False
        self.peer = Peer(-1, -1, -1)
        self.timer: asyncio.TimerHandle | None = None
        self.last_activity = 0.0
        # A reload's new limits hold from the next connection on.
        self.limits = server.limits()
        self.started = 0.0

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server = self.server
        if len(server.connections) >= self.limits.max_connections:
            self._send(error_response(503, "too_many_connections", "too many connections; try again"), close=True)
            return
        server.connections.add(self)
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        sock = transport.get_extra_info("socket")
        try:
            self.peer = peer_of(sock)
        except OSError:
            pass
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        if self.timer:
            self.timer.cancel()

    def pause_writing(self) -> None:
        # A client that sends but does not read: stop reading its requests
        # until it drains, and drop it if it never does (the idle timer).
        self.write_paused = True
        if self.transport:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport and not self.closing:
            self.transport.resume_reading()
            self._arm_timer()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.buffer += data
        self._arm_timer()
        if not self.busy:
            self._process()
        elif len(self.buffer) > MAX_HEADER_BYTES + self.limits.max_body_bytes and self.transport:
            self.transport.pause_reading()

    # -- request handling ------------------------------------------------------

    def _arm_timer(self) -> None:
        # One timer per connection, re-armed lazily when it fires: a request
        # only stamps the time instead of cancelling and scheduling a TimerHandle.
        self.last_activity = self.server.loop.time()
        if self.timer is None:
            self.timer = self.server.loop.call_later(self.limits.idle_timeout, self._idle)

    def _idle(self) -> None:
        self.timer = None
        if self.closing or self.transport is None:
            return
        remaining = self.last_activity + self.limits.idle_timeout - self.server.loop.time()
        if remaining > 0:
            self.timer = self.server.loop.call_later(remaining, self._idle)
            return
        if self.busy:
            self._arm_timer()
            return
        if self.write_paused:
            self.transport.abort()
        elif self.buffer:
            self._send(error_response(408, "request_timeout", "request not completed in time"), close=True)
        else:
            self.transport.close()

    def _process(self) -> None:
        while self.buffer and not self.busy and not self.closing:
            request = self._parse()
            if request is None:
                return
            keep_alive = self._keep_alive(request)
            self.started = time.monotonic()
            try:
                result = self.server.handler(request)
            except Exception:  # noqa: BLE001 - one bad request must not end the server
                self.server.on_error(request)
                result = error_response(500, "internal_error", "internal error; see the daemon's log")
            if isinstance(result, Response):
                self.server.on_answer(request, result.status, time.monotonic() - self.started)
                self._send(result, close=not keep_alive)
            else:
                self.busy = True
                task = self.server.loop.create_task(self._finish(result, request, keep_alive))
                self.server.tasks.add(task)
                task.add_done_callback(self.server.tasks.discard)

    async def _finish(self, pending: Awaitable[Response], request: Request, keep_alive: bool) -> None:
        try:
            response = await pending
        except Exception:  # noqa: BLE001
            self.server.on_error(request)
            response = error_response(500, "internal_error", "internal error; see the daemon's log")
        self.busy = False
        self.server.on_answer(request, response.status, time.monotonic() - self.started)
        if self.closing:
            return
        self._send(response, close=not keep_alive)
        if self.transport and not self.closing:
            self.transport.resume_reading()
            self._arm_timer()
            self._process()

    def _keep_alive(self, request: Request) -> bool:
        connection = request.headers.get("connection", "").lower()
        if request.headers.get(":version") == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"

    def _parse(self) -> Request | None:
        """One complete request off the buffer, or None while it is incomplete."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEADER_BYTES:
                self._send(error_response(431, "header_too_large", "request head over 16 KiB"), close=True)
            return None
        if end > MAX_HEADER_BYTES:
            self._send(error_response(431, "header_too_large", "request head over 16 KiB"), close=True)
            return None
        try:
            head = bytes(self.buffer[:end]).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")
            method, target, version = request_line.split(" ")
            if not version.startswith("HTTP/1."):
                self._send(error_response(505, "bad_version", "only HTTP/1.x is spoken here"), close=True)
                return None
            headers = {":version": version}
            for line in header_lines:
                name, _, value = line.partition(":")
                if not _ or not name or name != name.strip():
                    raise ValueError(line)
                headers[name.lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self._send(error_response(400, "bad_request", "malformed HTTP request"), close=True)
            return None
        if "transfer-encoding" in headers:
            self._send(error_response(411, "length_required", "send a Content-Length, not chunks"), close=True)
            return None
        if length > self.limits.max_body_bytes:
            self._send(
                error_response(413, "body_too_large", f"body over {self.limits.max_body_bytes} bytes"), close=True
            )
            return None
        total = end + 4 + length
        if len(self.buffer) < total:
            if headers.get("expect", "").lower() == "100-continue" and not self.sent_continue:
                self.sent_continue = True
                assert self.transport
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        body = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        self.sent_continue = False
        path, _, query = target.partition("?")
        return Request(method, path, query, headers, body, self.peer)

    def _send(self, response: Response, close: bool) -> None:
        if self.transport is None or self.closing:
            return
        head = _HEADS.get(response.status) or _head(response.status, "Unknown")
        extra = "".join(f"\r\n{k}: {v}" for k, v in response.headers) + ("\r\nConnection: close" if close else "")
        self.transport.write(head + b"%d" % len(response.body) + extra.encode("latin-1") + b"\r\n\r\n"
                             + response.body)
        if close:
            self.closing = True
            self.server.connections.discard(self)
            self.transport.close()


class ControlServer:
    def __init__(
        self,
        handler: Handler,
        limits: Callable[[], Limits],
        *,
        on_error: Callable[[Request], None] = lambda request: None,
        on_answer: Callable[[Request, int, float], None] = lambda request, status, seconds: None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.on_error = on_error
        # Each answered request: (request, HTTP status, seconds taken), for the debug log.
        self.on_answer = on_answer
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.loop: asyncio.AbstractEventLoop
        self._server: asyncio.base_events.Server | None = None
        self.path: Path | None = None

    async def start(self, sock: socket.socket) -> None:
        self.loop = asyncio.get_running_loop()
        self.path = Path(sock.getsockname())
        self._server = await self.loop.create_unix_server(lambda: _Connection(self), sock=sock, backlog=1024)

    def stop_accepting(self) -> None:
        """Stop listening and remove the socket file; connections already open go on."""
        if self._server is not None:
            self._server.close()
        # Once only: by a later call another daemon may have bound the path.
        path, self.path = self.path, None
        if path and os.path.lexists(path):
            try:
                os.unlink(path)
            except OSError:
                pass

    async def close(self, grace: float = 0.0) -> None:
        """Stop listening, give requests in progress up to `grace` seconds to answer, drop every client."""
        if self._server is None:
            return
        self.stop_accepting()
        if self.tasks and grace > 0:
            await asyncio.wait(set(self.tasks), timeout=grace)
        for conn in list(self.connections):
            if conn.transport:
                conn.transport.close()
        self._server = None
