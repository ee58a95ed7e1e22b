"""The breakers through the real daemon: a restart, a reloaded platform list."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import pytest

from conftest import fail, toml_value, wait_for
from ratecared.client import DaemonError


def rewrite(config: Path, section: str, **values: object) -> None:
    """Change keys of one section of the daemon's config file, as an operator edits it."""
    data = tomllib.loads(config.read_text())
    data.setdefault(section, {}).update(values)
    config.write_text("\n".join(f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items())
                                for name, keys in data.items()))


def test_a_reloaded_platform_list_keeps_open_breakers_open_adds_new_ones_and_drops_the_rest(
        config_factory, daemon_factory) -> None:
    config = config_factory(circuit_breaker={"platforms": ["booking", "expedia"]})
    daemon = daemon_factory(config)
    fail(daemon, "booking")
    rewrite(config, "circuit_breaker", platforms=["booking", "hotels"])
    client = daemon.client()
    assert "circuit_breaker.platforms" in client.reload()["applied"]
    status = client.status()
    assert [(p["platform"], p["state"]) for p in status["platforms"]] == [("booking", "open"), ("hotels", "closed")]
    assert status["platforms"][0]["total_failures"] == 5
    assert client.acquire("hotels").allowed
    with pytest.raises(DaemonError) as refused:
        client.acquire("expedia")
    assert (refused.value.status, refused.value.code) == (404, "unknown_platform")


def test_the_time_in_each_state_carries_on_across_a_restart(db_url: str, config_factory, daemon_factory) -> None:
    config = config_factory(url=db_url)
    daemon = daemon_factory(config)
    ready = time.monotonic()
    fail(daemon, "booking")
    opened = time.monotonic()
    # Long enough open that a count started again at the restart would show.
    wait_for(lambda: daemon.client().status()["platforms"][0]["seconds_in_state"] >= 1.0)
    daemon.stop()
    restarted = daemon_factory(config)
    looked = time.monotonic()
    platforms = {p["platform"]: p for p in restarted.client().status()["platforms"]}
    assert platforms["booking"]["state"] == "open"
    # The test's own clock bounds them from below: each state began before
    # the test saw it. The 0.1 s is the stored timestamps' rounding, not speed.
    assert platforms["booking"]["seconds_in_state"] >= looked - opened - 0.1
    assert platforms["expedia"]["seconds_in_state"] >= looked - ready - 0.1
