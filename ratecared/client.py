"""The Python client for ratecared's control socket, for apps and for ratecarectl.

    client = Client("/run/ratecared/ratecared.sock", when_unreachable="open")
    with client.call("booking"):          # raises BreakerOpen when refused
        fetch_rates_from_booking()        # an exception here is reported as a failure

What happens when the daemon cannot be reached is the caller's choice:
`when_unreachable="open"` lets calls through (the platform is tried, as
before ratecared existed), `"closed"` refuses them, and `"raise"` (the
default) raises DaemonUnreachable so the caller decides each time.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import select
import socket
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal
from urllib.parse import quote, urlencode

DEFAULT_SOCKET = "/run/ratecared/ratecared.sock"


class ClientError(Exception):
    """Base of everything this module raises."""


class DaemonUnreachable(ClientError):
    """No daemon answers on the socket (missing, refused, timed out)."""


class ConnectionDropped(DaemonUnreachable):
    """The daemon closed the connection before answering: a POST may or may not have been carried out."""


class DaemonBusy(DaemonUnreachable):
    """The daemon refused the connection: all its slots, or this user's share of them, are taken."""


class PermissionDenied(ClientError):
    """The socket or the daemon refused this user."""


class DaemonError(ClientError):
    """The daemon answered with an error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status, self.code, self.message = status, code, message


class BreakerOpen(ClientError):
    """The breaker refused the call; `retry_after` says for how many seconds."""

    def __init__(self, platform: str, state: str, retry_after: float | None, unreachable: str | None = None) -> None:
        if unreachable is not None:
            message = f"calls to {platform} are refused: {unreachable}, and when_unreachable is 'closed'"
        else:
            after = f"; retry in {retry_after:g} s" if retry_after is not None else ""
            message = f"circuit breaker for {platform} is {state}{after}"
        super().__init__(message)
        self.platform, self.state, self.retry_after = platform, state, retry_after


@dataclass(frozen=True)
class Decision:
    platform: str
    allowed: bool
    state: str
    permit: str | None
    retry_after: float | None
    # True when the daemon was unreachable and the caller's policy decided; `unreachable` says why.
    degraded: bool = False
    unreachable: str | None = None


# What a report may say a call came to (DESIGN §7); True and False are the seed's success flag.
OUTCOMES = ("success", "failure", "timeout", "rate_limited", "ignored")


class Call:
    """What `Client.call` hands its block: the decision, and how the block says the call went.

    By default the block's end is a success, a TimeoutError a timeout and any
    other exception a failure; `report_as` says otherwise (a 429 with its
    Retry-After, a 404 for a hotel the platform does not list).
    """

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.outcome: str | None = None
        self.retry_after: float | str | None = None

    @property
    def allowed(self) -> bool:
        return self.decision.allowed

    @property
    def permit(self) -> str | None:
        return self.decision.permit

    def report_as(self, outcome: str, retry_after: float | str | None = None) -> None:
        """Report the call as `outcome`; `retry_after` for rate_limited: seconds, or the header as it came."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        self.outcome, self.retry_after = outcome, retry_after


def _report_body(outcome: bool | str, duration_ms: float, retry_after: float | str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"duration_ms": round(duration_ms, 1)}
    if isinstance(outcome, bool):
        body["success"] = outcome
    elif outcome in OUTCOMES:
        body["outcome"] = outcome
    else:
        raise ValueError(f"outcome must be True, False or one of {', '.join(OUTCOMES)}, not {outcome!r}")
    if retry_after is not None:
        body["retry_after"] = retry_after
    return body


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _segment(name: str) -> str:
    """A job or platform name as one URL path segment, whatever characters it holds."""
    return quote(name, safe="")


