"""The control API: routes to JSON, in the seed's envelope.

Breaker calls are answered on the event loop (they take microseconds);
anything that touches the database or the disk runs on a worker thread, so a
dead database slows `health` down, never `acquire`. Nor does the breaker
journal's fdatasync run here: an answer that shows a transition not yet on
disk is held (the registry's `Later`) until the journal's writer thread has
written it, and only that connection waits; the others are answered on.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
from concurrent.futures import Executor, Future
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Protocol
from urllib.parse import parse_qs, unquote
from zoneinfo import ZoneInfo

from ratecared import duration, logs
from ratecared import settings as settings_mod
from ratecared.access import who
from ratecared.breaker.machine import (
    FAILING, MAX_HOLD_SECONDS, REPORTED, BreakerView, Decision, Hold, Kind, Outcome, Report, State,
)
from ratecared.breaker.registry import Later, Registry, Reset, Unguarded, UnknownPlatform
from ratecared.cluster import Command
from ratecared.control.server import Peer, Request, Response, error_response
from ratecared.db import DatabaseError
from ratecared.events import Event
from ratecared.jobs import JOBS
from ratecared.metrics import CONTENT_TYPE
from ratecared.scheduler.runner import NothingToCancel, Stopping

PREFIX = "/api/v1/"
METRICS = "/metrics"
MAX_BATCH = 100
MAX_RUNS = 1000
MAX_EVENTS = 1000
MAX_REASON = 255

_NOT_COUNTED = {
    "stale": "the call was admitted in an earlier state of the breaker, so it is not counted",
    "disabled": "circuit breakers are disabled (circuit-breaker-enabled = 0), so it is not counted",
    "unguarded": "this platform has no breaker (circuit-breaker-platforms), so it is not counted",
}
_UNKNOWN_PERMIT = "permit was never issued to this uid, was already reported, or its lease expired"
_REPORTED = {kind.value: kind for kind in REPORTED}
_OUTCOMES = ", ".join(kind.value for kind in Kind if kind in REPORTED)
MAX_RETRY_AFTER_TEXT = 100


def retry_after_seconds(value: Any, now: datetime) -> tuple[float | None, str | None]:
    """A report's `retry_after` as seconds from `now`, and the platform's answer as it came.

    Seconds as a number, or the Retry-After header's value as it came: delay
    seconds or an HTTP-date (RFC 9110 §10.2.3). A header the platform wrote
    wrong is still a 429: None seconds, and the breaker opens for its
    normal time, naming the answer.
    """
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ApiError(400, "invalid_request", '"retry_after" must be seconds, or the Retry-After header as it came')
    if not isinstance(value, str):
        if value < 0:
            raise ApiError(400, "invalid_request", '"retry_after" must not be negative')
        return float(value), None
    text = value.strip()
    if len(text) > MAX_RETRY_AFTER_TEXT:
        raise ApiError(400, "invalid_request", f'"retry_after" must be at most {MAX_RETRY_AFTER_TEXT} characters')
    if text.isdigit():
        return float(text), text
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None, text
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now).total_seconds()), text


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Events(Protocol):
    """What the API needs from the audit trail (events.EventLog)."""

    def record(self, events: list[Event]) -> None: ...

    def query(self, platform: str | None, since: datetime | None, limit: int, tz: ZoneInfo) -> list[dict[str, Any]]:
        ...


class Jobs(Protocol):
    """What the API needs from the scheduler."""

    def request(self, job: str) -> tuple[str, Future[dict[str, Any]], bool]: ...

    def overview(self, now: datetime) -> list[dict[str, Any]]: ...

    def runs(self, job: str, limit: int = 20) -> list[dict[str, Any]]: ...

    def cancel(self, job: str, by: str) -> dict[str, Any]: ...


class Cluster(Protocol):
    """What the API needs for every host at once (cluster.ClusterCommands)."""

    def issue(self, action: str, platform: str | None, who: str, reason: str, state: State | None = None,
              seconds: float | None = None) -> tuple[Command, str]: ...

    def view(self, local: list[BreakerView]) -> dict[str, Any]: ...


class SettingsTable(Protocol):
    """What the API needs of the settings (settings.LiveSettings)."""

    def table(self) -> dict[str, str | None]: ...

    def state(self) -> settings_mod.SettingsState: ...

    def set(self, key: str, value: str, by: str) -> dict[str, object]: ...


_encode = json.JSONEncoder(separators=(",", ":")).encode

# Request bodies: a few levels hold every body the API takes; deeper is an attack on the parser.
MAX_JSON_DEPTH = 32
MAX_JSON_INT_DIGITS = 20


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise ValueError(f"number over {MAX_JSON_INT_DIGITS} digits: {text[:40]}...")
    return int(text)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


_decode_json = json.JSONDecoder(parse_float=_finite, parse_int=_bounded_int, parse_constant=_no_constant).decode


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in `value`, counted until past MAX_JSON_DEPTH."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= MAX_JSON_DEPTH:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest
_JSON_BOOL = {True: "true", False: "false"}
# An enum member's .value is a property call: a dict is cheaper on the hot path.
_STATE_TEXT = {state: state.value for state in State}


def success_raw(data_json: str, status: int = 200) -> Response:
    """The success envelope around data already encoded as JSON."""
    return Response(status, ('{"status":"success","data":' + data_json + "}").encode())


def success(data: Any, status: int = 200) -> Response:
    return success_raw(_encode(data), status)


def _quote(text: str) -> str:
    # Only for permits and platform names: hex digits and names the config
    # limits to letters, digits, - and _, so nothing to escape.
    return '"' + text + '"'


# Acquire and report answers are built as text: they are most of the
# daemon's traffic, and json.dumps of a dict costs more than the decision.
def decision_text(d: Decision, hold_json: Callable[[Hold, float], dict[str, Any]]) -> str:
    permit = "null" if d.permit is None else _quote(d.permit)
    retry = "null" if d.retry_after is None else _encode(d.retry_after)
    held = "" if d.hold is None else ',"hold":' + _encode(hold_json(d.hold, d.hold_seconds_left or 0.0))
    return (f'{{"allowed":{_JSON_BOOL[d.allowed]},"state":"{_STATE_TEXT[d.state]}","permit":{permit},"retry_after":{retry}'
            + held + "}")


def outcome_text(o: Outcome, platform: str | None = None) -> str:
    if o.counted_as is not None:
        data = {"counted": o.counted, "state": o.state.value, "counted_as": o.counted_as.value}
        if platform is not None:
            data["platform"] = platform
        return _encode(data)
    if o.reason:
        data: dict[str, Any] = {"counted": o.counted, "state": o.state.value, "reason": o.reason,
                                "message": _NOT_COUNTED.get(o.reason, _UNKNOWN_PERMIT)}
        if platform is not None:
            data["platform"] = platform
        return _encode(data)
    tail = "}" if platform is None else ',"platform":' + _quote(platform) + "}"
    return f'{{"counted":{_JSON_BOOL[o.counted]},"state":"{_STATE_TEXT[o.state]}"' + tail


class Scrapes:
    """`GET /metrics` answers: one scrape at a time on a worker thread, shared by every request that
    comes while it runs, so a flood of scrapers takes one thread and one database probe."""

    def __init__(self, render: Callable[[], bytes], executor: Executor) -> None:
        self._render = render
        self._executor = executor
        self._running: asyncio.Future[bytes] | None = None

    def answer(self, request: Request) -> Response | Awaitable[Response]:
        if request.method == "OPTIONS":
            return Response(200, b"", [("Allow", "GET, HEAD, OPTIONS")])
        if request.method not in ("GET", "HEAD"):
            return error_response(405, "method_not_allowed", f"use GET for {METRICS}",
                                  [("Allow", "GET, HEAD, OPTIONS")])
        return self._scraped()

    async def _scraped(self) -> Response:
        if self._running is None:
            running = self._running = asyncio.get_running_loop().run_in_executor(self._executor, self._render)
            running.add_done_callback(lambda _: setattr(self, "_running", None))
        # Shielded: one scraper hanging up must not cancel the scrape the others wait for.
        return Response(200, await asyncio.shield(self._running), content_type=CONTENT_TYPE)


def metrics_only(scrapes: Scrapes) -> Callable[[Request], Response | Awaitable[Response]]:
    """The handler of the `metrics.listen` TCP listener: GET /metrics and nothing else."""

    def handle(request: Request) -> Response | Awaitable[Response]:
        if request.path != METRICS:
            return error_response(404, "not_found", f"only {METRICS} is served here")
        return scrapes.answer(request)

    return handle


class Api:
    def __init__(self, registry: Registry, jobs: Jobs, *, settings: SettingsTable,
                 health: Callable[[], dict[str, Any]], reload: Callable[[Peer], dict[str, Any]],
                 is_admin: Callable[[Peer], bool], executor: Executor, scrapes: Scrapes, events: Events,
                 cluster: Cluster, tz: Callable[[], ZoneInfo]) -> None:
        self.registry = registry
        self.cluster = cluster
        self.scrapes = scrapes
        self.events = events
        # The daemon's zone, for the wall times answers show (a hold's end, events).
        self.tz = tz
        self.jobs = jobs
        self.settings = settings
        self.health = health
        self.reload = reload
        self.is_admin = is_admin
        self.executor = executor
        self.breaker_log = logs.get("ratecared.breaker")
        self.jobs_log = logs.get("ratecared.scheduler")
        self._static: dict[tuple[str, str], Callable[[Request], Any]] = {
            ("GET", "circuit-breaker/status"): self._status,
            ("POST", "circuit-breaker/reset"): self._reset,
            ("POST", "circuit-breaker/acquire"): self._acquire_batch,
            ("POST", "circuit-breaker/report"): self._report_batch,
            ("GET", "circuit-breaker/events"): self._events,
            ("GET", "health"): self._health,
            ("POST", "reload"): self._reload,
            ("GET", "jobs"): self._jobs,
            ("GET", "settings"): self._settings,
            ("POST", "settings"): self._set_setting,
        }
        self._routes_for: tuple[str, ...] = ()
        self._platforms: frozenset[str] = frozenset()
        self._hot: dict[tuple[str, str], Callable[[Request], Any]] = {}
        self._platform_routes()
        # Answers held for the journal, by the sequence number they wait for: one future each, on the loop.
        self._held: dict[int, asyncio.Future[None]] = {}

    def _platform_routes(self) -> dict[tuple[str, str], Callable[[Request], Any]]:
        """The hot per-platform routes by method and whole path: one dict lookup before any parsing of the
        path. Rebuilt when a reload changes the registry's platforms (a new tuple)."""
        platforms = self.registry.platforms
        if platforms is not self._routes_for:
            hot: dict[tuple[str, str], Callable[[Request], Any]] = {}
            for name in platforms:
                hot[("POST", f"{PREFIX}circuit-breaker/{name}/acquire")] = functools.partial(self._acquire, name)
                hot[("POST", f"{PREFIX}circuit-breaker/{name}/report")] = functools.partial(self._report, name)
            self._hot, self._platforms, self._routes_for = hot, frozenset(platforms), platforms
        return self._hot

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        route = ""
        try:
            hot = self._platform_routes().get((request.method, request.path))
            if hot is not None:
                result = hot(request)
            else:
                if request.method == "OPTIONS" and request.path == "*":
                    return Response(200, b"", [("Allow", "GET, HEAD, POST, OPTIONS")])
                if request.path == METRICS:
                    return self.scrapes.answer(request)
                if not request.path.startswith(PREFIX):
                    raise ApiError(404, "not_found", f"no such endpoint: {request.path}")
                route = request.path[len(PREFIX):].rstrip("/")
                if request.method == "OPTIONS":
                    return Response(200, b"", [("Allow", self._allow(route))])
                result = self._route(request.method, route)(request)
        except ApiError as exc:
            allow = [("Allow", self._allow(route))] if exc.status == 405 else None
            return error_response(exc.status, exc.code, exc.message, allow)
        if isinstance(result, Response):
            return result
        return self._awaited(result)

    async def _awaited(self, pending: Awaitable[Response]) -> Response:
        try:
            return await pending
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message)

    def _route(self, method: str, route: str) -> Callable[[Request], Any]:
        # HEAD is GET without the body, which the server leaves out.
        key = ("GET" if method == "HEAD" else method, route)
        return (self._platform_routes().get((key[0], PREFIX + route)) or self._static.get(key)
                or self._dynamic(key[0], route))

    def _allow(self, route: str) -> str:
        """The Allow header of a route (RFC 9110 10.2.1): the methods the routes answer on it."""
        methods = []
        for method in ("GET", "POST"):
            try:
                self._route(method, route)
            except ApiError as exc:
                if exc.status != 405:
                    raise
            else:
                methods += ["GET", "HEAD"] if method == "GET" else [method]
        return ", ".join(methods + ["OPTIONS"])

    def _dynamic(self, method: str, route: str) -> Callable[[Request], Any]:
        # Names arrive percent-encoded; decoding after the split keeps an encoded "/" inside its name.
        parts = [unquote(part) for part in route.split("/")]
        if len(parts) == 3 and parts[0] == "circuit-breaker" and parts[2] in ("acquire", "report", "hold", "release"):
            platform, action = parts[1], parts[2]
            if method != "POST":
                raise ApiError(405, "method_not_allowed", f"use POST for {action}")
            if action == "acquire":
                return lambda request: self._acquire(platform, request)
            if action == "report":
                return lambda request: self._report(platform, request)
            if action == "hold":
                return lambda request: self._hold(platform, request)
            return lambda request: self._release(platform, request)
        if len(parts) == 3 and parts[0] == "jobs" and parts[2] in ("run", "runs", "cancel"):
            job = parts[1]
            if job not in JOBS:
                raise ApiError(404, "unknown_job", f"unknown job {job!r}; jobs: {', '.join(JOBS)}")
            wanted = "GET" if parts[2] == "runs" else "POST"
            if method != wanted:
                raise ApiError(405, "method_not_allowed", f"use {wanted} for {parts[2]}")
            if parts[2] == "run":
                return lambda request: self._run_job(job, request)
            if parts[2] == "cancel":
                return lambda request: self._cancel_job(job, request)
            return lambda request: self._job_runs(job, request)
        if any(route == path for _, path in self._static):
            raise ApiError(405, "method_not_allowed", f"{method} is not allowed on {PREFIX}{route}")
        raise ApiError(404, "not_found", f"no such endpoint: {PREFIX}{route}")

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        body = request.body
        if not body.strip():
            return {}
        try:
            data = _decode_json(body.decode("utf-8"))
        except RecursionError:
            raise ApiError(400, "invalid_json", f"body is nested deeper than {MAX_JSON_DEPTH} levels") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
        # Only a body with that many brackets can be that deep; most are far from it.
        if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _depth(data) > MAX_JSON_DEPTH:
            raise ApiError(400, "invalid_json", f"body is nested deeper than {MAX_JSON_DEPTH} levels")
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_request", "body must be a JSON object")
        return data

    def _require_admin(self, request: Request, what: str) -> None:
        if not self.is_admin(request.peer):
            raise ApiError(403, "permission_denied", f"{what} needs root or the admin group")

    def _known(self, platform: Any) -> str:
        if not isinstance(platform, str) or platform not in self._platforms:
            raise ApiError(404, "unknown_platform", f"unknown platform {platform!r}")
        return platform

    def _in_thread(self, fn: Callable[[], Any]) -> Awaitable[Any]:
        return asyncio.get_running_loop().run_in_executor(self.executor, fn)

    # -- breakers ------------------------------------------------------------

    def _when_settled(self, later: Later[Any], answer: Callable[[Any], Response]) -> Response | Awaitable[Response]:
        """The answer now when what it shows is on disk; otherwise once the journal's writer has it there."""
        if self.registry.settled(later):
            return answer(later.value)
        return self._held_answer(later, answer)

    async def _held_answer(self, later: Later[Any], answer: Callable[[Any], Response]) -> Response:
        waiting = self._held.get(later.seq)
        if waiting is None:
            loop = asyncio.get_running_loop()
            waiting = self._held[later.seq] = loop.create_future()
            seq = later.seq

            def settled() -> None:
                # From the journal's writer thread.
                try:
                    loop.call_soon_threadsafe(self._answer_held, seq)
                except RuntimeError:
                    pass  # the loop is closed: nobody is left to answer

            self.registry.on_settled(later, settled)
        # Shielded: the future is shared by every answer waiting for this number.
        try:
            await asyncio.shield(waiting)
        finally:
            # Also when the answer is cancelled (a stop): the listeners still hear of the transition.
            self.registry.heard(later)
        return answer(later.value)

    def _answer_held(self, seq: int) -> None:
        waiting = self._held.pop(seq, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    def _status(self, request: Request) -> Response | Awaitable[Response]:
        cluster = parse_qs(request.query).get("cluster", ["0"])[0]
        if cluster not in ("0", "1"):
            raise ApiError(400, "invalid_request", "cluster must be 0 or 1")
        if cluster == "1":
            return self._cluster_status()
        return self._when_settled(self.registry.status_later(), self._status_answer)

    async def _cluster_status(self) -> Response:
        try:
            return success(await self._in_thread(lambda: self.cluster.view(self.registry.status())))
        except DatabaseError as exc:
            raise ApiError(503, "database_error", f"cannot read the other hosts' snapshots: {exc}") from None

    def _is_cluster(self, body: dict[str, Any]) -> bool:
        cluster = body.get("cluster", False)
        if not isinstance(cluster, bool):
            raise ApiError(400, "invalid_request", '"cluster" must be true or false')
        return cluster

    async def _issue(self, action: str, platform: str | None, request: Request, reason: str,
                     state: State | None = None, seconds: float | None = None) -> Response:
        """A command for every host: recorded, applied here at once; the others apply it within settings_refresh."""
        by = str(who(request.peer))
        try:
            command, here = await self._in_thread(
                lambda: self.cluster.issue(action, platform, by, reason, state, seconds))
        except DatabaseError as exc:
            raise ApiError(503, "database_error", f"the command could not be recorded for every host, so no host "
                                                  f"has it: {exc}") from None
        self.breaker_log.info("cluster command issued", command=command.id, action=action, platform=platform,
                              by=by, peer_uid=request.peer.uid, applied_here=here)
        return success({"cluster": True, "command": command.as_json(), "applied_here": here})

    def _hold_json(self, hold: Hold, seconds_left: float) -> dict[str, Any]:
        """A hold as answers show it: its end as a wall time in the daemon's zone."""
        until = datetime.now(self.tz()) + timedelta(seconds=seconds_left)
        return {"state": hold.state.value, "until": until.isoformat(timespec="seconds"),
                "seconds_left": seconds_left, "reason": hold.reason, "by": hold.by}

    def _entry(self, view: BreakerView) -> dict[str, Any]:
        """One breaker's status entry, its hold's end as a wall time."""
        entry = view.as_json()
        if view.hold is not None:
            entry["hold"] = self._hold_json(view.hold, view.hold_seconds_left or 0.0)
        return entry

    def _status_answer(self, views: list[BreakerView]) -> Response:
        platforms = []
        counts = {state: 0 for state in State}
        total_requests = total_failures = 0
        for s in views:
            counts[s.state] += 1
            total_requests += s.total_requests
            total_failures += s.total_failures
            platforms.append(self._entry(s))
        return success({
            "total_platforms": len(platforms),
            "closed": counts[State.CLOSED],
            "open": counts[State.OPEN],
            "half_open": counts[State.HALF_OPEN],
            "total_requests": total_requests,
            "total_failures": total_failures,
            "platforms": platforms,
        })

    def _reset(self, request: Request) -> Response | Awaitable[Response]:
        self._require_admin(request, "reset")
        body = self._body(request)
        platform = body.get("platform")
        if platform is not None:
            self._known(platform)
        by = str(who(request.peer))
        if self._is_cluster(body):
            return self._issue("reset", platform, request, f"reset by {by}")
        later = self.registry.reset_later(platform, reason=f"reset by {by}", who=by)

        def answer(reset: Reset) -> Response:
            # Only an open or half-open breaker changes; a closed one just has its failure count cleared, and a
            # held one stays as the hold keeps it.
            changed = [t.platform for t in later.changes if t.kind == "reset"]
            already_closed = [name for name in reset.asked if name not in changed and name not in reset.held]
            # Its transitions are events already; a reset that changed nothing is one too.
            at = datetime.now(timezone.utc)
            self.events.record([Event(at, name, "reset", State.CLOSED.value, State.CLOSED.value,
                                      f"reset by {by}: already closed", by) for name in already_closed])
            # Logged once on disk, as the answer: a kill -9 before would leave the breaker as it was.
            self.breaker_log.info("breakers reset", changed=changed, already_closed=already_closed, held=reset.held,
                                  by=by, peer_uid=request.peer.uid, peer_pid=request.peer.pid)
            return success({"reset": reset.asked, "changed": changed, "held": reset.held})

        return self._when_settled(later, answer)

    def _decision_answer(self, decisions: list[Decision]) -> Response:
        return success_raw(decision_text(decisions[0], self._hold_json))

    def _acquire(self, platform: str, request: Request) -> Response | Awaitable[Response]:
        try:
            later = self.registry.acquire_many_later([platform], request.peer.uid)
        except UnknownPlatform as exc:
            raise ApiError(404, "unknown_platform", str(exc)) from None
        if self.registry.settled(later):
            return success_raw(decision_text(later.value[0], self._hold_json))
        return self._held_answer(later, self._decision_answer)

    def _acquire_batch(self, request: Request) -> Response:
        names = self._body(request).get("platforms")
        if not isinstance(names, list) or not names or len(names) > MAX_BATCH:
            raise ApiError(400, "invalid_request", f'"platforms" must be a list of 1 to {MAX_BATCH} names')
        for name in names:
            self._known(name)
        # One answer per platform, keyed by name: a name asked twice is asked once.
        names = list(dict.fromkeys(names))
        return self._when_settled(
            self.registry.acquire_many_later(names, request.peer.uid),
            lambda decisions: success_raw("{" + ",".join(_quote(name) + ":" + decision_text(d, self._hold_json)
                                                         for name, d in zip(names, decisions)) + "}"))

    @staticmethod
    def _parse_report(item: Any) -> tuple[str, Report]:
        if not isinstance(item, dict):
            raise ApiError(400, "invalid_request", "a report must be a JSON object")
        permit, ok, duration = item.get("permit"), item.get("success"), item.get("duration_ms", 0)
        if not isinstance(permit, str) or not permit or len(permit) > 200:
            raise ApiError(400, "invalid_request", '"permit" must be the string acquire returned')
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0:
            raise ApiError(400, "invalid_request", '"duration_ms" must be a non-negative number')
        outcome, retry = item.get("outcome"), item.get("retry_after")
        if outcome is None:
            if not isinstance(ok, bool):
                raise ApiError(400, "invalid_request", f'"outcome" must be one of {_OUTCOMES}, or "success" true '
                                                       'or false')
            kind = Kind.SUCCESS if ok else Kind.FAILURE
        else:
            kind = _REPORTED.get(outcome) if isinstance(outcome, str) else None
            if kind is None:
                raise ApiError(400, "invalid_request", f'"outcome" must be one of {_OUTCOMES}')
            # An old daemon needs "success", so a client may send both; they must agree.
            if ok is not None and (not isinstance(ok, bool) or (kind is Kind.SUCCESS and not ok)
                                   or (kind in FAILING and ok)):
                raise ApiError(400, "invalid_request", f'"success" {_encode(ok)} contradicts "outcome" "{outcome}"')
        if kind is not Kind.RATE_LIMITED:
            if retry is not None:
                raise ApiError(400, "invalid_request", '"retry_after" goes with the outcome "rate_limited" only')
            return permit, Report(kind, duration)
        return permit, Report(kind, duration, *retry_after_seconds(retry, datetime.now(timezone.utc)))

    def _report(self, platform: str, request: Request) -> Response | Awaitable[Response]:
        permit, report = self._parse_report(self._body(request))
        try:
            later = self.registry.report_many_later([(platform, permit, report)], request.peer.uid)
        except UnknownPlatform as exc:
            raise ApiError(404, "unknown_platform", str(exc)) from None
        if self.registry.settled(later):
            return self._outcome_answer(later.value)
        return self._held_answer(later, self._outcome_answer)

    @staticmethod
    def _outcome_answer(outcomes: list[Outcome]) -> Response:
        outcome = outcomes[0]
        if outcome.reason == "unknown":
            return error_response(409, "unknown_permit", _UNKNOWN_PERMIT)
        return success_raw(outcome_text(outcome))

    def _report_batch(self, request: Request) -> Response:
        reports = self._body(request).get("reports")
        if not isinstance(reports, list) or not reports or len(reports) > MAX_BATCH:
            raise ApiError(400, "invalid_request", f'"reports" must be a list of 1 to {MAX_BATCH} reports')
        parsed = []
        for item in reports:
            permit, report = self._parse_report(item)
            parsed.append((self._known(item.get("platform")), permit, report))
        return self._when_settled(
            self.registry.report_many_later(parsed, request.peer.uid),
            lambda outcomes: success_raw("[" + ",".join(outcome_text(o, platform)
                                                        for (platform, _, _), o in zip(parsed, outcomes)) + "]"))

    # -- holds and events --------------------------------------------------------

    def _hold(self, platform: str, request: Request) -> Response | Awaitable[Response]:
        self._require_admin(request, "hold")
        body = self._body(request)
        state, seconds, reason = body.get("state"), body.get("seconds"), body.get("reason")
        if state not in ("open", "closed"):
            raise ApiError(400, "invalid_request", '"state" must be "open" or "closed"')
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_HOLD_SECONDS:
            raise ApiError(400, "invalid_request",
                           f'"seconds" must be a number over 0 and at most {MAX_HOLD_SECONDS:.0f} (30 days)')
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
            raise ApiError(400, "invalid_request", f'"reason" must say why, in 1 to {MAX_REASON} characters')
        if self._is_cluster(body):
            self._known(platform)
            return self._issue("hold", platform, request, reason.strip(), State(state), float(seconds))
        try:
            later = self.registry.hold_later(platform, State(state), float(seconds), reason.strip(),
                                             str(who(request.peer)))
        except UnknownPlatform as exc:
            raise ApiError(404, "unknown_platform", str(exc)) from None
        except Unguarded as exc:
            raise ApiError(409, "unguarded", str(exc)) from None
        return self._when_settled(later, lambda view: success(self._entry(view)))

    def _release(self, platform: str, request: Request) -> Response | Awaitable[Response]:
        self._require_admin(request, "release")
        if self._is_cluster(self._body(request)):
            self._known(platform)
            return self._issue("release", platform, request, f"released by {who(request.peer)}")
        try:
            later = self.registry.release_later(platform, str(who(request.peer)))
        except UnknownPlatform as exc:
            raise ApiError(404, "unknown_platform", str(exc)) from None

        def answer(view: BreakerView | None) -> Response:
            if view is None:
                return error_response(409, "not_held", f"{platform} has no hold to release")
            return success(self._entry(view))

        return self._when_settled(later, answer)

    async def _events(self, request: Request) -> Response:
        query = parse_qs(request.query)
        platform = query.get("platform", [None])[0] or None
        if platform is not None:
            self._known(platform)
        since = None
        if "since" in query:
            since = self._since(query["since"][0])
        try:
            limit = int(query.get("limit", ["100"])[0])
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_EVENTS:
            raise ApiError(400, "invalid_request", f"limit must be a whole number from 1 to {MAX_EVENTS}")
        tz = self.tz()
        try:
            return success(await self._in_thread(lambda: self.events.query(platform, since, limit, tz)))
        except DatabaseError as exc:
            raise ApiError(503, "database_error", str(exc)) from None

    def _since(self, text: str) -> datetime:
        """`since` as a length back from now (`1d`, `2h`) or a moment (ISO 8601, the daemon's zone if none)."""
        refused = ApiError(400, "invalid_request",
                           f"since must be a length back from now (1d, 2h) or a time (2026-12-01T09:00), not {text!r}")
        try:
            return datetime.now(timezone.utc) - timedelta(seconds=duration.seconds(text))
        except OverflowError:
            raise refused from None
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text)
            moment = moment if moment.tzinfo else moment.replace(tzinfo=self.tz())
            # Out of range once in UTC (year 1 at +14:00) is no time the table can hold either.
            return moment.astimezone(timezone.utc)
        except (ValueError, OverflowError):
            raise refused from None

    # -- daemon ----------------------------------------------------------------

    async def _health(self, request: Request) -> Response:
        return success(await self._in_thread(self.health))

    async def _jobs(self, request: Request) -> Response:
        return success(await self._in_thread(lambda: self.jobs.overview(datetime.now(timezone.utc))))

    async def _job_runs(self, job: str, request: Request) -> Response:
        try:
            limit = int(parse_qs(request.query).get("limit", ["20"])[0])
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_RUNS:
            raise ApiError(400, "invalid_request", f"limit must be a whole number from 1 to {MAX_RUNS}")
        return success(await self._in_thread(lambda: self.jobs.runs(job, limit)))

    async def _run_job(self, job: str, request: Request) -> Response:
        self._require_admin(request, "running a job")
        wait = self._body(request).get("wait", False)
        if not isinstance(wait, bool):
            raise ApiError(400, "invalid_request", '"wait" must be true or false')
        try:
            run_id, future, already = self.jobs.request(job)
        except Stopping as exc:
            raise ApiError(503, "stopping", str(exc)) from None
        self.jobs_log.info("job run requested", job=job, run_id=run_id, already_queued=already,
                           by=str(who(request.peer)), peer_uid=request.peer.uid, peer_pid=request.peer.pid)
        if not wait:
            return success({"job": job, "run_id": run_id, "status": "queued", "already_queued": already}, status=202)
        # Shielded: the run's future is shared by every request for it, and one
        # waiter going away must not cancel it for the others.
        try:
            return success(await asyncio.shield(asyncio.wrap_future(future)))
        except DatabaseError as exc:
            raise ApiError(503, "database_error", str(exc)) from None

    async def _cancel_job(self, job: str, request: Request) -> Response:
        self._require_admin(request, "cancelling a run")
        by = str(who(request.peer))
        try:
            return success(await self._in_thread(lambda: self.jobs.cancel(job, by)))
        except NothingToCancel as exc:
            raise ApiError(409, "nothing_to_cancel", str(exc)) from None
        except DatabaseError as exc:
            raise ApiError(503, "database_error", str(exc)) from None

    async def _settings(self, request: Request) -> Response:
        def listing() -> list[dict[str, object]]:
            return settings_mod.listing(self.settings.table(), self.settings.state())

        try:
            return success(await self._in_thread(listing))
        except DatabaseError as exc:
            raise ApiError(503, "database_error", f"cannot read the settings table: {exc}") from None

    async def _set_setting(self, request: Request) -> Response:
        self._require_admin(request, "changing a setting")
        body = self._body(request)
        key, value = body.get("key"), body.get("value")
        if not isinstance(key, str) or not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ApiError(400, "invalid_request", '"key" must be a setting\'s name and "value" a string or a number')
        by = str(who(request.peer))

        def change() -> dict[str, object]:
            before = self.settings.table().get(key)
            entry = self.settings.set(key, str(value), by)
            was = "unset" if before is None else repr(before)
            self.events.record([Event(datetime.now(timezone.utc), None, "setting", None, None,
                                      f"{key} set from {was} to {entry['value']!r}", by)])
            return entry

        try:
            return success(await self._in_thread(change))
        except settings_mod.UnknownSetting as exc:
            raise ApiError(404, "unknown_setting", str(exc)) from None
        except settings_mod.BadSetting as exc:
            raise ApiError(400, "invalid_setting", str(exc)) from None
        except DatabaseError as exc:
            raise ApiError(503, "database_error", f"the setting was not changed: {exc}") from None

    async def _reload(self, request: Request) -> Response:
        self._require_admin(request, "reload")
        result = await self._in_thread(lambda: self.reload(request.peer))
        if result.get("error"):
            raise ApiError(422, "invalid_config", result["error"])
        return success(result)
