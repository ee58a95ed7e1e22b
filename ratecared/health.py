"""`GET /api/v1/health`: the daemon, its database and its settings, as an operator checks them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Protocol
from zoneinfo import ZoneInfo

from ratecared import __version__
from ratecared import settings as settings_mod
from ratecared.db import Database
from ratecared.settings import SettingsState
from ratecared.store import SnapshotState


class JournalView(Protocol):
    """What health reads of the breaker journal (breaker_journal.BreakerJournal)."""

    path: Path

    def probe(self) -> str | None: ...


class Health:
    """Answers health from narrow views of the parts it reports on; runs on a worker thread."""

    def __init__(self, database: Database, snapshots: Callable[[], SnapshotState],
                 settings: Callable[[], SettingsState], status_line: Callable[[], str], host: str,
                 journal: JournalView, tz: ZoneInfo, event_loop: str) -> None:
        self._db = database
        self._event_loop = event_loop
        # Times are shown in the daemon's zone, as the jobs' are (daemon.timezone: a restart applies it).
        self._tz = tz
        self._journal = journal
        self._snapshots = snapshots
        self._settings = settings
        self._status_line = status_line
        self._host = host
        self._started = time.monotonic()

    def __call__(self) -> dict[str, Any]:
        started = time.monotonic()
        probe = self._db.probe()
        snapshot, settings = self._snapshots(), self._settings()
        db: dict[str, Any] = dict(
            reachable=probe.reachable,
            writable=probe.writable,
            error=probe.error,
            notice=probe.notice,
            engine=self._db.name,
            url=self._db.describe(),
            latency_ms=round((time.monotonic() - started) * 1000, 1),
            last_snapshot_at=snapshot.last_at.astimezone(self._tz).isoformat() if snapshot.last_at else None,
            snapshot_error=snapshot.error,
            settings_error=settings.error,
        )
        return {
            "daemon": "up",
            "version": __version__,
            "pid": os.getpid(),
            "host": self._host,
            "uptime_seconds": round(time.monotonic() - self._started, 1),
            "timezone": self._tz.key,
            "event_loop": self._event_loop,
            "database": db,
            "journal": self._journal_health(),
            "settings": settings_mod.as_dict(settings.settings),
            "setting_warnings": [str(w) for w in settings.warnings],
            "status": self._status_line(),
        }

    def _journal_health(self) -> dict[str, Any]:
        """The breaker journal: writable unless the disk refused its last write and refuses it again now."""
        error = self._journal.probe()
        return {"path": str(self._journal.path), "writable": error is None, "error": error}
