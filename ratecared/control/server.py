"""HTTP/1.1 over a Unix stream socket, as Docker's API is, on asyncio.

httptools (the C parser uvicorn uses) frames the requests; this module keeps
the connection honest around it. Everything a misbehaving client could hold
is bounded and none of it blocks the event loop:

- input: one read of READ_BYTES at a time, fed to the parser FEED_BYTES at a
  time, and nothing more is read or parsed while an answer is awaited, queued
  or unsent, so a pipelining client holds at most one read and the answers of
  one slice;
- output: a client that does not read gets no more answers than the write
  buffer's high-water mark (WRITE_BUFFER_HIGH) and is dropped if it has not
  drained within `idle_timeout`;
- time: a request head must arrive whole within `header_timeout` of its first
  byte, however it trickles; a body within `header_timeout` plus one second
  per BODY_MIN_RATE bytes; an idle kept-alive connection is closed after
  `idle_timeout`. The clocks stop while the daemon, not the client, is the
  one holding things up (an answer in progress, a full write buffer);
- slots: `max_connections` in all, `max_connections_per_uid` for one peer
  uid, and `reserved_admin_connections` of them only for privileged peers
  (root and the admin group), who are not held to the per-uid cap. A
  refused client reads a 503 it can show.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import grp
import json
import os
import pwd
import socket
import stat
import struct
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol, Sequence, cast

import httptools

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
MAX_HEADER_BYTES = 16384
# Small enough that 200 clients that never read hold a few MB between them;
# any one answer larger than this is still written whole.
WRITE_BUFFER_HIGH = 64 * 1024
# One recv() into a buffer the server shares: the default body limit fits in one.
READ_BYTES = 64 * 1024
# The parser cannot stop in the middle of what it is fed, so it is fed in
# slices: a pipelining client can queue at most one slice's worth of requests.
FEED_BYTES = 2048
# A body must keep coming at this rate, after `header_timeout` of grace (Apache's
# mod_reqtimeout MinRate): a local client sends megabytes a second, a slow one
# holding a slot with a 64 KiB body is dropped within header_timeout + 8 s.
BODY_MIN_RATE = 8192
# How often deadlines are looked at, while any connection is open.
SWEEP_SECONDS = 0.1
# A refused client has this long to send its request and read the 503, so that
# it sees an answer instead of a broken pipe; at most this many are drained at
# once, the rest get the 503 and an immediate close.
DRAIN_SECONDS = 1.0
DRAIN_BYTES = 64 * 1024
MAX_DRAINING = 256
# Connections taken off the backlog per wake-up, so that clients already in get their turn in a flood.
ACCEPT_BATCH = 64

REASONS = {
    100: "Continue", 200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Content Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
    503: "Service Unavailable", 505: "HTTP Version Not Supported",
}


JSON = "application/json"


def _head(status: int, reason: str, content_type: str = JSON) -> bytes:
    """Status line and fixed headers, up to the Content-Length value."""
    return f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: ".encode("latin-1")


_HEADS = {status: _head(status, reason) for status, reason in REASONS.items()}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Deadlines are compared only with each other, on the monotonic clock; the loop's
# own time() is the same clock behind a Python method call.
_now = time.monotonic


class SocketInUse(Exception):
    """Another live process answers on the socket path, or the path is not a socket."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    # As the parser gave them; `headers` decodes them for whoever asks.
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes
    peer: Peer
    keep_alive: bool = True
    version: str = "1.1"

    @property
    def headers(self) -> dict[str, str]:
        """Field names in lower case; of a repeated field, the last value."""
        return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in self.raw_headers}


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: Sequence[tuple[str, str]] = ()
    content_type: str = JSON


