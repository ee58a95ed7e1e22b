"""`systemctl reload` / `ratecarectl reload` / SIGHUP: the config file and the settings, applied for real.

The new config replaces the old one whole, through the one reference every
component reads, so each key is in effect when the reply comes. The few keys
a running daemon cannot take (the socket path, the database's connection, the host name,
the time zone, the log directory, the metrics listener) keep their old values in effect, and the
reply names them as needing a restart. It never answers "reloaded" for a
change it did not apply.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable

from ratecared import access
from ratecared.config import Config, ConfigError, CurrentConfig, check_host, load
from ratecared.control.server import Peer

# Dotted keys of Config.masked(), each a field of its section's dataclass, that only a restart applies.
RESTART_KEYS = ("daemon.socket", "daemon.host", "daemon.timezone", "daemon.state_dir", "daemon.event_loop",
                "database.url", "database.password_file", "database.auto_migrate", "database.connect_timeout",
                "database.startup_wait", "logging.dir", "metrics.listen")


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def in_effect(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """The config to run with after a reload, the changed keys it applies, and those that need a restart."""
    before, after = _flat(old.masked()), _flat(new.masked())
    changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
    restart = [key for key in changed if key in RESTART_KEYS]
    applied = [key for key in changed if key not in RESTART_KEYS]
    # The restart keys keep their old values; every other key, the purges' limits included, is the new one.
    sections: dict[str, dict[str, Any]] = {}
    for key in RESTART_KEYS:
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = getattr(getattr(old, section), name)
    kept = dataclasses.replace(new, path=old.path, **{
        section: dataclasses.replace(getattr(new, section), **values) for section, values in sections.items()})
    return kept, applied, restart


class Reloader:
    """Loads the file, replaces the config, and has each part take what changed before it answers."""

    def __init__(self, config: CurrentConfig, apply: Callable[[Config, Config], None],
                 settings: Callable[[], dict[str, Any]], notify: Callable[..., None],
                 status_line: Callable[[], str], log: Any) -> None:
        self._config = config
        self._apply = apply
        self._settings = settings
        self._notify = notify
        self._status_line = status_line
        self._log = log
        self._lock = threading.Lock()

    def __call__(self, peer: Peer | None) -> dict[str, Any]:
        with self._lock:
            self._notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
            try:
                return self._reload(peer)
            finally:
                self._notify("READY=1", f"STATUS={self._status_line()}")

    def _reload(self, peer: Peer | None) -> dict[str, Any]:
        who = {"by": str(access.who(peer)), "peer_uid": peer.uid, "peer_pid": peer.pid} if peer else {
            "signal": "SIGHUP"}
        old = self._config()
        try:
            new = load(old.path)
            check_host(new)
        except ConfigError as exc:
            self._log.error("reload refused: invalid config; keeping the running one", error=str(exc), **who)
            return {"error": str(exc)}
        kept, applied, restart = in_effect(old, new)
        self._config.replace(kept)
        self._apply(old, kept)
        self._log.info("reloaded", applied=applied or None, restart_needed_for=restart or None, **who)
        return {"reloaded": True, "applied": applied, "restart_needed_for": restart, **self._settings()}
