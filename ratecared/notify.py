"""sd_notify: READY, STATUS, RELOADING, STOPPING and the watchdog, for systemd's Type=notify."""

from __future__ import annotations

import os
from datetime import datetime, tzinfo

import sdnotify


class Notifier:
    """Taken out of the environment at start, so child processes never inherit it."""

    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier() if os.environ.get("NOTIFY_SOCKET") else None
        os.environ.pop("NOTIFY_SOCKET", None)
        usec = os.environ.pop("WATCHDOG_USEC", None)
        pid = os.environ.pop("WATCHDOG_PID", None)
        # Pinged at half systemd's WatchdogSec, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval: float | None = None
        if usec and (pid is None or int(pid) == os.getpid()):
            self.watchdog_interval = int(usec) / 2e6

    def __call__(self, *lines: str) -> None:
        if self._notifier is not None:
            self._notifier.notify("\n".join(lines))


def status_text(breakers: int, open_: int, half_open: int, database_error: str | None,
                running: str | None, next_run: tuple[str, datetime] | None, tz: tzinfo) -> str:
    """The one-line STATUS= that `systemctl status` shows, also in health."""
    parts = [f"{breakers} breakers"]
    if open_:
        parts.append(f"{open_} open")
    if half_open:
        parts.append(f"{half_open} half-open")
    if database_error:
        parts.append("database unreachable")
    if running:
        parts.append(f"running {running}")
    elif next_run:
        job, slot = next_run
        parts.append(f"next: {job} {slot.astimezone(tz):%Y-%m-%d %H:%M %Z}")
    return ", ".join(parts)
