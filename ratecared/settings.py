"""Operational settings from the app's `settings` table, under the seed's keys.

Parsing is pure: rows in, a Settings value and a list of warnings out. A bad
value never stops the daemon; it is reported by key and value and the
default stands in for it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from ratecared.breaker.machine import Policy
from ratecared.db import Database, DatabaseError, timestamp


@dataclass(frozen=True)
class Settings:
    retention_days: int = 30
    cleanup_enabled: bool = True
    warming_enabled: bool = False
    warming_widget_count: int = 10
    breaker_enabled: bool = True
    failure_threshold: int = 5
    open_seconds: float = 600.0
    half_open_requests: int = 3
    # None means every configured platform.
    breaker_platforms: frozenset[str] | None = None
    events_retention_days: int = 90
    slow_call_ms: int = 0
    backoff_multiplier: float = 1.0
    max_open_seconds: float = 3600.0


@dataclass(frozen=True)
class SettingWarning:
    key: str
    value: str
    problem: str
    # What is in effect instead of the value as written.
    using: str = "the default"

    def __str__(self) -> str:
        return f"setting {self.key}={self.value!r} {self.problem}; using {self.using}"


def _ranged(convert: Callable[[str], Any], what: str, low: float, high: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = convert(text.strip())
        except ValueError:
            raise ValueError(f"is not {what}") from None
        # NaN fails both comparisons, so it is out of range too.
        if not low <= value <= high:
            raise ValueError(f"is out of range {low}..{high}")
        return value

    return parse


def _integer(low: int, high: int) -> Callable[[str], int]:
    return _ranged(int, "a whole number", low, high)


def _decimal(low: float, high: float) -> Callable[[str], float]:
    return _ranged(float, "a number", low, high)


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("is not 0 or 1")


def _platforms(text: str) -> frozenset[str] | None:
    value = text.strip().lower()
    if value in ("all", "*", ""):
        return None
    names = frozenset(name.strip() for name in value.split(",") if name.strip())
    if not names:
        raise ValueError("names no platform")
    return names


KEYS: dict[str, tuple[str, Callable[[str], object]]] = {
    "cache-statistics-retention-days": ("retention_days", _integer(1, 3650)),
    "cache-cleanup-enabled": ("cleanup_enabled", _boolean),
    "cache-warming-enabled": ("warming_enabled", _boolean),
    "cache-warming-widget-count": ("warming_widget_count", _integer(1, 10000)),
    "circuit-breaker-enabled": ("breaker_enabled", _boolean),
    "circuit-breaker-failure-threshold": ("failure_threshold", _integer(1, 1000)),
    "circuit-breaker-timeout-seconds": ("open_seconds", _integer(1, 86400)),
    "circuit-breaker-half-open-requests": ("half_open_requests", _integer(1, 1000)),
    "circuit-breaker-platforms": ("breaker_platforms", _platforms),
    "circuit-breaker-events-retention-days": ("events_retention_days", _integer(1, 3650)),
    "circuit-breaker-slow-call-ms": ("slow_call_ms", _integer(0, 3_600_000)),
    "circuit-breaker-backoff-multiplier": ("backoff_multiplier", _decimal(1, 10)),
    "circuit-breaker-max-open-seconds": ("max_open_seconds", _integer(1, 7 * 86400)),
}


def parse(rows: Mapping[str, str | None], known_platforms: tuple[str, ...] = ()) -> tuple[Settings, list[SettingWarning]]:
    """Settings from `key -> value` rows; missing keys take their defaults."""
    values: dict[str, object] = {}
    warnings: list[SettingWarning] = []
    for key, (attr, parser) in KEYS.items():
        raw = rows.get(key)
        if raw is None:
            continue
        try:
            values[attr] = parser(str(raw))
        except ValueError as exc:
            warnings.append(SettingWarning(key, str(raw), str(exc)))
    platforms = values.get("breaker_platforms")
    if isinstance(platforms, frozenset) and known_platforms:
        unknown = sorted(platforms - set(known_platforms))
        if unknown:
            known = platforms & set(known_platforms)
            # None known at all would guard nothing: the default (all) is the safer reading.
            values["breaker_platforms"] = frozenset(known) if known else None
            warnings.append(SettingWarning(
                "circuit-breaker-platforms", rows["circuit-breaker-platforms"] or "",
                f"names unknown platform{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
                using=",".join(sorted(known)) if known else "the default (all)"))
    for seconds in ("open_seconds", "max_open_seconds"):
        if seconds in values:
            values[seconds] = float(values[seconds])  # type: ignore[arg-type]
    return Settings(**values), warnings  # type: ignore[arg-type]


class UnknownSetting(ValueError):
    """A key that is not one of KEYS."""


class BadSetting(ValueError):
    """A value the daemon would not use: the message says why, as its warning would."""


def canonical(key: str, value: str, known_platforms: tuple[str, ...] = ()) -> str:
    """`value` for `key` as the table should hold it, checked as the daemon checks the table it reads.

    Raises UnknownSetting or BadSetting with the reason.
    """
    if key not in KEYS:
        raise UnknownSetting(f"unknown setting {key!r}; settings: {', '.join(KEYS)}")
    settings, warnings = parse({key: value}, known_platforms)
    if warnings:
        raise BadSetting(f"{key}={value!r} {warnings[0].problem}")
    shown = as_dict(settings)[key]
    # In the seed's spelling: 1 and 0, whole numbers, `all`.
    if isinstance(shown, bool):
        return "1" if shown else "0"
    if isinstance(shown, float) and shown.is_integer():
        return str(int(shown))
    return str(shown)


def read_rows(database: Database) -> dict[str, str | None]:
    """The table as it is now, `key -> value`; raise DatabaseError if it cannot be read."""
    rows = database.query("SELECT `key`, `value` FROM settings")
    return {str(k): (None if v is None else str(v)) for k, v in rows}


def read(database: Database, known_platforms: tuple[str, ...] = ()) -> tuple[Settings, list[SettingWarning]]:
    """Read the table now; raise DatabaseError if it cannot be read."""
    return parse(read_rows(database), known_platforms)


def write(database: Database, key: str, value: str, now: datetime) -> None:
    """Set one row of the table, whether or not the row is there yet."""
    database.execute(database.dialect.upsert("settings", ("key", "value", "updated_at"), ("key",)),
                     (key, value, timestamp(now)))


def as_dict(settings: Settings) -> dict[str, object]:
    """The settings under the seed's keys, for `health` and the logs."""
    by_attr = {attr: key for key, (attr, _) in KEYS.items()}
    out: dict[str, object] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, frozenset):
            value = ",".join(sorted(value))
        out[by_attr[f.name]] = "all" if value is None else value
    return out


