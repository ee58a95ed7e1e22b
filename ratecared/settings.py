"""Operational settings from the app's `settings` table, under the seed's keys.

Parsing is pure: rows in, a Settings value and a list of warnings out. A bad
value never stops the daemon; it is reported by key and value and the
default stands in for it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Mapping

from ratecared.db import Database


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


@dataclass(frozen=True)
class SettingWarning:
    key: str
    value: str
    problem: str

    def __str__(self) -> str:
        return f"setting {self.key}={self.value!r} {self.problem}; using the default"


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("is not a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"is out of range {low}..{high}")
        return value

    return parse


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
            warnings.append(
                SettingWarning("circuit-breaker-platforms", rows["circuit-breaker-platforms"] or "",
                               f"names unknown platforms {', '.join(unknown)} (ignored)")
            )
            values["breaker_platforms"] = frozenset(platforms & set(known_platforms))
    if "open_seconds" in values:
        values["open_seconds"] = float(values["open_seconds"])  # type: ignore[arg-type]
    return Settings(**values), warnings  # type: ignore[arg-type]


def read(database: Database, known_platforms: tuple[str, ...] = ()) -> tuple[Settings, list[SettingWarning]]:
    """Read the table now; raise DatabaseError if it cannot be read."""
    rows = database.query("SELECT `key`, `value` FROM settings")
    return parse({str(k): (None if v is None else str(v)) for k, v in rows}, known_platforms)


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
