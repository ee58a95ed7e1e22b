"""The breakers through the real daemon: a reloaded platform list."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from conftest import fail, toml_value
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