def breaker_policy(settings: Settings, lease_seconds: float) -> Policy:
    """The breakers' policy: the settings table's breaker keys and the config's permit lease."""
    return Policy(
        failure_threshold=settings.failure_threshold,
        open_seconds=settings.open_seconds,
        half_open_requests=settings.half_open_requests,
        lease_seconds=lease_seconds,
        enabled=settings.breaker_enabled,
        platforms=settings.breaker_platforms,
        slow_call_ms=settings.slow_call_ms,
        backoff_multiplier=settings.backoff_multiplier,
        max_open_seconds=settings.max_open_seconds,
    )


@dataclass(frozen=True)
class SettingsState:
    """The settings in effect, the warnings about the table's values, and why the last read failed."""

    settings: Settings = Settings()
    warnings: tuple[SettingWarning, ...] = ()
    error: str | None = None


def listing(rows: Mapping[str, str | None], state: SettingsState) -> list[dict[str, object]]:
    """Each setting: its value in the table (None when it has no row), default, value in effect, warning."""
    defaults, in_effect = as_dict(Settings()), as_dict(state.settings)
    warnings = {w.key: str(w) for w in state.warnings}
    return [{"key": key, "value": rows.get(key), "default": defaults[key], "in_effect": in_effect[key],
             "warning": warnings.get(key)} for key in KEYS]


class LiveSettings:
    """The settings table as the daemon applies it, re-read on demand.

    One refresh at a time (the refresh lock, which may wait on the database);
    the state behind its own short lock, so readers on the event loop never
    wait for the database. `on_change` gets each new Settings, in order.
    """

    def __init__(self, database: Database, platforms: Callable[[], tuple[str, ...]],
                 on_change: Callable[[Settings], None], log: Any) -> None:
        self._db = database
        self._platforms = platforms
        self._on_change = on_change
        self._log = log
        self._refreshing = threading.Lock()
        self._lock = threading.Lock()
        self._state = SettingsState()

    def state(self) -> SettingsState:
        with self._lock:
            return self._state

    def current(self) -> Settings:
        return self.state().settings

    def table(self) -> dict[str, str | None]:
        """The table as it is now, which may differ from what is in effect until the next refresh."""
        return read_rows(self._db)

    def set(self, key: str, value: str, by: str) -> dict[str, object]:
        """Check, write and apply one setting for an operator: its listing entry as now in effect.

        Raises UnknownSetting or BadSetting, leaving the table as it was, and DatabaseError.
        """
        text = canonical(key, value, self._platforms())
        write(self._db, key, text, datetime.now(timezone.utc))
        self._log.info("setting set", key=key, value=text, by=by)
        self.refresh()
        return next(entry for entry in listing(self.table(), self.state()) if entry["key"] == key)

    def refresh(self) -> None:
        """Re-read the table; a failure keeps the settings in force and says why once."""
        with self._refreshing:
            old = self.state()
            try:
                new, warnings = read(self._db, self._platforms())
            except DatabaseError as exc:
                if old.error is None:
                    self._log.warning("cannot read settings; keeping the current ones", error=str(exc))
                with self._lock:
                    self._state = SettingsState(old.settings, old.warnings, str(exc))
                return
            for warning in warnings:
                if warning not in old.warnings:
                    self._log.warning("bad setting", key=warning.key, value=warning.value, problem=warning.problem,
                                      using=warning.using)
            with self._lock:
                self._state = SettingsState(new, tuple(warnings), None)
            if new != old.settings:
                before, after = as_dict(old.settings), as_dict(new)
                self._log.info("settings changed", **{k: v for k, v in after.items() if before[k] != v})
                self._on_change(new)
