"""The event loop the daemon serves on: uvloop when installed, asyncio's own when asked or without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ctl, rewrite

from ratecared import event_loop


def expected_loop() -> str:
    """What this suite's daemons run on: the Makefile sets asyncio for one suite; auto is uvloop if installed."""
    if os.environ.get("RATECARED_TEST_EVENT_LOOP") == "asyncio" or not event_loop.available():
        return "asyncio"
    return "uvloop"


def test_the_suites_daemons_serve_on_the_loop_it_was_given(daemon) -> None:
    health = daemon.client().health()
    assert health["event_loop"].split()[0] == expected_loop()
    daemon.stop()
    name = health["event_loop"]
    assert (f'event_loop="{name}"' if " " in name else f"event_loop={name}") in daemon.output


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
def test_either_loop_serves_the_breakers(choice: str, config_factory, daemon_factory) -> None:
    if choice == "uvloop" and not event_loop.available():
        pytest.skip("uvloop is not installed here")
    daemon = daemon_factory(config_factory(daemon={"event_loop": choice}))
    client = daemon.client()
    assert client.health()["event_loop"].split()[0] == choice
    for _ in range(5):
        client.report(client.acquire("booking"), "timeout", 10_000)
    assert not client.acquire("booking").allowed
    code, out, _ = ctl(daemon.socket, "status", "booking", "--wide")
    assert code == 0 and "5 consecutive failures (5 timed out)" in out


def test_a_loop_it_does_not_know_is_a_config_error(config_factory) -> None:
    config = config_factory(daemon={"event_loop": "trio"})
    result = subprocess.run([sys.executable, "-m", "ratecared", "--config", str(config), "check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert f"{config}: daemon.event_loop: must be auto, uvloop or asyncio, not 'trio'" in result.stderr


def test_a_reload_names_the_loop_as_needing_a_restart(config_factory, daemon_factory) -> None:
    config = config_factory(daemon={"event_loop": "asyncio"})
    daemon = daemon_factory(config)
    rewrite(config, "daemon", event_loop="auto")
    code, out, err = ctl(daemon.socket, "reload", "--json")
    assert code == 0, err
    assert "daemon.event_loop" in json.loads(out)["restart_needed_for"]
    assert daemon.client().health()["event_loop"] == "asyncio"