def _dropped(sock: socket.socket | None) -> bool:
    """Whether a kept-alive connection is unusable: readable before we asked means EOF or stray bytes.

    A zero-timeout poll costs no round trip, so the app's acquire/report stay fast.
    """
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _not_a_socket(path: str) -> bool:
    """Connecting to a directory or a plain file says "Connection refused", which misleads."""
    try:
        return not stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class Client:
    def __init__(
        self,
        socket_path: str | None = None,
        timeout: float = 2.0,
        when_unreachable: Literal["raise", "open", "closed"] = "raise",
    ) -> None:
        self.socket_path = socket_path or os.environ.get("RATECARE_SOCKET") or DEFAULT_SOCKET
        self.timeout = timeout
        self.when_unreachable = when_unreachable
        self._conn: _UnixHTTPConnection | None = None
        self._lock = threading.Lock()

    # -- transport -----------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        """One API call; returns `data` from the success envelope or raises."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        with self._lock:
            status, raw = self._exchange(method, path, payload, headers, timeout)
        try:
            envelope = json.loads(raw)
        except ValueError:
            raise DaemonError(status, "bad_reply", f"not JSON: {raw[:200]!r}") from None
        if status == 403:
            error = envelope.get("error", {})
            raise PermissionDenied(error.get("message", "permission denied"))
        if envelope.get("status") != "success":
            error = envelope.get("error", {})
            if status == 503 and error.get("code") == "busy":
                # Answered, but not served: to the app's when_unreachable policy, as good as unreachable.
                raise DaemonBusy(error.get("message", "ratecared is busy; try again"))
            raise DaemonError(status, error.get("code", "error"), error.get("message", raw.decode(errors="replace")))
        return envelope["data"]

    def _exchange(self, method: str, path: str, payload: bytes | None, headers: dict[str, str],
                  timeout: float | None) -> tuple[int, bytes]:
        """Send once and read the answer; only a GET on a reused connection is ever sent again.

        A request with its own timeout gets a connection of its own, closed after.
        """
        wait = timeout or self.timeout
        while True:
            conn = self._conn
            reused = conn is not None and timeout is None and not _dropped(conn.sock)
            if conn is None or not reused:
                self._close()
                conn = self._conn = _UnixHTTPConnection(self.socket_path, wait)
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                if response.will_close or timeout is not None:
                    self._close()
                return response.status, raw
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._close()
                # The daemon may have closed an idle connection just as we sent: harmless to repeat
                # a read, but a POST (run, reset, acquire) may already have been carried out.
                if not reused or method != "GET":
                    raise ConnectionDropped(
                        f"ratecared at {self.socket_path} closed the connection without answering") from exc
            except OSError as exc:
                self._close()
                raise self._translate(exc, wait) from exc
            except BaseException:
                # Anything else leaves http.client mid-request; the next call starts afresh.
                self._close()
                raise

    def _translate(self, exc: OSError, wait: float) -> ClientError:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return PermissionDenied(f"permission denied on {self.socket_path}: join the socket's group")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return DaemonUnreachable(f"ratecared at {self.socket_path} did not answer in {wait:g} s")
        if exc.errno == errno.ECONNREFUSED and _not_a_socket(self.socket_path):
            return DaemonUnreachable(f"{self.socket_path} is not a socket")
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return DaemonUnreachable(f"cannot reach ratecared at {self.socket_path}: {reason}")

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- breakers --------------------------------------------------------------

    def _degraded(self, platform: str, exc: DaemonUnreachable) -> Decision:
        if self.when_unreachable == "raise":
            raise exc
        allowed = self.when_unreachable == "open"
        return Decision(platform, allowed, "unknown", None, None, degraded=True, unreachable=str(exc))

    def acquire(self, platform: str) -> Decision:
        """Ask whether `platform` may be called now."""
        try:
            data = self.request("POST", f"/api/v1/circuit-breaker/{_segment(platform)}/acquire")
        except DaemonUnreachable as exc:
            return self._degraded(platform, exc)
        return Decision(platform, data["allowed"], data["state"], data["permit"], data["retry_after"])

    def acquire_many(self, platforms: list[str]) -> dict[str, Decision]:
        """Ask for several platforms in one round trip."""
        try:
            data = self.request("POST", "/api/v1/circuit-breaker/acquire", {"platforms": platforms})
        except DaemonUnreachable as exc:
            return {p: self._degraded(p, exc) for p in platforms}
        return {p: Decision(p, d["allowed"], d["state"], d["permit"], d["retry_after"]) for p, d in data.items()}

    def report(self, decision: Decision, outcome: bool | str, duration_ms: float = 0.0,
               retry_after: float | str | None = None) -> dict[str, Any] | None:
        """Say how a permitted call went: True, False, or one of OUTCOMES; `retry_after` goes with
        rate_limited (seconds, or the Retry-After header as it came). A no-op for decisions without a permit."""
        if decision.permit is None:
            return None
        body = {"permit": decision.permit, **_report_body(outcome, duration_ms, retry_after)}
        try:
            return self.request("POST", f"/api/v1/circuit-breaker/{_segment(decision.platform)}/report", body)
        except DaemonUnreachable:
            if self.when_unreachable == "raise":
                raise
            return None

    def report_many(self, outcomes: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """Several reports in one round trip: (decision, outcome, duration_ms[, retry_after]) each."""
        reports = [
            {"platform": each[0].platform, "permit": each[0].permit,
             **_report_body(each[1], each[2], each[3] if len(each) > 3 else None)}
            for each in outcomes
            if each[0].permit is not None
        ]
        if not reports:
            return []
        try:
            return self.request("POST", "/api/v1/circuit-breaker/report", {"reports": reports})
        except DaemonUnreachable:
            if self.when_unreachable == "raise":
                raise
            return []

    @contextmanager
    def call(self, platform: str) -> Iterator[Call]:
        """Acquire, run the block, report: a TimeoutError in the block is a timeout, any other exception a
        failure, and the block may say otherwise with `Call.report_as`."""
        decision = self.acquire(platform)
        if not decision.allowed:
            raise BreakerOpen(platform, decision.state, decision.retry_after, decision.unreachable)
        call = Call(decision)
        started = time.monotonic()
        try:
            yield call
        except TimeoutError:
            self._report_for_call(call, "timeout", started)
            raise
        except BaseException:
            self._report_for_call(call, False, started)
            raise
        self._report_for_call(call, True, started)

    def _report_for_call(self, call: Call, outcome: bool | str, started: float) -> None:
        """Report for `call`: a report the daemon refuses (the permit's lease ran out, the daemon restarted
        and its permits died with it) must not turn the platform's answer, or its error, into another."""
        try:
            self.report(call.decision, call.outcome or outcome, (time.monotonic() - started) * 1000,
                        call.retry_after)
        except ClientError:
            pass

    # -- operators ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/api/v1/circuit-breaker/status")

    def cluster_status(self) -> dict[str, Any]:
        """Every host's breakers on this database: `hosts` (stale ones marked) and a summary per platform."""
        return self.request("GET", "/api/v1/circuit-breaker/status?cluster=1", timeout=max(self.timeout, 10.0))

    def cluster(self, action: str, platform: str | None = None, **body: Any) -> dict[str, Any]:
        """`hold`, `release` or `reset` for every host (root or the admin group): the command as recorded, and
        what it did here; the other hosts apply it within their settings_refresh."""
        path = "reset" if action == "reset" else f"{_segment(platform or '')}/{action}"
        if action == "reset" and platform:
            body["platform"] = platform
        return self.request("POST", f"/api/v1/circuit-breaker/{path}", {**body, "cluster": True},
                            timeout=max(self.timeout, 10.0))

    def reset(self, platform: str | None = None) -> list[str]:
        """The breakers the reset covered; reset_outcome says which of them it closed."""
        return self.reset_outcome(platform)["reset"]

    def reset_outcome(self, platform: str | None = None) -> dict[str, list[str]]:
        """The reset's answer: `reset` (the breakers covered), `changed` (those it closed; the others were
        closed already) and `held` (those an operator's hold kept as they were)."""
        body = {"platform": platform} if platform else {}
        data = self.request("POST", "/api/v1/circuit-breaker/reset", body)
        return {"reset": data["reset"], "changed": data.get("changed", data["reset"]), "held": data.get("held", [])}

    def hold(self, platform: str, state: str, seconds: float, reason: str) -> dict[str, Any]:
        """Keep a breaker open or closed for `seconds` (root or the admin group); its status entry, with the hold."""
        return self.request("POST", f"/api/v1/circuit-breaker/{_segment(platform)}/hold",
                            {"state": state, "seconds": seconds, "reason": reason})

    def release(self, platform: str) -> dict[str, Any]:
        """End a breaker's hold; its status entry."""
        return self.request("POST", f"/api/v1/circuit-breaker/{_segment(platform)}/release", {})

    def events(self, platform: str | None = None, since: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Transitions and operator actions, newest first; `since` a length back (1d, 2h) or a time."""
        query = urlencode({k: v for k, v in (("platform", platform), ("since", since), ("limit", limit)) if v})
        return self.request("GET", f"/api/v1/circuit-breaker/events?{query}", timeout=max(self.timeout, 10.0))

    def jobs(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/jobs", timeout=max(self.timeout, 10.0))

    def run_job(self, job: str, wait: bool = False) -> dict[str, Any]:
        """Start a job now; with `wait`, block until it ends and return the run."""
        path = f"/api/v1/jobs/{_segment(job)}/run"
        return self.request("POST", path, {"wait": wait}, timeout=86400.0 if wait else None)

    def cancel_job(self, job: str) -> dict[str, Any]:
        """Stop the job's running run at its next chunk, or drop its queued manual run: that run."""
        return self.request("POST", f"/api/v1/jobs/{_segment(job)}/cancel", {})

    def settings(self) -> list[dict[str, Any]]:
        """Each setting: its value in the table, default, value in effect, warning."""
        return self.request("GET", "/api/v1/settings", timeout=max(self.timeout, 10.0))

    def set_setting(self, key: str, value: str) -> dict[str, Any]:
        """Write one setting and apply it: the setting as now in effect. A bad value is a DaemonError saying why."""
        return self.request("POST", "/api/v1/settings", {"key": key, "value": value}, timeout=max(self.timeout, 10.0))

    def job_runs(self, job: str, limit: int = 20) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v1/jobs/{_segment(job)}/runs?limit={limit}", timeout=max(self.timeout, 10.0))

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/api/v1/health", timeout=max(self.timeout, 10.0))

    def reload(self) -> dict[str, Any]:
        return self.request("POST", "/api/v1/reload", {}, timeout=max(self.timeout, 30.0))
