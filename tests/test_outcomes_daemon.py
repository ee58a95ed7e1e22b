"""Outcomes and back-off on a running daemon: curl and the Python client report, ratecarectl and metrics show."""

from __future__ import annotations

import json
import signal
import subprocess
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest

from conftest import DaemonProcess, ctl, entry, wait_for
from test_metrics import samples, scrape, value

from ratecared.client import Client


def post(daemon: DaemonProcess, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    """A POST as the app's curl makes it: the HTTP status and the JSON envelope."""
    out = subprocess.run(["curl", "-sS", "--unix-socket", daemon.socket, "-X", "POST", "-w", "\n%{http_code}",
                          *(["-H", "Content-Type: application/json", "-d", json.dumps(body)] if body else []),
                          f"http://localhost/api/v1/circuit-breaker/{path}"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    text, _, code = out.rpartition("\n")
    return int(code), json.loads(text)


def permit(daemon: DaemonProcess, platform: str = "booking") -> str:
    code, answer = post(daemon, f"{platform}/acquire")
    assert code == 200 and answer["data"]["allowed"], answer
    return answer["data"]["permit"]


def report(daemon: DaemonProcess, **body: Any) -> tuple[int, dict[str, Any]]:
    return post(daemon, "booking/report", {"permit": permit(daemon), **body})


def test_a_429_with_retry_after_opens_the_breaker_until_then(daemon: DaemonProcess) -> None:
    code, answer = report(daemon, outcome="rate_limited", retry_after="120", duration_ms=80)
    assert (code, answer["data"]) == (200, {"counted": True, "state": "open"})
    status = entry(daemon)
    # Shorter than the 600 s timeout: the platform's time, not the breaker's.
    assert 110 < status["retry_after"] <= 120
    assert status["last_reason"] == "rate limited by the platform: Retry-After 120"
    assert status["outcomes"]["rate_limited"] == 1 and status["total_failures"] == 1
    refused = post(daemon, "booking/acquire")[1]["data"]
    assert (refused["allowed"], refused["state"]) == (False, "open") and refused["retry_after"] <= 120
    rows = daemon.client().events("booking")
    assert rows[0]["reason"] == "rate limited by the platform: Retry-After 120" and rows[0]["new_state"] == "open"
    parsed = samples(scrape(daemon)[1])
    assert value(parsed, "ratecared_breaker_calls_total", platform="booking", outcome="rate_limited") == 1
    assert value(parsed, "ratecared_breaker_calls_total", platform="booking", outcome="failure") == 0
    code, out, _ = ctl(daemon.socket, "status", "--wide")
    assert code == 0 and "rate limited by the platform: Retry-After 120" in out


def test_a_retry_after_date_opens_longer_than_the_timeout_and_never_past_the_cap(daemon: DaemonProcess) -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=1500)
    header = format_datetime(when, usegmt=True)
    assert report(daemon, outcome="rate_limited", retry_after=header)[0] == 200
    status = entry(daemon)
    assert 1400 < status["retry_after"] <= 1500
    assert status["last_reason"] == f"rate limited by the platform: Retry-After {header}"
    # agoda: a day away, past circuit-breaker-max-open-seconds (3600).
    code, answer = post(daemon, "agoda/report", {"permit": permit(daemon, "agoda"), "outcome": "rate_limited",
                                                 "retry_after": 86400})
    assert code == 200
    agoda = entry(daemon, "agoda")
    assert 3500 < agoda["retry_after"] <= 3600 and agoda["last_reason"].endswith(
        "capped at 3600 s (circuit-breaker-max-open-seconds)")


def test_timeouts_slow_calls_and_ignored_calls_through_the_python_client(daemon: DaemonProcess) -> None:
    client = daemon.client()
    for _ in range(2):
        with pytest.raises(TimeoutError):
            with client.call("booking"):
                raise TimeoutError("booking took 10 s")
    with client.call("booking") as call:
        call.report_as("ignored")  # a 404: booking does not list this hotel
    assert ctl(daemon.socket, "settings", "circuit-breaker-slow-call-ms", "1000")[0] == 0
    answer = client.report(client.acquire("booking"), True, 2500)
    assert answer == {"counted": True, "state": "closed", "counted_as": "slow"}
    client.report(client.acquire("booking"), "failure", 10)
    assert entry(daemon)["state"] == "closed"
    client.report(client.acquire("booking"), "timeout", 10_000)
    status = entry(daemon)
    assert status["state"] == "open"
    assert status["last_reason"] == "5 consecutive failures (3 timed out, 1 slower than 1000 ms)"
    assert status["outcomes"] == {"success": 0, "failure": 1, "timeout": 3, "rate_limited": 0, "slow": 1,
                                  "ignored": 1}
    assert (status["total_requests"], status["total_failures"]) == (5, 5)
    parsed = samples(scrape(daemon)[1])
    assert [value(parsed, "ratecared_breaker_calls_total", platform="booking", outcome=kind)
            for kind in ("success", "failure", "timeout", "slow", "ignored")] == [0, 1, 3, 1, 1]
    code, out, _ = ctl(daemon.socket, "status", "--wide")
    header, booking = out.splitlines()[0].split(), out.splitlines()[1].split()
    assert [booking[header.index(column)] for column in ("TIMEOUTS", "SLOW", "IGNORED", "BACKOFF")] == [
        "3", "1", "1", "1"]


def test_an_ignored_trial_hands_its_slot_to_the_next_call(config_factory, daemon_factory) -> None:
    daemon = daemon_factory(config_factory())
    client = daemon.client()
    assert ctl(daemon.socket, "settings", "circuit-breaker-half-open-requests", "1")[0] == 0
    assert ctl(daemon.socket, "settings", "circuit-breaker-timeout-seconds", "1")[0] == 0
    for _ in range(5):
        client.report(client.acquire("booking"), "timeout", 10_000)
    trial = wait_for(lambda: (lambda d: d if d.allowed else None)(client.acquire("booking")),
                     what="the half-open trial")
    assert not client.acquire("booking").allowed  # the one trial slot is taken
    assert client.report(trial, "ignored") == {"counted": True, "state": "half_open"}
    second = client.acquire("booking")
    assert second.allowed and second.state == "half_open"
    assert client.report(second, True) == {"counted": True, "state": "closed"}


@pytest.mark.parametrize("body, message", [
    ({"outcome": "crashed"}, '"outcome" must be one of success, failure, timeout, rate_limited, ignored'),
    ({"outcome": 1}, '"outcome" must be one of success, failure, timeout, rate_limited, ignored'),
    ({}, '"outcome" must be one of success, failure, timeout, rate_limited, ignored, or "success" true or false'),
    ({"outcome": "timeout", "success": True}, '"success" true contradicts "outcome" "timeout"'),
    ({"outcome": "success", "success": False}, '"success" false contradicts "outcome" "success"'),
    ({"outcome": "failure", "retry_after": 30}, '"retry_after" goes with the outcome "rate_limited" only'),
    ({"success": False, "retry_after": 30}, '"retry_after" goes with the outcome "rate_limited" only'),
    ({"outcome": "rate_limited", "retry_after": -5}, '"retry_after" must not be negative'),
    ({"outcome": "rate_limited", "retry_after": True},
     '"retry_after" must be seconds, or the Retry-After header as it came'),
    ({"outcome": "rate_limited", "retry_after": "9" * 101}, '"retry_after" must be at most 100 characters'),
])
def test_a_report_that_makes_no_sense_is_a_400_that_says_why_and_counts_nothing(
        daemon: DaemonProcess, body: dict[str, Any], message: str) -> None:
    code, answer = report(daemon, **body)
    assert (code, answer["error"]["code"], answer["error"]["message"]) == (400, "invalid_request", message)
    status = entry(daemon)
    assert (status["state"], status["total_requests"], status["outcomes"]["ignored"]) == ("closed", 0, 0)


def test_an_unreadable_retry_after_still_opens_for_the_timeout_and_names_it(daemon: DaemonProcess) -> None:
    assert report(daemon, outcome="rate_limited", retry_after="in a while")[0] == 200
    status = entry(daemon)
    assert 590 < status["retry_after"] <= 600
    assert status["last_reason"] == "rate limited by the platform (Retry-After 'in a while' unreadable)"


def test_batched_reports_take_outcomes_too(daemon: DaemonProcess) -> None:
    booking, agoda = permit(daemon), permit(daemon, "agoda")
    code, answer = post(daemon, "report", {"reports": [
        {"platform": "booking", "permit": booking, "outcome": "rate_limited", "retry_after": "30"},
        {"platform": "agoda", "permit": agoda, "outcome": "ignored"}]})
    assert code == 200
    assert answer["data"] == [{"counted": True, "state": "open", "platform": "booking"},
                              {"counted": True, "state": "closed", "platform": "agoda"}]
    assert entry(daemon, "agoda")["outcomes"]["ignored"] == 1


def open_for(status: dict[str, Any]) -> float:
    """The length of an open period, from status alone: whenever it is asked, retry_after + time in the state."""
    return status["retry_after"] + status["seconds_in_state"]


def trial(client: Client) -> None:
    """Wait for the half-open trial and fail it."""
    decision = wait_for(lambda: (lambda d: d if d.allowed else None)(client.acquire("booking")),
                        what="a half-open trial")
    assert decision.state == "half_open"
    assert client.report(decision, "timeout")["state"] == "open"


def test_each_trip_in_a_row_opens_longer_and_the_level_survives_a_kill(config_factory, daemon_factory) -> None:
    config = config_factory()
    daemon = daemon_factory(config)
    client = daemon.client()
    for key, setting in (("circuit-breaker-timeout-seconds", "1"), ("circuit-breaker-backoff-multiplier", "3"),
                         ("circuit-breaker-half-open-requests", "1")):
        assert ctl(daemon.socket, "settings", key, setting)[0] == 0
    for _ in range(5):
        client.report(client.acquire("booking"), False)
    first = entry(daemon)
    assert first["backoff_level"] == 1 and 0.9 - 0.01 <= open_for(first) <= 1.1 + 0.01
    trial(client)
    second = entry(daemon)
    assert second["backoff_level"] == 2 and 2.7 - 0.01 <= open_for(second) <= 3.3 + 0.01
    trial(client)
    third = entry(daemon)
    assert third["backoff_level"] == 3 and 8.1 - 0.01 <= open_for(third) <= 9.9 + 0.01
    code, out, _ = ctl(daemon.socket, "status")
    assert code == 0 and "booking: back-off level 3, 3 trips in a row not yet worn off" in out
    # kill -9 right after the reply: the journal has the level, and the open time it set.
    daemon.stop(signal.SIGKILL)
    again = daemon_factory(config)
    restored = entry(again)
    assert (restored["state"], restored["backoff_level"]) == ("open", 3)
    assert abs(open_for(restored) - open_for(third)) < 0.5
    assert restored["outcomes"]["failure"] == 5 and restored["outcomes"]["timeout"] == 2