def error_response(status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps({"status": "error", "error": {"code": code, "message": message}}).encode()
    return Response(status, body, headers or ())


Handler = Callable[[Request], "Response | Awaitable[Response]"]


class Limits(Protocol):
    """The limits a connection is held to; read from the config in effect when it opens."""

    max_connections: int
    max_connections_per_uid: int
    reserved_admin_connections: int
    header_timeout: float
    idle_timeout: float
    max_body_bytes: int


def _rejects_space_before_colon() -> bool:
    """Whether this httptools refuses "Name : value" itself: llhttp in newer releases does, Debian 12's
    0.1.1 (http-parser) and 0.5.0 do not, and RFC 9112 5.1 says a server must."""
    try:
        httptools.HttpRequestParser(None).feed_data(b"GET / HTTP/1.1\r\nA : b\r\n\r\n")
    except httptools.HttpParserError:
        return True
    return False


_CHECK_FIELD_NAMES = not _rejects_space_before_colon()
_METHODS = {name.encode(): name for name in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}


@functools.lru_cache(maxsize=256)
def _busy(message: str) -> bytes:
    """The whole 503 a refused connection reads."""
    body = json.dumps({"status": "error", "error": {"code": "busy", "message": message}}).encode()
    return _HEADS[503] + b"%d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s" % (len(body), body)


class _Refuse(Exception):
    """Raised in a parser callback to stop parsing and answer with this error, then close."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def _credentials(sock: socket.socket) -> tuple[int, int, int]:
    """pid, uid and gid of the other end (SO_PEERCRED): all a refusal needs."""
    return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))


def peer_of(sock: socket.socket) -> Peer:
    """Who is on the other end, from the kernel (SO_PEERCRED, SO_PEERGROUPS)."""
    pid, uid, gid = _credentials(sock)
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


def check_unix(path: Path) -> bool:
    """Whether a dead daemon's socket file is at `path` (True) or nothing is (False); touches nothing.

    Raises SocketInUse when a process listens there or the file is not a socket.
    """
    if not os.path.lexists(path):
        return False
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        return exc.errno == errno.ECONNREFUSED
    finally:
        probe.close()
    raise SocketInUse(f"another process is listening on {path}")


def bind_unix(path: Path, group: str | None, mode: int = 0o660) -> socket.socket:
    """Bind the control socket, replacing a dead daemon's file but never a live one.

    Raises KeyError for a group that does not exist, before any file is touched.
    """
    gid = grp.getgrnam(group).gr_gid if group else None
    if check_unix(path):
        os.unlink(path)
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


def bind_tcp(host: str, port: int) -> socket.socket:
    """Bind a TCP listener (the metrics one): IPv4 or IPv6, as `host` names it."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        # A restarted daemon binds again at once, whatever its last connections left in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _target(url: bytes) -> tuple[str, str] | None:
    """(path, query) of an origin-form or absolute-form request target, `*` as itself; None if neither."""
    if url[:1] != b"/" and url != b"*":
        scheme, sep, rest = url.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            return None
        # The authority ends at the path or the query: http://localhost?x=1 asks for "/?x=1".
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
        url = rest[cut:] if rest[cut:cut + 1] == b"/" else b"/" + rest[cut:]
    path, _, query = url.partition(b"#")[0].decode("latin-1").partition("?")
    return path, query


class _Connection(asyncio.BufferedProtocol):
    """One client: its parser, its requests in order, its deadlines and its slot."""

    def __init__(self, server: "ControlServer", limits: Limits, peer: Peer) -> None:
        self.server = server
        self.limits = limits
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        # Bytes read but not yet parsed: only while parsing is held (see _can_feed).
        self.inbox = b""
        # Parsed requests not yet answered, and the errors that end the connection, in arrival order.
        self.queue: deque[Request | Response] = deque()
        self.pending = False          # a handler's answer is being awaited
        self.write_paused = False     # the client is not reading its answers
        self.parsing_done = False     # after an error or an Upgrade: nothing more is parsed
        self.closing = False
        self.eof = False
        # Deadlines on the monotonic clock: reading (idle, head, body), and draining a full write buffer.
        self.read_deadline = _now() + self.limits.idle_timeout
        self.write_deadline = 0.0
        self.held_since = 0.0
        # The request being parsed.
        self.in_message = False
        self.in_head = False
        self.head_bytes = 0
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.body_start = 0.0
        self.continue_owed = False
        self.request: Request | None = None

    # -- transport -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: asyncio's own, or uvloop's, which are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.queue.clear()
        self.inbox = b""
        self.server.release(self)

    # -- reading -------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self._can_feed():
            self._feed(self.server.scratch[:nbytes])
        # Otherwise it is ending (an error, an Upgrade, a close): what it sends is dropped. A held
        # connection is not read at all.

    def eof_received(self) -> bool:
        if self.closing:
            return False
        # A client that half-closes after its requests still gets their answers.
        self.eof = True
        return self.pending or bool(self.queue)

    def _can_feed(self) -> bool:
        """Whether the parser may take more: not while an answer is awaited, queued or unsent."""
        return not (self.pending or self.write_paused or self.queue or self.closing or self.parsing_done)

    def _feed(self, data: memoryview) -> None:
        feed = self.parser.feed_data
        pos, end = 0, len(data)
        while pos < end:
            if pos and not self._can_feed():
                if not (self.closing or self.parsing_done):
                    self.inbox = bytes(data[pos:])
                    self._hold()
                return
            piece = data[pos:pos + FEED_BYTES]
            pos += len(piece)
            try:
                feed(piece)
            except httptools.HttpParserUpgrade:
                # Nothing is upgraded here: the request is answered and the connection ends.
                self.parsing_done = True
                if self.queue and isinstance(self.queue[-1], Request):
                    self.queue[-1].keep_alive = False
                self._end_if_answered()
            except httptools.HttpParserCallbackError as exc:
                if not isinstance(exc.__context__, _Refuse):
                    raise
                self._stop_parsing(exc.__context__.response)
            except httptools.HttpParserError as exc:
                self._stop_parsing(error_response(400, "bad_request", f"malformed HTTP request: {exc}"))
            if self.in_head:
                self.head_bytes += len(piece)
                if self.head_bytes > MAX_HEADER_BYTES:
                    self._stop_parsing(error_response(431, "header_too_large", "request head over 16 KiB"))
            if self.queue:
                self._answer_queued()

    def _stop_parsing(self, response: Response) -> None:
        # Answered after the requests before it, then the connection ends; nothing more is read.
        self.parsing_done = True
        self.in_message = self.in_head = False
        self.queue.append(response)
        if self.transport is not None:
            self.transport.pause_reading()

    def _end_if_answered(self) -> None:
        """After an Upgrade nothing more is parsed: close once its answer is out."""
        if self.parsing_done and not (self.pending or self.queue):
            self._close()

    def _hold(self) -> None:
        """Stop reading until what was read can be parsed: the client, not the daemon, buffers the rest."""
        if self.transport is not None:
            self.transport.pause_reading()
        if not self.held_since:
            self.held_since = _now()

    def _release_hold(self) -> None:
        if self.held_since:
            # A request begun before the hold: its clock stood still while the daemon held it up.
            if self.in_message:
                self.read_deadline += _now() - self.held_since
            self.held_since = 0.0

    # -- parser callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = self.in_head = True
        self.head_bytes = 0
        self.url = b""
        self.raw_headers = []
        self.body = []
        self.body_bytes = 0
        # A deadline from the head's first byte, not re-armed by later ones.
        self.read_deadline = _now() + self.limits.header_timeout

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Not a chunked body's trailer fields: nothing here reads them.
        if self.in_head:
            self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser, limits = self.parser, self.limits
        self.in_head = False
        # Only three fields matter here; the parser has already checked Content-Length's digits and repeats.
        length = expect = None
        chunked = False
        for name, value in self.raw_headers:
            if _CHECK_FIELD_NAMES and (b" " in name or b"\t" in name):
                raise _Refuse(error_response(400, "bad_request", "whitespace in a header field name"))
            if len(name) in (6, 14, 17):
                key = name.lower()
                if key == b"content-length":
                    length = int(value)
                elif key == b"transfer-encoding":
                    chunked = True
                elif key == b"expect":
                    expect = value.lower()
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Refuse(error_response(505, "bad_version", "only HTTP/1.0 and HTTP/1.1 are spoken here"))
        target = _target(self.url)
        if target is None:
            raise _Refuse(error_response(400, "bad_request", "the request target is neither a path nor an http URL"))
        if length is not None and length > limits.max_body_bytes:
            raise _Refuse(error_response(413, "body_too_large", f"body over {limits.max_body_bytes} bytes"))
        method = parser.get_method()
        self.request = Request(_METHODS.get(method) or method.decode("latin-1"), target[0], target[1],
                               self.raw_headers, b"", self.peer, parser.should_keep_alive(), version)
        if not (length or chunked):
            return
        self.body_start = self.read_deadline = _now() + limits.header_timeout
        if version == "1.1" and expect == b"100-continue":
            # Sent only when the answers before it are out, or it would land among them.
            self.continue_owed = True
            if not (self.pending or self.queue or self.write_paused):
                self._send_continue()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.limits.max_body_bytes:
            raise _Refuse(error_response(413, "body_too_large", f"body over {self.limits.max_body_bytes} bytes"))
        self.body.append(body)
        self.read_deadline = self.body_start + self.body_bytes / BODY_MIN_RATE

    def on_message_complete(self) -> None:
        request = self.request
        assert request is not None  # on_headers_complete made it
        self.in_message = self.continue_owed = False
        self.request = None
        body = self.body
        request.body = body[0] if len(body) == 1 else b"".join(body)
        if self.queue or self.pending or self.write_paused or self.closing:
            self.queue.append(request)
        else:
            # The usual case, answered at once: the parser is inside feed_data, which this does not re-enter.
            self._answer(request)

    def _send_continue(self) -> None:
        self.continue_owed = False
        if self.transport is not None and not self.closing:
            self.transport.write(_CONTINUE)

    # -- answering -----------------------------------------------------------------

    def _answer_queued(self) -> None:
        """Answer what is queued, in order, while nothing holds the connection up."""
        queue = self.queue
        while queue and not (self.pending or self.write_paused or self.closing):
            item = queue.popleft()
            if isinstance(item, Response):
                self._send(item, None)
                return
            self._answer(item)
        if self.continue_owed and not (queue or self.pending or self.write_paused):
            self._send_continue()

    def _answer(self, request: Request) -> None:
        server = self.server
        started = time.monotonic()
        try:
            result = server.handler(request)
        except Exception:  # noqa: BLE001 - one bad request must not end the server
            server.on_error(request)
            result = error_response(500, "internal_error", "internal error; see the daemon's log")
        if isinstance(result, Response):
            server.on_answer(request, result.status, time.monotonic() - started)
            self._send(result, request)
            return
        self.pending = True
        self._hold()
        task = server.loop.create_task(self._finish(result, request, started))
        server.tasks.add(task)
        task.add_done_callback(server.tasks.discard)

    async def _finish(self, pending: Awaitable[Response], request: Request, started: float) -> None:
        try:
            response = await pending
        except Exception:  # noqa: BLE001
            self.server.on_error(request)
            response = error_response(500, "internal_error", "internal error; see the daemon's log")
        self.pending = False
        self.server.on_answer(request, response.status, time.monotonic() - started)
        if self.closing:
            return
        self._send(response, request)
        self._resume()

    def _resume(self) -> None:
        """Go on after a hold: answer what is queued, parse what was read, read again."""
        self._answer_queued()
        if self.closing or not self._can_feed():
            self._end_if_answered()
            return
        self._release_hold()
        if self.inbox:
            data, self.inbox = self.inbox, b""
            self._feed(memoryview(data))
            if self.closing or not self._can_feed():
                return
        if self.eof:
            self._close()
        elif self.transport is not None:
            self.transport.resume_reading()

    @staticmethod
    def _encode(response: Response, request: Request | None, close: bool) -> bytes:
        if response.content_type == JSON:
            head = _HEADS.get(response.status) or _head(response.status, "Unknown")
        else:
            head = _head(response.status, REASONS.get(response.status, "Unknown"), response.content_type)
        body = response.body
        extra = "".join(f"\r\n{k}: {v}" for k, v in response.headers)
        if close:
            extra += "\r\nConnection: close"
        elif request is not None and request.version == "1.0":
            extra += "\r\nConnection: keep-alive"
        tail = extra.encode("latin-1") + b"\r\n\r\n"
        # HEAD: the headers GET would have, Content-Length included, and no body.
        if request is not None and request.method == "HEAD":
            return head + b"%d" % len(body) + tail
        return head + b"%d" % len(body) + tail + body

    def _send(self, response: Response, request: Request | None) -> None:
        """Write one answer; `request` None (a parse error) or not kept alive ends the connection."""
        if self.transport is None or self.closing:
            return
        close = request is None or not request.keep_alive
        if (close or response.headers or request.version != "1.1" or request.method == "HEAD"
                or response.content_type != JSON):
            self.transport.write(self._encode(response, request, close))
        else:
            # Most answers: nothing but the fixed head and the body.
            body = response.body
            self.transport.write((_HEADS.get(response.status) or _head(response.status, "Unknown"))
                                 + b"%d\r\n\r\n%s" % (len(body), body))
        if close:
            self._close()
        elif not self.in_message:
            self.read_deadline = _now() + self.limits.idle_timeout

    def _close(self) -> None:
        self.closing = True
        self.queue.clear()
        if self.transport is not None:
            self.transport.close()

    # -- writing -------------------------------------------------------------------

    def pause_writing(self) -> None:
        # A client that sends but does not read: nothing more is parsed or
        # answered until it drains, and it is dropped if it does not in time.
        self.write_paused = True
        self.write_deadline = _now() + self.limits.idle_timeout
        self._hold()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.closing:
            self._resume()

    # -- deadlines -----------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Called by the server's sweep: act on whichever deadline has passed."""
        if self.transport is None or self.closing:
            return
        if self.write_paused:
            if now >= self.write_deadline:
                self.transport.abort()
        elif self.pending or now < self.read_deadline:
            return
        elif self.in_message:
            what = "request head" if self.in_head else "request body"
            self.parsing_done = True
            self._send(error_response(408, "request_timeout", f"{what} not received in time"), None)
        else:
            self._close()


class ControlServer:
    def __init__(
        self,
        handler: Handler,
        limits: Callable[[], Limits],
        *,
        is_privileged: Callable[[Peer], bool] = lambda peer: False,
        on_error: Callable[[Request], None] = lambda request: None,
        on_answer: Callable[[Request, int, float], None] = lambda request, status, seconds: None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        # Root and the admin group: they may take the reserved slots and are not held to the per-uid cap.
        self.is_privileged = is_privileged
        self.on_error = on_error
        # Each answered request: (request, HTTP status, seconds taken), for the debug log.
        self.on_answer = on_answer
        self.connections: set[_Connection] = set()
        self.per_uid: dict[int, int] = {}
        # Refused sockets being drained (no transport: a refusal must cost little), by fd: socket, deadline,
        # bytes it may still send.
        self.draining: dict[int, tuple[socket.socket, float, list[int]]] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        # Every connection reads into this, one at a time, and parses or copies out what it got at once.
        self.scratch = memoryview(bytearray(READ_BYTES))
        self.loop: asyncio.AbstractEventLoop
        self._listener: socket.socket | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._privileged: dict[tuple[int, int], tuple[float, bool]] = {}
        self.path: Path | None = None
        self._unix = True

    async def start(self, sock: socket.socket) -> None:
        """Serve on a bound, listening socket: Unix (peers known by SO_PEERCRED) or TCP (peers uid -1)."""
        self.loop = asyncio.get_running_loop()
        self._unix = sock.family == socket.AF_UNIX
        self.path = Path(sock.getsockname()) if self._unix else None
        self._listener = sock
        self.loop.add_reader(sock.fileno(), self._accept)

    # -- slots ---------------------------------------------------------------------

    def _accept(self) -> None:
        """Take new connections off the backlog and decide on each before any transport exists.

        A flood of refused connections then costs a few syscalls each, and a
        root connection behind them in the backlog is reached quickly.
        """
        assert self._listener is not None
        for _ in range(ACCEPT_BATCH):
            try:
                # accept() without its wrapper's enum conversions: in a flood they cost more than the syscall.
                fd, _ = self._listener._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: try again in a moment rather than spin (asyncio does the same).
                    self.loop.remove_reader(self._listener.fileno())
                    self.loop.call_later(1.0, self._resume_accepting)
                return
            sock = socket.socket(self._listener.family, socket.SOCK_STREAM, 0, fd)
            sock.setblocking(False)
            uid = gid = -1
            if self._unix:
                try:
                    _, uid, gid = _credentials(sock)
                except OSError:
                    pass
            # A reload's new limits hold from the next connection on.
            limits = self.limits()
            refusal = self._admit(sock, uid, gid, limits)
            if refusal is not None:
                self._refuse(sock, refusal)
                continue
            peer = Peer(-1, -1, -1)
            if self._unix:
                try:
                    peer = peer_of(sock)
                except OSError:
                    pass
            conn = _Connection(self, limits, peer)
            self.connections.add(conn)
            self.per_uid[peer.uid] = self.per_uid.get(peer.uid, 0) + 1
            task = self.loop.create_task(self._connect(sock, conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            self.watch()

    def _resume_accepting(self) -> None:
        if self._listener is not None:
            self.loop.add_reader(self._listener.fileno(), self._accept)

    async def _connect(self, sock: socket.socket, conn: _Connection) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: conn, sock)
        except OSError:
            sock.close()
            self.release(conn)

    def _admit(self, sock: socket.socket, uid: int, gid: int, limits: Limits) -> str | None:
        """None when the peer may have a slot; otherwise why not (the 503's message)."""
        total = len(self.connections)
        mine = self.per_uid.get(uid, 0)
        if total >= limits.max_connections:
            return f"ratecared is busy: all {limits.max_connections} connections are in use; try again"
        over_uid = mine >= limits.max_connections_per_uid
        if (over_uid or total >= limits.max_connections - limits.reserved_admin_connections) \
                and not self._is_privileged(sock, uid, gid):
            if over_uid:
                return (f"ratecared is busy: uid {uid} already has {mine} connections open "
                        "(daemon.max_connections_per_uid); try again")
            return "ratecared is busy: the connections left are reserved for root and the admin group; try again"
        return None

    def _is_privileged(self, sock: socket.socket, uid: int, gid: int) -> bool:
        """is_privileged, remembered a second per uid and gid: it may read the group database, and a
        flood from one uid asks it for every connection. Reserved slots are no security boundary (every
        admin route checks the full peer), so another process of the same uid and gid may ride on it."""
        now = _now()
        known = self._privileged.get((uid, gid))
        if known is None or known[0] < now:
            if len(self._privileged) > 4096:
                self._privileged.clear()
            try:
                privileged = self.is_privileged(peer_of(sock))
            except OSError:
                privileged = False
            known = self._privileged[(uid, gid)] = (now + 1.0, privileged)
        return known[1]

    def _refuse(self, sock: socket.socket, message: str) -> None:
        """Answer 503 and end the connection without a reset: write, shut our side, drain theirs briefly."""
        try:
            sock.send(_busy(message))
            if len(self.draining) >= MAX_DRAINING:
                raise OSError("no room to drain")
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self.draining[sock.fileno()] = (sock, _now() + DRAIN_SECONDS, [DRAIN_BYTES])
        self.watch()

    def _drain(self, fd: int, now: float) -> None:
        """From the sweep: read and drop what a refused client sent; close once it hangs up, or in time.

        Read here rather than on every readiness event: a refusal must cost little, and closing with
        its request unread would reset the connection under a client still sending.
        """
        sock, deadline, left = self.draining[fd]
        while True:
            try:
                data = sock.recv(READ_BYTES)
            except (BlockingIOError, InterruptedError):
                if now >= deadline:
                    self._end_drain(fd)
                return
            except OSError:
                data = b""
            left[0] -= len(data)
            if not data or left[0] <= 0:
                self._end_drain(fd)
                return

    def _end_drain(self, fd: int) -> None:
        sock, _, _ = self.draining.pop(fd)
        sock.close()

    def release(self, conn: _Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            left = self.per_uid[conn.peer.uid] - 1
            if left:
                self.per_uid[conn.peer.uid] = left
            else:
                del self.per_uid[conn.peer.uid]

    # -- deadlines -----------------------------------------------------------------

    def watch(self) -> None:
        """Make sure the sweep runs: it does while any connection is open, and stops with the last."""
        if self._sweep is None:
            self._sweep = self.loop.call_later(SWEEP_SECONDS, self._run_sweep)

    def _run_sweep(self) -> None:
        self._sweep = None
        now = _now()
        for conn in list(self.connections):
            conn.expire(now)
        for fd in list(self.draining):
            self._drain(fd, now)
        if self.connections or self.draining:
            self.watch()

    # -- lifecycle -----------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Stop listening and remove the socket file; connections already open go on."""
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        # Once only: by a later call another daemon may have bound the path.
        path, self.path = self.path, None
        if path and os.path.lexists(path):
            try:
                os.unlink(path)
            except OSError:
                pass

    async def close(self, grace: float = 0.0) -> None:
        """Stop listening, give requests in progress up to `grace` seconds to answer, drop every client."""
        self.stop_accepting()
        if self.tasks and grace > 0:
            await asyncio.wait(set(self.tasks), timeout=grace)
        for conn in list(self.connections):
            if conn.transport:
                conn.transport.close()
        for fd in list(self.draining):
            self._end_drain(fd)
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
