"""ratecared.client as an app uses it, against a real daemon and against none."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DaemonProcess
from ratecared.client import BreakerOpen, Client, DaemonError, DaemonUnreachable


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
    import time

    time.sleep(0.5)
    assert client.acquire("booking").allowed


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
        with pytest.raises(BreakerOpen):
            with client.call("booking"):
                pass


def test_unreachable_daemon_raises_by_default(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnreachable, match="No such file or directory"):
        Client(str(tmp_path / "none.sock")).acquire("booking")
